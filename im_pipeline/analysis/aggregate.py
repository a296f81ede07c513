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
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from im_pipeline.analysis import stats as st
from im_pipeline.evaluation.specs import find_spec, names
from im_pipeline.runs.layout import BASE_ARM, RunLayout, UnitLayout

log = logging.getLogger(__name__)

IT_NAME, IM_NAME = "IT", "IM"


@dataclass
class RunResults:
    """Everything a report needs from one experiment's run directory."""

    experiment: str
    root: Path
    config: dict[str, Any] = field(default_factory=dict)
    arms: list[str] = field(default_factory=list)  # trained arms, config order
    seeds: list[int] = field(default_factory=list)
    # benchmark -> arm -> seed (None for the base model) -> result record
    results: dict[str, dict[str, dict[int | None, dict[str, Any]]]] = field(default_factory=dict)
    train_summaries: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    train_logs: dict[str, dict[int, list[dict[str, Any]]]] = field(default_factory=dict)
    data_stats: dict[str, Any] | None = None
    data_unavailable: dict[str, Any] | None = None  # data/unavailable.json: why no arm could be trained
    timings: dict[str, Any] | None = None

    def arm_config(self, arm: str) -> dict[str, Any]:
        for a in self.config.get("arms", []):
            if a.get("name") == arm:
                return a
        return {}

    def benchmarks(self) -> list[str]:
        return list(self.results)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read result file {path}: {exc}") from exc


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON: {exc}") from exc
    return out


def is_run_root(path: Path) -> bool:
    """A directory that looks like ``runs/<experiment>/`` (a config, prepared data or an arm's results)."""
    layout = RunLayout(Path(path))
    if layout.config.is_file() or layout.data_stats.is_file():
        return True
    return any(layout.root.glob("*/seed-*/eval/*.json")) or any(layout.unit(BASE_ARM).eval_dir.glob("*.json"))


def load_run(root: Path) -> RunResults:
    """Read ``runs/<experiment>/``: config, data stats, per-arm/seed results, train logs, timings."""
    layout = RunLayout(Path(root))
    root = layout.root
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    if not is_run_root(root):
        raise ValueError(f"{root} is not an experiment run directory (no config.yaml, data/ or <arm>/seed-*/eval/)")
    config: dict[str, Any] = {}
    if layout.config.is_file():
        config = yaml.safe_load(layout.config.read_text(encoding="utf-8")) or {}
    run = RunResults(experiment=config.get("name", root.name), root=root, config=config)
    if layout.data_stats.is_file():
        run.data_stats = _read_json(layout.data_stats)
    if layout.data_unavailable.is_file():
        run.data_unavailable = _read_json(layout.data_unavailable)
    if layout.timings.is_file():
        run.timings = _read_json(layout.timings)

    configured = [a["name"] for a in config.get("arms", []) if "name" in a]
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("seed-*")))
    run.arms = [a for a in configured if a in found] + [a for a in found if a not in configured]
    seeds: set[int] = set()
    for arm in run.arms:
        for sd in sorted((root / arm).glob("seed-*")):
            unit = UnitLayout.at(sd)
            if unit.seed is None:
                continue
            seed = unit.seed
            seeds.add(seed)
            if unit.train_summary.is_file():
                run.train_summaries.setdefault(arm, {})[seed] = _read_json(unit.train_summary)
            if unit.train_log.is_file():
                run.train_logs.setdefault(arm, {})[seed] = _read_jsonl(unit.train_log)
            for f in sorted(unit.eval_dir.glob("*.json")):
                rec = _read_json(f)
                run.results.setdefault(rec.get("benchmark", f.stem), {}).setdefault(arm, {})[seed] = rec
    for f in sorted(layout.unit(BASE_ARM).eval_dir.glob("*.json")):
        rec = _read_json(f)
        run.results.setdefault(rec.get("benchmark", f.stem), {}).setdefault(BASE_ARM, {})[None] = rec
    run.seeds = sorted(seeds)
    return run


def ok(rec: dict[str, Any] | None) -> bool:
    """A result with a usable value (not skipped, not failed)."""
    return bool(rec) and rec.get("status", "ok") == "ok" and isinstance(rec.get("value"), (int, float))


