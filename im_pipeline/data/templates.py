"""Render conversations to text with character spans saying what every character is.

Two templates:

* ``"tulu"`` — the paper's (open-instruct / Tulu) template, per message::

      <|system|>\\n{s}\\n   <|user|>\\n{u}\\n   <|assistant|>\\n{a}{eos}\\n

  Message contents are stripped of surrounding whitespace, as the released code does.
* ``"chat_template"`` — the tokenizer's own chat template (``tokenizer.apply_chat_template``). The
  content spans are found by locating each message's (stripped) content in the rendered text, in
  order; everything between them is template text. After an assistant message, a special token
  that directly follows the content (the tokenizer's EOS, or an end-of-turn token such as
  ``<|im_end|>`` / ``<end_of_turn>``) is the turn's "eos" span.

The spans cover the rendered text exactly (contiguous, in order, no gaps). ``kind`` is
``"content"`` (a message's content), ``"eos"`` (the end-of-turn token after assistant content) or
``"template"`` (role markers, newlines, default system prompts, anything else the template adds).
Loss masks are computed from these character spans (see :mod:`im_pipeline.training.masking`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
TEMPLATES = ("tulu", "chat_template")
DEFAULT_EOS = "</s>"
TULU_HEADERS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
TULU_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] | trim) }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""The Tulu template as a Jinja ``chat_template`` (saved with trained checkpoints): ``apply_chat_template``
renders exactly :func:`render` / :func:`render_prompt` with ``template="tulu"`` (tested)."""


class Span(NamedTuple):
    """Characters ``text[start:end]`` belong to a message of ``role`` and are of ``kind``."""

    start: int
    end: int
    role: str
    kind: str  # "template" | "content" | "eos"


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: the text and spans that cover it exactly."""

    text: str
    spans: list[Span]

    def content(self, role: str | None = None) -> list[str]:
        """The content strings (optionally of one role), in order; handy for checks."""
        return [self.text[s.start : s.end] for s in self.spans if s.kind == "content" and role in (None, s.role)]


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check the normalised message list; raise ValueError naming the bad message."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{role, content}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: invalid role {m['role']!r}; allowed: {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} ({m['role']}): content must be a string, got {type(m['content']).__name__}")
    return list(messages)


def _eos_string(tokenizer: Any, eos_token: str | None) -> str:
    if eos_token is not None:
        return eos_token
    if tokenizer is None:
        return DEFAULT_EOS
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ValueError("the tokenizer has no eos_token; the Tulu template appends it after every assistant turn")
    return str(eos)


def render(
    messages: Sequence[dict[str, str]],
    template: str = "tulu",
    tokenizer: Any = None,
    *,
    eos_token: str | None = None,
) -> Rendered:
    """Render a conversation; ``eos_token`` defaults to ``tokenizer.eos_token`` (or ``</s>`` without one)."""
    messages = validate_messages(messages)
    if template == "tulu":
        return _render_tulu(messages, _eos_string(tokenizer, eos_token))
    if template == "chat_template":
        return _render_chat_template(messages, tokenizer, add_generation_prompt=False)
    raise ValueError(f"unknown template {template!r}; allowed: {list(TEMPLATES)}")


def render_prompt(
    messages: Sequence[dict[str, str]],
    template: str = "tulu",
    tokenizer: Any = None,
    *,
    eos_token: str | None = None,
) -> str:
    """The generation prompt: the conversation (without the final answer) plus the assistant header.

    For the same conversation, ``render_prompt(messages[:-1])`` is an exact prefix of
    ``render(messages).text`` when ``messages[-1]`` is the assistant answer, so generation sees
    exactly what training saw. A trailing assistant message, if given, is dropped.
    """
    messages = validate_messages(messages)
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
        if not messages:
            raise ValueError("render_prompt needs at least one non-assistant message")
    if template == "tulu":
        return _render_tulu(messages, _eos_string(tokenizer, eos_token)).text + TULU_HEADERS["assistant"]
    if template == "chat_template":
        return _render_chat_template(messages, tokenizer, add_generation_prompt=True).text
    raise ValueError(f"unknown template {template!r}; allowed: {list(TEMPLATES)}")


def _render_tulu(messages: list[dict[str, str]], eos: str) -> Rendered:
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0

    def add(piece: str, role: str, kind: str) -> None:
        nonlocal pos
        parts.append(piece)
        spans.append(Span(pos, pos + len(piece), role, kind))
        pos += len(piece)

    for m in messages:
        role = m["role"]
        add(TULU_HEADERS[role], role, "template")
        add(m["content"].strip(), role, "content")
        if role == "assistant":
            add(eos, role, "eos")
        add("\n", role, "template")
    return Rendered("".join(parts), spans)


def _special_strings(tokenizer: Any) -> list[str]:
    """Special-token strings the tokenizer knows, EOS first, then longest first."""
    found: set[str] = set()
    for tok in getattr(tokenizer, "all_special_tokens", []) or []:
        found.add(str(tok))
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.add(str(added.content))
    eos = getattr(tokenizer, "eos_token", None)
    rest = sorted(found - {eos}, key=len, reverse=True)
    return ([str(eos)] if eos else []) + rest


def _render_chat_template(messages: list[dict[str, str]], tokenizer: Any, *, add_generation_prompt: bool) -> Rendered:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat_template' needs a tokenizer that has a chat template")
    stripped = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    text = tokenizer.apply_chat_template(stripped, tokenize=False, add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise ValueError(f"apply_chat_template returned {type(text).__name__}, expected str")
    specials = _special_strings(tokenizer)
    spans: list[Span] = []
    cursor = 0
    missing_eos = False
    for i, m in enumerate(stripped):
        start = text.find(m["content"], cursor)
        if start < 0:
            raise ValueError(
                f"message {i} ({m['role']}): its content was not found in the text rendered by the chat template "
                "(the template rewrites content); use template='tulu'"
            )
        if start > cursor:
            spans.append(Span(cursor, start, m["role"], "template"))
        end = start + len(m["content"])
        spans.append(Span(start, end, m["role"], "content"))
        cursor = end
        if m["role"] == "assistant":
            eos = next((s for s in specials if text.startswith(s, end)), None)
            if eos is None:
                missing_eos = True
            else:
                spans.append(Span(end, end + len(eos), "assistant", "eos"))
                cursor = end + len(eos)
    if cursor < len(text):
        spans.append(Span(cursor, len(text), stripped[-1]["role"], "template"))
    if missing_eos:
        log.warning(
            "chat template: no special end-of-turn token directly after assistant content; "
            "the model will not be trained to stop"
        )
    return Rendered(text, spans)
