"""Padding-free batches (``training.padding_free``): :class:`PaddingFreeCollator` packs a micro-batch's examples into
the few rows of least estimated compute, and the FLOP estimates that weigh longer rows against more rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from im_pipeline.loss_modes import IGNORE_INDEX
from im_pipeline.training.masking import WeightedCollator

DEFAULT_ATTENTION_COST = 1 / 4096
"""Attention FLOPs per context position over linear FLOPs per token when the model's shape is not known (the order of
SmolLM2-135M's, 1 / 3892: :func:`attention_cost_of`)."""


class PaddingFreeCollator:
    """Padding-free batches (``training.padding_free``): the micro-batch's examples concatenated into a few rows.

    The model inputs come from ``transformers.DataCollatorWithFlattening``, one call per row: ``input_ids``
    ``[R, L]``, ``position_ids`` restarting at 0 for each example, and ``packed_labels`` with ``-100`` at the first
    token of each example (so the last token of one example never predicts the first of the next). Given
    ``position_ids`` and no ``attention_mask``, transformers' ``masking_utils`` (``find_packed_sequence_indices``)
    builds a block-diagonal causal mask: attention stays within each example (sdpa, eager and flash attention alike).

    Rows, not always one row: attention over a row of length ``L`` costs ``O(L)`` per token whatever the mask (sdpa
    computes the masked-out blocks too), so one row of n examples costs up to n times the padded batch's attention
    (≈ +50% compute for SmolLM2-135M at 8 × 256 tokens). :meth:`assign_rows` spreads the examples over ``R`` rows
    (longest first onto the shortest row) and picks the ``R`` of least estimated cost, ``R · L · (1 + a · L)`` with
    ``a = attention_cost`` (attention FLOPs per context position over linear FLOPs per token, see
    :func:`attention_cost_of`). A row shorter than the longest is filled by one padding
    segment of its own (``pad_token_id``, positions from 0, no targets): it attends only to itself, and no real token
    attends to it.

    ``one_row`` (:func:`packs_one_row`: flash attention): every example in a single row. Flash-attention kernels take
    the packed sequences' boundaries (cu_seqlens) from ``position_ids`` only when the batch is one row; with more
    rows transformers would hand them a plain causal mask and examples of one row would attend to each other.

    The loss side keeps the :class:`WeightedCollator` layout: ``labels``, ``loss_weights`` and ``it_weights`` are
    ``[n, T]`` exactly as the padded batch has them, so denominators and reductions (per-sequence means, KL, the IT
    mask) are the padded path's, unchanged. ``target_index`` ``[n, T-1]`` maps each target of that layout to the
    position in the flattened ``[R, L-1]`` per-target values whose logits predict it (``-1`` on padding). Written by
    hand (the row assignment and this map): no library collator balances rows or maps packed per-token values back to
    their examples; :func:`im_pipeline.training.loss.unpack_targets` applies the map.
    """

    def __init__(
        self, pad_token_id: int, attention_cost: float = DEFAULT_ATTENTION_COST, *, one_row: bool = False
    ) -> None:
        from transformers import DataCollatorWithFlattening

        self.padded = WeightedCollator(pad_token_id)
        self.pad_token_id = int(pad_token_id)
        self.attention_cost = attention_cost
        self.one_row = one_row
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    @staticmethod
    def assign_rows(lengths: Sequence[int], attention_cost: float = DEFAULT_ATTENTION_COST) -> list[list[int]]:
        """Example indices per row. For each ``R`` in 1..n: each example, longest first, onto the shortest of ``R``
        rows (greedy LPT balancing); keep the ``R`` whose ``R · L · (1 + attention_cost · L)`` is least (``L`` = the
        longest row; ties → fewer rows). Within a row, examples keep their batch order."""
        order = sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
        best: tuple[float, list[list[int]]] | None = None
        for n_rows in range(1, len(lengths) + 1):
            rows: list[list[int]] = [[] for _ in range(n_rows)]
            fill = [0] * n_rows
            for i in order:
                r = min(range(n_rows), key=lambda q: (fill[q], q))
                rows[r].append(i)
                fill[r] += lengths[i]
            longest = max(fill)
            cost = n_rows * longest * (1 + attention_cost * longest)
            if best is None or cost < best[0]:
                best = (cost, rows)
        assert best is not None
        return [sorted(row) for row in best[1] if row]

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = self.padded(features)  # validates the features; its labels/weights are the loss layout
        n, length = batch["labels"].shape
        lengths = [len(f["input_ids"]) for f in features]
        rows = [list(range(n))] if self.one_row else self.assign_rows(lengths, self.attention_cost)
        row_len = max(sum(lengths[i] for i in row) for row in rows)
        segments = []
        target_index = torch.full((n, max(length - 1, 0)), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            row_feats = [
                {"input_ids": list(features[i]["input_ids"]), "labels": batch["labels"][i, : lengths[i]].tolist()}
                for i in row
            ]
            offset = r * (row_len - 1)  # index into the flattened [R, L-1] per-target values
            for i in row:
                # target t (1 ≤ t < k) of example i is predicted by the logits at row position offset + t - 1
                target_index[i, : lengths[i] - 1] = torch.arange(offset, offset + lengths[i] - 1)
                offset += lengths[i]
            rest = row_len - sum(lengths[i] for i in row)
            if rest:  # a padding segment of its own: positions from 0, no targets
                row_feats.append({"input_ids": [self.pad_token_id] * rest, "labels": [IGNORE_INDEX] * rest})
            segments.append(self.flatten(row_feats))
        out = {
            "input_ids": torch.cat([s["input_ids"] for s in segments]),
            "position_ids": torch.cat([s["position_ids"] for s in segments]),
            "packed_labels": torch.cat([s["labels"] for s in segments]),
            "target_index": target_index,
            "labels": batch["labels"],
            "loss_weights": batch["loss_weights"],
            "it_weights": batch["it_weights"],
        }
        if "seq_scale" in batch:  # arm IT-w's per-example factor, per example like the weights
            out["seq_scale"] = batch["seq_scale"]
        return out


def packs_one_row(attn_implementation: str | None) -> bool:
    """Whether padding-free batches must be one row for ``attn_implementation``: any flash-attention kernel
    (``flash_attention_2``/``_3``, Hub kernels such as ``kernels-community/flash-attn``), whose packed-sequence
    boundaries transformers derives from ``position_ids`` at batch size 1 only."""
    return attn_implementation is not None and "flash" in attn_implementation.lower()


def linear_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all but an untied input embedding (a lookup, unless it is tied to the
    output head). The ``N`` of the FLOP estimates: :func:`attention_cost_of` and ``bench/train_throughput.py``'s MFU."""
    n = sum(p.numel() for p in model.parameters())
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is not None and (out is None or out.weight is not emb.weight):
        n -= emb.weight.numel()
    return n


def attention_cost_of(model: torch.nn.Module) -> float:
    """Attention FLOPs per context position over linear FLOPs per token: ``2 · layers · d_attn / N_linear``.

    Per token and layer, ``QKᵀ`` and ``AV`` cost ``2 · 2 · L · d_attn`` FLOPs over a context of ``L`` (sdpa computes
    masked-out blocks too); the matmuls cost ``2 · N_linear`` (:func:`linear_params`). Used by
    :class:`PaddingFreeCollator` to weigh longer rows against more rows; models without
    the config fields get its default, :data:`DEFAULT_ATTENTION_COST`.
    """
    c = getattr(model, "config", None)
    layers = getattr(c, "num_hidden_layers", None)
    heads, head_dim = getattr(c, "num_attention_heads", None), getattr(c, "head_dim", None)
    d_attn = heads * head_dim if heads and head_dim else getattr(c, "hidden_size", None)
    if not (layers and d_attn):
        return DEFAULT_ATTENTION_COST
    return 2 * layers * d_attn / max(linear_params(model), 1)
