"""A pre-registered study across strata (issue 23): hypotheses within one stratum or between two, and manipulation
checks, on the runs of each stratum (``runs``: stratum name -> that stratum's :class:`RunResults`).

* **Within a stratum** (``stratum: S``): the primary test of ``primary_test: seeds``
  (:func:`~im_pipeline.analysis.hypotheses.compare`): one-sided Student t on the seed deltas (each seed's mean paired
  difference treatment − reference over the items both arms scored); one interval, the crossed seed × item bootstrap
  when every seed scored the same items (the common out-of-domain test set), else the t interval.
* **Between two strata** (``between_strata: [A, B]``): the seed deltas of A against those of B, Welch's two-sample
  t, one-sided in the predicted direction (the sign of the difference A − B); the Welch interval of the difference
  (only the seeds vary).
* Holm over all hypotheses at α on the one-sided p; *reversed* only from the two-sided test (Holm-adjusted in its
  own family) with the effect in the other direction; *not tested* with fewer than 2 seeds of results in a stratum.
* ``equivalence_band`` b: TOST at α, i.e. the 1 − 2α interval of the same kind: inside ±b *equivalent*, entirely
  outside *different*, else *inconclusive*; not in the Holm family.
* Power line: the effect detectable with 80% power at Holm's strictest step (α / number of hypotheses) from the
  observed seed spread (one-sample, or Welch two-sample between strata).
* Checks (``study.checks``): per stratum the mean over seeds of the per-seed mean difference on the items both
  scored; reference ``base`` = the base model's result (seed None), paired by item id with each seed's items. A check
  against ``base`` not passed in some stratum makes the study uninformative (``informative: False`` and why).
* The item-level stratified sign-flip test of a within-stratum hypothesis is secondary, conditional on the trained
  models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from im_pipeline.analysis import stats as st
from im_pipeline.analysis.aggregate import item_scores
from im_pipeline.analysis.hypotheses import (
    BENCHMARK,
    NOT_TESTED,
    compare,
    outcome_of,
    paired_differences,
    seeds_interval,
)
from im_pipeline.analysis.hypothesis_tests import (
    detectable_difference,
    holm,
    two_sample_t_test,
)
from im_pipeline.analysis.run_files import RunResults, ok
from im_pipeline.config.study import BASE, Check, Hypothesis, StudyConfig

EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different", "inconclusive"


def _row(h: Hypothesis, study: StudyConfig, strata: list[str]) -> dict[str, Any]:
    return {
        "id": h.id,
        "text": h.text,
        "strata": strata,
        "between": h.between_strata is not None,
        "treatment": h.treatment or study.treatment,
        "reference": h.reference or study.reference,
        "metric": h.metric,
        "direction": h.direction,
        "band": h.equivalence_band,
    }


def equivalence(ci: list[float], band: float) -> str:
    """equivalent / different / inconclusive: the interval inside ±band, entirely outside it, or neither."""
    lo, hi = ci
    if -band < lo and hi < band:
        return EQUIVALENT
    if lo > band or hi < -band:
        return DIFFERENT
    return INCONCLUSIVE


def _within_interval(run: RunResults, row: dict[str, Any], confidence: float, seed: int) -> list[float]:
    """The within-stratum effect's interval at ``confidence``, of the same kind as the primary one."""
    diffs, _, item_ids = paired_differences(run, row["treatment"], row["reference"], row["metric"])
    return seeds_interval(diffs, item_ids, confidence, seed)[0]


def within_stratum(runs: dict[str, RunResults], h: Hypothesis, study: StudyConfig) -> dict[str, Any]:
    """A hypothesis within one stratum: the seed-level primary test of :func:`compare`."""
    row = _row(h, study, [h.stratum or ""])
    stratum = row["strata"][0]
    if stratum not in runs:
        return {**row, "tested": False, "reason": f"no results for stratum {stratum}"}
    seeds_study = study.model_copy(update={"primary_test": "seeds"})
    res = compare(runs[stratum], row["treatment"], row["reference"], h.metric, h.direction, seeds_study)
    if len(res["seeds"]) < 2:
        why = f"{len(res['seeds'])} seed(s) with results of {row['treatment']} and {row['reference']} in {stratum}"
        return {**row, "tested": False, "reason": why + " (a t test needs ≥ 2)"}
    row.update(
        tested=True,
        effect=res["effect"],
        ci=res["ci"],
        ci_varies=res["ci_varies"],
        p_predicted=res["p_predicted"],
        p_two_sided=res["p_two_sided"],
        detectable=res["detectable"],
        seed_sd=res["seed_sd"],
        seed_deltas={stratum: res["seed_deltas"]},
        n_items={stratum: res["n_items"]},
        items_p=res["items_test"]["p_predicted"],
        sign_p=res["sign_test"]["p_value"],
        means={"treatment": res["treatment_mean"], "reference": res["reference_mean"]},
    )
    if h.equivalence_band is not None:
        ci = _within_interval(runs[stratum], row, 1 - 2 * study.alpha, study.seed)
        row["equivalence"] = {"ci": ci, "verdict": equivalence(ci, h.equivalence_band)}
    return row


def _seed_deltas(run: RunResults, row: dict[str, Any]) -> dict[int, float]:
    diffs, _, _ = paired_differences(run, row["treatment"], row["reference"], row["metric"])
    return {s: float(d.mean()) for s, d in sorted(diffs.items())}


