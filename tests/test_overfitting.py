"""Overfitting benchmark: output-token losses and BLEU-4 memorisation on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu

from im_pipeline.config import BenchmarkConfig
from im_pipeline.data.templates import render_prompt
from im_pipeline.evaluation import generation
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext
from im_pipeline.evaluation.overfitting import _sample, bleu4, run_overfitting, split_prompt, truncate_to_tokens


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


def _ctx(tmp_path: Path, tiny, **extra) -> EvalContext:
    return EvalContext(model_source="no-such-model", out_dir=tmp_path, batch_size=4, extra=extra, _loaded=tiny)


def test_bleu4_matches_sacrebleu_and_bounds() -> None:
    hyps = ["the cat sat on the mat today", "a dog barked loudly at night"]
    refs = ["the cat sat on the mat", "the dog barked at the moon at night"]
    out = bleu4(hyps, refs, bootstrap=50)
    assert out["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert 0 < out["score"] < 100 and out["stderr"] > 0
    assert bleu4(refs, refs)["score"] == pytest.approx(100.0)
    assert bleu4(["zzz qqq xxx yyy"], ["the cat sat on the mat"], bootstrap=0)["score"] == 0.0


def test_split_prompt_uses_last_assistant_turn() -> None:
    messages, reference = split_prompt(_rec(3, multi=True))
    assert reference == "It is 12." and len(messages) == 3 and messages[-1]["content"] == "And times two?"
    with pytest.raises(ValueError, match="r9"):
        split_prompt({"id": "r9", "messages": [{"role": "assistant", "content": "x"}]})


def test_overfitting_tiny_model(tiny, tmp_path: Path) -> None:
    from im_pipeline.training import output_token_loss

    model, tok = tiny
    cfg = BenchmarkConfig(limit=3, options={"loss_examples": 5, "max_new_tokens": 6, "bootstrap": 20})
    out = run_overfitting(_ctx(tmp_path, tiny, train_records=TRAIN, held_out_records=HELD), cfg)
    assert out["metric"] == "bleu4" and out["n"] == 3
    assert out["n_train_loss"] == 5 and out["n_test_loss"] == 3
    # exactly the shared output-token loss on the seeded sample (the same items for every arm)
    assert out["train_loss"] == pytest.approx(output_token_loss(model, tok, _sample(TRAIN, 5, 0), batch_size=4))
    assert out["test_loss"] == pytest.approx(output_token_loss(model, tok, _sample(HELD, 5, 0), batch_size=4))
    assert out["loss_gap"] == pytest.approx(out["test_loss"] - out["train_loss"])
    assert 0.0 <= out["value"] <= 100.0 and out["stderr"] is not None
    assert out["train_loss"] > 3.0  # random tiny model: near ln(vocab) ≈ 6.2, not trained
    assert len(out["examples"]) == 3 and out["examples"][0]["id"] == _sample(TRAIN, 5, 0)[0]["id"]


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
    cfg = BenchmarkConfig(limit=8, options={"loss_examples": 2, "max_new_tokens": 64, "bootstrap": 0})
    out = run_overfitting(_ctx(tmp_path, tiny, train=TRAIN, held_out=HELD), cfg)
    assert out["value"] == pytest.approx(100.0) and len(prompts_seen) == 8
    assert all(p.endswith("<|assistant|>\n") for p in prompts_seen)

    def shifted(model, tokenizer, prompts, cfg, progress=True):
        outs = [answer_of[p] for p in prompts]
        return [[o] for o in outs[1:] + outs[:1]]

    monkeypatch.setattr(generation, "generate", shifted)
    assert run_overfitting(_ctx(tmp_path, tiny, train=TRAIN, held_out=HELD), cfg)["value"] < 60.0


def test_overfitting_without_records_skips(tiny, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkSkipped, match="train=SOURCE"):
        run_overfitting(_ctx(tmp_path, tiny), BenchmarkConfig(limit=2))
    with pytest.raises(ValueError, match="unknown option"):
        run_overfitting(_ctx(tmp_path, tiny, train=TRAIN), BenchmarkConfig(options={"tokens": 3}))


def test_overfitting_without_held_out_reports_no_test_loss(tiny, tmp_path: Path) -> None:
    cfg = BenchmarkConfig(limit=2, options={"loss_examples": 2, "max_new_tokens": 3, "bootstrap": 0})
    out = run_overfitting(_ctx(tmp_path, tiny, train=TRAIN), cfg)
    assert out["test_loss"] is None and out["loss_gap"] is None and out["n_test_loss"] == 0 and out["n"] == 2


def test_references_are_cut_to_the_generation_budget(tiny, tmp_path: Path, monkeypatch) -> None:
    """A model that reproduces the first max_new_tokens tokens of each output scores 100 against the budget-cut
    references, but much less against the full ones (brevity penalty)."""
    _, tok = tiny
    budget = 5
    answer_of = {render_prompt(split_prompt(r)[0], "tulu", tok): split_prompt(r)[1] for r in TRAIN}

    def prefix_memoriser(model, tokenizer, prompts, cfg, progress=True):
        assert cfg.max_new_tokens == budget
        return [[truncate_to_tokens(answer_of[p], tokenizer, budget)] for p in prompts]

    monkeypatch.setattr(generation, "generate", prefix_memoriser)
    cfg = BenchmarkConfig(limit=4, options={"loss_examples": 1, "max_new_tokens": budget, "bootstrap": 0})
    out = run_overfitting(_ctx(tmp_path, tiny, train=TRAIN), cfg)
    assert out["value"] == pytest.approx(100.0)
    assert out["n_references_truncated"] == 4 and out["bleu4_full_reference"] < 50.0
    ids = tok("The answer is 14, because 7 and 7 make 14.", add_special_tokens=False)["input_ids"]
    assert len(ids) > budget
    cut = truncate_to_tokens("The answer is 14, because 7 and 7 make 14.", tok, budget)
    assert tok(cut, add_special_tokens=False)["input_ids"] == ids[:budget]
