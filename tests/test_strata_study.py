"""A study across strata (issue 23): the schema, the seed-level tests within and between strata, Holm, the
outcomes, the equivalence verdicts, the manipulation checks against the base model and the report section."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from im_pipeline.analysis.hypothesis_tests import (
    crossed_bootstrap_ci,
    detectable_difference,
    detectable_effect,
    holm,
    stratified_sign_flip,
)
from im_pipeline.analysis.run_files import RunConfig, RunResults
from im_pipeline.analysis.strata_study import equivalence, evaluate_strata_study
from im_pipeline.config import ConfigError, config_from_dict
from im_pipeline.config.study import StudyConfig, check_study_arms
from im_pipeline.report.strata_study import strata_study_section
from im_pipeline.results import OverfittingResult

N_OOD, N_IN = 8, 6
SEEDS = (0, 1, 2, 3, 4)

STUDY = {
    "reference": "IT",
    "treatment": "IM",
    "primary_test": "seeds",
    "resamples": 2000,
    "hypotheses": [
        {"id": "P1", "stratum": "HIGH", "metric": "test_loss", "direction": "less", "text": "IM lower in HIGH"},
        {"id": "P2", "between_strata": ["HIGH", "LOW"], "metric": "test_loss", "direction": "less",
         "text": "(IM − IT) lower in HIGH than in LOW"},
        {"id": "P3", "stratum": "HIGH", "reference": "IT-w", "metric": "test_loss", "direction": "less",
         "equivalence_band": 0.02, "text": "IM lower than IT-w in HIGH"},
    ],
    "checks": [
        {"id": "M1", "treatment": "IT", "reference": "base", "metric": "in_domain_loss", "direction": "less",
         "margin": 0.1, "text": "IT beats the base model in-domain"},
        {"id": "M2", "metric": "train_loss", "direction": "greater", "text": "IM's train loss is higher"},
    ],
}  # fmt: skip


def _stratum(name: str, shifts: dict[str, float], seeds=SEEDS, in_domain_gain: float = 0.3) -> RunResults:
    """One stratum's results: every arm × seed scores the same OOD items o0 … o7 (test_loss = item level + seed
    level + the arm's shift + noise), its own in-domain items s<seed>-d<i> and training items; the base model scores
    the OOD items, the union of the seeds' in-domain items (+ one no seed has) and is ``in_domain_gain`` worse."""
    arms = list(shifts)
    cfg = {"name": f"study_base-{name}", "model": {"source": "gemma-3-270m"},
           "data": {"train": "paper_alpaca_5k", "held_out": "alpaca_eval_ood"},
           "arms": [{"name": a, "loss_mode": "it"} for a in arms]}  # fmt: skip
    run = RunResults(experiment=cfg["name"], root=Path("."), config=RunConfig.model_validate(cfg), arms=arms)
    run.seeds = list(seeds)
    rng = np.random.default_rng(len(name))
    level = rng.normal(1.5, 0.3, N_OOD)
    ov: dict = {}
    for seed in seeds:
        seed_level = rng.normal(0.0, 0.02)
        in_level = rng.normal(1.2, 0.2, N_IN)
        for arm, shift in shifts.items():
            ood = level + seed_level + shift + rng.normal(0, 0.01, N_OOD)
            items = {
                "test_loss": {f"o{i}": float(v) for i, v in enumerate(ood)},
                "in_domain_loss": {f"s{seed}-d{i}": float(v + shift) for i, v in enumerate(in_level)},
                "train_loss": {f"s{seed}-t{i}": float(0.5 + (arm == "IM") * 0.2 + 0.01 * i) for i in range(4)},
            }
            ov.setdefault(arm, {})[seed] = OverfittingResult(benchmark="overfitting", value=1.0, items=items)
        base_in = {f"s{seed}-d{i}": float(v + in_domain_gain) for i, v in enumerate(in_level)}
        ov.setdefault("base", {}).setdefault(None, {}).update(base_in)
    base_items = {"in_domain_loss": {**ov["base"][None], "other-0": 9.0}, "test_loss": {f"o{i}": 2.0 for i in range(8)}}
    ov["base"] = {None: OverfittingResult(benchmark="overfitting", value=1.0, items=base_items)}
    run.results["overfitting"] = ov
    return run


def _runs(high=None, low=None, **kw) -> dict[str, RunResults]:
    return {
        "LOW": _stratum("LOW", low or {"IT": 0.0, "IM": 0.0}, **kw),
        "HIGH": _stratum("HIGH", high or {"IT": 0.0, "IM": -0.05, "IT-w": -0.05}, **kw),
    }


