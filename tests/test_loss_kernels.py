"""Logits only where the loss reads them, and the chunked cross-entropy: the same loss and gradients as computing
every position's logits with ``F.cross_entropy`` (the trainer's path before ``logits_to_keep``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_padding_free import ARMS, _feats
from test_trainer import _bare_trainer, make_records
from transformers import AutoModelForCausalLM, AutoTokenizer

from im_pipeline.loss_modes import IGNORE_INDEX, LossMode, LossSpec
from im_pipeline.training import PaddingFreeCollator, WeightedCollator
from im_pipeline.training.loss import (
    chunked_cross_entropy,
    logit_positions,
    reduce_token_values,
    target_token_logprobs,
    token_ce,
    token_kl,
)
from im_pipeline.training.weighted_trainer import split_batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_cross_entropy_equals_torch_in_value_and_gradient(dtype, chunk):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(7, 50, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (7,), generator=g)
    targets[2] = IGNORE_INDEX
    upstream = torch.randn(7, generator=g)
    ref_logits = logits.detach().clone().requires_grad_()
    want = F.cross_entropy(ref_logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    (want * upstream).sum().backward()
    got = chunked_cross_entropy(logits, targets, chunk)
    (got * upstream).sum().backward()
    assert got[2] == 0 and torch.all(logits.grad[2] == 0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=tol, rtol=tol)
    assert logits.grad.dtype == dtype


def test_logit_positions_map_needed_targets_into_packed_rows():
    need = torch.tensor([[True, False, True], [False, True, False]])  # [n=2, T-1=3]
    padded = logit_positions(need, None, (2, 4))
    assert padded.tolist() == [[True, False, True, False], [False, True, False, False]]
    # example 0's targets predicted at flat [R=1, L-1=6] positions 0..2, example 1's at 3..5 (only 3 = target 1 valid)
    target_index = torch.tensor([[0, 1, 2], [3, 4, -1]])
    packed = logit_positions(need, target_index, (1, 7))
    assert packed.tolist() == [[True, False, True, False, True, False, False]]
    none = logit_positions(torch.zeros_like(need), None, (2, 4))  # nothing needed: one position keeps the graph
    assert int(none.sum()) == 1


def _full_logits_loss(trainer, model, batch):
    """The trainer's loss computed the old way: every position's logits, F.cross_entropy via token_ce."""
    model_inputs, t = split_batch(batch)
    logits = model(**model_inputs).logits
    norm, spec = trainer.loss_normalisation, trainer.loss_spec
    ce = t.per_example(token_ce(logits, t.scored_labels))
    loss = reduce_token_values(ce, t.shifted(), norm)
    if spec.kl_coef > 0:
        with torch.no_grad():
            ref_logits = trainer.ref_model(**model_inputs).logits
        if spec.kl_form == "release":
            ref_logp = t.per_example(target_token_logprobs(ref_logits, t.scored_labels))
            kl = reduce_token_values(-ce - ref_logp, t.shifted(), norm)
        else:
            kl = reduce_token_values(
                t.per_example(token_kl(logits[:, :-1], ref_logits[:, :-1])), t.shifted(it_mask=True), norm
            )
        loss = loss + spec.kl_coef * kl
    return loss


@pytest.mark.parametrize("collator", [WeightedCollator, PaddingFreeCollator])
@pytest.mark.parametrize("normalisation", ["sequence", "token"])
@pytest.mark.parametrize(("mode", "lam", "kl"), ARMS)
def test_kept_logits_loss_and_gradients_equal_full_logits(
    tiny_model_dir, tmp_path, collator, mode, lam, kl, normalisation
):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    feats = _feats(tok, make_records(5), mode, lam)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = None
    if kl:
        ref = copy.deepcopy(base)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    batch = collator(tok.pad_token_id)(feats)
    results = []
    for compute in ("kept", "full"):
        model = copy.deepcopy(base).train()
        spec = LossSpec(LossMode(mode), lam, **kl)
        trainer = _bare_trainer(model, tmp_path / compute, loss=spec, loss_normalisation=normalisation, ref_model=ref)
        loss = trainer.compute_loss(model, batch) if compute == "kept" else _full_logits_loss(trainer, model, batch)
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (l_kept, g_kept), (l_full, g_full) = results
    assert l_full.item() > 0
    torch.testing.assert_close(l_kept, l_full, atol=1e-5, rtol=1e-5)
    for k in g_full:
        torch.testing.assert_close(g_kept[k], g_full[k], atol=1e-5, rtol=1e-4, msg=k)


def test_the_model_computes_logits_only_at_the_kept_positions(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    feats = _feats(tok, make_records(4), "it")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    trainer = _bare_trainer(model, tmp_path, loss=LossSpec(LossMode("it")))
    batch = WeightedCollator(tok.pad_token_id)(feats)
    trainer.compute_loss(model, batch)
    n_targets = int((batch["loss_weights"][:, 1:] > 0).sum())
    assert seen == [(n_targets, model.config.vocab_size)]
    assert n_targets < batch["input_ids"].numel() / 2  # IT: the output tokens only, far fewer than all positions
