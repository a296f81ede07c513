"""What the sandbox needs from the host: cgroups, per-run uids, an interpreter the run's user can execute,
and the one-time probe of which isolation layers this machine allows (:func:`isolation`)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

UID_BASE = 3_000_000  # far above any uid in /etc/passwd; each run gets its own
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
_run_counter = itertools.count()

# -- cgroups ---------------------------------------------------------------------------------------


def own_cgroup(controller: str) -> Path | None:
    """The directory of this process's cgroup for ``controller`` (v1), or of the v2 group ('')."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller and controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller) / path.lstrip("/")
        if not controller and controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").is_file():
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    return None


class Cgroup:
    """One cgroup per run under the scorer's own (so the host's accounting still covers it)."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs, self.version = dirs, version

    @classmethod
    def create(cls, name: str, memory_mb: int, max_processes: int) -> Cgroup:
        limit = str(memory_mb << 20)
        if Path("/sys/fs/cgroup/cgroup.controllers").is_file():  # v2 (unified)
            base = own_cgroup("")
            if base is None:
                raise OSError("no cgroup v2 path for this process")
            d = base / name
            d.mkdir()
            cg = cls({"unified": d}, 2)
            try:
                (d / "memory.max").write_text(limit)
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
                (d / "pids.max").write_text(str(max_processes))
            except OSError:
                cg.remove()
                raise
            return cg
        mem, pids = own_cgroup("memory"), own_cgroup("pids")
        if mem is None or pids is None:
            raise OSError("no writable memory and pids cgroup (v1) for this process")
        cg = cls({}, 1)
        try:
            for key, base in (("memory", mem), ("pids", pids)):
                (base / name).mkdir()
                cg.dirs[key] = base / name
            (cg.dirs["memory"] / "memory.limit_in_bytes").write_text(limit)
            memsw = cg.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(limit)  # no escape into swap
            (cg.dirs["pids"] / "pids.max").write_text(str(max_processes))
        except OSError:
            cg.remove()
            raise
        return cg

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def peak_mb(self) -> float | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        d = self.dirs.get("unified" if self.version == 2 else "memory")
        try:
            return round(int((d / name).read_text()) / 2**20, 1) if d else None
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        try:
            if self.version == 2:
                text = (self.dirs["unified"] / "memory.events").read_text()
            else:
                text = (self.dirs["memory"] / "memory.oom_control").read_text()
            fields = dict(line.split() for line in text.splitlines() if line.strip())
            return int(fields.get("oom_kill", "0")) > 0
        except (OSError, ValueError, KeyError):
            return False

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):  # the last processes may still be exiting
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def cgroup_name() -> str:
    return f"im-sandbox-{os.getpid()}-{next(_run_counter)}"


def remove_stale_cgroups() -> None:
    """Remove empty run cgroups left by a scorer that was killed (their owner pid is gone)."""
    for controller in ("memory", "pids", ""):
        base = own_cgroup(controller)
        if base is None or not base.is_dir():
            continue
        with contextlib.suppress(OSError):
            for d in base.glob("im-sandbox-*-*"):
                owner = d.name.split("-")[2]
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    with contextlib.suppress(OSError):
                        d.rmdir()


def world_accessible(path: str) -> bool:
    """True if a user with no privileges can execute ``path`` (every directory traversable)."""
    p = Path(path).resolve()
    try:
        if not p.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in p.parents)
    except OSError:
        return False


def find_interpreter(as_other_user: bool) -> str:
    if not as_other_user or world_accessible(sys.executable):
        return sys.executable
    # The running interpreter may live in a private directory (e.g. /root/.pyenv); the sandbox user
    # needs one it can execute. Programs only get the standard library anyway.
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if cand and world_accessible(cand):
            return cand
    return ""


def next_uid() -> int:
    with _uid_lock:
        return UID_BASE + (os.getpid() % 10_000) * 100 + next(_uid_counter) % 100


def pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):  # zombies are already dead
            pids.append(int(entry))
    return pids


def kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the supervisor (its PID namespace dies with it) and wait until no process of the run's uid lives.

    The namespace's processes die asynchronously after the supervisor; the loop over the uid waits for
    them (and, without namespaces, kills escaped processes itself).
    """
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None:
        for attempt in range(100):  # forks racing the kill: repeat until the uid has no live process
            pids = pids_of_uid(uid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002 * attempt)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("sandbox: process %d did not die after SIGKILL", proc.pid)
