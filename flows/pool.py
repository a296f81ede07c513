"""Units on a Prefect work pool: submit each unit as a flow run, wait, notice dead ones, submit them again.

Why ``run_deployment`` of a unit flow (and not prefect-dask / prefect-ray task runners): a unit is hours of GPU
work that must survive the parent's machine, show in the UI as its own flow run with its own logs, run where the
pool's workers are (process, Docker or Kubernetes pools, with their job variables: image, GPUs, volumes), and be
resumable on its own. A flow run per unit gives that with the server, pool and workers users already run; a
Dask/Ray cluster would be one more service to operate, whose task runs die with the parent flow's process.

Recovery as Prefect 3 allows it: a process worker that dies does not requeue its flow runs, and a flow run whose
process died with it stays ``Running``. Prefect's answer is heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
at least 30 s, emitted by the flow run's engine as ``prefect.flow-run.heartbeat`` events) plus a zombie-detection
automation that marks silent runs ``Crashed`` (Prefect 3.8.8's server has no such service of its own; Prefect
Cloud's "unresponsive run detection" is that automation). The parent does that detection itself, so it works on any
server: a unit flow run still ``Running`` with no heartbeat for ``orchestration.heartbeat_timeout_s`` is set to
``Crashed``, at once when the unit's own lock shows its process is gone, and never while the unit still holds that
lock (heartbeats are late on a loaded machine). Those decisions are policy, made in the library
(:mod:`im_pipeline.runs.resubmit`: ``lock_evidence``, ``verdict``, ``after_final``); this module makes the Prefect
calls.
A ``Crashed`` unit (by us, the worker, or an automation) is submitted again, up to
``orchestration.max_attempts`` flow runs. The new run resumes from the unit's last Trainer checkpoint and skips
every finished output (the stamps of ``im_pipeline/runs/staleness.py``); the per-unit locks
(``im_pipeline/locking.py``, taken in ``im_pipeline/runs/units.py``) make sure a wrongly presumed dead run and
its successor never write the same unit at once. A unit that
*fails* (an exception in its code) is not submitted again: the same inputs would fail the same way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from im_pipeline.config import ExperimentConfig
from im_pipeline.runs.layout import RunLayout
from im_pipeline.runs.resubmit import after_final, lock_evidence, parse_time, verdict

UNIT_FLOW = "im-unit"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


def unit_deployment_name(pool: str) -> str:
    """One deployment of the unit flow per work pool (units differ only in their parameters)."""
    return f"units-{pool}"


def ensure_unit_deployment(cfg: ExperimentConfig, pool: str) -> str:
    """Register (or update) the unit flow's deployment on ``pool``; returns ``im-unit/<name>`` for run_deployment.

    Workers import the unit flow from their installed package (its module entrypoint,
    ``im_pipeline_flows.compare.unit_flow``), whether that came from a wheel or an editable checkout; the deployment's
    job variables switch on flow-run heartbeats and forward the library's progress logs to the UI.
    """
    from prefect.types.entrypoint import EntrypointType

    from im_pipeline_flows.compare import unit_flow

    name = unit_deployment_name(pool)
    unit_flow.deploy(
        entrypoint_type=EntrypointType.MODULE_PATH,
        name=name,
        work_pool_name=pool,
        job_variables={
            "env": {
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(cfg.orchestration.heartbeat_s),
                "PREFECT_LOGGING_EXTRA_LOGGERS": "im_pipeline",
            }
        },
        description="one unit of an im-pipeline experiment: an (arm, seed)'s training and evaluations",
        tags=["im-pipeline", "unit"],
        print_next_steps=False,
        ignore_warnings=True,  # Prefect's "process pool: consider .serve" hint; a process pool is the point here
    )
    return f"{UNIT_FLOW}/{name}"


def unit_parameters(
    cfg: ExperimentConfig, arm: str, seed: int | None, data_hash: str | None, rerun: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The unit flow's parameters: the parent's resolved config (its settings: the data directory, launcher, model
    cache, already absolute) with an absolute ``output_dir`` (workers may start elsewhere), and ``--rerun``."""
    data = cfg.to_dict()
    data["output_dir"] = str(Path(cfg.output_dir).resolve())
    data["orchestration"]["work_pool"] = None  # a unit never fans out again
    return {"config": data, "arm": arm, "seed": seed, "data_hash": data_hash, "rerun": sorted(rerun)}


class UnitRun:
    """One unit's flow runs on the pool (the current one and how many were started); ``root``: the index of its run
    root in :func:`run_units_on_pool`'s plan."""

    def __init__(
        self, cfg: ExperimentConfig, root: int, arm: str, seed: int | None, parameters: dict[str, Any]
    ) -> None:
        self.cfg, self.root, self.arm, self.seed, self.parameters = cfg, root, arm, seed, parameters
        self.unit = RunLayout.of(cfg).unit(arm, seed)
        self.flow_run_id: Any = None
        self.attempts = 0
        self.final: str | None = None  # final state name once settled
        self.history: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        name = self.arm if self.seed is None else f"{self.arm}/seed-{self.seed}"
        return f"{self.cfg.stratum}/{name}" if self.cfg.stratum else name


