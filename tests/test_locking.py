"""The per-unit lock and atomic JSON writes hold under real concurrent processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from im_pipeline.locking import holder, unit_lock
from im_pipeline.provenance import write_json


def _hold(lock: str, started: str, seconds: float) -> None:
    with unit_lock(Path(lock)):
        Path(started).write_text(str(os.getpid()))
        time.sleep(seconds)


def _writer(path: str, tag: int, n: int) -> None:
    for i in range(n):
        write_json(Path(path), {"writer": tag, "i": i, "pad": "x" * 2000})


def test_second_holder_waits_and_is_told(tmp_path: Path) -> None:
    lock, started = tmp_path / "unit" / ".unit.lock", tmp_path / "started"
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_hold, args=(str(lock), str(started), 1.5))
    p.start()
    while not started.exists():
        time.sleep(0.05)
    messages: list[str] = []
    t0 = time.monotonic()
    with unit_lock(lock, on_wait=messages.append, poll_s=0.05):
        waited = time.monotonic() - t0
    p.join()
    assert waited > 0.5  # it really waited for the other process
    assert len(messages) == 1 and f"pid {p.pid}" in messages[0]
    assert holder(lock)["pid"] == os.getpid()  # type: ignore[index]


def test_lock_of_a_killed_holder_is_released(tmp_path: Path) -> None:
    lock, started = tmp_path / ".unit.lock", tmp_path / "started"
    p = mp.get_context("spawn").Process(target=_hold, args=(str(lock), str(started), 60))
    p.start()
    while not started.exists():
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    t0 = time.monotonic()
    with unit_lock(lock):
        pass
    assert time.monotonic() - t0 < 5


def test_concurrent_writers_never_fail_and_readers_never_see_partial_files(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), k, 300)) for k in range(2)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            json.loads(path.read_text())  # never empty, never half-written
            reads += 1
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert reads > 0
    assert not list(tmp_path.glob("*.tmp")), "temp files left behind"


def test_is_held_probes_without_taking_the_lock(tmp_path):
    import subprocess
    import sys
    import time

    from im_pipeline.locking import is_held

    lock = tmp_path / ".unit.lock"
    assert not is_held(lock)  # no file yet
    code = f"from im_pipeline.locking import unit_lock; import time\nwith unit_lock({str(lock)!r}):\n"
    code += "    print('in', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in"
        assert is_held(lock) and is_held(lock)  # probing twice: the probe never keeps it
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while is_held(lock) and time.monotonic() < deadline:  # the kernel releases a killed holder's lock
        time.sleep(0.05)
    assert not is_held(lock)
    with unit_lock(lock):  # and it can be taken again
        pass
