"""Rendering: exact Tulu text, spans that cover it, chat templates, generation prompts as exact prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from im_pipeline.data.templates import Span, render, render_prompt

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  What is the capital of France?\n"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome.\n\nIt is old."},
]

CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma-like: no system role, system text is merged into the first user turn, "assistant" → "model".
GEMMA_LIKE = (
    "{{ bos_token }}{% set sys = '' %}{% if messages[0]['role'] == 'system' %}"
    "{% set sys = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if loop.first %}{{ sys }}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _chat_tokenizer(tiny_model_dir: Path, template: str, specials: list[str]):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    t.add_tokens(specials, special_tokens=True)
    t.chat_template = template
    return t


def test_tulu_exact_text_and_spans():
    r = render(CONV)
    assert r.text == (
        "<|system|>\nBe brief.\n"
        "<|user|>\nWhat is the capital of France?\n"
        "<|assistant|>\nParis.</s>\n"
        "<|user|>\nAnd of Italy?\n"
        "<|assistant|>\nRome.\n\nIt is old.</s>\n"
    )
    # Spans are contiguous, in order, and cover the whole text.
    assert r.spans[0].start == 0 and r.spans[-1].end == len(r.text)
    assert all(a.end == b.start for a, b in zip(r.spans, r.spans[1:], strict=False))
    labelled = [(r.text[s.start : s.end], s.role, s.kind) for s in r.spans]
    assert labelled[:8] == [
        ("<|system|>\n", "system", "template"),
        ("Be brief.", "system", "content"),
        ("\n", "system", "template"),
        ("<|user|>\n", "user", "template"),
        ("What is the capital of France?", "user", "content"),
        ("\n", "user", "template"),
        ("<|assistant|>\n", "assistant", "template"),
        ("Paris.", "assistant", "content"),
    ]
    assert labelled[8:10] == [("</s>", "assistant", "eos"), ("\n", "assistant", "template")]
    assert r.content("user") == ["What is the capital of France?", "And of Italy?"]
    assert r.content("assistant") == ["Paris.", "Rome.\n\nIt is old."]
    assert [s for s in r.spans if s.kind == "eos"] == [
        Span(81, 85, "assistant", "eos"),
        Span(140, 144, "assistant", "eos"),
    ]


def test_tulu_uses_the_tokenizer_eos(tok):
    r = render(CONV[1:3], tokenizer=tok, eos_token="<|im_end|>")
    assert r.text.endswith("Paris.<|im_end|>\n")
    assert render(CONV[1:3], tokenizer=tok).text.endswith("Paris.</s>\n")


def test_render_prompt_is_exact_prefix_of_render_for_every_turn(tok):
    full = render(CONV, tokenizer=tok).text
    for k, m in enumerate(CONV):
        if m["role"] != "assistant":
            continue
        prompt = render_prompt(CONV[:k], tokenizer=tok)
        assert prompt.endswith("<|assistant|>\n")
        assert full.startswith(prompt)
        assert render(CONV[: k + 1], tokenizer=tok).text == prompt + m["content"].strip() + "</s>\n"
        # The prompt tokenises to exactly the prefix of the training tokens: generation sees what training saw.
        ids_prompt = tok(prompt)["input_ids"]
        assert tok(full)["input_ids"][: len(ids_prompt)] == ids_prompt
    # A trailing assistant answer is dropped.
    assert render_prompt(CONV[:3]) == render_prompt(CONV[:2])


def test_chat_template_spans_and_prompt(tiny_model_dir: Path):
    t = _chat_tokenizer(tiny_model_dir, CHATML, ["<|im_start|>", "<|im_end|>"])
    conv = CONV[1:]
    r = render(conv, "chat_template", t)
    assert r.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert r.content() == [m["content"].strip() for m in conv]
    # The default system prompt is template text, not content.
    assert "You are a helpful assistant." in r.text[r.spans[0].start : r.spans[0].end]
    assert r.spans[0].kind == "template"
    eos = [(r.text[s.start : s.end], s.role) for s in r.spans if s.kind == "eos"]
    assert eos == [("<|im_end|>", "assistant"), ("<|im_end|>", "assistant")]
    assert r.spans[-1].end == len(r.text)
    assert all(a.end == b.start for a, b in zip(r.spans, r.spans[1:], strict=False))
    prompt = render_prompt(conv[:3], "chat_template", t)
    assert prompt.endswith("<|im_start|>assistant\n") and r.text.startswith(prompt)


def test_chat_template_that_merges_system_into_user(tiny_model_dir: Path):
    t = _chat_tokenizer(tiny_model_dir, GEMMA_LIKE, ["<start_of_turn>", "<end_of_turn>"])
    r = render(CONV, "chat_template", t)
    assert r.text.startswith("<s><start_of_turn>user\nBe brief.\n\nWhat is the capital")
    assert [(c, s.role) for s in r.spans if s.kind == "content" for c in [r.text[s.start : s.end]]][:2] == [
        ("Be brief.", "system"),
        ("What is the capital of France?", "user"),
    ]
    assert [r.text[s.start : s.end] for s in r.spans if s.kind == "eos"] == ["<end_of_turn>"] * 2
    assert r.text.startswith(render_prompt(CONV[:4], "chat_template", t))


def test_bad_input_is_refused(tok):
    with pytest.raises(ValueError, match="invalid role"):
        render([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty"):
        render([])
    with pytest.raises(ValueError, match="content must be a string"):
        render([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="unknown template"):
        render(CONV, "alpaca")
    with pytest.raises(ValueError, match="chat template"):
        render(CONV, "chat_template", tok)  # the fixture tokenizer has none
    with pytest.raises(ValueError, match="non-assistant"):
        render_prompt([{"role": "assistant", "content": "x"}])


def test_chat_template_that_rewrites_content_is_refused(tiny_model_dir: Path):
    t = _chat_tokenizer(tiny_model_dir, "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}", [])
    with pytest.raises(ValueError, match="not found"):
        render(CONV[1:3], "chat_template", t)
