"""The main flow: prepare data → units → report, as a straight chain of typed task calls.

Wiring only: the work is done by the library (``im_pipeline.runs.units``) through the thin tasks in ``tasks/``. A
**unit** is what one worker can do on its own: one (arm, seed) — its training, then all its evaluations — or the
base model's evaluations. Without a work pool the parent flow submits every unit's task runs to its own task runner
(in this process, as many at a time as ``orchestration.max_workers``, see :class:`SettingsTaskRunner`). With
``--work-pool NAME`` (or ``orchestration.work_pool``) each unit is its own flow run of :func:`unit_flow` on that
Prefect work pool (``flows/pool.py`` submits, watches and resubmits them); the workers write under the parent's run
root (an absolute path on a shared filesystem) and the parent builds the one report. Whether a unit is done is
decided by the unit layer alone (its key and stamp, ``im_pipeline.runs``): every task starts, and a done unit
returns at once. A re-run of an unchanged experiment recomputes only the report, editing one arm recomputes only
that arm, a killed run resumes from the checkpoints it left, and ``force`` / ``rerun`` (``im-pipeline run --force``
/ ``--rerun STAGE``) replace units on purpose.

With ``strata`` (``ExperimentConfig.stratum_configs``) every stratum is a run root of its own
(``runs/<name>/<stratum>``): its data, units and timings; all strata's units go into this one flow run (on a work
pool too, submitted together), and the one report covers them all.

``im-pipeline run CONFIG`` (``flows/cli/run.py``) runs :func:`compare_flow` in-process against Prefect's ephemeral
local server (SQLite, nothing to set up) or, when ``PREFECT_API_URL`` is set, against that server.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import allow_failure, flow, get_run_logger, runtime, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from im_pipeline.config import ExperimentConfig, default_max_workers, write_resolved_config
from im_pipeline.evaluation.common import ModelCache
from im_pipeline.evaluation.specs import run_order
from im_pipeline.locking import unit_lock
from im_pipeline.provenance import write_json
from im_pipeline.report.prefect_ui import for_prefect_ui
from im_pipeline.runs.layout import BASE_ARM, RunLayout
from im_pipeline.runs.staleness import data_key
from im_pipeline.runs.timings import format_timings, save_timings, timing_entry
from im_pipeline.runs.units import jobs_of, rerun_stages
from im_pipeline_flows.records import (
    TaskRunsFailed,
    failed,
    flow_run_name,
    flow_run_url,
    record,
    resolve_config,
    run_tags,
    slug,
    tag_flow_run,
)
from im_pipeline_tasks.evaluate import evaluate_task
from im_pipeline_tasks.prepare import prepare_data_task
from im_pipeline_tasks.report import report_task, save_results_task
from im_pipeline_tasks.train import train_task


class SettingsTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread-pool task runner, sized when a flow run starts: ``max_workers`` when given (``im-pipeline
    run`` passes the loaded config's ``orchestration.max_workers``), else the settings' default at that moment
    (``$IM_PIPELINE_MAX_WORKERS``, else 1: a deployment's or a pool worker's flow run)."""

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__(max_workers=max_workers or 1)
        self.requested = max_workers

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def duplicate(self) -> SettingsTaskRunner:
        return type(self)(self.requested)

    def __enter__(self) -> SettingsTaskRunner:
        self._max_workers = self.requested or default_max_workers()
        return super().__enter__()


def units_of(cfg: ExperimentConfig, data_hash: str | None) -> list[tuple[str, int | None]]:
    """The experiment's units, in submission order: the base model, then every seed × arm (when there is data)."""
    units: list[tuple[str, int | None]] = [(BASE_ARM, None)] if cfg.evaluation.evaluate_base else []
    return units + [(arm.name, seed) for seed in (cfg.seeds if data_hash else []) for arm in cfg.arms]


