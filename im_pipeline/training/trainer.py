"""Train one arm: a ``transformers.Trainer`` subclass with per-token loss weights, KL and NEFTune.

The training loop is ``transformers.Trainer``'s own; this module adds only what it cannot do:

* :class:`WeightedLossTrainer` overrides ``compute_loss`` (per-token weights from
  :class:`~im_pipeline.training.masking.WeightedCollator`, see :mod:`im_pipeline.training.loss`) and
  ``get_batch_samples`` (the loss denominator over the whole accumulated batch, so gradient accumulation gives the
  same loss as one big batch — Trainer's own ``num_items_in_batch`` counts labels ``!= -100``, which is wrong for
  λ-weights and for per-sequence normalisation).
* KL(model ‖ frozen base) over the output tokens (IT mask), weighted by ``kl_coef`` (paper Eq. 5).
* NEFTune through Trainer's own ``neftune_noise_alpha`` (a forward hook on the input embeddings that adds noise only
  while the module is in training mode; removed when ``train()`` returns).
* :class:`TrainLogCallback` writes ``train_log.jsonl`` (train loss, held-out loss on output tokens, tokens/s,
  padding fraction) and logs progress.

:func:`train_arm` ties it together: encode → Trainer → checkpoints every ``save_steps`` (resumed after a crash) →
final ``save_pretrained`` model in ``run_dir/checkpoint/`` → ``train_summary.json``.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

import torch
from transformers import PreTrainedModel, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from im_pipeline.config import ArmConfig, ExperimentConfig, stable_hash
from im_pipeline.data.templates import TULU_CHAT_TEMPLATE
from im_pipeline.provenance import write_text_atomic
from im_pipeline.training.loss import (
    IGNORE_INDEX,
    KL_FORMS,
    loss_denominator,
    reduce_token_values,
    shifted_weights,
    target_token_logprobs,
    token_ce,
    token_kl,
    unpack_targets,
)

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"
TRAIN_SUMMARY = "train_summary.json"
FINAL_DIR = "checkpoint"
TENSORBOARD_DIR = "tensorboard"  # the Trainer's TensorBoard event files (training.report_to)
TRAINER_CKPT_DIR = "trainer_checkpoints"
FINGERPRINT_FILE = "fingerprint.json"


# -- length-grouped sampling -------------------------------------------------------------------------------------------


class LengthGroupedEpochSampler(torch.utils.data.Sampler[int]):
    """Index order with micro-batches of similar length, reproducible per epoch (for exact resume).

    Per epoch: a seeded random permutation, cut into mega-batches of ``mega_batches`` batches; each mega-batch is
    sorted by length, cut into batches of ``batch_size`` and the batch order shuffled. ``batch_size`` is the
    examples per *optimiser step* (micro-batch × accumulation): the examples of a step do not depend on how it is
    split into micro-batches, and consecutive micro-batches stay sorted, so each is of similar length. Less padding than
    ``transformers``' ``LengthGroupedSampler`` (which sorts mega-batches of ``4 × batch`` on small sets) and, unlike
    it, seeded by ``seed + epoch`` rather than the global RNG — so a run resumed in a later epoch sees the same order
    as an uninterrupted one. The Trainer calls :meth:`set_epoch`.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batches: int = 64) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = max(mega_batches, 1) * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        out: list[int] = []
        for start in range(0, len(perm), self.mega):
            chunk = sorted(perm[start : start + self.mega], key=lambda i: self.lengths[i], reverse=True)
            batches = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            for b in torch.randperm(len(batches), generator=g).tolist():
                out.extend(batches[b])
        return iter(out)


# -- the Trainer subclass ---------------------------------------------------------------------------------------------


