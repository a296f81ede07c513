"""Encoding a split for training, the held-out loss on output tokens (IT mask), and the lr_scale ratio of output
tokens to im_release target tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from im_pipeline.loss_modes import IGNORE_INDEX, OUTPUT_ONLY, LossMode, LossSpec
from im_pipeline.training.loss import token_ce


def encode_records(
    records: Sequence[dict],
    tokenizer: Any,
    *,
    loss: LossSpec,
    template: str,
    max_length: int,
    on_overlength: str = "truncate",
) -> tuple[list[dict], dict[str, int]]:
    """Encode records with ``encode_example`` and apply the over-length policy.

    ``encode_example`` keeps the first ``max_length`` tokens (as open-instruct does) and says whether it cut; with
    ``on_overlength="drop"`` such examples are dropped instead. Examples left without any output-token target (IT
    mask; e.g. a prompt longer than ``max_length``) are dropped in every mode, so all arms train on the same examples.
    """
    from im_pipeline.training.masking import encode_example

    if on_overlength not in ("truncate", "drop"):
        raise ValueError(f"on_overlength must be 'truncate' or 'drop', got {on_overlength!r}")
    out: list[dict] = []
    stats = {"n_in": len(records), "n_truncated": 0, "n_dropped_overlength": 0, "n_dropped_no_output": 0}
    for rec in records:
        enc = encode_example(rec, tokenizer, loss=loss, template=template, max_length=max_length)
        if enc["truncated"]:
            if on_overlength == "drop":
                stats["n_dropped_overlength"] += 1
                continue
            stats["n_truncated"] += 1
        if not any(w > 0 for w in enc["it_weights"][1:]):
            stats["n_dropped_no_output"] += 1
            continue
        kept = {
            "input_ids": list(enc["input_ids"]),
            "loss_weights": [float(x) for x in enc["loss_weights"]],
            "it_weights": [float(x) for x in enc["it_weights"]],
        }
        if "seq_scale" in enc:  # arm IT-w (training.masking)
            kept["seq_scale"] = float(enc["seq_scale"])
        out.append(kept)
    stats["n_out"] = len(out)
    return out, stats


LR_SCALE_RATIO = "output_over_im_release"


def output_over_im_release(
    records: Sequence[dict], tokenizer: Any, *, template: str, max_length: int, on_overlength: str = "truncate"
) -> dict[str, Any]:
    """Σ output-token targets (IT mask) / Σ ``im_release`` targets over ``records``, encoded as training encodes them
    (same template, max length and over-length policy): the share of IM's trained tokens that are outputs, i.e. the
    learning-rate factor that gives IT the per-output-token step IM takes under token normalisation."""
    im_release = LossSpec(LossMode.im_release)
    enc, _ = encode_records(
        records, tokenizer, loss=im_release, template=template, max_length=max_length, on_overlength=on_overlength
    )
    output = sum(sum(1 for w in e["it_weights"][1:] if w > 0) for e in enc)  # position 0 is never a target
    trained = sum(sum(1 for w in e["loss_weights"][1:] if w > 0) for e in enc)
    if not trained:
        raise ValueError("lr_scale output_over_im_release: no im_release target tokens in the training sample")
    return {"output_tokens": output, "im_release_tokens": trained, "ratio": output / trained}


@torch.no_grad()
def encoded_output_losses(
    model: torch.nn.Module, encoded: Sequence[dict], pad_token_id: int, batch_size: int
) -> tuple[float, float]:
    """(token mean, per-example mean) of the CE over the IT-mask targets of pre-encoded examples. The per-example
    mean (each example's token mean, then the mean over examples) is the released compute_loss.py's reduction."""
    from im_pipeline.training.masking import WeightedCollator

    if not encoded:
        raise ValueError("no examples to compute the output-token loss on")
    collate = WeightedCollator(pad_token_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, per_example = 0.0, 0.0, []
    # Sorted by length: less padding, same result (neither mean depends on the order).
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    try:
        for start in range(0, len(order), batch_size):
            batch = collate([encoded[i] for i in order[start : start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = torch.where(batch["it_weights"] > 0, batch["input_ids"], torch.full_like(batch["input_ids"], -100))
            w = torch.where(labels[:, 1:] == IGNORE_INDEX, 0.0, batch["it_weights"][:, 1:].float())
            sums = (token_ce(logits, labels) * w).sum(dim=1)
            counts = w.sum(dim=1)
            total += float(sums.sum())
            count += float(counts.sum())
            per_example += [float(a / b) for a, b in zip(sums, counts, strict=True) if b > 0]
    finally:
        model.train(was_training)
    return total / count, sum(per_example) / len(per_example)


def output_token_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict],
    *,
    template: str = "tulu",
    max_length: int = 512,
    batch_size: int = 8,
) -> float:
    """Mean cross-entropy over the output tokens (IT mask: assistant content + EOS) of ``records``.

    Token mean over all output tokens of all records (not per-example), the same for every arm, so IT and IM runs are
    comparable. Over-length examples are truncated to ``max_length``. The model is evaluated in eval mode (no dropout,
    no NEFTune noise) and its mode restored afterwards.
    """
    encoded, _ = encode_records(records, tokenizer, loss=OUTPUT_ONLY, template=template, max_length=max_length)
    return encoded_output_losses(model, encoded, tokenizer.pad_token_id, batch_size)[0]
