"""Batched generation: order, left padding, stop sequences, sampling, seeding (tiny random model)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from im_pipeline.evaluation.generation import GenerationConfig, StopOnStrings, generate, truncate_at_stop
from im_pipeline.evaluation.greedy_batch import PreallocatedCache, greedy_batch

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
    assert len(calls) <= 1 + 3  # one prefill of the prompts, then one batched forward per new token
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


def _plain_ids(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1] :].tolist()


@pytest.fixture
def early_eos(model_tok):
    """The model's EOS set to a token that ends PROMPTS[0] after 3 tokens, so rows finish at different steps."""
    model, tok = model_tok
    before = model.generation_config.eos_token_id
    eos = _plain_ids(model, tok, PROMPTS[0], 12)[2]
    model.generation_config.eos_token_id = eos
    try:
        yield eos
    finally:
        model.generation_config.eos_token_id = before


def test_rows_finishing_at_eos_match_sequential_and_leave_the_batch(model_tok, early_eos):
    model, tok = model_tok
    expected_ids = [_plain_ids(model, tok, p, 12) for p in PROMPTS]
    lengths = [len(ids) for ids in expected_ids]
    assert min(lengths) <= 3 and max(lengths) == 12  # some rows end early at EOS, some run to the limit
    batch_rows = []
    handle = model.register_forward_hook(
        lambda _m, args, kwargs, _o: batch_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=12, batch_size=8), progress=False)
    finally:
        handle.remove()
    assert got == [[tok.decode(ids, skip_special_tokens=True)] for ids in expected_ids]
    # One forward per step with the rows still running: a finished row is no longer computed.
    steps = batch_rows[1:]  # after the one prefill chunk
    assert steps[0] == len(PROMPTS) and steps[-1] == sum(n == 12 for n in lengths)
    assert sum(steps) == sum(lengths)  # row-steps == tokens generated, nothing wasted on finished rows


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_greedy_batch_prefill_chunks_match_sequential(model_tok, early_eos, chunk):
    model, tok = model_tok
    prompts = sorted([*PROMPTS, ""], key=lambda p: -len(tok(p)["input_ids"]))
    rows = [tok(p)["input_ids"] for p in prompts]
    assert min(len(r) for r in rows) == 1  # the empty prompt is BOS alone: nothing to prefill for it
    gen_cfg = model.generation_config
    got = greedy_batch(model, rows, gen_cfg, 10, tok.pad_token_id, prefill_chunk=chunk)
    assert got == [_plain_ids(model, tok, p, 10) for p in prompts]


def test_greedy_batch_single_token_prompts(model_tok):
    model, tok = model_tok
    rows = [[tok.bos_token_id], [tok.bos_token_id]]
    got = greedy_batch(model, rows, model.generation_config, 5, tok.pad_token_id)
    expected = _plain_ids(model, tok, "", 5)
    assert got == [expected, expected]


def test_stop_string_row_leaves_batch_and_others_match(model_tok):
    model, tok = model_tok
    base = [r[0] for r in generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=16), progress=False)]
    stop = next(base[0][s : s + 2] for s in range(1, len(base[0]) - 2) if base[0][s : s + 2].strip())
    batch_rows = []
    handle = model.register_forward_hook(
        lambda _m, args, kwargs, _o: batch_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=16, stop=(stop,)), progress=False)
    finally:
        handle.remove()
    assert got == [[truncate_at_stop(b, (stop,))] for b in base]
    assert batch_rows[-1] < len(PROMPTS)  # the rows that met the stop string were dropped before the end


def test_preallocated_cache_holds_what_a_dynamic_cache_holds():
    from transformers import DynamicCache

    torch.manual_seed(0)
    ours, ref = PreallocatedCache(num_layers=1, capacity=4), DynamicCache()
    for n in (3, 1, 1, 2):  # the last update outgrows the capacity
        k, v = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        got, want = ours.update(k, v, 0), ref.update(k, v, 0)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert ours.get_seq_length() == ref.get_seq_length() == 7
    keep = torch.tensor([2, 0])
    ours.batch_select_indices(keep)
    ref.batch_select_indices(keep)
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    got, want = ours.update(k, v, 0), ref.update(k, v, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# -- the KV-cache budget -------------------------------------------------------------------------------------------


def test_plan_batch_caps_rows_and_splits_samples():
    from im_pipeline.evaluation.generation import plan_batch

    assert plan_batch(10, 1, 8, None) == (8, 1)  # no budget: batch_size alone
    assert plan_batch(3, 20, 32, None) == (3, 20)
    assert plan_batch(100, 20, 32, 100) == (5, 20)  # HumanEval n=20: 5 prompts of 20 rows fit in 100
    assert plan_batch(100, 20, 32, 7) == (1, 7)  # one prompt, its 20 samples 7 at a time
    assert plan_batch(100, 1, 8, 0) == (1, 1)  # never less than one row


def test_kv_bytes_per_token_is_the_plan_formula_for_the_model(model_tok):
    from im_pipeline.evaluation.generation import kv_bytes_per_row_token

    model, _ = model_tok
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    assert kv_bytes_per_row_token(model) == 2 * c.num_hidden_layers * kv_heads * head_dim * 4  # fp32


def _recording(monkeypatch, name):
    import im_pipeline.evaluation.generation as generation

    calls, inner = [], getattr(generation, name)

    def spy(model, tokenizer, batch, cfg, gen_cfg, *rest):
        calls.append((len(batch), gen_cfg.num_return_sequences))
        return inner(model, tokenizer, batch, cfg, gen_cfg, *rest)

    monkeypatch.setattr(generation, name, spy)
    return calls


def test_greedy_batches_split_under_a_small_kv_budget_with_identical_outputs(model_tok, monkeypatch):
    from im_pipeline.evaluation.generation import kv_bytes_per_row_token

    model, tok = model_tok
    free = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=12, batch_size=8), progress=False)
    longest = max(len(tok(p)["input_ids"]) for p in PROMPTS)
    budget = 2 * kv_bytes_per_row_token(model) * (longest + 12)  # two rows of the longest prompt
    calls = _recording(monkeypatch, "_greedy_texts")
    cfg = GenerationConfig(max_new_tokens=12, batch_size=8, kv_cache_bytes=budget)
    assert generate(model, tok, PROMPTS, cfg, progress=False) == free
    sizes = [n for n, _ in calls]
    assert sum(sizes) == len(PROMPTS) and sizes[0] == 2 and max(sizes) <= 3  # shorter prompts: a few more rows


def test_sampled_rows_of_one_prompt_split_into_calls_under_the_budget(model_tok, monkeypatch):
    from im_pipeline.evaluation.generation import kv_bytes_per_row_token

    model, tok = model_tok
    longest = max(len(tok(p)["input_ids"]) for p in PROMPTS[:2])
    budget = 2 * kv_bytes_per_row_token(model) * (longest + 6)  # 2 rows: fewer than n = 5 samples of one prompt
    calls = _recording(monkeypatch, "_sampled_texts")
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, n=5, batch_size=4, seed=3, kv_cache_bytes=budget)
    got = generate(model, tok, PROMPTS[:2], cfg, progress=False)
    assert [len(r) for r in got] == [5, 5]
    # the longer prompt: 2 + 2 + 1 samples; the shorter one leaves room for 3 rows: 3 + 2
    assert calls == [(1, 2), (1, 2), (1, 1), (1, 3), (1, 2)]