class WeightedLossTrainer(Trainer):
    """``Trainer`` whose loss is :func:`weighted_lm_loss` (+ ``kl_coef`` · KL to ``ref_model`` on output tokens).

    Batches must carry ``input_ids``, ``attention_mask``, ``labels``, ``loss_weights`` and ``it_weights`` (the
    :class:`WeightedCollator` output), or, padding-free, the :class:`PaddingFreeCollator` output (packed rows with
    ``position_ids``, ``packed_labels`` and ``target_index``; labels and weights in the padded layout, so every loss
    and denominator is the padded path's); use ``remove_unused_columns=False``.

    Gradient accumulation: ``get_batch_samples`` sums the denominators (:func:`loss_denominator`) of all micro-batches
    of the optimiser step; each micro-batch's loss is its share of the accumulated loss, so the gradient equals that of
    one big batch under either normalisation. Hence ``loss_is_scaled_for_ga = True``. Under data parallelism the
    denominators are summed over processes too (untested here: CPU-only CI).
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        loss_normalisation: str = "sequence",
        kl_coef: float = 0.0,
        ref_model: PreTrainedModel | None = None,
        kl_form: str = "full",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if kl_coef > 0 and ref_model is None:
            raise ValueError("kl_coef > 0 needs ref_model (the frozen base model)")
        if kl_form not in KL_FORMS:
            raise ValueError(f"kl_form must be one of {KL_FORMS}, got {kl_form!r}")
        self.loss_normalisation = loss_normalisation
        self.kl_coef = kl_coef
        self.kl_form = kl_form
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            ref_model.to(self.args.device)
        self._denominators: tuple[torch.Tensor, torch.Tensor] | None = None
        # Running counters since the last log (read and reset in ``log``).
        self._window = self._empty_window()

    @staticmethod
    def _empty_window() -> dict[str, float]:
        return {"real_tokens": 0, "padded_tokens": 0, "lm_loss": 0.0, "kl": 0.0, "it_loss": 0.0, "steps": 0}

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        # Trainer's sampler hook (TRL overrides it too): our length grouping, seeded per epoch.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and dataset is not None:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            lengths = [len(x["input_ids"]) for x in dataset]
            # The examples of one optimiser step over all processes: the same order whatever the split into
            # processes and micro-batches (accelerate hands micro-batches round-robin to the processes).
            step_batch = (
                self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            )
            return LengthGroupedEpochSampler(lengths, step_batch, seed)
        return super()._get_train_sampler(train_dataset)

    # Public Trainer hook: collects the micro-batches of one optimiser step.
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window["steps"] += 1
        norm = self.loss_normalisation
        if batch_samples:
            loss_n = sum(loss_denominator(b["labels"], b["loss_weights"], norm) for b in batch_samples)
            kl_n = sum(loss_denominator(b["labels"], b["it_weights"], norm) for b in batch_samples)
            loss_n, kl_n = loss_n.to(device), kl_n.to(device)
            if self.args.world_size > 1:
                # Data parallel: the denominator of the global batch. DDP averages gradients over processes, so
                # compute_loss multiplies by world_size to keep sum(share) = the global batch's loss.
                loss_n = self.accelerator.gather(loss_n.reshape(1)).sum()
                kl_n = self.accelerator.gather(kl_n.reshape(1)).sum()
            self._denominators = (loss_n, kl_n)
        else:
            self._denominators = None
        return batch_samples, self._denominators[0] if self._denominators is not None else None

    @contextlib.contextmanager
    def _neftune_as_padded(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], packed: bool):
        """NEFTune noise of the padded batch's magnitude on a padding-free row.

        transformers' ``neftune_post_forward_hook`` draws uniform noise of magnitude ``α / sqrt(T · d)``, with ``T``
        the row length: the padded length of the micro-batch when padded, but the packed row's length ``L`` (a few
        examples) when padding-free. While the packed forward runs, α is scaled by
        ``sqrt(L / T)`` so each token gets noise of the same magnitude, ``α / sqrt(T · d)``, as in the padded path
        (a different random draw: the tensors differ in shape).
        """
        alpha = self.neftune_noise_alpha
        if not (packed and alpha and model.training):
            yield
            return
        emb = self.accelerator.unwrap_model(model).get_input_embeddings()
        if getattr(emb, "neftune_noise_alpha", None) is None:  # hook not active
            yield
            return
        padded_len, packed_len = inputs["labels"].shape[1], inputs["input_ids"].shape[1]
        emb.neftune_noise_alpha = alpha * math.sqrt(packed_len / padded_len)
        try:
            yield
        finally:
            emb.neftune_noise_alpha = alpha

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        for key in ("labels", "loss_weights", "it_weights"):
            if key not in inputs:
                raise KeyError(f"batch lacks {key!r}: use WeightedCollator and remove_unused_columns=False")
        labels, weights, it_weights = inputs["labels"], inputs["loss_weights"], inputs["it_weights"]
        packed = "target_index" in inputs  # PaddingFreeCollator (training.padding_free)
        if packed:
            # Packed rows, no attention_mask: transformers builds the block-diagonal causal mask from position_ids
            # (masking_utils.find_packed_sequence_indices; it needs attention_mask=None and no cache).
            model_inputs = {
                "input_ids": inputs["input_ids"],
                "position_ids": inputs["position_ids"],
                "use_cache": False,
            }
            target_labels = inputs["packed_labels"]
            target_index = inputs["target_index"]

            def per_example(values: torch.Tensor) -> torch.Tensor:
                return unpack_targets(values, target_index)

        else:
            model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
            target_labels = labels

            def per_example(values: torch.Tensor) -> torch.Tensor:
                return values

        # No labels to the model: its own (unweighted) loss would be wasted work.
        with self._neftune_as_padded(model, inputs, packed):
            outputs = model(**model_inputs)
        # Accumulated-batch denominators only while training; evaluation batches are normalised on their own.
        loss_n, kl_n = self._denominators if (model.training and self._denominators is not None) else (None, None)
        norm = self.loss_normalisation
        # Per-target values in the padded [n, T-1] layout (unpacked from the packed row when padding-free), then the
        # reductions of loss.py on them: the same loss either way.
        ce = per_example(token_ce(outputs.logits, target_labels))
        lm_loss = reduce_token_values(ce, shifted_weights(labels, weights), norm, loss_n)
        loss = lm_loss
        kl = None
        if self.kl_coef > 0:
            with torch.no_grad():
                ref_logits = self.ref_model(**model_inputs).logits
            if self.kl_form == "release":
                # As src/finetune.py (compute_kl_divergence_loss_target_token, loss.release_kl): log p_θ(y) − log
                # p_ref(y) over the tokens the NLL trains on (its mask is `labels != -100`, the arm's own labels: with
                # --use_lm_loss the instruction too), with the NLL's weights and denominator. -ce is the NLL's own
                # graph node, so the cancellation at kl_coef = 1 is exact.
                with torch.no_grad():
                    ref_logp = per_example(target_token_logprobs(ref_logits, target_labels))
                kl = reduce_token_values(-ce - ref_logp, shifted_weights(labels, weights), norm, loss_n)
            else:
                # loss.weighted_kl: full-distribution KL at the positions predicting output tokens (IT mask).
                token_kls = per_example(token_kl(outputs.logits[:, :-1], ref_logits[:, :-1]))
                kl = reduce_token_values(token_kls, shifted_weights(labels, it_weights), norm, kl_n)
            loss = loss + self.kl_coef * kl
        if model.training and loss_n is not None and self.args.world_size > 1:
            loss = loss * self.args.world_size
        if model.training:
            if packed:  # every example's k tokens: its k - 1 targets + its first token
                real = int((inputs["target_index"] >= 0).sum()) + labels.shape[0]
            else:
                real = int(inputs["attention_mask"].sum())
            self._window["real_tokens"] += real
            self._window["padded_tokens"] += int(inputs["input_ids"].numel())
            self._window["lm_loss"] += float(lm_loss.detach())
            # The output-token loss under the IT mask, for every arm (this micro-batch's share of the step): the
            # train curve that is comparable between IT and IM (each arm's own loss covers different tokens).
            with torch.no_grad():
                self._window["it_loss"] += float(
                    reduce_token_values(ce.detach(), shifted_weights(labels, it_weights), norm, kl_n)
                )
            self._window["kl"] += float(kl.detach()) if kl is not None else 0.0
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the token counts and the loss parts of the window since the last log to training logs."""
        if "loss" in logs:
            w = self._window
            if self.args.world_size > 1:  # every process logs at the same steps: sum the counters over them
                keys = ("real_tokens", "padded_tokens", "lm_loss", "kl", "it_loss")
                local = torch.tensor([float(w[k]) for k in keys], dtype=torch.float64, device=self.args.device)
                total = self.accelerator.reduce(local, reduction="sum").tolist()
                w = {**w, **dict(zip(keys, total, strict=True))}
                # (lm_loss, kl, it_loss of a micro-batch are its share of the global step: summed, the step's)
                w["real_tokens"], w["padded_tokens"] = int(w["real_tokens"]), int(w["padded_tokens"])
            steps = max(w["steps"], 1)
            logs["tokens"] = w["real_tokens"]
            logs["padded_tokens"] = w["padded_tokens"]
            logs["padding_fraction"] = 1.0 - w["real_tokens"] / w["padded_tokens"] if w["padded_tokens"] else 0.0
            # Per-step values (each micro-batch holds its share of the step's loss, so sums are per step).
            logs["it_mask_loss"] = w["it_loss"] / steps
            if self.kl_coef > 0:
                logs["lm_loss"] = w["lm_loss"] / steps
                logs["kl"] = w["kl"] / steps
            self._window = self._empty_window()
        super().log(logs, start_time)


