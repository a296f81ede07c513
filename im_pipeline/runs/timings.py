"""``runs/<experiment>/timings.json``: wall time per stage of each flow run (the last :data:`HISTORY` kept), which
the report prints. Built from the flow's task records; written under a lock (concurrent runs of one experiment)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any

from im_pipeline.locking import unit_lock
from im_pipeline.provenance import machine, write_json
from im_pipeline.runs.layout import RunLayout

STAGES = ("prepare", "train", "evaluate", "report")
HISTORY = 20  # flow runs kept in timings.json


def timing_entry(records: dict[str, dict[str, Any]], started: float, max_workers: int) -> dict[str, Any]:
    """One flow run's entry: seconds, computed and cached task runs per stage, every task's record, the machine.

    ``records``: ``{"<stage>/<arm>/<seed>[/<benchmark>]": {"state", "seconds", "computed", "error"}}``.
    """
    stages: dict[str, dict[str, Any]] = {s: {"seconds": 0.0, "computed": 0, "cached": 0} for s in STAGES}
    for name, r in records.items():
        st = stages.get(name.split("/", 1)[0])
        if st is None:  # "unit/<arm>/<seed>": a unit whose flow runs never completed (listed as failed)
            continue
        if r.get("computed"):
            st["computed"] += 1
            st["seconds"] = round(st["seconds"] + r.get("seconds", 0.0), 3)
        elif r["state"] == "Completed":
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
        "max_workers": max_workers,
    }


def _machine() -> dict[str, Any]:
    """provenance.machine() without importing torch just for it (a cached re-run never needs torch)."""
    if "torch" in sys.modules:
        return machine()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}


def save_timings(layout: RunLayout, entry: dict[str, Any]) -> None:
    """Append (or update) this flow run's entry in ``timings.json``."""
    with unit_lock(layout.timings_lock):  # concurrent runs of one experiment: no lost entry
        history: list[dict[str, Any]] = []
        if layout.timings.is_file():
            history = json.loads(layout.timings.read_text(encoding="utf-8")).get("runs", [])
        if history and history[-1].get("started") == entry["started"]:
            history[-1] = entry
        else:
            history.append(entry)
        write_json(layout.timings, {"runs": history[-HISTORY:]})


def record_command_seconds(layout: RunLayout, total: float) -> None:
    """The whole command's wall time (Prefect start-up included), on the latest flow run's entry."""
    with unit_lock(layout.timings_lock):
        data = json.loads(layout.timings.read_text(encoding="utf-8"))
        data["runs"][-1]["command_seconds"] = round(total, 3)
        write_json(layout.timings, data)


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
