"""Judges for AlpacaEval: identity, label protocols, local label scoring, the OpenAI client path, the cache."""

from __future__ import annotations

import math

import pytest
import torch
from openai_stub_server import StubOpenAIServer

from im_pipeline.config import JudgeConfig
from im_pipeline.evaluation.alpaca_eval import judges
from im_pipeline.evaluation.alpaca_eval.judges import (
    AnnotationCache,
    JudgeError,
    LocalHFJudge,
    OpenAIJudge,
    choice_logprobs,
    judge_identity,
    protocol_for,
)
from im_pipeline.evaluation.alpaca_eval.judging import annotator_config

KEY = "sk-test-7f3a9c-never-log-me"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_identity_names_host_never_key_or_path():
    j = JudgeConfig(kind="openai", model="gpt-4", base_url="https://user:pw@api.example.com:8443/v1/x?token=abc")
    assert judge_identity(j) == {"kind": "openai", "model": "gpt-4", "base_url_host": "api.example.com:8443"}
    assert judge_identity(JudgeConfig(kind="openai", model="m"))["base_url_host"] == "api.openai.com"
    assert judge_identity(JudgeConfig(kind="local_hf", model="x"))["base_url_host"] is None


def test_protocol_completions_parse_with_alpaca_eval_parsers():
    from alpaca_eval.completion_parsers import logprob_parser, ranking_parser

    v1 = protocol_for(annotator_config("alpaca_eval_gpt4"))
    assert [ranking_parser(c) for c in v1.completions] == [[1], [2]]
    assert v1.completions[0].startswith(v1.prefix) and v1.labels == ("1", "2")
    cfg2 = annotator_config("weighted_alpaca_eval_gpt4_turbo")
    v2 = protocol_for(cfg2)
    assert v2.labels == ("m", "M") and v2.logprob_format
    lps = judges._normalise([math.log(0.8), math.log(0.2)])
    pref = logprob_parser(judges._logprob_completion(v2.labels, lps), **cfg2["completion_parser_kwargs"])
    assert pref == [pytest.approx(2 - 0.8)]  # P(first better) = 0.8 -> preference 1.2
    with pytest.raises(JudgeError, match="not supported"):
        protocol_for({"fn_completion_parser": "regex_parser"})


def test_choice_logprobs_match_full_sequence_scoring(tiny):
    model, tok = tiny
    context = "Question: Which answer is correct?\nAnswer:"
    choices = [" A", " yes no", " The quick brown fox"]
    got = choice_logprobs(model, tok, context, choices, add_special_tokens=True)
    ctx = tok(context)["input_ids"]
    for choice, lp in zip(choices, got, strict=True):
        full = tok(context + choice)["input_ids"]
        assert full[: len(ctx)] == ctx
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0], -1)
        want = sum(float(logp[i - 1, full[i]]) for i in range(len(ctx), len(full)))
        assert lp == pytest.approx(want, abs=1e-4)
    assert len({round(x, 6) for x in got}) == 3


def test_local_judge_answers_always_parse(tiny):
    from alpaca_eval.completion_parsers import logprob_parser, ranking_parser

    model, tok = tiny
    judge = LocalHFJudge(model=model, tokenizer=tok)
    prompt = "<|im_start|>system\nBe fair.\n<|im_end|>\n<|im_start|>user\nWhich is better, {a} or {b}?\n<|im_end|>"
    prompts = [prompt.format(a=a, b=b) for a, b in [("cat", "dog"), ("Paris", "Rome"), ("1", "2")]]
    v1 = protocol_for(annotator_config("alpaca_eval_gpt4"))
    out = judge.fn_completions(v1)(prompts)
    assert [ranking_parser(c)[0] in (1, 2) for c in out["completions"]] == [True] * 3
    cfg2 = annotator_config("weighted_alpaca_eval_gpt4_turbo")
    v2 = protocol_for(cfg2)
    out2 = judge.fn_completions(v2)(prompts)
    for prompt, c in zip(prompts, out2["completions_all"], strict=True):
        p_first = math.exp(judge.score(prompt, v2)[0])
        assert logprob_parser(c, **cfg2["completion_parser_kwargs"]) == [pytest.approx(2 - p_first)]
    assert judge.calls == 9


