"""weighted_lm_loss / token_kl against torch.nn.functional.cross_entropy on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from im_pipeline.training.loss import (
    loss_denominator,
    reduce_token_values,
    shifted_weights,
    token_kl,
    weighted_lm_loss,
)

V = 11


def _batch(seed: int = 0, b: int = 3, t: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, V, generator=g)
    ids = torch.randint(0, V, (b, t), generator=g)
    # Hand-made masks: row 0 loss on positions 3..6, row 1 on 1..4 (5,6 padding), row 2 only position 6.
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1]], dtype=torch.float32)[
        :b, :t
    ]
    labels = torch.where(mask > 0, ids, torch.full_like(ids, -100))
    return logits, labels, mask


def _ce_rows(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Per-row vectors of CE over the unmasked (shifted) positions, torchtune style."""
    rows = []
    for b in range(labels.size(0)):
        lg, lb = logits[b, :-1], labels[b, 1:]
        keep = lb != -100
        rows.append(F.cross_entropy(lg[keep], lb[keep], reduction="none"))
    return rows


def test_binary_weights_token_equals_masked_cross_entropy():
    logits, labels, mask = _batch()
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    got = weighted_lm_loss(logits, labels, mask, "token")
    torch.testing.assert_close(got, ref)


def test_binary_weights_sequence_is_mean_of_per_sequence_means():
    logits, labels, mask = _batch()
    ref = torch.stack([r.mean() for r in _ce_rows(logits, labels)]).mean()
    got = weighted_lm_loss(logits, labels, mask, "sequence")
    torch.testing.assert_close(got, ref)
    # ... and it differs from the token mean here (rows have 4, 4 and 1 targets).
    assert not torch.allclose(got, weighted_lm_loss(logits, labels, mask, "token"))


def test_batch_of_one_both_normalisations_agree():
    logits, labels, mask = _batch(b=1)
    torch.testing.assert_close(
        weighted_lm_loss(logits, labels, mask, "sequence"), weighted_lm_loss(logits, labels, mask, "token")
    )


def test_lambda_weights():
    logits, labels, mask = _batch(seed=3)
    lam = 0.25
    # Row 0: positions 3,4 are "prompt" (weight λ), 5,6 output (weight 1).
    weights = mask.clone()
    weights[0, 3:5] = lam
    rows = _ce_rows(logits, labels)
    w_rows = [torch.tensor([lam, lam, 1.0, 1.0]), torch.ones(4), torch.ones(1)]
    seq_ref = torch.stack([(r * w).sum() / w.sum() for r, w in zip(rows, w_rows, strict=True)]).mean()
    tok_ref = sum((r * w).sum() for r, w in zip(rows, w_rows, strict=True)) / sum(w.sum() for w in w_rows)
    torch.testing.assert_close(weighted_lm_loss(logits, labels, weights, "sequence"), seq_ref)
    torch.testing.assert_close(weighted_lm_loss(logits, labels, weights, "token"), tok_ref)


def test_weight_on_ignored_label_is_ignored_and_position_zero_never_a_target():
    logits, labels, mask = _batch()
    weights = mask.clone()
    weights[1, 5:] = 7.0  # padding positions (label -100) with stray weight
    weights[:, 0] = 9.0  # position 0 is never a target
    torch.testing.assert_close(
        weighted_lm_loss(logits, labels, weights, "token"), weighted_lm_loss(logits, labels, mask, "token")
    )


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_gradient_accumulation_sums_to_full_batch_loss(normalisation):
    logits, labels, mask = _batch(seed=5)
    full = weighted_lm_loss(logits, labels, mask, normalisation)
    parts = [(logits[:2], labels[:2], mask[:2]), (logits[2:], labels[2:], mask[2:])]
    n = sum(loss_denominator(lb, w, normalisation) for _, lb, w in parts)
    acc = sum(weighted_lm_loss(lg, lb, w, normalisation, num_items=n) for lg, lb, w in parts)
    torch.testing.assert_close(acc, full)
    # Per-micro-batch means averaged (the naive way) differ: that is the bug num_items avoids.
    naive = sum(weighted_lm_loss(lg, lb, w, normalisation) for lg, lb, w in parts) / 2
    assert not torch.allclose(naive, full)


