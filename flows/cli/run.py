"""Handlers of the commands that start flows: ``im-pipeline run``, ``serve`` and ``deploy``.

``run`` runs the compare flow in this process (``flows/compare.py``); ``serve`` and ``deploy`` make scheduled
deployments of it (``flows/serve.py`` says which process keeps each schedule alive). Prefect's settings for these
processes are set here, before Prefect is imported (:data:`PREFECT_DEFAULTS`), never by importing a flow module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from im_pipeline.config import ExperimentConfig, load_config
from im_pipeline.runs.units import rerun_stages

PREFECT_DEFAULTS = {
    # Library progress (im_pipeline.* loggers) goes to the Prefect UI with the task logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "im_pipeline",
    # Air-gapped friendly: the Prefect server must not try to reach the internet.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral server can take > 20 s (the default limit) to start on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # Library logs outside a flow run (e.g. while the command starts): console only.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
"""Prefect settings of the processes these commands start (an environment variable already set wins)."""


def prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def prefect_api_url() -> str | None:
    """The Prefect server these commands use, as Prefect itself resolves it: ``PREFECT_API_URL`` from the
    environment, a ``.env``/``prefect.toml``, or the active profile (``prefect config set PREFECT_API_URL=…``);
    None when none is set (Prefect then starts its ephemeral server)."""
    prefect_defaults()  # before Prefect reads its settings
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def data_dir_overrides(overrides: list[str], cfg: ExperimentConfig, data_dir: str | None) -> list[str]:
    """A deployment's overrides: ``--data-dir`` travels as ``data_dir=<its absolute path>`` (the config's own
    ``data_dir`` still wins: it is what ``cfg`` resolved); without it, each run resolves its own settings."""
    return [*overrides, f"data_dir={cfg.data_dir}"] if data_dir and cfg.data_dir else list(overrides)


def run_command(args: argparse.Namespace) -> int:
    """``im-pipeline run CONFIG [--set k=v ...] [--force | --rerun STAGE ...]``: run the compare flow, print wall
    times per stage. The config is loaded and validated once, here, with its settings resolved."""
    t0, started = time.perf_counter(), time.time()
    for noisy in ("httpx", "httpcore"):  # one line per API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = load_config(args.config, args.overrides, data_dir=getattr(args, "data_dir", None))
    force, rerun = getattr(args, "force", False), sorted(set(getattr(args, "rerun", None) or []))
    rerun_stages(rerun, force=force)  # an unknown stage is named before Prefect starts
    pool = getattr(args, "work_pool", None) or cfg.orchestration.work_pool
    from im_pipeline.plan.build import plan_line

    strata = cfg.stratum_configs()
    for key, c in (strata or {"": cfg}).items():
        print((f"stratum {key}: " if key else "") + plan_line(c))
    units = f", units on work pool {pool!r}" if pool else ""
    shape = f"{len(strata)} strata, " if strata else ""
    print(f"running experiment {cfg.name!r} ({shape}{len(cfg.arms)} arms × {len(cfg.seeds)} seeds{units})")
    api = prefect_api_url()  # Prefect's settings from here on (PREFECT_DEFAULTS first)
    if pool and not api:
        # Workers cannot reach the ephemeral server this process would start.
        print(
            f"error: --work-pool {pool} needs a running Prefect server that the pool's workers also use: start one "
            "(`prefect server start`), set PREFECT_API_URL (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api, "
            "or in your Prefect profile) here and for the workers; see docs/scale_out.md",
            file=sys.stderr,
        )
        return 2
    print(f"Prefect server: {api or 'the ephemeral local one (started here, gone when this command ends)'}")
    from im_pipeline_flows.compare import SettingsTaskRunner, compare_flow
    from im_pipeline_flows.ephemeral import start_bound_ephemeral_server
    from im_pipeline_flows.records import TaskRunsFailed

    start_bound_ephemeral_server()  # without PREFECT_API_URL: a server that dies with this process, by any signal
    flow = compare_flow.with_options(task_runner=SettingsTaskRunner(cfg.settings.max_workers))
    state = flow(cfg, work_pool=pool, force=force, rerun=rerun, command_started=started, return_state=True)
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, TaskRunsFailed):
        summary = summary.summary
    total = time.perf_counter() - t0
    if isinstance(summary, ValueError):  # malformed input (DataError, ConfigError): named, exit status 2
        print(f"error: {summary}", file=sys.stderr)
        return 2
    if not isinstance(summary, dict):
        print(f"error: the flow did not finish: {state.message or summary}")
        return 1
    from im_pipeline.runs.timings import format_timings

    print(format_timings(summary["timings"], total))
    print(f"\nreport: {summary['report']}")
    print(f"flow run: {state.name}" + (f" ({state.message})" if state.message else ""))
    if summary["failed"]:
        print(f"failed task runs: {', '.join(summary['failed'])}")
        return 1
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """Create a deployment of the compare flow for CONFIG (on ``--cron`` when given) and serve it (blocks).

    The schedule is paused when this process stops (see the module docstring).
    """
    cfg = load_config(args.config, args.overrides, data_dir=args.data_dir)  # fail early on a bad config
    overrides = data_dir_overrides(args.overrides, cfg, args.data_dir)
    api = _require_server()
    if api is None:
        return 2
    from im_pipeline_flows.compare import compare_flow
    from im_pipeline_flows.records import run_tags
    from im_pipeline_flows.serve import deployment_name

    config_path = str(Path(args.config).resolve())
    name = args.name or deployment_name(cfg.name)
    when = f"with cron {args.cron!r}" if args.cron else "without a schedule (start runs from the UI or API)"
    print(f"serving deployment 'im-compare/{name}' {when} on {api} (Ctrl-C stops; Prefect then pauses the schedule)")
    compare_flow.serve(
        name=name,
        cron=args.cron,
        parameters={"config": config_path, "overrides": overrides},
        description=f"IT vs IM for {cfg.name} ({config_path}), on a schedule while `im-pipeline serve` runs",
        tags=run_tags(cfg),
    )
    return 0


def _require_server() -> str | None:
    api = prefect_api_url()
    if not api:
        # Prefect's ephemeral server has no scheduler: the cron would never fire.
        print(
            "error: schedules need a running Prefect server. Start one (e.g. `prefect server start` in another "
            "terminal) and set PREFECT_API_URL (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api, or "
            "`prefect config set PREFECT_API_URL=…` in your profile); "
            "see docs/scale_out.md",
            file=sys.stderr,
        )
    return api


def deploy_command(args: argparse.Namespace) -> int:
    """``im-pipeline deploy CONFIG --pool NAME [--cron CRON]``: register the deployment with a work pool, exit."""
    cfg = load_config(args.config, args.overrides, data_dir=args.data_dir)
    overrides = data_dir_overrides(args.overrides, cfg, args.data_dir)
    api = _require_server()
    if api is None:
        return 2
    from im_pipeline_flows.serve import deploy, deployment_name

    name = args.name or deployment_name(cfg.name)
    deployment_id = deploy(args.config, args.pool, cron=args.cron, overrides=overrides, name=name)
    when = f"on cron {args.cron!r} (UTC)" if args.cron else "without a schedule (start runs from the UI or API)"
    print(f"deployment 'im-compare/{name}' ({deployment_id}) registered with work pool {args.pool!r} {when} on {api}")
    print(f"runs need a worker: prefect worker start --pool {args.pool}")
    return 0
