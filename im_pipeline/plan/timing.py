"""Estimated wall time per stage, from a table of throughputs with the hardware each was measured on (and, for GPUs
nothing here has measured yet, from their dense bf16 peak at an assumed MFU, said so in the plan).

Training costs 6·N FLOPs per token (8·N with gradient checkpointing, + 2·N for a KL reference model); scoring 2·N per
token; generation is bound by reading the weights once per decoding step (each step serves a whole batch of rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GPUS = {  # name substring: (dense bf16 TFLOP/s, HBM TB/s), vendor data sheets
    "H200": (989.0, 4.8),
    "H100": (989.0, 3.35),
    "A100": (312.0, 2.0),
    "L40S": (362.0, 0.86),
    "A10": (125.0, 0.6),
    "L4": (121.0, 0.3),
}
DEFAULT_GPU = "H100"
ASSUMED_MFU = 0.40  # training / scoring on GPUs: issue 21's goal for bf16 autocast, not yet measured here
ASSUMED_BANDWIDTH_USE = 0.6  # decoding reads the weights at this share of HBM bandwidth, assumed


@dataclass(frozen=True)
class Measured:
    """A throughput measured in this project, with the model's sources, the hardware and where it came from."""

    what: str
    model: str
    sources: tuple[str, ...]  # model.source values (lower case) this measurement is of
    params: int
    tokens_per_s: float
    hardware: str
    source: str

    def is_of(self, model_source: str) -> bool:
        """Whether this measurement is of the model ``model_source`` (a config's ``model.source``) names."""
        return model_source.strip().lower() in self.sources


CPU_2CORE = "2-core CPU (this project's development machine)"
MEASURED = (
    Measured(
        "train",
        "SmolLM2-135M (IT, padding-free, batch 8, fp32)",
        ("smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"),
        134_515_008,
        130.0,
        CPU_2CORE,
        "issue 20, bench/train_throughput.py",
    ),
    Measured(
        "train",
        "gemma-3-270m (IT, padding-free, batch 8, fp32)",
        ("gemma-3-270m", "google/gemma-3-270m"),
        268_098_176,
        57.6,  # the median of 56.0 and 59.3
        CPU_2CORE,
        "bench/results/cpu-2core-2026-12-04",
    ),
)


def cpu_reference(source: str, n_params: int) -> Measured:
    """The CPU measurement of this model, else the one closest in parameter count (scaled by parameters: gemma-3's
    measured speed is 12% below SmolLM2's scaled that way, its 262k-vocabulary LM head being 63% of its matmuls)."""
    for m in MEASURED:
        if m.is_of(source):
            return m
    return min(MEASURED, key=lambda m: abs(math.log(m.params / max(n_params, 1))))


def gpu_specs(name: str | None) -> tuple[str, float, float]:
    """(name, peak bf16 FLOP/s, HBM bytes/s) of a GPU by its name (unknown names: the H100's)."""
    for key, (tflops, tbs) in GPUS.items():
        if name and key.lower() in name.lower():
            return name, tflops * 1e12, tbs * 1e12
    tflops, tbs = GPUS[DEFAULT_GPU]
    return f"{name or 'a GPU'} (taken as {DEFAULT_GPU})", tflops * 1e12, tbs * 1e12


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 2)


def train_seconds(
    n_params: int, tokens: float, *, gpus: int, gpu_name: str | None, ckpt: bool, kl: bool, source: str = ""
) -> float:
    """Seconds to train on ``tokens`` tokens (all epochs) on ``gpus`` GPUs, or on the CPU when ``gpus`` is 0 (from
    :func:`cpu_reference` of the model's ``source``)."""
    factor = (8 if ckpt else 6) + (2 if kl else 0)
    if gpus <= 0:
        m = cpu_reference(source, n_params)
        rate = m.tokens_per_s * m.params / n_params * 6 / factor
        return tokens / rate
    _, peak, _ = gpu_specs(gpu_name)
    return factor * n_params * tokens / (gpus * peak * ASSUMED_MFU)


def generation_seconds(n_params: int, rows: int, new_tokens: int, batch_rows: int, *, gpu_name: str | None) -> float:
    """Seconds to generate ``new_tokens`` for ``rows`` rows in batches of ``batch_rows`` on one GPU (memory bound)."""
    _, peak, bandwidth = gpu_specs(gpu_name)
    steps = math.ceil(rows / max(batch_rows, 1)) * new_tokens
    per_step = max(2 * n_params / (bandwidth * ASSUMED_BANDWIDTH_USE), 2 * n_params * batch_rows / (peak * 0.4))
    return steps * per_step


def stage_times(plan: dict[str, Any], n_params: int, gpus: int, gpu_name: str | None) -> dict[str, Any]:
    """Hours per stage for the whole experiment, one unit after another: training (on the launcher's processes),
    scoring and generation (one GPU per model evaluated)."""
    t = plan["training"]
    train_gpus = min(gpus, plan["memory"]["training_gib"]["setup"]["world_size"])  # one process: one GPU's speed
    source = plan["model"]["source"]
    train_s = sum(
        train_seconds(
            n_params,
            t["tokens_per_unit"],
            gpus=train_gpus,
            gpu_name=gpu_name,
            ckpt=t["checkpointing"],
            kl=kl,
            source=source,
        )
        for kl in t["kl_per_unit"]
    )
    per_model = plan["benchmarks"]
    models = plan["models_evaluated"]
    scoring_tokens = sum(w.get("loglikelihood_requests", 0) for w in per_model.values()) * 200  # ~200 tokens each
    out: dict[str, Any] = {"train_hours": _hours(train_s)}
    if gpus <= 0:
        m = cpu_reference(source, n_params)
        out["basis"] = f"measured: {m.model} {m.tokens_per_s} tokens/s on {m.hardware}"
        out["note"] = "no GPU visible or declared: CPU estimate " + (
            "from this model's measured speed"
            if m.is_of(source)
            else "scaled by parameters from the measured model closest in size"
        )
        return out
    _, peak, _ = gpu_specs(gpu_name)
    score_s = models * 2 * n_params * scoring_tokens / (peak * ASSUMED_MFU)
    gen_s = 0.0
    for name in ("humaneval", "alpaca_eval", "overfitting"):
        w = per_model.get(name)
        if w:
            rows = w.get("samples", w.get("generations", 0))
            gen_s += models * generation_seconds(
                n_params, rows, w["max_new_tokens"], w.get("safe_rows_per_batch") or 1, gpu_name=gpu_name
            )
    name, _, _ = gpu_specs(gpu_name)
    out.update(
        scoring_hours=_hours(score_s),
        generation_hours_upper=_hours(gen_s),
        basis=f"{name}: {ASSUMED_MFU:.0%} MFU of the dense bf16 peak and {ASSUMED_BANDWIDTH_USE:.0%} of HBM bandwidth "
        "for decoding, assumed (no GPU throughput measured in this project yet; bench/gpu_verify.py measures them); "
        "generation as if every row used all its new tokens",
    )
    return out
