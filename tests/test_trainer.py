"""WeightedLossTrainer / train_arm on the tiny random Llama: files, the unit key, GA, KL, NEFTune, resume."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from im_pipeline.config import ArmConfig, DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
from im_pipeline.loss_modes import LossMode, LossSpec
from im_pipeline.training import (
    WeightedCollator,
    WeightedLossTrainer,
    encode_example,
    output_token_loss,
    train_arm,
    weighted_lm_loss,
)
from im_pipeline.training.checkpoint import drop_incomplete_checkpoints
from im_pipeline.training.held_out import encode_records
from im_pipeline.training.sampler import LengthGroupedEpochSampler

REPO = Path(__file__).resolve().parent.parent

PROMPTS = [
    "Write a function that returns the sum of two numbers.",
    "What is the capital of France?",
    "Question: Which answer is correct?",
    "Tell a story about a small model.",
]
ANSWERS = [
    "def add(a, b):\n    return a + b",
    "The capital of France is Paris.",
    "Answer: A",
    "Once upon a time there was a small model that learned to follow instructions.",
]


def make_records(n: int) -> list[dict]:
    """Single- and multi-turn records of varied lengths."""
    recs = []
    for i in range(n):
        msgs = [
            {"role": "user", "content": PROMPTS[i % 4] + " Please." * (i % 3)},
            {"role": "assistant", "content": " ".join([ANSWERS[i % 4]] * (1 + i % 2))},
        ]
        if i % 5 == 4:
            msgs += [{"role": "user", "content": "And again?"}, {"role": "assistant", "content": ANSWERS[(i + 1) % 4]}]
        recs.append({"id": f"t-{i}", "source": "test", "messages": msgs})
    return recs


def make_cfg(model_dir: Path, **training: object) -> ExperimentConfig:
    t = {"epochs": 1, "batch_size": 2, "save_steps": 2, "learning_rate": 1e-3, "warmup_ratio": 0.0, "threads": 1}
    t.update(training)
    return ExperimentConfig(
        name="test",
        model=ModelConfig(source=str(model_dir)),
        data=DataConfig(max_length=48),
        training=TrainingConfig(**t),
    )


def _tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def _batch(tok, records: list[dict], mode: str, lam: float | None = None) -> dict[str, torch.Tensor]:
    feats = [encode_example(r, tok, loss=LossSpec(LossMode(mode), lam), max_length=48) for r in records]
    return WeightedCollator(tok.pad_token_id)(feats)


def _bare_trainer(model, tmp_path: Path, **kw) -> WeightedLossTrainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        **kw.pop("args", {}),
    )
    return WeightedLossTrainer(model=model, args=args, **kw)


# -- train_arm ---------------------------------------------------------------------------------------------------------


def test_train_arm_writes_all_files_and_records_the_key(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir)
    arm = ArmConfig(name="IM", loss_mode="im", neftune_alpha=5.0)
    train, held = make_records(8), make_records(11)[8:]
    run = tmp_path / "IM" / "seed-0"
    summary = train_arm(cfg, arm, 0, train, held, run, key="k")

    # Final model: plain transformers can load it; intermediate checkpoints are gone.
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoint")
    tok = AutoTokenizer.from_pretrained(run / "checkpoint")
    assert not (run / "trainer_checkpoints").exists()
    assert json.loads((run / "train_summary.json").read_text()) == summary

    rows = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 8 examples / batch 2, logging every step
    for r in rows:
        assert r["train_loss"] > 0 and r["tokens"] > 0 and r["tokens_per_s"] > 0 and 0 <= r["padding_fraction"] < 1
        assert r["padded_tokens"] >= r["tokens"]
    assert rows[-1]["held_out_loss"] is not None and all(r["held_out_loss"] is None for r in rows[:-1])

    assert summary["steps"] == 4 and summary["mode"] == "im" and summary["loss_normalisation"] == "sequence"
    assert summary["train_tokens"] == sum(r["tokens"] for r in rows)
    assert summary["final_train_loss"] == rows[-1]["train_loss"]
    assert summary["final_held_out_loss"] == rows[-1]["held_out_loss"]
    # The held-out loss logged during NEFTune training equals a clean re-evaluation of the saved model:
    # the noise never touches evaluation.
    again = output_token_loss(model, tok, held, template="tulu", max_length=48, batch_size=8)
    assert again == pytest.approx(summary["final_held_out_loss"], abs=1e-5)
    # ... and the per-example mean (released compute_loss.py) is each example's own token mean, averaged.
    per_example = [output_token_loss(model, tok, [r], template="tulu", max_length=48, batch_size=1) for r in held]
    assert summary["final_held_out_loss_per_example"] == pytest.approx(sum(per_example) / len(per_example), abs=1e-5)
    assert rows[-1]["held_out_loss_per_example"] == summary["final_held_out_loss_per_example"]

    # The unit's key (the unit layer decides whether a run is done; the trainer records what it trained under).
    assert summary["key"] == "k" and "fingerprint" not in summary


def test_kl_logged_and_zero_before_the_first_update(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, max_steps=2, loss_normalisation="token")
    arm = ArmConfig(name="KL", loss_mode="it", kl_coef=0.5)
    train_arm(cfg, arm, 0, make_records(4), make_records(6)[4:], tmp_path / "kl", key="k")
    rows = [json.loads(ln) for ln in (tmp_path / "kl" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the model still equals the frozen base
    assert rows[1]["kl"] > 1e-7  # after one update it has moved away
    for r in rows:
        assert r["train_loss"] == pytest.approx(r["lm_loss"] + 0.5 * r["kl"], rel=1e-5)


@pytest.mark.parametrize("normalisation", ["token", "sequence"])
def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path, normalisation):
    train, held = make_records(8), make_records(10)[8:]
    arm = ArmConfig(name="W", loss_mode="weighted", prompt_loss_weight=0.3)
    runs = {}
    for bs, ga in ((4, 1), (2, 2)):
        cfg = make_cfg(
            tiny_model_dir, batch_size=bs, gradient_accumulation_steps=ga, max_steps=1, loss_normalisation=normalisation
        )
        runs[ga] = train_arm(cfg, arm, 0, train, held, tmp_path / f"ga{ga}", key="k")
    assert runs[1]["final_train_loss"] == pytest.approx(runs[2]["final_train_loss"], abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "ga1" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "ga2" / "checkpoint").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-6, rtol=1e-4)


def test_on_overlength_drop_and_truncate(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    recs = make_records(6)
    lengths = [len(encode_example(r, tok, loss=LossSpec(LossMode.it), max_length=10_000)["input_ids"]) for r in recs]
    limit = sorted(lengths)[3]  # the two longest are over the limit
    kw = {"loss": LossSpec(LossMode.im), "template": "tulu", "max_length": limit}
    kept, stats = encode_records(recs, tok, on_overlength="drop", **kw)
    assert len(kept) == sum(n <= limit for n in lengths) and stats["n_dropped_overlength"] == 6 - len(kept)
    cut, stats = encode_records(recs, tok, on_overlength="truncate", **kw)
    assert len(cut) == 6 and stats["n_truncated"] == 6 - len(kept) and max(len(e["input_ids"]) for e in cut) == limit


# -- loss pieces through the Trainer --


def test_modes_differ_only_via_weights(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = _bare_trainer(model, tmp_path)
    recs = make_records(5)
    b_it, b_im = _batch(tok, recs, "it"), _batch(tok, recs, "im")
    assert torch.equal(b_it["input_ids"], b_im["input_ids"]) and torch.equal(b_it["it_weights"], b_im["it_weights"])
    assert (b_im["loss_weights"] >= b_it["loss_weights"]).all() and (b_im["loss_weights"] > b_it["loss_weights"]).any()
    model.eval()
    with torch.no_grad():
        loss_it = trainer.compute_loss(model, b_it)
        loss_im = trainer.compute_loss(model, b_im)
        swapped = dict(b_im, loss_weights=b_it["loss_weights"], labels=b_it["labels"])
        assert torch.equal(trainer.compute_loss(model, swapped), loss_it)
        assert not torch.allclose(loss_it, loss_im)
        # λ = 0 is IT and λ = 1 is IM, through the Trainer's loss.
        torch.testing.assert_close(trainer.compute_loss(model, _batch(tok, recs, "weighted", 0.0)), loss_it)
        torch.testing.assert_close(trainer.compute_loss(model, _batch(tok, recs, "weighted", 1.0)), loss_im)
        # And it is weighted_lm_loss of the model's logits.
        logits = model(input_ids=b_im["input_ids"], attention_mask=b_im["attention_mask"]).logits
        torch.testing.assert_close(loss_im, weighted_lm_loss(logits, b_im["labels"], b_im["loss_weights"]))


def test_kl_is_zero_when_model_equals_reference(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = _batch(tok, make_records(4), "im")
    plain = _bare_trainer(model, tmp_path)
    same = _bare_trainer(model, tmp_path, loss=LossSpec(LossMode.it, kl_coef=1.0), ref_model=copy.deepcopy(model))
    ref_other = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref_other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other = _bare_trainer(model, tmp_path, loss=LossSpec(LossMode.it, kl_coef=1.0), ref_model=ref_other)
    model.train()
    base = plain.compute_loss(model, batch)
    torch.testing.assert_close(same.compute_loss(model, batch), base, atol=1e-6, rtol=0)
    assert other.compute_loss(model, batch).item() > base.item() + 1e-4
    with pytest.raises(ValueError, match="ref_model"):
        _bare_trainer(model, tmp_path, loss=LossSpec(LossMode.it, kl_coef=0.5))


def test_neftune_noise_only_in_training_mode(tiny_model_dir, tmp_path):
    tok = _tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    feats = [encode_example(r, tok, loss=LossSpec(LossMode.it), max_length=48) for r in make_records(4)]
    probe = WeightedCollator(tok.pad_token_id)(feats[:2])
    inputs = {"input_ids": probe["input_ids"], "attention_mask": probe["attention_mask"]}
    model.eval()
    with torch.no_grad():
        clean = model(**inputs).logits
    seen: dict[str, torch.Tensor] = {}

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kw):
            if state.global_step == 0:  # weights not updated yet, NEFTune hook active
                with torch.no_grad():
                    model.eval()
                    seen["eval"] = model(**inputs).logits
                    model.train()
                    seen["train"] = model(**inputs).logits

    trainer = _bare_trainer(
        model,
        tmp_path,
        args={"max_steps": 1, "neftune_noise_alpha": 5.0, "learning_rate": 1e-3, "per_device_train_batch_size": 2},
        train_dataset=feats,
        data_collator=WeightedCollator(tok.pad_token_id),
        callbacks=[Probe()],
    )
    trainer.train()
    assert torch.equal(seen["eval"], clean)  # evaluation untouched while the hook is on
    assert not torch.allclose(seen["train"], clean, atol=1e-4)  # training forward is noised
    model.train()
    with torch.no_grad():  # hook removed after train(): training-mode forward is clean again (weights changed)
        assert torch.equal(model(**inputs).logits, model.eval()(**inputs).logits)


def test_output_token_loss_is_token_mean_over_output_tokens(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    recs = make_records(5)
    total, count = 0.0, 0
    for r in recs:
        enc = encode_example(r, tok, loss=LossSpec(LossMode.it), max_length=48)
        ids = torch.tensor([enc["input_ids"]])
        keep = torch.tensor(enc["it_weights"][1:]) > 0
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        ce = F.cross_entropy(logits[keep], ids[0, 1:][keep], reduction="sum")
        total, count = total + ce.item(), count + int(keep.sum())
    got = output_token_loss(model, tok, recs, template="tulu", max_length=48, batch_size=2)
    assert got == pytest.approx(total / count, rel=1e-5)


# -- resume after SIGKILL --

KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from transformers import TrainerCallback
    from im_pipeline.config.experiment import ExperimentConfig
    from im_pipeline.config.sections import ArmConfig
    from im_pipeline.training import train_arm
    from test_trainer import make_records

    class Kill(TrainerCallback):
        def on_log(self, args, state, control, **kw):
            if state.global_step == {kill_step}:
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = ExperimentConfig.model_validate(json.loads({cfg!r}))
    arm = ArmConfig.model_validate(json.loads({arm!r}))
    train_arm(cfg, arm, 0, make_records(8), make_records(10)[8:], Path({run!r}), key="k", callbacks=[Kill()])
    """
)


