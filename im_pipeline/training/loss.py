"""Per-token weighted causal-LM loss and the KL term to a frozen reference model.

Why by hand: ``transformers``' ``ForCausalLMLoss`` and TRL's ``compute_loss_func`` see only binary labels
(``-100`` or not); the λ-weighted prompt loss (``prompt_loss_weight``) and the per-sequence normalisation of the
paper's code need a weight per target token, which no library loss takes.

Conventions (shared with :mod:`im_pipeline.training.masking`):

* ``labels[b, i]`` and ``weights[b, i]`` describe token ``i`` *as a target*; the loss shifts by one, so the logits
  at position ``i`` predict token ``i + 1``. Position 0 is never a target.
* ``labels == -100`` marks positions that never get loss (padding, template tokens in ``im``/``it``); their weight
  is ignored (treated as 0).

Normalisation (``normalisation``):

* ``"sequence"`` (paper code, batch size 1): each sequence's weighted token mean, ``Σ_i w_i·ce_i / Σ_i w_i``, then the
  mean over the sequences that have any weight. Every example weighs the same, whatever its length.
* ``"token"``: ``Σ w_i·ce_i / Σ w_i`` over the whole batch. Long examples weigh more.

Gradient accumulation: pass ``num_items`` = the denominator over the *whole* accumulated batch (the weight sum for
``"token"``, the number of weighted sequences for ``"sequence"``, see :func:`loss_denominator`); the function then
returns this micro-batch's share of the accumulated loss, and the sum over micro-batches is exactly the loss one
big batch would have had. Without ``num_items`` the denominator is this batch's own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from im_pipeline.loss_modes import IGNORE_INDEX

NORMALISATIONS = ("sequence", "token")


def _check_normalisation(normalisation: str) -> None:
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"loss normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")


def shifted_weights(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Target weights aligned with ``logits[:, :-1]``: ``weights[:, 1:]``, zero where the label is ignored."""
    if labels.shape != weights.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and weights {tuple(weights.shape)} must have the same shape")
    w = weights[:, 1:].to(torch.float32)
    return torch.where(labels[:, 1:] == IGNORE_INDEX, torch.zeros_like(w), w)


def loss_denominator(labels: torch.Tensor, weights: torch.Tensor, normalisation: str = "sequence") -> torch.Tensor:
    """The denominator of one (micro-)batch: weight sum ('token') or number of weighted sequences ('sequence').

    Summed over the micro-batches of an optimiser step, it is the ``num_items`` for :func:`weighted_lm_loss`.
    """
    _check_normalisation(normalisation)
    w = shifted_weights(labels, weights)
    if normalisation == "token":
        return w.sum()
    return (w.sum(dim=1) > 0).sum().to(torch.float32)


