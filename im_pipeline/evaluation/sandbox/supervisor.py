"""The sandbox's supervisor: runs as its own process (``python -I -S supervisor.py``), stdlib only.

:mod:`.run` starts this script with the run's specification (JSON) on stdin, the write end of
the result pipe passed as an inherited file descriptor, and ``PR_SET_PDEATHSIG(SIGKILL)`` already
set, so this supervisor dies with the scorer. It then:

1. joins the run's cgroups (one memory / process bound for the whole process tree), when given;
2. ``unshare``\\ s new mount, PID, IPC and network namespaces (inside a new user namespace when not
   root) and forks the namespace's **init** (PID 1), which also gets ``PR_SET_PDEATHSIG(SIGKILL)``:
   when the supervisor dies (the scorer died, or the scorer killed it at the timeout), init dies,
   and the kernel kills every process of a PID namespace whose init dies. Nothing survives;
3. init mounts a fresh ``/proc`` (this PID namespace only), private tmpfs over ``/tmp`` (the
   size-capped working directory), ``/var/tmp``, ``/dev/shm`` and ``/run`` (so ``/var/run``, a link
   to it, too), remounts every other mount read-only, and forks the program: resource limits, an
   unprivileged uid when the supervisor is root, then ``exec`` of the runner (:data:`RUNNER`) with
   the run's nonce on fd 3 and the result pipe on fd 4.

The tmpfs mounts exist only in the namespace: when its last process dies they are freed, so nothing
of a run stays on disk, even after ``kill -9`` of the scorer.

Why our own script rather than util-linux ``unshare``: that tool makes the namespaces and the PID-1
fork, but not the tmpfs / read-only / uid / rlimit / fd steps, which need code between ``unshare``
and ``exec`` anyway; one small stdlib script keeps all of it in one place and needs no extra binary.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
SETUP_FAILED = 125  # exit status of the supervisor when the sandbox itself could not be set up

RUNNER = r"""
import os, sys
def _im_sandbox_main(_read=os.read, _write=os.write, _close=os.close, _exit=os._exit, _type=type, _str=str,
                     _repr=repr):
    # The nonce proves that *this* code reached the end of the program: an early exit (any status, any
    # thread, hook or handler) never writes it. Read it and close its fd before the program runs.
    nonce = _read(3, 128)
    _close(3)
    with open(sys.argv[1], encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__file__": sys.argv[1], "__builtins__": __builtins__}
    try:
        exec(compile(source, sys.argv[1], "exec"), namespace)
    except BaseException as e:  # noqa: BLE001 - any exception, SystemExit included, is a failure
        try:
            import traceback
            traceback.print_exc()
            message = _str(e)
        except BaseException:  # noqa: BLE001 - a hostile __str__
            message = "<unprintable>"
        verdict = b"failed: " + (_type(e).__name__ + (": " + message if message else "")).encode("utf-8", "replace")
        code = 1
    else:
        verdict, code = b"passed", 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    try:
        _write(4, nonce + b" " + verdict[:4000] + b"\n")
    finally:
        _exit(code)
_im_sandbox_main()
"""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _die_with_parent(libc, life_fd: int | None) -> None:
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if life_fd is not None:  # the parent may have died before prctl: its end of the pipe is then closed
        readable, _, _ = select.select([life_fd], [], [], 0)
        if readable:
            os._exit(SETUP_FAILED)


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, its per-mount options) from /proc/self/mountinfo, outermost first."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")
            out.append((point, parts[5]))
    return out


def _flags_of(options: str) -> int:
    opts = set(options.split(","))
    return (
        (MS_NOSUID if "nosuid" in opts else 0)
        | (MS_NODEV if "nodev" in opts else 0)
        | (MS_NOEXEC if "noexec" in opts else 0)
    )


def _setup_mounts(libc, spec: dict) -> None:
    """In init (PID 1 of the new namespaces): fresh /proc, private tmpfs, everything else read-only."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    small = f"size={spec['small_tmpfs_mb']}m"
    ours = {"/proc", "/tmp"}
    _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['workdir_mb']}m,mode=1777")
    for d in ("/var/tmp", "/dev/shm", "/run", "/var/run"):
        if os.path.isdir(d) and not os.path.islink(d):
            _mount(libc, "tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"{small},mode={'755' if 'run' in d else '1777'}")
            ours.add(d)
    os.makedirs("/run/lock", mode=0o1777, exist_ok=True)
    os.chmod("/run/lock", 0o1777)
    os.makedirs("/run/im-sandbox", mode=0o755, exist_ok=True)
    with open("/run/im-sandbox/runner.py", "w", encoding="utf-8") as f:
        f.write(RUNNER)
    os.chmod("/run/im-sandbox/runner.py", 0o444)
    for point, options in _mount_points():  # each remount changes that mount only
        if point in ours or point.startswith("/proc/") or point == "/dev/pts":
            continue
        with contextlib.suppress(OSError):  # one we cannot remount stays as it was; "/" is checked below
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags_of(options))
    for point, options in _mount_points():
        if point == "/" and "ro" not in options.split(","):
            raise OSError("/ is still writable after the read-only remount")