def item_scores(rec: dict[str, Any] | None, bench: str, key: str | None = None) -> dict[str, float] | None:
    """Per-item scores of a result on the scale of its ``value`` (None when the file has none)."""
    vals = ((rec or {}).get("items") or {}).get(key or (spec.item_key if (spec := find_spec(bench)) else ""))
    if not isinstance(vals, dict) or not vals:
        return None
    k = item_scale(bench)
    return {str(i): float(v) * k for i, v in vals.items() if isinstance(v, (int, float))}


def arm_summary(by_seed: dict[int | None, dict[str, Any]], bench: str = "") -> dict[str, Any] | None:
    """Mean and uncertainty of one arm on one benchmark (see the module docstring). None if no usable result."""
    recs = [r for _, r in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)) if ok(r)]
    if not recs:
        return None
    values = [float(r["value"]) for r in recs]
    if len(values) == 1:
        se = recs[0].get("stderr")
        items = item_scores(recs[0], bench)
        n_items = len(items) if items else recs[0].get("n")
        out = {
            "mean": values[0],
            "stderr": float(se) if isinstance(se, (int, float)) else None,
            "stderr_kind": "items",
            "n_seeds": 1,
            "n_items": n_items,
            "values": values,
            "too_few_items": isinstance(n_items, int) and n_items < st.MIN_ITEMS,
            "interval": None,
        }
        if out["too_few_items"]:
            out["stderr"] = None
        elif items and st.is_binary(list(items.values())):
            k = item_scale(bench)
            ones = sum(1 for v in items.values() if v)
            lo, hi = st.wilson(ones, len(items))
            out.update(interval=[lo * k, hi * k], interval_kind="Wilson 95%")
        return out
    counts = [len(item_scores(r, bench) or {}) or r.get("n") for r in recs]
    n_items = min((c for c in counts if isinstance(c, int)), default=None)
    too_few = n_items is not None and n_items < st.MIN_ITEMS
    # sd / sqrt(k) from 2-4 seeds is a "±" from 2-4 values (its 95% factor would be t(k - 1) = 12.7 at k = 2):
    # below MIN_ITEMS seeds the report lists every seed's value instead.
    too_few_seeds = len(values) < st.MIN_ITEMS
    return {
        "mean": float(np.mean(values)),
        "stderr": None if too_few or too_few_seeds else float(np.std(values, ddof=1) / math.sqrt(len(values))),
        "stderr_kind": "seeds",
        "n_seeds": len(values),
        "n_items": n_items,
        "values": values,
        "too_few_items": too_few,
        "too_few_seeds": too_few_seeds,
        "interval": None,
    }


