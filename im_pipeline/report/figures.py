"""The report's figures as PNG files: drawn only when their inputs changed (a stamp beside them), on the whole
0-100 scale with 95% intervals."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as pstats
from im_pipeline.provenance import write_text_atomic
from im_pipeline.report.cells import BIASED, bench_label, chance_percent, factor
from im_pipeline.runs.layout import BASE_ARM


def savefig(fig: Any, out: Path) -> None:
    """PNG written atomically (two runs building one report never leave a half-written figure)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_text_atomic(out, buf.getvalue())


INPUTS_STAMP = ".inputs"
"""``figures/.inputs``: the hash of the inputs the figures were drawn from. During a build it exists only when the
figures are up to date (``build_report`` removes it otherwise and writes it back at the end): that per-directory
file, not a module-level flag, says whether to reuse them, so concurrent builds of different reports never mix."""


def cached_figure(fig_dir: Path, name: str, fn: Any, *args: Any) -> Path | None:
    """Render a figure, or reuse it when the report's inputs did not change since it was drawn."""
    if (fig_dir / INPUTS_STAMP).is_file():
        return fig_dir / name if (fig_dir / name).is_file() else None
    return fn(*args)


def inputs_key(run: agg.RunResults) -> str:
    """Hash of everything the figures are drawn from: result files of this and sibling runs, and this code."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for root in sorted(p for p in run.root.parent.iterdir() if p.is_dir()):
        for f in sorted(
            [
                *root.glob("config.yaml"),
                *root.glob("data/*.json"),
                *root.glob("*/eval/*.json"),
                *root.glob("*/seed-*/eval/*.json"),
                *root.glob("*/seed-*/train_*"),
            ]
        ):
            h.update(str(f.relative_to(run.root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparison_figure(run: agg.RunResults, rows: list[agg.ComparisonRow], fig_dir: Path) -> Path | None:
    """Bars of every arm per benchmark on the 0-100 scale, with 95% intervals and chance levels."""
    rows = [r for r in rows if r.benchmark != "overfitting" and any(r.arms.values())]
    if not rows:
        return None
    plt = pyplot()
    arms = [a for a in [BASE_ARM, *run.arms] if any(r.arm(a) for r in rows)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows) * max(len(arms), 1) / 2, 3.6))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        bars = [(j, s, factor(run.first_ok(r.benchmark), r.benchmark)) for j, r in enumerate(rows) if (s := r.arm(arm))]
        xs = [j + (i - (len(arms) - 1) / 2) * width for j, _, _ in bars]
        errors = [_error_bar(s, k) for _, s, k in bars]
        ys = [s.mean * k for _, s, k in bars]
        ax.bar(xs, ys, width, yerr=[[e[0] for e in errors], [e[1] for e in errors]], capsize=3, label=arm)
    for j, r in enumerate(rows):
        if r.position_bias:
            ax.text(j, 92, BIASED.replace(" — ", "\n"), ha="center", va="top", fontsize=7, color="firebrick")
        c = chance_percent(r.benchmark)
        if c is not None:
            ax.hlines(c, j - 0.45, j + 0.45, colors="grey", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(rows)), [bench_label(r.benchmark) for r in rows])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)  # the whole scale: differences look as large as they are
    ax.set_title(
        f"{run.experiment}: 95% intervals (none below {pstats.MIN_ITEMS} items or seeds; dashed: chance)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = fig_dir / "comparison.png"
    savefig(fig, out)
    plt.close(fig)
    return out


def _error_bar(s: agg.ArmSummary, k: float) -> tuple[float, float]:
    """(below, above) the mean: the interval when there is one, else the 95% quantile times the stderr (normal over
    items, Student-t with k − 1 df over k seeds)."""
    if s.interval:
        return max(s.mean * k - s.interval[0] * k, 0.0), max(s.interval[1] * k - s.mean * k, 0.0)
    from scipy.stats import t as t_dist

    q = t_dist.ppf(0.975, s.n_seeds - 1) if s.stderr_kind == "seeds" else 1.96
    e = (s.stderr or 0.0) * k * q
    return e, e


def ensure_span(ax: Any, min_span: float) -> None:
    """Widen the y-axis (about its centre) to at least ``min_span``: a difference never looks larger than its
    uncertainty."""
    lo, hi = ax.get_ylim()
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - min_span / 2, mid + min_span / 2)


def integer_steps(ax: Any) -> None:
    """Integer ticks on the x-axis (optimiser steps)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
