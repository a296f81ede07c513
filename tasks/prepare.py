"""Prefect task: prepare the experiment's data (runs/<experiment>/data/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from im_pipeline.config import ExperimentConfig
from im_pipeline.locking import unit_lock
from im_pipeline.provenance import write_json
from im_pipeline.runs.layout import lock_beside
from im_pipeline.runs.staleness import DATA_SEED, files_hash, is_done, write_stamp
from im_pipeline_tasks.cache import prefect_cache_key
from im_pipeline_tasks.common import done, retry_on_io

UNAVAILABLE = "unavailable.json"


def _local_copy_missing(cfg: ExperimentConfig) -> bool:
    """True when a training/held-out set is a registered dataset whose local copy is not there."""
    from im_pipeline.data import REGISTRY

    data_dir = cfg.resolved_data_dir()
    for source in (cfg.data.train, cfg.data.held_out):
        spec = REGISTRY.get(source) if source else None
        if spec is not None and (data_dir is None or not spec.local_path or not (data_dir / spec.local_path).is_file()):
            return True
    return False


@task(
    name="prepare-data",
    task_run_name="prepare data",
    cache_key_fn=prefect_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_io,
)
def prepare_data_task(cfg: ExperimentConfig, key: str, out_dir: str) -> dict[str, Any]:
    """Write train.jsonl, held_out.jsonl and data_stats.json; return their content hash.

    A registered training set with neither a local copy nor a reachable Hub is not an error: the
    result says ``unavailable`` (and ``data/unavailable.json`` says why and how to provide it), so the
    flow can still evaluate the base model on what the packages ship.
    """
    start, out = time.perf_counter(), Path(out_dir)
    paths = (out / "train.jsonl", out / "held_out.jsonl")
    with unit_lock(lock_beside(out), on_wait=get_run_logger().warning):  # concurrent runs prepare once
        computed = not is_done(out / "data_stats.json", out, "data", key)
        if computed:
            from im_pipeline.data import DataError, prepare_data

            try:
                prepare_data(cfg.data, cfg.resolved_data_dir(), DATA_SEED, out_dir=out)  # writes the three files
            except DataError as exc:
                if not _local_copy_missing(cfg):
                    raise
                for stale in (*paths, out / "data_stats.json"):
                    stale.unlink(missing_ok=True)
                write_json(out / UNAVAILABLE, {"train_source": cfg.data.train, "reason": str(exc)})
                return done("prepare", time.perf_counter() - start, computed, data_hash=None, unavailable=str(exc))
            (out / UNAVAILABLE).unlink(missing_ok=True)
            write_stamp(out, "data", key)
    return done("prepare", time.perf_counter() - start, computed, data_hash=files_hash(*paths))