def _prepare_workdir(spec: dict) -> str:
    workdir = spec["workdir"]
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "program.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(spec["program"])
    if spec.get("uid") is not None:
        for p in (workdir, path):
            os.chown(p, spec["uid"], spec["uid"])
    os.chmod(workdir, 0o700)
    if spec.get("runner_path") is None:  # no mount namespace: the runner lives beside the program
        runner = os.path.join(workdir, ".runner.py")
        with open(runner, "w", encoding="utf-8") as f:
            f.write(RUNNER)
        spec["runner_path"] = runner
    return path


def _exec_program(spec: dict, program: str, nonce_fd: int, result_fd: int) -> None:
    """In the program's process: fds 3 (nonce) and 4 (result), limits, uid, exec the runner."""
    a, b = os.dup(nonce_fd), os.dup(result_fd)
    os.dup2(a, 3, inheritable=True)
    os.dup2(b, 4, inheritable=True)
    os.closerange(5, 65536)
    for which, soft, hard in spec["rlimits"]:
        resource.setrlimit(which, (soft, hard))
    uid = spec.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if spec.get("pdeathsig"):  # without a PID namespace: at least die with init (after setuid, which clears it)
        _check(_libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    os.chdir(spec["workdir"])
    os.execve(spec["interpreter"], [spec["interpreter"], "-I", "-B", spec["runner_path"], program], spec["env"])


def _init(spec: dict, life_fd: int | None, result_fd: int) -> int:
    """PID 1 of the namespaces (or a plain child without them): set up, run the program, reap, exit."""
    libc = _libc()
    _die_with_parent(libc, life_fd)
    if spec["namespaces"]:
        _setup_mounts(libc, spec)
        spec["runner_path"] = "/run/im-sandbox/runner.py"
    program = _prepare_workdir(spec)
    nonce_r, nonce_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(nonce_w)
            _exec_program(spec, program, nonce_r, result_fd)
        except BaseException as exc:
            os.write(2, f"sandbox-init: cannot start the program: {exc!r}\n".encode())
        os._exit(SETUP_FAILED)
    os.close(nonce_r)
    os.close(result_fd)
    os.write(nonce_w, spec["nonce"].encode())
    os.close(nonce_w)
    while True:  # reap everything (we may be PID 1) until the program itself is gone
        try:
            done, status = os.wait()
        except ChildProcessError:
            return SETUP_FAILED
        if done == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def main() -> int:
    spec = json.loads(sys.stdin.buffer.read())
    result_fd = spec["result_fd"]
    libc = _libc()
    try:
        for procs in spec.get("cgroup_procs", []):
            with open(procs, "w") as f:
                f.write("0")
        if spec["namespaces"]:
            flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET
            if spec.get("userns"):
                uid, gid = os.getuid(), os.getgid()
                _check(libc.unshare(CLONE_NEWUSER | flags), "unshare")
                for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
            else:
                _check(libc.unshare(flags), "unshare")
    except OSError as exc:
        os.write(2, f"sandbox-init: {exc}\n".encode())
        return SETUP_FAILED
    life_r, life_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(life_w)
        try:
            code = _init(spec, life_r, result_fd)
        except BaseException as exc:
            os.write(2, f"sandbox-init: {exc!r}\n".encode())
            code = SETUP_FAILED
        os._exit(code)
    os.close(life_r)
    os.close(result_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
