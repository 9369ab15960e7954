#!/usr/bin/env python3
"""Plots of a scaling report (scaling/report.h writes the inputs; docs/SCALING.md).

    python3 scripts/plot_scaling.py REPORT_DIR [--out DIR] [--title TEXT]

reads REPORT_DIR/runs.csv, curves.csv, fits.csv and crossovers.csv and writes
  loss_vs_flops.png  final validation loss against training FLOPs, log-log, perplexity
                     (e^loss) on the right axis, one colour and marker per architecture, its
                     fitted power law as a line (dashed where extrapolated) in its 95%
                     confidence band (where the fit has one), the crossover of two fits with
                     its 95% interval when that falls in the plot; interrupted runs as hollow
                     markers (not fitted)
  loss_curves.png    training loss (lines) and validation loss (points) of every run
                     against tokens seen, log-x; colour by architecture, darker = larger

Needs only matplotlib (Debian: python3-matplotlib). Exits with status 3 when matplotlib is
missing, so that callers can tell "skipped" from "failed".
"""
import argparse
import csv
import math
import os
import sys

import plot_common


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return math.nan
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", help="directory holding runs.csv, curves.csv, fits.csv")
    ap.add_argument("--out", help="where the PNG files go (default: report_dir)")
    ap.add_argument("--title", default="", help="a title prefix")
    ap.add_argument("--dpi", type=int, default=150)
    args = ap.parse_args()

    plt = plot_common.pyplot()
    import numpy as np
    from matplotlib import colors as mcolors
    from matplotlib.ticker import FormatStrFormatter

    out = args.out or args.report_dir
    os.makedirs(out, exist_ok=True)
    runs = read_csv(os.path.join(args.report_dir, "runs.csv"))
    curves = read_csv(os.path.join(args.report_dir, "curves.csv"))
    fits = read_csv(os.path.join(args.report_dir, "fits.csv"))
    crossovers = read_csv(os.path.join(args.report_dir, "crossovers.csv"))
    if not runs:
        print(f"no runs in {args.report_dir}/runs.csv", file=sys.stderr)
        return 1

    archs = []
    for r in runs:
        a = r["architecture"]
        if a and a not in archs:
            archs.append(a)
    palette = plt.get_cmap("tab10").colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    colour = {a: palette[i % len(palette)] for i, a in enumerate(archs)}
    marker = {a: markers[i % len(markers)] for i, a in enumerate(archs)}
    title = (args.title + ": ") if args.title else ""

    # ---- loss against FLOPs ----
    fig, ax = plt.subplots(figsize=(7, 5))
    any_point = any_band = False
    plotted = []  # the x-spans the fit lines cover
    for a in archs:
        pts = [(num(r["flops"]), num(r["val_loss"]), r["status"]) for r in runs if r["architecture"] == a]
        done = [(x, y) for x, y, s in pts if s == "finished" and x > 0 and y > 0]
        partial = [(x, y) for x, y, s in pts if s != "finished" and x > 0 and y > 0]
        fit = next((f for f in fits if f["architecture"] == a and f["ok"] == "1"), None)
        label = a
        if fit:
            c = num(fit["c"])
            margin = (num(fit.get("b_high")) - num(fit.get("b_low"))) / 2
            exponent = f"({num(fit['b']):.3f} ± {margin:.3f})" if math.isfinite(margin) else f"{num(fit['b']):.3f}"
            label += f": {num(fit['a']):.3g}·C^-{exponent}" + (f" + {c:.3f}" if c > 0 else "")
        if done:
            ax.scatter(*zip(*done), color=colour[a], marker=marker[a], s=40, zorder=3, label=label)
            any_point = True
        if partial:
            ax.scatter(*zip(*partial), facecolors="none", edgecolors=colour[a], marker=marker[a], s=40, zorder=3,
                       label=f"{a} (interrupted, not fitted)")
            any_point = True
        if fit:
            fa, fb, fc = num(fit["a"]), num(fit["b"]), num(fit["c"])
            lo, hi = num(fit["flops_min"]), num(fit["flops_max"])
            all_x = [x for x, _ in done + partial]
            span_lo, span_hi = min(all_x + [lo]) / 2, max(all_x + [hi]) * 2
            n = 64

            def line(x0, x1):
                xs = [x0 * (x1 / x0) ** (i / (n - 1)) for i in range(n)]
                return xs, [fa * x ** (-fb) + fc for x in xs]

            ax.plot(*line(lo, hi), color=colour[a], lw=1.5, zorder=2)
            ax.plot(*line(span_lo, lo), color=colour[a], lw=1, ls="--", zorder=2)
            ax.plot(*line(hi, span_hi), color=colour[a], lw=1, ls="--", zorder=2)
            band = confidence_band(fit, span_lo, span_hi, n)
            if band:
                ax.fill_between(*band, color=colour[a], alpha=0.15, lw=0, zorder=1)
                any_band = True
            plotted.append((span_lo, span_hi))
    for x in crossovers:
        c = num(x.get("x"))
        if x.get("ok") != "1" or not (c > 0) or not plotted:
            continue
        view_lo, view_hi = min(p[0] for p in plotted), max(p[1] for p in plotted)
        if not view_lo <= c <= view_hi:
            continue
        ax.axvline(c, color="0.3", lw=1, ls=":", zorder=2, label=f"crossover {x['first']} / {x['second']}: {c:.3g}")
        lo, hi = num(x.get("low")), num(x.get("high"))
        if x.get("bounded") == "1" and hi > lo:
            ax.axvspan(max(lo, view_lo), min(hi, view_hi), color="0.5", alpha=0.12, lw=0, zorder=0,
                       label="crossover: 95% interval")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Losses span a narrow range: plain numbers on the log axis, not 8x10^0.
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    # e^loss and its inverse, clipped: matplotlib also evaluates them at the scale's far ends.
    ppl = ax.secondary_yaxis("right", functions=(lambda v: np.exp(np.clip(v, -700, 700)),
                                                 lambda v: np.log(np.maximum(v, 1e-300))))
    ppl.set_ylabel("perplexity (e^loss)")
    ppl.yaxis.set_major_formatter(FormatStrFormatter("%.4g"))
    ppl.yaxis.set_minor_formatter(FormatStrFormatter("%.4g"))
    ax.set_title(title + "loss vs compute" + (" (bands: 95% of the fitted line)" if any_band else ""))
    ax.grid(True, which="both", alpha=0.3)
    if any_point:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has a validation loss yet", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_vs_flops.png"), dpi=args.dpi)
    plt.close(fig)

    # ---- loss curves against tokens ----
    fig, ax = plt.subplots(figsize=(8, 5))
    by_run = {}
    for p in curves:
        by_run.setdefault(p["run"], []).append(p)
    params = {r["run"]: num(r["parameters"]) for r in runs}
    arch_of = {r["run"]: r["architecture"] for r in runs}
    for a in archs:
        names = [r["run"] for r in runs if r["architecture"] == a and r["run"] in by_run]
        sizes = sorted({params.get(n, 0) for n in names})
        for name in names:
            pts = by_run[name]
            rank = sizes.index(params.get(name, 0)) if len(sizes) > 1 else 0
            shade = 0.45 + 0.55 * (rank / (len(sizes) - 1) if len(sizes) > 1 else 1.0)
            base = mcolors.to_rgb(colour[a])
            col = tuple(1 - shade * (1 - c) for c in base)  # lighter for smaller models
            train = [(num(p["tokens"]), num(p["loss"])) for p in pts if p["split"] == "train"]
            val = [(num(p["tokens"]), num(p["loss"])) for p in pts if p["split"] == "val"]
            train = [(x, y) for x, y in train if x > 0 and math.isfinite(y)]
            val = [(x, y) for x, y in val if x > 0 and math.isfinite(y)]
            status = next((r["status"] for r in runs if r["run"] == name), "")
            lab = f"{name} ({human(params.get(name, 0))})" + ("" if status == "finished" else f" [{status}]")
            if train:
                ax.plot(*zip(*train), color=col, lw=1, label=lab)
                lab = None
            if val:
                ax.plot(*zip(*val), color=col, marker=marker[arch_of.get(name, a)], ms=4, ls="none", label=lab)
    ax.set_xscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (lines: train, markers: validation)")
    ax.set_title(title + "loss curves")
    ax.grid(True, which="both", alpha=0.3)
    if by_run:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(by_run) <= 24 else 2)
    else:
        ax.text(0.5, 0.5, "no logged losses", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss_curves.png"), dpi=args.dpi, bbox_inches="tight")
    plt.close(fig)
    return 0


def confidence_band(fit, x0, x1, n):
    """The fitted line's 95% band, exp(log(loss - c) +- t se(x)) + c, from fits.csv; None without one."""
    s2, t, m, sxx, k = (num(fit.get(key)) for key in ("residual_var", "t95", "mean_log_x", "sxx", "points"))
    if not all(math.isfinite(v) for v in (s2, t, m, sxx, k)) or sxx <= 0:
        return None
    fa, fb, fc = num(fit["a"]), num(fit["b"]), num(fit["c"])
    xs = [x0 * (x1 / x0) ** (i / (n - 1)) for i in range(n)]
    low, high = [], []
    for x in xs:
        u = math.log(x)
        half = t * math.sqrt(s2 * (1 / k + (u - m) ** 2 / sxx))
        centre = math.log(fa) - fb * u
        low.append(math.exp(centre - half) + fc)
        high.append(math.exp(centre + half) + fc)
    return xs, low, high


def human(v):
    if not math.isfinite(v) or v <= 0:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


if __name__ == "__main__":
    sys.exit(main())
