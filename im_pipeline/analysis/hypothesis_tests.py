"""Tests of pre-registered hypotheses: one-sided paired tests stratified by seed (randomisation by sign flips,
exact up to 2^20), a stratified bootstrap CI, Holm's correction, and the seed-level tests (t on seed deltas, Welch's
two-sample t with its interval, the effect detectable at 80% power by either, a crossed seed × item bootstrap for a
shared test set); the one-sided sign test across seeds is :func:`im_pipeline.analysis.stats.sign_test`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from im_pipeline.analysis.stats import DEFAULT_RESAMPLES, percentiles, resampled_means

EXACT_MAX_ITEMS = 20
"""Up to this many non-zero paired items the sign-flip test enumerates all 2^n flips (exact p-value)."""


def _stratum_weights(per_seed: Sequence[Sequence[float]]) -> tuple[np.ndarray, float]:
    """Each item's contribution d / (k · n_s) to the stratified mean, and the observed statistic."""
    seeds = [np.asarray(s, dtype=float) for s in per_seed]
    if not seeds or any(s.size == 0 for s in seeds):
        raise ValueError("every stratum (seed) needs at least one paired difference")
    k = len(seeds)
    c = np.concatenate([s / (k * s.size) for s in seeds])
    return c, float(c.sum())


def stratified_mean(per_seed: Sequence[Sequence[float]]) -> float:
    """The mean over strata (seeds) of each stratum's mean paired difference: every seed weighs the same."""
    return _stratum_weights(per_seed)[1]


def stratified_sign_flip(
    per_seed: Sequence[Sequence[float]],
    *,
    alternative: str = "greater",
    n_resamples: int = 100_000,
    seed: int = 0,
    exact_max: int = EXACT_MAX_ITEMS,
) -> dict[str, Any]:
    """One-sided paired randomisation test, stratified by seed.

    Statistic: T = mean over seeds of the seed's mean paired difference (treatment − reference). Under H0 (within
    every seed each pair's two values are exchangeable) every difference's sign is equally likely + or −,
    independently: the reference distribution flips signs within each seed's pairs (the stratum sizes and the
    seeds' equal weights stay fixed). ``alternative='greater'``: p = P(T* ≥ T); ``'less'``: P(T* ≤ T).
    Exact enumeration of all 2^m flips of the m non-zero differences when m ≤ ``exact_max``; otherwise
    ``n_resamples`` seeded Monte-Carlo flips and p = (b + 1) / (B + 1) (b = flips at least as extreme; valid, never
    0). Zero differences cannot change sign and are left out of the flips (they still count in n_s).

    Why this test (the report says so): it tests exactly the statistic whose CI is reported, weights seeds equally
    as pre-registered, needs no normality, and scipy's ``permutation_test`` (``permutation_type='samples'`` on one
    sample) is the same test for one stratum; scipy has no stratified version.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    c, observed = _stratum_weights(per_seed)
    c = c[c != 0]
    m = int(c.size)
    sign = 1.0 if alternative == "greater" else -1.0
    tol = 1e-12 * max(1.0, float(np.abs(c).sum()))  # float ties: a flip equal to T counts as extreme
    target = sign * observed - tol
    out: dict[str, Any] = {
        "test": "stratified paired sign-flip randomisation test",
        "statistic": observed,
        "alternative": alternative,
        "n_nonzero": m,
    }
    if m == 0:
        out.update(p_value=1.0, exact=True, n_flips=1)
        return out
    if m <= exact_max:
        # all 2^m sign vectors: bits of 0 .. 2^m - 1
        codes = np.arange(2**m, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(m, dtype=np.int64)) & 1)
        stats_ = signs @ c
        extreme = int(np.count_nonzero(sign * stats_ >= target))
        out.update(p_value=extreme / 2**m, exact=True, n_flips=2**m)
        return out
    rng = np.random.default_rng(seed)
    extreme, chunk = 0, max(1, 4_000_000 // m)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        signs = rng.integers(0, 2, size=(size, m)) * 2.0 - 1.0
        extreme += int(np.count_nonzero(sign * (signs @ c) >= target))
    out.update(p_value=(extreme + 1) / (n_resamples + 1), exact=False, n_flips=n_resamples, extreme=extreme)
    return out


def stratified_bootstrap_ci(
    per_seed: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the stratified mean difference: items resampled with replacement within each seed
    (the seeds are fixed strata, as in the test). With one seed it is :func:`bootstrap_mean_ci` (same draws)."""
    seeds = [np.asarray(s, dtype=float) for s in per_seed]
    if not seeds or any(s.size == 0 for s in seeds):
        raise ValueError("every stratum (seed) needs at least one paired difference")
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for s in seeds:  # one rng for all strata, in seed order
        total += resampled_means(s, n_resamples, rng)
    return percentiles(total / len(seeds), confidence)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: sorted ascending p_(1) ≤ … ≤ p_(m), adjusted
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). Reject H_(i) at level α when p̃_(i) < α (family-wise error ≤ α)."""
    items = sorted(p_values.items(), key=lambda kv: (kv[1], kv[0]))
    m = len(items)
    out: dict[str, float] = {}
    running = 0.0
    for j, (name, p) in enumerate(items):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value {name}={p} is not in [0, 1]")
        running = max(running, min(1.0, (m - j) * p))
        out[name] = running
    return out


def seed_t_test(deltas: Sequence[float], alternative: str = "two-sided") -> dict[str, Any]:
    """Student's one-sample t test on the seed deltas (the seed is the unit that was randomised): scipy's
    ``ttest_1samp`` against 0, ``alternative`` 'greater' | 'less' | 'two-sided'; k − 1 df."""
    from scipy import stats as sps

    d = np.asarray(deltas, dtype=float)
    if d.size < 2:
        raise ValueError(f"a t test across seeds needs at least 2 seeds, got {d.size}")
    res = sps.ttest_1samp(d, 0.0, alternative=alternative)
    p = float(res.pvalue) if np.isfinite(res.pvalue) else (1.0 if float(d.mean()) == 0 else 0.0)
    return {
        "test": "one-sample t on seed deltas",
        "statistic": float(res.statistic),
        "df": int(d.size - 1),
        "p_value": p,
    }


def two_sample_t_test(
    a: Sequence[float], b: Sequence[float], alternative: str = "two-sided", confidence: float = 0.95
) -> dict[str, Any]:
    """Welch's two-sample t test of mean(a) − mean(b) (seed deltas of two strata, each seed trained on its own
    sample: independent, variances not assumed equal): scipy's ``ttest_ind(equal_var=False)``; ``ci`` is the
    two-sided Welch interval of the difference at ``confidence`` (scipy's ``confidence_interval``)."""
    from scipy import stats as sps

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"a two-sample t test needs at least 2 seeds per group, got {x.size} and {y.size}")
    res = sps.ttest_ind(x, y, equal_var=False, alternative=alternative)
    ci = sps.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    p = float(res.pvalue) if np.isfinite(res.pvalue) else (1.0 if float(x.mean() - y.mean()) == 0 else 0.0)
    return {"test": "Welch two-sample t on seed deltas", "statistic": float(res.statistic), "df": float(res.df),
            "p_value": p, "difference": float(x.mean() - y.mean()), "ci": [float(ci.low), float(ci.high)]}  # fmt: skip


