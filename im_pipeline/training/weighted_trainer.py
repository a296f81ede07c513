"""The transformers.Trainer subclass: per-token loss weights with an exact denominator under gradient accumulation,
the KL term to the frozen base model, padding-free batches."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer

from im_pipeline.loss_modes import OUTPUT_ONLY, LossSpec
from im_pipeline.training.engine import prepare_reference
from im_pipeline.training.loss import (
    chunked_cross_entropy,
    kept_logits,
    logit_positions,
    loss_denominator,
    next_token_labels,
    reduce_token_values,
    scatter_positions,
    shifted_weights,
    token_kl,
    unpack_targets,
)
from im_pipeline.training.sampler import LengthGroupedEpochSampler


@dataclass(frozen=True)
class Targets:
    """The loss side of a batch: ``labels`` and weights in the padded ``[n, T]`` layout, the labels the logits are
    scored against (the packed rows' when padding-free) and ``target_index``, the map back (None when padded)."""

    labels: torch.Tensor
    weights: torch.Tensor
    it_weights: torch.Tensor
    scored_labels: torch.Tensor
    target_index: torch.Tensor | None
    seq_scale: torch.Tensor | None = None  # [n], arm IT-w's per-example factor (training.masking)

    def per_example(self, values: torch.Tensor) -> torch.Tensor:
        """Per-target values of the scored rows in the padded ``[n, T-1]`` layout."""
        return values if self.target_index is None else unpack_targets(values, self.target_index)

    def shifted(self, it_mask: bool = False) -> torch.Tensor:
        """:func:`shifted_weights` of the arm's weights (or of the IT mask's)."""
        return shifted_weights(self.labels, self.it_weights if it_mask else self.weights)

    def logit_positions(self, it_only: bool = False) -> torch.Tensor:
        """The scored rows' positions ``[B, L]`` whose logits a loss term reads: the arm's weighted targets and the IT
        mask's (KL, the logged IT loss); ``it_only``: the IT mask's alone."""
        need = self.shifted(it_mask=True) > 0
        if not it_only:
            need = need | (self.shifted() > 0)
        return logit_positions(need, self.target_index, (self.scored_labels.shape[0], self.scored_labels.shape[1]))

    def next_labels(self, keep: torch.Tensor) -> torch.Tensor:
        """``[N]``: the label each kept position predicts."""
        return next_token_labels(self.scored_labels)[keep]

    def place(self, keep: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Values of the kept positions (``[N]``) in the padded per-target layout ``[n, T-1]`` (0 elsewhere)."""
        return self.per_example(scatter_positions(keep, values)[:, :-1])


def split_batch(inputs: dict[str, torch.Tensor]) -> tuple[dict[str, Any], Targets]:
    """(model inputs, :class:`Targets`) of a :class:`WeightedCollator` or :class:`PaddingFreeCollator` batch."""
    for key in ("labels", "loss_weights", "it_weights"):
        if key not in inputs:
            raise KeyError(f"batch lacks {key!r}: use WeightedCollator and remove_unused_columns=False")
    labels, weights, it_weights = inputs["labels"], inputs["loss_weights"], inputs["it_weights"]
    if "target_index" in inputs:  # PaddingFreeCollator (training.padding_free)
        # Packed rows, no attention_mask: transformers builds the block-diagonal causal mask from position_ids
        # (masking_utils.find_packed_sequence_indices; it needs attention_mask=None and no cache).
        model_inputs = {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"], "use_cache": False}
        packed = (inputs["packed_labels"], inputs["target_index"])
        return model_inputs, Targets(labels, weights, it_weights, *packed, inputs.get("seq_scale"))
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    return model_inputs, Targets(labels, weights, it_weights, labels, None, inputs.get("seq_scale"))


class WeightedLossTrainer(Trainer):
    """``Trainer`` whose loss is :func:`weighted_lm_loss` (+ ``loss.kl_coef`` · KL to ``ref_model``, in
    ``loss.kl_form``). The mask of ``loss.mode`` is already in the batch's weights.

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
        loss: LossSpec = OUTPUT_ONLY,
        loss_normalisation: str = "sequence",
        ref_model: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss.kl_coef > 0 and ref_model is None:
            raise ValueError("kl_coef > 0 needs ref_model (the frozen base model)")
        self.loss_spec = loss
        self.loss_normalisation = loss_normalisation
        # frozen, and placed by the training engine (sharded under ZeRO-3 / FSDP): training.engine
        self.ref_model = None if ref_model is None else prepare_reference(ref_model, self.accelerator)
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
        model_inputs, targets = split_batch(inputs)
        # Logits only at the positions some loss term reads (transformers' boolean ``logits_to_keep``: the LM head runs
        # on those hidden states alone, [N, V]); no labels to the model: its own (unweighted) loss would be wasted work.
        keep = targets.logit_positions()
        with self._neftune_as_padded(model, inputs, targets.target_index is not None):
            outputs = model(**model_inputs, logits_to_keep=keep)
        logits = kept_logits(outputs.logits, keep)
        # Accumulated-batch denominators only while training; evaluation batches are normalised on their own.
        loss_n, kl_n = self._denominators if (model.training and self._denominators is not None) else (None, None)
        # Per-target values in the padded [n, T-1] layout (unpacked from the packed row when padding-free), then the
        # reductions of loss.py on them: the same loss either way.
        ce = targets.place(keep, chunked_cross_entropy(logits, targets.next_labels(keep)))
        lm_loss = reduce_token_values(ce, targets.shifted(), self.loss_normalisation, loss_n, targets.seq_scale)
        loss, kl = lm_loss, None
        if self.loss_spec.kl_coef > 0:
            kl = self._kl_term(model_inputs, keep, logits, ce, targets, (loss_n, kl_n))
            loss = loss + self.loss_spec.kl_coef * kl
        if model.training and loss_n is not None and self.args.world_size > 1:
            loss = loss * self.args.world_size
        if model.training:
            self._count(inputs, targets, lm_loss, ce, kl, kl_n)
        return (loss, outputs) if return_outputs else loss

    def _kl_term(
        self,
        model_inputs: dict[str, Any],
        keep: torch.Tensor,
        logits: torch.Tensor,
        ce: torch.Tensor,
        targets: Targets,
        denominators: tuple[torch.Tensor | None, torch.Tensor | None],
    ) -> torch.Tensor:
        """The KL term to the frozen reference model, in the arm's ``kl_form``.

        ``full`` (paper Eq. 5): :func:`token_kl`, KL(model ‖ ref) over the whole next-token distribution, at the
        positions that predict output tokens (IT mask), reduced like the NLL. ``release``: the released code's "KL"
        (``src/finetune.py`` → ``utils.compute_kl_divergence_loss_target_token`` with
        ``compute_kl_penalty(kl_penalty="kl")``), ``log p_θ(y) − log p_ref(y)`` at the *target token* only, over the
        tokens the NLL trains on, with its weights and denominator. Not a divergence (its expectation under the data
        is not ≥ 0): ``NLL + c·KL = (1 − c)·NLL − c·mean(log p_ref(y))``, whose gradient is ``(1 − c)`` times the
        NLL's and vanishes at ``c = 1``.
        """
        norm, (loss_n, kl_n) = self.loss_normalisation, denominators
        with torch.no_grad():
            ref_logits = kept_logits(self.ref_model(**model_inputs, logits_to_keep=keep).logits, keep)
        if self.loss_spec.kl_form == "release":
            # The NLL's tokens: the released mask is `labels != -100`, the arm's own labels (with --use_lm_loss the
            # instruction too). -ce is the NLL's own graph node, so the cancellation at kl_coef = 1 is exact.
            with torch.no_grad():
                ref_logp = targets.place(keep, -chunked_cross_entropy(ref_logits, targets.next_labels(keep)))
            return reduce_token_values(-ce - ref_logp, targets.shifted(), norm, loss_n)
        kl_keep = targets.logit_positions(it_only=True) & keep
        rows = kl_keep[keep]  # the kept rows at the IT mask's positions
        token_kls = targets.place(kl_keep, token_kl(logits[rows], ref_logits[rows]))
        return reduce_token_values(token_kls, targets.shifted(it_mask=True), norm, kl_n)

    def _count(
        self,
        inputs: dict[str, torch.Tensor],
        targets: Targets,
        lm_loss: torch.Tensor,
        ce: torch.Tensor,
        kl: torch.Tensor | None,
        kl_n: torch.Tensor | None,
    ) -> None:
        """Add a training micro-batch's tokens and loss parts to the window since the last log."""
        if targets.target_index is not None:  # every example's k tokens: its k - 1 targets + its first token
            real = int((targets.target_index >= 0).sum()) + targets.labels.shape[0]
        else:
            real = int(inputs["attention_mask"].sum())
        self._window["real_tokens"] += real
        self._window["padded_tokens"] += int(inputs["input_ids"].numel())
        self._window["lm_loss"] += float(lm_loss.detach())
        # The output-token loss under the IT mask, for every arm (this micro-batch's share of the step): the
        # train curve that is comparable between IT and IM (each arm's own loss covers different tokens).
        with torch.no_grad():
            it_mask = targets.shifted(it_mask=True)
            self._window["it_loss"] += float(reduce_token_values(ce.detach(), it_mask, self.loss_normalisation, kl_n))
        self._window["kl"] += float(kl.detach()) if kl is not None else 0.0

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
            if self.loss_spec.kl_coef > 0:
                logs["lm_loss"] = w["lm_loss"] / steps
                logs["kl"] = w["kl"] / steps
            self._window = self._empty_window()
        super().log(logs, start_time)
