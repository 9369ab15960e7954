#!/usr/bin/env python3
"""Accuracy against sequence length of one or more runs (the Mamba paper's Table 11 as a plot).

    coil plot lengths runs/ih-mamba runs/ih-mha-rope -o lengths.png [--title TEXT]

Each argument is a run directory (its length_eval.csv) or a CSV that `coil eval RUN --lengths`
wrote (docs/FORMATS.md). One line per run: accuracy (%) against length on a log2 axis; lengths
that ran out of memory or exceed the model's position table are crosses on the x axis; the
chance level is a dotted line and the training length a grey vertical line. `coil eval
--lengths` draws this plot itself; `coil plot lengths` redraws it, several runs on one plot.
Exits with status 3 when matplotlib is missing.
"""
import argparse
import csv
import math
import os
import sys

import plot_common


def read(path):
    if os.path.isdir(path):
        path = os.path.join(path, "length_eval.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="run directories or length_eval.csv files")
    ap.add_argument("-o", "--out", default="lengths.png")
    ap.add_argument("--title", default="")
    ap.add_argument("--dpi", type=int, default=150)
    args = ap.parse_args()
    plt = plot_common.pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.8))
    lengths, chances, train_lengths = set(), set(), set()
    failed_label_shown = False
    for path in args.inputs:
        try:
            rows = read(path)
        except (OSError, ValueError) as e:
            print(f"plot_lengths: cannot read {path}: {e}", file=sys.stderr)
            return 1
        name = rows[0]["run"] or os.path.basename(os.path.normpath(path))
        ok = [r for r in rows if r["status"] == "ok"]
        failed = [r for r in rows if r["status"] != "ok"]
        xs = [int(r["length"]) for r in ok]
        ys = [100 * float(r["accuracy"]) for r in ok]
        (line,) = ax.plot(xs, ys, "o-", ms=4, lw=1.4, label=name)
        if failed:
            ax.plot([int(r["length"]) for r in failed], [0] * len(failed), "x", ms=8, mew=2, color=line.get_color(),
                    clip_on=False, label=None if failed_label_shown else "OOM / too long")
            failed_label_shown = True
        lengths.update(int(r["length"]) for r in rows)
        chances.update(float(r["chance"]) for r in rows if r["chance"])
        train_lengths.update(int(r["train_length"]) for r in rows if r["train_length"])

    for c in chances:
        ax.axhline(100 * c, ls=":", color="grey", lw=1)
    for t in train_lengths:
        ax.axvline(t, color="grey", alpha=0.4, lw=4)
    ax.set_xscale("log", base=2)
    ticks = sorted(lengths)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"$2^{{{int(math.log2(t))}}}$" if t & (t - 1) == 0 else str(t) for t in ticks])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("sequence length (grey: training length; dotted: chance)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(args.title or "accuracy against sequence length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