def _noncentrality(df: float, alpha: float, power: float) -> float:
    """The noncentrality at which a one-sided t test with ``df`` degrees of freedom at level ``alpha`` rejects with
    probability ``power`` (scipy's noncentral t, solved by brentq)."""
    from scipy import optimize
    from scipy import stats as sps

    crit = float(sps.t.ppf(1 - alpha, df))
    return optimize.brentq(lambda nc: float(sps.nct.sf(crit, df, nc)) - power, 0.0, 100.0)


def detectable_effect(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest |effect| a one-sided one-sample t test over ``n`` seeds detects with ``power`` at level ``alpha``,
    given the seed deltas' standard deviation ``sd``: δ with P(T > t_{1−α, n−1} | noncentrality δ√n / sd) = power
    (scipy's noncentral t, solved by brentq). The report's power line, from the observed seed spread."""
    if n < 2 or not sd > 0:
        raise ValueError(f"needs n >= 2 seeds and sd > 0, got n={n}, sd={sd}")
    return _noncentrality(n - 1, alpha, power) * sd / np.sqrt(n)


def detectable_difference(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float, power: float = 0.8) -> float:
    """The two-sample version of :func:`detectable_effect` (Welch): the smallest |mean(a) − mean(b)| a one-sided
    Welch t test detects with ``power`` at ``alpha``, given each group's SD and size (noncentrality δ / se with
    se² = sd_a²/n_a + sd_b²/n_b, Welch–Satterthwaite df from the same SDs)."""
    if n_a < 2 or n_b < 2 or not (sd_a > 0 or sd_b > 0):
        raise ValueError(f"needs >= 2 seeds per group and some spread, got n={n_a}, {n_b}, sd={sd_a}, {sd_b}")
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return _noncentrality(df, alpha, power) * float(np.sqrt(va + vb))


def crossed_bootstrap_ci(
    diffs: np.ndarray, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of the mean of a seeds × items matrix of paired differences when every seed was scored on the
    same test items (a shared test set): seeds and items resampled independently (a crossed, two-way bootstrap), so
    both the training randomness and the choice of test items vary. Written by hand: scipy's ``bootstrap`` resamples
    one axis of independent observations."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or min(d.shape) < 1:
        raise ValueError(f"diffs must be a non-empty seeds × items matrix, got shape {d.shape}")
    k, m = d.shape
    rng = np.random.default_rng(seed)
    # How often each seed (row) and each item (column) is drawn; the resample's mean is rows · d · cols / (k·m).
    rows = rng.multinomial(k, np.full(k, 1.0 / k), size=n_resamples)
    cols = rng.multinomial(m, np.full(m, 1.0 / m), size=n_resamples)
    means = np.einsum("bk,km,bm->b", rows, d, cols) / (k * m)
    return percentiles(means, confidence)
