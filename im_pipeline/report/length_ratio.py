"""The length-ratio analysis (paper Figure 2): relative AlpacaEval gain of IM over IT against the
instruction/output length ratio, with the paper's fits overlaid."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import paper_reference as paper
from im_pipeline.analysis.length_ratio import fit_line, length_ratio_points
from im_pipeline.report.cells import BIASED, LENGTH_BENCHMARK, bench_label, fmt, md_table
from im_pipeline.report.figures import cached_figure, pyplot, savefig


def length_ratio_section(run: agg.RunResults, fig_dir: Path) -> str:
    """One point per experiment beside this one, the fits of gain against log ratio and log size, the paper's."""
    if not run.config.benchmark_enabled(LENGTH_BENCHMARK):
        # Nothing of this experiment's to place; and the section would depend on where the run directory lies.
        return f"{bench_label(LENGTH_BENCHMARK)} is not run in this experiment: no length-ratio point."
    runs_root = run.root.parent
    points = length_ratio_points(runs_root, LENGTH_BENCHMARK)
    txt = [
        f"One point per experiment under `{runs_root}` with both IT and IM results on "
        f"{bench_label(LENGTH_BENCHMARK)}: relative gain = (IM − IT) / IT · 100 (the paper's Figure 2 y-axis, "
        "there on AlpacaEval 1.0 with a GPT-4 judge), against the natural log of the training set's "
        "instruction/output ratio and of its number of examples."
    ]
    if points:
        txt.append(
            md_table(
                ["experiment", "train set", "n", "ratio", "IT", "IM", "relative gain (%)"],
                [
                    [
                        p["experiment"],
                        p["train_source"],
                        p["n"],
                        fmt(p["ratio"], 3),
                        fmt(p["it"], 2),
                        fmt(p["im"], 2),
                        fmt(p["gain"], 1) + (f" — {BIASED}" if p["judge_position_biased"] else ""),
                    ]
                    for p in points
                ],
            )
        )
    else:
        txt.append(f"No experiment has IT and IM {bench_label(LENGTH_BENCHMARK)} results yet, so there are no points.")
    # A position-biased judge's win rates are not measurements: such points are listed, never fitted.
    measured = [p for p in points if not p["judge_position_biased"]]
    if len(measured) < len(points):
        txt.append(f"- Not in the fits: {', '.join(p['experiment'] for p in points if p not in measured)} ({BIASED}).")
    fits = {
        "ratio": fit_line([p["log_ratio"] for p in measured], [p["gain"] for p in measured]),
        "n": fit_line([p["log_n"] for p in measured], [p["gain"] for p in measured]),
    }
    txt += [fit_text(name, fit) for name, fit in fits.items()]
    r, n = paper.FIG2_GAIN_VS_LOG_RATIO, paper.FIG2_GAIN_VS_LOG_NUM_EXAMPLES
    txt.append(
        f"- Paper (reference, LLaMA-2-7B): gain = {r['slope']}·ln(ratio) + {r['intercept']}; "
        f"gain = {n['slope']}·ln(n) + {n['intercept']} (Tulu V2 subsets, {n['range'][0]:,}–{n['range'][1]:,} "
        "examples). Reference only, not results of this pipeline."
    )
    fig = cached_figure(fig_dir, "length_ratio.png", _length_ratio_figure, points, fits, fig_dir)
    if fig:
        txt.append(f"\n![length ratio](figures/{fig.name})")
    return "\n\n".join(txt[:2]) + "\n\n" + "\n".join(txt[2:])


def fit_text(name: str, fit: dict[str, Any] | None) -> str:
    """One fit of this project's points (against ``ratio`` or ``n``), or what it needs."""
    label = "log ratio" if name == "ratio" else "log #examples"
    if fit:
        return (
            f"- Fit vs {label} (this project, {fit['n']} points): gain = {fit['slope']:.2f}·x + "
            f"{fit['intercept']:.2f}, r² = {fit['r2']:.2f}."
        )
    return (
        f"- Fit vs {label}: needs at least two experiments with different x (and a judge that is not "
        "position-biased); run more configs "
        "(e.g. other datasets or `data.select_ratio`) to fill this in."
    )


def _length_ratio_figure(points: list[dict[str, Any]], fits: dict[str, Any], fig_dir: Path) -> Path:
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    r, n = paper.FIG2_GAIN_VS_LOG_RATIO, paper.FIG2_GAIN_VS_LOG_NUM_EXAMPLES
    # left: vs log ratio; paper points = Table 1 AlpacaEval 1.0 gains at Table 5 ratios
    ax = axes[0]
    ref_pts = [
        (math.log(paper.TABLE5_LENGTH_STATS[k]["ratio"]), paper.observed_gain(k), k)
        for k in paper.TABLE1_ALPACA_EVAL_1
        if k in paper.TABLE5_LENGTH_STATS
    ]
    xs_all = [p[0] for p in ref_pts] + [p["log_ratio"] for p in points]
    xr = np.linspace(min(xs_all) - 0.3, max(xs_all) + 0.3, 50)
    ax.plot(xr, r["slope"] * xr + r["intercept"], "--", color="grey", label="paper fit (reference)")
    ax.scatter(
        [p[0] for p in ref_pts], [p[1] for p in ref_pts], marker="x", color="grey", label="paper points (reference)"
    )
    for x, y, k in ref_pts:
        ax.annotate(k, (x, y), fontsize=6, color="grey")
    _ours(ax, points, "log_ratio", fits["ratio"], xr)
    ax.set_xlabel("ln(instruction / output length ratio)")
    ax.set_ylabel("relative gain of IM over IT (%)")
    ax.set_title("gain vs length ratio")
    ax.legend(fontsize=7)
    # right: vs log #examples; the paper's fit only over its range (1k-35k examples)
    ax = axes[1]
    lo, hi = n["range"]
    xp = np.linspace(math.log(lo), math.log(hi), 50)
    ax.plot(xp, n["slope"] * xp + n["intercept"], "--", color="grey", label="paper fit (reference, ratio≈10)")
    xs = [p["log_n"] for p in points] or [math.log(lo)]
    xr2 = np.linspace(min(xs) - 0.3, max(xs) + 0.3, 50)
    _ours(ax, points, "log_n", fits["n"], xr2)
    ax.set_xlabel("ln(number of training examples)")
    ax.set_title("gain vs training-set size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = fig_dir / "length_ratio.png"
    savefig(fig, out)
    plt.close(fig)
    return out


def _ours(ax: Any, points: list[dict[str, Any]], key: str, fit: dict[str, Any] | None, xr: Any) -> None:
    if points:
        ax.scatter(
            [p[key] for p in points],
            [p["gain"] for p in points],
            color="C0",
            zorder=3,
            label="this project (one point per experiment)",
        )
        for p in points:
            ax.annotate(p["experiment"], (p[key], p["gain"]), fontsize=7, color="C0")
    if fit:
        ax.plot(xr, fit["slope"] * xr + fit["intercept"], color="C0", label="this project fit")
    ax.axhline(0, color="black", linewidth=0.5)
