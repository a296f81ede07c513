"""Prefect task: train one arm with one seed (runs/<experiment>/<arm>/seed-<s>/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from im_pipeline.config import BENCHMARK_OPTIONS as BENCHMARKS
from im_pipeline.config import ExperimentConfig
from im_pipeline.locking import unit_lock
from im_pipeline.runs.layout import lock_beside
from im_pipeline.runs.staleness import clear_stale_run, is_done, write_stamp
from im_pipeline_tasks.cache import prefect_cache_key
from im_pipeline_tasks.common import done, unit_name


@task(name="train-arm", cache_key_fn=prefect_cache_key, persist_result=True, task_run_name=unit_name("train"))
def train_task(cfg: ExperimentConfig, arm: str, seed: int, key: str, out_dir: str, data_dir: str) -> dict[str, Any]:
    """Train (or resume, or skip when done under the same key) and return the train summary.

    One lock per (arm, seed) beside its run directory: a second run of the same experiment (another
    ``im-pipeline run``, another worker) waits for it, saying so, then finds the unit done and skips it.
    """
    start, run_dir = time.perf_counter(), Path(out_dir)
    with unit_lock(lock_beside(run_dir), on_wait=get_run_logger().warning):
        if cfg.save_results:  # a unit finished in an earlier session: its committed files make it "done"
            from im_pipeline.report.results import restore_unit

            benches = [b for b in BENCHMARKS if getattr(cfg.evaluation, b).enabled]
            restore_unit(cfg.results_dir(), run_dir.parent.parent, f"{arm}/seed-{seed}", benches)
        computed = not is_done(run_dir / "train_summary.json", run_dir, "train", key)
        if computed:
            from im_pipeline.data import seed_data
            from im_pipeline.training import train_arm

            if clear_stale_run(run_dir, key):
                get_run_logger().info(
                    "%s/seed-%s: settings changed, removed the old run directory %s", arm, seed, run_dir
                )
            write_stamp(run_dir, "train-started", key)  # an interrupted run with this key resumes
            data = Path(data_dir)
            launcher = cfg.train_launcher()
            if launcher:  # torchrun / accelerate launch: one process per device, rank 0 writes the outputs
                from im_pipeline.training.launch import launch

                launch(launcher, cfg, arm, seed, run_dir, data)
            else:
                train_arm(cfg, cfg.arm(arm), seed, *seed_data(cfg.data, data, seed), run_dir)
            write_stamp(run_dir, "train", key)
    return done("train", time.perf_counter() - start, computed, arm=arm, seed=seed)
