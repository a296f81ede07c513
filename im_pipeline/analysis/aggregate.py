"""Aggregation of a run directory's JSON files: per-arm means, IM − IT deltas, length-ratio points.

Everything here reads only files under ``runs/<experiment>/`` (see DESIGN "Runs and results"), so a
report can be rebuilt anywhere from a copied run directory.

Statistics (stated in the report; the functions live in :mod:`im_pipeline.analysis.stats`):

* **per arm**: with one seed, binary items (MMLU, greedy HumanEval) get a Wilson interval, other
  benchmarks the item-level stderr; with k ≥ 5 seeds, the mean over seeds and ``sd / sqrt(k)``; with
  2–4 seeds the mean and every seed's value, no stderr ("too few seeds").
  Below :data:`~im_pipeline.analysis.stats.MIN_ITEMS` items: no interval ("too few items").
* **IM − IT**: the same items are scored for every arm, so everything comes from per-item paired
  differences (``items`` in each result JSON). One seed: the mean difference, a paired bootstrap
  95% CI and an exact McNemar (binary items) or Wilcoxon signed-rank (continuous) test. k ≥ 2
  seeds: every seed's delta, a Student-t 95% CI with k − 1 df on the seed deltas, the exact sign test
  and, from 5 seeds on, a seed-then-item bootstrap CI. Below 5 paired items: the difference, no
  interval, no test.
* **relative gain** (the paper's Figure 2 y-axis): ``(IM − IT) / IT · 100`` in percent.

Reading the run directory itself is :mod:`im_pipeline.analysis.run_files` (``load_run``, ``RunResults``; both
importable from here too).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from im_pipeline.analysis import stats as st
from im_pipeline.analysis.run_files import BySeed, RunResults, is_run_root, load_run, ok
from im_pipeline.evaluation.specs import find_spec, names
from im_pipeline.results import AlpacaEvalResult, EvalResult
from im_pipeline.runs.layout import BASE_ARM

log = logging.getLogger(__name__)

IT_NAME, IM_NAME = "IT", "IM"


def item_scores(rec: EvalResult | None, bench: str, key: str | None = None) -> dict[str, float] | None:
    """Per-item scores of a result on the scale of its ``value`` (None when the file has none)."""
    name = key or (spec.item_key if (spec := find_spec(bench)) else "")
    vals = (rec.items or {}).get(name) if rec is not None else None
    if not vals:
        return None
    k = item_scale(bench)
    return {str(i): float(v) * k for i, v in vals.items()}


@dataclass
class ArmSummary:
    """Mean and uncertainty of one arm on one benchmark (see the module docstring)."""

    mean: float
    stderr: float | None
    stderr_kind: str  # "items" (one seed) or "seeds"
    n_seeds: int
    n_items: int | None
    values: list[float]
    too_few_items: bool = False
    too_few_seeds: bool = False
    interval: list[float] | None = None  # [low, high]
    interval_kind: str | None = None


def _sorted_ok(by_seed: BySeed) -> list[EvalResult]:
    return [r for _, r in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)) if ok(r)]


def arm_summary(by_seed: BySeed, bench: str = "") -> ArmSummary | None:
    """Mean and uncertainty of one arm on one benchmark (see the module docstring). None if no usable result."""
    recs = _sorted_ok(by_seed)
    if not recs:
        return None
    if len(recs) == 1:
        return _one_seed_summary(recs[0], bench)
    values = [float(r.value or 0.0) for r in recs]
    counts = [len(item_scores(r, bench) or {}) or r.n for r in recs]
    n_items = min(counts, default=None)
    too_few = n_items is not None and n_items < st.MIN_ITEMS
    # sd / sqrt(k) from 2-4 seeds is a "±" from 2-4 values (its 95% factor would be t(k - 1) = 12.7 at k = 2):
    # below MIN_ITEMS seeds the report lists every seed's value instead.
    too_few_seeds = len(values) < st.MIN_ITEMS
    return ArmSummary(
        mean=float(np.mean(values)),
        stderr=None if too_few or too_few_seeds else float(np.std(values, ddof=1) / math.sqrt(len(values))),
        stderr_kind="seeds",
        n_seeds=len(values),
        n_items=n_items,
        values=values,
        too_few_items=too_few,
        too_few_seeds=too_few_seeds,
    )


def _one_seed_summary(rec: EvalResult, bench: str) -> ArmSummary:
    """One seed: the item-level stderr, or a Wilson interval for binary items; nothing below MIN_ITEMS items."""
    value = float(rec.value or 0.0)
    items = item_scores(rec, bench)
    n_items = len(items) if items else rec.n
    out = ArmSummary(
        mean=value,
        stderr=rec.stderr,
        stderr_kind="items",
        n_seeds=1,
        n_items=n_items,
        values=[value],
        too_few_items=n_items < st.MIN_ITEMS,
    )
    if out.too_few_items:
        out.stderr = None
    elif items and st.is_binary(list(items.values())):
        k = item_scale(bench)
        lo, hi = st.wilson(sum(1 for v in items.values() if v), len(items))
        out.interval, out.interval_kind = [lo * k, hi * k], "Wilson 95%"
    return out


@dataclass
class DeltaStats:
    """IM − IT on one benchmark (see :func:`delta_stats`)."""

    n_seeds: int
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    test: str | None = None
    too_few_items: bool = False
    n_items: int | None = None
    method: str = ""
    seed_deltas: dict[int | None, float] | None = None
    identical: bool = False  # one seed, every paired item equal
    detail: dict[str, Any] | None = None  # the one-seed test's numbers
    bootstrap: tuple[float, float] | None = None  # seed-then-item bootstrap CI (>= 5 seeds)
    bootstrap_note: str | None = None
    relative_gain: float | None = None


def delta_stats(
    im: BySeed,
    it: BySeed,
    bench: str = "",
    *,
    key: str | None = None,
    confidence: float = 0.95,
) -> DeltaStats | None:
    """IM − IT on one benchmark from per-item paired differences (see the module docstring).

    ``key`` picks another per-item score than the benchmark's headline (e.g. ``test_loss`` of the overfitting
    benchmark); the headline delta is then the mean item difference.
    """
    common = sorted(s for s in im.keys() & it.keys() if ok(im[s]) and ok(it[s]))
    if not common:
        return None
    pairs = {s: (item_scores(im[s], bench, key), item_scores(it[s], bench, key)) for s in common}
    if all(a and b for a, b in pairs.values()):
        if len(common) == 1:
            return _delta_one_seed(*pairs[common[0]], confidence)  # type: ignore[arg-type]
        return _delta_across_seeds(pairs, confidence)  # type: ignore[arg-type]
    if key is not None:
        return None
    return _delta_without_items(im, it, common, confidence)


def _delta_without_items(im: BySeed, it: BySeed, common: list, confidence: float) -> DeltaStats:
    """Result files without per-item scores: a difference, but nothing to pair (a t interval across seeds)."""
    d = [float(im[s].value or 0.0) - float(it[s].value or 0.0) for s in common]
    out = DeltaStats(
        n_seeds=len(common),
        delta=float(np.mean(d)),
        method="no per-item results in the result files: no interval, no test",
    )
    n_min = min((im[s].n for s in common), default=0)
    if len(common) >= 2 and n_min < st.MIN_ITEMS:
        out.seed_deltas, out.n_items, out.too_few_items = dict(zip(common, d, strict=True)), n_min, True
    elif len(common) >= 2:
        _, out.ci_low, out.ci_high = st.t_interval(d, confidence)
        out.p_value, out.test = st.seed_deltas_test(d)
        out.seed_deltas = dict(zip(common, d, strict=True))
        out.method = f"{len(common)} seeds: Student-t interval on the seed deltas ({len(common) - 1} df), {out.test}"
    return out


def _delta_one_seed(a: dict[str, float], b: dict[str, float], confidence: float) -> DeltaStats:
    res = st.paired_comparison(a, b, confidence=confidence)
    return DeltaStats(
        n_seeds=1,
        delta=res["delta"],
        ci_low=res["ci_low"],
        ci_high=res["ci_high"],
        p_value=res["p_value"],
        test=(res["test"] or {}).get("test"),
        n_items=res["n_items"],
        too_few_items=res["too_few_items"],
        identical=res.get("identical", False),
        method=res["method"],
        detail=res["test"],
    )


def _delta_across_seeds(pairs: dict, confidence: float) -> DeltaStats:
    res = st.across_seeds(pairs, confidence=confidence)
    out = DeltaStats(
        n_seeds=len(pairs),
        delta=res["delta"],
        seed_deltas=res["seed_deltas"],
        n_items=min(res["n_items"].values()),
    )
    if out.n_items is not None and out.n_items < st.MIN_ITEMS:
        out.too_few_items, out.method = True, st.TOO_FEW
        return out
    out.ci_low, out.ci_high = res["t_interval"]
    out.p_value, out.test = st.seed_deltas_test(list(res["seed_deltas"].values()))
    out.bootstrap, out.bootstrap_note, out.method = res["bootstrap"], res.get("bootstrap_note"), res["method"]
    return out


def position_bias(by_arm: dict[str, BySeed]) -> dict[str, float | None]:
    """Arm (or ``arm/seed-s``) → share of verdicts won by the first-shown output, for results whose judge was
    position-biased (one position won >= 90% of decided verdicts; see the AlpacaEval module). Empty if none."""
    out = {}
    for arm, by_seed in by_arm.items():
        for seed, r in by_seed.items():
            if ok(r) and isinstance(r, AlpacaEvalResult) and r.judge_position_biased:
                out[arm if seed is None or len(by_seed) == 1 else f"{arm}/seed-{seed}"] = r.judge_prefers_first_shown
    return out


def relative_gain(im: float, it: float) -> float | None:
    """(IM − IT) / IT · 100, the paper's Figure 2 y-axis; None when IT is 0."""
    return None if it == 0 else (im - it) / abs(it) * 100.0


