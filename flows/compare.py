"""The main flow: prepare data → units → aggregate → report.

Wiring only: the work is done by the library through the thin tasks in ``tasks/``. A **unit** is what one worker
can do on its own: one (arm, seed) — its training, then all its evaluations — or the base model's evaluations.
Without a work pool the parent flow submits every unit's task runs to its own task runner (in this process, as
many at a time as ``IM_PIPELINE_MAX_WORKERS``). With ``--work-pool NAME`` (or ``orchestration.work_pool``) each
unit is its own flow run of :func:`unit_flow` on that Prefect work pool (``flows/pool.py`` submits, watches and
resubmits them); the workers write under the parent's run root (an absolute path on a shared filesystem) and the
parent builds the one report. Caching: see ``tasks/cache.py`` — a re-run of an unchanged experiment recomputes
only the report, editing one arm recomputes only that arm, and a killed run resumes from the checkpoints it left.

``im-pipeline run CONFIG`` calls :func:`run_command`, which runs the flow in-process against Prefect's ephemeral
local server (SQLite, nothing to set up) or, when ``PREFECT_API_URL`` is set, against that server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_ENV_DEFAULTS = {
    # Library progress (im_pipeline.* loggers) goes to the Prefect UI with the task logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "im_pipeline",
    # Air-gapped friendly: the Prefect server must not try to reach the internet.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral server can take > 20 s (the default limit) to start on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # `im-pipeline run` rebuilds the report after the flow run (to record the command's total): console only.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
for _k, _v in _ENV_DEFAULTS.items():
    os.environ.setdefault(_k, _v)

from prefect import allow_failure, flow, get_run_logger, runtime, tags  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from im_pipeline.config import (  # noqa: E402
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    write_resolved_config,
)
from im_pipeline.evaluation.common import ModelCache  # noqa: E402
from im_pipeline.locking import unit_lock  # noqa: E402
from im_pipeline.provenance import machine, write_json  # noqa: E402
from im_pipeline.runs.layout import BASE_ARM  # noqa: E402
from im_pipeline.runs.staleness import base_key, data_key, eval_key, is_done, train_key  # noqa: E402
from im_pipeline_flows.ephemeral import start_bound_ephemeral_server  # noqa: E402
from im_pipeline_tasks.evaluate import evaluate_task  # noqa: E402
from im_pipeline_tasks.prepare import prepare_data_task  # noqa: E402
from im_pipeline_tasks.report import report_task, save_results_task  # noqa: E402
from im_pipeline_tasks.train import train_task  # noqa: E402

BENCHMARK_ORDER = ("overfitting", "mmlu", "truthfulqa", "humaneval", "alpaca_eval")
"""Evaluation order per model: cheap loss-based first, generation-heavy last."""

MAX_WORKERS = int(os.environ.get("IM_PIPELINE_MAX_WORKERS", "1"))
"""Concurrent task runs in one flow process. 1 on a CPU box (runs would fight for the cores);
raise it on a multi-GPU machine, or use a distributed task runner (docs/scale_out.md)."""

STAGES = ("prepare", "train", "evaluate", "report")
HISTORY = 20  # flow runs kept in timings.json


def resolve_config(config: dict[str, Any] | str, overrides: list[str] | None = None) -> ExperimentConfig:
    """A config from a YAML path or a dict (a deployment's parameter), with ``key=value`` overrides."""
    if isinstance(config, str):
        return load_config(config, overrides)
    return config_from_dict(apply_overrides(config, overrides or []), "<flow parameter>")


def _slug(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in out.split("-") if p) or "experiment"


def _record(fut: Any) -> dict[str, Any]:
    """State and timing of one finished task future; for a task run that did not complete, its error."""
    fut.wait()  # sets the final state locally (otherwise .state asks the API, which may lag behind)
    state = fut.state
    info: dict[str, Any] = {"state": state.name}
    if state.is_completed():
        res = fut.result()
        cached = state.name == "Cached" or not res.get("computed", True)
        info.update(res, computed=not cached, seconds=0.0 if state.name == "Cached" else res["seconds"])
    else:
        info["error"] = _error_text(state)
    return info


def _error_text(state: Any) -> str:
    """``ExceptionType: message`` of a failed task run, or the state's message (e.g. an upstream failure)."""
    if not (state.is_failed() or state.is_crashed()):
        return state.message or state.name  # e.g. NotReady: "Upstream task run ... did not reach ..."
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the result itself may be unreadable
        exc = err
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return state.message or state.name


class TaskRunsFailed(RuntimeError):
    """The flow's result when task runs failed: the report was written, the flow run ends Failed.

    ``summary`` is the run summary that :func:`compare_flow` returns when everything succeeds.
    """

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:  # picklable with its summary (Prefect persists flow results)
        return (type(self), (str(self), self.summary))


def run_tags(cfg: ExperimentConfig) -> list[str]:
    """Tags of a flow run in the UI: the experiment, the model and each arm (filterable)."""
    model = Path(cfg.model.source).name if os.sep in cfg.model.source else cfg.model.source
    return ["im-pipeline", f"experiment:{cfg.name}", f"model:{model}", *(f"arm:{a.name}" for a in cfg.arms)]


def flow_run_name() -> str:
    """``<experiment> <UTC time>``: the flow run's name in the UI (instead of a random one)."""
    params = runtime.flow_run.parameters
    try:
        name = resolve_config(params["config"], params.get("overrides")).name
    except Exception:  # an invalid config fails inside the flow, with its message; the name must not
        name = "im-compare"
    return f"{name} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"


def _flow_run_url() -> str | None:
    """The flow run's page in the Prefect UI; None on the ephemeral server (gone after the run)."""
    from prefect.settings import PREFECT_API_URL

    return runtime.flow_run.ui_url if PREFECT_API_URL.value() else None


def unit_record(out_dir: Path) -> Path:
    """What a unit flow run leaves beside its directory: ``<parent>/.<unit>.unit.json`` — its flow run, host, pid,
    times and task records (the parent reads it). Beside, not inside: a stale run directory is removed whole."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.unit.json"


def unit_dir(cfg: ExperimentConfig, arm: str, seed: int | None) -> Path:
    """Where a unit writes: ``<run root>/<arm>/seed-<s>``, or ``<run root>/base`` for the base model."""
    return cfg.run_root() / BASE_ARM if arm == BASE_ARM else cfg.run_dir(arm, int(seed or 0))


def unit_run_lock(out_dir: Path) -> Path:
    """The lock a unit flow run holds while it runs: ``<parent>/.<unit>.unit.lock`` (not the tasks' locks)."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.unit.lock"


def units_of(cfg: ExperimentConfig, data_hash: str | None) -> list[tuple[str, int | None]]:
    """The experiment's units, in submission order: the base model, then every seed × arm (when there is data)."""
    units: list[tuple[str, int | None]] = [(BASE_ARM, None)] if cfg.evaluation.evaluate_base else []
    return units + [(arm.name, seed) for seed in (cfg.seeds if data_hash else []) for arm in cfg.arms]


def submit_unit(
    cfg: ExperimentConfig, arm: str, seed: int | None, data_hash: str | None, models: ModelCache
) -> dict[str, Any]:
    """Submit one unit's task runs to the current flow run's task runner: train (an arm) → every benchmark.

    ``models`` is the unit's own model cache: its benchmarks load the model once, and no other unit sees it.
    Returns ``{"train/<arm>/<seed>": future, "evaluate/<arm>/<seed>/<benchmark>": future, ...}``.
    """
    data_out = cfg.run_root() / "data"
    out_dir = unit_dir(cfg, arm, seed)
    futures: dict[str, Any] = {}
    after = None
    if arm == BASE_ARM:
        model, model_key = cfg.model.source, base_key(cfg)
    else:
        tk = train_key(cfg, cfg.arm(arm), int(seed or 0), data_hash or "")
        fresh = not is_done(out_dir / "train_summary.json", out_dir, "train", tk)
        after = train_task.with_options(refresh_cache=fresh).submit(cfg, arm, seed, tk, str(out_dir), str(data_out))
        futures[f"train/{arm}/{seed}"] = after
        model, model_key = str(out_dir / "checkpoint"), tk
    for b in (b for b in BENCHMARK_ORDER if getattr(cfg.evaluation, b).enabled):
        ek = eval_key(cfg, model_key, b, getattr(cfg.evaluation, b), data_hash)
        fresh = not is_done(out_dir / "eval" / f"{b}.json", out_dir / "eval", b, ek)
        futures[f"evaluate/{arm}/{seed}/{b}"] = evaluate_task.with_options(refresh_cache=fresh).submit(
            cfg,
            arm,
            seed,
            b,
            ek,
            str(out_dir),
            model,
            model_key,
            str(data_out),
            models,
            wait_for=[after] if after is not None else None,
        )
    if cfg.save_results:  # this unit's result files beside the report as soon as it ends (resumable, committable)
        futures[f"results/{arm}/{seed}"] = save_results_task.submit(
            str(cfg.run_root()), str(cfg.results_dir()), cfg.name, wait_for=[allow_failure(f) for f in futures.values()]
        )
    return futures


@flow(
    name="im-unit",
    flow_run_name="unit-{arm}-seed-{seed}",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),
    log_prints=False,
)
def unit_flow(config: dict[str, Any], arm: str, seed: int | None = None, data_hash: str | None = None) -> Any:
    """One unit as its own flow run (on a work pool's worker): train ``arm`` with ``seed`` (unless ``arm`` is
    ``base``) and run every enabled benchmark on it. ``config`` is the parent's resolved config with an absolute
    ``output_dir``; ``data_hash`` the prepared data's content hash. Writes :func:`unit_record`."""
    from prefect.runtime import flow_run

    started_at = _utc_now()
    cfg = resolve_config(config)
    log = get_run_logger()
    log.info("unit %s/seed-%s of %s on %s (pid %d)", arm, seed, cfg.name, socket.gethostname(), os.getpid())
    out = unit_dir(cfg, arm, seed)
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
    with unit_lock(unit_run_lock(out), on_wait=log.warning):
        write_json(unit_record(out), result)
        models = ModelCache()
        with tags(*run_tags(cfg)):
            futures = submit_unit(cfg, arm, seed, data_hash, models)
            records = {name: _record(f) for name, f in futures.items()}
        models.clear()
        result |= {
            "finished_at": _utc_now(),
            "records": records,
            "failed": sorted(n for n, r in records.items() if r["state"] not in ("Completed", "Cached")),
        }
        write_json(unit_record(out), result)
    if result["failed"]:  # the parent reads the record and lists the errors in the report; not worth a retry
        errors = "; ".join(f"{n}: {records[n].get('error')}" for n in result["failed"])
        log.error("failed task runs: %s", errors)
        message = f"{len(result['failed'])} task run(s) failed: {', '.join(result['failed'])}"
        return Failed(message=message, data=TaskRunsFailed(message, result))
    return result


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@flow(
    name="im-compare",
    flow_run_name=flow_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),
    log_prints=False,
)
def compare_flow(
    config: dict[str, Any] | str, overrides: list[str] | None = None, work_pool: str | None = None
) -> dict[str, Any]:
    """Run IT vs IM (and any other arms) side by side and write the report. Returns the run summary.

    ``work_pool`` (else ``orchestration.work_pool``): run each unit as a flow run on that Prefect work pool.

    When a task run fails, the report is still written (it lists each failure with its error) and then
    the flow run ends Failed; its result is a :class:`TaskRunsFailed` carrying the same summary.
    """
    cfg = resolve_config(config, overrides)
    with tags(*run_tags(cfg)):  # every task run carries them too
        return _compare(cfg, work_pool or cfg.orchestration.work_pool)


