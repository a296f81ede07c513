"""Aggregation of a run directory's JSON files: per-arm means, IM − IT deltas, length-ratio points.

Everything here reads only files under ``runs/<experiment>/`` (see DESIGN "Runs and results"), so a
report can be rebuilt anywhere from a copied run directory.

Statistics (stated in the report):

* **per arm**: with one seed, the benchmark's own item-level stderr; with k ≥ 2 seeds, the mean over
  seeds and the stderr across seeds, ``sd / sqrt(k)``.
* **IM − IT**: with k ≥ 2 seeds present in both arms, the mean of the per-seed differences, a
  Student-t 95% CI with k − 1 degrees of freedom and a paired t-test (``scipy.stats.ttest_rel``);
  with one seed, a normal-approximation 95% CI from the two item-level stderrs
  ``±1.96·sqrt(se_IM² + se_IT²)`` (treats the arms as independent; no test).
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

log = logging.getLogger(__name__)

BASE = "base"
BENCHMARK_ORDER = ("mmlu", "truthfulqa", "humaneval", "alpaca_eval", "overfitting")
IT_NAME, IM_NAME = "IT", "IM"

# Chance level (as a fraction, the scale of the results) and how to read it.
CHANCE: dict[str, tuple[float | None, str]] = {
    "mmlu": (0.25, "random guess among 4 options"),
    "truthfulqa": (
        None,
        "mc2 has no fixed chance level: a uniform model puts (#true / #choices) of its mass on "
        "true answers, which varies per question",
    ),
    "humaneval": (0.0, "a model that writes no working code"),
    "alpaca_eval": (0.5, "a model judged against outputs of equal quality (e.g. itself) wins 50%"),
}


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


def _seed_of(name: str) -> int | None:
    if name.startswith("seed-"):
        try:
            return int(name.removeprefix("seed-"))
        except ValueError:
            return None
    return None


def is_run_root(path: Path) -> bool:
    """A directory that looks like ``runs/<experiment>/`` (a config, prepared data or an arm's results)."""
    path = Path(path)
    if (path / "config.yaml").is_file() or (path / "data" / "data_stats.json").is_file():
        return True
    return any(path.glob("*/seed-*/eval/*.json")) or any(path.glob(f"{BASE}/eval/*.json"))


def load_run(root: Path) -> RunResults:
    """Read ``runs/<experiment>/``: config, data stats, per-arm/seed results, train logs, timings."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    if not is_run_root(root):
        raise ValueError(f"{root} is not an experiment run directory (no config.yaml, data/ or <arm>/seed-*/eval/)")
    config: dict[str, Any] = {}
    if (root / "config.yaml").is_file():
        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
    run = RunResults(experiment=config.get("name", root.name), root=root, config=config)
    if (root / "data" / "data_stats.json").is_file():
        run.data_stats = _read_json(root / "data" / "data_stats.json")
    if (root / "data" / "unavailable.json").is_file():
        run.data_unavailable = _read_json(root / "data" / "unavailable.json")
    if (root / "timings.json").is_file():
        run.timings = _read_json(root / "timings.json")

    configured = [a["name"] for a in config.get("arms", []) if "name" in a]
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("seed-*")))
    run.arms = [a for a in configured if a in found] + [a for a in found if a not in configured]
    seeds: set[int] = set()
    for arm in run.arms:
        for sd in sorted((root / arm).glob("seed-*")):
            seed = _seed_of(sd.name)
            if seed is None:
                continue
            seeds.add(seed)
            if (sd / "train_summary.json").is_file():
                run.train_summaries.setdefault(arm, {})[seed] = _read_json(sd / "train_summary.json")
            if (sd / "train_log.jsonl").is_file():
                run.train_logs.setdefault(arm, {})[seed] = _read_jsonl(sd / "train_log.jsonl")
            for f in sorted((sd / "eval").glob("*.json")):
                rec = _read_json(f)
                run.results.setdefault(rec.get("benchmark", f.stem), {}).setdefault(arm, {})[seed] = rec
    for f in sorted((root / BASE / "eval").glob("*.json")):
        rec = _read_json(f)
        run.results.setdefault(rec.get("benchmark", f.stem), {}).setdefault(BASE, {})[None] = rec
    run.seeds = sorted(seeds)
    return run


def ok(rec: dict[str, Any] | None) -> bool:
    """A result with a usable value (not skipped, not failed)."""
    return bool(rec) and rec.get("status", "ok") == "ok" and isinstance(rec.get("value"), (int, float))


def arm_summary(by_seed: dict[int | None, dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and stderr of one arm on one benchmark (see the module docstring). None if no usable result."""
    recs = [r for _, r in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)) if ok(r)]
    if not recs:
        return None
    values = [float(r["value"]) for r in recs]
    if len(values) == 1:
        se = recs[0].get("stderr")
        return {
            "mean": values[0],
            "stderr": float(se) if isinstance(se, (int, float)) else None,
            "stderr_kind": "items",
            "n_seeds": 1,
            "n_items": recs[0].get("n"),
            "values": values,
        }
    return {
        "mean": float(np.mean(values)),
        "stderr": float(np.std(values, ddof=1) / math.sqrt(len(values))),
        "stderr_kind": "seeds",
        "n_seeds": len(values),
        "n_items": recs[0].get("n"),
        "values": values,
    }


