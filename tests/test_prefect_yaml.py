"""``configs/prefect/prefect.yaml``: every deployment's entrypoint is the installed module (not a file path in a
checkout), and it loads the way ``prefect deploy`` loads it, from a directory outside the checkout (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from im_pipeline_flows.compare import compare_flow

REPO = Path(__file__).resolve().parents[1]


def test_prefect_yaml_entrypoints_are_the_installed_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.flows import load_flow_from_entrypoint  # what `prefect deploy` calls on each entrypoint

    spec = yaml.safe_load((REPO / "configs" / "prefect" / "prefect.yaml").read_text())
    entrypoints = [d["entrypoint"] for d in spec["deployments"]]
    assert entrypoints == ["im_pipeline_flows.compare.compare_flow"] * 2
    monkeypatch.chdir(tmp_path)  # no flows/compare.py here: only the installed package can answer
    for entrypoint in entrypoints:
        flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
        assert flow is compare_flow and flow.name == "im-compare"
    for d in spec["deployments"]:
        assert (REPO / d["parameters"]["config"]).is_file()  # the configs it names exist (relative to the repo)
