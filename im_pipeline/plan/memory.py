"""Training and evaluation memory per GPU from the architecture alone: weights, gradients, optimizer state, autocast
copies, activations (with and without checkpointing), the loss's logits, ZeRO-3 / FSDP sharding, LoRA and QLoRA.

Standard library only (``bench/gpu_verify.py`` compares its measured peaks with these numbers on a machine without the
project's other dependencies). Every number is bytes; the formulas follow transformers' Llama-family decoder layer as
it runs in the project's Trainer (what each op saves for backward, below) and torch's AdamW.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from im_pipeline.plan.arch import Arch

PRECISIONS = ("fp32", "bf16_autocast", "bf16_weights")
"""``fp32``: fp32 weights, no autocast; ``bf16_autocast``: fp32 master weights and optimizer state under bf16
autocast (transformers' ``bf16=True`` on an fp32 model); ``bf16_weights``: bf16 weights, gradients and AdamW state
(a bf16 model: updates below half a bf16 ulp are lost)."""
ENGINES = ("single", "ddp", "zero3", "fsdp")
ADAPTERS = ("none", "lora", "qlora")
GIB = 2**30
FITS_FRACTION = 0.85
"""A plan "fits" when its peak is at most this share of a GPU's memory: the peak counts tensors (what
``torch.cuda.max_memory_allocated`` reports), and PyTorch's caching allocator reserves more than that (blocks it keeps
but cannot reuse for a larger tensor); 15% is headroom for it, not a measured figure."""

# Bytes per parameter: (weights, gradients, optimizer state) of the trained parameters.
_STATE_BYTES = {"fp32": (4, 4, 8), "bf16_autocast": (4, 4, 8), "bf16_weights": (2, 2, 4)}
_QLORA_BYTES = 0.5 + 0.127 / 8  # NF4 (4 bits) + double-quantised constants (~0.127 bits) per parameter
CE_CHUNK_ROWS = 1024
"""Rows per chunk of the training loss's cross-entropy (``im_pipeline.training.loss.CE_CHUNK_ROWS``; a test checks
they are equal: this module imports neither torch nor the training code)."""


@dataclass(frozen=True)
class TrainSetup:
    """What training memory depends on besides the architecture."""

    precision: str = "bf16_autocast"
    engine: str = "single"
    world_size: int = 1
    adapter: str = "none"
    lora_rank: int = 16
    batch_size: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1
    reference_model: bool = False  # a frozen copy for the KL term, in the weights' dtype
    kept_fraction: float = 1.0  # of the positions, those whose logits the loss reads (1: every one, an upper bound)

    def __post_init__(self) -> None:
        for value, allowed in ((self.precision, PRECISIONS), (self.engine, ENGINES), (self.adapter, ADAPTERS)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")
        if not 0 < self.kept_fraction <= 1:
            raise ValueError(f"kept_fraction must be in (0, 1], got {self.kept_fraction}")


def layer_activation_bytes(arch: Arch, precision: str) -> int:
    """Bytes saved for backward by one decoder layer, per token.

    ``bf16_autocast`` (residual stream fp32, matmuls bf16): each RMSNorm keeps its fp32 input and normalised output
    (8h) and every linear after it its own bf16 cast of that output (q, k, v: 3·2h; gate, up: 2·2h); attention keeps
    the rotated q and k, v and its output, and o_proj's contiguous copy of the output (2·(3h + 2·kv)); the MLP keeps
    gate, SiLU(gate), up and their product (4·2i). ``fp32``: the same with 4-byte tensors and no casts;
    ``bf16_weights``: a bf16 residual (RMSNorm keeps an fp32 copy of its input plus bf16 outputs). ``kv`` is the
    key/value width as attention saves it: repeated to the query width (SDPA with a mask repeats grouped heads).
    """
    h, i = arch.hidden, arch.intermediate
    kv = h
    if precision == "bf16_autocast":
        return (8 * h + 3 * 2 * h) + (8 * h + 2 * 2 * h) + 2 * (3 * h + 2 * kv) + 4 * 2 * i
    if precision == "fp32":
        return 2 * 12 * h + 4 * (3 * h + 2 * kv) + 4 * 4 * i
    return 2 * 8 * h + 2 * (3 * h + 2 * kv) + 4 * 2 * i


def final_norm_bytes(arch: Arch, precision: str) -> int:
    """Per token, what the final RMSNorm saves for backward: it runs on every position before the logits are sliced
    to the kept ones; its fp32 input and output (8h), or an fp32 copy of a bf16 input and its bf16 output (6h)."""
    return (6 if precision == "bf16_weights" else 8) * arch.hidden


def logits_bytes(arch: Arch, precision: str, kept: int) -> int:
    """The loss's own tensors at its peak (the start of the cross-entropy's backward), for ``kept`` positions: the
    logits in the LM head's output dtype, the gradient it writes for them in the same dtype (2 · dtype · vocab per
    position), the LM head's input at those positions (dtype · hidden) and the cross-entropy's one fp32 chunk of
    :data:`CE_CHUNK_ROWS` rows (``im_pipeline.training.loss``: 4 · rows · vocab)."""
    d = 4 if precision == "fp32" else 2  # the matmuls' output dtype: fp32, else bf16
    return (2 * d * arch.vocab + d * arch.hidden) * kept + 4 * min(kept, CE_CHUNK_ROWS) * arch.vocab


def lora_param_count(arch: Arch, rank: int) -> int:
    """LoRA parameters on every linear of every decoder layer (q, k, v, o, gate, up, down): r · (in + out) each."""
    h, i, kv = arch.hidden, arch.intermediate, arch.kv_heads * arch.head_dim
    q_out = arch.heads * arch.head_dim
    per_layer = (h + q_out) + 2 * (h + kv) + (q_out + h) + 2 * (h + i) + (i + h)
    return arch.layers * rank * per_layer


def _linear_params(arch: Arch) -> int:
    """Parameters in the decoder layers' linears (what QLoRA quantises)."""
    h, i, kv = arch.hidden, arch.intermediate, arch.kv_heads * arch.head_dim
    q_out = arch.heads * arch.head_dim
    return arch.layers * (h * q_out + 2 * h * kv + q_out * h + 3 * h * i)