def attention_cost_of(model: torch.nn.Module) -> float:
    """Attention FLOPs per context position over linear FLOPs per token: ``2 · layers · d_attn / N_linear``.

    Per token and layer, ``QKᵀ`` and ``AV`` cost ``2 · 2 · L · d_attn`` FLOPs over a context of ``L`` (sdpa computes
    masked-out blocks too); the matmuls cost ``2 · N_linear`` (parameters less the input embedding lookup, unless it
    is tied to the output head). Used by :class:`PaddingFreeCollator` to weigh longer rows against more rows.
    """
    c = getattr(model, "config", None)
    layers = getattr(c, "num_hidden_layers", None)
    heads, head_dim = getattr(c, "num_attention_heads", None), getattr(c, "head_dim", None)
    d_attn = heads * head_dim if heads and head_dim else getattr(c, "hidden_size", None)
    if not (layers and d_attn):
        return 1 / 4096
    n = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if emb is not None and (out is None or out.weight is not emb.weight):
        n -= emb.weight.numel()
    return 2 * layers * d_attn / max(n, 1)


# -- held-out loss on output tokens ----------------------------------------------------------------------------------


def _encode_records(
    records: Sequence[dict],
    tokenizer: Any,
    *,
    mode: str,
    prompt_loss_weight: float | None,
    template: str,
    max_length: int,
    on_overlength: str = "truncate",
) -> tuple[list[dict], dict[str, int]]:
    """Encode records with ``encode_example`` and apply the over-length policy.

    ``encode_example`` keeps the first ``max_length`` tokens (as open-instruct does) and says whether it cut; with
    ``on_overlength="drop"`` such examples are dropped instead. Examples left without any output-token target (IT
    mask; e.g. a prompt longer than ``max_length``) are dropped in every mode, so all arms train on the same examples.
    """
    from im_pipeline.training.masking import encode_example

    if on_overlength not in ("truncate", "drop"):
        raise ValueError(f"on_overlength must be 'truncate' or 'drop', got {on_overlength!r}")
    out: list[dict] = []
    stats = {"n_in": len(records), "n_truncated": 0, "n_dropped_overlength": 0, "n_dropped_no_output": 0}
    for rec in records:
        enc = encode_example(
            rec, tokenizer, mode=mode, prompt_loss_weight=prompt_loss_weight, template=template, max_length=max_length
        )
        if enc["truncated"]:
            if on_overlength == "drop":
                stats["n_dropped_overlength"] += 1
                continue
            stats["n_truncated"] += 1
        if not any(w > 0 for w in enc["it_weights"][1:]):
            stats["n_dropped_no_output"] += 1
            continue
        out.append(
            {
                "input_ids": list(enc["input_ids"]),
                "loss_weights": [float(x) for x in enc["loss_weights"]],
                "it_weights": [float(x) for x in enc["it_weights"]],
            }
        )
    stats["n_out"] = len(out)
    return out, stats


