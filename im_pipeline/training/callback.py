"""train_log.jsonl: one line per optimiser step (train loss, IT-mask loss, tokens/s, padding) and the held-out loss
at eval steps; the held-out loss also through the Trainer's own ``log`` (so every ``report_to`` integration, e.g.
TensorBoard's ``eval/loss``, gets it); progress logging with elapsed time and ETA."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import TrainerCallback

from im_pipeline.provenance import write_text_atomic
from im_pipeline.training.held_out import encoded_output_losses

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``3725`` → ``1h02m``, ``192`` → ``3m12s``, ``9.4`` → ``9s``."""
    s = max(round(seconds), 0)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def eta_seconds(elapsed: float, steps_done: int, steps_left: int) -> float | None:
    """Remaining time at the mean pace of the steps done in this session (None before the first step)."""
    return elapsed / steps_done * steps_left if steps_done > 0 else None


class TrainLogCallback(TrainerCallback):
    """Writes ``train_log.jsonl``: one line per logging step (step, epoch, train loss, tokens/s, padding fraction,
    and ``held_out_loss`` on output tokens at evaluation steps); logs progress with ``logging``.

    Held-out loss is computed every ``eval_steps`` optimiser steps (None: at the end of each epoch) and at the last
    step, and passed to ``report`` (the Trainer's ``log``, set by ``build_trainer``) as ``eval_loss`` /
    ``eval_loss_per_example``: the integrations of ``report_to`` (TensorBoard, MLflow, W&B) record it as they
    record a Trainer evaluation. On resume, lines after the checkpoint's step are dropped (those steps are trained
    again).
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
        self.report: Callable[[dict[str, float]], None] | None = None
        self._started: tuple[float, int] = (time.perf_counter(), 0)  # (time, step) this session started at

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        write_text_atomic(self.path, "".join(ln + "\n" for ln in keep))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # rank 0 alone writes the log
            self.truncate_after(state.global_step)
        self._last_time = time.perf_counter()
        self._started = (self._last_time, state.global_step)

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
            if self.report is not None:
                token_mean, per_example = self._pending_held_out
                self.report({"eval_loss": token_mean, "eval_loss_per_example": per_example})
            control.should_log = True  # make sure this step gets a line (after report: the Trainer's log clears it)
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
            "step %d/%d epoch %.2f loss %.4f%s | %s tok/s, padding %.0f%% | %s",
            state.global_step,
            state.max_steps,
            row["epoch"],
            row["train_loss"],
            held,
            row["tokens_per_s"],
            100 * row["padding_fraction"],
            self.progress(state.global_step, state.max_steps, now),
        )

    def progress(self, step: int, max_steps: int, now: float) -> str:
        """``elapsed 1m02s, ETA 3m12s``: the session's wall time and the remaining steps at its mean pace."""
        t0, step0 = self._started
        eta = eta_seconds(now - t0, step - step0, max_steps - step)
        return f"elapsed {format_duration(now - t0)}, ETA {'?' if eta is None else format_duration(eta)}"