def it_im_arms(run: RunResults) -> tuple[str | None, str | None]:
    """The arms compared as IT and IM: arms named so, else the first plain arm with loss_mode it / im."""

    def pick(name: str, mode: str) -> str | None:
        if name in run.arms:
            return name
        for arm in run.arms:
            a = run.arm_config(arm)
            if a.loss_mode == mode and a.plain:
                return arm
        return None

    return pick(IT_NAME, "it"), pick(IM_NAME, "im")


def benchmark_order(run: RunResults) -> list[str]:
    """The run's benchmarks in the registry's order (unregistered names last, alphabetically): the report's rows."""
    order = {b: i for i, b in enumerate(names())}
    return sorted(run.results, key=lambda b: (order.get(b, len(order)), b))


@dataclass
class ComparisonRow:
    """One benchmark of the main table: per-arm summaries (base first), the IM − IT delta, why arms were skipped."""

    benchmark: str
    metric: str | None = None
    arms: dict[str, ArmSummary | None] = field(default_factory=dict)
    delta: DeltaStats | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # arm -> reason
    chance: float | None = None
    position_bias: dict[str, float | None] = field(default_factory=dict)

    def arm(self, name: str | None) -> ArmSummary | None:
        return self.arms.get(name) if name else None


def comparison_rows(run: RunResults) -> list[ComparisonRow]:
    """One row per benchmark: status, per-arm summary (base first), IM − IT delta, chance level."""
    it, im = it_im_arms(run)
    rows = []
    for bench in benchmark_order(run):
        by_arm = run.results[bench]
        row = ComparisonRow(benchmark=bench)
        for arm in [BASE_ARM, *run.arms]:
            recs = run.by_seed(bench, arm)
            for r in recs.values():
                if r.status == "skipped":
                    row.skipped[arm] = r.reason or ""
                elif ok(r) and row.metric is None:
                    row.metric = r.metric
            row.arms[arm] = arm_summary(recs, bench) if recs else None
        if it and im:
            row.delta = delta_stats(run.by_seed(bench, im), run.by_seed(bench, it), bench)
            s_im, s_it = row.arm(im), row.arm(it)
            if row.delta and s_it and s_im:
                row.delta.relative_gain = relative_gain(s_im.mean, s_it.mean)
        row.chance = spec.chance if (spec := find_spec(bench)) else None
        row.position_bias = position_bias(by_arm)
        rows.append(row)
    return rows


def item_scale(bench: str) -> float:
    """Per-item score → the scale of the benchmark's value (its spec's; 1 for an unregistered name)."""
    spec = find_spec(bench)
    return spec.item_scale if spec else 1.0


__all__ = [
    "ArmSummary",
    "BySeed",
    "ComparisonRow",
    "DeltaStats",
    "RunResults",
    "arm_summary",
    "benchmark_order",
    "comparison_rows",
    "delta_stats",
    "is_run_root",
    "it_im_arms",
    "item_scale",
    "item_scores",
    "load_run",
    "ok",
    "position_bias",
    "relative_gain",
]
