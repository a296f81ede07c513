"""Train one arm: :func:`train_arm`, a recipe of named steps (encode → Trainer → checkpoints every ``save_steps``,
resumed after a crash → final ``save_pretrained`` model in ``run_dir/checkpoint/`` → ``train_summary.json``).

The training loop is ``transformers.Trainer``'s own; what it cannot do lives beside this module:
:class:`~im_pipeline.training.weighted_trainer.WeightedLossTrainer` (per-token loss weights with the denominator of
the whole accumulated batch, KL to the frozen base model, padding-free batches, NEFTune through Trainer's own
``neftune_noise_alpha``), :class:`~im_pipeline.training.callback.TrainLogCallback` (``train_log.jsonl``, held-out
loss on output tokens) and :mod:`im_pipeline.training.held_out` (encoding, the ``lr_scale`` ratio). Here: the
recipe's steps and the ``TrainingArguments``.

Whether a unit is done, and whether its files belong to the current settings, is the unit layer's decision
(:mod:`im_pipeline.runs.units`: its key and stamps); ``train_arm`` receives that key, records it in the summary,
and resumes whatever Trainer checkpoints it finds in the run directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from im_pipeline.config import ArmConfig, ExperimentConfig
from im_pipeline.loss_modes import OUTPUT_ONLY
from im_pipeline.results import TrainSummary, new_train_summary
from im_pipeline.runs.layout import UnitLayout
from im_pipeline.training.callback import TrainLogCallback
from im_pipeline.training.checkpoint import drop_incomplete_checkpoints, save_tokenizer, write_model_card
from im_pipeline.training.engine import require_full_save, require_saved_weights
from im_pipeline.training.held_out import LR_SCALE_RATIO, encode_records, output_over_im_release
from im_pipeline.training.masking import WeightedCollator
from im_pipeline.training.packing import PaddingFreeCollator, attention_cost_of
from im_pipeline.training.weighted_trainer import WeightedLossTrainer

log = logging.getLogger(__name__)


def _utc_now() -> str:
    """UTC time, ISO 8601 with milliseconds (what train_summary.json records as started_at / finished_at)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_training_arguments(cfg: ExperimentConfig, arm: ArmConfig, seed: int, output_dir: Path) -> TrainingArguments:
    """``TrainingArguments`` from ``cfg.training`` (+ the arm's NEFTune α and the seed)."""
    t = cfg.training
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        # transformers 5 takes the warm-up ratio as a float < 1 in warmup_steps.
        warmup_steps=min(t.warmup_ratio, 0.999),
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        activation_checkpointing=t.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        save_strategy="steps",
        save_steps=t.save_steps,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        eval_strategy="no",  # held-out loss on output tokens comes from TrainLogCallback
        seed=seed,
        data_seed=seed,
        neftune_noise_alpha=arm.neftune_alpha,
        remove_unused_columns=False,
        report_to=list(t.report_to) or "none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.model.dtype == "bfloat16" and torch.cuda.is_available(),
        fp16=cfg.model.dtype == "float16" and torch.cuda.is_available(),
    )


@dataclass(frozen=True)
class RunFacts:
    """How this process runs the unit: the unit layer's key, the launch (processes, this one's rank), torch threads
    and the start (UTC, and ``perf_counter`` for the wall time). Under torchrun / accelerate launch every process
    runs :func:`train_arm`: all of them train and take part in the final save (ZeRO-3 / FSDP gather the weights);
    rank 0 alone writes files."""

    key: str
    world_size: int
    rank: int
    threads: int
    started_at: str
    t_start: float

    @classmethod
    def start(cls, key: str, threads: int | None) -> RunFacts:
        world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        # null threads: this node's cores shared among its ranks (not every rank on all of them)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = threads or max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return cls(key, world_size, rank, threads, _utc_now(), time.perf_counter())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Encoded:
    """The seed's splits encoded for training (held-out under the IT mask) and the encoding counts of each."""

    train: list[dict]
    held_out: list[dict]
    stats: dict[str, dict[str, int]]


