"""Prefect task: aggregate the run directory and write the Markdown report (always recomputed: cheap)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from im_pipeline_tasks.common import done


@task(name="report", task_run_name="report", cache_policy=NO_CACHE)
def report_task(run_root: str, report_dir: str, replace: bool = False) -> dict[str, Any]:
    """Build reports/<experiment>/REPORT.md + figures from the run directory's JSON files (:func:`report_unit`;
    ``replace``: redraw the figures too)."""
    from im_pipeline.runs.units import report_unit

    start = time.perf_counter()
    result = report_unit(Path(run_root), Path(report_dir), replace=replace)
    return done("report", time.perf_counter() - start, True, **result)


@task(name="save-results", task_run_name="save results", cache_policy=NO_CACHE)
def save_results_task(run_root: str, results_dir: str, experiment: str) -> dict[str, Any]:
    """Copy the run's small result files into ``results_dir`` (``save_results: true``), e.g. after each unit."""
    from im_pipeline.report.results import save_results

    start = time.perf_counter()
    result = save_results(Path(run_root), Path(results_dir), experiment)
    return done("results", time.perf_counter() - start, True, **result)