LR_SCALE_RATIO = "output_over_im_release"


def output_over_im_release(
    records: Sequence[dict], tokenizer: Any, *, template: str, max_length: int, on_overlength: str = "truncate"
) -> dict[str, Any]:
    """Σ output-token targets (IT mask) / Σ ``im_release`` targets over ``records``, encoded as training encodes them
    (same template, max length and over-length policy): the share of IM's trained tokens that are outputs, i.e. the
    learning-rate factor that gives IT the per-output-token step IM takes under token normalisation."""
    enc, _ = _encode_records(
        records,
        tokenizer,
        mode="im_release",
        prompt_loss_weight=None,
        template=template,
        max_length=max_length,
        on_overlength=on_overlength,
    )
    output = sum(sum(1 for w in e["it_weights"][1:] if w > 0) for e in enc)  # position 0 is never a target
    im_release = sum(sum(1 for w in e["loss_weights"][1:] if w > 0) for e in enc)
    if not im_release:
        raise ValueError("lr_scale output_over_im_release: no im_release target tokens in the training sample")
    return {"output_tokens": output, "im_release_tokens": im_release, "ratio": output / im_release}


def _encoded_output_loss(model: torch.nn.Module, encoded: Sequence[dict], pad_token_id: int, batch_size: int) -> float:
    """Token-mean CE over the IT-mask targets of pre-encoded examples (model put in eval mode, then restored)."""
    return _encoded_output_losses(model, encoded, pad_token_id, batch_size)[0]


