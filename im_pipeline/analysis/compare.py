"""Two runs side by side (``im-pipeline compare A B``): every benchmark × arm × seed the two have in common, B − A.

A and B are report directories (their ``results/``), results directories or run directories (``runs/<exp>/``).
Where both results carry per-item scores, the comparison is paired on the items both scored (the same statistics
as the report's IM − IT: :func:`~im_pipeline.analysis.stats.paired_comparison`, a paired bootstrap 95% interval and
an exact McNemar or Wilcoxon signed-rank test); otherwise (no per-item scores, or no common item ids) it is the
difference of the two values, unpaired, with no interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as st
from im_pipeline.report.results import RESULTS_DIR, is_results_dir
from im_pipeline.runs.layout import BASE_ARM


def run_dir_of(path: Path) -> Path:
    """The directory holding a run's result files: a report directory's ``results/``, else ``path`` itself."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"not a directory: {path}")
    return path / RESULTS_DIR if is_results_dir(path / RESULTS_DIR) else path


def _row(bench: str, arm: str, seed: int | None, a: Any, b: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"benchmark": bench, "arm": arm, "seed": seed, "metric": b.metric or a.metric}
    row |= {"a": a.value, "b": b.value, "delta": b.value - a.value, "paired": False, "n_items": None}
    row |= {"ci_low": None, "ci_high": None, "p_value": None, "test": None}
    items_a, items_b = agg.item_scores(a, bench), agg.item_scores(b, bench)
    if items_a and items_b and set(items_a) & set(items_b):
        c = st.paired_comparison(items_b, items_a)
        test = c["test"]["test"] if c.get("test") else c["method"]
        row |= {"paired": True, "n_items": c["n_items"], "delta": c["delta"], "ci_low": c["ci_low"]}
        row |= {"ci_high": c["ci_high"], "p_value": c["p_value"], "test": test}
    return row


def compare_runs(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    """B − A for every benchmark, arm (the base model included) and seed with a usable result in both runs."""
    a, b = agg.load_run(run_dir_of(a_dir)), agg.load_run(run_dir_of(b_dir))
    rows = []
    for bench in [x for x in agg.benchmark_order(b) if x in a.results]:
        for arm in [x for x in (BASE_ARM, *b.arms) if x in a.by_arm(bench) and x in b.by_arm(bench)]:
            by_a, by_b = a.by_seed(bench, arm), b.by_seed(bench, arm)
            for seed in sorted((s for s in by_b if s in by_a), key=lambda s: (s is not None, s or 0)):
                if agg.ok(by_a[seed]) and agg.ok(by_b[seed]):
                    rows.append(_row(bench, arm, seed, by_a[seed], by_b[seed]))
    side = {
        "a": {"experiment": a.experiment, "dir": str(a.root)},
        "b": {"experiment": b.experiment, "dir": str(b.root)},
    }
    return {**side, "rows": rows}


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table (one line per row of :func:`compare_runs`)."""
    a, b = result["a"], result["b"]
    lines = [
        f"A: {a['experiment']} ({a['dir']})",
        f"B: {b['experiment']} ({b['dir']})",
        "",
        "| benchmark | arm | seed | metric | A | B | B − A | 95% CI | p | paired items |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ci = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None else "–"
        paired = str(r["n_items"]) if r["paired"] else "unpaired"
        seed = "–" if r["seed"] is None else str(r["seed"])
        lines.append(
            f"| {r['benchmark']} | {r['arm']} | {seed} | {r['metric'] or '?'} | {_num(r['a'])} | {_num(r['b'])} "
            f"| {_num(r['delta'])} | {ci} | {_num(r['p_value'], 3)} | {paired} |"
        )
    if not result["rows"]:
        lines.append("| (no benchmark, arm and seed with a result in both) |||||||||| ")
    return "\n".join(lines)
