"""Prefect task: one benchmark on one model (:func:`im_pipeline.runs.units.evaluate_unit`)."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from im_pipeline.config import ExperimentConfig
from im_pipeline.evaluation.common import ModelCache
from im_pipeline.runs.units import EvalJob, evaluate_unit
from im_pipeline_tasks.common import done, retry_on_io, unit_name


@task(
    name="evaluate",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=retry_on_io,
    task_run_name=unit_name("eval"),
)
def evaluate_task(cfg: ExperimentConfig, job: EvalJob, models: ModelCache | None = None) -> dict[str, Any]:
    """Run one benchmark on one model (skipped when done); ``models`` is the unit's own model cache."""
    start = time.perf_counter()
    computed = evaluate_unit(cfg, job, models, on_wait=get_run_logger().warning)
    return done("evaluate", time.perf_counter() - start, computed, arm=job.arm, seed=job.seed, benchmark=job.benchmark)
