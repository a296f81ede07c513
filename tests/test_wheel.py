"""The package as users install it: a wheel built from this checkout, installed into a fresh virtual environment
outside the checkout, registers deployments whose entrypoint its own workers can import (issue 22, item 4).

The fresh environment gets the wheel only (``--no-deps``); its dependencies come from the development environment
through a ``.pth`` line (installing torch and Prefect again would take minutes and the network). The development
environment's own editable install is not active there: a path that a ``.pth`` line adds is not scanned for ``.pth``
files of its own, so ``im_pipeline`` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Run inside the fresh environment, in a directory with no checkout: deploy the compare flow (and the unit flow of
# --work-pool) to a process pool on a temporary Prefect server, then load each deployment's entrypoint as a worker
# would, and check it is the wheel's code.
DEPLOY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint
    from prefect.testing.utilities import prefect_test_harness
    import im_pipeline_flows.compare as compare
    from im_pipeline_flows.serve import deploy
    from im_pipeline_flows.pool import ensure_unit_deployment
    from im_pipeline.config import load_config

    with prefect_test_harness(server_startup_timeout=180):
        with get_client(sync_client=True) as client:
            from prefect.client.schemas.actions import WorkPoolCreate
            client.create_work_pool(WorkPoolCreate(name="cpu", type="process"))
            dep = client.read_deployment(deploy(sys.argv[1], "cpu", cron="0 2 * * *"))
            unit = client.read_deployment_by_name(ensure_unit_deployment(load_config(sys.argv[1]), "cpu"))
        out = {"module": compare.__file__}
        for key, d in (("compare", dep), ("unit", unit)):
            flow = load_flow_from_entrypoint(d.entrypoint)
            out[key] = {"entrypoint": d.entrypoint, "path": d.path, "flow": flow.name,
                        "file": sys.modules[flow.fn.__module__].__file__}
        out["parameters"] = dep.parameters
        out["config_schema"] = sorted(dep.parameter_openapi_schema["definitions"]["ExperimentConfig"]["properties"])
        print("RESULT " + json.dumps(out))
    """
)


def _sources(dest: Path) -> None:
    """A copy of the checkout's files (tracked and new, not ignored) to build from: the build writes build/ and
    *.egg-info beside its sources."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for rel in listed:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


def test_deploy_from_an_installed_wheel(tmp_path: Path) -> None:
    src, wheels, venv, work = (tmp_path / d for d in ("src", "wheels", "venv", "work"))
    _sources(src)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=src,
        check=True,
    )
    (wheel,) = wheels.glob("im_pipeline-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "zz_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*pip, str(wheel)], check=True)
    work.mkdir()
    config = work / "exp.yaml"
    config.write_text("name: wheel-exp\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [str(py), "-c", DEPLOY_SCRIPT, str(config)], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-3000:]
    import json

    out = json.loads(line.removeprefix("RESULT "))
    assert Path(out["module"]).is_relative_to(site)  # the wheel's code, not the checkout's
    assert out["compare"]["entrypoint"] == "im_pipeline_flows.compare.compare_flow"
    assert out["unit"]["entrypoint"] == "im_pipeline_flows.compare.unit_flow"
    for key, name in (("compare", "im-compare"), ("unit", "im-unit")):
        assert out[key]["flow"] == name
        assert Path(out[key]["file"]).is_relative_to(site)
    assert out["parameters"] == {"config": str(config.resolve()), "overrides": []}
    assert {"name", "training", "arms", "evaluation"} <= set(out["config_schema"])
