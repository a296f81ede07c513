"""Screenshots of the Prefect UI after a small run: the flow run page and the report artifact with its figures.

    .venv/bin/python docs/screenshots/take.py            # writes docs/screenshots/*.png

What it does, end to end, with nothing faked: builds the tiny random model of the tests (no weights to
download), starts ``prefect server start`` on a free port (temporary PREFECT_HOME; PREFECT_UI_API_URL set so the
UI finds the API on that port), runs ``im-pipeline run`` on a tiny IT-vs-IM config against it, reads the flow
run's and the report artifact's ids from the API, and photographs both pages with headless Chromium (the
Debian package ``chromium``: ``apt-get install -y chromium``; ``.ci/run`` installs it for the UI test).
The server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api_get(api: str, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(
        f"{api}{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    raise SystemExit("headless Chromium not found: apt-get install -y chromium")


def shoot(browser: str, url: str, out: Path, height: int) -> None:
    """One screenshot; the UI is a single-page app, so give its scripts virtual time to fetch and render."""
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size=1400,{height}",
            "--virtual-time-budget=20000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    print(f"screenshot: {out} ({url})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent), help="directory for the PNGs")
    args = parser.parse_args()
    browser = _chromium()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from test_flows import tiny_config
    from tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="im-pipeline-screenshots-"))
    build_tiny_model(tmp / "tiny-model")
    cfg = tiny_config(tmp, tmp / "tiny-model")
    # paths relative to the run's working directory (tmp), as a user's config would have them
    cfg["model"]["source"], cfg["data"]["train"] = "tiny-model", "train.jsonl"
    cfg.update(name="screenshot-demo", seeds=[0, 1], output_dir="runs", report_dir="reports")
    cfg["training"]["epochs"] = 3
    cfg["description"] = "IT vs IM on a tiny random model: the Prefect UI, not a finding."
    cfg_path = tmp / "screenshot-demo.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,  # the UI calls the API on this port, not the default 4200
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(tmp / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(180):
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        run = subprocess.run([str(BIN / "im-pipeline"), "run", str(cfg_path)], env=env, cwd=tmp, timeout=900)
        if run.returncode != 0:
            raise SystemExit(f"im-pipeline run failed ({run.returncode})")
        flow_run = _api_get(api, "/flow_runs/filter", {"limit": 1, "sort": "START_TIME_DESC"})[0]  # type: ignore[index]
        artifact = _api_get(api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["screenshot-demo-report"]}}})[0]  # type: ignore[index]
        ui = f"http://127.0.0.1:{port}"
        shoot(browser, f"{ui}/runs/flow-run/{flow_run['id']}", out_dir / "flow_run.png", 1000)
        shoot(browser, f"{ui}/artifacts/artifact/{artifact['id']}", out_dir / "report_artifact.png", 5200)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"flow run {flow_run['name']!r}; work files in {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
