"""What gets trained: every token of one example with its loss weight (``im-pipeline mask`` prints it)."""

from __future__ import annotations

from typing import Any

from im_pipeline.data.templates import render
from im_pipeline.loss_modes import LossSpec
from im_pipeline.training.masking import encode_example, tokenize_rendered

# ANSI backgrounds: weight 1 green, 0 < weight < 1 yellow; weight 0 unmarked.
GREEN, YELLOW, RESET = "\x1b[42;30m", "\x1b[43;30m", "\x1b[0m"


def token_table(
    record: dict,
    tokenizer: Any,
    *,
    loss: LossSpec,
    template: str = "tulu",
    max_length: int = 10**9,
) -> list[dict[str, Any]]:
    """Per token ``{"token", "id", "weight"}``, the token being its characters of the rendered text.

    A token's text is the slice of the rendered text it covers, minus characters already shown by
    the previous token (byte-level pieces of one character share offsets), so the ``token`` fields
    concatenate to the rendered text; tokens the tokenizer adds (BOS) show their token string.
    """
    enc = encode_example(record, tokenizer, loss=loss, template=template, max_length=max_length)
    rendered = render(record["messages"], template, tokenizer)
    ids, offsets = tokenize_rendered(rendered, tokenizer, template)
    assert ids[: len(enc["input_ids"])] == enc["input_ids"]
    rows: list[dict[str, Any]] = []
    cursor = 0
    for tid, (start, end), w in zip(enc["input_ids"], offsets, enc["loss_weights"], strict=False):
        if end <= start:
            piece = tokenizer.convert_ids_to_tokens(tid)
        else:
            piece = rendered.text[max(start, cursor) : end]
            cursor = max(cursor, end)
        rows.append({"token": piece, "id": int(tid), "weight": float(w)})
    return rows


def format_tokens(rows: list[dict[str, Any]], colour: bool) -> str:
    """Runs of tokens with equal weight: coloured, or bracketed ``⟦…⟧`` (weight 1) / ``⟦…⟧^w`` (0<w<1)."""
    out: list[str] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j]["weight"] == rows[i]["weight"]:
            j += 1
        text = "".join(r["token"] for r in rows[i:j])
        w = rows[i]["weight"]
        if w == 0:
            out.append(text)
        elif colour:
            # Colour each line separately so backgrounds do not bleed over line ends.
            code = GREEN if w == 1 else YELLOW
            out.append("\n".join(f"{code}{line}{RESET}" if line else "" for line in text.split("\n")))
        else:
            out.append(f"⟦{text}⟧" + ("" if w == 1 else f"^{w:g}"))
        i = j
    return "".join(out)
