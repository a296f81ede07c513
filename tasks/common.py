"""Task options shared by the wrappers: retries only on I/O, run names, what every task returns.

Prefect caches nothing here (every task has ``cache_policy=NO_CACHE``, so Prefect does not even hash its inputs):
a task always starts and asks its unit (:mod:`im_pipeline.runs.units`), which decides by the unit's key and stamp
whether there is anything to do (a done unit returns at once, ``computed`` False)."""

from __future__ import annotations

import time
from typing import Any

# Deterministic failures (a missing file, a bad value) are never retried; network/judge errors are.
_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_TRANSIENT_NAMES = {
    "APIConnectionError",
    "APITimeoutError",
    "RateLimitError",
    "InternalServerError",
    "ConnectError",
    "ReadTimeout",
    "ConnectTimeout",
    "RemoteDisconnected",
    "HfHubHTTPError",
}


def is_transient(exc: BaseException | None) -> bool:
    """True for I/O errors worth a retry (network, judge API, downloads)."""
    if exc is None or isinstance(exc, _NOT_TRANSIENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    return type(exc).__name__ in _TRANSIENT_NAMES


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure is transient I/O."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the result itself may be unreadable
        exc = err
    return is_transient(exc if isinstance(exc, BaseException) else None)


def done(stage: str, seconds: float, computed: bool, **extra: Any) -> dict[str, Any]:
    """What every task returns: enough for the flow's timing table."""
    return {"stage": stage, "seconds": round(seconds, 3), "computed": computed, "finished_at": time.time(), **extra}


def unit_name(prefix: str) -> Any:
    """A task run name from the task's parameters: ``train IT seed 0``, ``eval mmlu base`` (no ``seed None``); a
    stratum's unit: ``train <exp>/<stratum>/IT/seed-0``."""

    def name() -> str:
        from prefect.runtime import task_run

        job, cfg = task_run.parameters.get("job"), task_run.parameters.get("cfg")
        benchmark, arm, seed = (getattr(job, k, None) for k in ("benchmark", "arm", "seed"))
        if getattr(cfg, "stratum", None):  # a stratum's unit: eval mmlu <exp>/<stratum>/<arm>/seed-<s>
            unit = f"{cfg.run_label()}/{arm}" + ("" if seed is None else f"/seed-{seed}")
            return " ".join(str(x) for x in (prefix, benchmark, unit) if x)
        parts = [prefix, benchmark, arm, None if seed is None else f"seed {seed}"]
        return " ".join(str(x) for x in parts if x)

    return name
