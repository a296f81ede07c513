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


def _launch(
    code: str, limits: SandboxLimits, *, caps: dict[str, bool], python: str | None = None, probe: bool = False
) -> SandboxResult:
    start = time.perf_counter()
    uid = next_uid() if caps["uid"] else None
    namespaces = caps["namespaces"]
    interpreter = python or find_interpreter(uid is not None)
    nonce = secrets.token_hex(16)
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
            cgroup = Cgroup.create(cgroup_name(), limits.memory_mb, limits.max_processes + 2)
        spec = {
            "program": (_GUARD if guarded else "") + code,
            "nonce": nonce,
            "uid": uid,
            "userns": namespaces and uid is None and os.geteuid() != 0,
            "namespaces": namespaces,
            "workdir": workdir,
            "workdir_mb": limits.workdir_mb,
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
            [sys.executable, "-I", "-S", "-B", str(SUPERVISOR)],
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
        deadline = time.monotonic() + limits.timeout
        streams, timed_out, flooded = _collect(
            proc, {"stdout": out_r, "stderr": err_r, "result": result_r}, deadline, max_file
        )
        if not timed_out and not flooded:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        kill_all(proc, uid)
        rc = proc.returncode
        stdout, stderr = streams["stdout"].decode(), streams["stderr"].decode()
        verdict = _verdict(streams["result"], nonce)
        oom = cgroup.oom_killed() if cgroup else False
        if verdict == "passed":
            result = SandboxResult(True, "passed", rc, result="passed")
        elif timed_out:
            result = SandboxResult(
                False, "timeout", None, detail=f"wall-clock limit {limits.timeout}s", result="timed out"
            )
        elif flooded:
            detail = f"output over {limits.max_file_mb} MiB"
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
            kill_all(proc, uid)
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
                for pid in pids_of_uid(uid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            shutil.rmtree(host_workdir, ignore_errors=True)
    result.duration = round(time.perf_counter() - start, 4)
    result.uid = uid
    return result


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