def test_no_weighted_target_gives_zero_not_nan():
    logits, labels, mask = _batch()
    zero = torch.zeros_like(mask)
    for norm in ("sequence", "token"):
        out = weighted_lm_loss(logits, torch.full_like(labels, -100), zero, norm)
        assert out.item() == 0.0


def test_bad_input_raises():
    logits, labels, mask = _batch()
    with pytest.raises(ValueError, match="normalisation"):
        weighted_lm_loss(logits, labels, mask, "batch")
    with pytest.raises(ValueError, match="same shape"):
        weighted_lm_loss(logits, labels, mask[:, :-1], "token")


def test_kl_zero_for_identical_and_positive_otherwise():
    # As the trainer's full KL: token_kl at the positions predicting weighted targets, reduced like the NLL.
    logits, labels, mask = _batch(seed=7)
    w = shifted_weights(labels, mask)
    assert reduce_token_values(token_kl(logits[:, :-1], logits.clone()[:, :-1]), w).abs().item() < 1e-6
    other = logits + torch.randn_like(logits)
    kl = reduce_token_values(token_kl(logits[:, :-1], other[:, :-1]), w, "token")
    assert kl.item() > 0
    # Against torch's kl_div: KL(p‖q) = kl_div(log q, log p, log_target=True) summed over the vocabulary.
    ref_tok = F.kl_div(F.log_softmax(other, -1), F.log_softmax(logits, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_kl(logits, other), ref_tok)
    w = mask[:, 1:]
    torch.testing.assert_close(kl, (ref_tok[:, :-1] * w).sum() / w.sum())


def test_kl_gradient_flows_only_to_model_logits():
    logits, _, _ = _batch(seed=8)
    logits.requires_grad_(True)
    ref = torch.randn_like(logits, requires_grad=True)
    token_kl(logits, ref).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert ref.grad is None


def test_it_w_sequence_loss_is_output_ce_over_im_release_count():
    """IT-w under per-example normalisation: each example's Σ_output ce / n_im_release, i.e. exactly the output-token
    part of IM's (im_release) per-example loss; the mean over examples as usual; refused under 'token'."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.tensor([[0, 1, 2, 3, 4, 0], [0, 3, 3, 1, 0, 2]])
    im = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1.0]])  # im_release targets: 5 and 4
    out = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1.0]])  # output targets: 2 and 3
    scale = torch.tensor([2 / 5, 3 / 4])
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), reduction="none").view(2, 5)
    per_example = [(ce[0, 3:].sum() / 5).item(), (ce[1, 2:].sum() / 4).item()]
    got = weighted_lm_loss(logits, labels, out, "sequence", seq_scale=scale)
    assert got.item() == pytest.approx(sum(per_example) / 2, rel=1e-6)
    # = IM's loss with the instruction tokens' terms removed (same denominators).
    im_ce = ce * im[:, 1:]
    im_output_part = (im_ce * out[:, 1:]).sum(dim=1) / im[:, 1:].sum(dim=1)
    assert got.item() == pytest.approx(im_output_part.mean().item(), rel=1e-6)
    # Without the factor it is IT's loss (the per-example mean cancels any constant weight).
    it_loss = (ce[0, 3:].mean() + ce[1, 2:].mean()).item() / 2
    assert weighted_lm_loss(logits, labels, out * 7.0, "sequence").item() == pytest.approx(it_loss, rel=1e-6)
    with pytest.raises(ValueError, match="needs loss normalisation 'sequence'"):
        weighted_lm_loss(logits, labels, out, "token", seq_scale=scale)
