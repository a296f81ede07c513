"""Whether a unit running elsewhere (a flow run on a work pool) is alive, and what to do once its run ended.

Pure policy, no Prefect: ``flows/pool.py`` reads states and heartbeats from Prefect and asks here. A unit's flow
run holds the unit's liveness lock (``UnitLayout.flow_lock``) while it runs and records itself in
``UnitLayout.flow_record`` (``finished_at`` None until it ends): :func:`lock_evidence` reads those files,
:func:`verdict` weighs them against the heartbeats, :func:`after_final` decides whether an ended run is submitted
again (a crash, while attempts are left) or settles the unit (completed, failed: the same inputs would fail the
same way, or out of attempts).
"""

from __future__ import annotations

import json
import socket
from datetime import datetime
from typing import Any, Literal

from im_pipeline.locking import is_held
from im_pipeline.runs.layout import UnitLayout

Evidence = Literal["alive", "dead", "finished", "unknown"]


def parse_time(value: Any) -> float:
    """A Prefect timestamp (a datetime, or ISO 8601 text with ``Z``) as seconds since the epoch."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def lock_evidence(unit: UnitLayout, flow_run_id: str) -> Evidence:
    """What the unit's files say about flow run ``flow_run_id``: ``alive``, ``dead``, ``finished`` or ``unknown``.

    That run's record with the lock free and no ``finished_at`` means its process is gone: the kernel released the
    lock (``kill -9``, a lost node's processes). Trusted only when the unit ran on this host (flock does not reach
    other hosts on every filesystem); otherwise ``unknown`` (heartbeats decide).
    """
    try:
        record = json.loads(unit.flow_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    if record.get("flow_run_id") != flow_run_id:
        return "unknown"  # not started yet (or still waiting for an older run's lock)
    if record.get("finished_at"):
        return "finished"
    if record.get("host") != socket.gethostname():
        return "unknown"
    return "alive" if is_held(unit.flow_lock) else "dead"


def verdict(
    *, running_since: float, last_heartbeat: float | None, now: float, timeout_s: float, evidence: str
) -> tuple[bool, str]:
    """Whether a ``Running`` unit flow run is dead, and why.

    ``evidence`` from :func:`lock_evidence`: ``dead`` decides at once, ``alive`` / ``finished`` keep it (its
    heartbeats may only be late: a loaded machine delays them), ``unknown`` leaves it to the heartbeats: silent
    for more than ``timeout_s`` since the last one (or since it started running, if none came) means dead.
    """
    if evidence == "dead":
        return True, "holds no unit lock and did not finish: its process is gone"
    if evidence in ("alive", "finished"):
        return False, evidence
    silent = now - max(running_since, last_heartbeat or running_since)
    if silent > timeout_s:
        what = "since its last heartbeat" if last_heartbeat else "and no heartbeat since it started running"
        return True, f"silent for {silent:.0f} s {what} (> {timeout_s:g} s): presumed dead"
    return False, f"last sign of life {silent:.0f} s ago"


def after_final(*, crashed: bool, attempts: int, max_attempts: int) -> Literal["resubmit", "settle"]:
    """What to do with a unit whose flow run reached a final state: a crashed run is submitted again while fewer
    than ``max_attempts`` runs were started (the new run resumes from the unit's checkpoints and skips finished
    outputs); anything else settles the unit (a failure is not retried: the same inputs would fail the same way)."""
    return "resubmit" if crashed and attempts < max_attempts else "settle"
