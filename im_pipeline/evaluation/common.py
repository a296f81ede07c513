"""The common benchmark interface and result record (see the package docstring)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from im_pipeline.config.evaluation import BenchmarkConfig, JudgeConfig
from im_pipeline.evaluation.specs import get_spec
from im_pipeline.provenance import git_commit, library_versions
from im_pipeline.results import new_eval_result

log = logging.getLogger(__name__)


Benchmark = Callable[["EvalContext", BenchmarkConfig], dict[str, Any]]


class BenchmarkSkipped(RuntimeError):
    """Raised by a benchmark whose inputs are unavailable; the message says how to provide them."""


class ModelCache:
    """Models loaded for one unit of work (an arm × seed, or the base model), reused by its consecutive benchmarks.

    An explicit object instead of a module-level cache: each unit owns one, so units running concurrently (threads
    of one flow run, or flow runs on workers) never hand each other a model. It keeps at most one evaluated model
    and one judge model, keyed by what identifies them (source, training key, dtype), and is thread-safe. Other
    state a unit's benchmarks share (see :meth:`state`) lives here too, for the same reason.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: tuple[Any, tuple[Any, Any]] | None = None
        self._judge: tuple[Any, Any] | None = None
        self._state: dict[str, Any] = {}
        self.devices: set[str] = set()  # where its models were placed (freed by clear)

    def state(self, key: str, build: Callable[[], Any]) -> Any:
        """The unit's value for ``key``, built by ``build()`` on first use (e.g. lm-eval's environment report)."""
        with self._lock:
            if key not in self._state:
                self._state[key] = build()
            return self._state[key]

    def model(self, identity: Any, load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        """The (model, tokenizer) for ``identity``, loaded by ``load()`` unless it is the one held."""
        from im_pipeline.devices import free_memory

        with self._lock:
            if self._model is None or self._model[0] != identity:
                self._model = None  # free the previous model before loading the next
                for device in sorted(self.devices):
                    free_memory(device)
                self._model = (identity, load())
            return self._model[1]

    def judge(self, identity: Any, load: Callable[[], Any]) -> Any:
        """The judge model for ``identity``, loaded by ``load()`` unless it is the one held."""
        with self._lock:
            if self._judge is None or self._judge[0] != identity:
                self._judge = None
                self._judge = (identity, load())
            return self._judge[1]

    def clear(self) -> None:
        """Drop the unit's models and state, and hand the freed GPU memory back (``torch.cuda.empty_cache``)."""
        from im_pipeline.devices import free_memory

        with self._lock:
            self._model = self._judge = None
            self._state = {}
            for device in sorted(self.devices):
                free_memory(device)


@dataclass(frozen=True)
class OverfittingInputs:
    """The run's own data for the overfitting benchmark, as the pipeline passes it (standalone use: its options)."""

    train: list[dict[str, Any]]  # the training records (messages format)
    held_out: list[dict[str, Any]]  # the held-out records (another data set or a split)
    held_out_kind: str | None = None  # what the held-out set is, for the result (e.g. "in-distribution split")
    # In-domain test records (data.in_domain_size): the seed's sample, disjoint from its training sample; for the base
    # model the union of every seed's. Empty: no in-domain loss in the result.
    in_domain: list[dict[str, Any]] = field(default_factory=list)


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
    kv_cache_bytes: int | None = None  # generation's KV-cache budget per batch (evaluation.kv_cache_gib)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    dtype: str = "float32"  # the evaluation dtype (resolved: never "auto")
    device: str = "cpu"  # where every evaluator of this context runs (resolved: "cpu" or "cuda:N")
    attn_implementation: str | None = None  # model.attn_implementation for the evaluated model (None: transformers')
    cache_dir: str | None = None
    overfitting: OverfittingInputs | None = None  # the run's train / held-out data (the overfitting benchmark)
    cache: ModelCache = field(default_factory=ModelCache, repr=False)  # the unit's models (pass one to share)
    model_key: str | None = None  # what identifies the model's weights beyond its source (e.g. its training key)

    @property
    def model_identity(self) -> tuple[str, str | None, str, str, str | None]:
        """What the unit's :class:`ModelCache` keys the evaluated model by: (source, model key, dtype, device,
        attention kernel)."""
        return (self.model_source, self.model_key, self.dtype, self.device, self.attn_implementation)

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        """Load once per :class:`ModelCache` (a unit's benchmarks share it) and return (model, tokenizer)."""

        def load() -> tuple[Any, Any]:
            from im_pipeline.models import load_model_and_tokenizer

            return load_model_and_tokenizer(
                self.model_source,
                dtype=self.dtype,
                cache_dir=self.cache_dir,
                device=self.device,
                attn_implementation=self.attn_implementation,  # the kernel the config names (the judge keeps its own)
            )

        self.cache.devices.add(self.device)
        return self.cache.model(self.model_identity, load)


def result_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.json"


def run_benchmark(name: str, ctx: EvalContext, cfg: BenchmarkConfig) -> Path:
    """Run one benchmark and write its result JSON (also for a skip) through its typed model
    (:func:`im_pipeline.results.new_eval_result`: a field the model lacks is an error, not a silent key). Returns
    the path."""
    spec = get_spec(name)
    spec.validate_options(cfg.options)  # typed options: a bad one is named before any model loads
    fn = spec.load_runner()
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
    record["host"] = socket.gethostname()  # who computed it (units may run on different workers)
    record["pid"] = os.getpid()
    record["git_commit"] = git_commit()
    record["versions"] = library_versions()
    return new_eval_result(record).write(result_path(ctx.out_dir, name))
