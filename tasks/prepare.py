"""Prefect task: prepare the experiment's data (runs/<experiment>/data/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task

from im_pipeline.config import ExperimentConfig
from tasks.cache import DATA_SEED, files_hash, is_done, prefect_cache_key, write_stamp
from tasks.common import done, retry_on_io


@task(
    name="prepare-data",
    cache_key_fn=prefect_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_io,
)
def prepare_data_task(cfg: ExperimentConfig, key: str, out_dir: str) -> dict[str, Any]:
    """Write train.jsonl, held_out.jsonl and data_stats.json; return their content hash."""
    start, out = time.perf_counter(), Path(out_dir)
    paths = (out / "train.jsonl", out / "held_out.jsonl")
    computed = not is_done(out / "data_stats.json", out, "data", key)
    if computed:
        from im_pipeline.data import prepare_data

        out.mkdir(parents=True, exist_ok=True)
        prepare_data(cfg.data, cfg.resolved_data_dir(), DATA_SEED, out_dir=out)  # writes the three files
        write_stamp(out, "data", key)
    return done("prepare", time.perf_counter() - start, computed, data_hash=files_hash(*paths))
