"""The common benchmark interface and result record (see the package docstring)."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from im_pipeline.config import BenchmarkConfig, JudgeConfig, benchmark_options
from im_pipeline.provenance import git_commit, library_versions, write_json

log = logging.getLogger(__name__)

# name -> "module:function". Plain dict, lazily imported (lm-eval alone takes seconds to import).
BENCHMARKS: dict[str, str] = {
    "mmlu": "im_pipeline.evaluation.lm_eval_tasks:run_mmlu",
    "truthfulqa": "im_pipeline.evaluation.lm_eval_tasks:run_truthfulqa",
    "humaneval": "im_pipeline.evaluation.humaneval:run_humaneval",
    "alpaca_eval": "im_pipeline.evaluation.alpaca_eval:run_alpaca_eval",
    "overfitting": "im_pipeline.evaluation.overfitting:run_overfitting",
}

Benchmark = Callable[["EvalContext", BenchmarkConfig], dict[str, Any]]


class BenchmarkSkipped(RuntimeError):
    """Raised by a benchmark whose inputs are unavailable; the message says how to provide them."""


@dataclass
class EvalContext:
    """Everything a benchmark needs besides its own config."""

    model_source: str  # model directory (checkpoint) or any model source string
    out_dir: Path  # results go to out_dir/<benchmark>.json
    data_dir: Path | None = None
    arm: str | None = None  # None for a standalone evaluation; "base" for the base model
    seed: int | None = None
    config_hash: str | None = None
    template: str = "tulu"
    batch_size: int = 8
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    dtype: str = "float32"
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. train/held-out records for overfitting
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """Load once per context and share between benchmarks."""
        if self._loaded is None:
            from im_pipeline.models import load_model_and_tokenizer

            self._loaded = load_model_and_tokenizer(self.model_source, dtype=self.dtype, cache_dir=self.cache_dir)
        return self._loaded


def hub_reachable(timeout: float = 3.0) -> bool:
    """True unless ``HF_HUB_OFFLINE`` is set or huggingface.co cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    module, func = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module), func)


def result_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.json"


def run_benchmark(name: str, ctx: EvalContext, cfg: BenchmarkConfig) -> Path:
    """Run one benchmark and write its result JSON (also for a skip). Returns the path."""
    benchmark_options(name, cfg.options)  # typed options: a bad one is named before any model loads
    fn = get_benchmark(name)
    start = time.perf_counter()
    record: dict[str, Any] = {
        "benchmark": name,
        "status": "ok",
        "limit": cfg.limit,
        "options": cfg.options,
        "model": ctx.model_source,
        "arm": ctx.arm,
        "seed": ctx.seed,
        "config_hash": ctx.config_hash,
    }
    try:
        out = fn(ctx, cfg)
        missing = {"metric", "value", "stderr", "n"} - out.keys()
        if missing:
            raise RuntimeError(f"benchmark {name} returned no {sorted(missing)}")
        record.update(out)
    except BenchmarkSkipped as skip:
        log.warning("benchmark %s skipped: %s", name, skip)
        record.update({"status": "skipped", "reason": str(skip), "metric": None, "value": None, "stderr": None, "n": 0})
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    record["git_commit"] = git_commit()
    record["versions"] = library_versions()
    return write_json(result_path(ctx.out_dir, name), record)
