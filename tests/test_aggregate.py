"""Exact statistics of the aggregation: per-arm summaries, IM − IT deltas, CIs, tests, length-ratio points."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scipy import stats as sps
from synthetic_run import make_experiment, result, skipped

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as st
from im_pipeline.analysis.length_ratio import fit_line, length_ratio_points
from im_pipeline.results import EvalResult


def _by_seed(values: list[float], stderr: float | None = 0.02) -> agg.BySeed:
    return {s: result("mmlu", "acc", v, stderr, 10) for s, v in enumerate(values)}


def _items(values: list[float], prefix: str = "q") -> dict:
    return {"acc": {f"{prefix}{i}": v for i, v in enumerate(values)}}


def test_arm_summary_one_seed_binary_items_get_wilson() -> None:
    vals = [1, 0, 0, 1, 1, 0, 0, 0, 1, 0]
    s = agg.arm_summary({0: result("mmlu", "acc", 0.4, 0.03, 10, items=_items(vals))}, "mmlu")
    assert s.mean == 0.4 and s.n_items == 10 and not s.too_few_items
    assert s.interval == pytest.approx(list(st.wilson(4, 10)))
    ci = sps.binomtest(4, 10).proportion_ci(method="wilson")
    assert s.interval == pytest.approx([ci.low, ci.high])


def test_arm_summary_one_seed_continuous_uses_item_stderr_and_too_few() -> None:
    s = agg.arm_summary({0: result("truthfulqa", "mc2", 0.4, 0.03, 50)}, "truthfulqa")
    assert s.stderr == 0.03 and s.interval is None and s.stderr_kind == "items"
    few = agg.arm_summary({0: result("humaneval", "pass@1", 0.0, 0.0, 3, items={"pass@1": {"a": 0, "b": 0, "c": 0}})})
    assert few.too_few_items and few.stderr is None and few.interval is None


def test_arm_summary_seeds_uses_stderr_across_seeds() -> None:
    s = agg.arm_summary(_by_seed([0.2, 0.4, 0.6, 0.3, 0.5]))
    assert s.mean == pytest.approx(0.4)
    assert s.stderr == pytest.approx(math.sqrt(0.025) / math.sqrt(5))  # sd sqrt(0.025) over 5 seeds
    assert s.stderr_kind == "seeds" and s.n_seeds == 5 and not s.too_few_seeds


def test_arm_summary_below_five_seeds_gives_no_stderr() -> None:
    """sd / sqrt(k) from 3 values is not a "±" to print: the values are listed instead."""
    s = agg.arm_summary(_by_seed([0.2, 0.4, 0.6]))
    assert s.mean == pytest.approx(0.4) and s.values == [0.2, 0.4, 0.6]
    assert s.too_few_seeds and s.stderr is None and s.n_seeds == 3


def test_arm_summary_ignores_skipped() -> None:
    assert agg.arm_summary({0: skipped("mmlu", "no data")}) is None


def test_delta_two_seeds_without_items_t_interval_and_t_test() -> None:
    d = agg.delta_stats(_by_seed([0.36, 0.38]), _by_seed([0.30, 0.34]), "mmlu")
    # per-seed differences 0.06, 0.04: mean 0.05, sd 0.01414, se 0.01; t(0.975, df=1) = 12.7062
    assert d.delta == pytest.approx(0.05)
    assert d.ci_low == pytest.approx(0.05 - 12.7062047 * 0.01, abs=1e-6)
    assert d.ci_high == pytest.approx(0.05 + 12.7062047 * 0.01, abs=1e-6)
    # 2 seeds: the sign test's smallest p is 0.5, so the t test on the seed deltas: t = 0.05 / 0.01 = 5, df 1
    assert d.p_value == pytest.approx(sps.ttest_1samp([0.06, 0.04], 0).pvalue) and d.test == "t test, seeds"
    assert d.p_value == pytest.approx(2 * sps.t.sf(5.0, 1))
    assert d.seed_deltas == pytest.approx({0: 0.06, 1: 0.04}) and d.n_seeds == 2


def test_delta_one_seed_paired_items_mcnemar_and_bootstrap() -> None:
    it_v = [0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0]
    im_v = [1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0]  # 4 items IM-only right, none IT-only
    im = {0: result("mmlu", "acc", sum(im_v) / 12, 0.1, 12, items=_items(im_v))}
    it = {0: result("mmlu", "acc", sum(it_v) / 12, 0.1, 12, items=_items(it_v))}
    d = agg.delta_stats(im, it, "mmlu")
    assert d.delta == pytest.approx(4 / 12) and d.n_items == 12 and d.test == "exact McNemar"
    assert d.p_value == pytest.approx(sps.binomtest(0, 4, 0.5).pvalue)
    assert 0 < d.ci_low < 4 / 12 < d.ci_high
    # the normal approximation from two independent stderrs would be far wider: pairing matters
    assert d.ci_high - d.ci_low < 2 * 1.96 * math.sqrt(0.1**2 + 0.1**2)


def test_delta_one_seed_identical_items_is_marked_and_printed_without_a_degenerate_interval() -> None:
    from im_pipeline.report.cells import delta_cell

    v = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]
    im = {0: result("mmlu", "acc", 0.5, 0.1, 10, items=_items(v))}
    it = {0: result("mmlu", "acc", 0.5, 0.1, 10, items=_items(v))}
    d = agg.delta_stats(im, it, "mmlu")
    assert d.identical and d.ci_low == d.ci_high == 0.0 and d.p_value == 1.0
    assert delta_cell(d, 100, 1) == "+0.0 (all 10 paired items equal: no interval)"
    v2 = [1 - v[0], *v[1:]]  # one discordant pair: a real interval again
    d2 = agg.delta_stats({0: result("mmlu", "acc", 0.4, 0.1, 10, items=_items(v2))}, it, "mmlu")
    assert not d2.identical and delta_cell(d2, 100, 1).startswith("-10.0 [")


def test_delta_one_seed_too_few_items() -> None:
    im = {0: result("humaneval", "pass@1", 0.0, 0.0, 3, items={"pass@1": {"a": 0, "b": 0, "c": 0}})}
    it = {0: result("humaneval", "pass@1", 0.0, 0.0, 3, items={"pass@1": {"a": 0, "b": 0, "c": 0}})}
    d = agg.delta_stats(im, it, "humaneval")
    assert d.too_few_items and d.ci_low is None and d.p_value is None and d.delta == 0.0


def test_delta_seeds_with_items_seed_then_item_bootstrap() -> None:
    im = {
        s: result("mmlu", "acc", 0, 0, 6, items=_items(v))
        for s, v in enumerate([[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1]])
    }
    it = {
        s: result("mmlu", "acc", 0, 0, 6, items=_items(v))
        for s, v in enumerate([[0, 1, 0, 1, 0, 0], [1, 0, 0, 0, 1, 1]])
    }
    d = agg.delta_stats(im, it, "mmlu")
    assert d.seed_deltas == pytest.approx({0: 2 / 6, 1: 1 / 6})
    ci = sps.ttest_1samp([2 / 6, 1 / 6], 0).confidence_interval()
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high)) and d.test == "t test, seeds"
    # two seeds: no seed-then-item bootstrap (resampling 2 seeds gives far too narrow an interval)
    assert d.bootstrap is None and "too few seeds: 2 < 5" in d.bootstrap_note


def test_delta_five_seeds_with_items_has_seed_then_item_bootstrap() -> None:
    rng = np.random.default_rng(1)
    it_v = [rng.integers(0, 2, size=8).tolist() for _ in range(5)]
    im_v = [[max(a, int(b)) for a, b in zip(v, rng.integers(0, 2, size=8), strict=True)] for v in it_v]
    im = {s: result("mmlu", "acc", 0, 0, 8, items=_items(v)) for s, v in enumerate(im_v)}
    it = {s: result("mmlu", "acc", 0, 0, 8, items=_items(v)) for s, v in enumerate(it_v)}
    d = agg.delta_stats(im, it, "mmlu")
    deltas = [(sum(a) - sum(b)) / 8 for a, b in zip(im_v, it_v, strict=True)]
    assert list(d.seed_deltas.values()) == pytest.approx(deltas)
    ci = sps.ttest_1samp(deltas, 0).confidence_interval()
    assert (d.ci_low, d.ci_high) == pytest.approx((ci.low, ci.high))
    lo, hi = d.bootstrap
    assert lo <= d.delta <= hi and d.bootstrap_note is None
    # seeds and items both vary: wider than a bootstrap over the 5 seed means alone
    s_lo, s_hi = st.bootstrap_mean_ci(deltas)
    assert hi - lo >= s_hi - s_lo


def test_delta_key_pairs_another_item_score() -> None:
    def rec(v: list[float]) -> EvalResult:
        return result("overfitting", "bleu4", 1.0, None, 5, items={"test_loss": {str(i): x for i, x in enumerate(v)}})

    d = agg.delta_stats(
        {0: rec([1.0, 1.1, 0.9, 1.2, 1.0])}, {0: rec([1.2, 1.3, 1.0, 1.5, 1.1])}, "overfitting", key="test_loss"
    )
    assert d.delta == pytest.approx(-0.18) and d.test == "Wilcoxon signed-rank"
    assert (
        agg.delta_stats(
            {0: result("overfitting", "bleu4", 1, None, 5)}, {0: rec([1.0])}, "overfitting", key="test_loss"
        )
        is None
    )


def test_relative_gain() -> None:
    assert agg.relative_gain(30.0, 20.0) == pytest.approx(50.0)
    assert agg.relative_gain(10.0, 20.0) == pytest.approx(-50.0)
    assert agg.relative_gain(1.0, 0.0) is None


def test_fit_line_exact() -> None:
    fit = fit_line([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit_line([1.0], [2.0]) is None
    assert fit_line([1.0, 1.0], [2.0, 3.0]) is None


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
    rows = {r.benchmark: r for r in agg.comparison_rows(run)}
    assert list(rows) == ["mmlu", "humaneval", "alpaca_eval", "overfitting"]  # canonical order
    assert agg.benchmark_order(run) == list(rows)  # what the provenance table uses, without the statistics
    assert rows["mmlu"].arms["base"].mean == 0.25
    assert rows["mmlu"].arms["IM"].mean == pytest.approx(0.37)
    assert rows["mmlu"].delta.delta == pytest.approx(0.05)
    assert rows["mmlu"].delta.relative_gain == pytest.approx((0.37 - 0.32) / 0.32 * 100)
    assert rows["humaneval"].delta is None
    assert set(rows["humaneval"].skipped) == {"IT", "IM"}
    assert rows["mmlu"].chance == 0.25


def test_length_ratio_points_one_per_experiment(tmp_path: Path) -> None:
    make_experiment(
        tmp_path, "exp-a", ratio=0.1, n=24, values={"alpaca_eval": {"IT": [20.0, 30.0], "IM": [30.0, 36.0]}}
    )
    make_experiment(
        tmp_path, "exp-b", ratio=1.0, n=100, values={"alpaca_eval": {"IT": [40.0, 40.0], "IM": [50.0, 50.0]}}
    )
    make_experiment(tmp_path, "exp-c", ratio=2.0, n=50, values={"mmlu": {"IT": [0.3, 0.3], "IM": [0.4, 0.4]}})
    (tmp_path / "not-a-run").mkdir()
    points = length_ratio_points(tmp_path)
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


def test_seeds_with_too_few_items_give_no_interval() -> None:
    """Three HumanEval problems per seed: several seeds do not make "±" meaningful on 3 items."""
    im = {
        s: result("humaneval", "pass@1", 0, 0, 3, items={"pass@1": {"a": 0, "b": v, "c": 0}})
        for s, v in enumerate([1, 0])
    }
    it = {s: result("humaneval", "pass@1", 0, 0, 3, items={"pass@1": {"a": 0, "b": 0, "c": 0}}) for s in range(2)}
    d = agg.delta_stats(im, it, "humaneval")
    assert d.too_few_items and d.ci_low is None and d.p_value is None
    assert d.seed_deltas == pytest.approx({0: 1 / 3, 1: 0.0})
    s = agg.arm_summary(im, "humaneval")
    assert s.too_few_items and s.stderr is None and s.n_seeds == 2


def test_load_run_refuses_an_old_result_file_and_names_a_bad_config(tmp_path: Path) -> None:
    import json

    from im_pipeline.results import ResultFileError

    root = make_experiment(tmp_path, "old", ratio=0.1, n=8, values={"mmlu": {"IT": [0.3, 0.3], "IM": [0.4, 0.4]}})
    old = root / "IM" / "seed-1" / "eval" / "mmlu.json"
    rec = json.loads(old.read_text())
    del rec["schema_version"]  # as written before results were typed
    old.write_text(json.dumps(rec))
    with pytest.raises(ResultFileError, match=rf"{old}: eval result written without a schema_version.*--rerun eval"):
        agg.load_run(root)
    old.unlink()
    (root / "config.yaml").write_text("name: old\nseeds: [zero]\n")
    with pytest.raises(ValueError, match=r"(?s)config.yaml: .*seeds"):
        agg.load_run(root)


def test_seed_deltas_test_prints_the_sign_test_only_where_it_can_reach_significance() -> None:
    from im_pipeline.analysis.stats import seed_deltas_test

    five = [0.1, 0.2, 0.3, 0.4, 0.5]  # two-sided sign test: smallest p 0.0625, unreachable: Student t
    assert seed_deltas_test(five) == (pytest.approx(sps.ttest_1samp(five, 0).pvalue), "t test, seeds")
    six = [*five, 0.6]  # 6 seeds: the sign test can reach 0.03125, and does
    assert seed_deltas_test(six) == (pytest.approx(0.03125), "sign test")
