"""Paired statistics for IM − IT comparisons (the same items are scored for every arm).

Every benchmark scores the *same* items (questions, problems, instructions, training examples) for every arm,
so a comparison is made on the per-item differences, never on two independent standard errors:

* **paired bootstrap** (:func:`bootstrap_mean_ci`): percentile CI of the mean per-item difference, items resampled
  with replacement (the same resample for both arms, hence paired);
* **exact McNemar** (:func:`mcnemar_exact`) for binary items (MMLU, HumanEval greedy), **Wilcoxon signed-rank**
  (:func:`wilcoxon_signed_rank`) for continuous ones (TruthfulQA mc2, AlpacaEval preferences, losses, BLEU);
* **proportions** (a single arm's accuracy / pass rate): Wilson (:func:`wilson`) and Clopper–Pearson
  (:func:`clopper_pearson`) intervals;
* **below** :data:`MIN_ITEMS` items no interval is given at all (``too_few_items``): the report prints
  "too few items" instead of a "±";
* **across seeds** (:func:`across_seeds`): every seed's delta, a Student-t interval with k − 1 degrees of freedom
  (exact under normality for any k ≥ 2, so it stays, wide, for 2–4 seeds), the exact sign test, and from
  :data:`MIN_ITEMS` seeds on a seed-then-item (hierarchical) bootstrap (a percentile bootstrap that resamples 2–4
  seeds sees at most a handful of distinct seed sets and comes out far too narrow: "too few seeds").

Why by hand: scipy has the distributions and tests (used here: ``scipy.stats.t``, ``beta``, ``norm``, ``wilcoxon``,
``binomtest``) but no seed-then-item bootstrap and no McNemar (a binomial test on the discordant pairs, below); the
closed forms below are short and each is unit-tested against
scipy's own implementation of the same statistic (``binomtest``, ``ttest_1samp``, ``bootstrap``) on fixed inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_ITEMS = 5
"""Fewer paired items than this: no interval, no test — the report says "too few items"."""
TOO_FEW = "too few items"
TOO_FEW_SEEDS = "too few seeds"
DEFAULT_RESAMPLES = 10_000


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


# -- proportions ------------------------------------------------------------------------------------------------------


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` (never the degenerate [0, 0] of the Wald interval)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for ``k`` successes out of ``n``, from beta quantiles."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


# -- tests on paired items --------------------------------------------------------------------------------------------


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value for ``k`` of ``n`` under p = 1/2 (``scipy.stats.binomtest``)."""
    from scipy.stats import binomtest

    return 1.0 if n == 0 else float(binomtest(k, n, 0.5).pvalue)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Exact McNemar test for paired binary outcomes ``a`` (e.g. IM) and ``b`` (IT): a binomial test on the
    discordant pairs (``a`` right, ``b`` wrong) vs (``a`` wrong, ``b`` right)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = a_only + b_only
    return {
        "test": "exact McNemar",
        "a_only": a_only,
        "b_only": b_only,
        "discordant": n,
        "p_value": _binom_two_sided(min(a_only, b_only), n),
    }


def sign_test(differences: Sequence[float], alternative: str = "two-sided") -> dict[str, Any]:
    """Exact sign test on paired differences (zeros dropped): two-sided, or one-sided (``'greater'``: more positive
    than chance; ``'less'``) as ``scipy.stats.binomtest`` on the positives. ``min_p``: the smallest p-value these n
    signs can give (one-sided 0.5^n: 0.125 for 3 seeds, 0.03125 for 5)."""
    from scipy.stats import binomtest

    pos = sum(1 for d in differences if d > 0)
    neg = sum(1 for d in differences if d < 0)
    n = pos + neg
    if alternative == "two-sided":
        return {
            "test": "sign test",
            "positive": pos,
            "negative": neg,
            "p_value": _binom_two_sided(min(pos, neg), n),
            "min_p": min(1.0, 2 * 0.5**n),
        }
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    p = 1.0 if n == 0 else float(binomtest(pos, n, 0.5, alternative=alternative).pvalue)
    return {"test": "exact one-sided sign test", "positive": pos, "negative": neg, "p_value": p, "min_p": 0.5**n}