def _matrix(run: RunResults, trt: str, ref: str, metric: str = "test_loss") -> np.ndarray:
    ov = run.results["overfitting"]
    return np.stack(
        [
            [ov[trt][s].items[metric][k] - ov[ref][s].items[metric][k] for k in sorted(ov[trt][s].items[metric])]
            for s in sorted(k for k in ov[trt] if k is not None)
        ]
    )


# -- schema -------------------------------------------------------------------------------------------------------


def test_schema_validation_serialisation_and_arm_checks():
    study = StudyConfig.model_validate(STUDY)
    assert study.hypotheses[1].between_strata == ("HIGH", "LOW") and study.checks[0].reference == "base"
    # Unset new fields are left out of the dump: a study without them keeps its key.
    plain = {"hypotheses": [{"id": "H1", "metric": "test_loss", "direction": "less", "text": "t"}]}
    dumped = StudyConfig.model_validate(plain).model_dump()
    assert "checks" not in dumped and set(dumped["hypotheses"][0]) == {"id", "metric", "direction", "paper", "text"}
    assert dumped == StudyConfig.model_validate(dumped).model_dump()
    bad = [
        ({"id": "X", "stratum": "A", "between_strata": ["A", "B"]}, "either stratum or between_strata"),
        ({"id": "X", "between_strata": ["A", "A"]}, "two distinct strata"),
        ({"id": "X", "equivalence_band": 0}, "greater than 0"),
    ]
    for extra, message in bad:
        h = {"metric": "test_loss", "direction": "less", "text": "t", **extra}
        with pytest.raises(ValueError, match=message):
            StudyConfig.model_validate({"hypotheses": [h]})
    with pytest.raises(ValueError, match=re.escape("across hypotheses and checks); repeated: ['P1']")):
        StudyConfig.model_validate({**STUDY, "checks": [{**STUDY["checks"][0], "id": "P1"}]})
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        StudyConfig.model_validate({**STUDY, "checks": [{**STUDY["checks"][0], "margin": -0.1}]})
    arms = {"LOW": ["IT", "IM"], "HIGH": ["IT", "IM", "IT-w"]}
    check_study_arms(study, arms)
    with pytest.raises(ValueError, match="hypothesis P3: arm 'IT-w' is not in stratum HIGH"):
        check_study_arms(study, {**arms, "HIGH": ["IT", "IM"]})
    with pytest.raises(ValueError, match=r"hypothesis P2: unknown stratum 'LOW' \(strata: \['HIGH'\]\)"):
        check_study_arms(study, {"HIGH": arms["HIGH"]})
    loose = StudyConfig.model_validate({**STUDY, "hypotheses": [{**STUDY["hypotheses"][0], "stratum": None}]})
    with pytest.raises(ValueError, match="hypothesis P1 names neither stratum nor between_strata"):
        check_study_arms(loose, arms)
    with pytest.raises(ValueError, match=r"\['P1', 'P2', 'P3', 'M1', 'M2'\] use fields only a config with strata"):
        check_study_arms(study, {None: ["IT", "IM", "IT-w"]})
    with pytest.raises(ValueError, match=r"\['H1'\] use fields only .* equivalence_band\), but the config has no"):
        banded = {"hypotheses": [{**plain["hypotheses"][0], "equivalence_band": 1}]}
        check_study_arms(StudyConfig.model_validate(banded), {None: ["IT", "IM"]})
    with pytest.raises(ValueError, match=re.escape("study names arm(s) ['IT-w'] that are not in arms ['IT', 'IM']")):
        check_study_arms(StudyConfig.model_validate({**plain, "controls": ["IT-w"]}), {None: ["IT", "IM"]})
    check_study_arms(StudyConfig.model_validate(plain), {None: ["IT", "IM"]})
    # in_domain_loss is a metric an experiment config accepts
    cfg = {"name": "x", "study": {"hypotheses": [{**plain["hypotheses"][0], "metric": "in_domain_loss"}]}}
    assert config_from_dict(cfg).study.hypotheses[0].metric == "in_domain_loss"
    with pytest.raises(ConfigError, match="metric"):
        config_from_dict({"name": "x", "study": {"hypotheses": [{**plain["hypotheses"][0], "metric": "x"}]}})


# -- the tests ------------------------------------------------------------------------------------------------------