@torch.no_grad()
def _encoded_output_losses(
    model: torch.nn.Module, encoded: Sequence[dict], pad_token_id: int, batch_size: int
) -> tuple[float, float]:
    """(token mean, per-example mean) of the CE over the IT-mask targets of pre-encoded examples. The per-example
    mean (each example's token mean, then the mean over examples) is the released compute_loss.py's reduction."""
    from im_pipeline.training.loss import token_ce
    from im_pipeline.training.masking import WeightedCollator

    if not encoded:
        raise ValueError("no examples to compute the output-token loss on")
    collate = WeightedCollator(pad_token_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, per_example = 0.0, 0.0, []
    # Sorted by length: less padding, same result (neither mean depends on the order).
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    try:
        for start in range(0, len(order), batch_size):
            batch = collate([encoded[i] for i in order[start : start + batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = torch.where(batch["it_weights"] > 0, batch["input_ids"], torch.full_like(batch["input_ids"], -100))
            w = torch.where(labels[:, 1:] == IGNORE_INDEX, 0.0, batch["it_weights"][:, 1:].float())
            sums = (token_ce(logits, labels) * w).sum(dim=1)
            counts = w.sum(dim=1)
            total += float(sums.sum())
            count += float(counts.sum())
            per_example += [float(a / b) for a, b in zip(sums, counts, strict=True) if b > 0]
    finally:
        model.train(was_training)
    return total / count, sum(per_example) / len(per_example)


def output_token_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict],
    *,
    template: str = "tulu",
    max_length: int = 512,
    batch_size: int = 8,
) -> float:
    """Mean cross-entropy over the output tokens (IT mask: assistant content + EOS) of ``records``.

    Token mean over all output tokens of all records (not per-example), the same for every arm, so IT and IM runs are
    comparable. Over-length examples are truncated to ``max_length``. The model is evaluated in eval mode (no dropout,
    no NEFTune noise) and its mode restored afterwards.
    """
    encoded, _ = _encode_records(
        records, tokenizer, mode="it", prompt_loss_weight=None, template=template, max_length=max_length
    )
    return _encoded_output_loss(model, encoded, tokenizer.pad_token_id, batch_size)


# -- logging callback -----------------------------------------------------------------------------------------------


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
            self._pending_held_out = _encoded_output_losses(model, self.held_out, self.pad_token_id, self.batch_size)
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


# -- the saved checkpoint --------------------------------------------------------------------------------------


def save_tokenizer(tokenizer: Any, out_dir: Path, template: str) -> None:
    """Save the tokenizer with the chat template the model was trained with as its ``chat_template``.

    With the Tulu template the base model's own template (e.g. ChatML) would build prompts the model was not
    tuned on, so :data:`TULU_CHAT_TEMPLATE` replaces it in the saved copy (the loaded tokenizer is left as it
    was). With ``chat_template`` training used the tokenizer's own template, which is kept.
    """
    if template != "tulu":
        tokenizer.save_pretrained(out_dir)
        return
    original = tokenizer.chat_template
    tokenizer.chat_template = TULU_CHAT_TEMPLATE
    try:
        tokenizer.save_pretrained(out_dir)
    finally:
        tokenizer.chat_template = original


def write_model_card(final_dir: Path, cfg: ExperimentConfig, arm: ArmConfig, seed: int, summary: dict) -> Path:
    """``checkpoint/README.md``: a Hugging Face model card (metadata + what was trained, how, and how well)."""
    from huggingface_hub import ModelCard, ModelCardData

    report = (Path(cfg.report_dir) / cfg.name / "REPORT.md").resolve()
    try:
        report_link = os.path.relpath(report, Path(final_dir).resolve())
    except ValueError:  # another drive (Windows)
        report_link = str(report)
    t = cfg.training
    base = cfg.model.source
    data = cfg.data
    extras = {k: getattr(arm, k) for k in ("prompt_loss_weight", "neftune_alpha", "kl_coef") if getattr(arm, k)}
    meta = ModelCardData(
        base_model=base if "/" in base and not Path(base).exists() else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["im-pipeline", f"loss-mode-{arm.loss_mode}", "instruction-tuning"],
    )

    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else str(x)

    rows = {
        "base model": f"`{base}`" + (f" (revision `{cfg.model.revision}`)" if cfg.model.revision else ""),
        "training data": f"`{data.train}`, {summary.get('n_train')} examples"
        + (f" (subsample n={data.n})" if data.n else "")
        + f", {summary.get('n_held_out')} held out",
        "chat template": f"`{data.template}` (saved as the tokenizer's `chat_template`)",
        "loss mode": f"`{arm.loss_mode}` (arm `{arm.name}`)" + (f", {extras}" if extras else ""),
        "seed": seed,
        "epochs / steps": f"{t.epochs} / {summary.get('steps')}",
        "learning rate": f"{summary.get('learning_rate', t.learning_rate)} ({t.lr_scheduler}, warm-up {t.warmup_ratio})"
        + (f"; {t.learning_rate} × lr_scale {summary['lr_scale_factor']:.6g}" if arm.lr_scale != 1.0 else ""),
        "batch": f"{t.batch_size} × {t.gradient_accumulation_steps} accumulation",
        "max length": data.max_length,
        "loss normalisation": t.loss_normalisation,
        "weight decay": t.weight_decay,
        "final train loss": fmt(summary.get("final_train_loss")),
        "held-out loss (output tokens)": fmt(summary.get("final_held_out_loss")),
        "training time": f"{summary.get('wall_time_s')} s, {summary.get('tokens_per_s')} tokens/s",
    }
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())])
    content = f"""---
{meta.to_yaml()}
---

# {cfg.name} / {arm.name} / seed {seed}

`{base}` fine-tuned by im-pipeline (Instruction Tuning vs Instruction Modelling, Shi et al. 2024) with loss
mode **{arm.loss_mode}** ({_LOSS_MODE_WORDS.get(str(arm.loss_mode), str(arm.loss_mode))}), experiment `{cfg.name}`.

{table}

Benchmark results (MMLU, TruthfulQA, HumanEval, AlpacaEval, overfitting) of this model next to the base model
and the other arms: [the experiment's report]({report_link}).

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("PATH/TO/checkpoint")
model = AutoModelForCausalLM.from_pretrained("PATH/TO/checkpoint")
prompt = tok.apply_chat_template([{{"role": "user", "content": "Hello"}}], tokenize=False, add_generation_prompt=True)
```

The tokenizer's `chat_template` is the template used in training, so `apply_chat_template` builds the prompts
the model was tuned on.
"""
    path = Path(final_dir) / "README.md"
    ModelCard(content).save(path)
    return path


