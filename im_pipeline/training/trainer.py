"""Train one arm: :func:`train_arm` (encode → Trainer → checkpoints every ``save_steps``, resumed after a crash →
final ``save_pretrained`` model in ``run_dir/checkpoint/`` → ``train_summary.json``).

The training loop is ``transformers.Trainer``'s own; what it cannot do lives beside this module:
:class:`~im_pipeline.training.weighted_trainer.WeightedLossTrainer` (per-token loss weights with the denominator of
the whole accumulated batch, KL to the frozen base model, padding-free batches, NEFTune through Trainer's own
``neftune_noise_alpha``), :class:`~im_pipeline.training.callback.TrainLogCallback` (``train_log.jsonl``, held-out
loss on output tokens) and :mod:`im_pipeline.training.held_out` (encoding, the ``lr_scale`` ratio). Here: the
``TrainingArguments``, the run's fingerprint, and the FLOP estimates that size padding-free rows.
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
from datetime import UTC, datetime
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from im_pipeline.config import ArmConfig, ExperimentConfig, stable_hash
from im_pipeline.provenance import write_text_atomic
from im_pipeline.results import ResultFileError, TrainSummary, new_train_summary
from im_pipeline.runs.layout import UnitLayout
from im_pipeline.runs.staleness import model_identity, training_identity
from im_pipeline.training.callback import TrainLogCallback
from im_pipeline.training.checkpoint import _drop_incomplete_checkpoints, save_tokenizer, write_model_card
from im_pipeline.training.held_out import LR_SCALE_RATIO, _encode_records, output_over_im_release
from im_pipeline.training.masking import DEFAULT_ATTENTION_COST, PaddingFreeCollator, WeightedCollator
from im_pipeline.training.weighted_trainer import WeightedLossTrainer

log = logging.getLogger(__name__)


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
    :class:`~im_pipeline.training.masking.PaddingFreeCollator` to weigh longer rows against more rows; models without
    the config fields get its default, :data:`~im_pipeline.training.masking.DEFAULT_ATTENTION_COST`.
    """
    c = getattr(model, "config", None)
    layers = getattr(c, "num_hidden_layers", None)
    heads, head_dim = getattr(c, "num_attention_heads", None), getattr(c, "head_dim", None)
    d_attn = heads * head_dim if heads and head_dim else getattr(c, "hidden_size", None)
    if not (layers and d_attn):
        return DEFAULT_ATTENTION_COST
    return 2 * layers * d_attn / max(linear_params(model), 1)


