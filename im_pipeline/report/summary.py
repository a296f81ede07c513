"""The report's machine-readable summary: ``summary.csv`` and ``summary.json`` beside ``REPORT.md``.

One row per arm × seed × benchmark × metric (the base model's rows have seed ``null``), read from the typed result
files (:class:`~im_pipeline.results.EvalResult` through :func:`~im_pipeline.analysis.aggregate.load_run`): the value,
its standard error, ``n`` (items scored) and a 95% interval of that one result, the same one the report's
per-arm cells use (:func:`~im_pipeline.analysis.aggregate.arm_summary` of the single seed): Wilson for binary
items (accuracy, greedy pass@1), else value ± 1.96 · stderr; none below
:data:`~im_pipeline.analysis.stats.MIN_ITEMS` items. A skipped benchmark keeps its row, with ``status`` ``skipped``
and no value. The IM − IT comparisons stay in REPORT.md (and ``im-pipeline compare`` pairs two runs).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as st
from im_pipeline.provenance import write_text_atomic
from im_pipeline.runs.layout import BASE_ARM

SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
COLUMNS = (
    "experiment",
    "arm",
    "seed",
    "benchmark",
    "metric",
    "status",
    "value",
    "stderr",
    "n",
    "ci_low",
    "ci_high",
    "interval",
)
NORMAL_95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
SECONDARY = {
    # metric (a field of the benchmark's result) -> (its stderr field, its item-count field); None: not recorded
    "length_controlled_win_rate": ("lc_standard_error", None),
    "discrete_win_rate": (None, None),
    "train_loss": (None, "n_train_loss"),
    "test_loss": (None, "n_test_loss"),
    "loss_gap": (None, None),
}
"""Metrics a result carries beside its main ``metric``/``value`` (AlpacaEval, overfitting): one row each."""


def _interval(rec: Any, bench: str) -> tuple[float | None, float | None, str | None]:
    one = agg.arm_summary({rec.seed: rec}, bench)
    if one is None or one.too_few_items:
        return None, None, st.TOO_FEW if one is not None else None
    if one.interval is not None:
        return one.interval[0], one.interval[1], one.interval_kind
    if one.stderr is not None:
        return one.mean - NORMAL_95 * one.stderr, one.mean + NORMAL_95 * one.stderr, "normal 95% (value ± 1.96 stderr)"
    return None, None, None


def _secondary_rows(rec: Any, head: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for metric, (stderr_field, n_field) in SECONDARY.items():
        value = getattr(rec, metric, None)
        if value is None:
            continue
        stderr = getattr(rec, stderr_field) if stderr_field else None
        n = getattr(rec, n_field) if n_field else None
        lo, hi = (value - NORMAL_95 * stderr, value + NORMAL_95 * stderr) if stderr is not None else (None, None)
        kind = "normal 95% (value ± 1.96 stderr)" if stderr is not None else None
        rows.append(
            {**head, "metric": metric, "value": value, "stderr": stderr, "n": n, "ci_low": lo, "ci_high": hi}
            | {"interval": kind}
        )
    return rows


def summary_rows(run: agg.RunResults) -> list[dict[str, Any]]:
    """The summary's rows, in the report's order: benchmarks, then the base model and the arms, then seeds; each
    result's main metric first, then its :data:`SECONDARY` ones."""
    rows = []
    for bench in agg.benchmark_order(run):
        by_arm = run.by_arm(bench)
        for arm in [a for a in (BASE_ARM, *run.arms) if a in by_arm]:
            for seed, rec in sorted(by_arm[arm].items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)):
                head = {"experiment": run.experiment, "arm": arm, "seed": seed, "benchmark": bench}
                head["status"] = rec.status
                lo, hi, kind = _interval(rec, bench) if rec.ok else (None, None, None)
                n = len(agg.item_scores(rec, bench) or {}) or rec.n
                main = {"metric": rec.metric, "value": rec.value, "stderr": rec.stderr, "n": n}
                rows.append({**head, **main, "ci_low": lo, "ci_high": hi, "interval": kind})
                rows += _secondary_rows(rec, head) if rec.ok else []
    return [{c: r[c] for c in COLUMNS} for r in rows]


def write_summary(run: agg.RunResults, report_dir: Path) -> dict[str, str]:
    """Write ``summary.csv`` and ``summary.json`` into ``report_dir``; returns their paths."""
    return _write(summary_rows(run), COLUMNS, run.experiment, Path(report_dir))


def write_strata_summary(experiment: str, runs: dict[str, agg.RunResults], report_dir: Path) -> dict[str, str]:
    """An experiment with strata: every stratum's rows (:func:`summary_rows`), with a ``stratum`` column after
    ``experiment``, strata in the config's order."""
    columns = (COLUMNS[0], "stratum", *COLUMNS[1:])
    rows = [{c: ({"stratum": name} | r)[c] for c in columns} for name, run in runs.items() for r in summary_rows(run)]
    return _write(rows, columns, experiment, Path(report_dir))


def _write(rows: list[dict[str, Any]], columns: tuple[str, ...], experiment: str, report_dir: Path) -> dict[str, str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    out = {"csv": report_dir / SUMMARY_CSV, "json": report_dir / SUMMARY_JSON}
    write_text_atomic(out["csv"], buf.getvalue())
    payload = {"experiment": experiment, "columns": list(columns), "rows": rows}
    write_text_atomic(out["json"], json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return {k: str(v) for k, v in out.items()}