def test_within_and_between_strata_tests_against_scipy_and_holm():
    runs = _runs()
    study = StudyConfig.model_validate(STUDY)
    res = evaluate_strata_study(runs, study)
    by = {r["id"]: r for r in res["hypotheses"]}
    high, low = _matrix(runs["HIGH"], "IM", "IT"), _matrix(runs["LOW"], "IM", "IT")
    d_high, d_low = high.mean(axis=1), low.mean(axis=1)
    # P1: one-sided t on the seed deltas; the crossed seed × item interval (every seed scored o0 … o7)
    p1 = by["P1"]
    assert p1["effect"] == pytest.approx(d_high.mean())
    assert p1["p_predicted"] == pytest.approx(sps.ttest_1samp(d_high, 0, alternative="less").pvalue)
    assert p1["p_two_sided"] == pytest.approx(sps.ttest_1samp(d_high, 0).pvalue)
    assert p1["ci"] == pytest.approx(list(crossed_bootstrap_ci(high)))
    assert p1["ci_varies"].startswith("seeds and items")
    assert p1["detectable"] == pytest.approx(detectable_effect(np.std(d_high, ddof=1), 5, 0.05 / 3))
    assert p1["items_p"] == pytest.approx(
        stratified_sign_flip(list(high), alternative="less", n_resamples=2000)["p_value"]
    )
    # P2: Welch's two-sample t of HIGH's seed deltas against LOW's, the Welch interval by hand
    p2 = by["P2"]
    assert p2["effect"] == pytest.approx(d_high.mean() - d_low.mean())
    assert p2["p_predicted"] == pytest.approx(sps.ttest_ind(d_high, d_low, equal_var=False, alternative="less").pvalue)
    assert p2["p_two_sided"] == pytest.approx(sps.ttest_ind(d_high, d_low, equal_var=False).pvalue)
    va, vb = np.var(d_high, ddof=1) / 5, np.var(d_low, ddof=1) / 5
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)
    half = sps.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert p2["ci"] == pytest.approx([p2["effect"] - half, p2["effect"] + half])
    assert p2["ci_varies"] == f"seeds (Welch interval on the two strata's seed deltas, {df:.1f} df)"
    assert p2["seed_deltas"]["LOW"] == pytest.approx(dict(enumerate(d_low)))
    assert p2["detectable"] == pytest.approx(
        detectable_difference(np.std(d_high, ddof=1), 5, np.std(d_low, ddof=1), 5, 0.05 / 3)
    )
    # Holm over P1–P3 on the one-sided p; reversal from the two-sided p, its own family
    assert {k: r["p_holm"] for k, r in by.items()} == holm({k: r["p_predicted"] for k, r in by.items()})
    assert {k: r["p_opposite_holm"] for k, r in by.items()} == holm({k: r["p_two_sided"] for k, r in by.items()})
    assert [by[k]["outcome"] for k in ("P1", "P2", "P3")] == ["confirmed", "confirmed", "not confirmed"]
    # A two-sided Holm p < α in the predicted direction is no reversal.
    assert by["P1"]["p_opposite_holm"] < 0.05
    assert res["informative"] and res["power_alpha"] == pytest.approx(0.05 / 3)


def test_detectable_difference_has_80_percent_power_by_simulation():
    mde = detectable_difference(1.0, 5, 0.5, 6, 0.05)
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1.0, size=(40_000, 5)), rng.normal(mde, 0.5, size=(40_000, 6))
    power = np.mean(sps.ttest_ind(a, b, axis=1, equal_var=False, alternative="less").pvalue < 0.05)
    assert power == pytest.approx(0.8, abs=0.015)
    assert detectable_difference(2.0, 5, 1.0, 6, 0.05) == pytest.approx(2 * mde)