@dataclass(frozen=True)
class LearningRate:
    """The arm's learning rate: ``training.learning_rate`` × ``factor``; ``tokens`` holds the token counts when
    ``lr_scale`` is :data:`~im_pipeline.training.held_out.LR_SCALE_RATIO` (computed on this seed's sample)."""

    value: float
    factor: float
    tokens: dict[str, Any] | None


def train_arm(
    cfg: ExperimentConfig,
    arm: ArmConfig,
    seed: int,
    train: list[dict],
    held_out: list[dict],
    run_dir: Path,
    *,
    key: str,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict:
    """Train one arm with one seed; return (and write) ``train_summary.json``.

    Writes ``run_dir/checkpoint/`` (final ``save_pretrained`` model + tokenizer), ``run_dir/train_log.jsonl`` and
    ``run_dir/train_summary.json``. Intermediate Trainer checkpoints go to ``run_dir/trainer_checkpoints/`` every
    ``save_steps`` and are resumed from after a crash; they are deleted once the final model is saved. ``key`` is the
    unit's training key (:func:`~im_pipeline.runs.staleness.train_key`): the caller has already cleared a run
    directory trained under another key, so checkpoints found here are resumed; the summary records it.
    ``callbacks`` are extra ``TrainerCallback``s (e.g. for tests).
    """
    if not train:
        raise ValueError("train_arm: the training set is empty")
    unit = UnitLayout.at(run_dir)
    unit.dir.mkdir(parents=True, exist_ok=True)
    run = RunFacts.start(key, cfg.training.threads)
    args = build_training_arguments(cfg, arm, seed, unit.trainer_checkpoints)
    resume = resume_point(unit, args, run.is_main)
    torch.set_num_threads(run.threads)
    model, ref_model, tokenizer = load_models(cfg, arm)
    data = encode_splits(cfg, arm, seed, train, held_out, tokenizer)
    lr = learning_rate(cfg, arm, seed, train, tokenizer)
    args.learning_rate = lr.value  # read by the Trainer when it builds optimiser and schedule
    trainer = build_trainer(cfg, arm, args, unit, data, (model, ref_model, tokenizer), run.world_size, callbacks)
    require_full_save(trainer.accelerator)  # before training: the final save must be a model transformers loads
    if resume:
        log.info("%s seed %d: resuming from %s", arm.name, seed, resume)
    result = trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, tokenizer, unit, cfg.data.template, run.is_main)
    # Typed: a field TrainSummary lacks is an error, not a silent key; the returned dict is what the file holds.
    record = new_train_summary(train_summary(cfg, arm, seed, unit, run, data, lr, result, resume))
    trainer.accelerator.wait_for_everyone()
    if run.is_main:
        write_outputs(unit, cfg, arm, seed, record)
    return record.to_json()


def resume_point(unit: UnitLayout, args: TrainingArguments, is_main: bool) -> str | None:
    """The last whole Trainer checkpoint of the unit, or None (a fresh start, whose stale ``train_log.jsonl`` goes)."""
    ckpt_root, log_path = unit.trainer_checkpoints, unit.train_log
    with args.main_process_first(local=False, desc="checkpoint housekeeping"):  # a barrier when distributed
        if is_main:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            drop_incomplete_checkpoints(ckpt_root)
            if get_last_checkpoint(str(ckpt_root)) is None and log_path.exists():
                log_path.unlink()  # a fresh start: the old log belongs to an abandoned run
    return get_last_checkpoint(str(ckpt_root))


def load_models(cfg: ExperimentConfig, arm: ArmConfig) -> tuple[Any, Any, Any]:
    """(model, frozen reference model or None, tokenizer): the reference is a second copy of the base model, loaded
    only when the arm has a KL term."""
    from im_pipeline.models import load_model_and_tokenizer

    m = cfg.model
    model, tokenizer = load_model_and_tokenizer(m.source, dtype=m.dtype, cache_dir=m.cache_dir, revision=m.revision)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer of {m.source} has no pad token")
    ref_model = None
    if arm.kl_coef > 0:
        ref_model, _ = load_model_and_tokenizer(m.source, dtype=m.dtype, cache_dir=m.cache_dir, revision=m.revision)
    return model, ref_model, tokenizer