def _states(arch: Arch, n_params: int, s: TrainSetup) -> dict[str, float]:
    """Weights, gradients, optimizer state and autocast copies of one process, before sharding."""
    w, g, o = _STATE_BYTES[s.precision]
    if s.adapter == "none":
        copies = 2 * n_params if s.precision == "bf16_autocast" else 0  # autocast's cached bf16 weights
        return {
            "weights": w * n_params,
            "gradients": g * n_params,
            "optimizer": o * n_params,
            "autocast_copies": copies,
        }
    trained = lora_param_count(arch, s.lora_rank)
    if s.adapter == "lora":
        base = (4 if s.precision == "fp32" else 2) * n_params  # the frozen base in its load dtype
    else:
        linear = _linear_params(arch)
        base = _QLORA_BYTES * linear + 2 * (n_params - linear)  # 4-bit linears; embeddings, norms, head in bf16
    return {"weights": base + 4 * trained, "gradients": 4 * trained, "optimizer": 8 * trained, "autocast_copies": 0}


def training_memory(arch: Arch, n_params: int, setup: TrainSetup) -> dict[str, Any]:
    """Peak training memory of one GPU (bytes per part and ``total``), as the allocator counts tensors
    (``torch.cuda.max_memory_allocated``; its cache's unused blocks are not counted).

    ``total`` is the fixed state (weights, optimizer state, autocast copies) plus the larger of two moments:

    - **the loss's backward**: the activations saved through the forward (every layer's, or with gradient checkpointing
      each layer's input, the residual stream; plus the final norm's) and the loss's logits (:func:`logits_bytes`);
      the gradients too when they accumulate over micro-batches;
    - **the decoder layers' backward**: the gradients (all of them, an upper bound: the last layers' exist before the
      first layers' backward) beside one layer's saved activations, or beside every layer's at its start
      (whichever is larger); with checkpointing ``unit`` is a layer's input and the layer being recomputed adds its
      activations (``recomputed_layer``). The end of the backward, all gradients and no activations, is below this.

    Measured (tests/test_plan.py, on the CPU with the profiler's count of tensor bytes): within 15% for shapes where
    either moment is the peak. Sharding (``zero3`` / ``fsdp``) divides weights, gradients and optimizer state by the
    world size and adds two gathered decoder layers in bf16; ``ddp`` adds its gradient buckets (one more copy of the
    gradients).
    """
    s = setup
    parts = _states(arch, n_params, s)
    tokens = s.batch_size * s.seq_len
    per_layer = layer_activation_bytes(arch, s.precision) * tokens
    residual = (2 if s.precision == "bf16_weights" else 4) * arch.hidden * tokens
    final_norm = final_norm_bytes(arch, s.precision) * tokens
    full = arch.layers * per_layer + final_norm
    checkpointed = arch.layers * residual + final_norm
    if s.engine in ("zero3", "fsdp") and s.world_size > 1:
        for key in ("weights", "gradients", "optimizer", "autocast_copies"):
            parts[key] /= s.world_size
        parts["gathered_layers"] = 2 * 2 * (n_params / max(arch.layers, 1))
    elif s.engine == "ddp" and s.world_size > 1:
        parts["ddp_buckets"] = parts["gradients"]
    if s.reference_model:  # loaded whole on every process (issue 20: not partitioned under ZeRO-3 / FSDP)
        parts["reference_model"] = (4 if s.precision == "fp32" else 2) * n_params
    kept = max(round(s.kept_fraction * tokens), 1)  # logits only where the loss reads (training/loss.py)
    parts["logits"] = logits_bytes(arch, s.precision, kept)
    parts["activations"] = checkpointed if s.gradient_checkpointing else full
    parts["recomputed_layer"] = per_layer if s.gradient_checkpointing else 0
    out: dict[str, Any] = {k: int(v) for k, v in parts.items()}
    grads = out["gradients"] + out.get("ddp_buckets", 0)
    accumulating = s.gradient_accumulation_steps > 1  # gradients of earlier micro-batches live through the forward
    loss_backward = out["activations"] + out["logits"] + (grads if accumulating else 0)
    unit = int(residual if s.gradient_checkpointing else per_layer)
    layers_backward = out["recomputed_layer"] + max(arch.layers * unit, unit + grads)
    transient = ("gradients", "ddp_buckets", "activations", "logits", "recomputed_layer")
    fixed = sum(v for k, v in out.items() if k not in transient)
    out["total"] = fixed + max(loss_backward, layers_backward)
    out["peak_moment"] = "loss backward" if loss_backward >= layers_backward else "layers backward"
    out["activations_without_checkpointing"] = int(full)
    out["activations_with_checkpointing"] = int(checkpointed)
    out["setup"] = asdict(s)
    return out


def kv_bytes_per_token(arch: Arch, dtype_bytes: int = 2) -> int:
    """KV cache per token of one row: keys and values of every layer."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * dtype_bytes


def generation_rows_fitting(arch: Arch, n_params: int, free_bytes: float, tokens_per_row: int, dtype_bytes: int) -> int:
    """How many rows (prompts × samples) of ``tokens_per_row`` fit beside the weights in ``free_bytes`` (90% used)."""
    room = 0.9 * free_bytes - dtype_bytes * n_params
    return max(int(room // (kv_bytes_per_token(arch, dtype_bytes) * tokens_per_row)), 0)


def gib(n: float) -> float:
    """Bytes in GiB, two decimals."""
    return round(n / GIB, 2)