@pytest.mark.slow
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # 2 epochs of 4 steps; checkpoints at 3 and 6; killed after logging step 7 (inside epoch 2, so the log line of
    # step 7 must be dropped and step 7 trained again).
    cfg = make_cfg(tiny_model_dir, epochs=2, save_steps=3)
    arm = ArmConfig(name="IM", loss_mode="im", neftune_alpha=5.0)
    train, held = make_records(8), make_records(10)[8:]
    ref = train_arm(cfg, arm, 0, train, held, tmp_path / "straight", key="k")

    run = tmp_path / "killed"
    script = KILL_SCRIPT.format(
        tests=str(REPO / "tests"), kill_step=7, cfg=cfg.model_dump_json(), arm=arm.model_dump_json(), run=str(run)
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (run / "trainer_checkpoints" / "checkpoint-6").is_dir() and not (run / "train_summary.json").exists()

    resumed = train_arm(cfg, arm, 0, train, held, run, key="k")
    assert resumed["resumed_from"] == "checkpoint-6" and resumed["steps"] == ref["steps"] == 8
    assert resumed["final_train_loss"] == pytest.approx(ref["final_train_loss"], abs=1e-6)
    assert resumed["final_held_out_loss"] == pytest.approx(ref["final_held_out_loss"], abs=1e-6)
    rows = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # no duplicated or missing steps
    straight = [json.loads(ln) for ln in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in straight], abs=1e-6)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run / "checkpoint").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_length_grouped_sampler_is_seeded_per_epoch_and_cuts_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 500, (64,), generator=g).tolist()
    s = LengthGroupedEpochSampler(lengths, batch_size=4, seed=3)
    s.set_epoch(0)
    e0, e0_again = list(s), list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == list(range(64)) and e0 == e0_again and e0 != e1
    assert LengthGroupedEpochSampler(lengths, 4, seed=3).__iter__().__next__() == e0[0]

    def padding(order):
        batches = [[lengths[i] for i in order[k : k + 4]] for k in range(0, 64, 4)]
        return 1 - sum(map(sum, batches)) / sum(4 * max(b) for b in batches)

    assert padding(e0) < 0.1 < padding(torch.randperm(64, generator=g).tolist())