def _compare(cfg: ExperimentConfig, pool: str | None) -> Any:
    t0, started = time.perf_counter(), time.time()
    log = get_run_logger()
    cfg.check_data_dir()
    _tag_flow_run(run_tags(cfg))
    root = cfg.run_root()
    data_dir = cfg.resolved_data_dir()
    data_out = root / "data"
    benches = [b for b in BENCHMARK_ORDER if getattr(cfg.evaluation, b).enabled]
    log.info(
        "experiment %s: arms %s, seeds %s, benchmarks %s, units %s",
        cfg.name,
        [a.name for a in cfg.arms],
        cfg.seeds,
        benches,
        f"on work pool {pool!r}" if pool else "in this process",
    )

    # 1. data (the training keys depend on its content, so wait for it)
    dkey = data_key(cfg)
    prep = prepare_data_task.with_options(
        refresh_cache=not is_done(data_out / "data_stats.json", data_out, "data", dkey)
    )
    prep_future = prep.submit(cfg, dkey, str(data_out))
    prepared = prep_future.result()
    # after the data: a malformed input writes nothing
    write_resolved_config(cfg, root, resolved_data_dir=str(data_dir) if data_dir else None)
    data_hash = prepared["data_hash"]
    if prepared.get("unavailable"):
        log.warning(
            "training data unavailable, so no arm is trained; evaluating the base model only: %s",
            prepared["unavailable"],
        )

    units = units_of(cfg, data_hash)
    if not units:
        log.error("nothing to do: no training data and evaluation.evaluate_base is false")

    # 2. the units: in this process (task runs on this flow's runner), or as flow runs on the work pool
    records: dict[str, dict[str, Any]] = {"prepare/data": _record(prep_future)}
    progress_id = create_progress_artifact(
        progress=0.0, key=f"{_slug(cfg.name)}-progress", description=f"{cfg.name}: {len(units)} units"
    )
    if pool:
        from im_pipeline_flows.pool import run_units_on_pool

        def on_unit_done(i: int, unit_records: dict[str, dict[str, Any]]) -> None:
            update_progress_artifact(progress_id, progress=100.0 * i / max(len(units), 1))

        records |= run_units_on_pool(cfg, units, data_hash, pool, on_unit_done, log)
    else:
        futures: dict[str, Any] = {}
        for arm, seed in units:
            futures |= submit_unit(cfg, arm, seed, data_hash, ModelCache())
        total = max(len(futures), 1)
        for i, _ in enumerate(as_completed(list(futures.values())), start=1):
            update_progress_artifact(progress_id, progress=100.0 * i / total)
        records |= {name: _record(f) for name, f in futures.items()}

    # 3. timings so far, then the report (always rebuilt: cheap, and it must see all results)
    failed = sorted(name for name, r in records.items() if r["state"] not in ("Completed", "Cached"))
    entry = _timing_entry(records, started)
    entry["flow_run"] = {"name": runtime.flow_run.name, "id": runtime.flow_run.id, "url": _flow_run_url()}
    entry["total_seconds"] = round(time.perf_counter() - t0, 3)  # so far; updated after the report
    _save_timings(root, entry)
    report_dir = Path(cfg.report_dir) / cfg.name
    rep = report_task.submit(str(root), str(report_dir)).result()
    entry["stages"]["report"] = {"seconds": rep["seconds"], "computed": 1, "cached": 0}
    entry["total_seconds"] = round(time.perf_counter() - t0, 3)
    _save_timings(root, entry)

    # 4. results in the UI
    from im_pipeline.report.build import for_prefect_ui

    key = _slug(cfg.name)
    create_markdown_artifact(
        for_prefect_ui(Path(rep["report"]).read_text(encoding="utf-8"), Path(rep["report"]).parent),
        key=f"{key}-report",
        description=f"IT vs IM report for {cfg.name}",
    )
    if rep.get("table"):
        create_table_artifact(rep["table"], key=f"{key}-comparison", description="benchmark × arm (mean ± stderr)")
    summary = {
        "experiment": cfg.name,
        "run_root": str(root),
        "report": rep["report"],
        "failed": failed,
        "timings": entry,
        "work_pool": pool,
    }
    log.info("wall time per stage:%s", format_timings(entry))
    if failed:
        errors = "; ".join(f"{name}: {records[name].get('error')}" for name in failed)
        log.error("failed task runs (the report lists them): %s", errors)
        message = f"{len(failed)} task run(s) failed: {', '.join(failed)}; report: {rep['report']}"
        return Failed(message=message, data=TaskRunsFailed(message, summary))
    return summary


