"""When a unit on a work pool is dead and when it is submitted again: library policy (im_pipeline.runs.resubmit),
tested without Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from im_pipeline.runs.resubmit import after_final, parse_time


def test_verdict_heartbeats_and_lock_evidence() -> None:
    from im_pipeline.runs.resubmit import verdict

    kw = {"running_since": 1000.0, "timeout_s": 60.0}
    assert verdict(**kw, last_heartbeat=1050.0, now=1100.0, evidence="unknown")[0] is False
    dead, why = verdict(**kw, last_heartbeat=1030.0, now=1100.0, evidence="unknown")
    assert dead and "70 s since its last heartbeat" in why
    dead, why = verdict(**kw, last_heartbeat=None, now=1061.0, evidence="unknown")
    assert dead and "no heartbeat since it started running" in why
    assert verdict(**kw, last_heartbeat=None, now=1059.0, evidence="unknown")[0] is False
    # the unit's own lock outweighs the heartbeats both ways
    assert verdict(**kw, last_heartbeat=None, now=5000.0, evidence="alive")[0] is False
    assert verdict(**kw, last_heartbeat=None, now=5000.0, evidence="finished")[0] is False
    assert verdict(**kw, last_heartbeat=1099.0, now=1100.0, evidence="dead") == (
        True,
        "holds no unit lock and did not finish: its process is gone",
    )


def test_lock_evidence_from_the_unit_files(tmp_path: Path) -> None:
    import socket

    from im_pipeline.locking import unit_lock
    from im_pipeline.runs.layout import RunLayout
    from im_pipeline.runs.resubmit import lock_evidence

    out = RunLayout(tmp_path).unit("IM", 0)
    out.dir.mkdir(parents=True)
    assert lock_evidence(out, "run-1") == "unknown"  # not started
    record = {"flow_run_id": "run-1", "host": socket.gethostname(), "finished_at": None}
    out.flow_record.write_text(json.dumps(record))
    assert lock_evidence(out, "run-2") == "unknown"  # another run's record
    code = f"from im_pipeline.locking import unit_lock; import time\nwith unit_lock({str(out.flow_lock)!r}):\n"
    code += "    print('in', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        assert lock_evidence(out, "run-1") == "alive"
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while lock_evidence(out, "run-1") != "dead":  # the kernel released the dead holder's lock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out.flow_record.write_text(json.dumps({**record, "finished_at": "2026-01-01T00:00:00Z"}))
    assert lock_evidence(out, "run-1") == "finished"
    out.flow_record.write_text(json.dumps({**record, "host": "another-host"}))
    assert lock_evidence(out, "run-1") == "unknown"  # flock may not reach other hosts: heartbeats decide
    with unit_lock(out.flow_lock):
        pass


def test_a_crash_is_submitted_again_while_attempts_are_left() -> None:
    assert after_final(crashed=True, attempts=1, max_attempts=3) == "resubmit"
    assert after_final(crashed=True, attempts=3, max_attempts=3) == "settle"
    assert after_final(crashed=False, attempts=1, max_attempts=3) == "settle"  # completed or failed: settled


def test_prefect_timestamps_parse_to_epoch_seconds() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time(when) == parse_time("2026-01-02T03:04:05Z") == parse_time("2026-01-02T03:04:05+00:00")
    assert parse_time("2026-01-02T03:04:05Z") == when.timestamp()