def test_reversed_only_from_the_two_sided_test_and_not_tested_with_one_seed():
    # IM − IT higher in HIGH than in LOW: P2 (predicted less) reversed; P1 (IM worse in HIGH) reversed too.
    runs = _runs(high={"IT": 0.0, "IM": 0.08, "IT-w": 0.08}, low={"IT": 0.0, "IM": -0.05})
    by = {r["id"]: r for r in evaluate_strata_study(runs, StudyConfig.model_validate(STUDY))["hypotheses"]}
    assert by["P1"]["outcome"] == by["P2"]["outcome"] == "reversed"
    assert by["P1"]["p_opposite_holm"] < 0.05 and by["P1"]["p_holm"] > 0.5
    # LOW with one seed: P2 is not tested (and leaves the Holm family), P1 and P3 are.
    runs["LOW"] = _stratum("LOW", {"IT": 0.0, "IM": 0.0}, seeds=(0,))
    res = evaluate_strata_study(runs, StudyConfig.model_validate(STUDY))
    by = {r["id"]: r for r in res["hypotheses"]}
    assert by["P2"]["outcome"] == "not tested" and "1 seed(s) with results of IM and IT in LOW" in by["P2"]["reason"]
    assert {k: by[k]["p_holm"] for k in ("P1", "P3")} == holm({k: by[k]["p_predicted"] for k in ("P1", "P3")})
    one = _stratum("HIGH", {"IT": 0.0, "IM": -0.05, "IT-w": 0.0}, seeds=(3,))
    by = {r["id"]: r for r in evaluate_strata_study({**runs, "HIGH": one}, StudyConfig.model_validate(STUDY))[
        "hypotheses"]}  # fmt: skip
    assert by["P1"]["outcome"] == "not tested" and "a t test needs ≥ 2" in by["P1"]["reason"]
    text = strata_study_section({**runs, "HIGH": one}, StudyConfig.model_validate(STUDY))
    assert "| HIGH | – | – | – | – | – | **not tested** (1 seed(s) with results of IM and IT in HIGH (a t test" in text
    assert "P3, equivalence band ±0.02: not tested (1 seed(s) with results of IM and IT-w in HIGH (a t test" in text


def test_equivalence_verdicts():
    assert equivalence([-0.01, 0.015], 0.02) == "equivalent"
    assert equivalence([0.03, 0.05], 0.02) == equivalence([-0.05, -0.021], 0.02) == "different"
    assert equivalence([-0.01, 0.03], 0.02) == equivalence([-0.03, 0.03], 0.02) == "inconclusive"
    runs = _runs(high={"IT": 0.0, "IM": -0.05, "IT-w": -0.05})  # IM ≈ IT-w in HIGH
    by = {r["id"]: r for r in evaluate_strata_study(runs, StudyConfig.model_validate(STUDY))["hypotheses"]}
    ci90 = list(crossed_bootstrap_ci(_matrix(runs["HIGH"], "IM", "IT-w"), confidence=0.9))
    assert by["P3"]["equivalence"] == {"ci": pytest.approx(ci90), "verdict": equivalence(ci90, 0.02)}
    assert by["P3"]["equivalence"]["verdict"] == "equivalent"
    far = _runs(high={"IT": 0.0, "IM": -0.05, "IT-w": 0.05})
    p3 = evaluate_strata_study(far, StudyConfig.model_validate(STUDY))["hypotheses"][2]
    assert p3["equivalence"]["verdict"] == "different" and p3["outcome"] == "confirmed"


# -- checks ---------------------------------------------------------------------------------------------------------


def test_checks_pair_the_base_model_by_id_and_m1_failing_makes_the_study_uninformative():
    runs = _runs()
    res = evaluate_strata_study(runs, StudyConfig.model_validate(STUDY))
    m1 = {c["stratum"]: c for c in res["checks"] if c["id"] == "M1"}
    ov = runs["LOW"].results["overfitting"]
    base = ov["base"][None].items["in_domain_loss"]
    for s in SEEDS:  # by id: each seed's own in-domain items against the base's union (its extra item unpaired)
        own = ov["IT"][s].items["in_domain_loss"]
        assert m1["LOW"]["seed_deltas"][s] == pytest.approx(np.mean([own[k] - base[k] for k in own]))
        assert m1["LOW"]["seed_deltas"][s] == pytest.approx(-0.3)
    assert m1["LOW"]["passed"] and m1["HIGH"]["passed"] and res["informative"]
    m2 = {c["stratum"]: c for c in res["checks"] if c["id"] == "M2"}
    assert m2["HIGH"]["difference"] == pytest.approx(0.2) and m2["HIGH"]["passed"]
    assert (m2["HIGH"]["treatment"], m2["HIGH"]["reference"]) == ("IM", "IT")
    # IT only 0.05 better than the base model in LOW: M1 fails there, the study is uninformative.
    runs["LOW"] = _stratum("LOW", {"IT": 0.0, "IM": 0.0}, in_domain_gain=0.05)
    res = evaluate_strata_study(runs, StudyConfig.model_validate(STUDY))
    m1 = {c["stratum"]: c for c in res["checks"] if c["id"] == "M1"}
    assert m1["LOW"]["difference"] == pytest.approx(-0.05) and m1["LOW"]["passed"] is False
    assert m1["HIGH"]["passed"] is True
    assert res["informative"] is False and "M1 in LOW" in res["uninformative_reason"]
    text = strata_study_section(runs, StudyConfig.model_validate(STUDY))
    assert "**The study is uninformative** (manipulation check(s) against the base model not passed: M1 in LOW)" in text
    assert text.count("(uninformative study)") == 3
    assert (
        "| M1 | IT beats the base model in-domain | LOW | IT − the base model | -0.050 | 5 | ≤ −0.1 | **no** |" in text
    )
    # without base-model results the check cannot pass either
    del runs["HIGH"].results["overfitting"]["base"]
    res = evaluate_strata_study(runs, StudyConfig.model_validate(STUDY))
    high = next(c for c in res["checks"] if c["id"] == "M1" and c["stratum"] == "HIGH")
    assert high["passed"] is None and "M1 in HIGH" in res["uninformative_reason"]
    text = strata_study_section(runs, StudyConfig.model_validate(STUDY))
    assert "| HIGH | IT − the base model | – (no paired in_domain_loss items of IT and base) | 0 | ≤ −0.1 | – |" in text


