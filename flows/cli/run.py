"""Handlers of the commands that start flows: ``im-pipeline run``, ``serve`` and ``deploy``.

``run`` runs the compare flow in this process (``flows/compare.py``); ``serve`` and ``deploy`` make scheduled
deployments of it (``flows/serve.py`` says which process keeps each schedule alive).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from im_pipeline.config import load_config
from im_pipeline_flows.compare import compare_flow, run_tags, with_data_dir
from im_pipeline_flows.serve import deploy, deployment_name


def run_command(args: argparse.Namespace) -> int:
    """``im-pipeline run CONFIG [--set k=v ...]``: run the compare flow, print wall times per stage."""
    from im_pipeline_flows.compare import run_command as run_flow

    return run_flow(args)


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