def delta_stats(
    im: dict[int | None, dict[str, Any]], it: dict[int | None, dict[str, Any]], confidence: float = 0.95
) -> dict[str, Any] | None:
    """IM − IT on one benchmark: mean difference, 95% CI, paired t-test when ≥ 2 common seeds."""
    from scipy import stats as sps  # imported here: scipy costs a second and most callers never need it

    common = sorted(s for s in im.keys() & it.keys() if ok(im[s]) and ok(it[s]))
    if not common:
        return None
    d = np.array([float(im[s]["value"]) - float(it[s]["value"]) for s in common])
    mean = float(d.mean())
    if len(common) >= 2:
        k = len(common)
        se = float(d.std(ddof=1) / math.sqrt(k))
        half = float(sps.t.ppf(0.5 + confidence / 2, k - 1) * se)
        if se > 0:
            test = sps.ttest_rel([float(im[s]["value"]) for s in common], [float(it[s]["value"]) for s in common])
            p = float(test.pvalue)
        else:
            p = None  # identical differences: the t statistic is undefined
        return {
            "delta": mean,
            "ci_low": mean - half,
            "ci_high": mean + half,
            "stderr": se,
            "n_seeds": k,
            "p_value": p,
            "method": f"paired over {k} seeds: t-interval, paired t-test",
        }
    s = common[0]
    se_im, se_it = im[s].get("stderr"), it[s].get("stderr")
    if isinstance(se_im, (int, float)) and isinstance(se_it, (int, float)):
        se = math.sqrt(float(se_im) ** 2 + float(se_it) ** 2)
        z = float(sps.norm.ppf(0.5 + confidence / 2))
        lo, hi = mean - z * se, mean + z * se
    else:
        se, lo, hi = None, None, None
    return {
        "delta": mean,
        "ci_low": lo,
        "ci_high": hi,
        "stderr": se,
        "n_seeds": 1,
        "p_value": None,
        "method": "one seed: normal approximation from item-level stderrs (no test)",
    }


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


def comparison_rows(run: RunResults) -> list[dict[str, Any]]:
    """One row per benchmark: status, per-arm summary (base first), IM − IT delta, chance level."""
    it, im = it_im_arms(run)
    rows = []
    order = {b: i for i, b in enumerate(BENCHMARK_ORDER)}
    for bench, by_arm in sorted(run.results.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        row: dict[str, Any] = {"benchmark": bench, "metric": None, "arms": {}, "delta": None, "skipped": {}}
        for arm in [BASE, *run.arms]:
            recs = by_arm.get(arm, {})
            for r in recs.values():
                if r.get("status") == "skipped":
                    row["skipped"][arm] = r.get("reason", "")
                elif ok(r) and row["metric"] is None:
                    row["metric"] = r.get("metric")
            row["arms"][arm] = arm_summary(recs) if recs else None
        if it and im:
            row["delta"] = delta_stats(by_arm.get(im, {}), by_arm.get(it, {}))
            if row["delta"] and row["arms"].get(it):
                row["delta"]["relative_gain"] = relative_gain(row["arms"][im]["mean"], row["arms"][it]["mean"])
        row["chance"] = CHANCE.get(bench, (None, ""))[0]
        rows.append(row)
    return rows


def fit_line(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares line y = slope·x + intercept (+ r²); None with fewer than 2 distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    from scipy import stats as sps

    res = sps.linregress(xs, ys)
    return {"slope": float(res.slope), "intercept": float(res.intercept), "r2": float(res.rvalue**2), "n": len(xs)}


def length_ratio_points(runs_root: Path, benchmark: str = "alpaca_eval") -> list[dict[str, Any]]:
    """One point per experiment under ``runs_root``: training-set ratio and size vs relative IM gain.

    An experiment contributes when its data stats exist and both IT and IM have a usable
    ``benchmark`` result. Gains use the seed-mean of each arm.
    """
    points = []
    for root in sorted(p for p in Path(runs_root).iterdir() if p.is_dir()):
        if not is_run_root(root):
            continue
        try:
            run = load_run(root)
        except (ValueError, OSError) as exc:
            log.warning("skipping %s in the length-ratio analysis: %s", root, exc)
            continue
        train = ((run.data_stats or {}).get("stats") or {}).get("train") or {}
        it, im = it_im_arms(run)
        by_arm = run.results.get(benchmark, {})
        s_it = arm_summary(by_arm.get(it, {})) if it else None
        s_im = arm_summary(by_arm.get(im, {})) if im else None
        if not train.get("ratio") or not train.get("n") or not s_it or not s_im:
            continue
        gain = relative_gain(s_im["mean"], s_it["mean"])
        if gain is None:
            continue
        points.append(
            {
                "experiment": run.experiment,
                "train_source": (run.data_stats or {}).get("train_source"),
                "ratio": float(train["ratio"]),
                "n": int(train["n"]),
                "benchmark": benchmark,
                "it": s_it["mean"],
                "im": s_im["mean"],
                "gain": gain,
                "log_ratio": math.log(float(train["ratio"])),
                "log_n": math.log(int(train["n"])),
            }
        )
    return points
