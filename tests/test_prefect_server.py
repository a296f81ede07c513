"""Integration: a real Prefect server + process work pool + worker run a deployed compare flow.

Starts ``prefect server start`` on 127.0.0.1 (SQLite in a temporary PREFECT_HOME), creates a process
work pool, starts a worker, deploys the compare flow with a tiny config (``flows.serve.deploy``),
triggers a run through the API, waits for it, reads its artifacts back through the API, and stops
everything by PID (process groups it started).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_flows import tiny_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"prefect server not healthy after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group this test started (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _python(code: str, env: dict[str, str], timeout: float) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-5000:]}"
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def test_deployed_flow_runs_on_a_worker(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg["name"] = "tiny-deployed"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=(logs / "server.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(server)
        _wait_healthy(api, server)
        subprocess.run(
            [str(BIN / "prefect"), "work-pool", "create", "test-pool", "--type", "process"],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        deployment_id = _python(
            f"from flows.serve import deploy; print(deploy({str(cfg_path)!r}, 'test-pool', name='tiny'))", env, 300
        )
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "test-pool", "--type", "process"],
            env=env,
            cwd=REPO,
            stdout=(logs / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(worker)
        result = _python(
            """
import asyncio, json
from prefect.deployments import run_deployment
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
fr = run_deployment(name="im-compare/tiny", timeout=600, poll_interval=2)
async def arts():
    async with get_client() as c:
        got = await c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])))
        return [{"key": a.key, "type": a.type, "data": a.data if isinstance(a.data, str) else json.dumps(a.data)}
                for a in got]
print(json.dumps({"state": fr.state.type.value, "deployment": str(fr.deployment_id), "artifacts": asyncio.run(arts())}))
""",
            env,
            900,
        )
        out = json.loads(result)
        worker_log = (logs / "worker.log").read_text()
        assert out["state"] == "COMPLETED", worker_log[-5000:]
        assert out["deployment"] == deployment_id
        arts = {a["key"]: a for a in out["artifacts"]}
        assert arts["tiny-deployed-report"]["type"] == "markdown"
        assert "# IT vs IM: tiny-deployed" in arts["tiny-deployed-report"]["data"]
        assert arts["tiny-deployed-comparison"]["type"] == "table"
        assert "Memorisation" in arts["tiny-deployed-comparison"]["data"]
        # `im-pipeline serve` registers a cron-scheduled deployment and serves it
        serve = subprocess.Popen(
            [str(BIN / "im-pipeline"), "serve", str(cfg_path), "--cron", "0 2 * * *"],
            env=env,
            cwd=REPO,
            stdout=(logs / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(serve)
        schedule = _python(
            """
import time
from prefect.client.orchestration import get_client
for _ in range(240):
    try:
        with get_client(sync_client=True) as c:
            d = c.read_deployment_by_name("im-compare/tiny-deployed-scheduled")
        print(d.schedules[0].schedule.cron, d.parameters["config"])
        break
    except Exception:
        time.sleep(1)
""",
            env,
            300,
        )
        assert schedule == f"0 2 * * * {cfg_path}", (logs / "serve.log").read_text()[-3000:]
        run_root = tmp_path / "runs" / "tiny-deployed"
        assert (run_root / "IM" / "seed-0" / "train_summary.json").is_file()
        assert (tmp_path / "reports" / "tiny-deployed" / "REPORT.md").is_file()
    finally:
        for p in reversed(procs):
            _stop(p)
    assert all(p.poll() is not None for p in procs)
