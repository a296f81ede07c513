"""Per-token loss weights for every loss mode, computed from character spans, and the collator.

The conversation is rendered (:func:`im_pipeline.data.templates.render`), every *character* gets a
weight from the span it belongs to, and every token gets the weight of one of its characters via
the fast tokenizer's offsets. No token-id matching, so it is right for any tokenizer.

Character weights per mode (λ = ``prompt_loss_weight``):

========================  ====  ====  ==========  ========
span                      it    im    im_release  weighted
========================  ====  ====  ==========  ========
assistant content         1     1     1           1
eos after assistant       1     1     1           1
user content              0     1     1           λ
system content            0     1     1           λ
template text             0     0     1 (*)       0
========================  ====  ====  ==========  ========

System content is part of the instruction: the paper's Eq. 4 puts loss on the instruction, so
``im`` trains on it like user content and ``weighted`` gives it λ; ``it`` never does.

(*) ``im_release`` reproduces the released code (``use_lm_loss``): it tries to mask the role
markers by matching the token ids of ``"<|user|>\\n"`` etc. tokenised *with* BOS, which only
matches the very start of the text, so only the leading ``<s><|user|>\\n`` (the first header) is
masked. Here: every character from the first content character to the end of the last
content/eos span gets weight 1. The trailing newline after the final EOS weighs 0 (the released
code strips it from the text, so it is never a target there).

Token rule: a token's weight is the weight of its first non-whitespace character (its first
character if it is all whitespace). So a token that merges template punctuation with content,
e.g. ``".\\n"`` at the end of a user turn, belongs to the content it starts with, and a token
like ``"\\nHello"`` belongs to the content word it predicts. Tokens without characters (BOS and
other special tokens the tokenizer adds) weigh 0, and position 0 is never a target.

``it_w`` (arm IT-w) has the IT mask and one factor per example, ``seq_scale`` = n_out / n_im_release (the example's
output-token targets over its ``im_release`` targets, both after truncation): under per-example ("sequence")
normalisation its loss is Σ_out ce / n_im_release, the share IM gives the example's output tokens, without any
instruction loss. A per-token weight cannot carry it (the per-example mean Σ w·ce / Σ w cancels any constant factor),
so the factor travels beside the weights and multiplies the example's mean (:func:`im_pipeline.training.loss.
reduce_token_values`); under "token" normalisation it is refused (the config rejects it).

``loss_weights[i]`` is the weight of *predicting* ``input_ids[i]`` from ``input_ids[:i]``
(aligned with ``input_ids``, like Hugging Face ``labels``); the loss does the shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from im_pipeline.data.templates import Rendered, render
from im_pipeline.loss_modes import IGNORE_INDEX, OUTPUT_ONLY, LossMode, LossSpec


def char_weights(rendered: Rendered, loss: LossSpec) -> list[float]:
    """Weight of every character of ``rendered.text`` under ``loss.mode`` (see the module docstring)."""
    weights = [0.0] * len(rendered.text)
    for span in rendered.spans:
        if span.kind == "template":
            continue
        w = 1.0 if span.role == "assistant" else loss.user_weight  # assistant content / eos; user / system content
        if w:
            weights[span.start : span.end] = [w] * (span.end - span.start)
    if loss.mode is LossMode.im_release:
        trained = [s for s in rendered.spans if s.kind != "template"]
        if trained:
            start, end = trained[0].start, trained[-1].end
            weights[start:end] = [1.0] * (end - start)
    return weights


def anchor_positions(text: str, offsets: Sequence[tuple[int, int]]) -> list[int | None]:
    """For every token, the character that decides its weight: its first non-whitespace character
    (its first character if it is all whitespace); None for tokens without characters (BOS)."""
    out: list[int | None] = []
    for start, end in offsets:
        if end <= start:
            out.append(None)
            continue
        piece = text[start:end]
        skip = len(piece) - len(piece.lstrip())
        out.append(start + skip if skip < len(piece) else start)
    return out


def tokenize_rendered(rendered: Rendered, tokenizer: Any, template: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of the rendered text (BOS added once, special tokens kept)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("masking needs a fast (Rust) tokenizer: character offsets come from return_offsets_mapping")
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (template == "chat_template" and bos and rendered.text.startswith(bos))
    enc = tokenizer(rendered.text, add_special_tokens=add_special, return_offsets_mapping=True, truncation=False)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    # The EOS written into the text must come out as the special token, else the model never learns to stop.
    for span in rendered.spans:
        if span.kind != "eos":
            continue
        inside = [i for i, (s, e) in enumerate(offsets) if s < span.end and e > span.start]
        piece = rendered.text[span.start : span.end]
        if len(inside) != 1 or tokenizer.convert_tokens_to_ids(piece) != ids[inside[0]]:
            raise ValueError(f"end-of-turn token {piece!r} was not tokenised as one special token by this tokenizer")
    return ids, offsets


def encode_example(
    record: dict,
    tokenizer: Any,
    *,
    loss: LossSpec,
    template: str = "tulu",
    max_length: int = 512,
) -> dict:
    """Tokenise one normalised record and weight every target position.

    Returns ``input_ids``, ``loss_weights`` (``loss.mode``'s), ``it_weights`` (the IT mask, for held-out
    loss on output tokens), ``truncated`` (the sequence was cut at ``max_length``, keeping its
    start) and ``n_targets`` (positions with weight > 0); under ``it_w`` also ``seq_scale`` (module docstring).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if not isinstance(record, dict) or "messages" not in record:
        raise ValueError(f"record must be a dict with 'messages', got {record!r:.80}")
    messages = record["messages"]
    rendered = render(messages, template, tokenizer)
    ids, offsets = tokenize_rendered(rendered, tokenizer, template)
    anchors = anchor_positions(rendered.text, offsets)
    chars, it_chars = char_weights(rendered, loss), char_weights(rendered, OUTPUT_ONLY)
    weights = [0.0 if p is None else chars[p] for p in anchors]
    it = [0.0 if p is None else it_chars[p] for p in anchors]
    weights[0] = it[0] = 0.0  # nothing predicts the first token
    truncated = len(ids) > max_length
    ids, weights, it = ids[:max_length], weights[:max_length], it[:max_length]
    out = {
        "input_ids": ids,
        "loss_weights": weights,
        "it_weights": it,
        "truncated": truncated,
        "n_targets": sum(1 for w in weights if w > 0),
    }
    if loss.mode is LossMode.it_w:
        release = char_weights(rendered, LossSpec(LossMode.im_release))
        n_im = sum(1 for p in anchors[1:max_length] if p is not None and release[p] > 0)
        out["seq_scale"] = sum(1 for w in it if w > 0) / n_im if n_im else 1.0
    return out