_LOSS_MODE_WORDS = {
    "it": "loss on the outputs only",
    "im": "loss on the instructions and the outputs",
    "im_release": "loss on everything but the first user header",
    "weighted": "instruction tokens weighted by λ",
}


# -- train_arm --------------------------------------------------------------------------------------------------


def _drop_incomplete_checkpoints(ckpt_root: Path) -> None:
    """Remove Trainer checkpoints a crash interrupted while they were written (so resume takes the last whole one).

    Trainer writes ``trainer_state.json`` last; a ``checkpoint-N`` without a readable one was cut short (a process
    killed mid-save), and ``get_last_checkpoint`` would otherwise pick it and fail to resume.
    """
    for ckpt in ckpt_root.glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: incomplete checkpoint (interrupted while saving), removed", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)


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
    """What determines the trained model: model, data settings, training settings, arm, seed, the data itself, and
    the number of data-parallel processes (the global batch is per-device batch × accumulation × processes)."""
    return stable_hash(
        {
            "model": cfg.model.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"),
            "training": cfg.training.model_dump(mode="json", exclude={"threads", "report_to", "launcher"}),
            **({"world_size": world_size} if world_size > 1 else {}),
            "arm": arm.model_dump(mode="json"),
            "seed": seed,
            "train": stable_hash(train, 32),
            "held_out": stable_hash(held_out, 32),
        },
        32,
    )


