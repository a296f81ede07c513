"""Scheduled runs of the compare flow: ``im-pipeline serve`` and ``im-pipeline deploy``.

Both need a running Prefect server (``prefect server start``, or Prefect Cloud) named by
``PREFECT_API_URL``: its scheduler service creates the scheduled flow runs (Prefect's ephemeral
server runs no scheduler, so a cron would never fire).

* ``im-pipeline serve`` (``im-pipeline serve CONFIG --cron "0 2 * * *"``): ``compare_flow.serve(...)``
  creates a deployment with a cron schedule and runs its flow runs from this process (no work pool
  or worker needed). **The schedule lives only as long as this process**: when ``serve`` stops,
  Prefect's runner pauses the deployment's schedule (``Runner(pause_on_shutdown=True)``, the default of
  ``Flow.serve``, calls ``pause_deployment`` on exit), so no runs are scheduled until it is served
  again.
* :func:`deploy` (``im-pipeline deploy CONFIG --pool NAME --cron ...``):
  registers the flow with a work pool (process, Docker or Kubernetes; see docs/scale_out.md) and
  exits. **The schedule lives on the server** and outlives the command: the server keeps creating
  runs, and any worker of the pool (``prefect worker start --pool NAME``) runs them; with no worker
  running they wait (and show as Late).

Both register the flow by its installed module, ``im_pipeline_flows.compare.compare_flow`` (Prefect's
``EntrypointType.MODULE_PATH``), not by a file of a checkout: a worker imports it from the environment it runs in, so
``deploy`` and ``--work-pool`` work the same from a wheel as from a checkout (tests/test_wheel.py installs the wheel
outside the checkout). A git ``source`` (remote workers that install nothing) still uses the file entrypoint.

Both pass the config *path* (plus ``--set`` overrides) as the flow parameter, so each scheduled run
reads the current file (and resolves its settings in the process that runs it): edit the config and the next
nightly run picks it up, while every unit that did not change is skipped (its key and stamp).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from im_pipeline.config import load_config
from im_pipeline_flows.compare import compare_flow
from im_pipeline_flows.records import run_tags

COMPARE_ENTRYPOINT = "flows/compare.py:compare_flow"
"""The file entrypoint inside a checkout, for a git ``source`` only."""


def deployment_name(experiment: str) -> str:
    return f"{experiment}-scheduled"


def deploy(
    config: str | Path,
    work_pool: str,
    *,
    cron: str | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
    source: str | Path | None = None,
) -> uuid.UUID:
    """Register the compare flow for ``config`` with ``work_pool`` (optionally on a cron schedule).

    Workers import the flow from the installed package (its module entrypoint) by default; ``source`` (a git URL
    for remote workers, not tested here: docs/scale_out.md §5) makes them check that out instead. Returns the
    deployment id. The schedule lives on the server: it outlives this call (see the module docstring).
    """
    from prefect.types.entrypoint import EntrypointType

    cfg = load_config(config, overrides)
    flow = compare_flow if source is None else compare_flow.from_source(str(source), COMPARE_ENTRYPOINT)
    return flow.deploy(
        entrypoint_type=EntrypointType.MODULE_PATH if source is None else EntrypointType.FILE_PATH,
        name=name or deployment_name(cfg.name),
        work_pool_name=work_pool,
        cron=cron,
        parameters={"config": str(Path(config).resolve()), "overrides": list(overrides or [])},
        tags=run_tags(cfg),
        job_variables={"env": {"PREFECT_LOGGING_EXTRA_LOGGERS": "im_pipeline"}},  # library progress in the UI
        print_next_steps=False,
    )