def _encoding_options(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.data
    return {"template": d.template, "max_length": d.max_length, "on_overlength": d.on_overlength}


def encode_splits(
    cfg: ExperimentConfig, arm: ArmConfig, seed: int, train: list[dict], held_out: list[dict], tokenizer: Any
) -> Encoded:
    """Encode the training split under the arm's loss and the held-out split under the IT mask (output tokens)."""
    enc_kw = _encoding_options(cfg)
    train_enc, train_stats = encode_records(train, tokenizer, loss=arm.loss, **enc_kw)
    held_enc, held_stats = encode_records(held_out, tokenizer, loss=OUTPUT_ONLY, **enc_kw)
    if not train_enc:
        raise ValueError(f"no training example left after encoding ({train_stats})")
    log.info(
        "%s seed %d: %d train / %d held-out examples encoded (%s)",
        arm.name,
        seed,
        len(train_enc),
        len(held_enc),
        train_stats,
    )
    return Encoded(train_enc, held_enc, {"train": train_stats, "held_out": held_stats})


def learning_rate(cfg: ExperimentConfig, arm: ArmConfig, seed: int, train: list[dict], tokenizer: Any) -> LearningRate:
    """``training.learning_rate`` × the arm's ``lr_scale``: a number, or ``output_over_im_release`` computed on this
    seed's sample (recorded in the summary)."""
    base = cfg.training.learning_rate
    tokens = None
    if arm.lr_scale == LR_SCALE_RATIO:
        tokens = output_over_im_release(train, tokenizer, **_encoding_options(cfg))
        factor = float(tokens["ratio"])
    else:
        factor = float(arm.lr_scale)
    value = base * factor
    if factor != 1.0:
        log.info("%s seed %d: learning rate %g × %.6g = %g", arm.name, seed, base, factor, value)
    return LearningRate(value, factor, tokens)


def build_trainer(
    cfg: ExperimentConfig,
    arm: ArmConfig,
    args: TrainingArguments,
    unit: UnitLayout,
    data: Encoded,
    models: tuple[Any, Any, Any],
    world_size: int,
    callbacks: Sequence[TrainerCallback],
) -> WeightedLossTrainer:
    """The :class:`WeightedLossTrainer` with its collator (padded or padding-free) and ``train_log.jsonl`` callback."""
    model, ref_model, tokenizer = models
    t = cfg.training
    micro_batches = math.ceil(len(data.train) / (t.batch_size * world_size))
    steps_per_epoch = max(math.ceil(micro_batches / t.gradient_accumulation_steps), 1)
    log_cb = TrainLogCallback(
        unit.train_log,
        data.held_out,
        tokenizer.pad_token_id,
        eval_steps=t.eval_steps,
        steps_per_epoch=steps_per_epoch,
        batch_size=t.batch_size,
    )
    trainer = WeightedLossTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=(
            PaddingFreeCollator(tokenizer.pad_token_id, attention_cost_of(model))
            if t.padding_free
            else WeightedCollator(tokenizer.pad_token_id)
        ),
        processing_class=tokenizer,
        callbacks=[log_cb, *callbacks],
        loss=arm.loss,
        loss_normalisation=t.loss_normalisation,
        ref_model=ref_model,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through TrainLogCallback's logging instead
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            # its default dir is under trainer_checkpoints/, which is removed after training
            cb.logging_dir = str(unit.tensorboard)
    return trainer


def save_final_model(trainer: WeightedLossTrainer, tokenizer: Any, unit: UnitLayout, template: str, is_main: bool):
    """The final ``save_pretrained`` model and tokenizer (with the training template) in ``unit.checkpoint``."""
    final_dir = unit.checkpoint
    with trainer.args.main_process_first(local=False, desc="final save"):
        if is_main and final_dir.exists():
            shutil.rmtree(final_dir)
    # Trainer.save_model: every process takes part (ZeRO-3 / FSDP gather the full weights), rank 0 writes the
    # save_pretrained model.
    trainer.save_model(str(final_dir))
    if is_main:
        require_saved_weights(final_dir)
        (final_dir / "training_args.bin").unlink(missing_ok=True)  # Trainer's pickle: not part of the model
        save_tokenizer(tokenizer, final_dir, template)


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def train_summary(
    cfg: ExperimentConfig,
    arm: ArmConfig,
    seed: int,
    unit: UnitLayout,
    run: RunFacts,
    data: Encoded,
    lr: LearningRate,
    result: Any,
    resume: str | None,
) -> dict:
    """The content of ``train_summary.json``: the arm, what training did (from ``train_log.jsonl`` and the Trainer's
    result), throughput, provenance and the unit's key."""
    rows = _read_log(unit.train_log)
    train_rows = [r for r in rows if r.get("tokens")]
    held_rows = [r for r in rows if r.get("held_out_loss") is not None]
    tokens = sum(r["tokens"] for r in train_rows)
    seconds = sum(r["seconds"] for r in train_rows)
    padded = sum(r["padded_tokens"] for r in train_rows)
    return {
        "arm": arm.name,
        "seed": seed,
        "mode": str(arm.loss_mode),
        "prompt_loss_weight": arm.prompt_loss_weight,
        "neftune_alpha": arm.neftune_alpha,
        "kl_coef": arm.kl_coef,
        "kl_form": arm.kl_form if arm.kl_coef > 0 else None,
        "loss_normalisation": cfg.training.loss_normalisation,
        "lr_scale": arm.lr_scale,
        "lr_scale_factor": lr.factor,
        "lr_scale_tokens": lr.tokens,
        "learning_rate": lr.value,
        "model": cfg.model.source,
        "steps": result.global_step,
        "epochs": rows[-1]["epoch"] if rows else None,
        "final_train_loss": train_rows[-1]["train_loss"] if train_rows else None,
        "mean_train_loss": result.training_loss,
        "final_held_out_loss": held_rows[-1]["held_out_loss"] if held_rows else None,
        "final_held_out_loss_per_example": held_rows[-1].get("held_out_loss_per_example") if held_rows else None,
        "held_out_loss_on": "output tokens (IT mask); final_held_out_loss: token mean, *_per_example: mean of "
        "per-example token means (released compute_loss.py)",
        "train_tokens": tokens,
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2) if seconds else None,
        "padding_fraction": round(1 - tokens / padded, 4) if padded else None,
        "wall_time_s": round(time.perf_counter() - run.t_start, 2),
        "resumed_from": Path(resume).name if resume else None,
        "threads": run.threads,
        "world_size": run.world_size,
        "host": socket.gethostname(),  # who computed it (rank 0 of the launch)
        "pid": os.getpid(),
        "started_at": run.started_at,
        "finished_at": _utc_now(),
        "n_train": len(data.train),
        "n_held_out": len(data.held_out),
        "encoding": data.stats,
        "key": run.key,
        "checkpoint": unit.checkpoint.name,
    }


def write_outputs(unit: UnitLayout, cfg: ExperimentConfig, arm: ArmConfig, seed: int, record: TrainSummary) -> None:
    """Rank 0's last step: ``train_summary.json``, the model card; the Trainer checkpoints go."""
    record.write(unit.train_summary)
    summary = record.to_json()
    write_model_card(unit.checkpoint, cfg, arm, seed, summary)
    shutil.rmtree(unit.trainer_checkpoints, ignore_errors=True)  # large; the final model is in checkpoint/
    log.info(
        "%s seed %d: done in %.0f s, final train loss %s, held-out %s",
        arm.name,
        seed,
        summary["wall_time_s"],
        summary["final_train_loss"],
        summary["final_held_out_loss"],
    )