def reduce_token_values(
    values: torch.Tensor,
    w: torch.Tensor,
    normalisation: str = "sequence",
    num_items: torch.Tensor | float | None = None,
    seq_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce per-target values ``[B, T-1]`` with already-shifted weights ``w`` per the normalisation.

    ``seq_scale`` ``[B]`` (arm IT-w, :mod:`im_pipeline.training.masking`) multiplies each sequence's weighted mean
    ("sequence" only: a per-example factor has no meaning once the tokens of a batch are pooled)."""
    _check_normalisation(normalisation)
    if seq_scale is not None and normalisation != "sequence":
        raise ValueError("seq_scale (loss_mode it_w) needs loss normalisation 'sequence'")
    weighted = values * w
    if normalisation == "token":
        total = weighted.sum()
        denom = w.sum() if num_items is None else num_items
    else:
        per_seq_weight = w.sum(dim=1)
        has_weight = per_seq_weight > 0
        per_seq = weighted.sum(dim=1) / per_seq_weight.clamp_min(torch.finfo(w.dtype).tiny)
        if seq_scale is not None:
            per_seq = per_seq * seq_scale.to(per_seq)
        total = (per_seq * has_weight).sum()
        denom = has_weight.sum() if num_items is None else num_items
    denom = torch.as_tensor(denom, dtype=total.dtype, device=total.device)
    # A batch without any weighted target (e.g. everything truncated away) contributes 0, not NaN.
    return total / denom.clamp_min(1e-12) if bool(denom > 0) else total * 0.0


def weighted_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    normalisation: str = "sequence",
    *,
    num_items: torch.Tensor | float | None = None,
    seq_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted next-token cross-entropy.

    Args:
        logits: ``[B, T, V]`` model outputs.
        labels: ``[B, T]`` token ids, ``-100`` where the token is never a target.
        weights: ``[B, T]`` weight of token ``i`` as a target (aligned with ``labels``).
        normalisation: ``"sequence"`` or ``"token"`` (see the module docstring).
        num_items: denominator over the whole accumulated batch (gradient accumulation); ``None`` = this batch's.
        seq_scale: ``[B]`` factor per sequence ("sequence" only; IT-w's n_out / n_im_release), ``None`` = 1.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be [B, T, V] with [B, T] = labels {tuple(labels.shape)}")
    w = shifted_weights(labels, weights)
    return reduce_token_values(token_ce(logits, labels), w, normalisation, num_items, seq_scale)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-target cross-entropy ``[B, T-1]`` (``-log p(label)``; 0 where the label is ignored)."""
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be [B, T, V] with [B, T] = labels {tuple(labels.shape)}")
    targets = labels[:, 1:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Full-distribution KL(p_model ‖ p_ref) per position, ``[B, T]`` (summed over the vocabulary).

    Direction: forward KL from the trained model's next-token distribution to the frozen base model's,
    ``Σ_v p_θ(v) (log p_θ(v) − log p_ref(v))`` — the regulariser of paper Eq. 5, which keeps the fine-tuned model's
    predictions close to the base model's. Gradients flow only through ``logits``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.detach().float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def target_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p(label)`` at each target, ``[B, T-1]`` (0 where the label is ignored); gradients flow."""
    return -token_ce(logits, labels)


def unpack_targets(values: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """Per-target values of padding-free rows, ``[R, L-1]``, laid out per example as ``[n, T-1]``.

    ``target_index`` (from :class:`~im_pipeline.training.packing.PaddingFreeCollator`) holds, for each target of the
    padded layout, the flattened packed position whose logits predict it, ``-1`` where there is none (→ 0). The result
    lines up with :func:`shifted_weights` of the padded ``labels``/``weights``, so every reduction above applies
    unchanged. Gradients flow through the gather.
    """
    flat = values.reshape(-1)
    gathered = flat[target_index.clamp_min(0)]
    return torch.where(target_index >= 0, gathered, torch.zeros_like(gathered))


CE_CHUNK_ROWS = 1024
"""Rows of logits per chunk of :func:`chunked_cross_entropy` (its fp32 temporaries are ``rows × V``)."""


class _ChunkedCrossEntropy(torch.autograd.Function):
    """``-log softmax(logits)[target]`` per row, fp32 math one chunk of rows at a time.

    By hand because ``F.cross_entropy`` upcasts the whole ``[N, V]`` logits to fp32 and keeps its fp32 log-softmax for
    the backward (for a 262k vocabulary that is the largest tensor of a step). This keeps only the logits (already
    alive as the model's output) and each row's log-sum-exp; the backward recomputes ``softmax − onehot`` per chunk and
    writes the gradient in the logits' dtype, in place on one fp32 chunk (forward and backward alike hold a single
    ``chunk × V`` fp32 tensor at a time). Rows whose target is ``IGNORE_INDEX`` get 0 and no gradient.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, torch.zeros_like(targets))
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            lse[s : s + chunk] = _logsumexp_in_place(logits[s : s + chunk].to(torch.float32, copy=True))
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk = chunk
        return torch.where(valid, lse - picked, torch.zeros_like(lse))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, safe, valid, lse = ctx.saved_tensors
        scale = torch.where(valid, grad_out.float(), torch.zeros_like(lse))
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            e = slice(s, s + ctx.chunk)
            # the one fp32 chunk (a copy even of fp32 logits), worked on in place
            g = logits[e].to(torch.float32, copy=True)
            g.sub_(lse[e, None]).exp_()
            g.scatter_add_(1, safe[e, None], -torch.ones_like(lse[e, None]))
            grad[e] = g.mul_(scale[e, None])
            del g  # before the next chunk's copy, or two chunks are alive at once
        return grad, None, None


def _logsumexp_in_place(x: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, dim=-1)`` of a 2-D fp32 ``x`` it owns, overwriting ``x`` (``torch.logsumexp`` allocates a
    second chunk-sized tensor for ``exp(x - max)``). Rows are never all ``-inf`` here (they are logits)."""
    top = x.amax(dim=-1, keepdim=True)
    return x.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))


def chunked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, chunk: int = CE_CHUNK_ROWS) -> torch.Tensor:
    """Per-row cross-entropy ``[N]`` of ``logits`` ``[N, V]`` against ``targets`` ``[N]`` (0 where ignored).

    Equal to ``F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="none")`` in value and gradient
    (tests/test_loss_kernels.py), with fp32 temporaries of ``chunk × V`` only.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} must be [N, V] with targets [N], got {tuple(targets.shape)}")
    return _ChunkedCrossEntropy.apply(logits, targets, max(int(chunk), 1))


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: the target each position predicts (``labels[:, 1:]``), ``IGNORE_INDEX`` at the last position."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def logit_positions(
    need: torch.Tensor, target_index: torch.Tensor | None, scored_shape: tuple[int, int]
) -> torch.Tensor:
    """The positions ``[B, L]`` of the scored rows whose logits the loss reads (``logits_to_keep``).

    ``need`` ``[n, T-1]`` marks, in the padded per-target layout, the targets any loss term reads; ``target_index``
    maps them into packed rows (None: the rows are the padded ones). At least one position is kept, so every
    parameter stays in the graph of a batch without targets.
    """
    rows, length = scored_shape
    if target_index is None:
        keep = torch.zeros(scored_shape, dtype=torch.bool, device=need.device)
        keep[:, : length - 1] = need
    else:
        flat = torch.zeros(rows * (length - 1), dtype=torch.bool, device=need.device)
        flat[target_index[need & (target_index >= 0)]] = True
        keep = torch.cat([flat.view(rows, length - 1), flat.new_zeros((rows, 1))], dim=1)
    if not bool(keep.any()):
        keep[0, 0] = True
    return keep


def kept_logits(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` logits at the kept positions, whether the model applied ``logits_to_keep`` (boolean 2-D: transformers'
    ``slice_logits_to_keep``) or returned every position ``[B, L, V]``."""
    return logits[keep] if logits.dim() == 3 else logits


def scatter_positions(keep: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Values of the kept positions (``[N]``, row-major order of ``keep``) placed into ``[B, L]`` (0 elsewhere);
    gradients flow to ``values``."""
    return torch.zeros(keep.shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)
