"""The released code's KL form (``kl_form: release``) beside the full-distribution KL.

The released ``src/finetune.py`` adds ``c · mean(log p_θ(y) − log p_ref(y))`` over the same target tokens and the same
denominator as the NLL (the arm's own labels). For every arm that is ``(1 − c)·NLL + const``: the gradient shrinks by
``(1 − c)`` and is exactly zero at ``c = 1``. These tests measure it on a tiny model through
``WeightedLossTrainer.compute_loss``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_trainer import _bare_trainer, _batch, _tokenizer, make_records
from transformers import AutoModelForCausalLM

from im_pipeline.config import ArmConfig, ConfigError, config_from_dict
from im_pipeline.loss_modes import LossMode, LossSpec

V = 13


def _grad_norm(trainer, model, batch) -> float:
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None)))


def _models(model_dir: Path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    for m in model.modules():  # no dropout noise: gradients comparable across calls
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref = copy.deepcopy(model)
    with torch.no_grad():  # the base differs from the trained model, as after some fine-tuning steps
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, ref


def kl_gradient_norms(model_dir: Path, tmp_path: Path, mode: str, kl_form: str, normalisation: str) -> dict:
    tok = _tokenizer(model_dir)
    model, ref = _models(model_dir)
    batch = _batch(tok, make_records(5), mode)
    norms = {}
    for c in (0.0, 0.1, 1.0):
        loss = LossSpec(LossMode(mode), kl_coef=c, kl_form=kl_form)
        trainer = _bare_trainer(
            model, tmp_path, loss=loss, loss_normalisation=normalisation, ref_model=ref if c else None
        )
        norms[c] = _grad_norm(trainer, model, batch)
    return norms


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_release_kl_it_arm_gradient_vanishes_at_c1(tiny_model_dir, tmp_path, normalisation):
    norms = kl_gradient_norms(tiny_model_dir, tmp_path, "it", "release", normalisation)
    print(f"\nIT arm, release KL, {normalisation}: |grad| at c=0, 0.1, 1: {norms}")
    assert norms[0.0] > 1e-3
    assert norms[0.1] == pytest.approx(0.9 * norms[0.0], rel=1e-4)  # (1 − c) · ∇NLL
    assert norms[1.0] == 0.0  # exactly: the log-likelihood terms cancel


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_full_kl_it_arm_gradient_does_not_vanish(tiny_model_dir, tmp_path, normalisation):
    norms = kl_gradient_norms(tiny_model_dir, tmp_path, "it", "full", normalisation)
    print(f"\nIT arm, full KL, {normalisation}: |grad| at c=0, 0.1, 1: {norms}")
    assert norms[1.0] > 0.1 * norms[0.0]


@pytest.mark.parametrize("mode", ["im", "im_release"])
@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_release_kl_im_arm_gradient_vanishes_at_c1_too(tiny_model_dir, tmp_path, normalisation, mode):
    """IM arm: the released KL masks with the arm's own labels (``labels != -100``; with --use_lm_loss the
    instruction too, src/generate_kl_logits.py), so it shares tokens and denominator with the NLL here as well."""
    norms = kl_gradient_norms(tiny_model_dir, tmp_path, mode, "release", normalisation)
    print(f"\n{mode} arm, release KL, {normalisation}: |grad| at c=0, 0.1, 1: {norms}")
    assert norms[0.0] > 1e-3
    assert norms[0.1] == pytest.approx(0.9 * norms[0.0], rel=1e-4)
    assert norms[1.0] == 0.0


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_full_kl_im_arm_covers_output_tokens_only(tiny_model_dir, tmp_path, normalisation):
    """The full-distribution KL (paper Eq. 5) is over the output tokens for every arm: it does not cancel the IM
    arm's NLL."""
    norms = kl_gradient_norms(tiny_model_dir, tmp_path, "im", "full", normalisation)
    assert norms[1.0] > 0.05 * norms[0.0]


def test_release_kl_value_matches_cross_entropy_difference_torchtune_style(tiny_model_dir, tmp_path):
    """The trainer's KL term (its loss at kl_coef = 1 minus its loss at 0) against log p(y) − log p_ref(y) computed
    with cross_entropy, per row over the unmasked shifted targets."""
    tok = _tokenizer(tiny_model_dir)
    model, ref = _models(tiny_model_dir)
    batch = _batch(tok, make_records(5), "it")

    def kl_term(form: str, normalisation: str) -> torch.Tensor:
        losses = []
        for c in (0.0, 1.0):
            loss = LossSpec(LossMode.it, kl_coef=c, kl_form=form)
            trainer = _bare_trainer(model, tmp_path, loss=loss, loss_normalisation=normalisation, ref_model=ref)
            with torch.no_grad():
                losses.append(trainer.compute_loss(model, batch))
        return losses[1] - losses[0]

    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits, ref_logits = model(**inputs).logits, ref(**inputs).logits
    labels = batch["labels"]
    rows = []
    for b in range(labels.shape[0]):
        keep = labels[b, 1:] != -100
        lp = -F.cross_entropy(logits[b, :-1][keep], labels[b, 1:][keep], reduction="none")
        lq = -F.cross_entropy(ref_logits[b, :-1][keep], labels[b, 1:][keep], reduction="none")
        rows.append(lp - lq)
    torch.testing.assert_close(kl_term("release", "sequence"), torch.stack([r.mean() for r in rows]).mean())
    torch.testing.assert_close(kl_term("release", "token"), torch.cat(rows).mean())
    # The full KL is a divergence (≥ 0); the release form is a log-ratio of one token and can have any sign.
    assert kl_term("full", "token").item() > 0


def test_kl_form_config_field():
    arm = ArmConfig(name="IT+KL", loss_mode="it", kl_coef=1.0, kl_form="release")
    assert arm.kl_form == "release"
    assert ArmConfig(name="IT", loss_mode="it").kl_form == "full"
    with pytest.raises(ConfigError, match="kl_form"):
        config_from_dict({"name": "x", "arms": [{"name": "A", "loss_mode": "it", "kl_form": "target"}]})


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_it_mask_loss_logged_for_every_arm(tiny_model_dir, tmp_path, normalisation):
    """train_log.jsonl carries the output-token (IT-mask) train loss for every arm: equal to the train loss for an
    IT arm, different for an IM arm (whose own loss also covers the instruction), so the curves are comparable."""
    import json

    from test_trainer import make_cfg

    from im_pipeline.training import train_arm

    cfg = make_cfg(tiny_model_dir, max_steps=2, loss_normalisation=normalisation, gradient_accumulation_steps=2)
    rows = {}
    for mode in ("it", "im"):
        run = tmp_path / mode
        train_arm(cfg, ArmConfig(name=mode, loss_mode=mode), 0, make_records(8), make_records(10)[8:], run, key="k")
        rows[mode] = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    for r in rows["it"]:
        assert r["it_mask_loss"] == pytest.approx(r["train_loss"], rel=1e-5)
    # Step 1: same weights, same batch, so the IT-mask loss of the IM arm equals the IT arm's loss.
    assert rows["im"][0]["it_mask_loss"] == pytest.approx(rows["it"][0]["train_loss"], rel=1e-5)
    assert abs(rows["im"][0]["train_loss"] - rows["im"][0]["it_mask_loss"]) > 1e-5
