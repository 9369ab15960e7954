#!/usr/bin/env python3
"""Checks coil's model import and export against transformers itself (docs/FORMATS.md).

  python3 scripts/check_hf_interop.py --coil build/coil [--work DIR] [--no-gpu]

For MambaForCausalLM, LlamaForCausalLM and GPT2LMHeadModel:
  import  a randomly initialised transformers model (weights drawn larger than its init, so that
          a wrong layout moves the loss), saved with save_pretrained (Llama in shards), imported
          with `coil import`: the mean next-token loss of the same tokens in transformers (f32)
          and in `coil eval` (f32, CPU) agree to 1e-5 relative; with a GPU, coil in bf16 on the
          GPU agrees with transformers' f32 loss to 1e-2.
  export  a tiny coil model (configs/tiny, a few training steps on the CPU), exported with
          `coil export --format hf`: AutoModelForCausalLM.from_pretrained loads it as that class
          and gives coil's loss (1e-5).
and mamba_ssm's layout: a transformers Mamba written as mamba_ssm writes its models (config.json
of its MambaConfig, the state dict under its names) imports with the same loss, and coil's
`--format mamba_ssm` export loads strictly into MambaForCausalLM under mamba_ssm's names (and
into mamba_ssm's MambaLMHeadModel when mamba_ssm and a GPU are present) with coil's loss.

Prints a table and exits with 1 when a row fails. Needs torch, transformers 5, safetensors, h5py.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN, MICRO_BATCH, BATCHES = 64, 4, 2
F32_TOL, BF16_TOL = 1e-5, 1e-2


class Checker:
    def __init__(self, coil, work, gpu):
        self.coil, self.work, self.gpu = coil, work, gpu
        self.rows = []

    def run_coil(self, *args):
        p = subprocess.run([self.coil, *map(str, args)], cwd=self.work, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"coil {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
        return p.stdout + p.stderr

    def coil_loss(self, source, tokens, checkpoint=None, bf16=False):
        """Mean loss of the token file's windows, by `coil eval` (f32 CPU, or bf16 on the GPU)."""
        dtype, device = ("bf16", "cuda") if bf16 else ("f32", "cpu")
        args = ["eval", source]
        if checkpoint:
            args += ["--checkpoint", checkpoint]
        for s in [f"data.kind=tokens", f"data.path={tokens}", f"data.val_path={tokens}", f"train.seq_len={SEQ_LEN}",
                  f"train.micro_batch={MICRO_BATCH}", f"train.device={device}", f"train.dtype={dtype}",
                  f"model.dtype={dtype}"]:
            args += ["--set", s]
        out = self.run_coil(*args, "--batches", BATCHES)
        m = re.search(r"^loss\s+(\S+)", out, re.M)
        if not m:
            raise RuntimeError(f"no loss in coil eval's output:\n{out}")
        return float(m.group(1))

    def row(self, name, fn, tol):
        """fn() -> (reference loss, coil loss); a row PASSes when they agree to tol (relative)."""
        try:
            ref, got = fn()
            rel = abs(got - ref) / max(abs(ref), 1e-30)
            ok = math.isfinite(rel) and rel <= tol
            self.rows.append((name, f"{ref:.6f}", f"{got:.6f}", f"{rel:.1e}", f"{tol:.0e}", "PASS" if ok else "FAIL"))
        except Skip as s:
            self.rows.append((name, "-", "-", "-", f"{tol:.0e}", f"SKIP ({s})"))
        except Exception as e:  # noqa: BLE001 - every failure is a FAIL row, the others still run
            traceback.print_exc()
            self.rows.append((name, "-", "-", "-", f"{tol:.0e}", f"FAIL ({str(e).splitlines()[0][:120]})"))

    def table(self):
        head = ("check", "transformers", "coil", "rel. diff", "tol", "result")
        widths = [max(len(r[i]) for r in self.rows + [head]) for i in range(5)]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5]
        print(line(head))
        for r in self.rows:
            print(line(r))
        failed = sum(r[5].startswith("FAIL") for r in self.rows)
        print(f"\n{len(self.rows) - failed} of {len(self.rows)} rows passed or skipped, {failed} failed")
        return failed


class Skip(Exception):
    pass


def write_tokens(path, ids, vocab):
    """A coil token file (docs/FORMATS.md) of the given ids."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.asarray(ids, dtype=np.uint16 if vocab <= 65536 else np.uint32),
                         chunks=(min(len(ids), 65536),))
        f.attrs["vocab_size"] = np.int64(vocab)
        f.attrs["tokenizer"] = "random"
        f.attrs["eot_token"] = np.int64(-1)
        f.attrs["format"] = "coil-tokens"
        f.attrs["format_version"] = np.int64(1)


def random_tokens(work, name, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (MICRO_BATCH * BATCHES * (SEQ_LEN + 1),), generator=g)
    path = work / f"{name}.h5"
    write_tokens(path, ids.tolist(), vocab)
    return path, ids


@torch.no_grad()
def torch_loss(model, ids):
    """Mean next-token loss of ids as coil's held-out windows: rows of SEQ_LEN + 1 tokens."""
    windows = ids.view(-1, SEQ_LEN + 1)
    logits = model(input_ids=windows[:, :-1]).logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)).item()


