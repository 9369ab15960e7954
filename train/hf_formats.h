// The model formats of other frameworks that coil reads and writes, each described by
//   - a conversion of its config.json to and from coil's model config (layers::ModelConfig), and
//   - a table linking every coil parameter to the stored tensors that hold it.
//
//   family     | class                            | coil models it holds
//   hf_mamba   | transformers' MambaForCausalLM   | pure Mamba, RMSNorm, no MLP
//   hf_llama   | transformers' LlamaForCausalLM   | Transformer++: attention + RoPE (half-split), SwiGLU, RMSNorm
//   hf_gpt2    | transformers' GPT2LMHeadModel    | GPT-2: attention, learned positions, GELU (tanh), LayerNorm, biases
//   mamba_ssm  | mamba_ssm's MambaLMHeadModel     | Mamba, and hybrids with its MHA and GatedMLP
//
// Layouts (docs/FORMATS.md has the full tables):
//   - coil's names are mamba_ssm's, so mamba_ssm maps one to one; MambaForCausalLM differs only
//     in backbone.embeddings (coil: backbone.embedding).
//   - Llama: coil's fused attention in_proj [3d, d] is q_proj, k_proj, v_proj stacked by rows
//     (both use the half-split rotary layout of GPT-NeoX, so no permutation); coil's SwiGLU fc1
//     [2h, d] is up_proj then gate_proj (coil computes fc2(y * silu(gate)) with (y, gate) the
//     halves of fc1's output, Llama down(silu(gate(x)) * up(x))).
//   - GPT-2's Conv1D weights are stored (in, out), coil's Linear weights (out, in): transposed.
//     c_attn [d, 3d] transposed is coil's in_proj [3d, d] (q, k, v).
//   - Hugging Face vocabularies are not padded: an exported model's vocab_size is coil's padded
//     size, and an imported one keeps its size (pad_vocab_size_multiple 8 when it divides it,
//     else 1). mamba_ssm pads as coil does.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "layers/model_config.h"
#include "train/checkpoint.h"

namespace coil::train {

enum class Family { hf_mamba, hf_llama, hf_gpt2, mamba_ssm };

// "MambaForCausalLM", "LlamaForCausalLM", "GPT2LMHeadModel", "mamba_ssm MambaLMHeadModel".
const char* family_name(Family family);

// The family a config.json describes (`architectures`, else `model_type`; a config with d_model
// and n_layer and neither is mamba_ssm's). `where` names the file in errors.
Family detect_family(const nlohmann::json& config, const std::string& where);

// config.json -> coil's model config. Every setting coil cannot reproduce (grouped-query
// attention, rope scaling, another activation, ...) is an error naming the field.
layers::ModelConfig model_config_from_json(Family family, const nlohmann::json& config, const std::string& where);

// The Hugging Face class a coil model exports as (--format hf), or an error naming the coil
// setting that none of them has.
Family hf_family_for(const layers::ModelConfig& config);

// coil's model config -> the family's config.json, every field written. An error naming the
// coil key when the family cannot express the model. eos_token_id: the end-of-text id (-1: none).
nlohmann::ordered_json model_config_to_json(Family family, const layers::ModelConfig& config, int64_t eos_token_id,
                                            const std::string& dtype_name);

// One coil parameter and the stored tensors that hold it: their rows, each transposed first
// when `transposed` (GPT-2's Conv1D), concatenated make the coil tensor.
struct TensorLink {
  std::string coil_name;
  Shape coil_shape;
  std::vector<std::string> names;  // stored names (with the family's prefix)
  std::vector<Shape> shapes;       // stored shapes
  bool transposed = false;
};
// Every parameter of the model (named_parameters() order; the head only when untied).
std::vector<TensorLink> tensor_links(Family family, const layers::ModelConfig& config);

// The tensors a model directory holds, read on demand.
struct StoredTensors {
  std::string where;                                        // the directory, for errors
  std::vector<std::string> names;                           // every stored tensor
  std::function<Shape(const std::string&)> shape;           // of a stored name
  std::function<Tensor(const std::string&)> read;           // a stored tensor as f32 on the CPU
};

// Stored tensors -> coil's parameters (named_parameters() order, f32). Hugging Face names may
// lack the base model's prefix ("h.0.attn..." for "transformer.h.0.attn..."); non-parameter
// buffers (GPT-2's attn.bias, rotary inv_freq) are skipped; a tied head, if stored, must equal
// the embedding. Errors name the tensor: missing, unexpected, or of another shape than the
// config implies.
NamedTensors import_tensors(Family family, const layers::ModelConfig& config, const StoredTensors& stored);

// coil's parameters (f32 or f64, any order) -> the stored tensors of the family, f32, in link
// order; mamba_ssm also gets lm_head.weight when tied (its strict load_state_dict wants it).
NamedTensors export_tensors(Family family, const layers::ModelConfig& config, const NamedTensors& params);

}  // namespace coil::train
