"""train_log.jsonl: one line per optimiser step (train loss, IT-mask loss, tokens/s, padding) and the held-out loss
at eval steps; progress logging."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from im_pipeline.provenance import write_text_atomic
from im_pipeline.training.held_out import encoded_output_losses

log = logging.getLogger(__name__)


class TrainLogCallback(TrainerCallback):
    """Writes ``train_log.jsonl``: one line per logging step (step, epoch, train loss, tokens/s, padding fraction,
    and ``held_out_loss`` on output tokens at evaluation steps); logs progress with ``logging``.

    Held-out loss is computed every ``eval_steps`` optimiser steps (None: at the end of each epoch) and at the last
    step. On resume, lines after the checkpoint's step are dropped (those steps are trained again).
    """

    def __init__(
        self,
        path: Path,
        held_out: Sequence[dict],
        pad_token_id: int,
        *,
        eval_steps: int | None,
        steps_per_epoch: int,
        batch_size: int,
    ) -> None:
        self.path = path
        self.held_out = held_out
        self.pad_token_id = pad_token_id
        self.eval_steps = eval_steps
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.batch_size = batch_size
        self._pending_held_out: tuple[float, float] | None = None  # (token mean, per-example mean)
        self._last_time: float | None = None
        self.eval_seconds = 0.0

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        write_text_atomic(self.path, "".join(ln + "\n" for ln in keep))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # rank 0 alone writes the log
            self.truncate_after(state.global_step)
        self._last_time = time.perf_counter()

    def _is_eval_step(self, state) -> bool:
        step = state.global_step
        if step >= state.max_steps:
            return True
        if self.eval_steps:
            return step % self.eval_steps == 0
        return step % self.steps_per_epoch == 0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Every process computes it (a ZeRO-3 / FSDP sharded model needs all of them in the forward pass).
        if self.held_out and self._is_eval_step(state):
            t0 = time.perf_counter()
            self._pending_held_out = encoded_output_losses(model, self.held_out, self.pad_token_id, self.batch_size)
            self.eval_seconds += time.perf_counter() - t0
            control.should_log = True  # make sure this step gets a line
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        now = time.perf_counter()
        # Training time of the window = wall time minus the held-out evaluation inside it.
        eval_s = self.eval_seconds
        self.eval_seconds = 0.0
        seconds = max(now - (self._last_time or now) - eval_s, 1e-9)
        self._last_time = now
        row = {
            "step": state.global_step,
            "epoch": round(float(logs.get("epoch", state.epoch or 0.0)), 4),
            "train_loss": logs["loss"],
            "held_out_loss": self._pending_held_out[0] if self._pending_held_out else None,
            "held_out_loss_per_example": self._pending_held_out[1] if self._pending_held_out else None,
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": logs.get("tokens"),
            "padded_tokens": logs.get("padded_tokens"),
            "seconds": round(seconds, 3),
            "tokens_per_s": round(logs["tokens"] / seconds, 2) if logs.get("tokens") else None,
            "padding_fraction": round(logs.get("padding_fraction", 0.0), 4),
        }
        for key in ("it_mask_loss", "lm_loss", "kl"):
            if key in logs:
                row[key] = logs[key]
        self._pending_held_out = None
        if not state.is_world_process_zero:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        held = f" held-out {row['held_out_loss']:.4f}" if row["held_out_loss"] is not None else ""
        log.info(
            "step %d/%d epoch %.2f loss %.4f%s | %s tok/s, padding %.0f%%",
            state.global_step,
            state.max_steps,
            row["epoch"],
            row["train_loss"],
            held,
            row["tokens_per_s"],
            100 * row["padding_fraction"],
        )