def submit_unit(
    cfg: ExperimentConfig,
    arm: str,
    seed: int | None,
    data_hash: str | None,
    models: ModelCache,
    rerun: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Submit one unit's task runs to the current flow run's task runner: train (an arm) → every benchmark.

    ``models`` is the unit's own model cache: its benchmarks load the model once, and no other unit sees it.
    ``rerun``: the stages / benchmarks to replace (:func:`~im_pipeline.runs.units.rerun_stages`).
    Returns ``{"train/<arm>/<seed>": future, "evaluate/<arm>/<seed>/<benchmark>": future, ...}``.
    """
    train, evals = jobs_of(cfg, arm, seed, data_hash, rerun)
    futures: dict[str, Any] = {}
    after = None
    if train is not None:
        after = train_task.submit(cfg, train)
        futures[f"train/{arm}/{seed}"] = after
    for job in evals:
        futures[f"evaluate/{arm}/{seed}/{job.benchmark}"] = evaluate_task.submit(
            cfg, job, models, wait_for=[after] if after is not None else None
        )
    if cfg.save_results:  # this unit's result files beside the report as soon as it ends (resumable, committable)
        layout = RunLayout.of(cfg)
        futures[f"results/{arm}/{seed}"] = save_results_task.submit(
            str(layout.root), str(cfg.results_dir()), cfg.name, wait_for=[allow_failure(f) for f in futures.values()]
        )
    return futures


@flow(name="im-unit", flow_run_name="unit-{arm}-seed-{seed}", task_runner=SettingsTaskRunner(), log_prints=False)
def unit_flow(
    config: dict[str, Any],
    arm: str,
    seed: int | None = None,
    data_hash: str | None = None,
    rerun: list[str] | None = None,
) -> Any:
    """One unit as its own flow run (on a work pool's worker): train ``arm`` with ``seed`` (unless ``arm`` is
    ``base``) and run every enabled benchmark on it. ``config`` is the parent's resolved config with an absolute
    ``output_dir``; ``data_hash`` the prepared data's content hash; ``rerun`` the parent's ``--rerun`` stages.
    Writes the unit's flow record."""
    from prefect.runtime import flow_run

    started_at = _utc_now()
    cfg = resolve_config(config)
    log = get_run_logger()
    log.info("unit %s/seed-%s of %s on %s (pid %d)", arm, seed, cfg.name, socket.gethostname(), os.getpid())
    unit = RunLayout.of(cfg).unit(arm, seed)
    result: dict[str, Any] = {
        "experiment": cfg.name,
        "arm": arm,
        "seed": seed,
        "flow_run_id": str(flow_run.id),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started_at,
        "finished_at": None,  # None while running: with the lock free, the parent knows this process died
    }
    # Held for the whole unit: the parent probes it to tell a live unit from a dead one (flows/pool.py).
    with unit_lock(unit.flow_lock, on_wait=log.warning):
        write_json(unit.flow_record, result)
        models = ModelCache()
        with tags(*run_tags(cfg)):
            futures = submit_unit(cfg, arm, seed, data_hash, models, rerun_stages(rerun or ()))
            records = {name: record(f) for name, f in futures.items()}
        models.clear()
        result |= {"finished_at": _utc_now(), "records": records, "failed": failed(records)}
        write_json(unit.flow_record, result)
    if result["failed"]:  # the parent reads the record and lists the errors in the report; not worth a retry
        errors = "; ".join(f"{n}: {records[n].get('error')}" for n in result["failed"])
        log.error("failed task runs: %s", errors)
        message = f"{len(result['failed'])} task run(s) failed: {', '.join(result['failed'])}"
        return Failed(message=message, data=TaskRunsFailed(message, result))
    return result


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# validate_parameters=False: the config is validated once, by resolve_config (Prefect's validation would turn a
# mapping into an ExperimentConfig without the environment's settings folded in, or validate a loaded one again).
@flow(
    name="im-compare",
    flow_run_name=flow_run_name,
    task_runner=SettingsTaskRunner(),
    log_prints=False,
    validate_parameters=False,
)
def compare_flow(
    config: ExperimentConfig | str,
    overrides: list[str] | None = None,
    work_pool: str | None = None,
    force: bool = False,
    rerun: list[str] | None = None,
    command_started: float | None = None,
) -> dict[str, Any]:
    """Run IT vs IM (and any other arms) side by side and write the report. Returns the run summary.

    ``config``: a loaded config (``im-pipeline run`` passes it: validated once), a YAML path (a deployment's
    parameter: each run re-reads the file), or its mapping (a run started from the UI, whose form shows the
    config's fields: the annotation is the pydantic model, so the flow's parameter schema carries every section).
    ``work_pool`` (else ``orchestration.work_pool``): run each unit as a flow run on that
    Prefect work pool. ``force`` / ``rerun``: recompute every unit / those stages or benchmarks even when their
    stamps match. ``command_started``: the ``time.time()`` at which the command started, for the report's command
    total.

    When a task run fails, the report is still written (it lists each failure with its error) and then
    the flow run ends Failed; its result is a :class:`TaskRunsFailed` carrying the same summary.
    """
    cfg = resolve_config(config, overrides)
    replace = rerun_stages(rerun or (), force=force)
    with tags(*run_tags(cfg)):  # every task run carries them too
        return _compare(cfg, work_pool or cfg.orchestration.work_pool, replace, command_started)


def _compare(cfg: ExperimentConfig, pool: str | None, rerun: frozenset[str], command_started: float | None) -> Any:
    t0, started = time.perf_counter(), time.time()
    log = get_run_logger()
    tag_flow_run(run_tags(cfg))
    layout = RunLayout.of(cfg)
    log.info(
        "experiment %s: arms %s, seeds %s, benchmarks %s, units %s%s%s",
        cfg.name,
        [a.name for a in cfg.arms],
        cfg.seeds,
        [b for b in run_order() if getattr(cfg.evaluation, b).enabled],
        f"on work pool {pool!r}" if pool else "in this process",
        f", replacing {sorted(rerun)}" if rerun else "",
        f", strata {list(cfg.arms_by_stratum())}" if cfg.strata else "",
    )
    # With strata every stratum is its own run root (runs/<name>/<stratum>); without, the one run ("" below).
    runs: dict[str, ExperimentConfig] = cfg.stratum_configs() or {"": cfg}

    # 1. data (the training keys depend on its content, so wait for it), per run root
    prepared = {key: _prepare(c, rerun, log) for key, c in runs.items()}
    if cfg.strata:  # the whole experiment (its strata, its study) at runs/<name>/config.yaml: what the report reads
        write_resolved_config(cfg, layout.root)

    # 2. the units of every run root, in one flow run: in this process, or as flow runs on the work pool
    plan = [(key, c, units_of(c, prepared[key][1]), prepared[key][1]) for key, c in runs.items()]
    by_run = _run_units(cfg, plan, pool, rerun, log)
    by_run = {key: {"prepare/data": prepared[key][0]} | by_run[key] for key in runs}

    # 3. timings (per run root), then the report, built once (it must see all results; cheap)
    entries = {key: _timing(by_run[key], started, t0, cfg, command_started) for key in runs}
    for key, c in runs.items():
        save_timings(RunLayout.of(c), entries[key])
    rep = report_task.submit(str(layout.root), str(Path(cfg.report_dir) / cfg.name), "report" in rerun).result()
    for key, c in runs.items():
        entries[key]["stages"]["report"] = {"seconds": rep["seconds"], "computed": 1, "cached": 0}
        entries[key]["total_seconds"] = round(time.perf_counter() - t0, 3)
        save_timings(RunLayout.of(c), entries[key])
    _publish(cfg, rep)
    records = {in_stratum(name, key): r for key in runs for name, r in by_run[key].items()}
    entry = entries[""] if "" in entries else _timing(records, started, t0, cfg, command_started)
    entry["stages"]["report"] = {"seconds": rep["seconds"], "computed": 1, "cached": 0}
    return _summary(cfg, layout, rep, records, entry, pool, log)


def in_stratum(name: str, stratum: str) -> str:
    """A task record's name across strata: ``train/IT/0`` of stratum ``LOW`` → ``train/LOW/IT/0`` (the stage first,
    as :func:`~im_pipeline.runs.timings.timing_entry` reads it); unchanged without a stratum."""
    stage, _, rest = name.partition("/")
    return f"{stage}/{stratum}/{rest}" if stratum else name


def _prepare(cfg: ExperimentConfig, rerun: frozenset[str], log: Any) -> tuple[dict[str, Any], str | None]:
    """Prepare one run root's data and write its resolved config; returns the task record and the data hash."""
    prep_future = prepare_data_task.submit(cfg, data_key(cfg), "data" in rerun)
    prepared = prep_future.result()
    write_resolved_config(cfg, RunLayout.of(cfg).root)  # after the data: a malformed input writes nothing
    if prepared.get("unavailable"):
        log.warning(
            "%s: training data unavailable, so no arm is trained; evaluating the base model only: %s",
            cfg.run_label(),
            prepared["unavailable"],
        )
    if not units_of(cfg, prepared["data_hash"]):
        log.error("%s: nothing to do: no training data and evaluation.evaluate_base is false", cfg.run_label())
    return record(prep_future), prepared["data_hash"]


def _timing(
    records: dict[str, dict[str, Any]], started: float, t0: float, cfg: ExperimentConfig, command_started: float | None
) -> dict[str, Any]:
    """A run root's timing entry up to writing the report (whose seconds show "–" until it is written)."""
    entry = timing_entry(records, started, cfg.settings.max_workers)
    entry["flow_run"] = {"name": runtime.flow_run.name, "id": runtime.flow_run.id, "url": flow_run_url()}
    entry["stages"]["report"]["seconds"] = None  # the report shows "–": it is being written
    entry["total_seconds"] = round(time.perf_counter() - t0, 3)  # up to writing the report
    if command_started is not None:  # the command's total up to writing the report, Prefect's start-up included
        entry["command_seconds"] = round(time.time() - command_started, 3)
    return entry


def _run_units(
    cfg: ExperimentConfig,
    plan: list[tuple[str, ExperimentConfig, list[tuple[str, int | None]], str | None]],
    pool: str | None,
    rerun: frozenset[str],
    log: Any,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every unit's task records per run root (``plan``: key, its config, its units, its data hash), with a
    progress artifact: all at once, on the work pool or on this flow's task runner."""
    n_units = sum(len(units) for _, _, units, _ in plan)
    progress_id = create_progress_artifact(
        progress=0.0, key=f"{slug(cfg.name)}-progress", description=f"{cfg.name}: {n_units} units"
    )
    if pool:
        from im_pipeline_flows.pool import run_units_on_pool

        def on_unit_done(i: int, unit_records: dict[str, dict[str, Any]]) -> None:
            update_progress_artifact(progress_id, progress=100.0 * i / max(n_units, 1))

        by_root = run_units_on_pool([(c, units, h) for _, c, units, h in plan], pool, on_unit_done, log, rerun)
        return {key: records for (key, *_), records in zip(plan, by_root, strict=True)}
    futures: dict[str, dict[str, Any]] = {key: {} for key, _, _, _ in plan}
    for key, c, units, data_hash in plan:
        for arm, seed in units:
            futures[key] |= submit_unit(c, arm, seed, data_hash, ModelCache(), rerun)
    every = [f for by_name in futures.values() for f in by_name.values()]
    for i, _ in enumerate(as_completed(every), start=1):
        update_progress_artifact(progress_id, progress=100.0 * i / max(len(every), 1))
    return {key: {name: record(f) for name, f in by_name.items()} for key, by_name in futures.items()}


def _publish(cfg: ExperimentConfig, rep: dict[str, Any]) -> None:
    """The report (figures inlined) and the comparison table as Prefect artifacts."""
    key = slug(cfg.name)
    report = Path(rep["report"])
    create_markdown_artifact(
        for_prefect_ui(report.read_text(encoding="utf-8"), report.parent),
        key=f"{key}-report",
        description=f"IT vs IM report for {cfg.name}",
    )
    if rep.get("table"):
        create_table_artifact(rep["table"], key=f"{key}-comparison", description="benchmark × arm (mean ± stderr)")


def _summary(
    cfg: ExperimentConfig,
    layout: RunLayout,
    rep: dict[str, Any],
    records: dict[str, dict[str, Any]],
    entry: dict[str, Any],
    pool: str | None,
    log: Any,
) -> Any:
    """The flow's result: the run summary, or a Failed state carrying it when task runs failed."""
    failures = failed(records)
    summary = {
        "experiment": cfg.name,
        "run_root": str(layout.root),
        "report": rep["report"],
        "failed": failures,
        "timings": entry,
        "work_pool": pool,
    }
    log.info("wall time per stage:%s", format_timings(entry))
    if failures:
        errors = "; ".join(f"{name}: {records[name].get('error')}" for name in failures)
        log.error("failed task runs (the report lists them): %s", errors)
        message = f"{len(failures)} task run(s) failed: {', '.join(failures)}; report: {rep['report']}"
        return Failed(message=message, data=TaskRunsFailed(message, summary))
    return summary
