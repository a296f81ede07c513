"""The pre-registered study's pieces: per-seed disjoint samples, the lr_scale arm, the stratified tests, Holm,
the hypotheses' outcomes and the report section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from im_pipeline.analysis import stats as st
from im_pipeline.analysis.aggregate import RunResults
from im_pipeline.analysis.hypotheses import evaluate_hypotheses
from im_pipeline.analysis.hypothesis_tests import (
    holm,
    stratified_bootstrap_ci,
    stratified_mean,
    stratified_sign_flip,
)
from im_pipeline.analysis.run_files import RunConfig
from im_pipeline.config import ArmConfig, ConfigError, DataConfig, ExperimentConfig, config_from_dict
from im_pipeline.data import prepare_data, seed_data, seed_sample
from im_pipeline.loss_modes import LossMode, LossSpec
from im_pipeline.results import OverfittingResult, TrainSummary
from im_pipeline.training.held_out import output_over_im_release

# -- per-seed samples ------------------------------------------------------------------------------------------------


def _records(n: int) -> list[dict]:
    return [
        {
            "id": f"r-{i}",
            "source": "t",
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i} " * (1 + i % 3)},
            ],
        }
        for i in range(n)
    ]


def test_seed_samples_are_disjoint_per_seed_and_differ_between_seeds():
    recs = _records(40)
    seen = []
    for seed in range(5):
        train, test = seed_sample(recs, 8, 6, seed)
        ids_train, ids_test = {r["id"] for r in train}, {r["id"] for r in test}
        assert len(ids_train) == 8 and len(ids_test) == 6
        assert ids_train.isdisjoint(ids_test)
        assert (train, test) == seed_sample(list(reversed(recs)), 8, 6, seed)  # not the file order
        seen.append(frozenset(ids_train))
    assert len(set(seen)) == 5  # every seed its own sample
    with pytest.raises(ValueError, match="need 15 examples; only 14"):
        seed_sample(recs[:14], 8, 7, 0)


def test_per_seed_prepare_writes_the_pool_and_seed_data_draws_from_it(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(30)))
    cfg = DataConfig(train=str(src), n=8, held_out_size=5, per_seed=True)
    prepared = prepare_data(cfg, None, 0, out_dir=tmp_path / "data")
    assert len(prepared.train) == 30 and prepared.held_out == []
    assert prepared.report["selection"]["method"] == "per seed"
    for seed in (0, 3):
        train, test = seed_data(cfg, tmp_path / "data", seed)
        assert (train, test) == seed_sample(prepared.train, 8, 5, seed)
        assert not {r["id"] for r in train} & {r["id"] for r in test}
    plain = DataConfig(train=str(src), n=8, held_out_size=5)
    prepare_data(plain, None, 0, out_dir=tmp_path / "plain")
    a, b = seed_data(plain, tmp_path / "plain", 0), seed_data(plain, tmp_path / "plain", 1)
    assert a == b and len(a[0]) == 8 and len(a[1]) == 5  # without per_seed: the prepared files for every seed


def test_per_seed_with_a_fixed_held_out_set_and_a_ratio_range(tmp_path):
    """per_seed + held_out: each seed its own training sample, every seed the same test set; ratio_range keeps the
    examples whose own instruction/output word ratio is in range, before the per-seed draws."""
    from im_pipeline.data.stats import example_ratio

    src, ood = tmp_path / "train.jsonl", tmp_path / "ood.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records(30)))
    ood_recs = [{**r, "id": f"o-{i}"} for i, r in enumerate(_records(12))]
    ood.write_text("".join(json.dumps(r) + "\n" for r in ood_recs))
    ratios = {r["id"]: example_ratio(r) for r in _records(30)}
    low, high = sorted(set(ratios.values()))[1], None  # drops the examples of the smallest ratio only
    cfg = DataConfig(train=str(src), n=6, per_seed=True, held_out=str(ood), held_out_size=5, ratio_range=(low, high))
    prepared = prepare_data(cfg, None, 0, out_dir=tmp_path / "data")
    kept = {i for i, v in ratios.items() if v >= low}
    assert {r["id"] for r in prepared.train} == kept and 0 < len(kept) < 30
    assert prepared.report["actions"]["train"]["ratio_range"] == {
        "low": low, "high": None, "kept": len(kept), "dropped": 30 - len(kept)
    }  # fmt: skip
    tests = []
    for seed in (0, 1, 2):
        train, test = seed_data(cfg, tmp_path / "data", seed)
        assert train == seed_sample(prepared.train, 6, 0, seed)[0] and len(test) == 5
        assert {r["id"] for r in test} <= {r["id"] for r in ood_recs}
        tests.append(test)
    assert tests[0] == tests[1] == tests[2] == prepared.held_out  # one common test set
    assert prepared.report["held_out_kind"] == f"another data set ({ood}), the same for every seed"
    # The key of a config without ratio_range is what it was (the field is left out when null).
    assert "ratio_range" not in DataConfig(train="x").model_dump() and "ratio_range" in cfg.model_dump()
    with pytest.raises(ConfigError, match="ratio_range must be"):
        config_from_dict({"name": "x", "data": {"ratio_range": [3, 1]}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"per_seed": True, "held_out_size": 4}, "n (the per-seed training sample size) must be set"),
        ({"per_seed": True, "n": 4, "held_out_size": 0}, "held_out_size"),
    ],
)
def test_per_seed_config_errors(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"name": "x", "data": data})


def test_lr_scale_and_study_config_errors():
    with pytest.raises(ValueError, match="lr_scale must be > 0"):
        ArmConfig(name="A", loss_mode="it", lr_scale=0)
    with pytest.raises(ConfigError, match="lr_scale"):
        config_from_dict({"name": "x", "arms": [{"name": "A", "loss_mode": "it", "lr_scale": "half"}]})
    study = {"hypotheses": [{"id": "H1", "metric": "test_loss", "direction": "less", "text": "t"}]}
    with pytest.raises(ConfigError, match=r"study names arm\(s\) \['IT-lr'\]"):
        config_from_dict({"name": "x", "study": {**study, "controls": ["IT-lr"]}})
    two = {"hypotheses": study["hypotheses"] * 2}
    with pytest.raises(ConfigError, match="hypothesis ids must be unique"):
        config_from_dict({"name": "x", "study": two})


# -- lr_scale ----------------------------------------------------------------------------------------------------------


def test_output_over_im_release_is_the_ratio_of_token_sums(tiny_model_dir):
    from transformers import AutoTokenizer

    from im_pipeline.training.held_out import output_over_im_release
    from im_pipeline.training.masking import encode_example

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recs = [
        {"id": "a", "messages": [{"role": "user", "content": "What is the capital of France?"},
                                 {"role": "assistant", "content": "Paris."}]},
        {"id": "b", "messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]},
    ]  # fmt: skip
    got = output_over_im_release(recs, tok, template="tulu", max_length=64)
    out, imr = [], []
    for r in recs:  # the same counts by hand from the masks (masks themselves: tests/test_masking.py)
        enc = encode_example(r, tok, loss=LossSpec(LossMode.im_release), template="tulu", max_length=64)
        ids = enc["input_ids"]
        answer = tok(r["messages"][1]["content"], add_special_tokens=False)["input_ids"]
        # IT targets: the answer's tokens and EOS (tokenised in context they may merge differently: compare counts
        # with the mask's, which must at least cover len(answer) tokens + EOS within the sequence)
        it_count = sum(1 for w in enc["it_weights"][1:] if w > 0)
        assert it_count >= 1 and it_count <= len(answer) + 2
        # im_release targets: every position but the first (BOS) and the leading "<|user|>\n" and the last newline
        prefix = len(tok("<|user|>\n", add_special_tokens=False)["input_ids"])
        imr_count = sum(1 for w in enc["loss_weights"][1:] if w > 0)
        assert imr_count <= len(ids) - 1 - prefix
        out.append(it_count)
        imr.append(imr_count)
    assert got["output_tokens"] == sum(out) and got["im_release_tokens"] == sum(imr)
    assert got["ratio"] == sum(out) / sum(imr)
    assert got["ratio"] != pytest.approx(np.mean([o / i for o, i in zip(out, imr, strict=True)]))  # Σ/Σ, not mean


def test_output_over_im_release_on_hand_made_masks(monkeypatch):
    from im_pipeline.training import held_out

    encoded = [  # position 0 is never a target; a weight > 0 is one target token
        {"input_ids": [1] * 5, "it_weights": [1, 0, 0, 1, 1], "loss_weights": [1, 1, 1, 1, 1]},  # 2 / 4
        {"input_ids": [1] * 4, "it_weights": [0, 0, 0, 1], "loss_weights": [0, 1, 1, 1]},  # 1 / 3
    ]
    monkeypatch.setattr(held_out, "encode_records", lambda *a, **k: (encoded, {}))
    got = output_over_im_release([], None, template="tulu", max_length=8)
    assert got == {"output_tokens": 3, "im_release_tokens": 7, "ratio": 3 / 7}  # Σ/Σ, not (2/4 + 1/3) / 2


@pytest.mark.parametrize("scale", [0.5, "output_over_im_release"])
def test_the_trainer_gets_the_scaled_learning_rate(tiny_model_dir, tmp_path, scale):
    from im_pipeline.config import ModelConfig, TrainingConfig
    from im_pipeline.training import train_arm
    from im_pipeline.training.held_out import output_over_im_release

    seen = []

    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            seen.append(optimizer.param_groups[0]["lr"] if optimizer is not None else args.learning_rate)

    cfg = ExperimentConfig(
        name="lr",
        model=ModelConfig(source=str(tiny_model_dir)),
        data=DataConfig(max_length=48),
        training=TrainingConfig(
            epochs=1, batch_size=2, learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0, threads=1
        ),
    )
    arm = ArmConfig(name="IT-lr", loss_mode="it", lr_scale=scale)
    train = _records(4)
    summary = train_arm(cfg, arm, 0, train, _records(6)[4:], tmp_path / "run", key="k", callbacks=[Seen()])
    if scale == 0.5:
        factor = 0.5
        assert summary["lr_scale_tokens"] is None
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        expected = output_over_im_release(train, tok, template="tulu", max_length=48)
        assert summary["lr_scale_tokens"] == expected
        factor = expected["ratio"]
        assert 0 < factor < 1
    assert summary["lr_scale_factor"] == factor
    assert summary["learning_rate"] == pytest.approx(1e-3 * factor, rel=1e-12)
    assert seen and seen[0] == pytest.approx(1e-3 * factor, rel=1e-12)  # what the optimiser was built with
    logged = [json.loads(x)["learning_rate"] for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all(v == pytest.approx(1e-3 * factor, rel=1e-9) for v in logged if v is not None)


# -- statistics --------------------------------------------------------------------------------------------------------


def test_sign_flip_one_stratum_equals_scipy_permutation_test():
    from scipy.stats import permutation_test

    d = np.array([0.8, -0.3, 1.1, 0.4, -0.2, 0.9, 0.05, 0.6])
    for alt in ("greater", "less"):
        ours = stratified_sign_flip([d], alternative=alt)
        ref = permutation_test(
            (d,), np.mean, permutation_type="samples", alternative=alt, n_resamples=np.inf
        )  # exact: all 2^8 sign flips
        assert ours["exact"] and ours["n_flips"] == 256
        assert ours["p_value"] == pytest.approx(ref.pvalue, abs=1e-12)


def test_stratified_sign_flip_hand_computed():
    # seeds [1, -2] and [3]: contributions 1/(2·2), -2/(2·2), 3/(2·1) = 0.25, -0.5, 1.5; T = 1.25.
    # The 8 flips give ±0.25 ± 0.5 ± 1.5 = 2.25, 1.75, 1.25, 0.75, -0.75, -1.25, -1.75, -2.25: 3 of 8 are >= 1.25.
    per_seed = [[1.0, -2.0], [3.0]]
    res = stratified_sign_flip(per_seed, alternative="greater")
    assert res["statistic"] == 1.25 == stratified_mean(per_seed)
    assert res["p_value"] == 3 / 8
    assert stratified_sign_flip(per_seed, alternative="less")["p_value"] == 6 / 8  # <= 1.25: all but 2.25, 1.75
    assert stratified_sign_flip([[0.0, 0.0], [0.0]])["p_value"] == 1.0


def test_monte_carlo_sign_flip_matches_exact_and_uses_b_plus_one():
    rng = np.random.default_rng(3)
    per_seed = [rng.normal(0.2, 1, 6), rng.normal(0.2, 1, 5), rng.normal(0.2, 1, 7)]
    exact = stratified_sign_flip(per_seed, alternative="greater")
    mc = stratified_sign_flip(per_seed, alternative="greater", exact_max=5, n_resamples=200_000, seed=1)
    assert exact["exact"] and not mc["exact"]
    assert mc["p_value"] == (mc["extreme"] + 1) / (200_000 + 1)
    assert mc["p_value"] == pytest.approx(exact["p_value"], abs=0.005)
    # far in the tail: never 0
    far = stratified_sign_flip([np.full(30, 1.0)], alternative="greater", n_resamples=1000)
    assert far["p_value"] == 1 / 1001


def test_holm_against_a_hand_example():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3·0.01 = 0.03; max(0.03, 2·0.03) = 0.06; max(0.06, 1·0.04) = 0.06
    assert holm({"H1": 0.01, "H2": 0.04, "H3": 0.03}) == pytest.approx({"H1": 0.03, "H2": 0.06, "H3": 0.06})
    assert holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError):
        holm({"a": 1.5})


def test_stratified_bootstrap_one_stratum_is_the_paired_bootstrap():
    d = [0.3, -0.1, 0.5, 0.2, 0.0, 0.7, -0.4]
    assert stratified_bootstrap_ci([d], seed=5) == st.bootstrap_mean_ci(d, seed=5)
    big = np.random.default_rng(0).normal(size=301)  # 2M // 301 < 10,000 resamples: drawn in chunks, in both
    assert stratified_bootstrap_ci([big], seed=2) == st.bootstrap_mean_ci(big, seed=2)
    lo, hi = stratified_bootstrap_ci([[1.0, 1.0], [3.0, 3.0, 3.0]])
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)  # constant within seeds: the mean of means


def test_one_sided_sign_test_against_scipy():
    from scipy.stats import binomtest

    res = st.sign_test([0.1, 0.2, 0.3], "greater")
    assert res["p_value"] == 0.125 == res["min_p"]  # 3 seeds: the smallest one-sided p
    res = st.sign_test([0.1, -0.2, 0.3, 0.4, 0.5], "less")
    assert res["p_value"] == pytest.approx(binomtest(4, 5, 0.5, alternative="less").pvalue)


# -- hypotheses --------------------------------------------------------------------------------------------------------


def _run(effects: dict[str, dict[str, float]], seeds=(0, 1, 2), n=10, controls=(), primary="items") -> RunResults:
    """A run whose IM − IT per-item differences per metric are effect + small fixed noise."""
    rng = np.random.default_rng(0)
    study = {
        "primary_test": primary,
        "controls": list(controls),
        "resamples": 2000,
        "hypotheses": [
            {"id": "H1", "metric": "train_loss", "direction": "greater", "text": "IM train loss higher",
             "paper": {"reference": 0.58, "treatment": 0.61}},
            {"id": "H2", "metric": "test_loss", "direction": "less", "text": "IM test loss lower",
             "paper": {"reference": 1.26, "treatment": 1.19}},
            {"id": "H3", "metric": "bleu4", "direction": "less", "text": "IM BLEU lower",
             "paper": {"reference": 60.99, "treatment": 59.04}},
        ],
    }  # fmt: skip
    arms = ["IT", "IM", *controls]
    cfg = {"name": "s", "arms": [{"name": a, "loss_mode": "it"} for a in arms], "study": study}
    run = RunResults(experiment="s", root=Path("."), config=RunConfig.model_validate(cfg), arms=arms, seeds=list(seeds))
    ov: dict = {}
    for arm in arms:
        for s in seeds:
            items = {}
            for metric in ("train_loss", "test_loss", "bleu4"):
                base = rng.normal(1.0, 0.01, n)
                shift = effects.get(arm, {}).get(metric, 0.0)
                items[metric] = {f"e{i}": float(v + shift) for i, v in enumerate(base)}
            ov.setdefault(arm, {})[s] = OverfittingResult(benchmark="overfitting", value=1.0, items=items)
    run.results["overfitting"] = ov
    return run


def test_outcomes_confirmed_reversed_not_confirmed_with_holm():
    run = _run({"IM": {"train_loss": 0.05, "test_loss": 0.05, "bleu4": 0.0}})
    res = evaluate_hypotheses(run)
    by = {r["id"]: r for r in res["hypotheses"]}
    assert by["H1"]["outcome"] == "confirmed"  # +0.05 predicted greater
    assert by["H2"]["outcome"] == "reversed"  # +0.05 where less was predicted
    assert by["H3"]["outcome"] == "not confirmed"  # no shift
    for r in by.values():
        assert r["p_holm"] >= r["p_predicted"]
        assert r["seed_deltas"].keys() == {0, 1, 2}
        assert r["sign_test"]["min_p"] == 0.125
    p = {k: v["p_predicted"] for k, v in by.items()}
    assert {k: v["p_holm"] for k, v in by.items()} == holm(p)
    assert by["H1"]["ci"][0] < by["H1"]["effect"] < by["H1"]["ci"][1]
    assert evaluate_hypotheses(RunResults(experiment="x", root=Path("."), config=RunConfig(name="x"))) is None


def test_seed_level_primary_t_test_two_sided_reversal_and_crossed_interval():
    from scipy import stats as sps

    from im_pipeline.analysis.hypothesis_tests import crossed_bootstrap_ci, detectable_effect

    run = _run({"IM": {"train_loss": 0.05, "test_loss": 0.05, "bleu4": 0.0}}, seeds=(0, 1, 2, 3, 4), primary="seeds")
    by = {r["id"]: r for r in evaluate_hypotheses(run)["hypotheses"]}
    assert [by[h]["outcome"] for h in ("H1", "H2", "H3")] == ["confirmed", "reversed", "not confirmed"]
    for r in by.values():
        deltas = [r["seed_deltas"][s] for s in range(5)]
        assert r["p_predicted"] == pytest.approx(sps.ttest_1samp(deltas, 0, alternative=r["direction"]).pvalue)
        assert r["p_two_sided"] == pytest.approx(sps.ttest_1samp(deltas, 0).pvalue)
        assert r["detectable"] == pytest.approx(detectable_effect(np.std(deltas, ddof=1), 5, 0.05 / 3))
        assert r["ci_varies"].startswith("seeds and items")  # every seed scored e0 … e9: a shared test set
        assert r["ci"][0] < r["effect"] < r["ci"][1]
        # the item-level test is kept as the secondary one
        assert r["items_test"]["p_predicted"] == pytest.approx(
            stratified_sign_flip(
                [np.array(list(run.results["overfitting"]["IM"][s].items[r["metric"]].values()))
                 - np.array(list(run.results["overfitting"]["IT"][s].items[r["metric"]].values())) for s in range(5)],
                alternative=r["direction"], n_resamples=2000,
            )["p_value"]
        )  # fmt: skip
    assert {k: v["p_holm"] for k, v in by.items()} == holm({k: v["p_predicted"] for k, v in by.items()})
    assert {k: v["p_opposite_holm"] for k, v in by.items()} == holm({k: v["p_two_sided"] for k, v in by.items()})
    # A significant two-sided p in the predicted direction is no reversal: H1's two-sided Holm p is < 0.05 too.
    assert by["H1"]["p_opposite_holm"] < 0.05 and by["H1"]["outcome"] == "confirmed"
    # Crossed bootstrap: seeds that differ only by a constant are invisible to an items-only bootstrap, not to it.
    rows = np.repeat(np.array([[0.0], [0.1], [0.2], [0.3], [0.4]]), 12, axis=1)
    lo, hi = crossed_bootstrap_ci(rows, n_resamples=4000)
    assert lo < 0.15 and hi > 0.25 and lo < 0.2 < hi
    assert stratified_bootstrap_ci(list(rows), n_resamples=4000) == pytest.approx((0.2, 0.2))
    assert crossed_bootstrap_ci(np.full((3, 4), 0.7), n_resamples=100) == pytest.approx((0.7, 0.7))


def test_detectable_effect_has_80_percent_power_by_simulation_and_welch_matches_scipy():
    from scipy import stats as sps

    from im_pipeline.analysis.hypothesis_tests import detectable_effect, seed_t_test, two_sample_t_test

    mde = detectable_effect(1.0, 5, 0.05)
    assert 1.2 < mde < 1.6  # Cohen's d of a one-sided one-sample t with n = 5 at 80% power: ≈ 1.4
    rng = np.random.default_rng(1)
    sims = rng.normal(mde, 1.0, size=(40_000, 5))
    power = np.mean(sps.ttest_1samp(sims, 0, axis=1, alternative="greater").pvalue < 0.05)
    assert power == pytest.approx(0.8, abs=0.01)
    assert detectable_effect(2.0, 5, 0.05) == pytest.approx(2 * mde)  # scales with the seed spread
    assert detectable_effect(1.0, 5, 0.05 / 3) > mde  # a stricter α needs a larger effect
    a, b = [0.1, 0.3, 0.2, 0.4], [0.5, 0.9, 0.6]
    res = two_sample_t_test(a, b, "less")
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch–Satterthwaite
    assert res["statistic"] == pytest.approx(t) and res["df"] == pytest.approx(df)
    assert res["p_value"] == pytest.approx(sps.t.cdf(t, df))
    assert seed_t_test([0.1, 0.2, 0.3], "greater")["p_value"] == pytest.approx(sps.t.sf(0.2 / (0.1 / np.sqrt(3)), 2))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_t_test([0.1])


def test_controls_are_compared_with_the_treatment_outside_holm():
    run = _run({"IM": {"test_loss": -0.05}, "IT-lr": {"test_loss": -0.05}}, controls=("IT-lr",))
    res = evaluate_hypotheses(run)
    assert [r["id"] for r in res["controls"]] == ["H1", "H2", "H3"]
    h2 = next(r for r in res["controls"] if r["id"] == "H2")
    assert h2["reference"] == "IT-lr" and abs(h2["effect"]) < 0.02  # IM ≈ IT-lr on test loss
    assert "p_holm" not in h2


def test_report_section_prints_hypotheses_outcomes_and_paper_values(tmp_path):
    from im_pipeline.report.hypotheses import hypotheses_section

    run = _run({"IM": {"train_loss": 0.05}})
    raw = run.config.model_dump(by_alias=True)
    raw["model"] = {"source": "smollm2-135m-instruct"}
    raw["data"] = {"train": "paper_dolly_3k"}
    raw["study"]["scope"] = "The model is already instruction-tuned."
    run.config = RunConfig.model_validate(raw)
    run.train_summaries = {
        "IT": {s: TrainSummary(arm="IT", seed=s, wall_time_s=w) for s, w in ((0, 100.0), (1, 110.0))}
    }
    for by_seed in run.results["overfitting"].values():
        for rec in by_seed.values():
            rec.wall_time_s = 10.0
    text = hypotheses_section(run)
    assert (
        "training 210 s (2 runs, 105 s each); evaluation: Memorisation (BLEU-4 vs training outputs) 60 s (6 runs)"
        in text
    )
    assert "| H1 | IM train loss higher (IM − IT > 0 on the output-token loss of each training example) |" in text
    assert "| 0.580 / 0.610 |" in text and "| 60.99 / 59.04 |" in text
    assert "**confirmed**" in text and "**not confirmed**" in text
    assert "no sign test (with 3 seeds its smallest possible p, 0.125, is not < 0.05)" in text
    res_n = evaluate_hypotheses(run)["hypotheses"]
    counts = "; ".join(
        f"{r['id']} " + ", ".join(f"s{s} {n}" for s, n in sorted(r["n_items"].items())) for r in res_n if r["tested"]
    )
    assert f"paired items per hypothesis and seed: {counts})" in text and counts.startswith("H1 s0 ")
    assert "Scope: The model is already instruction-tuned. Nothing here is claimed beyond this model" in text
    res = evaluate_hypotheses(run)
    for r in res["hypotheses"]:  # raw and Holm-adjusted p as printed in the hypothesis' row
        row = next(line for line in text.splitlines() if line.startswith(f"| {r['id']} |"))
        assert f"| {r['p_predicted']:.4f} | {r['p_holm']:.4f} | {r['p_opposite_holm']:.4f} |" in row or (
            r["p_predicted"] < 1e-4 or r["p_opposite_holm"] < 1e-4
        )


# -- committed results -------------------------------------------------------------------------------------------------


def test_saved_results_rebuild_the_same_report_and_restore_only_whole_units(tmp_path):
    import yaml

    from im_pipeline.report.build import build_report
    from im_pipeline.report.results import is_results_dir, restore_unit
    from tests.synthetic_run import make_experiment

    items = {"overfitting": {"IT": [[1.0, 2.0, 3.0, 4.0, 5.0]] * 2, "IM": [[1.5, 2.0, 3.5, 4.0, 5.5]] * 2}}
    root = make_experiment(tmp_path / "runs", "exp", ratio=0.5, n=20, values={}, items=items)
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["save_results"] = True
    cfg["evaluation"]["alpaca_eval"] = {"enabled": False}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    (root / "IT" / "seed-0" / "checkpoint").mkdir()
    (root / "IT" / "seed-0" / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    (root / "IT" / "seed-0" / ".keys").mkdir()
    (root / "IT" / "seed-0" / ".keys" / "train.key").write_text("k\n")
    (root / "IT" / "seed-0" / "eval" / ".keys").mkdir()
    (root / "IT" / "seed-0" / "eval" / ".keys" / "overfitting.key").write_text("e\n")
    (root / "data" / "train.jsonl").write_text("{}\n")
    report = tmp_path / "reports" / "exp"
    build_report(root, report)
    results = report / "results"
    assert is_results_dir(results)
    saved = sorted(p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file())
    assert "IT/seed-0/eval/overfitting.json" in saved and "IT/seed-0/.keys/train.key" in saved
    assert "config.yaml" in saved and "data/data_stats.json" in saved
    assert not [p for p in saved if "checkpoint" in p or p == "data/train.jsonl"]
    text = (report / "REPORT.md").read_text()
    assert "`im-pipeline report reports/exp/results --out DIR` rebuilds this report" in text
    build_report(results, tmp_path / "again")
    assert (tmp_path / "again" / "REPORT.md").read_bytes() == (report / "REPORT.md").read_bytes()
    assert not (tmp_path / "again" / "results").exists()
    # restore: only a unit whose training and every benchmark are there, never over existing files
    fresh = tmp_path / "fresh"
    assert restore_unit(results, fresh, "IM/seed-0", ["overfitting"]) == []  # IM has no train.key: not whole
    (root / "timings.json").write_text('{"runs": []}')
    build_report(root, report)
    got = restore_unit(results, fresh, "IT/seed-0", ["overfitting"])
    assert "IT/seed-0/eval/overfitting.json" in got and (fresh / "IT/seed-0/.keys/train.key").is_file()
    assert "timings.json" in got  # the earlier session's wall times stay
    assert restore_unit(results, fresh, "IT/seed-0", ["overfitting"]) == []  # the unit exists now
    assert restore_unit(results, fresh, "IT/seed-1", ["overfitting", "mmlu"]) == []