class WeightedCollator:
    """Pad encoded examples to the longest in the batch (right padding) and build tensors.

    Emits ``input_ids``, ``attention_mask``, ``labels`` (``-100`` where the weight is 0 or padding),
    ``loss_weights`` and ``it_weights`` (float, 0 on padding), and ``seq_scale`` ``[n]`` when the examples carry one
    (``it_w``; 1.0 for an example without). Other keys are dropped.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if pad_token_id is None:
            raise ValueError("WeightedCollator needs a pad_token_id (set tokenizer.pad_token)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        loss_weights = torch.zeros((n, length), dtype=torch.float32)
        it_weights = torch.zeros((n, length), dtype=torch.float32)
        for row, f in enumerate(features):
            k = len(f["input_ids"])
            if not (len(f["loss_weights"]) == len(f["it_weights"]) == k):
                raise ValueError(f"example {row}: input_ids, loss_weights and it_weights differ in length")
            ids = torch.tensor(f["input_ids"], dtype=torch.long)
            w = torch.tensor(f["loss_weights"], dtype=torch.float32)
            input_ids[row, :k] = ids
            attention_mask[row, :k] = 1
            loss_weights[row, :k] = w
            it_weights[row, :k] = torch.tensor(f["it_weights"], dtype=torch.float32)
            labels[row, :k] = torch.where(w > 0, ids, torch.full_like(ids, IGNORE_INDEX))
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "loss_weights": loss_weights,
            "it_weights": it_weights,
        }
        if any("seq_scale" in f for f in features):
            batch["seq_scale"] = torch.tensor([float(f.get("seq_scale", 1.0)) for f in features], dtype=torch.float32)
        return batch
