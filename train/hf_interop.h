// Models into and out of coil (docs/FORMATS.md):
//   coil import DIR --out OUT      a Hugging Face or mamba_ssm model directory -> coil
//   coil export SRC --format F     a coil checkpoint -> safetensors, hf or mamba_ssm
//   model.init_from: PATH          the weights a new run starts from
// The families, config.json fields and tensor layouts are in train/hf_formats.h.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "layers/model_config.h"
#include "train/checkpoint.h"
#include "train/hf_formats.h"

namespace coil::train {

// A model directory of another framework, read into coil's terms.
struct ExternalModel {
  Family family = Family::hf_mamba;
  layers::ModelConfig config;  // from config.json
  std::string preset;          // coil's preset of the same architecture, "" when none
  NamedTensors params;         // coil's names and layouts, f32, named_parameters() order
};
// Reads config.json and model.safetensors, or the shards model.safetensors.index.json names.
// Errors name the file and the field or tensor (see import_tensors for the tensor checks).
ExternalModel read_external_model(const std::string& dir);

// `coil import DIR --out OUT`. OUT ending in .h5 becomes a coil checkpoint: step 0, the
// parameters, a config whose model section is the source's (no optimizer state). Any other OUT
// becomes a new directory with that checkpoint as model.h5 and config.yaml, a run config that
// starts from it (model.init_from: OUT/model.h5; token data at data/train.h5, a placeholder to
// set; training keys at their defaults).
// Everything is read and checked before anything is written; files appear complete or not at
// all. Returns a one-line summary.
std::string import_model(const std::string& dir, const std::string& out);

// `coil export SOURCE --format F`: SOURCE a checkpoint or a run directory (its newest good
// checkpoint); F "safetensors" (one file of the parameters under coil's names, aliases of tied
// weights included), "hf" (a directory transformers' AutoModelForCausalLM.from_pretrained
// loads: config.json, model.safetensors, generation_config.json when the end-of-text id is
// known) or "mamba_ssm" (config.json for mamba_ssm's MambaConfig and model.safetensors of
// MambaLMHeadModel's state dict). hf and mamba_ssm carry the tokenizer where the run's token
// files name one: tokenizer.model for SentencePiece, a description in config.json otherwise.
// An existing directory is replaced only when it is an earlier export.
void export_model(const std::string& source, const std::string& format, const std::string& out,
                  const std::string& dtype, const std::function<void(const std::string&)>& print = nullptr);
// Where export writes without --out: next to the checkpoint (step_N.safetensors, step_N-hf/,
// step_N-mamba_ssm/) or inside the run directory (model.safetensors, hf/, mamba_ssm/).
std::string default_export_path(const std::string& source, const std::string& format);

// model.init_from: the parameters at `path` (a coil checkpoint file, a run directory's newest
// good checkpoint, or a Hugging Face / mamba_ssm model directory), in coil's names. The source's
// model must be the run's: an error lists every setting of architecture() that differs.
NamedTensors initial_weights(const std::string& path, const layers::ModelConfig& run_model,
                             const std::function<void(const std::string&)>& warn = nullptr);

// The settings that decide what given weights compute, as (key, value): the config key paths,
// the vocabulary as its padded size, the layer pattern, MLP size and dt_rank resolved. Two
// configs with equal lists run the same weights the same way; initialization and dtype are not
// in it.
std::vector<std::pair<std::string, std::string>> architecture(const layers::ModelConfig& config);
// The preset whose architecture is config's, vocabulary and position table apart ("" if none).
std::string matching_preset(const layers::ModelConfig& config);

}  // namespace coil::train