def _last_heartbeat(client: Any, flow_run_id: Any) -> float | None:
    """Time of the newest heartbeat event of a flow run, or None."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        ),
        limit=1,
    )
    return parse_time(page.events[0].occurred) if page.events else None


def unit_run_name(cfg: ExperimentConfig, arm: str, seed: int | None, attempt: int) -> str:
    """A unit flow run's name: ``<exp>-<arm>-seed-<s>-<attempt>``; a stratum's ``<exp>/<stratum>/<arm>/seed-<s>-…``."""
    if cfg.stratum:
        return f"{cfg.run_label()}/{arm}" + ("" if seed is None else f"/seed-{seed}") + f"-{attempt}"
    return f"{cfg.name}-{arm}" + ("" if seed is None else f"-seed-{seed}") + f"-{attempt}"


def run_units_on_pool(
    plan: Sequence[tuple[ExperimentConfig, list[tuple[str, int | None]], str | None]],
    pool: str,
    on_unit_done: Callable[[int, dict[str, dict[str, Any]]], None],
    log: logging.Logger | Any,
    rerun: frozenset[str] = frozenset(),
) -> list[dict[str, dict[str, Any]]]:
    """Run every unit of every run root in ``plan`` (its config, its units, its data hash: the experiment's, or one
    per stratum) as a flow run on ``pool``, all at once; wait for all, resubmit crashed or silent ones.

    Returns each run root's task records, in ``plan``'s order (``train/<arm>/<seed>``,
    ``evaluate/<arm>/<seed>/<benchmark>`` → state, seconds, computed), read from the record each unit writes
    (``.<unit>.unit.json``); a unit that never completed contributes one record ``unit/<arm>/<seed>`` with its last
    state. ``on_unit_done(i, records)`` after the i-th unit (of all) settles.
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    orch = plan[0][0].orchestration  # the experiment's: every stratum has the same
    deployment = ensure_unit_deployment(plan[0][0], pool)
    runs = [
        UnitRun(c, i, a, s, unit_parameters(c, a, s, data_hash, rerun))
        for i, (c, units, data_hash) in enumerate(plan)
        for a, s in units
    ]

    def submit(u: UnitRun) -> None:
        u.attempts += 1
        fr = run_deployment(
            name=deployment,
            parameters=u.parameters,
            timeout=0,  # do not wait here: all units are submitted, then watched together
            flow_run_name=unit_run_name(u.cfg, u.arm, u.seed, u.attempts),
            tags=["im-pipeline", u.cfg.name],
        )
        u.flow_run_id = fr.id
        log.info("unit %s: flow run %s submitted to work pool %r (attempt %d)", u.name, fr.id, pool, u.attempts)

    for u in runs:
        submit(u)
    records: list[dict[str, dict[str, Any]]] = [{} for _ in plan]
    done = 0
    with get_client(sync_client=True) as client:
        while any(u.final is None for u in runs):
            time.sleep(orch.poll_s)
            for u in (u for u in runs if u.final is None):
                state = _current_state(client, u, log)
                if state is None or not state.is_final():
                    continue
                u.history.append({"flow_run_id": str(u.flow_run_id), "state": state.name, "message": state.message})
                if after_final(crashed=state.is_crashed(), attempts=u.attempts, max_attempts=orch.max_attempts) == (
                    "resubmit"
                ):
                    log.warning(
                        "unit %s: flow run %s crashed (%s); submitting it again", u.name, u.flow_run_id, state.message
                    )
                    submit(u)
                    continue
                u.final = state.name
                unit_records = _unit_records(u, state)
                records[u.root] |= unit_records
                done += 1
                on_unit_done(done, unit_records)
                log.info("unit %s: %s after %d flow run(s)", u.name, state.name, u.attempts)
    return records


def _current_state(client: Any, u: UnitRun, log: logging.Logger | Any) -> Any:
    """The state of the unit's flow run; a ``Running`` one that the library's policy finds dead
    (:func:`~im_pipeline.runs.resubmit.verdict`) is set to ``Crashed`` first."""
    from prefect.states import Crashed

    state = client.read_flow_run(u.flow_run_id).state
    if state is None or not state.is_running():
        return state
    dead, msg = verdict(
        running_since=parse_time(state.timestamp),
        last_heartbeat=_last_heartbeat(client, u.flow_run_id),
        now=time.time(),
        timeout_s=u.cfg.orchestration.heartbeat_timeout_s,
        evidence=lock_evidence(u.unit, str(u.flow_run_id)),
    )
    if not dead:
        return state
    log.warning("unit %s: flow run %s %s", u.name, u.flow_run_id, msg)
    client.set_flow_run_state(u.flow_run_id, Crashed(message=msg), force=True)
    return client.read_flow_run(u.flow_run_id).state


def _unit_records(u: UnitRun, state: Any) -> dict[str, dict[str, Any]]:
    path = u.unit.flow_record
    if (state.is_completed() or state.is_failed()) and path.is_file():  # failed task runs: listed in the record
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("flow_run_id") == str(u.flow_run_id):
            result_records: dict[str, dict[str, Any]] = result["records"]
            for r in result_records.values():
                r.setdefault("host", result["host"])
                r.setdefault("pid", result["pid"])
            return result_records
    error = f"flow run {u.flow_run_id} ended {state.name} after {u.attempts} attempt(s): {state.message}"
    return {f"unit/{u.arm}/{u.seed}": {"state": state.name, "error": error, "attempts": u.attempts}}
