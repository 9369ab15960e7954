#!/usr/bin/env python3
"""Where the time of a training step goes, from an Nsight Compute CSV of a few steps.

Run the trainer under ncu with one metric (the kernel's duration), then give the CSV here:

  ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \\
      --log-file step.csv build/coil train configs/bench/mamba-130m.yaml \\
      --set train.steps=3 --set log.every=1
  python3 scripts/step_profile.py step.csv --step-ms 149.0

Steps are delimited by the optimizer's kernel (the last kernel of a step: AdamW); the last
complete step is reported, kernels grouped by kind, with the GPU time of each group and its
share of the step. --step-ms (the step time measured without the profiler, e.g. from
metrics.jsonl's tokens/s) adds the row 'launch gaps and host': the part of the step in which
the GPU ran no kernel.
"""
import argparse
import csv
import re
import sys

GROUPS = [  # (group, pattern on the lower-cased kernel name), first match wins
    ("selective scan", r"scan_|document_starts|reduce_dbc|sum_leading"),
    ("conv1d", r"conv1d"),
    ("matrix products (cuBLASLt)", r"gemm|gemv|cutlass|nvjet|xmma|cublas|splitk|sm90_|sm80_"),
    ("attention", r"attention|flash|attn"),
    ("optimizer (AdamW, grad norm, clip)", r"adamw|sumsq|norm_finish|scale_kernel|clip"),
    ("norms (fused add + norm)", r"norm"),
    ("loss (fused linear cross-entropy)", r"loss|cross_entropy|logsumexp|softmax"),
    ("embedding", r"embedding"),
    ("elementwise and other", r"."),
]


def group_of(name):
    low = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, low):
            return group
    return GROUPS[-1][0]


def read_kernels(path):
    """[(kernel name, seconds)] in launch order from ncu's CSV (other lines are skipped)."""
    rows = []
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0}.get(unit, 1e-9)
        rows.append((row["Kernel Name"], value * scale))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--step-ms", type=float, default=None, help="measured step time without the profiler")
    args = ap.parse_args()
    kernels = read_kernels(args.csv)
    if not kernels:
        sys.exit(f"{args.csv}: no kernel durations (was ncu run with --metrics gpu__time_duration.sum --csv?)")
    ends = [i for i, (name, _) in enumerate(kernels) if "adamw" in name.lower()]
    if len(ends) < 2:
        sys.exit(f"{args.csv}: fewer than two optimizer kernels: profile at least two steps")
    step = kernels[ends[-2] + 1: ends[-1] + 1]
    total = sum(t for _, t in step)
    by_group = {}
    for name, t in step:
        g = by_group.setdefault(group_of(name), [0.0, 0])
        g[0] += t
        g[1] += 1
    ref = args.step_ms / 1e3 if args.step_ms else total
    print(f"| part of the step | GPU time (ms) | share of the step | kernels |")
    print(f"| --- | --- | --- | --- |")
    for group, (t, n) in sorted(by_group.items(), key=lambda kv: -kv[1][0]):
        print(f"| {group} | {t * 1e3:.2f} | {100 * t / ref:.1f}% | {n} |")
    print(f"| all kernels | {total * 1e3:.2f} | {100 * total / ref:.1f}% | {len(step)} |")
    if args.step_ms:
        gap = ref - total
        print(f"| launch gaps and host (measured step {args.step_ms:.2f} ms) | {gap * 1e3:.2f} | {100 * gap / ref:.1f}% | |")
    print()
    print("Largest kernels of the step:")
    per_name = {}
    for name, t in step:
        short = re.sub(r"\(.*", "", name)[:110]
        e = per_name.setdefault(short, [0.0, 0])
        e[0] += t
        e[1] += 1
    for short, (t, n) in sorted(per_name.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"  {t * 1e3:8.3f} ms  {n:4d} x  {short}")


if __name__ == "__main__":
    main()
