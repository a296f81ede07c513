"""Hostile programs in the sandbox: each is contained, recorded as not passed, and leaves us intact."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from im_pipeline.evaluation import sandbox
from im_pipeline.evaluation.sandbox import SandboxResult, isolation, run_program


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_good_and_wrong_programs():
    ok = run_program("print('hello')\n", timeout=10)
    assert ok.passed and ok.status == "passed" and ok.returncode == 0 and ok.stdout == "hello\n"
    bad = run_program("assert 1 + 1 == 3, 'arithmetic'\n", timeout=10)
    assert not bad.passed and bad.status == "failed" and bad.returncode == 1
    assert "AssertionError: arithmetic" in bad.stderr
    assert bad.duration < 5


def test_infinite_loop_times_out():
    start = time.perf_counter()
    r = run_program("while True:\n    pass\n", timeout=1.5)
    assert (r.passed, r.status) == (False, "timeout")
    assert time.perf_counter() - start < 6


def test_fork_bomb_is_capped_and_every_process_killed():
    if not isolation()["uid"]:
        pytest.skip("no separate uid here: RLIMIT_NPROC cannot contain a fork bomb (killpg still applies)")
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = run_program(code, timeout=2, max_processes=16)
    assert not r.passed and r.status == "timeout"
    assert r.uid is not None and sandbox._pids_of_uid(r.uid) == []


def test_escaped_grandchild_is_killed():
    # The child forks a grandchild that leaves the process group (setsid) and sleeps; the child exits 0.
    code = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(pid, flush=True)\n"
    )
    r = run_program(code, timeout=5)
    assert r.status == "passed"
    grandchild = int(r.stdout.split()[0])
    if isolation()["uid"]:
        assert not _alive(grandchild)


def test_memory_bomb_fails():
    r = run_program("x = bytearray(4 * 1024**3)\nprint(len(x))\n", timeout=10, memory_mb=512)
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
        r = run_program(code, timeout=10)
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
        r = run_program(code, timeout=10)
        assert not r.passed and r.status == "failed", (code, r)
    assert sentinel.read_text() == "keep me"
    assert not created.exists()


def test_repo_is_read_only(tmp_path: Path):
    if not (isolation()["mounts"] or isolation()["uid"]):
        pytest.skip("neither mount namespace nor separate uid here")
    target = Path(__file__).resolve().parent / "_sandbox_should_not_exist.txt"
    r = run_program(f"open({str(target)!r}, 'w').write('x')\n", timeout=10)
    assert r.status == "failed" and not target.exists()


def test_killing_the_parent_fails_and_we_survive():
    for code in (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
        "import os, signal\nos.kill(-1, signal.SIGKILL)\nimport time\ntime.sleep(1)\nraise SystemExit(1)\n",
    ):
        r = run_program(code, timeout=5)
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
    r = run_program(code, timeout=10)
    assert r.passed, r
    cwd, listing, secret = r.stdout.splitlines()
    assert listing == "['program.py', 'scratch.txt']"
    assert secret == "None"
    assert not Path(cwd).exists()


def test_output_flood_is_bounded():
    r = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout=10, max_file_mb=1)
    assert not r.passed and r.status in {"failed", "killed"}
    assert len(r.stdout) <= sandbox.TAIL_CHARS


def test_sandbox_errors_become_results():
    r = run_program("print(1)\n", timeout=5, python="/nonexistent/python")
    assert isinstance(r, SandboxResult) and r.status == "error" and not r.passed


def test_degraded_mode_uses_reliability_guard(monkeypatch, tmp_path: Path):
    """Without namespaces or a separate uid, the guard prologue still stops the crude attacks."""
    monkeypatch.setattr(sandbox, "isolation", lambda: {"uid": False, "net": False, "mounts": False})
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    r = run_program(f"import os\nos.remove({str(sentinel)!r})\n", timeout=5)
    assert r.status == "failed" and sentinel.exists()
    r = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", timeout=5)
    assert r.status == "failed"
    r = run_program("while True:\n    pass\n", timeout=1)
    assert r.status == "timeout"


NON_ROOT_SCRIPT = """
import importlib.util, json, socket, sys
spec = importlib.util.spec_from_file_location("sbx", sys.argv[1])
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
out["loop"] = sbx.run_program("while True: pass", timeout=1).status
print(json.dumps(out))
"""


def test_unprivileged_user_gets_namespaces_via_user_namespace():
    """The non-root path (CI runners): net + mount isolation inside an unprivileged user namespace."""
    import json
    import shutil
    import subprocess

    python = "/usr/bin/python3"
    if os.geteuid() != 0 or not sandbox._world_accessible(python) or not shutil.which("setpriv"):
        pytest.skip("needs root (to become an unprivileged user), setpriv and a world-executable /usr/bin/python3")
    probe = Path("/tmp/im_sbx_nonroot_probe")
    probe.unlink(missing_ok=True)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*as_nobody, python, "-c", NON_ROOT_SCRIPT, sandbox.__file__],
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
