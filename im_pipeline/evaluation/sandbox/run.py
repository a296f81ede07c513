"""One sandboxed run: start the supervisor with the run's specification, collect its output within the limits,
and decide the verdict (only the runner's nonce-signed "returned" line is a pass)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hmac
import json
import logging
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from .host import Cgroup, cgroup_name, find_interpreter, kill_all, next_uid, pids_of_uid, remove_stale_cgroups
from .limits import TAIL_CHARS, SandboxLimits, SandboxResult

SUPERVISOR = Path(__file__).with_name("supervisor.py")
SETUP_FAILED = 125  # the supervisor's exit status when the sandbox could not be set up

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
log = logging.getLogger(__name__)

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


class _Pipes:
    """The run's pipes (the runner's result, stdout, stderr): the scorer keeps the read ends; the write ends go to
    the supervisor and are closed here as soon as it has them."""

    def __init__(self) -> None:
        self.result_r, self.result_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()

    def close_write_ends(self) -> None:
        for fd in (self.result_w, self.out_w, self.err_w):
            os.close(fd)
        self.result_w = self.out_w = self.err_w = -1

    def close(self) -> None:
        for fd in (self.result_r, self.out_r, self.err_r, self.result_w, self.out_w, self.err_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _launch(
    code: str, limits: SandboxLimits, *, caps: dict[str, bool], python: str | None = None, probe: bool = False
) -> SandboxResult:
    """One run of ``code`` under ``limits`` with the isolation layers ``caps`` (``probe``: no cgroup), from the
    supervisor's start to the removal of everything the run left; a failure of the sandbox itself is an "error"."""
    start = time.perf_counter()
    uid = next_uid() if caps["uid"] else None
    interpreter = python or find_interpreter(uid is not None)
    nonce = secrets.token_hex(16)
    host_workdir = None if caps["namespaces"] else tempfile.mkdtemp(prefix="im-sandbox-")
    pipes = _Pipes()
    cgroup: Cgroup | None = None
    proc: subprocess.Popen | None = None
    result: SandboxResult
    try:
        if caps.get("cgroup") and not probe:
            # + 2: the supervisor and init are in the group too
            cgroup = Cgroup.create(cgroup_name(), limits.memory_mb, limits.max_processes + 2)
        spec = _spec(code, limits, caps, uid, nonce, interpreter, host_workdir, pipes.result_w, cgroup)
        if not interpreter:
            raise OSError("no Python interpreter for the sandbox")
        proc = _start_supervisor(pipes, spec["env"]["PATH"])
        pipes.close_write_ends()  # the supervisor has them
        result = _supervise(proc, spec, pipes, limits, cgroup)
    except Exception as exc:
        if proc is not None and proc.poll() is None:
            kill_all(proc, uid)
        result = SandboxResult(False, "error", detail=f"{type(exc).__name__}: {exc}")
        result.result = f"failed: {result.detail}"
    finally:
        pipes.close()
        if cgroup is not None:
            result.memory_peak_mb = cgroup.peak_mb()
            cgroup.remove()
        if host_workdir:
            _remove_workdir(host_workdir, uid)
    result.duration = round(time.perf_counter() - start, 4)
    result.uid = uid
    return result


def _spec(
    code: str,
    limits: SandboxLimits,
    caps: dict[str, bool],
    uid: int | None,
    nonce: str,
    interpreter: str | None,
    host_workdir: str | None,
    result_fd: int,
    cgroup: Cgroup | None,
) -> dict[str, Any]:
    """What the supervisor is told to do: the program, who runs it, where, under which limits and namespaces."""
    namespaces = caps["namespaces"]
    guarded = not (caps["uid"] or namespaces)
    workdir = "/tmp/work" if namespaces else host_workdir
    return {
        "program": (_GUARD if guarded else "") + code,
        "nonce": nonce,
        "uid": uid,
        "userns": namespaces and uid is None and os.geteuid() != 0,
        "namespaces": namespaces,
        "workdir": workdir,
        "workdir_mb": limits.workdir_mb,
        "small_tmpfs_mb": 16,
        "interpreter": interpreter,
        "rlimits": _rlimits(limits, uid),
        "env": {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
        },
        "result_fd": result_fd,
        "cgroup_procs": cgroup.procs_files() if cgroup else [],
        "pdeathsig": not namespaces,
        "runner_path": None,
    }


def _rlimits(limits: SandboxLimits, uid: int | None) -> list[tuple[int, int, int]]:
    """The program's resource limits: CPU, address space, file size, open files, no core; processes per uid."""
    cpu, memory, max_file = limits.cpu, limits.memory_mb << 20, limits.max_file_mb << 20
    rlimits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, max_file, max_file),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if uid is not None:
        rlimits.append((resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes))
    return rlimits


