"""Concurrent and killed ``im-pipeline run``: units computed once, the ephemeral server never outlives its run.

Real CLI processes against Prefect's ephemeral server (marked integration).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from im_pipeline.locking import unit_lock
from im_pipeline.runs.layout import lock_beside

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def _config(tmp: Path, model_dir: Path) -> Path:
    from test_flows import tiny_config

    cfg = tiny_config(tmp, model_dir)
    cfg["arms"] = cfg["arms"][:1]  # IT only
    cfg["evaluation"]["evaluate_base"] = False
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),  # shared by the runs of one test, as on a user's machine
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(cfg: Path, tmp: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "im_pipeline_flows.cli", "run", str(cfg)],
            cwd=REPO,
            env=_env(tmp),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _children(pid: int) -> list[tuple[int, bytes]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            if ppid == pid:
                out.append((int(d.name), (d / "cmdline").read_bytes()))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]) not in (b"Z", b"X")
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_ephemeral_server_dies_with_its_run(tmp_path, tiny_model_dir, sig):
    cfg = _config(tmp_path, tiny_model_dir)
    run = _start(cfg, tmp_path, tmp_path / "run.log")
    server = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and server is None and run.poll() is None:
            server = next((p for p, cmd in _children(run.pid) if b"uvicorn" in cmd), None)
            time.sleep(0.2)
        assert server is not None, (tmp_path / "run.log").read_text()[-3000:]
        run.send_signal(sig)
        run.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and _alive(server):
            time.sleep(0.1)
        assert not _alive(server), f"the ephemeral server {server} outlived its run (killed by {sig.name})"
    finally:
        if run.poll() is None:
            run.kill()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)


def _table(text: str) -> dict[str, tuple[int, int]]:
    """stage -> (computed, cached) from the wall-time table ``im-pipeline run`` prints."""
    rows = re.findall(r"^(prepare|train|evaluate|report)\s+[\d.]+\s+(\d+)\s+(\d+)\s*$", text, re.M)
    return {stage: (int(c), int(k)) for stage, c, k in rows}


def test_two_concurrent_runs_compute_each_unit_once(tmp_path, tiny_model_dir):
    """Both runs wait on the training unit (held here first), then one trains and the other skips it."""
    cfg = _config(tmp_path, tiny_model_dir)
    unit = tmp_path / "runs" / "tiny-flow" / "IT" / "seed-0"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with unit_lock(lock_beside(unit)):
        runs = [_start(cfg, tmp_path, log) for log in logs]
        deadline = time.time() + 240
        while time.time() < deadline and not all("waiting for" in log.read_text() for log in logs):
            assert all(r.poll() is None for r in runs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.5)
        texts = [log.read_text() for log in logs]
        assert all(f"waiting for {unit.parent}" in t for t in texts), [t[-2000:] for t in texts]
    for r in runs:
        r.wait(timeout=280)
    texts = [log.read_text() for log in logs]
    assert [r.returncode for r in runs] == [0, 0], [t[-3000:] for t in texts]
    tables = [_table(t) for t in texts]
    assert all(set(t) == {"prepare", "train", "evaluate", "report"} for t in tables), texts
    for stage in ("prepare", "train", "evaluate"):  # one unit each: computed by exactly one of the runs
        assert sum(t[stage][0] for t in tables) == 1, (stage, tables)
        assert sum(t[stage][1] for t in tables) == 1, (stage, tables)
    assert (unit / "train_summary.json").is_file() and (unit / "eval" / "overfitting.json").is_file()


def test_run_with_malformed_data_exits_2_naming_file_and_line(tmp_path, tiny_model_dir):
    """A lone surrogate in the training file: error with file and line, status 2, no data or run files."""
    cfg_path = _config(tmp_path, tiny_model_dir)
    cfg = yaml.safe_load(cfg_path.read_text())
    bad = Path(cfg["data"]["train"])
    lines = bad.read_text().splitlines()
    lines[2] = lines[2].replace("Question", "Question \\ud800", 1)
    bad.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "im_pipeline_flows.cli", "run", str(cfg_path)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"error: {bad}: line 3: lone surrogate \\ud800" in run.stderr
    root = tmp_path / "runs" / "tiny-flow"
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    assert written == [".data.lock"]  # the lock file only: no data, no config, no results
