"""Prefect task: train one arm with one seed (:func:`im_pipeline.runs.units.train_unit`)."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from im_pipeline.config import ExperimentConfig
from im_pipeline.runs.units import TrainJob, train_unit
from im_pipeline_tasks.common import done, unit_name


@task(name="train-arm", cache_policy=NO_CACHE, task_run_name=unit_name("train"))
def train_task(cfg: ExperimentConfig, job: TrainJob) -> dict[str, Any]:
    """Train (or resume, or skip when done under the same key); a concurrent run of the unit waits, then skips."""
    start, log = time.perf_counter(), get_run_logger()
    computed = train_unit(cfg, job, on_wait=log.warning, say=log.info)
    return done("train", time.perf_counter() - start, computed, arm=job.arm, seed=job.seed)
