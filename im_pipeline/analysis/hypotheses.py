"""Pre-registered hypotheses (``study:`` in the experiment config), tested on a run's overfitting results.

Each hypothesis names a per-item score of the overfitting analysis (``train_loss``: output-token loss of each
training example; ``test_loss``: of each test example; ``bleu4``: sentence BLEU-4 of the greedy generation for each
training prompt against its training output) and the predicted sign of treatment − reference (IM − IT).

Primary test (``study.primary_test``), per hypothesis. ``items`` (study_cpu's pre-registration, conditional on the
trained models): one-sided, paired at the item level (the same examples for both arms within a seed),
stratified by seed — :func:`~im_pipeline.analysis.stats.stratified_sign_flip` on the mean over seeds of the per-seed
mean differences — then Holm's correction over the family (all hypotheses) at ``study.alpha``. Outcome:

* **confirmed**: Holm-adjusted one-sided p < α in the predicted direction;
* **reversed**: Holm-adjusted one-sided p < α in the opposite direction (the same test and correction, run for the
  other tail);
* **not confirmed**: neither.

``seeds`` (the seed is the unit that was randomised): the one-sided t test on the seed deltas, Holm over the family;
*reversed* only from the two-sided t test (Holm-adjusted, its own family) with the effect in the other direction; one
interval, a crossed seed × item bootstrap when every seed scored the same items, else the t interval. The item-level
test is then secondary. Either way every comparison also carries the seed-level t test and the effect detectable with
80% power from the observed seed spread (one-sided, at Holm's strictest step α / number of hypotheses).

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
    crossed_bootstrap_ci,
    detectable_effect,
    holm,
    seed_t_test,
    stratified_bootstrap_ci,
    stratified_sign_flip,
)
from im_pipeline.config.study import StudyConfig

BENCHMARK = "overfitting"
OPPOSITE = {"greater": "less", "less": "greater"}
CONFIRMED, NOT_CONFIRMED, REVERSED, NOT_TESTED = "confirmed", "not confirmed", "reversed", "not tested"


def paired_differences(
    run: RunResults, treatment: str, reference: str, metric: str
) -> tuple[dict[int, np.ndarray], dict[str, dict[int, float]], dict[int, list[str]]]:
    """Per seed (both arms with a usable overfitting result): treatment − reference over the items both scored,
    in id order; each arm's per-seed mean over those items; and the item ids."""
    a, b = run.by_seed(BENCHMARK, treatment), run.by_seed(BENCHMARK, reference)
    diffs: dict[int, np.ndarray] = {}
    means: dict[str, dict[int, float]] = {treatment: {}, reference: {}}
    item_ids: dict[int, list[str]] = {}
    for seed in sorted(s for s in a.keys() & b.keys() if s is not None and ok(a[s]) and ok(b[s])):
        x, y = item_scores(a[seed], BENCHMARK, metric), item_scores(b[seed], BENCHMARK, metric)
        if not x or not y:
            continue
        ids, xv, yv = st.paired_items(x, y)
        if not ids:
            continue
        diffs[seed], item_ids[seed] = xv - yv, list(ids)
        means[treatment][seed] = float(xv.mean())
        means[reference][seed] = float(yv.mean())
    return diffs, means, item_ids


def seed_level(deltas: list[float], direction: str, alpha: float, family: int) -> dict[str, Any]:
    """The seed-level view of one comparison: one-sided and two-sided t on the seed deltas, their standard
    deviation and the effect a one-sided t over these seeds detects with 80% power at Holm's strictest step
    (α / family size), from that observed spread (None with < 2 seeds or no spread)."""
    if len(deltas) < 2:
        return {"seed_t": None, "seed_sd": None, "detectable": None, "power_alpha": alpha / family}
    one, two = seed_t_test(deltas, direction), seed_t_test(deltas, "two-sided")
    sd = float(np.std(deltas, ddof=1))
    mde = detectable_effect(sd, len(deltas), alpha / family) if sd > 0 else None
    t = {"p_predicted": one["p_value"], "p_two_sided": two["p_value"], "df": one["df"]}
    return {"seed_t": t, "seed_sd": sd, "detectable": mde, "power_alpha": alpha / family}


def seeds_interval(
    diffs: dict[int, np.ndarray], item_ids: dict[int, list[str]], confidence: float, seed: int
) -> tuple[list[float], str]:
    """The seed-level interval of the mean of the seed deltas at ``confidence`` (≥ 2 seeds), and what varies in it:
    a crossed seed × item bootstrap when every seed scored the same items (a shared test set), else the t interval
    on the seed deltas."""
    seeds = sorted(diffs)
    if len({tuple(item_ids[s]) for s in seeds}) == 1:
        ci = crossed_bootstrap_ci(np.stack([diffs[s] for s in seeds]), confidence=confidence, seed=seed)
        return list(ci), "seeds and items (crossed bootstrap: every seed scored the same items)"
    ci = st.t_interval([float(diffs[s].mean()) for s in seeds], confidence)[1:]
    return list(ci), f"seeds (Student t on the seed deltas, {len(seeds) - 1} df)"


