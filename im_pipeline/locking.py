"""One lock per unit of work (one arm × seed training, one model × benchmark evaluation).

Two ``im-pipeline run`` of the same experiment, or two Prefect workers handed the same unit, must
never compute it at the same time into the same files. ``unit_lock`` takes an exclusive
``fcntl.flock`` on a file beside the unit's outputs: the kernel releases it when the holder dies
(even by ``kill -9``), so a crashed unit never leaves a stale lock. The file records who holds it
(host, pid, start time), which is what a waiter prints. flock works across processes on one host
and on NFSv4 / Lustre / GPFS shared storage; it is not a lock between hosts on filesystems that
ignore flock (say so in docs where it matters).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def holder(lock_path: Path) -> dict[str, object] | None:
    """Who last took the lock (host, pid, since), or None when unknown."""
    try:
        text = Path(lock_path).read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


@contextmanager
def unit_lock(lock_path: Path, *, on_wait: Callable[[str], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block; wait (saying so once) while another holds it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    who = holder(lock_path) or {}
                    on_wait(
                        f"waiting for {lock_path.parent}: another run holds it "
                        f"(host {who.get('host', '?')}, pid {who.get('pid', '?')}, since {who.get('since', '?')})"
                    )
                    told = True
                time.sleep(poll_s)
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_held(lock_path: Path) -> bool:
    """True when some process holds the lock now (a non-blocking probe; never waits, never keeps it).

    Only meaningful where flock reaches the holder: the same host, or shared storage whose flock spans hosts.
    """
    try:
        fd = os.open(Path(lock_path), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
