"""What the flows read from Prefect and show in it: a task run's record (state, seconds, error), the tags and name
of a flow run, its page in the UI, the result of a flow whose task runs failed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prefect import runtime

from im_pipeline.config import ExperimentConfig, apply_overrides, config_from_dict, load_config


def resolve_config(
    config: ExperimentConfig | dict[str, Any] | str, overrides: list[str] | None = None
) -> ExperimentConfig:
    """The flow's config: a loaded one as it is (``im-pipeline run`` validated it), else from a YAML path or a
    mapping (a deployment's parameter), with ``key=value`` overrides, validated once."""
    if isinstance(config, ExperimentConfig) and not overrides:
        return config
    if isinstance(config, ExperimentConfig):
        return config_from_dict(apply_overrides(config.to_dict(), overrides or []), "<flow parameter>")
    if isinstance(config, str):
        return load_config(config, overrides)
    return config_from_dict(apply_overrides(config, overrides or []), "<flow parameter>")


def experiment_name(config: ExperimentConfig | dict[str, Any] | str, overrides: list[str] | None = None) -> str:
    """The experiment's name, read without validating the config (validation happens once, in the flow)."""
    from im_pipeline.config.loading import yaml_load

    if isinstance(config, ExperimentConfig):
        data: Any = config.to_dict()
    elif isinstance(config, str):
        data = yaml_load(Path(config).read_text(encoding="utf-8"))
    else:
        data = config
    return str(apply_overrides(data, overrides or []).get("name"))


def slug(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in out.split("-") if p) or "experiment"


def record(fut: Any) -> dict[str, Any]:
    """State and timing of one finished task future; for a task run that did not complete, its error."""
    fut.wait()  # sets the final state locally (otherwise .state asks the API, which may lag behind)
    state = fut.state
    info: dict[str, Any] = {"state": state.name}
    if state.is_completed():
        info.update(fut.result())  # "computed": False when the unit was already done (its key and stamp)
    else:
        info["error"] = error_text(state)
    return info


def failed(records: dict[str, dict[str, Any]]) -> list[str]:
    """The task runs (by record name) that did not complete."""
    return sorted(name for name, r in records.items() if r["state"] != "Completed")


def error_text(state: Any) -> str:
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

    ``summary`` is the run summary that the compare flow returns when everything succeeds.
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
        name = experiment_name(params["config"], params.get("overrides"))
    except Exception:  # an unreadable config fails inside the flow, with its message; the name must not
        name = "im-compare"
    return f"{name} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"


def flow_run_url() -> str | None:
    """The flow run's page in the Prefect UI; None on the ephemeral server (gone after the run)."""
    from prefect.settings import PREFECT_API_URL

    return runtime.flow_run.ui_url if PREFECT_API_URL.value() else None


def tag_flow_run(names: list[str]) -> None:
    """Add ``names`` to this flow run's tags (a run started by ``im-pipeline run`` or a deployment alike)."""
    from prefect.client.orchestration import get_client

    run_id = runtime.flow_run.id
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run_id).tags or []
        client.update_flow_run(run_id, tags=sorted(set(current) | set(names)))