def _tag_flow_run(names: list[str]) -> None:
    """Add ``names`` to this flow run's tags (a run started by ``im-pipeline run`` or a deployment alike)."""
    from prefect.client.orchestration import get_client

    run_id = runtime.flow_run.id
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run_id).tags or []
        client.update_flow_run(run_id, tags=sorted(set(current) | set(names)))


def _timing_entry(records: dict[str, dict[str, Any]], started: float) -> dict[str, Any]:
    stages: dict[str, dict[str, Any]] = {s: {"seconds": 0.0, "computed": 0, "cached": 0} for s in STAGES}
    for name, r in records.items():
        st = stages.get(name.split("/", 1)[0])
        if st is None:  # "unit/<arm>/<seed>": a unit whose flow runs never completed (listed as failed)
            continue
        if r.get("computed"):
            st["computed"] += 1
            st["seconds"] = round(st["seconds"] + r.get("seconds", 0.0), 3)
        elif r["state"] in ("Completed", "Cached"):
            st["cached"] += 1
            st["seconds"] = round(st["seconds"] + r.get("seconds", 0.0), 3)
    tasks = {
        name: {k: r.get(k) for k in ("state", "seconds", "computed", "error") if k in r} for name, r in records.items()
    }
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "stages": stages,
        "tasks": tasks,
        "machine": _machine(),
        "max_workers": MAX_WORKERS,
    }


