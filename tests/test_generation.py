"""Batched generation: order, left padding, stop sequences, sampling, seeding (tiny random model)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from im_pipeline.evaluation.generation import GenerationConfig, StopOnStrings, generate, truncate_at_stop

PROMPTS = [
    "def add(a, b):",
    "The quick brown fox jumps over the lazy dog. Once upon a time",
    "What",
    "import math\n",
    "Write a function that returns the sum of two numbers.",
]


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tok


def _plain_generate(model, tok, prompt: str, max_new_tokens: int) -> str:
    """Reference: one unpadded prompt through plain HF generate."""
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("batch_size", [3, 8])  # 8: every prompt in one left-padded batch
def test_batched_greedy_matches_unpadded_sequential_and_keeps_order(model_tok, batch_size):
    model, tok = model_tok
    got = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=12, batch_size=batch_size), progress=False)
    expected = [[_plain_generate(model, tok, p, 12)] for p in PROMPTS]
    assert got == expected
    assert generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=12, batch_size=1), progress=False) == expected
    # Prompts of different lengths really were padded together (so left padding was exercised).
    lengths = {len(tok(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) > 2


def test_padding_side_of_tokenizer_left_untouched(model_tok):
    model, tok = model_tok
    before = tok.padding_side
    generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=2), progress=False)
    assert tok.padding_side == before


def test_stop_sequence_cuts_one_row_and_leaves_others(model_tok):
    model, tok = model_tok
    prompts = PROMPTS[:4]
    base = [r[0] for r in generate(model, tok, prompts, GenerationConfig(max_new_tokens=16), progress=False)]
    # Pick a stop string taken from the middle of row 0's text that does not occur in the other rows.
    stop = None
    for start in range(2, len(base[0]) - 3):
        cand = base[0][start : start + 3]
        if cand.strip() and all(cand not in other for other in base[1:]):
            stop = cand
            break
    assert stop is not None, f"no usable stop string in {base!r}"
    got = generate(model, tok, prompts, GenerationConfig(max_new_tokens=16, stop=(stop,)), progress=False)
    assert got[0] == [base[0][: base[0].find(stop)]]
    assert stop not in got[0][0]
    assert [g[0] for g in got[1:]] == base[1:]


def test_stop_sequence_ends_generation_early(model_tok):
    model, tok = model_tok
    base = generate(model, tok, [PROMPTS[0]], GenerationConfig(max_new_tokens=30), progress=False)[0][0]
    stop = base[1:4]
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = generate(model, tok, [PROMPTS[0]], GenerationConfig(max_new_tokens=30, stop=(stop,)), progress=False)
    finally:
        handle.remove()
    assert got == [[base[: base.find(stop)]]]
    assert len(calls) < 10  # one forward per new token: stopped right after the stop string, not at 30


def test_stop_criterion_is_per_row_and_ignores_prompt(model_tok):
    _, tok = model_tok
    prompt = tok(["def f", "def f"], return_tensors="pt")["input_ids"]
    crit = StopOnStrings(tok, ("\ndef ",), prompt_length=prompt.shape[1])
    assert crit(prompt, None).tolist() == [False, False]  # "def" inside the prompt does not count
    tail_a = tok("\ndef g", add_special_tokens=False)["input_ids"]
    tail_b = tok("  return", add_special_tokens=False)["input_ids"]
    width = max(len(tail_a), len(tail_b))
    pad = tok.pad_token_id
    rows = torch.tensor([tail_a + [pad] * (width - len(tail_a)), tail_b + [pad] * (width - len(tail_b))])
    assert crit(torch.cat([prompt, rows], dim=1), None).tolist() == [True, False]


def test_truncate_at_stop_takes_earliest():
    assert truncate_at_stop("a\n#x\ndef y", ("\ndef ", "\n#")) == "a"
    assert truncate_at_stop("abc", ("zz",)) == "abc"
    assert truncate_at_stop("abc", ()) == "abc"


def test_sampling_n_per_prompt_seeded(model_tok):
    model, tok = model_tok
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.95, n=3, batch_size=2, seed=7)
    a = generate(model, tok, PROMPTS[:3], cfg, progress=False)
    b = generate(model, tok, PROMPTS[:3], cfg, progress=False)
    assert [len(r) for r in a] == [3, 3, 3]
    assert a == b  # same seed, same samples
    assert any(len(set(r)) > 1 for r in a)  # samples differ from each other
    c = generate(model, tok, PROMPTS[:3], GenerationConfig(**{**cfg.__dict__, "seed": 8}), progress=False)
    assert c != a


def test_greedy_n_repeats_single_completion(model_tok):
    model, tok = model_tok
    got = generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=5, n=4), progress=False)
    assert [len(set(r)) for r in got] == [1, 1] and [len(r) for r in got] == [4, 4]


def test_max_new_tokens_bounds_output(model_tok):
    model, tok = model_tok
    longer = generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=12), progress=False)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=3), progress=False)
    finally:
        handle.remove()
    assert len(calls) <= 3  # one batched forward per new token
    for short, long in zip(got, longer, strict=True):
        assert long[0].startswith(short[0]) and len(short[0]) < len(long[0])


def test_empty_and_bad_input(model_tok):
    model, tok = model_tok
    assert generate(model, tok, [], GenerationConfig(), progress=False) == []
    with pytest.raises(TypeError):
        generate(model, tok, "a prompt", GenerationConfig(), progress=False)
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="stop"):
        GenerationConfig(stop=("",))
    with pytest.raises(ValueError, match="n "):
        GenerationConfig(n=0)
