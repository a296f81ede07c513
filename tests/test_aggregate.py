"""Exact statistics of the aggregation: per-arm summaries, IM − IT deltas, CIs, tests, length-ratio points."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_run import make_experiment, result, skipped

from im_pipeline.analysis import aggregate as agg


def _by_seed(values: list[float], stderr: float | None = 0.02) -> dict:
    return {s: result("mmlu", "acc", v, stderr, 10) for s, v in enumerate(values)}


def test_arm_summary_one_seed_uses_item_stderr() -> None:
    s = agg.arm_summary({0: result("mmlu", "acc", 0.4, 0.03, 50)})
    assert s == {"mean": 0.4, "stderr": 0.03, "stderr_kind": "items", "n_seeds": 1, "n_items": 50, "values": [0.4]}


def test_arm_summary_seeds_uses_stderr_across_seeds() -> None:
    s = agg.arm_summary(_by_seed([0.2, 0.4, 0.6]))
    assert s["mean"] == pytest.approx(0.4)
    assert s["stderr"] == pytest.approx(0.2 / math.sqrt(3))  # sd 0.2 over 3 seeds
    assert s["stderr_kind"] == "seeds" and s["n_seeds"] == 3


def test_arm_summary_ignores_skipped() -> None:
    assert agg.arm_summary({0: skipped("mmlu", "no data")}) is None


def test_delta_two_seeds_paired_t() -> None:
    d = agg.delta_stats(_by_seed([0.36, 0.38]), _by_seed([0.30, 0.34]))
    # per-seed differences 0.06, 0.04: mean 0.05, sd 0.01414, se 0.01; t(0.975, df=1) = 12.7062
    assert d["delta"] == pytest.approx(0.05)
    assert d["stderr"] == pytest.approx(0.01)
    assert d["ci_low"] == pytest.approx(0.05 - 12.7062047 * 0.01, abs=1e-6)
    assert d["ci_high"] == pytest.approx(0.05 + 12.7062047 * 0.01, abs=1e-6)
    # paired t = 5 with 1 df (a Cauchy distribution): p = 1 - 2/pi * atan(5)
    assert d["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(5), rel=1e-6)
    assert d["n_seeds"] == 2


def test_delta_one_seed_normal_ci_from_item_stderrs() -> None:
    im = {0: result("mmlu", "acc", 0.6, 0.04, 10)}
    it = {0: result("mmlu", "acc", 0.5, 0.03, 10)}
    d = agg.delta_stats(im, it)
    assert d["delta"] == pytest.approx(0.1)
    assert d["stderr"] == pytest.approx(0.05)
    assert d["ci_low"] == pytest.approx(0.1 - 1.959964 * 0.05, abs=1e-6)
    assert d["p_value"] is None and d["n_seeds"] == 1


def test_delta_only_common_seeds_and_identical_differences() -> None:
    im = _by_seed([0.5, 0.6, 0.7])
    it = {0: result("mmlu", "acc", 0.4, 0.02, 10), 1: result("mmlu", "acc", 0.5, 0.02, 10)}
    d = agg.delta_stats(im, it)
    assert d["n_seeds"] == 2 and d["delta"] == pytest.approx(0.1)
    assert d["stderr"] == pytest.approx(0.0, abs=1e-12) and d["p_value"] is None  # t undefined, not nan


def test_relative_gain() -> None:
    assert agg.relative_gain(30.0, 20.0) == pytest.approx(50.0)
    assert agg.relative_gain(10.0, 20.0) == pytest.approx(-50.0)
    assert agg.relative_gain(1.0, 0.0) is None


def test_fit_line_exact() -> None:
    fit = agg.fit_line([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert agg.fit_line([1.0], [2.0]) is None
    assert agg.fit_line([1.0, 1.0], [2.0, 3.0]) is None


def test_load_run_and_comparison_rows(tmp_path: Path) -> None:
    root = make_experiment(
        tmp_path,
        "exp-a",
        ratio=0.1,
        n=24,
        values={
            "mmlu": {"IT": [0.30, 0.34], "IM": [0.36, 0.38]},
            "alpaca_eval": {"IT": [20.0, 30.0], "IM": [30.0, 36.0]},
        },
    )
    run = agg.load_run(root)
    assert run.arms == ["IT", "IM"] and run.seeds == [0, 1]
    assert agg.it_im_arms(run) == ("IT", "IM")
    rows = {r["benchmark"]: r for r in agg.comparison_rows(run)}
    assert list(rows) == ["mmlu", "humaneval", "alpaca_eval", "overfitting"]  # canonical order
    assert rows["mmlu"]["arms"]["base"]["mean"] == 0.25
    assert rows["mmlu"]["arms"]["IM"]["mean"] == pytest.approx(0.37)
    assert rows["mmlu"]["delta"]["delta"] == pytest.approx(0.05)
    assert rows["mmlu"]["delta"]["relative_gain"] == pytest.approx((0.37 - 0.32) / 0.32 * 100)
    assert rows["humaneval"]["delta"] is None
    assert set(rows["humaneval"]["skipped"]) == {"IT", "IM"}
    assert rows["mmlu"]["chance"] == 0.25


def test_length_ratio_points_one_per_experiment(tmp_path: Path) -> None:
    make_experiment(
        tmp_path, "exp-a", ratio=0.1, n=24, values={"alpaca_eval": {"IT": [20.0, 30.0], "IM": [30.0, 36.0]}}
    )
    make_experiment(
        tmp_path, "exp-b", ratio=1.0, n=100, values={"alpaca_eval": {"IT": [40.0, 40.0], "IM": [50.0, 50.0]}}
    )
    make_experiment(tmp_path, "exp-c", ratio=2.0, n=50, values={"mmlu": {"IT": [0.3, 0.3], "IM": [0.4, 0.4]}})
    (tmp_path / "not-a-run").mkdir()
    points = agg.length_ratio_points(tmp_path)
    assert [p["experiment"] for p in points] == ["exp-a", "exp-b"]  # exp-c has no AlpacaEval
    a, b = points
    assert a["gain"] == pytest.approx((33.0 - 25.0) / 25.0 * 100)
    assert a["log_ratio"] == pytest.approx(math.log(0.1)) and a["log_n"] == pytest.approx(math.log(24))
    assert b["gain"] == pytest.approx(25.0)


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        agg.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an experiment run directory"):
        agg.load_run(tmp_path / "empty")
