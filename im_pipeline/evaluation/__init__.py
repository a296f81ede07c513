"""Benchmarks behind one small interface.

A benchmark is a function ``(ctx: EvalContext, cfg: BenchmarkConfig) -> dict`` returning at least
``metric``, ``value``, ``stderr`` and ``n`` (plus any extra fields it wants recorded). It may raise
:class:`BenchmarkSkipped` when its data is not available; the skip and its reason are written as a
result too, so a report can say what was skipped and how to provide it.

:func:`run_benchmark` times the call, adds the common provenance fields and writes
``<out_dir>/<benchmark>.json``. ``BENCHMARKS`` is a plain dict; modules are imported on first use
so that running HumanEval never imports lm-eval.
"""

from im_pipeline.evaluation.common import (
    BENCHMARKS,
    BenchmarkSkipped,
    EvalContext,
    get_benchmark,
    run_benchmark,
)

__all__ = ["BENCHMARKS", "BenchmarkSkipped", "EvalContext", "get_benchmark", "run_benchmark"]
