"""Issue 23's test sets: the out-of-domain source ``alpaca_eval_ood`` (AlpacaEval 1.0 reference outputs without the
``selfinstruct`` subset) and ``data.in_domain_size`` (per seed, an in-domain test sample disjoint from the seed's
training sample; the base model: the union), down to the overfitting result's ``in_domain_loss`` fields and the
unit keys."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from im_pipeline.config import ConfigError, DataConfig, config_from_dict
from im_pipeline.data import DataError, in_domain_data, load_records, prepare_data, seed_data, seed_sample
from im_pipeline.data.sources import REGISTRY, load_source
from im_pipeline.results import OverfittingResult

ALPACA_EVAL = "alpaca_eval/text_davinci_003/model_outputs.json"

# -- alpaca_eval_ood ---------------------------------------------------------------------------------------------------


def test_alpaca_eval_ood_is_553_records_without_selfinstruct(data_dir: Path) -> None:
    raw = json.loads((data_dir / ALPACA_EVAL).read_text(encoding="utf-8"))
    assert len(raw) == 805 and Counter(r["dataset"] for r in raw)["selfinstruct"] == 252
    loaded = load_source("alpaca_eval_ood", data_dir)
    assert len(loaded.records) == 553 and loaded.excluded == 252
    origin = (data_dir / ALPACA_EVAL).resolve()  # the data directory may be reached through a symlink
    assert loaded.origin == f"{origin} (without dataset selfinstruct: 252 of 805 rows)"
    # each record is row i of the whole file, id alpaca_eval_ood-<i>: stable, whatever is excluded around it
    kept = [(i, r) for i, r in enumerate(raw) if r["dataset"] != "selfinstruct"]
    assert [r["id"] for r in loaded.records] == [f"alpaca_eval_ood-{i:05d}" for i, _ in kept]
    for rec, (_, row) in zip(loaded.records, kept, strict=True):
        assert rec["messages"] == [
            {"role": "user", "content": row["instruction"].strip()},
            {"role": "assistant", "content": row["output"].strip()},
        ]
    assert Counter(row["dataset"] for _, row in kept) == {"oasst": 188, "koala": 156, "helpful_base": 129, "vicuna": 80}
    assert load_records("alpaca_eval_ood", data_dir) == loaded.records  # the same ids on every load
    empty = [r["id"] for r in loaded.records if not r["messages"][1]["content"]]
    assert empty == ["alpaca_eval_ood-00247"]  # data.on_empty (drop) leaves 552 in a prepared test set


def test_alpaca_eval_ood_is_pinned_and_its_hub_route_excludes_too(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import datasets

    from im_pipeline import hub
    from im_pipeline.data import sources
    from im_pipeline.data.fetch import fetch, fetchable

    spec = REGISTRY["alpaca_eval_ood"]
    assert "alpaca_eval_ood" in fetchable() and spec.exclude == {"dataset": ("selfinstruct",)}
    assert spec.url == (
        "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a149df89434d8a54582c0151c0b945c3d20/"
        "results/text_davinci_003/model_outputs.json"
    )
    (item,) = fetch(["alpaca_eval_ood"], to=data_dir)  # the data directory's copy has the pinned sha256
    assert item.status == "present" and item.size == 474_865
    # No local copy, the Hub reachable: the same exclusion and ids (load_dataset stands in for the Hub here).
    rows = json.loads((data_dir / ALPACA_EVAL).read_text(encoding="utf-8"))
    calls = []

    def load_dataset(hub_id: str, **kwargs: object) -> list[dict]:
        calls.append((hub_id, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "hub_reachable", lambda **_: True)
    monkeypatch.setattr(sources, "data_cache_dir", lambda: tmp_path / "cache")
    on_hub = load_source("alpaca_eval_ood", tmp_path)
    assert calls == [("tatsu-lab/alpaca_eval", {"split": "eval", "name": "alpaca_eval"})]
    assert on_hub.records == load_records("alpaca_eval_ood", data_dir) and on_hub.excluded == 252
    assert on_hub.origin == "hub:tatsu-lab/alpaca_eval (without dataset selfinstruct: 252 of 805 rows)"


def test_data_stats_names_the_exclusion(data_dir: Path, capsys) -> None:
    from im_pipeline_flows.cli import main

    assert main(["data", "stats", "alpaca_eval_ood", "--data-dir", str(data_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["origin"].endswith("(without dataset selfinstruct: 252 of 805 rows)") and stats["n"] == 553


# -- data.in_domain_size -----------------------------------------------------------------------------------------------


def _records(n: int, prefix: str = "r") -> list[dict]:
    return [
        {
            "id": f"{prefix}-{i}",
            "source": "t",
            "messages": [
                {"role": "user", "content": f"question {i} " * (1 + i % 4)},
                {"role": "assistant", "content": f"answer {i} " * (1 + i % 3)},
            ],
        }
        for i in range(n)
    ]


def _files(tmp_path: Path, n_train: int = 40, reverse: bool = False) -> tuple[Path, Path]:
    src, ood = tmp_path / "train.jsonl", tmp_path / "ood.jsonl"
    recs = _records(n_train)
    src.write_text("".join(json.dumps(r) + "\n" for r in (recs[::-1] if reverse else recs)))
    ood.write_text("".join(json.dumps(r) + "\n" for r in _records(12, "o")))
    return src, ood


def _ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


def test_in_domain_samples_are_disjoint_from_training_deterministic_and_the_base_takes_the_union(tmp_path):
    src, ood = _files(tmp_path)
    cfg = DataConfig(train=str(src), n=8, per_seed=True, held_out=str(ood), held_out_size=5, in_domain_size=6)
    prepared = prepare_data(cfg, None, 0, out_dir=tmp_path / "data")
    assert prepared.report["selection"]["in_domain_n"] == 6 and len(prepared.train) == 40
    seeds, union = [0, 1, 2, 3, 4], set()
    for seed in seeds:
        train, test = seed_data(cfg, tmp_path / "data", seed)
        in_domain = in_domain_data(cfg, tmp_path / "data", [seed])
        assert len(in_domain) == 6 and len(set(_ids(in_domain))) == 6
        assert set(_ids(train)).isdisjoint(_ids(in_domain))  # exactly disjoint, per seed
        assert test == prepared.held_out  # the one fixed out-of-domain set
        # the training sample is the one without in_domain_size (the first n of the seed's ranking)
        without = DataConfig(train=str(src), n=8, per_seed=True, held_out=str(ood), held_out_size=5)
        assert train == seed_data(without, tmp_path / "data", seed)[0]
        assert in_domain == seed_sample(prepared.train, 8, 6, seed)[1]
        union |= set(_ids(in_domain))
    base = in_domain_data(cfg, tmp_path / "data", seeds)
    assert len(_ids(base)) == len(set(_ids(base))) and set(_ids(base)) == union
    assert _ids(base)[:6] == _ids(in_domain_data(cfg, tmp_path / "data", [0]))  # seed order
    assert len(union) > 6  # the seeds draw different samples
    # deterministic from seed and ids: the same samples from a reversed training file
    rev = tmp_path / "rev"
    rev.mkdir()
    src_rev, ood_rev = _files(rev, reverse=True)
    cfg_rev = cfg.model_copy(update={"train": str(src_rev), "held_out": str(ood_rev)})
    prepare_data(cfg_rev, None, 0, out_dir=rev / "data")
    for seed in seeds:
        again = in_domain_data(cfg_rev, rev / "data", [seed])
        assert _ids(again) == _ids(in_domain_data(cfg, tmp_path / "data", [seed]))
    assert in_domain_data(cfg.model_copy(update={"in_domain_size": 0}), tmp_path / "data", seeds) == []


def test_in_domain_size_needs_enough_examples_after_the_ratio_filter(tmp_path):
    from im_pipeline.data.stats import example_ratio

    src, ood = _files(tmp_path)
    base = {"train": str(src), "n": 8, "per_seed": True, "held_out": str(ood)}
    with pytest.raises(DataError, match=re.escape("8 training + 33 in-domain test (data.in_domain_size) examples per "
                                                  "seed need 41, but only 40 examples are left")):  # fmt: skip
        prepare_data(DataConfig(**base, in_domain_size=33), None, 0)
    prepare_data(DataConfig(**base, in_domain_size=32), None, 0)  # 8 + 32 = 40: enough
    ratios = sorted(example_ratio(r) for r in _records(40))
    low = ratios[20]  # keeps the examples of ratio >= the median: fewer than 40
    kept = sum(r >= low for r in ratios)
    with pytest.raises(DataError, match=rf"need 40, but only {kept} examples are left in .* after data.ratio_range"):
        prepare_data(DataConfig(**base, in_domain_size=32, ratio_range=(low, None)), None, 0)


@pytest.mark.parametrize(
    "data",
    [
        {"in_domain_size": 4},
        {"in_domain_size": 4, "n": 4, "per_seed": True, "held_out_size": 4},
        {"in_domain_size": 4, "held_out": "alpaca_eval_ood"},
    ],
)
def test_in_domain_size_needs_per_seed_and_a_fixed_held_out(data):
    with pytest.raises(ConfigError, match=r"in_domain_size 4 needs data\.per_seed true and a data\.held_out set"):
        config_from_dict({"name": "x", "data": data})
    with pytest.raises(ConfigError, match="in_domain_size"):
        config_from_dict({"name": "x", "data": {"in_domain_size": -1}})


# -- unit keys ---------------------------------------------------------------------------------------------------------


def _study(in_domain_size: int | None, seeds: list[int] | None = None):
    data = {"train": "paper_alpaca_5k", "n": 12, "per_seed": True, "held_out": "alpaca_eval_ood", "held_out_size": 40}
    if in_domain_size is not None:
        data["in_domain_size"] = in_domain_size
    return config_from_dict({"name": "x", "data": data, "seeds": seeds or [0, 1, 2]})


def test_eval_keys_change_with_in_domain_size_and_nothing_else_does():
    from im_pipeline.runs.staleness import base_key, data_key, eval_key, train_key

    absent, zero, six, eight = _study(None), _study(0), _study(6), _study(8)
    assert "in_domain_size" not in zero.data.model_dump()  # 0: no key, so existing configs keep their keys
    assert data_key(absent) == data_key(zero) and "in_domain_size" in six.data.model_dump()

    def keys(cfg):
        trained = train_key(cfg, cfg.arm("IT"), 1, "h")
        over = cfg.evaluation.overfitting
        return (
            trained,
            eval_key(cfg, trained, "overfitting", over, "h"),
            eval_key(cfg, base_key(cfg), "overfitting", over, "h"),
            eval_key(cfg, trained, "mmlu", cfg.evaluation.mmlu, "h"),
        )

    k0, k6, k8 = keys(zero), keys(six), keys(eight)
    assert keys(absent) == k0
    assert k0[0] == k6[0] == k8[0]  # the training sample does not depend on it: no retraining
    assert len({k0[1], k6[1], k8[1]}) == 3 and len({k0[2], k6[2], k8[2]}) == 3  # the overfitting evaluation does
    assert k0[3] == k6[3] == k8[3]  # a benchmark that reads no training data does not
    # The base model's in-domain set is every seed's union: it follows the seeds; a seed's own does not.
    more = keys(_study(6, [0, 1, 2, 3]))
    assert more[1] == k6[1] and more[2] != k6[2]
    assert keys(_study(0, [0, 1, 2, 3]))[2] == k0[2]  # without in-domain samples nothing changes


# -- the overfitting result --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("bleu", [False, True])
def test_overfitting_reports_the_loss_on_every_in_domain_record(tiny, tmp_path: Path, bleu: bool) -> None:
    from im_pipeline.config import BenchmarkConfig
    from im_pipeline.evaluation.common import EvalContext, OverfittingInputs, run_benchmark
    from im_pipeline.evaluation.overfitting import output_token_losses

    model, tok = tiny
    train, held, in_domain = _records(6), _records(4, "o"), _records(5, "d")
    cfg = BenchmarkConfig(limit=2, options={"loss_examples": 3, "max_new_tokens": 4, "bleu": bleu})

    def run(inputs: OverfittingInputs, out: str) -> dict:
        ctx = EvalContext(model_source="no-such-model", out_dir=tmp_path / out, batch_size=4, overfitting=inputs)
        ctx.cache.model(ctx.model_identity, lambda: tiny)
        return json.loads(run_benchmark("overfitting", ctx, cfg).read_text())

    with_in = run(OverfittingInputs(train, held, "ood", in_domain), "with")
    assert with_in["n_in_domain_loss"] == 5 and with_in["n_train_loss"] == 3  # every in-domain record, uncapped
    items = with_in["items"]["in_domain_loss"]
    assert list(items) == _ids(in_domain)
    for rec in in_domain:  # the same per-example loss as output_token_losses on that record alone
        (alone,) = output_token_losses(model, tok, [rec], template="tulu", max_length=512, batch_size=1)
        assert items[rec["id"]] == pytest.approx(alone["loss"], rel=1e-5)
    assert with_in["in_domain_loss"] == pytest.approx(sum(items.values()) / 5)
    per = output_token_losses(model, tok, in_domain, template="tulu", max_length=512, batch_size=4)
    token_mean = sum(e["loss"] * e["tokens"] for e in per) / sum(e["tokens"] for e in per)
    assert with_in["in_domain_loss_token_mean"] == pytest.approx(token_mean, rel=1e-5)
    assert OverfittingResult.read(tmp_path / "with" / "overfitting.json").n_in_domain_loss == 5
    # Without in-domain records nothing changes: no field, no item key, the other numbers the same.
    without = run(OverfittingInputs(train, held, "ood"), "without")
    assert not [k for k in without if "in_domain" in k] and "in_domain_loss" not in without["items"]
    strip = ("in_domain_loss", "in_domain_loss_token_mean", "n_in_domain_loss", "wall_time_s", "pid", "items")
    assert {k: v for k, v in with_in.items() if k not in strip} == {k: v for k, v in without.items() if k not in strip}
    assert {k: v for k, v in with_in["items"].items() if k != "in_domain_loss"} == without["items"]


def test_evaluate_unit_passes_the_seeds_in_domain_sample_and_the_base_model_the_union(tiny_model_dir, tmp_path):
    """The pipeline's evaluate unit: a trained unit gets its seed's training and in-domain samples, the base model
    (seed None) the first seed's training sample and the union of every seed's in-domain sample; both run."""
    from im_pipeline.runs.layout import RunLayout
    from im_pipeline.runs.units import EvalJob, evaluate_unit

    src, ood = _files(tmp_path)
    data = {"train": str(src), "n": 8, "per_seed": True, "held_out": str(ood), "held_out_size": 5}
    cfg = config_from_dict(
        {
            "name": "in-domain",
            "model": {"source": str(tiny_model_dir)},
            "data": {**data, "in_domain_size": 6, "max_length": 64},
            "seeds": [0, 1, 2],
            "evaluation": {"overfitting": {"limit": 2, "options": {"bleu": False, "loss_examples": 4}}},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    layout = RunLayout.of(cfg)
    prepare_data(cfg.data, None, 0, out_dir=layout.data)
    results = {}
    for arm, seed in (("IT", 1), ("base", None)):
        assert evaluate_unit(cfg, EvalJob(arm, seed, "overfitting", "k", str(tiny_model_dir), "m"))
        results[arm] = OverfittingResult.read(layout.unit(arm, seed).eval_result("overfitting"))
    it, base = results["IT"], results["base"]
    seed1 = in_domain_data(cfg.data, layout.data, [1])
    union = in_domain_data(cfg.data, layout.data, [0, 1, 2])
    assert it.seed == 1 and it.n_in_domain_loss == 6 and list(it.items["in_domain_loss"]) == _ids(seed1)
    assert base.seed is None and base.n_in_domain_loss == len(union) > 6
    assert list(base.items["in_domain_loss"]) == _ids(union)
    assert set(it.items["in_domain_loss"]) <= set(base.items["in_domain_loss"])  # pairs by id
    # train_loss: the seed's training sample; for the base model the first seed's (4 of 8: loss_examples)
    assert set(it.items["train_loss"]) <= set(_ids(seed_data(cfg.data, layout.data, 1)[0]))
    assert set(base.items["train_loss"]) <= set(_ids(seed_data(cfg.data, layout.data, 0)[0]))
    assert it.n_test_loss == base.n_test_loss == 4 and set(it.items["test_loss"]) == set(base.items["test_loss"])
