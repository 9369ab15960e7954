#!/usr/bin/env python3
"""Tokenize text with a Hugging Face tokenizer into coil token files (docs/FORMATS.md).

  scripts/prepare_hf.py --tokenizer EleutherAI/gpt-neox-20b --out data/pile/train/part.h5 texts/*.txt
  scripts/prepare_hf.py --tokenizer gpt2 --dataset wikitext --config wikitext-103-raw-v1 \
      --split train --out data/wt103/train.h5

Writes /tokens (uint16 when the vocabulary fits, else uint32, chunked), /doc_offsets (uint64)
and the root attributes vocab_size, tokenizer, eot_token, format, format_version: the same
format `coil prepare` writes. Each text file, JSON-lines record or dataset row is one document,
followed by the end-of-text token. Needs h5py and transformers (and datasets for --dataset).
"""
import argparse
import json
import os
import sys

import numpy as np


def documents(args):
    if args.dataset:
        from datasets import load_dataset

        ds = load_dataset(args.dataset, args.config, split=args.split, streaming=True)
        for row in ds:
            text = row[args.text_field]
            if text and text.strip():
                yield text
        return
    for path in args.inputs:
        if path.endswith(".jsonl"):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)[args.text_field]
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="text or .jsonl files")
    ap.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer name or path")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dataset", help="a Hugging Face dataset name instead of files")
    ap.add_argument("--config", default=None)
    ap.add_argument("--split", default="train")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--vocab-size", type=int, default=0,
                    help="vocab_size attribute (default: len(tokenizer)); the model's vocab_size must be >= it")
    ap.add_argument("--chunk", type=int, default=1 << 16)
    args = ap.parse_args()
    if not args.inputs and not args.dataset:
        sys.exit("prepare_hf: give text files or --dataset")

    import h5py
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = args.vocab_size or len(tok)
    eot = tok.eos_token_id if tok.eos_token_id is not None else -1
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    tmp = args.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    offsets = [0]
    with h5py.File(tmp, "w") as f:
        d = f.create_dataset("tokens", shape=(0,), maxshape=(None,), dtype=dtype, chunks=(args.chunk,))
        f.attrs["vocab_size"] = np.int64(vocab)
        f.attrs["tokenizer"] = args.tokenizer
        f.attrs["eot_token"] = np.int64(eot)
        f.attrs["format"] = "coil-tokens"
        f.attrs["format_version"] = np.int64(1)
        n = 0
        buf = []
        for text in documents(args):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if eot >= 0:
                ids.append(eot)
            if ids and max(ids) >= vocab:
                sys.exit(f"prepare_hf: token id {max(ids)} >= vocab_size {vocab}")
            buf.extend(ids)
            offsets.append(offsets[-1] + len(ids))
            if len(buf) >= args.chunk * 16:
                d.resize((n + len(buf),))
                d[n:] = np.asarray(buf, dtype=dtype)
                n += len(buf)
                buf = []
        if buf:
            d.resize((n + len(buf),))
            d[n:] = np.asarray(buf, dtype=dtype)
            n += len(buf)
        f.create_dataset("doc_offsets", data=np.asarray(offsets, dtype=np.uint64))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {n} tokens, {len(offsets) - 1} documents, vocab_size {vocab}, eot {eot}")


if __name__ == "__main__":
    main()
