"""LoRA / QLoRA adapters through peft (``training.peft``): wrap the base model, count what trains, the KL reference as
the base with adapters disabled, and the final save (the adapter plus a merged model plain transformers loads).

peft does the adapters, their disabling and merging; written here is only what it leaves to the caller: which
config makes which ``LoraConfig`` / 4-bit load, refusing QLoRA without CUDA before anything loads, and calling the
model with its adapters disabled in the shape the trainer's ``ref_model`` has (a callable returning logits).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from im_pipeline.config import AdapterConfig, ExperimentConfig

ADAPTER_DIR = "adapter"
"""The adapter's folder inside the final ``checkpoint/`` (``adapter_config.json`` + ``adapter_model.safetensors``)."""


class AdapterError(RuntimeError):
    """An adapter setting this machine cannot run (QLoRA without CUDA or without bitsandbytes)."""


def check_runnable(peft_cfg: AdapterConfig) -> None:
    """Refuse QLoRA where bitsandbytes' 4-bit layers cannot run: no CUDA device, or bitsandbytes not installed.

    Checked when training starts (not at config load: a QLoRA config stays loadable on a laptop for ``plan``,
    ``keys`` or submitting to a GPU work pool)."""
    if peft_cfg.method != "qlora":
        return
    if not torch.cuda.is_available():
        raise AdapterError(
            "training.peft.method=qlora needs a CUDA GPU (bitsandbytes' 4-bit layers run on CUDA only) and this "
            "machine has none; use training.peft.method=lora here, or run on a GPU machine"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise AdapterError(
            "training.peft.method=qlora needs bitsandbytes (the gpu extra): pip install -e '.[gpu]' (CUDA machines)"
        ) from exc


def load_options(peft_cfg: AdapterConfig, dtype: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments of the base model: QLoRA's NF4 4-bit load (double-quantised, computing in
    ``dtype``, the model's) on this process's GPU, after :func:`check_runnable`; nothing otherwise."""
    check_runnable(peft_cfg)
    if peft_cfg.method != "qlora":
        return {}
    from transformers import BitsAndBytesConfig

    from im_pipeline.models.common import torch_dtype

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )
    return {"quantization_config": quant, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def wrap(model: Any, peft_cfg: AdapterConfig, gradient_checkpointing: bool, seed: int) -> Any:
    """The base model with fresh LoRA adapters (peft's ``get_peft_model``): only the adapters train. Their initial
    weights are drawn from ``seed`` (the run's), leaving the global random state as it was."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if peft_cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # the checkpointed layers' inputs need grad when the embeddings are frozen
    lora = LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules=peft_cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, lora)


def trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) of the model being trained (peft counts 4-bit weights unpacked)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = [(p.requires_grad, getattr(p, "ds_numel", p.numel())) for p in model.parameters()]  # ZeRO-3: ds_numel
    return sum(n for trains, n in params if trains), sum(n for _, n in params)


def trainable_fields(model: torch.nn.Module) -> dict[str, Any]:
    """``trainable_params`` and ``trainable_fraction`` of ``train_summary.json``."""
    trainable, total = trainable_counts(model)
    return {"trainable_params": trainable, "trainable_fraction": round(trainable / total, 6) if total else None}


class AdaptersDisabled:
    """The KL reference without a second model: the trained model called with its adapters disabled (peft's
    ``disable_adapter()``) and in eval mode (no dropout, no NEFTune noise: what a frozen base copy would give).

    Stands where :class:`~im_pipeline.training.weighted_trainer.WeightedLossTrainer` takes ``ref_model``: it is
    called under ``torch.no_grad`` and returns the model's outputs; ``eval``, ``requires_grad_`` and ``to`` leave the
    trained model as it is (freezing or moving it is the Trainer's business)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, **inputs: Any) -> Any:
        with self.disabled():
            return self.model(**inputs)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self.model.train(was_training)

    def eval(self) -> AdaptersDisabled:
        return self

    def requires_grad_(self, _: bool = False) -> AdaptersDisabled:
        return self

    def to(self, *_: Any, **__: Any) -> AdaptersDisabled:
        return self


def base_loader(cfg: ExperimentConfig) -> Callable[[], Any] | None:
    """With adapters: a loader of the untouched base model (unquantised, ``model.dtype``, CPU) to merge into."""
    if cfg.training.peft.method == "none":
        return None
    m = cfg.model

    def load() -> Any:
        from im_pipeline.models import load_model_and_tokenizer

        return load_model_and_tokenizer(m.source, dtype=m.dtype, cache_dir=m.cache_dir, revision=m.revision)[0]

    return load


def save_merged(adapter_dir: Path, final_dir: Path, load_base: Callable[[], Any]) -> None:
    """``final_dir``: the base model (``load_base()``, unquantised, in the model's dtype, on the CPU) with the saved
    adapter merged in (peft's ``merge_and_unload``), a plain ``save_pretrained`` model any transformers loads.

    Merged from the adapter as saved, not from the model in training: the QLoRA base is 4-bit, and merging into
    the unquantised weights is what peft recommends."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_base(), str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(final_dir))
