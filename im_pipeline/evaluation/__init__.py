"""Benchmarks behind one small interface.

Each benchmark has a :class:`~im_pipeline.evaluation.specs.BenchmarkSpec` (``specs/``: its options, label, order,
chance level, runner). A runner is a function ``(ctx: EvalContext, cfg: BenchmarkConfig) -> dict`` returning at least
``metric``, ``value``, ``stderr`` and ``n`` (plus any extra fields it wants recorded). It may raise
:class:`~im_pipeline.evaluation.common.BenchmarkSkipped` when its data is not available; the skip and its reason are
written as a result too, so a report can say what was skipped and how to provide it.

:func:`~im_pipeline.evaluation.common.run_benchmark` times the call, adds the common provenance fields and writes
``<out_dir>/<benchmark>.json``. Runner modules are imported on first use, so that running HumanEval never imports
lm-eval; this package's ``__init__`` imports nothing (the config imports the specs).
"""
