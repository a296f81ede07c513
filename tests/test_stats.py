"""Paired statistics (im_pipeline.analysis.stats), each checked against scipy on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from im_pipeline.analysis import stats

D = [0.8, -0.3, 1.7, 0.2, 0.0, 2.4, -1.1, 0.9, 0.5, 1.3, -0.2, 0.7]


@pytest.mark.parametrize(("k", "n"), [(0, 3), (0, 20), (3, 10), (7, 7), (11, 40), (285, 1140)])
def test_wilson_and_clopper_pearson_match_scipy(k: int, n: int) -> None:
    res = sps.binomtest(k, n)
    w = res.proportion_ci(0.95, method="wilson")
    cp = res.proportion_ci(0.95, method="exact")
    assert stats.wilson(k, n) == pytest.approx((w.low, w.high), abs=1e-12)
    assert stats.clopper_pearson(k, n) == pytest.approx((cp.low, cp.high), abs=1e-10)
    # 0 of 3 is not "[0, 0]": the upper bound is well above zero.
    if k == 0:
        assert stats.wilson(k, n)[1] > 0.1


def test_proportion_input_errors() -> None:
    with pytest.raises(ValueError):
        stats.wilson(4, 3)
    with pytest.raises(ValueError):
        stats.clopper_pearson(0, 0)


@pytest.mark.parametrize(("a_only", "b_only", "both"), [(9, 2, 5), (3, 3, 0), (0, 6, 4), (12, 1, 30), (0, 0, 8)])
def test_mcnemar_exact_matches_scipy_binomtest(a_only: int, b_only: int, both: int) -> None:
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * 3
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * 3
    res = stats.mcnemar_exact(a, b)
    assert (res["a_only"], res["b_only"]) == (a_only, b_only)
    expected = 1.0 if a_only + b_only == 0 else sps.binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert res["p_value"] == pytest.approx(expected, rel=1e-9)


def test_sign_test_matches_scipy_binomtest() -> None:
    res = stats.sign_test(D)
    pos = sum(d > 0 for d in D)
    neg = sum(d < 0 for d in D)
    assert (res["positive"], res["negative"]) == (pos, neg) == (8, 3)
    assert res["p_value"] == pytest.approx(sps.binomtest(pos, pos + neg, 0.5).pvalue, rel=1e-9)
    assert res["min_p"] == 2 * 0.5**11
    # the one-sided test of the hypotheses' seed deltas is the same function
    one = stats.sign_test(D, "greater")
    assert (one["positive"], one["negative"]) == (8, 3)
    assert one["p_value"] == pytest.approx(sps.binomtest(8, 11, 0.5, alternative="greater").pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="alternative"):
        stats.sign_test(D, "both")


def test_wilcoxon_matches_scipy_and_handles_all_zero() -> None:
    res = stats.wilcoxon_signed_rank(D)
    ref = sps.wilcoxon(D, zero_method="wilcox")
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert res["nonzero"] == 11
    assert stats.wilcoxon_signed_rank([0.0] * 6)["p_value"] == 1.0


def test_t_interval_matches_scipy_ttest_1samp() -> None:
    mean, lo, hi = stats.t_interval(D[:4], 0.95)
    ci = sps.ttest_1samp(D[:4], 0.0).confidence_interval(0.95)
    assert mean == pytest.approx(np.mean(D[:4]))
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-10)
    with pytest.raises(ValueError):
        stats.t_interval([1.0])


def test_paired_bootstrap_matches_scipy_bootstrap() -> None:
    lo, hi = stats.bootstrap_mean_ci(D, n_resamples=40_000, seed=1)
    ref = sps.bootstrap((np.array(D),), np.mean, method="percentile", n_resamples=40_000, random_state=2)
    # Two independent Monte-Carlo estimates of the same percentiles.
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.03)
    assert lo < np.mean(D) < hi
    # Seeded: the same call gives the same interval.
    assert stats.bootstrap_mean_ci(D, n_resamples=2000, seed=5) == stats.bootstrap_mean_ci(D, n_resamples=2000, seed=5)


def test_seed_item_bootstrap_reduces_to_seed_bootstrap_with_one_item_per_seed() -> None:
    seed_deltas = [0.4, 1.1, -0.2, 0.9, 0.6, 1.5]
    lo, hi = stats.seed_item_bootstrap([[d] for d in seed_deltas], n_resamples=20_000, seed=3)
    ref = sps.bootstrap((np.array(seed_deltas),), np.mean, method="percentile", n_resamples=20_000, random_state=4)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.04)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.04)


def test_seed_item_bootstrap_is_wider_than_seed_means_alone() -> None:
    rng = np.random.default_rng(0)
    per_seed = [rng.normal(m, 2.0, size=30) for m in (0.5, 0.7, 0.4)]
    lo, hi = stats.seed_item_bootstrap(per_seed, n_resamples=4000, seed=0)
    seed_means = [float(s.mean()) for s in per_seed]
    s_lo, s_hi = stats.bootstrap_mean_ci(seed_means, n_resamples=4000, seed=0)
    assert hi - lo > s_hi - s_lo


def test_paired_comparison_binary_uses_mcnemar_and_too_few_items() -> None:
    a = {f"q{i}": v for i, v in enumerate([1, 1, 0, 1, 1, 0, 1, 1, 1, 0])}
    b = {f"q{i}": v for i, v in enumerate([0, 1, 0, 0, 1, 0, 0, 1, 0, 0])}
    b["only-in-b"] = 1
    res = stats.paired_comparison(a, b, n_resamples=2000)
    assert res["n_items"] == 10 and res["delta"] == pytest.approx(0.4)
    assert res["test"]["test"] == "exact McNemar"
    assert res["p_value"] == pytest.approx(sps.binomtest(4, 4, 0.5).pvalue)
    assert res["ci_low"] <= 0.4 <= res["ci_high"]
    few = stats.paired_comparison({"a": 1, "b": 0, "c": 1}, {"a": 0, "b": 0, "c": 0})
    assert few["too_few_items"] and few["ci_low"] is None and few["method"] == stats.TOO_FEW
    assert few["delta"] == pytest.approx(2 / 3)


def test_paired_comparison_continuous_uses_wilcoxon() -> None:
    a = {str(i): 1.0 + d for i, d in enumerate(D)}
    b = {str(i): 1.0 for i in range(len(D))}
    res = stats.paired_comparison(a, b, n_resamples=2000)
    assert res["test"]["test"] == "Wilcoxon signed-rank"
    assert res["p_value"] == pytest.approx(sps.wilcoxon(np.array(D), zero_method="wilcox").pvalue, rel=1e-6)


def test_across_seeds_lists_deltas_t_interval_bootstrap_and_sign_test() -> None:
    per_seed = {
        0: ({"x": 1.0, "y": 2.0, "z": 0.5}, {"x": 0.5, "y": 1.0, "z": 0.5}),
        1: ({"x": 1.5, "y": 2.0, "z": 0.0}, {"x": 0.5, "y": 1.5, "z": 0.5}),
        2: ({"x": 1.0, "y": 1.0, "z": 1.0}, {"x": 1.0, "y": 0.0, "z": 1.0}),
    }
    res = stats.across_seeds(per_seed, n_resamples=2000)
    assert res["seed_deltas"] == pytest.approx({0: 0.5, 1: 1 / 3, 2: 1 / 3})
    ci = sps.ttest_1samp([0.5, 1 / 3, 1 / 3], 0.0).confidence_interval(0.95)
    assert res["t_interval"] == pytest.approx([ci.low, ci.high])
    assert res["sign_test"]["p_value"] == pytest.approx(sps.binomtest(3, 3, 0.5).pvalue)
    # 3 seeds: a percentile bootstrap over 3 seeds is far too narrow, so none is given
    assert res["bootstrap"] is None and res["bootstrap_note"].endswith("(too few seeds: 3 < 5)")
    per_seed[3] = ({"x": 2.0, "y": 1.0, "z": 0.0}, {"x": 1.0, "y": 1.0, "z": 0.0})
    per_seed[4] = ({"x": 0.0, "y": 1.0, "z": 0.5}, {"x": 0.5, "y": 1.0, "z": 0.5})
    res = stats.across_seeds(per_seed, n_resamples=2000)
    deltas = [0.5, 1 / 3, 1 / 3, 1 / 3, -1 / 6]
    ci = sps.ttest_1samp(deltas, 0.0).confidence_interval(0.95)
    assert res["t_interval"] == pytest.approx([ci.low, ci.high])
    assert res["sign_test"]["p_value"] == pytest.approx(sps.binomtest(4, 5, 0.5).pvalue)
    assert res["bootstrap"][0] <= res["delta"] <= res["bootstrap"][1] and "bootstrap_note" not in res


def test_proportion_summary() -> None:
    s = stats.proportion_summary([0, 0, 0])
    assert s["too_few_items"] and s["wilson"] is None and s["rate"] == 0.0
    s = stats.proportion_summary([0] * 20)
    ref = sps.binomtest(0, 20)
    assert s["k"] == 0 and s["n"] == 20 and not s["too_few_items"]
    assert s["wilson"] == pytest.approx(list(ref.proportion_ci(method="wilson")), abs=1e-12)
    assert s["clopper_pearson"] == pytest.approx(list(ref.proportion_ci(method="exact")), abs=1e-10)
    s = stats.proportion_summary([1, 0, 1, 1, 0, 1, 0])
    assert s["rate"] == pytest.approx(4 / 7)
    assert s["wilson"] == pytest.approx(list(sps.binomtest(4, 7).proportion_ci(method="wilson")), abs=1e-12)


def test_bootstrap_scales_to_full_mmlu_size() -> None:
    """14,042 paired binary items (all of MMLU) × 10,000 resamples, without a 1 GB index matrix."""
    rng = np.random.default_rng(0)
    d = rng.integers(-1, 2, size=14_042).astype(float)
    lo, hi = stats.bootstrap_mean_ci(d, seed=0)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - 1.96 * se, abs=0.2 * se)
    assert hi == pytest.approx(d.mean() + 1.96 * se, abs=0.2 * se)