def _start_supervisor(pipes: _Pipes, path: str) -> subprocess.Popen:
    """The supervisor process (``python -I -S``, its own session, minimal environment), dying with the scorer."""
    parent = os.getpid()

    def preexec() -> None:  # in the child before exec: die with the scorer (the thread that started us)
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(SETUP_FAILED)

    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", str(SUPERVISOR)],
        stdin=subprocess.PIPE,
        stdout=pipes.out_w,
        stderr=pipes.err_w,
        start_new_session=True,
        close_fds=True,
        pass_fds=(pipes.result_w,),
        env={"PATH": path, "LANG": "C.UTF-8"},
        preexec_fn=preexec,
    )
    return proc


def _supervise(
    proc: subprocess.Popen, spec: dict[str, Any], pipes: _Pipes, limits: SandboxLimits, cgroup: Cgroup | None
) -> SandboxResult:
    """Hand the supervisor its ``spec``, collect the output within the limits, kill what is left, decide."""
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(json.dumps(spec).encode())
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    deadline = time.monotonic() + limits.timeout
    fds = {"stdout": pipes.out_r, "stderr": pipes.err_r, "result": pipes.result_r}
    streams, timed_out, flooded = _collect(proc, fds, deadline, limits.max_file_mb << 20)
    if not timed_out and not flooded:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    kill_all(proc, spec["uid"])
    stdout, stderr = streams["stdout"].decode(), streams["stderr"].decode()
    verdict = _verdict(streams["result"], spec["nonce"])
    oom = cgroup.oom_killed() if cgroup else False
    result = _decide(verdict, timed_out, flooded, proc.returncode, stderr, oom, limits)
    result.stdout, result.stderr = stdout, stderr
    return result


def _decide(
    verdict: str | None, timed_out: bool, flooded: bool, rc: int | None, stderr: str, oom: bool, limits: SandboxLimits
) -> SandboxResult:
    """The run's result from how it ended: only the runner's signed "passed" verdict is a pass."""
    if verdict == "passed":
        return SandboxResult(True, "passed", rc, result="passed")
    if timed_out:
        return SandboxResult(False, "timeout", None, detail=f"wall-clock limit {limits.timeout}s", result="timed out")
    if flooded:
        detail = f"output over {limits.max_file_mb} MiB"
        return SandboxResult(False, "killed", rc, detail=detail, result=f"failed: {detail}")
    if verdict is not None:
        return SandboxResult(False, "failed", rc, detail=verdict, result=verdict)
    if rc == SETUP_FAILED and "sandbox-init:" in stderr:
        detail = stderr[stderr.index("sandbox-init:") :].strip()
        return SandboxResult(False, "error", rc, detail=detail, result=f"failed: {detail}")
    if rc is not None and (rc > 128 or rc < 0):
        sig = abs(rc) - 128 if rc > 128 else -rc
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        if sig == signal.SIGXCPU:
            return SandboxResult(False, "timeout", rc, detail=f"CPU limit {limits.cpu}s", result="timed out")
        detail = f"killed by {name}" + (" (out of memory: cgroup limit)" if oom else "")
        return SandboxResult(False, "killed", rc, detail=detail, result=f"failed: {detail}")
    detail = f"exited with status {rc} before the end of the program"
    return SandboxResult(False, "failed", rc, detail=detail, result=f"failed: {detail}")


def _remove_workdir(host_workdir: str, uid: int | None) -> None:
    """Remove a run's working directory on the host (no namespaces), after killing leftovers of its uid."""
    if uid is not None:  # leftovers of an escaped process: kill before removing
        for pid in pids_of_uid(uid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(host_workdir, ignore_errors=True)


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
    if caps["uid"] and not find_interpreter(True):
        caps["uid"] = False
        log.warning("sandbox: no Python interpreter executable by an unprivileged user; running as root")
    remove_stale_cgroups()
    try:
        Cgroup.create(cgroup_name(), 64, 8).remove()
        caps["cgroup"] = True
    except OSError as exc:
        log.debug("sandbox probe cgroup failed: %s", exc)
    probe = _launch("pass\n", SandboxLimits(timeout=30), caps={**caps, "namespaces": True}, probe=True)
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


def _verdict(raw: bytes, nonce: str) -> str | None:
    """The runner's verdict when it carries this run's nonce; None otherwise (no verdict, or forged)."""
    first = raw.split(b"\n", 1)[0]
    token, _, verdict = first.partition(b" ")
    if not hmac.compare_digest(token, nonce.encode()):
        return None
    return verdict.decode("utf-8", errors="replace")


def run_program(code: str, limits: SandboxLimits | None = None, *, python: str | None = None) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; ``passed`` iff it ran to its end within ``limits``.

    ``python``: the interpreter of the run (default: one the run's user may execute). Never raises: problems of
    the sandbox itself give ``status == "error"``.
    """
    try:
        caps = isolation()
    except Exception as exc:
        return SandboxResult(False, "error", detail=f"sandbox probe failed: {exc!r}", result="failed: sandbox error")
    result = _launch(code, limits or SandboxLimits(), caps=caps, python=python)
    result.isolation = dict(caps)
    return result