def delta_stats(
    im: dict[int | None, dict[str, Any]],
    it: dict[int | None, dict[str, Any]],
    bench: str = "",
    *,
    key: str | None = None,
    confidence: float = 0.95,
) -> dict[str, Any] | None:
    """IM − IT on one benchmark from per-item paired differences (see the module docstring).

    ``key`` picks another per-item score than the benchmark's headline (e.g. ``test_loss`` of the overfitting
    benchmark); the headline delta is then the mean item difference.
    """
    common = sorted(s for s in im.keys() & it.keys() if ok(im[s]) and ok(it[s]))
    if not common:
        return None
    pairs = {s: (item_scores(im[s], bench, key), item_scores(it[s], bench, key)) for s in common}
    have_items = all(a and b for a, b in pairs.values())
    if key is not None and not have_items:
        return None
    base: dict[str, Any] = {
        "n_seeds": len(common),
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "test": None,
        "too_few_items": False,
    }
    if not have_items:  # result files without per-item scores: a difference, but nothing to pair
        d = [float(im[s]["value"]) - float(it[s]["value"]) for s in common]
        base.update(delta=float(np.mean(d)), method="no per-item results in the result files: no interval, no test")
        n_min = min((int(im[s].get("n") or 0) for s in common), default=0)
        if len(common) >= 2 and n_min < st.MIN_ITEMS:
            base.update(seed_deltas=dict(zip(common, d, strict=True)), n_items=n_min, too_few_items=True)
        elif len(common) >= 2:
            _, lo, hi = st.t_interval(d, confidence)
            sign = st.sign_test(d)
            base.update(
                ci_low=lo,
                ci_high=hi,
                p_value=sign["p_value"],
                test="sign test",
                seed_deltas=dict(zip(common, d, strict=True)),
                method=f"{len(common)} seeds: Student-t interval on the seed deltas ({len(common) - 1} df), sign test",
            )
        return base
    if len(common) == 1:
        a, b = pairs[common[0]]
        res = st.paired_comparison(a, b, confidence=confidence)  # type: ignore[arg-type]
        base.update(
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
        return base
    res = st.across_seeds(pairs, confidence=confidence)  # type: ignore[arg-type]
    if min(res["n_items"].values()) < st.MIN_ITEMS:
        base.update(
            delta=res["delta"],
            seed_deltas=res["seed_deltas"],
            n_items=min(res["n_items"].values()),
            too_few_items=True,
            method=st.TOO_FEW,
        )
        return base
    lo, hi = res["t_interval"]
    base.update(
        delta=res["delta"],
        ci_low=lo,
        ci_high=hi,
        p_value=res["sign_test"]["p_value"],
        test="sign test",
        seed_deltas=res["seed_deltas"],
        n_items=min(res["n_items"].values()),
        bootstrap=res["bootstrap"],
        bootstrap_note=res.get("bootstrap_note"),
        method=res["method"],
    )
    return base


def position_bias(by_arm: dict[str, dict[int | None, dict[str, Any]]]) -> dict[str, float]:
    """Arm (or ``arm/seed-s``) → share of verdicts won by the first-shown output, for results whose judge was
    position-biased (one position won >= 90% of decided verdicts; see the AlpacaEval module). Empty if none."""
    out = {}
    for arm, by_seed in by_arm.items():
        for seed, r in by_seed.items():
            if ok(r) and r.get("judge_position_biased"):
                share = r.get("judge_prefers_first_shown")
                out[arm if seed is None or len(by_seed) == 1 else f"{arm}/seed-{seed}"] = share
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
            if a.get("loss_mode") == mode and not a.get("neftune_alpha") and not a.get("kl_coef"):
                return arm
        return None

    return pick(IT_NAME, "it"), pick(IM_NAME, "im")


def benchmark_order(run: RunResults) -> list[str]:
    """The run's benchmarks in the registry's order (unregistered names last, alphabetically): the report's rows."""
    order = {b: i for i, b in enumerate(names())}
    return sorted(run.results, key=lambda b: (order.get(b, len(order)), b))


def comparison_rows(run: RunResults) -> list[dict[str, Any]]:
    """One row per benchmark: status, per-arm summary (base first), IM − IT delta, chance level."""
    it, im = it_im_arms(run)
    rows = []
    for bench in benchmark_order(run):
        by_arm = run.results[bench]
        row: dict[str, Any] = {"benchmark": bench, "metric": None, "arms": {}, "delta": None, "skipped": {}}
        for arm in [BASE_ARM, *run.arms]:
            recs = by_arm.get(arm, {})
            for r in recs.values():
                if r.get("status") == "skipped":
                    row["skipped"][arm] = r.get("reason", "")
                elif ok(r) and row["metric"] is None:
                    row["metric"] = r.get("metric")
            row["arms"][arm] = arm_summary(recs, bench) if recs else None
        if it and im:
            row["delta"] = delta_stats(by_arm.get(im, {}), by_arm.get(it, {}), bench)
            if row["delta"] and row["arms"].get(it):
                row["delta"]["relative_gain"] = relative_gain(row["arms"][im]["mean"], row["arms"][it]["mean"])
        row["chance"] = spec.chance if (spec := find_spec(bench)) else None
        row["position_bias"] = position_bias(by_arm)
        rows.append(row)
    return rows


def item_scale(bench: str) -> float:
    """Per-item score → the scale of the benchmark's value (its spec's; 1 for an unregistered name)."""
    spec = find_spec(bench)
    return spec.item_scale if spec else 1.0
