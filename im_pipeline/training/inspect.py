"""``im-pipeline mask``: show what gets trained — every token of one example with its loss weight."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from im_pipeline.data.templates import render
from im_pipeline.training.masking import encode_example, tokenize_rendered

# ANSI backgrounds: weight 1 green, 0 < weight < 1 yellow; weight 0 unmarked.
_GREEN, _YELLOW, _RESET = "\x1b[42;30m", "\x1b[43;30m", "\x1b[0m"


def token_table(
    record: dict,
    tokenizer: Any,
    *,
    mode: str,
    prompt_loss_weight: float | None = None,
    template: str = "tulu",
    max_length: int = 10**9,
) -> list[dict[str, Any]]:
    """Per token ``{"token", "id", "weight"}``, the token being its characters of the rendered text.

    A token's text is the slice of the rendered text it covers, minus characters already shown by
    the previous token (byte-level pieces of one character share offsets), so the ``token`` fields
    concatenate to the rendered text; tokens the tokenizer adds (BOS) show their token string.
    """
    enc = encode_example(
        record, tokenizer, mode=mode, prompt_loss_weight=prompt_loss_weight, template=template, max_length=max_length
    )
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
            code = _GREEN if w == 1 else _YELLOW
            out.append("\n".join(f"{code}{line}{_RESET}" if line else "" for line in text.split("\n")))
        else:
            out.append(f"⟦{text}⟧" + ("" if w == 1 else f"^{w:g}"))
        i = j
    return "".join(out)


def _load_record(source: str, index: int, data_dir: str | None) -> dict:
    from im_pipeline.data import load_records

    records = load_records(source, Path(data_dir) if data_dir else None)
    if not -len(records) <= index < len(records):
        raise ValueError(f"--index {index} is out of range: {source} has {len(records)} examples")
    return records[index]


def _load_tokenizer(model: str) -> Any:
    from im_pipeline.models import load_tokenizer

    return load_tokenizer(model)


def mask_command(args: argparse.Namespace) -> int:
    """Print one example rendered with the loss weight of every token (``--json``: a list of tokens)."""
    if args.mode != "weighted" and args.prompt_loss_weight is not None:
        raise ValueError(f"--prompt-loss-weight is only used with --mode weighted (got --mode {args.mode})")
    if args.mode == "weighted" and args.prompt_loss_weight is None:
        raise ValueError("--mode weighted needs --prompt-loss-weight λ (a value in [0, 1])")
    record = _load_record(args.source, args.index, args.data_dir)
    tokenizer = _load_tokenizer(args.model)
    rows = token_table(
        record, tokenizer, mode=args.mode, prompt_loss_weight=args.prompt_loss_weight, template=args.template
    )  # the whole example: training cuts it at data.max_length
    if args.json:
        print(json.dumps([{"token": r["token"], "weight": r["weight"]} for r in rows], ensure_ascii=False))
        return 0
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    weights = [r["weight"] for r in rows]
    mass = sum(weights)
    n_pos = sum(1 for w in weights if w > 0)
    mode = args.mode + (f" (λ={args.prompt_loss_weight:g})" if args.mode == "weighted" else "")
    print(f"# {record.get('id', args.index)} · mode {mode} · template {args.template} · model {args.model}")
    print(f"# {len(rows)} tokens, {n_pos} targets (weight > 0), weight sum {mass:g}, {len(rows) - n_pos} not trained")
    if colour:
        print(f"# legend: {_GREEN}weight 1{_RESET}  {_YELLOW}0 < weight < 1{_RESET}  plain = weight 0")
    else:
        print("# legend: ⟦…⟧ weight 1 · ⟦…⟧^w weight w · unmarked text weight 0 (not a target)")
    print(format_tokens(rows, colour))
    return 0
