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

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from im_pipeline.config import ArmConfig, ExperimentConfig
from im_pipeline.devices import refuse_data_parallel
from im_pipeline.loss_modes import OUTPUT_ONLY
from im_pipeline.results import new_train_summary
from im_pipeline.runs.layout import UnitLayout
from im_pipeline.training import adapters
from im_pipeline.training.callback import TrainLogCallback
from im_pipeline.training.checkpoint import drop_incomplete_checkpoints, save_tokenizer
from im_pipeline.training.engine import require_full_save, require_saved_weights
from im_pipeline.training.held_out import LR_SCALE_RATIO, encode_records, output_over_im_release
from im_pipeline.training.masking import WeightedCollator
from im_pipeline.training.packing import PaddingFreeCollator, attention_cost_of, packs_one_row
from im_pipeline.training.summary import train_summary, utc_now, write_outputs
from im_pipeline.training.weighted_trainer import WeightedLossTrainer

log = logging.getLogger(__name__)


def build_training_arguments(cfg: ExperimentConfig, arm: ArmConfig, seed: int, output_dir: Path) -> TrainingArguments:
    """``TrainingArguments`` from ``cfg.training`` (+ the arm's NEFTune α and the seed).

    ``model.dtype`` bfloat16 turns on bf16 autocast (``bf16=True``; torch's CPU autocast on the CPU) over the fp32
    master weights :func:`load_models` loads (bf16 weights only with ``training.precision: pure_bf16``). More than
    one visible GPU in a single process is refused (:func:`~im_pipeline.devices.refuse_data_parallel`)."""
    refuse_data_parallel(int(os.environ.get("WORLD_SIZE", "1")))
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
        run_name=f"{cfg.name}/{arm.name}/seed-{seed}",  # the run's name in MLflow / W&B (TensorBoard: its folder)
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.model.dtype == "bfloat16",  # float16 is refused at config load
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
        return cls(key, world_size, rank, threads, utc_now(), time.perf_counter())

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
    model, ref_model, tokenizer = load_models(cfg, arm, seed)
    data = encode_splits(cfg, arm, seed, train, held_out, tokenizer)
    lr = learning_rate(cfg, arm, seed, train, tokenizer)
    args.learning_rate = lr.value  # read by the Trainer when it builds optimiser and schedule
    trainer = build_trainer(cfg, arm, args, unit, data, (model, ref_model, tokenizer), run.world_size, callbacks)
    require_full_save(trainer.accelerator)  # before training: the final save must be a model transformers loads
    if resume:
        log.info("%s seed %d: resuming from %s", arm.name, seed, resume)
    result = trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, tokenizer, unit, cfg.data.template, run.is_main, load_base=adapters.base_loader(cfg))
    # Typed: a field TrainSummary lacks is an error, not a silent key; the returned dict is what the file holds.
    summary = train_summary(cfg, arm, seed, unit, run, data, lr, result, resume)
    record = new_train_summary({**summary, **adapters.trainable_fields(model)})
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


def load_models(cfg: ExperimentConfig, arm: ArmConfig, seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, frozen reference model or None, tokenizer): the reference is a second copy of the base model, loaded
    only when the arm has a KL term. The trained model's weights are fp32 (the master weights mixed precision
    updates) unless ``training.precision`` is ``pure_bf16``; the frozen reference is held in ``model.dtype``. With
    adapters (``training.peft``) the model is the base wrapped by peft and the reference is that model with its
    adapters disabled (no second copy); ``seed`` draws the adapters' init."""
    from im_pipeline.models import load_model_and_tokenizer

    m, adapter = cfg.model, cfg.training.peft
    how = {"cache_dir": m.cache_dir, "revision": m.revision, "attn_implementation": m.attn_implementation}
    # Full training: fp32 master weights (bf16 only as the pure_bf16 opt-in). Adapters: the frozen base stays in
    # model.dtype and peft keeps the adapters themselves in fp32 (its autocast_adapter_dtype).
    weights = "bfloat16" if cfg.training.precision == "pure_bf16" else "float32"
    weights = m.dtype if adapter.method != "none" else weights
    extra = adapters.load_options(adapter, m.dtype)  # QLoRA without CUDA: refused here, before anything loads
    model, tokenizer = load_model_and_tokenizer(m.source, dtype=weights, **how, **extra)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer of {m.source} has no pad token")
    if adapter.method != "none":
        model = adapters.wrap(model, adapter, cfg.training.gradient_checkpointing, seed)
        return model, adapters.AdaptersDisabled(model) if arm.kl_coef > 0 else None, tokenizer
    ref_model = None
    if arm.kl_coef > 0:
        ref_model, _ = load_model_and_tokenizer(m.source, dtype=m.dtype, **how)
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
            PaddingFreeCollator(
                tokenizer.pad_token_id, attention_cost_of(model), one_row=packs_one_row(cfg.model.attn_implementation)
            )
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
    log_cb.report = trainer.log  # held-out loss as eval_loss to every report_to integration
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            # its default dir is under trainer_checkpoints/, which is removed after training
            cb.logging_dir = str(unit.tensorboard)
    return trainer


def save_final_model(
    trainer: WeightedLossTrainer, tokenizer: Any, unit: UnitLayout, template: str, is_main: bool, load_base=None
):
    """The final ``save_pretrained`` model and tokenizer (with the training template) in ``unit.checkpoint``; with
    adapters (``load_base`` given) the adapter in ``checkpoint/adapter/`` and the base with it merged in the rest."""
    final_dir = unit.checkpoint
    with trainer.args.main_process_first(local=False, desc="final save"):
        if is_main and final_dir.exists():
            shutil.rmtree(final_dir)
    # Trainer.save_model: every process takes part (ZeRO-3 / FSDP gather the full weights), rank 0 writes the
    # save_pretrained model.
    saved = final_dir / adapters.ADAPTER_DIR if load_base else final_dir  # a peft model saves its adapter only
    trainer.save_model(str(saved))
    if is_main:
        (saved / "training_args.bin").unlink(missing_ok=True)  # Trainer's pickle: not part of the model
        if load_base:
            adapters.save_merged(saved, final_dir, load_base)
        require_saved_weights(final_dir)
        save_tokenizer(tokenizer, final_dir, template)
