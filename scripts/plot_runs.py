#!/usr/bin/env python3
"""Loss curves of one or more coil runs (metrics.jsonl) as a PNG.

  coil plot runs runs/mamba-130m runs/transformer++-125m -o loss.png [--x tokens] [--val]

(`coil plot runs ARGS` runs this script with the Python that has matplotlib, as `coil report`
does; `python3 scripts/plot_runs.py ARGS` works too where that python3 has it.)
Each argument is a run directory or a metrics.jsonl file. Training loss is drawn as a line,
validation loss (when present) as markers; --x picks the axis (step or tokens); --log puts
the x axis on a log scale. Exits with status 3 when matplotlib is missing.
"""
import argparse
import json
import os
import sys

import plot_common


def read(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    train, val = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if rec.get("skipped"):
                continue
            if rec.get("loss") is not None:
                train.append(rec)
            if rec.get("val_loss") is not None:
                val.append(rec)
    return train, val


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--out", default="loss.png")
    ap.add_argument("--x", choices=["step", "tokens"], default="step")
    ap.add_argument("--log", action="store_true", help="log-scale x axis")
    ap.add_argument("--val", action="store_true", help="only validation loss")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    plt = plot_common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in args.runs:
        try:
            train, val = read(run)
        except OSError as e:
            sys.exit(f"plot_runs: cannot read {run}: {e}")
        name = os.path.basename(os.path.normpath(run)).replace("metrics.jsonl", "") or run
        line = None
        if train and not args.val:
            (line,) = ax.plot([r[args.x] for r in train], [r["loss"] for r in train], label=f"{name} train", lw=1.2)
        if val:
            ax.plot([r[args.x] for r in val], [r["val_loss"] for r in val], "o--", ms=4,
                    color=line.get_color() if line else None, label=f"{name} val")
    ax.set_xlabel("tokens" if args.x == "tokens" else "step")
    ax.set_ylabel("loss (nats/token)")
    if args.log:
        ax.set_xscale("log")
    if args.title:
        ax.set_title(args.title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    else:
        print("plot_runs: the runs have logged no loss yet", file=sys.stderr)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