def _is_finished(run_dir: Path, fingerprint: str) -> dict | None:
    summary_path = run_dir / TRAIN_SUMMARY
    final = run_dir / FINAL_DIR
    if not (summary_path.is_file() and (final / "config.json").is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if summary.get("fingerprint") == fingerprint else None


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
    from im_pipeline.training.masking import PaddingFreeCollator, WeightedCollator

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not train:
        raise ValueError("train_arm: the training set is empty")
    # Under torchrun / accelerate launch every process runs this function: all of them train and take part in
    # the final save (ZeRO-3 / FSDP gather the weights), rank 0 alone writes files.
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    fingerprint = _fingerprint(cfg, arm, seed, train, held_out, world_size)
    done = _is_finished(run_dir, fingerprint)
    if done is not None:
        log.info("%s seed %d: finished run found in %s, not retraining", arm.name, seed, run_dir)
        return done
    started_at = _utc_now()

    ckpt_root = run_dir / TRAINER_CKPT_DIR
    fp_file = ckpt_root / FINGERPRINT_FILE
    log_path = run_dir / TRAIN_LOG
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
            cb.logging_dir = str(run_dir / TENSORBOARD_DIR)
    if resume:
        log.info("%s seed %d: resuming from %s", arm.name, seed, resume)
    result = trainer.train(resume_from_checkpoint=resume)

    final_dir = run_dir / FINAL_DIR
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
        "checkpoint": FINAL_DIR,
    }
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return summary
    write_text_atomic(run_dir / TRAIN_SUMMARY, json.dumps(summary, indent=2) + "\n")
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
