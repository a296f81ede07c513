"""Scheduled runs of the compare flow: ``im-pipeline serve`` and ``im-pipeline deploy``.

Both need a running Prefect server (``prefect server start``, or Prefect Cloud) named by
``PREFECT_API_URL``: its scheduler service creates the scheduled flow runs (Prefect's ephemeral
server runs no scheduler, so a cron would never fire).

* :func:`serve_command` (``im-pipeline serve CONFIG --cron "0 2 * * *"``): ``compare_flow.serve(...)``
  creates a deployment with a cron schedule and runs its flow runs from this process (no work pool
  or worker needed). **The schedule lives only as long as this process**: when ``serve`` stops,
  Prefect's runner pauses the deployment's schedule (``Runner(pause_on_shutdown=True)``, the default of
  ``Flow.serve``, calls ``pause_deployment`` on exit), so no runs are scheduled until it is served
  again.
* :func:`deploy_command` / :func:`deploy` (``im-pipeline deploy CONFIG --pool NAME --cron ...``):
  registers the flow with a work pool (process, Docker or Kubernetes; see docs/scale_out.md) and
  exits. **The schedule lives on the server** and outlives the command: the server keeps creating
  runs, and any worker of the pool (``prefect worker start --pool NAME``) runs them; with no worker
  running they wait (and show as Late).

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

from flows.compare import compare_flow, run_tags, with_data_dir
from im_pipeline.config import load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def deployment_name(experiment: str) -> str:
    return f"{experiment}-scheduled"


def serve_command(args: argparse.Namespace) -> int:
    """Create a cron-scheduled deployment of the compare flow for CONFIG and serve it (blocks).

    The schedule is paused when this process stops (see the module docstring).
    """
    overrides = with_data_dir(args.config, args.overrides, getattr(args, "data_dir", None))
    cfg = load_config(args.config, overrides)  # fail early on a bad config
    config_path = str(Path(args.config).resolve())
    api = _require_server()
    if api is None:
        return 2
    name = deployment_name(cfg.name)
    print(
        f"serving deployment 'im-compare/{name}' with cron {args.cron!r} on {api} (Ctrl-C stops; "
        "Prefect then pauses the schedule)"
    )
    compare_flow.serve(
        name=name,
        cron=args.cron,
        parameters={"config": config_path, "overrides": overrides},
        description=f"IT vs IM for {cfg.name} ({config_path}), on a schedule while `im-pipeline serve` runs",
        tags=run_tags(cfg),
    )
    return 0


def _require_server() -> str | None:
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        # Prefect's ephemeral server has no scheduler: the cron would never fire.
        print(
            "error: schedules need a running Prefect server. Start one (e.g. `prefect server start` in another "
            "terminal) and set PREFECT_API_URL (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api); "
            "see docs/scale_out.md",
            file=sys.stderr,
        )
    return api


def deploy_command(args: argparse.Namespace) -> int:
    """``im-pipeline deploy CONFIG --pool NAME [--cron CRON]``: register the deployment with a work pool, exit."""
    overrides = with_data_dir(args.config, args.overrides, getattr(args, "data_dir", None))
    cfg = load_config(args.config, overrides)
    api = _require_server()
    if api is None:
        return 2
    name = args.name or deployment_name(cfg.name)
    deployment_id = deploy(args.config, args.pool, cron=args.cron, overrides=overrides, name=name)
    when = f"on cron {args.cron!r} (UTC)" if args.cron else "without a schedule (start runs from the UI or API)"
    print(f"deployment 'im-compare/{name}' ({deployment_id}) registered with work pool {args.pool!r} {when} on {api}")
    print(f"runs need a worker: prefect worker start --pool {args.pool}")
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
    The schedule lives on the server: it outlives this call (see the module docstring).
    """
    cfg = load_config(config, overrides)
    flow = compare_flow.from_source(source=str(source), entrypoint="flows/compare.py:compare_flow")
    return flow.deploy(
        name=name or deployment_name(cfg.name),
        work_pool_name=work_pool,
        cron=cron,
        parameters={"config": str(Path(config).resolve()), "overrides": list(overrides or [])},
        tags=run_tags(cfg),
        print_next_steps=False,
    )
