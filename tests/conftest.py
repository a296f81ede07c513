"""Shared fixtures: a tiny random model built offline, the offline data directory, and Prefect's test harness."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM + byte-level BPE tokenizer (bos <s>, eos </s>, pad <pad>)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data directory ($IM_PIPELINE_DATA_DIR, else ../shared/data); skips if absent."""
    path = Path(os.environ.get("IM_PIPELINE_DATA_DIR") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"offline data directory not found at {path} (set IM_PIPELINE_DATA_DIR)")
    return path


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """Prefect's test harness (a temporary database behind an ephemeral API) for a module that runs flows
    (test_flows, test_strata), with task results stored in a temporary directory. Module scope: a harness left up
    would count as a Prefect server for the modules after it (test_cli's schedules refused without a server)."""
    pytest.importorskip("prefect")
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-storage")
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}),
    ):
        yield
