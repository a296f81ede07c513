"""Scheduled runs of the compare flow: ``im-pipeline serve CONFIG --cron "0 2 * * *"``.

Two ways to put the compare flow on a schedule:

* :func:`serve_command` (the CLI): ``compare_flow.serve(...)`` creates a deployment with a cron schedule
  and runs its flow runs from this process (no work pool or worker needed). Point ``PREFECT_API_URL``
  at a running ``prefect server start`` (or Prefect Cloud) so the schedule lives beyond this process
  and shows in the UI.
* :func:`deploy` (for a cluster): registers the flow with a work pool (process, Docker or Kubernetes;
  see docs/scale_out.md) so that workers on GPU machines pick the runs up.

Both pass the config *path* (plus ``--set`` overrides) as the flow parameter, so each scheduled run
reads the current file: edit the config and the next nightly run picks it up, while the task cache
keeps everything that did not change.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from flows.compare import compare_flow
from im_pipeline.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def deployment_name(experiment: str) -> str:
    return f"{experiment}-scheduled"


def serve_command(args: argparse.Namespace) -> int:
    """Create a cron-scheduled deployment of the compare flow for CONFIG and serve it (blocks)."""
    cfg = load_config(args.config, args.overrides)  # fail early on a bad config
    config_path = str(Path(args.config).resolve())
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        # Prefect's ephemeral server has no scheduler: the cron would never fire.
        print(
            "error: schedules need a running Prefect server. Start one (e.g. `prefect server start` in another "
            "terminal) and set PREFECT_API_URL (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api); "
            "see docs/scale_out.md",
            file=sys.stderr,
        )
        return 2
    name = deployment_name(cfg.name)
    print(
        f"serving deployment 'im-compare/{name}' with cron {args.cron!r} on {api or 'a temporary local server'} "
        "(Ctrl-C stops)"
    )
    compare_flow.serve(
        name=name,
        cron=args.cron,
        parameters={"config": config_path, "overrides": list(args.overrides)},
        description=f"IT vs IM for {cfg.name} ({config_path}), on a schedule",
        tags=["im-pipeline", cfg.name],
    )
    return 0


def deploy(
    config: str | Path,
    work_pool: str,
    *,
    cron: str | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
    source: str | Path = REPO_ROOT,
) -> uuid.UUID:
    """Register the compare flow for ``config`` with ``work_pool`` (optionally on a cron schedule).

    ``source`` is where workers find the code: this checkout by default (a process worker on this
    machine); use a git URL or an image for remote workers (docs/scale_out.md). Returns the deployment id.
    """
    cfg = load_config(config, overrides)
    flow = compare_flow.from_source(source=str(source), entrypoint="flows/compare.py:compare_flow")
    return flow.deploy(
        name=name or deployment_name(cfg.name),
        work_pool_name=work_pool,
        cron=cron,
        parameters={"config": str(Path(config).resolve()), "overrides": list(overrides or [])},
        tags=["im-pipeline", cfg.name],
        print_next_steps=False,
    )