def _seeds_primary(
    diffs: dict[int, np.ndarray], item_ids: dict[int, list[str]], out: dict[str, Any], study: StudyConfig
) -> dict[str, Any]:
    """Primary test 'seeds': the t test's p-values, and one 95% interval (:func:`seeds_interval`)."""
    deltas = [float(diffs[s].mean()) for s in sorted(diffs)]
    t = out["seed_t"]
    if t is None:
        return {"p_predicted": 1.0, "p_opposite": 1.0, "p_two_sided": 1.0, "ci": [deltas[0]] * 2, "ci_varies": "–"}
    ci, varies = seeds_interval(diffs, item_ids, 0.95, study.seed)
    opposite = seed_t_test(deltas, OPPOSITE[out["direction"]])["p_value"]
    return {"p_predicted": t["p_predicted"], "p_opposite": opposite, "p_two_sided": t["p_two_sided"], "ci": ci,
            "ci_varies": varies}  # fmt: skip


def compare(
    run: RunResults, treatment: str, reference: str, metric: str, direction: str, study: StudyConfig
) -> dict[str, Any]:
    """One comparison: the effect, one interval (labelled with what varies), one-sided p in both directions under
    the study's primary test, the item-level and seed-level tests, per-seed deltas and the sign test."""
    diffs, means, item_ids = paired_differences(run, treatment, reference, metric)
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
    seed_deltas = {s: float(diffs[s].mean()) for s in sorted(diffs)}
    out.update(
        tested=True,
        effect=pred["statistic"],
        treatment_mean=float(np.mean(list(means[treatment].values()))),
        reference_mean=float(np.mean(list(means[reference].values()))),
        items_test={"p_predicted": pred["p_value"], "p_opposite": opp["p_value"], "exact": pred["exact"]},
        exact=pred["exact"],
        n_flips=pred["n_flips"],
        seed_deltas=seed_deltas,
        sign_test=st.sign_test(list(seed_deltas.values()), direction),
        **seed_level(list(seed_deltas.values()), direction, study.alpha, len(study.hypotheses)),
    )
    if study.primary_test == "seeds":
        out.update(_seeds_primary(diffs, item_ids, out, study))
    else:
        lo, hi = stratified_bootstrap_ci(per_seed, seed=study.seed)
        varies = "items, given the trained models (resampled within each seed)"
        out.update(ci=[lo, hi], ci_varies=varies, p_predicted=pred["p_value"], p_opposite=opp["p_value"])
    return out


def outcome_of(r: dict[str, Any], study: StudyConfig, adj_pred: dict, adj_rev: dict) -> str:
    """confirmed / reversed / not confirmed from the Holm-adjusted p-values (see the module docstring); sets the
    row's ``p_holm`` and ``p_opposite_holm``."""
    r["p_holm"], r["p_opposite_holm"] = adj_pred[r["id"]], adj_rev[r["id"]]
    if r["p_holm"] < study.alpha:
        return CONFIRMED
    wrong_way = r["effect"] > 0 if r["direction"] == "less" else r["effect"] < 0
    if r["p_opposite_holm"] < study.alpha and (study.primary_test == "items" or wrong_way):
        return REVERSED
    return NOT_CONFIRMED


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
    # Reversal: under 'items' the same one-sided test in the other tail (study_cpu's pre-registration); under
    # 'seeds' only the two-sided test, each in its own Holm family.
    rev_key = "p_two_sided" if study.primary_test == "seeds" else "p_opposite"
    adj_pred = holm({r["id"]: r["p_predicted"] for r in tested}) if tested else {}
    adj_rev = holm({r["id"]: r[rev_key] for r in tested}) if tested else {}
    for r in rows:
        r["outcome"] = outcome_of(r, study, adj_pred, adj_rev) if r["tested"] else NOT_TESTED
    controls = [
        {"id": h.id, **compare(run, study.treatment, control, h.metric, h.direction, study)}
        for control in study.controls
        for h in study.hypotheses
    ]
    lr = {arm: dict(sorted(run.summaries(arm).items())) for arm in run.arms if run.arm_config(arm).lr_scale != 1.0}
    return {"study": study.model_dump(), "hypotheses": rows, "controls": controls, "lr_scale": lr}