def seed_deltas_test(deltas: Sequence[float], alpha: float = 0.05) -> tuple[float, str]:
    """(p, test name) of a two-sided test on k ≥ 2 seed deltas: the exact sign test where it can reach p < ``alpha``
    with these seeds (its smallest p, 2 · 0.5^k, is below α from 6 seeds on), else a one-sample Student t (scipy's
    ``ttest_1samp``, k − 1 df): a test that cannot reach significance is not printed."""
    from scipy.stats import ttest_1samp

    sign = sign_test(deltas)
    if sign["min_p"] < alpha:
        return sign["p_value"], "sign test"
    p = float(ttest_1samp(np.asarray(deltas, dtype=float), 0.0).pvalue)
    return (p if math.isfinite(p) else 1.0), "t test, seeds"


def wilcoxon_signed_rank(differences: Sequence[float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zeros dropped as Wilcoxon's original method);
    p = 1 when every difference is zero (nothing to rank)."""
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return {"test": "Wilcoxon signed-rank", "statistic": 0.0, "p_value": 1.0, "nonzero": 0}
    res = wilcoxon(d, zero_method="wilcox")
    return {
        "test": "Wilcoxon signed-rank",
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "nonzero": nonzero,
    }


# -- intervals for a mean difference ----------------------------------------------------------------------------------


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval with n − 1 degrees of freedom (n ≥ 2)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError("a t-interval needs at least 2 values")
    mean = float(x.mean())
    half = float(t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_mean_ci(
    differences: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired per-item differences (items resampled with replacement)."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("no differences to bootstrap")
    return percentiles(resampled_means(d, n_resamples, np.random.default_rng(seed)), confidence)


def resampled_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` means of ``d`` resampled with replacement (drawn from ``rng``, in order): the paired
    bootstrap's statistic, also per stratum in :func:`~im_pipeline.analysis.hypothesis_tests.stratified_bootstrap_ci`.
    """
    # In chunks of ~2M indices: full MMLU (14k items) × 10,000 resamples would be a 1 GB index matrix at once.
    chunk = max(1, 2_000_000 // d.size)
    return np.concatenate(
        [
            d[rng.integers(0, d.size, size=(min(chunk, n_resamples - start), d.size))].mean(axis=1)
            for start in range(0, n_resamples, chunk)
        ]
    )


def seed_item_bootstrap(
    per_seed: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Hierarchical (seed-then-item) percentile bootstrap of the mean difference.

    Each resample draws k seeds with replacement, then, within each drawn seed, its items with replacement; the
    statistic is the mean over the drawn seeds of their item means. Both sources of variation (training seed,
    evaluation items) enter the interval.
    """
    seeds = [np.asarray(s, dtype=float) for s in per_seed]
    if not seeds or any(s.size == 0 for s in seeds):
        raise ValueError("every seed needs at least one item difference")
    rng = np.random.default_rng(seed)
    k = len(seeds)
    stats = np.empty(n_resamples)
    picks = rng.integers(0, k, size=(n_resamples, k))
    for r in range(n_resamples):
        means = []
        for j in picks[r]:
            s = seeds[j]
            means.append(s[rng.integers(0, s.size, size=s.size)].mean())
        stats[r] = float(np.mean(means))
    return percentiles(stats, confidence)


# -- the comparisons the report uses ----------------------------------------------------------------------------------


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1, 0.0, 1.0, True, False) for v in values)


def paired_items(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Items scored in both ``a`` and ``b`` (by id, sorted), and their values."""
    common = sorted(set(a) & set(b))
    return common, np.array([float(a[i]) for i in common]), np.array([float(b[i]) for i in common])


def paired_comparison(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``a − b`` over the items both scored: mean difference, paired bootstrap CI and an exact McNemar (binary
    items) or Wilcoxon signed-rank (continuous) test. Below :data:`MIN_ITEMS` items: no interval, no test."""
    ids, x, y = paired_items(a, b)
    n = len(ids)
    out: dict[str, Any] = {"n_items": n, "delta": float((x - y).mean()) if n else None}
    if n < MIN_ITEMS:
        out.update(ci_low=None, ci_high=None, p_value=None, test=None, too_few_items=True, method=TOO_FEW)
        return out
    d = x - y
    lo, hi = bootstrap_mean_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    binary = is_binary(x.tolist()) and is_binary(y.tolist())
    test = mcnemar_exact(x.tolist(), y.tolist()) if binary else wilcoxon_signed_rank(d.tolist())
    out.update(
        ci_low=lo,
        ci_high=hi,
        p_value=test["p_value"],
        test=test,
        too_few_items=False,
        identical=bool(np.all(d == 0)),
        method=f"paired bootstrap over {n} items ({n_resamples} resamples, percentile); {test['test']}",
    )
    return out


def across_seeds(
    per_seed: Mapping[int, tuple[Mapping[str, float], Mapping[str, float]]],
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``a − b`` across k ≥ 2 seeds: every seed's delta (over its paired items), a t-interval with k − 1 df on the
    seed deltas, the exact sign test on the seed deltas and, with k ≥ :data:`MIN_ITEMS` seeds, a seed-then-item
    bootstrap (``None`` below, ``bootstrap_note`` says why)."""
    seeds = sorted(per_seed)
    diffs, deltas, n_items = [], {}, {}
    for s in seeds:
        _, x, y = paired_items(*per_seed[s])
        if x.size:
            diffs.append(x - y)
            deltas[s] = float((x - y).mean())
            n_items[s] = int(x.size)
    k = len(deltas)
    out: dict[str, Any] = {"seed_deltas": deltas, "n_items": n_items, "n_seeds": k}
    if k < 2:
        out.update(delta=next(iter(deltas.values()), None), t_interval=None, bootstrap=None, sign_test=None)
        return out
    mean, lo, hi = t_interval(list(deltas.values()), confidence)
    out["delta"] = mean
    out["t_interval"] = [lo, hi] if math.isfinite(lo) else [mean, mean]
    if k >= MIN_ITEMS:
        out["bootstrap"] = list(seed_item_bootstrap(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed))
        boot = f"seed-then-item bootstrap ({n_resamples} resamples)"
    else:
        out["bootstrap"] = None
        out["bootstrap_note"] = boot = f"no seed-then-item bootstrap ({TOO_FEW_SEEDS}: {k} < {MIN_ITEMS})"
    out["sign_test"] = sign_test(list(deltas.values()))
    out["method"] = (
        f"{k} seeds: every seed's delta; Student-t interval on the seed deltas ({k - 1} df); {boot}; exact sign test"
    )
    return out


def proportion_summary(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """A single arm's rate on binary items: k / n, Wilson and Clopper–Pearson intervals (none below MIN_ITEMS)."""
    n = len(values)
    k = int(sum(1 for v in values if v))
    out: dict[str, Any] = {"k": k, "n": n, "rate": k / n if n else None}
    if n < MIN_ITEMS:
        out.update(wilson=None, clopper_pearson=None, too_few_items=True)
    else:
        out.update(wilson=list(wilson(k, n, confidence)), clopper_pearson=list(clopper_pearson(k, n, confidence)))
        out["too_few_items"] = False
    return out


# -- regression with a prediction interval (advise) -------------------------------------------------------------------


def ols_prediction(
    x: Sequence[Sequence[float]], y: Sequence[float], x0: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Ordinary least squares ``y ~ 1 + x`` and the prediction interval for a *new* observation at ``x0``:
    ``ŷ ± t(n − p) · s · sqrt(1 + x0ᵀ (XᵀX)⁻¹ x0)`` (p = number of coefficients, intercept included)."""
    from scipy.stats import t

    X = np.column_stack([np.ones(len(y)), np.asarray(x, dtype=float)])
    Y = np.asarray(y, dtype=float)
    n, p = X.shape
    if n <= p:
        raise ValueError(f"need more points ({n}) than coefficients ({p})")
    coef, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ coef
    df = n - p
    s = float(math.sqrt(resid @ resid / df))
    v = np.concatenate([[1.0], np.asarray(x0, dtype=float)])
    pred = float(v @ coef)
    inv = np.linalg.inv(X.T @ X)
    tq = float(t.ppf(0.5 + confidence / 2, df))
    half = tq * s * math.sqrt(1 + v @ inv @ v)
    se = s * np.sqrt(np.diag(inv))  # each coefficient's standard error; its CI is coef ± t · se
    return {
        "prediction": pred,
        "low": pred - half,
        "high": pred + half,
        "coefficients": [float(c) for c in coef],
        "coefficient_ci": [[float(c - tq * e), float(c + tq * e)] for c, e in zip(coef, se, strict=True)],
        "residual_sd": s,
        "rms_residual": float(math.sqrt(resid @ resid / n)),
        "n_points": n,
        "df": df,
    }
