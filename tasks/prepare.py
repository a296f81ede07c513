"""Prefect task: prepare the experiment's data (:func:`im_pipeline.runs.units.prepare_unit`)."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from im_pipeline.config import ExperimentConfig
from im_pipeline.runs.units import prepare_unit
from im_pipeline_tasks.common import done, retry_on_io


@task(
    name="prepare-data",
    cache_policy=NO_CACHE,
    task_run_name="prepare data",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_io,
)
def prepare_data_task(cfg: ExperimentConfig, key: str, replace: bool = False) -> dict[str, Any]:
    """Write the prepared data (skipped when done, unless ``replace``) and return its content hash (or why it is
    unavailable: the flow then evaluates the base model only)."""
    start = time.perf_counter()
    computed, result = prepare_unit(cfg, key, replace=replace, on_wait=get_run_logger().warning)
    return done("prepare", time.perf_counter() - start, computed, **result)