def test_an_interrupted_checkpoint_is_not_resumed_from(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    root = tmp_path / "trainer_checkpoints"
    (root / "checkpoint-2").mkdir(parents=True)
    (root / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (root / "checkpoint-4").mkdir()  # killed while saving: weights written, trainer_state.json not yet
    (root / "checkpoint-4" / "model.safetensors").write_bytes(b"partial")
    drop_incomplete_checkpoints(root)
    assert get_last_checkpoint(str(root)) == str(root / "checkpoint-2")
    assert not (root / "checkpoint-4").exists()


def test_held_out_loss_reaches_tensorboard_and_progress_has_an_eta(tiny_model_dir, tmp_path, caplog):
    """The held-out loss goes through the Trainer's report_to: TensorBoard's event file has ``eval/loss`` at every
    held-out step with train_log.jsonl's values; the run is named experiment/arm/seed; each progress line has an
    ETA."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from im_pipeline.training.callback import eta_seconds, format_duration

    cfg = make_cfg(tiny_model_dir, eval_steps=2)
    run = tmp_path / "IM" / "seed-3"
    seen: dict[str, str] = {}

    class RunName(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["run_name"] = args.run_name

    with caplog.at_level(logging.INFO, logger="im_pipeline.training.callback"):
        train_arm(
            cfg,
            ArmConfig(name="IM", loss_mode="im"),
            3,
            make_records(8),
            make_records(11)[8:],
            run,
            key="k",
            callbacks=[RunName()],
        )
    assert seen["run_name"] == "test/IM/seed-3"
    rows = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    held = {r["step"]: r["held_out_loss"] for r in rows if r["held_out_loss"] is not None}
    assert sorted(held) == [2, 4]
    (events,) = (run / "tensorboard").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert {"eval/loss", "eval/loss_per_example", "train/loss"} <= set(acc.Tags()["scalars"])
    logged = {e.step: e.value for e in acc.Scalars("eval/loss")}
    assert sorted(logged) == [2, 4]
    for step, value in logged.items():
        assert value == pytest.approx(held[step], rel=1e-6)  # float32 in the event file
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(progress) == 4 and all(re.search(r"elapsed \d+s, ETA \d+s$", m) for m in progress)
    assert progress[-1].endswith("ETA 0s")
    assert eta_seconds(30.0, 3, 7) == 70.0 and eta_seconds(5.0, 0, 7) is None
    assert (format_duration(3725), format_duration(192), format_duration(9.4)) == ("1h02m", "3m12s", "9s")