def _utc_now() -> str:
    """UTC time, ISO 8601 with seconds (what train_summary.json records as started_at / finished_at)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _fingerprint(
    cfg: ExperimentConfig, arm: ArmConfig, seed: int, train: list[dict], held_out: list[dict], world_size: int = 1
) -> str:
    """What determines the trained model: model, data settings, the training settings that change the model
    (:func:`~im_pipeline.runs.staleness.training_identity`: the same ones the unit's key covers, so neither decides
    alone that e.g. a new ``save_steps`` makes a run stale), arm, seed, the data itself, and the number of
    data-parallel processes (the global batch is per-device batch × accumulation × processes)."""
    return stable_hash(
        {
            "model": model_identity(cfg),
            "data": cfg.data.model_dump(mode="json"),
            "training": training_identity(cfg),
            **({"world_size": world_size} if world_size > 1 else {}),
            "arm": arm.model_dump(mode="json"),
            "seed": seed,
            "train": stable_hash(train, 32),
            "held_out": stable_hash(held_out, 32),
        },
        32,
    )


def _is_finished(unit: UnitLayout, fingerprint: str) -> dict | None:
    summary_path = unit.train_summary
    if not (summary_path.is_file() and (unit.checkpoint / "config.json").is_file()):
        return None
    try:
        summary = TrainSummary.read(summary_path)
    except ResultFileError:
        return None
    return summary.to_json() if summary.key == fingerprint else None


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


def train_arm(
    cfg: ExperimentConfig,
    arm: ArmConfig,
    seed: int,
    train: list[dict],
    held_out: list[dict],
    run_dir: Path,
    *,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict:
    """Train one arm with one seed; return (and write) ``train_summary.json``.

    Writes ``run_dir/checkpoint/`` (final ``save_pretrained`` model + tokenizer), ``run_dir/train_log.jsonl`` and
    ``run_dir/train_summary.json``. Intermediate Trainer checkpoints go to ``run_dir/trainer_checkpoints/`` every
    ``save_steps`` and are resumed from after a crash; they are deleted once the final model is saved. A finished run
    with the same fingerprint (model, data, training settings, arm, seed, data content) is returned as is.
    ``callbacks`` are extra ``TrainerCallback``s (e.g. for tests).
    """
    from im_pipeline.models import load_model_and_tokenizer

    unit = UnitLayout.at(run_dir)
    run_dir = unit.dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if not train:
        raise ValueError("train_arm: the training set is empty")
    # Under torchrun / accelerate launch every process runs this function: all of them train and take part in
    # the final save (ZeRO-3 / FSDP gather the weights), rank 0 alone writes files.
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    fingerprint = _fingerprint(cfg, arm, seed, train, held_out, world_size)
    done = _is_finished(unit, fingerprint)
    if done is not None:
        log.info("%s seed %d: finished run found in %s, not retraining", arm.name, seed, run_dir)
        return done
    started_at = _utc_now()

    ckpt_root, fp_file, log_path = unit.trainer_checkpoints, unit.fingerprint_file, unit.train_log
    args = build_training_arguments(cfg, arm, seed, ckpt_root)
    with args.main_process_first(local=False, desc="checkpoint housekeeping"):  # a barrier when distributed
        if is_main:
            stale = not fp_file.is_file() or json.loads(fp_file.read_text()).get("fingerprint") != fingerprint
            if ckpt_root.exists() and stale:
                log.warning("%s: trainer checkpoints from a different configuration; starting afresh", ckpt_root)
                shutil.rmtree(ckpt_root)
            ckpt_root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(fp_file, json.dumps({"fingerprint": fingerprint}))
            _drop_incomplete_checkpoints(ckpt_root)
            if get_last_checkpoint(str(ckpt_root)) is None and log_path.exists():
                log_path.unlink()  # a fresh start: the old log belongs to an abandoned run
    resume = get_last_checkpoint(str(ckpt_root))

    t = cfg.training
    threads = t.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    t_start = time.perf_counter()

    model, tokenizer = load_model_and_tokenizer(
        cfg.model.source, dtype=cfg.model.dtype, cache_dir=cfg.model.cache_dir, revision=cfg.model.revision
    )
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer of {cfg.model.source} has no pad token")
    ref_model = None
    if arm.kl_coef > 0:
        ref_model, _ = load_model_and_tokenizer(
            cfg.model.source, dtype=cfg.model.dtype, cache_dir=cfg.model.cache_dir, revision=cfg.model.revision
        )

    enc_kw = {"template": cfg.data.template, "max_length": cfg.data.max_length, "on_overlength": cfg.data.on_overlength}
    train_enc, train_stats = _encode_records(
        train, tokenizer, mode=str(arm.loss_mode), prompt_loss_weight=arm.prompt_loss_weight, **enc_kw
    )
    held_enc, held_stats = _encode_records(held_out, tokenizer, mode="it", prompt_loss_weight=None, **enc_kw)
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

    # lr_scale: a number, or output_over_im_release computed on this seed's sample (recorded in the summary).
    lr_ratio = None
    if arm.lr_scale == LR_SCALE_RATIO:
        lr_ratio = output_over_im_release(train, tokenizer, **enc_kw)
        lr_factor = float(lr_ratio["ratio"])
    else:
        lr_factor = float(arm.lr_scale)
    args.learning_rate = t.learning_rate * lr_factor  # read by the Trainer when it builds optimiser and schedule
    if lr_factor != 1.0:
        log.info(
            "%s seed %d: learning rate %g × %.6g = %g", arm.name, seed, t.learning_rate, lr_factor, args.learning_rate
        )

    micro_batches = math.ceil(len(train_enc) / (t.batch_size * world_size))
    steps_per_epoch = max(math.ceil(micro_batches / t.gradient_accumulation_steps), 1)
    log_cb = TrainLogCallback(
        log_path,
        held_enc,
        tokenizer.pad_token_id,
        eval_steps=t.eval_steps,
        steps_per_epoch=steps_per_epoch,
        batch_size=t.batch_size,
    )
    trainer = WeightedLossTrainer(
        model=model,
        args=args,
        train_dataset=train_enc,
        data_collator=(
            PaddingFreeCollator(tokenizer.pad_token_id, attention_cost_of(model))
            if t.padding_free
            else WeightedCollator(tokenizer.pad_token_id)
        ),
        processing_class=tokenizer,
        callbacks=[log_cb, *callbacks],
        loss_normalisation=t.loss_normalisation,
        kl_coef=arm.kl_coef,
        ref_model=ref_model,
        kl_form=arm.kl_form,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes through TrainLogCallback's logging instead
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            # its default dir is under trainer_checkpoints/, which is removed after training
            cb.logging_dir = str(unit.tensorboard)
    if resume:
        log.info("%s seed %d: resuming from %s", arm.name, seed, resume)
    result = trainer.train(resume_from_checkpoint=resume)

    final_dir = unit.checkpoint
    with args.main_process_first(local=False, desc="final save"):
        if is_main and final_dir.exists():
            shutil.rmtree(final_dir)
    # Trainer.save_model: every process takes part (ZeRO-3 / FSDP gather the full weights), rank 0 writes the
    # save_pretrained model.
    trainer.save_model(str(final_dir))
    if is_main:
        (final_dir / "training_args.bin").unlink(missing_ok=True)  # Trainer's pickle: not part of the model
        save_tokenizer(tokenizer, final_dir, cfg.data.template)

    rows = _read_log(log_path)
    train_rows = [r for r in rows if r.get("tokens")]
    held_rows = [r for r in rows if r.get("held_out_loss") is not None]
    tokens = sum(r["tokens"] for r in train_rows)
    seconds = sum(r["seconds"] for r in train_rows)
    padded = sum(r["padded_tokens"] for r in train_rows)
    summary = {
        "arm": arm.name,
        "seed": seed,
        "mode": str(arm.loss_mode),
        "prompt_loss_weight": arm.prompt_loss_weight,
        "neftune_alpha": arm.neftune_alpha,
        "kl_coef": arm.kl_coef,
        "kl_form": arm.kl_form if arm.kl_coef > 0 else None,
        "loss_normalisation": t.loss_normalisation,
        "lr_scale": arm.lr_scale,
        "lr_scale_factor": lr_factor,
        "lr_scale_tokens": lr_ratio,
        "learning_rate": args.learning_rate,
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
        "wall_time_s": round(time.perf_counter() - t_start, 2),
        "resumed_from": Path(resume).name if resume else None,
        "threads": threads,
        "world_size": world_size,
        "host": socket.gethostname(),  # who computed it (rank 0 of the launch)
        "pid": os.getpid(),
        "started_at": started_at,
        "finished_at": _utc_now(),
        "n_train": len(train_enc),
        "n_held_out": len(held_enc),
        "encoding": {"train": train_stats, "held_out": held_stats},
        "fingerprint": fingerprint,
        "checkpoint": unit.checkpoint.name,
    }
    record = new_train_summary(summary)  # typed: a field TrainSummary lacks is an error, not a silent key
    summary = record.to_json()  # what the file holds (schema_version, key)
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return summary
    record.write(unit.train_summary)
    write_model_card(final_dir, cfg, arm, seed, summary)
    shutil.rmtree(ckpt_root, ignore_errors=True)  # large; the final model is in checkpoint/
    log.info(
        "%s seed %d: done in %.0f s, final train loss %s, held-out %s",
        arm.name,
        seed,
        summary["wall_time_s"],
        summary["final_train_loss"],
        summary["final_held_out_loss"],
    )
    return summary
