"""What a finished training run records: ``train_summary.json`` (from ``train_log.jsonl`` and the Trainer's result)
and the model card, written by rank 0 as the recipe's last step (:func:`~im_pipeline.training.trainer.train_arm`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from im_pipeline.config import ArmConfig, ExperimentConfig
from im_pipeline.results import TrainSummary
from im_pipeline.runs.layout import UnitLayout
from im_pipeline.training.checkpoint import write_model_card

if TYPE_CHECKING:
    from im_pipeline.training.trainer import Encoded, LearningRate, RunFacts

log = logging.getLogger("im_pipeline.training.trainer")  # the recipe's logger: one name in the run's log


def utc_now() -> str:
    """UTC time, ISO 8601 with milliseconds (what train_summary.json records as started_at / finished_at)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        "finished_at": utc_now(),
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