def test_openai_judge_needs_key_in_env(monkeypatch):
    monkeypatch.delenv("IM_TEST_JUDGE_KEY", raising=False)
    cfg = JudgeConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="IM_TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="IM_TEST_JUDGE_KEY"):
        OpenAIJudge(cfg)


def test_openai_judge_retries_a_500_and_parses(tiny_model_dir, monkeypatch):
    from alpaca_eval.completion_parsers import ranking_parser

    monkeypatch.setenv("IM_TEST_JUDGE_KEY", KEY)
    v1 = protocol_for(annotator_config("alpaca_eval_gpt4"))
    prompt = "<|im_start|>user\nRank: one or two?\n<|im_end|>"
    with StubOpenAIServer(str(tiny_model_dir), api_key=KEY, fail_first=1) as srv:
        cfg = JudgeConfig(kind="openai", model="tiny", base_url=srv.base_url, api_key_env="IM_TEST_JUDGE_KEY")
        fn = OpenAIJudge(cfg, guided_choice=True).fn_completions(v1)
        out = fn([prompt], model_name="gpt-4", max_tokens=100, temperature=0)
        assert [r["status"] for r in srv.requests] == [500, 200]  # retried once, by the client's backoff
        assert out["completions"][0] in v1.completions
        assert ranking_parser(out["completions"][0])[0] in (1, 2)
        # free decoding from the same endpoint: real text from the model, same path
        free = OpenAIJudge(cfg).fn_completions(None)([prompt], max_tokens=5, temperature=0)
        assert isinstance(free["completions"][0], str) and srv.count() == 3


def test_openai_judge_does_not_retry_4xx_and_hides_key(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("IM_TEST_JUDGE_KEY", KEY + "-wrong")
    with StubOpenAIServer(str(tiny_model_dir), api_key=KEY) as srv:
        cfg = JudgeConfig(
            kind="openai", model="tiny", base_url=srv.base_url, api_key_env="IM_TEST_JUDGE_KEY", max_retries=3
        )
        fn = OpenAIJudge(cfg).fn_completions(None)
        with pytest.raises(JudgeError, match="HTTP 401") as err:
            fn(["<|im_start|>user\nhi\n<|im_end|>"], max_tokens=1)
        assert srv.count() == 1
        assert KEY not in str(err.value)


def test_openai_judge_gives_up_after_max_retries(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("IM_TEST_JUDGE_KEY", KEY)
    with StubOpenAIServer(str(tiny_model_dir), api_key=KEY, fail_first=10) as srv:
        cfg = JudgeConfig(
            kind="openai", model="tiny", base_url=srv.base_url, api_key_env="IM_TEST_JUDGE_KEY", max_retries=1
        )
        with pytest.raises(JudgeError, match="HTTP 500"):
            OpenAIJudge(cfg).fn_completions(None)(["<|im_start|>user\nhi\n<|im_end|>"], max_tokens=1)
        assert srv.count() == 2  # first try + max_retries


def test_annotation_cache_keys_and_persistence(tmp_path):
    ident = {"kind": "local_hf", "model": "a", "base_url_host": None}
    k = AnnotationCache.key(ident, "alpaca_eval_gpt4", "i", "o1", "o2")
    assert k != AnnotationCache.key(ident, "alpaca_eval_gpt4", "i", "o2", "o1")
    assert k != AnnotationCache.key({**ident, "model": "b"}, "alpaca_eval_gpt4", "i", "o1", "o2")
    assert k != AnnotationCache.key(ident, "weighted_alpaca_eval_gpt4_turbo", "i", "o1", "o2")
    cache = AnnotationCache(tmp_path / "c.json")
    cache.put(k, {"preference": 2.0})
    cache.save()
    again = AnnotationCache(tmp_path / "c.json")
    assert again.get(k) == {"preference": 2.0} and len(again) == 1
