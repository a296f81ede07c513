"""Pre-registered hypotheses (``study:`` in the experiment config), tested on a run's overfitting results.

Each hypothesis names a per-item score of the overfitting analysis (``train_loss``: output-token loss of each
training example; ``test_loss``: of each test example; ``bleu4``: sentence BLEU-4 of the greedy generation for each
training prompt against its training output) and the predicted sign of treatment − reference (IM − IT).

Primary test, per hypothesis: one-sided, paired at the item level (the same examples for both arms within a seed),
stratified by seed — :func:`~im_pipeline.analysis.stats.stratified_sign_flip` on the mean over seeds of the per-seed
mean differences — then Holm's correction over the family (all hypotheses) at ``study.alpha``. Outcome:

* **confirmed**: Holm-adjusted one-sided p < α in the predicted direction;
* **reversed**: Holm-adjusted one-sided p < α in the opposite direction (the same test and correction, run for the
  other tail);
* **not confirmed**: neither.

Reported beside it: the effect (the stratified mean difference) with a 95% percentile bootstrap CI resampling items
within seeds, every seed's delta and the exact one-sided sign test across seeds (secondary). Control arms
(``study.controls``, e.g. IT with a scaled learning rate) are compared with the treatment on the same metrics and
directions, as exploratory results with raw p-values, outside the Holm family.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from im_pipeline.analysis import stats as st
from im_pipeline.analysis.aggregate import RunResults, item_scores, ok
from im_pipeline.analysis.hypothesis_tests import (
    holm,
    stratified_bootstrap_ci,
    stratified_sign_flip,
)
from im_pipeline.config.study import StudyConfig

BENCHMARK = "overfitting"
OPPOSITE = {"greater": "less", "less": "greater"}
CONFIRMED, NOT_CONFIRMED, REVERSED, NOT_TESTED = "confirmed", "not confirmed", "reversed", "not tested"


def paired_differences(
    run: RunResults, treatment: str, reference: str, metric: str
) -> tuple[dict[int, np.ndarray], dict[str, dict[int, float]]]:
    """Per seed (both arms with a usable overfitting result): treatment − reference over the items both scored,
    in id order; and each arm's per-seed mean over those items."""
    a, b = run.by_seed(BENCHMARK, treatment), run.by_seed(BENCHMARK, reference)
    diffs: dict[int, np.ndarray] = {}
    means: dict[str, dict[int, float]] = {treatment: {}, reference: {}}
    for seed in sorted(s for s in a.keys() & b.keys() if s is not None and ok(a[s]) and ok(b[s])):
        x, y = item_scores(a[seed], BENCHMARK, metric), item_scores(b[seed], BENCHMARK, metric)
        if not x or not y:
            continue
        ids, xv, yv = st.paired_items(x, y)
        if not ids:
            continue
        diffs[seed] = xv - yv
        means[treatment][seed] = float(xv.mean())
        means[reference][seed] = float(yv.mean())
    return diffs, means


def compare(
    run: RunResults, treatment: str, reference: str, metric: str, direction: str, study: StudyConfig
) -> dict[str, Any]:
    """One comparison: effect, CI, one-sided p in both directions, per-seed deltas and the sign test."""
    diffs, means = paired_differences(run, treatment, reference, metric)
    out: dict[str, Any] = {
        "treatment": treatment,
        "reference": reference,
        "metric": metric,
        "direction": direction,
        "seeds": sorted(diffs),
        "n_items": {s: int(d.size) for s, d in diffs.items()},
    }
    if not diffs:
        out.update(tested=False, reason=f"no paired {metric} items of {treatment} and {reference}")
        return out
    per_seed = [diffs[s] for s in sorted(diffs)]
    kw = {"n_resamples": study.resamples, "seed": study.seed}
    pred = stratified_sign_flip(per_seed, alternative=direction, **kw)
    opp = stratified_sign_flip(per_seed, alternative=OPPOSITE[direction], **kw)
    lo, hi = stratified_bootstrap_ci(per_seed, seed=study.seed)
    seed_deltas = {s: float(diffs[s].mean()) for s in sorted(diffs)}
    out.update(
        tested=True,
        effect=pred["statistic"],
        ci=[lo, hi],
        treatment_mean=float(np.mean(list(means[treatment].values()))),
        reference_mean=float(np.mean(list(means[reference].values()))),
        p_predicted=pred["p_value"],
        p_opposite=opp["p_value"],
        exact=pred["exact"],
        n_flips=pred["n_flips"],
        seed_deltas=seed_deltas,
        sign_test=st.sign_test(list(seed_deltas.values()), direction),
    )
    return out


def evaluate_hypotheses(run: RunResults) -> dict[str, Any] | None:
    """The study of ``run.config`` (None without one): every hypothesis tested, Holm-corrected, with its outcome;
    the control comparisons; and the learning-rate scale each arm used per seed."""
    raw = run.config.study
    if not raw:
        return None
    study = StudyConfig.model_validate(raw)
    rows = []
    for h in study.hypotheses:
        res = compare(run, study.treatment, study.reference, h.metric, h.direction, study)
        rows.append({"id": h.id, "text": h.text, "paper": h.paper.model_dump() if h.paper else None, **res})
    tested = [r for r in rows if r["tested"]]
    adj_pred = holm({r["id"]: r["p_predicted"] for r in tested}) if tested else {}
    adj_opp = holm({r["id"]: r["p_opposite"] for r in tested}) if tested else {}
    for r in rows:
        if not r["tested"]:
            r["outcome"] = NOT_TESTED
            continue
        r["p_holm"], r["p_opposite_holm"] = adj_pred[r["id"]], adj_opp[r["id"]]
        if r["p_holm"] < study.alpha:
            r["outcome"] = CONFIRMED
        elif r["p_opposite_holm"] < study.alpha:
            r["outcome"] = REVERSED
        else:
            r["outcome"] = NOT_CONFIRMED
    controls = [
        {"id": h.id, **compare(run, study.treatment, control, h.metric, h.direction, study)}
        for control in study.controls
        for h in study.hypotheses
    ]
    lr = {arm: dict(sorted(run.summaries(arm).items())) for arm in run.arms if run.arm_config(arm).lr_scale != 1.0}
    return {"study": study.model_dump(), "hypotheses": rows, "controls": controls, "lr_scale": lr}