@torch.no_grad()
def randomize(model, seed):
    """Weights of a trained network's scale (the default init keeps logits near uniform, which
    would hide layout errors); the SSM's A_log, D and dt bias keep their init."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("A_log", ".D", "dt_proj.bias")):
            continue
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if "norm" in name or re.search(r"\.ln_\w+\.weight$", name):
            p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
        elif p.dim() == 1:
            p.copy_(0.2 * noise)
        elif name.endswith(("wte.weight", "wpe.weight", "embed_tokens.weight", "embeddings.weight")):
            p.copy_(0.3 * noise)
        elif "conv1d" in name:
            p.copy_(0.5 * noise)
        else:
            fan_in = p.shape[0] if ".c_" in name else p.shape[1]  # GPT-2's Conv1D weights are (in, out)
            p.copy_(noise / math.sqrt(fan_in))


def hf_models():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    return {
        "MambaForCausalLM": lambda: MambaForCausalLM(MambaConfig(
            vocab_size=296, hidden_size=128, state_size=16, num_hidden_layers=2, expand=2, conv_kernel=4,
            use_bias=False, use_conv_bias=True, time_step_rank=8, layer_norm_epsilon=1e-5, tie_word_embeddings=True)),
        "LlamaForCausalLM": lambda: LlamaForCausalLM(LlamaConfig(
            vocab_size=300, hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 50000.0})),
        "GPT2LMHeadModel": lambda: GPT2LMHeadModel(GPT2Config(
            vocab_size=301, n_positions=128, n_embd=128, n_layer=2, n_head=2, n_inner=None,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    }


def check_import(c, name, make, seed):
    torch.manual_seed(seed)
    model = make().float().eval()
    randomize(model, seed)
    src = c.work / f"hf-{name}"
    # Llama in shards, to import through model.safetensors.index.json.
    model.save_pretrained(src, **({"max_shard_size": "300KB"} if name == "LlamaForCausalLM" else {}))
    if name == "LlamaForCausalLM" and not (src / "model.safetensors.index.json").exists():
        raise RuntimeError("save_pretrained wrote no shards")
    tokens, ids = random_tokens(c.work, f"tokens-{name}", model.config.vocab_size, seed)
    ref = torch_loss(model, ids)
    out = c.work / f"imported-{name}"
    c.run_coil("import", src, "--out", out)
    c.row(f"{name} -> coil import (f32, CPU)",
          lambda: (ref, c.coil_loss(out / "config.yaml", tokens, checkpoint=out / "model.h5")), F32_TOL)
    c.row(f"{name} -> coil import (bf16, GPU)", lambda: (ref, gpu_only(c) or c.coil_loss(
        out / "config.yaml", tokens, checkpoint=out / "model.h5", bf16=True)), BF16_TOL)
    return model, ids, tokens


def gpu_only(c):
    if not c.gpu:
        raise Skip("no GPU")
    return None


def train_tiny(c, config):
    run = c.work / f"run-{config}"
    c.run_coil("train", REPO / "configs" / "tiny" / f"{config}.yaml", "--set", f"run.dir={run}", "--set", "train.steps=20",
               "--set", "optim.warmup=2", "--set", "train.device=cpu", "--set", "eval.every=0", "--set",
               "checkpoint.every=0")
    return run


def check_export(c, name, config, seed):
    from transformers import AutoModelForCausalLM

    run = train_tiny(c, config)
    out = c.work / f"export-{config}"
    c.run_coil("export", run, "--format", "hf", "--out", out)
    tokens, ids = random_tokens(c.work, f"tokens-{config}", 256, seed)

    def compare():
        from safetensors.torch import load_file

        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        if type(model).__name__ != name:
            raise RuntimeError(f"loaded as {type(model).__name__}, not {name}")
        # from_pretrained must keep every stored tensor as it is (transformers may re-initialize some).
        stored, loaded = load_file(out / "model.safetensors"), model.state_dict()
        changed = [k for k, v in stored.items() if k in loaded and not torch.equal(loaded[k].float(), v.float())]
        if changed:
            raise RuntimeError(f"from_pretrained changed {len(changed)} stored tensors: {', '.join(changed[:6])}")
        return torch_loss(model, ids), c.coil_loss(run, tokens)

    c.row(f"coil {config} -> export --format hf -> {name}", compare, F32_TOL)


def mamba_ssm_state_dict(hf_model):
    """A transformers Mamba's weights under mamba_ssm's names (its state dict lists the tied head)."""
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().contiguous().clone()
          for k, v in hf_model.state_dict().items()}
    sd["lm_head.weight"] = sd["backbone.embedding.weight"].clone()
    return sd


def check_mamba_ssm(c, hf_mamba, ids, tokens):
    from safetensors.torch import load_file, save_file
    from transformers import MambaConfig, MambaForCausalLM

    # Import: a directory as mamba_ssm's save_pretrained writes it, with the state dict in safetensors.
    cfg = hf_mamba.config
    src = c.work / "mamba_ssm-src"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text(json.dumps({
        "d_model": cfg.hidden_size, "d_intermediate": 0, "n_layer": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
        "ssm_cfg": {"layer": "Mamba1", "d_state": cfg.state_size, "d_conv": cfg.conv_kernel, "expand": cfg.expand,
                    "dt_rank": cfg.time_step_rank, "bias": cfg.use_bias, "conv_bias": cfg.use_conv_bias},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True}))
    save_file(mamba_ssm_state_dict(hf_mamba), src / "model.safetensors", metadata={"format": "pt"})
    out = c.work / "imported-mamba_ssm"

    def imported():
        c.run_coil("import", src, "--out", out)
        return torch_loss(hf_mamba, ids), c.coil_loss(out / "config.yaml", tokens, checkpoint=out / "model.h5")

    c.row("mamba_ssm layout -> coil import (f32, CPU)", imported, F32_TOL)

    # Export: coil's --format mamba_ssm, loaded strictly under mamba_ssm's names.
    run = c.work / "run-mamba"  # trained by the export check
    exported = c.work / "export-mamba_ssm"
    tokens256, ids256 = random_tokens(c.work, "tokens-mamba_ssm", 256, 7)

    def into_transformers():
        c.run_coil("export", run, "--format", "mamba_ssm", "--out", exported)
        j = json.loads((exported / "config.json").read_text())
        ssm, multiple = j["ssm_cfg"], j["pad_vocab_size_multiple"]
        model = MambaForCausalLM(MambaConfig(
            vocab_size=(j["vocab_size"] + multiple - 1) // multiple * multiple, hidden_size=j["d_model"],
            num_hidden_layers=j["n_layer"], state_size=ssm["d_state"], expand=ssm["expand"], conv_kernel=ssm["d_conv"],
            time_step_rank=ssm["dt_rank"], use_bias=ssm["bias"], use_conv_bias=ssm["conv_bias"],
            residual_in_fp32=j["residual_in_fp32"], tie_word_embeddings=j["tie_embeddings"], layer_norm_epsilon=1e-5))
        sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v
              for k, v in load_file(exported / "model.safetensors").items()}
        model.load_state_dict(sd, strict=True)
        return torch_loss(model.float().eval(), ids256), c.coil_loss(run, tokens256)

    c.row("coil mamba-tiny -> export --format mamba_ssm -> MambaForCausalLM", into_transformers, F32_TOL)

    def into_mamba_ssm():
        try:
            from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
            from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        except ImportError:
            raise Skip("mamba_ssm is not installed")
        gpu_only(c)
        j = json.loads((exported / "config.json").read_text())
        model = MambaLMHeadModel(SsmConfig(**j), device="cuda", dtype=torch.float32).eval()
        model.load_state_dict(load_file(exported / "model.safetensors", device="cuda"), strict=True)
        with torch.no_grad():
            windows = ids256.view(-1, SEQ_LEN + 1).cuda()
            logits = model(windows[:, :-1]).logits.float()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)).item()
        return loss, c.coil_loss(run, tokens256)

    c.row("coil mamba-tiny -> export --format mamba_ssm -> MambaLMHeadModel", into_mamba_ssm, 1e-4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coil", required=True, help="the coil binary (e.g. build/coil)")
    ap.add_argument("--work", default="/tmp/coil-hf-check", help="scratch directory (emptied first)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the bf16 rows on the GPU")
    args = ap.parse_args()
    import safetensors
    import transformers

    coil = str(Path(args.coil).resolve())
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gpu = torch.cuda.is_available() and not args.no_gpu
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, safetensors {safetensors.__version__}, "
          f"GPU: {torch.cuda.get_device_name(0) if gpu else 'none'}; coil {coil}; work {work}\n")
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    c = Checker(coil, work, gpu)
    models = hf_models()
    imported = {}
    for seed, (name, make) in enumerate(models.items(), start=1):
        try:
            imported[name] = check_import(c, name, make, seed)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            c.rows.append((f"{name} -> coil import", "-", "-", "-", "-", f"FAIL ({str(e).splitlines()[0][:120]})"))
    for seed, (name, config) in enumerate([("MambaForCausalLM", "mamba"), ("LlamaForCausalLM", "transformer"),
                                           ("GPT2LMHeadModel", "gpt2")], start=11):
        try:
            check_export(c, name, config, seed)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            c.rows.append((f"coil {config} -> export --format hf", "-", "-", "-", "-", f"FAIL ({str(e).splitlines()[0][:120]})"))
    if "MambaForCausalLM" in imported:
        model, ids, tokens = imported["MambaForCausalLM"]
        check_mamba_ssm(c, model, ids, tokens)
    print()
    sys.exit(1 if c.table() else 0)


if __name__ == "__main__":
    main()
