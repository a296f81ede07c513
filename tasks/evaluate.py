"""Prefect task: one benchmark on one model (an arm's checkpoint or the base model)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from im_pipeline.config import ExperimentConfig
from im_pipeline.evaluation.common import ModelCache
from im_pipeline.locking import unit_lock
from im_pipeline.runs.layout import BASE_ARM, lock_beside
from im_pipeline.runs.staleness import is_done, write_stamp
from im_pipeline_tasks.cache import prefect_cache_key
from im_pipeline_tasks.common import done, retry_on_io, unit_name


@task(
    name="evaluate",
    cache_key_fn=prefect_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=30,
    retry_condition_fn=retry_on_io,
    task_run_name=unit_name("eval"),
)
def evaluate_task(
    cfg: ExperimentConfig,
    arm: str,
    seed: int | None,
    benchmark: str,
    key: str,
    out_dir: str,
    model_dir: str,
    model_key: str,
    data_dir: str,
    models: ModelCache | None = None,
) -> dict[str, Any]:
    """Run ``benchmark`` on ``model_dir`` and write ``out_dir/eval/<benchmark>.json`` (skipped when done).

    ``models``: the unit's model cache (its benchmarks load the model once); never shared between units.
    """
    start, eval_dir = time.perf_counter(), Path(out_dir) / "eval"
    # One lock per (model, benchmark): a concurrent run of the same experiment waits, then skips it.
    with unit_lock(lock_beside(eval_dir / benchmark), on_wait=get_run_logger().warning):
        computed = not is_done(eval_dir / f"{benchmark}.json", eval_dir, benchmark, key)
        if computed:
            from im_pipeline.data import seed_data
            from im_pipeline.evaluation import EvalContext, run_benchmark

            ev = cfg.evaluation
            ctx = EvalContext(
                model_source=model_dir,
                out_dir=eval_dir,
                data_dir=cfg.resolved_data_dir(),
                arm=arm,
                seed=seed,
                config_hash=key,
                template=cfg.data.template,
                batch_size=ev.batch_size,
                judge=ev.judge,
                dtype=cfg.model.dtype,
                cache_dir=cfg.model.cache_dir,
                cache=models if models is not None else ModelCache(),
                model_key=model_key,
            )
            data = Path(data_dir)
            if benchmark == "overfitting" and (data / "train.jsonl").is_file():
                # The seed's own samples with data.per_seed (the base model, seedless, takes the first seed's).
                train, held_out = seed_data(cfg.data, data, cfg.seeds[0] if seed is None else seed)
                if cfg.data.per_seed:
                    kind = f"per-seed sample of {cfg.data.train}, disjoint from that seed's training sample"
                elif cfg.data.held_out:
                    kind = f"another data set ({cfg.data.held_out})"
                else:
                    kind = f"in-distribution split of {cfg.data.train}"
                ctx.extra = {
                    "train": train,
                    "held_out": held_out,
                    "held_out_kind": kind,
                    "run_dir": None if arm == BASE_ARM else str(out_dir),
                }
            run_benchmark(benchmark, ctx, getattr(ev, benchmark))
            write_stamp(eval_dir, benchmark, key)
    return done("evaluate", time.perf_counter() - start, computed, arm=arm, seed=seed, benchmark=benchmark)
