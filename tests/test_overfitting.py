"""Overfitting benchmark: output-token losses and BLEU-4 memorisation on a tiny model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from im_pipeline.config import BenchmarkConfig
from im_pipeline.data.templates import render_prompt
from im_pipeline.evaluation import generation
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext, OverfittingInputs, run_benchmark
from im_pipeline.evaluation.overfitting import _sample, bleu4, output_token_losses, run_overfitting, split_prompt
from im_pipeline.loss_modes import LossMode, LossSpec
from im_pipeline.training import encode_example, output_token_loss


def _rec(i: int, multi: bool = False) -> dict:
    msgs = [
        {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
        {"role": "assistant", "content": f"The answer is {2 * i}, because {i} and {i} make {2 * i}."},
    ]
    if multi:
        msgs += [{"role": "user", "content": "And times two?"}, {"role": "assistant", "content": f"It is {4 * i}."}]
    return {"id": f"r{i}", "source": "test", "messages": msgs}


TRAIN = [_rec(i, multi=i % 3 == 0) for i in range(8)]
HELD = [_rec(i) for i in range(100, 103)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _ctx(tmp_path: Path, tiny, inputs: OverfittingInputs | None = None) -> EvalContext:
    """A context whose unit already holds the tiny model (its source does not exist: nothing loads it again)."""
    ctx = EvalContext(model_source="no-such-model", out_dir=tmp_path, batch_size=4, overfitting=inputs)
    ctx.cache.model(ctx.model_identity, lambda: tiny)
    return ctx


def test_bleu4_is_mean_sentence_bleu_against_whole_references() -> None:
    hyps = ["the cat sat on the mat today", "a dog barked loudly at night", "zzz qqq", "one two three", "x y z w"]
    refs = ["the cat sat on the mat", "the dog barked at the moon at night", "the end", "one two three four", "x y"]
    out = bleu4(hyps, refs)
    sentence = [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs, strict=True)]
    assert out["sentence"] == pytest.approx(sentence)
    assert out["mean_sentence_bleu"] == pytest.approx(sum(sentence) / 5)
    assert out["corpus"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert out["mean_sentence_bleu"] != pytest.approx(out["corpus"], abs=0.5)  # two different measures
    assert out["stderr"] == pytest.approx(statistics.stdev(sentence) / 5**0.5)
    assert bleu4(refs, refs)["mean_sentence_bleu"] == pytest.approx(100.0)
    assert bleu4(hyps[:2], refs[:2])["stderr"] is None  # too few items for a standard error


def test_split_prompt_uses_last_assistant_turn() -> None:
    messages, reference = split_prompt(_rec(3, multi=True))
    assert reference == "It is 12." and len(messages) == 3 and messages[-1]["content"] == "And times two?"
    with pytest.raises(ValueError, match="r9"):
        split_prompt({"id": "r9", "messages": [{"role": "assistant", "content": "x"}]})


def test_overfitting_tiny_model(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    cfg = BenchmarkConfig(limit=3, options={"loss_examples": 5, "max_new_tokens": 6})
    out = run_overfitting(_ctx(tmp_path, tiny, OverfittingInputs(TRAIN, HELD)), cfg)
    assert out["metric"] == "bleu4" and out["n"] == 3
    assert out["n_train_loss"] == 5 and out["n_test_loss"] == 3
    # token mean: exactly the shared output-token loss on the seeded sample (the same items for every arm)
    assert out["train_loss_token_mean"] == pytest.approx(
        output_token_loss(model, tok, _sample(TRAIN, 5, 0), batch_size=4), rel=1e-5
    )
    assert out["test_loss_token_mean"] == pytest.approx(
        output_token_loss(model, tok, _sample(HELD, 5, 0), batch_size=4), rel=1e-5
    )
    # per-example mean (released compute_loss.py, batch 1): each example alone through F.cross_entropy
    ref = []
    for rec in _sample(TRAIN, 5, 0):
        enc = encode_example(rec, tok, loss=LossSpec(LossMode.it), max_length=512)
        ids = torch.tensor([enc["input_ids"]])
        keep = torch.tensor(enc["it_weights"][1:]) > 0
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        ref.append(F.cross_entropy(logits[keep], ids[0, 1:][keep]).item())
    assert out["train_loss"] == pytest.approx(sum(ref) / len(ref), rel=1e-5)
    assert out["items"]["train_loss"] == pytest.approx(
        {r["id"]: v for r, v in zip(_sample(TRAIN, 5, 0), ref, strict=True)}, rel=1e-5
    )
    assert out["train_loss"] != pytest.approx(out["train_loss_token_mean"], rel=1e-6)
    assert out["loss_gap"] == pytest.approx(out["test_loss"] - out["train_loss"])
    assert set(out["items"]["bleu4"]) == {r["id"] for r in _sample(TRAIN, 5, 0)[:3]}
    assert out["value"] == pytest.approx(sum(out["items"]["bleu4"].values()) / 3)
    assert out["stderr"] is None  # 3 items: too few for a standard error
    assert out["held_out_kind"] == "in-distribution split"
    assert out["train_loss"] > 3.0  # random tiny model: near ln(vocab) ≈ 6.2, not trained
    assert len(out["examples"]) == 3 and out["examples"][0]["id"] == _sample(TRAIN, 5, 0)[0]["id"]
    other = run_overfitting(
        _ctx(tmp_path, tiny, OverfittingInputs(TRAIN, HELD, held_out_kind="another data set (x)")), cfg
    )
    assert other["held_out_kind"] == "another data set (x)"
    # the documented option labels standalone held-out records, and passes the pipeline's option check
    labelled = {**cfg.options, "held_out_kind": "label (y)"}
    run_benchmark(
        "overfitting",
        _ctx(tmp_path / "own", tiny, OverfittingInputs(TRAIN, HELD)),
        BenchmarkConfig(limit=cfg.limit, options=labelled),
    )
    assert json.loads((tmp_path / "own" / "overfitting.json").read_text())["held_out_kind"] == "label (y)"


def test_output_token_losses_per_example_independent_of_batching(tiny) -> None:
    model, tok = tiny
    one = output_token_losses(model, tok, TRAIN, template="tulu", max_length=512, batch_size=1)
    four = output_token_losses(model, tok, TRAIN, template="tulu", max_length=512, batch_size=4)
    assert [e["id"] for e in one] == [r["id"] for r in TRAIN]
    for a, b in zip(one, four, strict=True):
        assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_bleu_pairs_each_prompt_with_its_own_output(tiny, tmp_path: Path, monkeypatch) -> None:
    """A model that reproduces its training outputs scores BLEU 100; shifted outputs score far lower."""
    _, tok = tiny
    answer_of = {render_prompt(split_prompt(r)[0], "tulu", tok): split_prompt(r)[1] for r in TRAIN}
    prompts_seen: list[str] = []

    def memorising(model, tokenizer, prompts, cfg, progress=True):
        prompts_seen.extend(prompts)
        assert cfg.temperature == 0.0 and "<|user|>" in cfg.stop
        return [[answer_of[p]] for p in prompts]

    monkeypatch.setattr(generation, "generate", memorising)
    cfg = BenchmarkConfig(limit=8, options={"loss_examples": 2, "max_new_tokens": 64})
    out = run_overfitting(_ctx(tmp_path, tiny, OverfittingInputs(TRAIN, HELD)), cfg)
    assert out["value"] == pytest.approx(100.0) and len(prompts_seen) == 8
    assert all(p.endswith("<|assistant|>\n") for p in prompts_seen)

    def shifted(model, tokenizer, prompts, cfg, progress=True):
        outs = [answer_of[p] for p in prompts]
        return [[o] for o in outs[1:] + outs[:1]]

    monkeypatch.setattr(generation, "generate", shifted)
    assert run_overfitting(_ctx(tmp_path, tiny, OverfittingInputs(TRAIN, HELD)), cfg)["value"] < 60.0


def test_overfitting_without_records_skips(tiny, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkSkipped, match="train=SOURCE"):
        run_overfitting(_ctx(tmp_path, tiny), BenchmarkConfig(limit=2))
    for unread in ("tokens", "bootstrap"):  # bootstrap: the BLEU stderr is analytic, no option sets resamples
        with pytest.raises(ValueError, match="unknown option"):
            run_overfitting(_ctx(tmp_path, tiny, OverfittingInputs(TRAIN, [])), BenchmarkConfig(options={unread: 3}))


def test_overfitting_without_held_out_reports_no_test_loss(tiny, tmp_path: Path) -> None:
    cfg = BenchmarkConfig(limit=2, options={"loss_examples": 2, "max_new_tokens": 3})
    out = run_overfitting(_ctx(tmp_path, tiny, OverfittingInputs(TRAIN, [])), cfg)
    assert out["test_loss"] is None and out["loss_gap"] is None and out["n_test_loss"] == 0 and out["n"] == 2


def test_references_are_whole(tiny, tmp_path: Path, monkeypatch) -> None:
    """References are never cut to the generation budget: a model that reproduces only the first tokens of each
    output scores well below 100 (brevity penalty), as the paper's BLEU against the training output would."""
    _, tok = tiny
    budget = 5
    answer_of = {render_prompt(split_prompt(r)[0], "tulu", tok): split_prompt(r)[1] for r in TRAIN}

    def prefix_memoriser(model, tokenizer, prompts, cfg, progress=True):
        assert cfg.max_new_tokens == budget
        return [
            [tokenizer.decode(tokenizer(answer_of[p], add_special_tokens=False)["input_ids"][:budget])] for p in prompts
        ]

    monkeypatch.setattr(generation, "generate", prefix_memoriser)
    cfg = BenchmarkConfig(limit=4, options={"loss_examples": 1, "max_new_tokens": budget})
    out = run_overfitting(_ctx(tmp_path, tiny, OverfittingInputs(TRAIN, [])), cfg)
    assert out["value"] < 50.0 and out["bleu"]["corpus_brevity_penalty"] < 1.0


def test_bleu_off_generates_nothing_and_heads_with_the_test_loss(tiny, tmp_path: Path, monkeypatch) -> None:
    def no_generation(*a, **k):
        raise AssertionError("bleu: false must not generate")

    monkeypatch.setattr(generation, "generate", no_generation)
    cfg = BenchmarkConfig(limit=3, options={"loss_examples": 5, "bleu": False})
    run_benchmark("overfitting", _ctx(tmp_path, tiny, OverfittingInputs(TRAIN, HELD)), cfg)
    saved = json.loads((tmp_path / "overfitting.json").read_text())  # through the typed result record
    assert saved["metric"] == "test_loss" and "bleu4" not in saved["items"]
    test = list(saved["items"]["test_loss"].values())
    assert saved["value"] == pytest.approx(statistics.fmean(test)) == pytest.approx(saved["test_loss"])
    assert saved["n"] == len(test) == 3 and saved["stderr"] == pytest.approx(statistics.stdev(test) / 3**0.5)
    train_only = run_overfitting(_ctx(tmp_path / "t", tiny, OverfittingInputs(TRAIN, [])), cfg)
    assert train_only["metric"] == "train_loss" and train_only["value"] == pytest.approx(train_only["train_loss"])