def _machine() -> dict[str, Any]:
    """provenance.machine() without importing torch just for it (a cached re-run never needs torch)."""
    if "torch" in sys.modules:
        return machine()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}


def _save_timings(root: Path, entry: dict[str, Any]) -> None:
    """Append (or update) this flow run's entry in runs/<experiment>/timings.json."""
    path = root / "timings.json"
    with unit_lock(root / ".timings.lock"):  # concurrent runs of one experiment: no lost entry
        history: list[dict[str, Any]] = []
        if path.is_file():
            history = json.loads(path.read_text(encoding="utf-8")).get("runs", [])
        if history and history[-1].get("started") == entry["started"]:
            history[-1] = entry
        else:
            history.append(entry)
        write_json(path, {"runs": history[-HISTORY:]})


def format_timings(entry: dict[str, Any], total: float | None = None) -> str:
    """The wall-time table printed at the end of a run."""
    lines = ["", "stage      wall (s)  computed  cached"]
    for name in STAGES:
        st = entry["stages"].get(name, {})
        lines.append(f"{name:<10} {st.get('seconds', 0.0):>8.1f}  {st.get('computed', 0):>8}  {st.get('cached', 0):>6}")
    flow_total = entry.get("total_seconds")
    if flow_total is not None:
        lines.append(f"{'flow':<10} {flow_total:>8.1f}")
    if total is not None:
        lines.append(f"{'total':<10} {total:>8.1f}   (including Prefect start-up)")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    """``im-pipeline run CONFIG [--set k=v ...]``: run the compare flow, print wall times per stage."""
    t0 = time.perf_counter()
    for noisy in ("httpx", "httpcore"):  # one line per API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = with_data_dir(args.config, args.overrides, getattr(args, "data_dir", None))
    cfg = load_config(args.config, overrides)  # validate before starting Prefect: clear errors first
    cfg.check_data_dir()
    pool = getattr(args, "work_pool", None) or cfg.orchestration.work_pool
    where = os.environ.get("PREFECT_API_URL") or "Prefect's ephemeral local server"
    if pool and not os.environ.get("PREFECT_API_URL"):
        # Workers cannot reach the ephemeral server this process would start.
        print(
            f"error: --work-pool {pool} needs a running Prefect server that the pool's workers also use: start one "
            "(`prefect server start`), set PREFECT_API_URL (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api) "
            "here and for the workers; see docs/scale_out.md",
            file=sys.stderr,
        )
        return 2
    units = f", units on work pool {pool!r}" if pool else ""
    print(f"running experiment {cfg.name!r} ({len(cfg.arms)} arms × {len(cfg.seeds)} seeds{units}) on {where}")
    start_bound_ephemeral_server()  # without PREFECT_API_URL: a server that dies with this process, by any signal
    state = compare_flow(cfg.to_dict(), work_pool=pool, return_state=True)
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
    _record_total(Path(summary["run_root"]), Path(summary["report"]).parent, total)
    print(format_timings(summary["timings"], total))
    print(f"\nreport: {summary['report']}")
    print(f"flow run: {state.name}" + (f" ({state.message})" if state.message else ""))
    if summary["failed"]:
        print(f"failed task runs: {', '.join(summary['failed'])}")
        return 1
    return 0


def with_data_dir(config: str, overrides: list[str], data_dir: str | None) -> list[str]:
    """``--data-dir``: an explicit ``data_dir=`` override unless the config file names its own data_dir.

    The precedence is the config's ``data_dir``, then ``--data-dir``, then ``$IM_PIPELINE_DATA_DIR``.
    """
    if not data_dir:
        return list(overrides)
    if load_config(config, overrides).data_dir:
        return list(overrides)
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no such directory")
    return [*overrides, f"data_dir={path}"]


def _record_total(root: Path, report_dir: Path, total: float) -> None:
    """Record the command's wall time, then rebuild the report so that it shows this run's totals too."""
    from im_pipeline.report.build import build_report

    path = root / "timings.json"
    with unit_lock(root / ".timings.lock"):
        data = json.loads(path.read_text(encoding="utf-8"))
        data["runs"][-1]["command_seconds"] = round(total, 3)
        write_json(path, data)
    build_report(root, report_dir)  # cheap: its figures are reused (same inputs)