def between_strata(runs: dict[str, RunResults], h: Hypothesis, study: StudyConfig) -> dict[str, Any]:
    """A hypothesis between two strata: Welch's two-sample t on their seed deltas (treatment − reference)."""
    row = _row(h, study, list(h.between_strata or ()))
    deltas: dict[str, dict[int, float]] = {}
    for s in row["strata"]:
        deltas[s] = _seed_deltas(runs[s], row) if s in runs else {}
        if len(deltas[s]) < 2:
            why = f"{len(deltas[s])} seed(s) with results of {row['treatment']} and {row['reference']} in {s}"
            return {**row, "tested": False, "reason": why + " (a Welch t test needs ≥ 2 per stratum)"}
    a, b = (list(deltas[s].values()) for s in row["strata"])
    two = two_sample_t_test(a, b, "two-sided")
    sd_a, sd_b = float(np.std(a, ddof=1)), float(np.std(b, ddof=1))
    alpha_h = study.alpha / len(study.hypotheses)
    row.update(
        tested=True,
        effect=two["difference"],
        ci=two["ci"],
        ci_varies=f"seeds (Welch interval on the two strata's seed deltas, {two['df']:.1f} df)",
        p_predicted=two_sample_t_test(a, b, h.direction)["p_value"],
        p_two_sided=two["p_value"],
        detectable=detectable_difference(sd_a, len(a), sd_b, len(b), alpha_h) if sd_a or sd_b else None,
        seed_sd={row["strata"][0]: sd_a, row["strata"][1]: sd_b},
        seed_deltas=deltas,
        items_p=None,
        sign_p=None,
    )
    if h.equivalence_band is not None:
        ci = two_sample_t_test(a, b, confidence=1 - 2 * study.alpha)["ci"]
        row["equivalence"] = {"ci": ci, "verdict": equivalence(ci, h.equivalence_band)}
    return row


def base_deltas(run: RunResults, treatment: str, metric: str) -> tuple[dict[int, float], dict[int, int]]:
    """Per seed of ``treatment``: its mean difference from the base model's result (seed None) over the items both
    scored, paired by item id; and the number of those items."""
    base = run.by_seed(BENCHMARK, BASE).get(None)
    ref = item_scores(base, BENCHMARK, metric) if ok(base) else None
    deltas: dict[int, float] = {}
    n_items: dict[int, int] = {}
    for seed, rec in sorted((s, r) for s, r in run.by_seed(BENCHMARK, treatment).items() if s is not None):
        x = item_scores(rec, BENCHMARK, metric) if ok(rec) else None
        if not x or not ref:
            continue
        ids, xv, yv = st.paired_items(x, ref)
        if ids:
            deltas[seed], n_items[seed] = float((xv - yv).mean()), len(ids)
    return deltas, n_items


def check_stratum(run: RunResults | None, c: Check, stratum: str, study: StudyConfig) -> dict[str, Any]:
    """One manipulation check in one stratum: the mean over seeds of treatment − reference, against the margin."""
    trt, ref = c.treatment or study.treatment, c.reference or study.reference
    row = {"id": c.id, "text": c.text, "stratum": stratum, "treatment": trt, "reference": ref, "metric": c.metric,
           "direction": c.direction, "margin": c.margin, "difference": None, "seed_deltas": {},
           "passed": None}  # fmt: skip
    if run is None:
        return {**row, "reason": f"no results for stratum {stratum}"}
    if ref == BASE:
        deltas = base_deltas(run, trt, c.metric)[0]
    else:
        deltas = _seed_deltas(run, {"treatment": trt, "reference": ref, "metric": c.metric})
    if not deltas:
        return {**row, "reason": f"no paired {c.metric} items of {trt} and {ref}"}
    diff = float(np.mean(list(deltas.values())))
    beyond = diff if c.direction == "greater" else -diff
    return {**row, "difference": diff, "seed_deltas": deltas, "passed": bool(beyond >= c.margin and beyond > 0)}


def evaluate_strata_study(runs: dict[str, RunResults], study: StudyConfig) -> dict[str, Any]:
    """Every hypothesis tested (Holm over all, at α), its outcome and equivalence verdict; every check per stratum;
    whether the study is informative (every check against the base model passed in every stratum)."""
    rows = [
        between_strata(runs, h, study) if h.between_strata is not None else within_stratum(runs, h, study)
        for h in study.hypotheses
    ]
    tested = [r for r in rows if r["tested"]]
    adj_pred = holm({r["id"]: r["p_predicted"] for r in tested}) if tested else {}
    adj_rev = holm({r["id"]: r["p_two_sided"] for r in tested}) if tested else {}
    seeds_study = study.model_copy(update={"primary_test": "seeds"})
    for r in rows:
        r["outcome"] = outcome_of(r, seeds_study, adj_pred, adj_rev) if r["tested"] else NOT_TESTED
    checks = [
        check_stratum(runs.get(s), c, s, study) for c in study.checks for s in (c.strata if c.strata else list(runs))
    ]
    failed = [f"{r['id']} in {r['stratum']}" for r in checks if r["reference"] == BASE and not r["passed"]]
    reason = f"manipulation check(s) against the base model not passed: {', '.join(failed)}" if failed else None
    return {
        "study": study.model_dump(),
        "strata": list(runs),
        "hypotheses": rows,
        "checks": checks,
        "informative": not failed,
        "uninformative_reason": reason,
        "power_alpha": study.alpha / len(study.hypotheses),
    }