def test_a_check_with_strata_is_run_and_counted_only_there():
    """``checks[].strata``: the check's rows are the named strata's; a failure elsewhere is not looked at."""
    runs = _runs()
    runs["LOW"] = _stratum("LOW", {"IT": 0.0, "IM": 0.0}, in_domain_gain=0.05)  # M1 would fail in LOW
    study = StudyConfig.model_validate({**STUDY, "checks": [{**STUDY["checks"][0], "strata": ["HIGH"]}]})
    res = evaluate_strata_study(runs, study)
    assert [(c["id"], c["stratum"], c["passed"]) for c in res["checks"]] == [("M1", "HIGH", True)]
    assert res["informative"] is True and res["uninformative_reason"] is None


# -- the report section ---------------------------------------------------------------------------------------------


def test_section_prints_the_numbers():
    runs = _runs()
    study = StudyConfig.model_validate({**STUDY, "scope": "gemma-3-270m is a base model."})
    res = evaluate_strata_study(runs, study)
    text = strata_study_section(runs, study)
    assert text.startswith("## Pre-registered hypotheses\n\n") and "uninformative" not in text
    for block in text.split("\n\n"):  # every table row has as many cells as its header
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert len({len(re.findall(r"(?<!\\)\|", line)) for line in rows}) <= 1, block
    for r in res["hypotheses"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {r['id']} |"))
        effect = f"{r['effect']:+.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        assert f"| {effect} | {r['ci_varies']} |" in row
        assert f"**{r['outcome']}** | {r['detectable']:.3f} |" in row
        for p in (r["p_predicted"], r["p_holm"], r["p_opposite_holm"]):
            assert (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}") in row
    assert "(IM − IT)_HIGH − (IM − IT)_LOW < 0 on the output-token loss of each test example) | HIGH vs LOW |" in text
    lo, hi = res["hypotheses"][2]["equivalence"]["ci"]
    assert "P3, equivalence band ±0.02 (outside the Holm family): the 90% interval of the same kind" in text
    assert f"is [{lo:.3f}, {hi:.3f}]: **equivalent**" in text
    assert "| M2 | IM's train loss is higher | HIGH | IM − IT | +0.200 | 5 | > 0 | yes |" in text
    p1 = res["hypotheses"][0]
    seeds_row = "| P1 | HIGH | " + " | ".join(f"{p1['seed_deltas']['HIGH'][s]:+.3f}" for s in SEEDS)
    assert seeds_row in text and "conditional on the trained models" in text
    line = next(line for line in text.splitlines() if line.startswith(seeds_row))
    assert line.endswith(f"| {p1['items_p']:.4f} | {p1['sign_p']:.4f} |")
    assert p1["sign_p"] == pytest.approx(0.5**5)  # all 5 seed deltas < 0
    assert "| P2 | LOW | " in text and "smallest possible p with 5 seeds is 0.03125" in text
    three = {k: _stratum(k, v, seeds=(0, 1, 2)) for k, v in (("LOW", {"IT": 0.0, "IM": 0.0}),
             ("HIGH", {"IT": 0.0, "IM": -0.05, "IT-w": -0.05}))}  # fmt: skip
    text3 = strata_study_section(three, study)
    assert "No sign test across seeds: with 3 seeds its smallest possible one-sided p, 0.125, is not < 0.05." in text3
    assert "sign test p" not in text3
    assert (
        "Scope: gemma-3-270m is a base model. The hypotheses' test loss is measured on `alpaca_eval_ood`, one "
        "out-of-domain test set common to every seed, arm and stratum. Nothing here is claimed beyond this model "
        "(`gemma-3-270m`), this data (`paper_alpaca_5k`, strata LOW, HIGH) and these settings."
    ) in text
