"""A newcomer's first hour: ``im-pipeline init``, ``--version``, the Makefile on a fresh clone (no ../shared), and
gated Hub data and models (a clear error, the token never shown)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import GatedRepoError

from im_pipeline import __version__, hub
from im_pipeline.config import load_config
from im_pipeline.data import DataError, load_records
from im_pipeline.starter import write_starter
from im_pipeline_flows.cli.main import main

REPO = Path(__file__).resolve().parent.parent
TOKEN = "hf_FAKEsecretTOKENforTESTS0123456789"


def test_init_writes_a_commented_starter_that_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "my-exp"]) == 0
    assert capsys.readouterr().out.startswith("wrote my-exp.yaml: edit it")
    text = (tmp_path / "my-exp.yaml").read_text()
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10  # commented
    cfg = load_config(tmp_path / "my-exp.yaml")
    assert (cfg.name, cfg.data.train, cfg.model.source) == ("my-exp", "paper_lima", "smollm2-135m-instruct")
    assert [a.loss_mode for a in cfg.arms] == ["it", "im"]
    assert main(["init", "my-exp"]) == 2  # never overwrites
    assert "my-exp.yaml exists" in capsys.readouterr().err


def test_init_takes_your_file_and_model(tmp_path: Path) -> None:
    path = write_starter("mine", tmp_path, train="data/my chats.parquet", model="Qwen/Qwen2.5-0.5B")
    cfg = load_config(path)
    assert (cfg.data.train, cfg.model.source) == ("data/my chats.parquet", "Qwen/Qwen2.5-0.5B")
    with pytest.raises(ValueError, match=r"experiment name '\.\./x' is not allowed"):
        write_starter("../x", tmp_path)


def test_init_from_the_command_line_is_what_the_readme_says(tmp_path: Path) -> None:
    """README, "Your model, your data": `init NAME --train FILE --model ID` (here with --dir) writes a config with
    64 training examples, 16 held out, max length 256, one epoch, HumanEval (8 problems) and the overfitting
    analysis on, MMLU, TruthfulQA and AlpacaEval off."""
    args = ["init", "myexp", "--train", "my_chats.jsonl", "--model", "HuggingFaceTB/SmolLM2-135M"]
    assert main([*args, "--dir", str(tmp_path)]) == 0
    cfg = load_config(tmp_path / "myexp.yaml")
    assert (cfg.name, cfg.data.train, cfg.model.source) == ("myexp", "my_chats.jsonl", "HuggingFaceTB/SmolLM2-135M")
    assert (cfg.data.n, cfg.data.held_out_size, cfg.data.max_length, cfg.training.epochs) == (64, 16, 256, 1)
    ev = cfg.evaluation
    assert (ev.humaneval.enabled, ev.humaneval.limit, ev.overfitting.enabled) == (True, 8, True)
    assert not (ev.mmlu.enabled or ev.truthfulqa.enabled or ev.alpaca_eval.enabled)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert capsys.readouterr().out == f"im-pipeline {pyproject['project']['version']}\n"
    assert __version__ == pyproject["project"]["version"]


def test_packaging_basics() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("trl") for dep in pyproject["dependencies"])
    assert pyproject["optional-dependencies"]["bench"] == ["trl>=1.16,<2"]
    imports_trl = re.compile(r"^\s*(import trl\b|from trl\b)", re.M)
    users = {
        str(path.relative_to(REPO))
        for folder in ("im_pipeline", "tasks", "flows", "bench", "tests")
        for path in (REPO / folder).rglob("*.py")
        if imports_trl.search(path.read_text(encoding="utf-8"))
    }
    assert users == {"bench/train_throughput.py"}  # so trl is the bench extra's, not a runtime dependency
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in license_text


# -- the Makefile on a fresh clone ---------------------------------------------------------------------------------

FAKE_CLI = """#!/bin/sh
echo "$* | data_dir=${IM_PIPELINE_DATA_DIR-unset}" >> "$LOG"
[ "$1 $2" = "data fetch" ] && [ -n "$FAIL_FETCH" ] && { echo "error: cannot download (offline)" >&2; exit 2; }
exit 0
"""


def _clone(tmp_path: Path) -> Path:
    """The Makefile in a fresh clone whose .venv is already set up; im-pipeline is a fake that logs its calls."""
    repo = tmp_path / "clone" / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, repo / name)
    for name in ("im-pipeline", "python"):
        exe = repo / ".venv" / "bin" / name
        exe.write_text(FAKE_CLI)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    installed = repo / ".venv" / ".installed"
    installed.touch()
    os.utime(installed, (4e9, 4e9))  # newer than its prerequisites: `setup` has nothing to do
    return repo


def _make(repo: Path, log: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "IM_PIPELINE_DATA_DIR" and not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "-s", "demo"], cwd=repo, env={**base, "LOG": str(log), **env}, capture_output=True, text=True
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_makefile_demo_on_a_fresh_clone(tmp_path: Path) -> None:
    repo, log = _clone(tmp_path), tmp_path / "calls.log"
    # no ../shared: nothing exported, the demo's data fetched first
    assert _make(repo, log).returncode == 0
    assert log.read_text().splitlines() == [
        "data fetch paper_lima paper_dolly_3k | data_dir=unset",
        "run configs/demo.yaml | data_dir=unset",
    ]
    # offline: the fetch fails, the run never starts, make stops
    log.unlink()
    done = _make(repo, log, FAIL_FETCH="1")
    assert done.returncode != 0 and "error: cannot download (offline)" in done.stderr
    assert log.read_text().splitlines() == ["data fetch paper_lima paper_dolly_3k | data_dir=unset"]
    # from a mirror
    log.unlink()
    assert _make(repo, log, DATA_MIRROR="http://127.0.0.1:9/data").returncode == 0
    assert log.read_text().splitlines()[0] == (
        "data fetch paper_lima paper_dolly_3k --mirror http://127.0.0.1:9/data | data_dir=unset"
    )
    # with ../shared/data beside the clone it is exported (and the fetch only verifies)
    (tmp_path / "clone" / "shared" / "data").mkdir(parents=True)
    log.unlink()
    assert _make(repo, log).returncode == 0
    shared = tmp_path / "clone" / "shared" / "data"
    assert log.read_text().splitlines()[1] == f"run configs/demo.yaml | data_dir={shared}"


# -- gated Hub data and models -------------------------------------------------------------------------------------


def _gated(url: str) -> GatedRepoError:
    response = httpx2.Response(401, request=httpx2.Request("GET", url))
    return GatedRepoError(f"401 Client Error. Cannot access gated repo for url {url}.", response=response)


@pytest.fixture
def online_with_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub, "hub_reachable", lambda **_: True)


def test_gated_dataset_says_how_to_log_in_and_hides_the_token(
    online_with_token: None, monkeypatch, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    import datasets

    calls = []

    def load_dataset(hub_id: str, **kwargs: object) -> None:
        calls.append((hub_id, kwargs))
        raise _gated(f"https://huggingface.co/api/datasets/{hub_id}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    caplog.set_level(logging.DEBUG)
    assert main(["data", "stats", "someone/gated-set?split=test&revision=v2&name=en"]) == 2
    err = capsys.readouterr().err
    assert calls == [("someone/gated-set", {"split": "test", "revision": "v2", "name": "en"})]
    assert err == (
        "error: dataset 'someone/gated-set' on the Hugging Face Hub is gated or private (HTTP 401/403: access needs "
        "a login): request access at https://huggingface.co/datasets/someone/gated-set with your account, then log "
        "in on this machine with `hf auth login` or set HF_TOKEN (huggingface_hub reads it; im-pipeline never logs "
        "or writes it)\n"
    )
    assert TOKEN not in err + caplog.text


def test_auth_problem_reads_status_type_and_word() -> None:
    assert hub.auth_problem(_gated("https://huggingface.co/x/y"))
    assert hub.auth_problem(OSError("You are trying to access a gated repo."))
    assert not hub.auth_problem(ValueError("could not cast the aggregated column"))
    assert not hub.auth_problem(OSError("404 Client Error: Not Found"))


def test_other_hub_errors_never_show_the_token(online_with_token: None, monkeypatch) -> None:
    import datasets

    def load_dataset(hub_id: str, **kwargs: object) -> None:
        raise ConnectionError(f"proxy refused Authorization: Bearer {TOKEN}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataError) as err:
        load_records("someone/set")
    assert TOKEN not in str(err.value) and "Bearer ***" in str(err.value)
    with pytest.raises(DataError, match="Hub parameters are split, name, revision, data_files"):
        load_records("someone/set?splits=test")


def test_gated_model_says_how_to_log_in(online_with_token: None, monkeypatch) -> None:
    import transformers

    from im_pipeline.models import ModelSourceError, load_tokenizer

    for var in hub.MODELS:
        monkeypatch.delenv(var, raising=False)

    def from_pretrained(source: str, **kwargs: object) -> None:
        gated = _gated(f"https://huggingface.co/{source}")
        raise OSError(f"You are trying to access a gated repo. {source}") from gated

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(ModelSourceError) as err:
        load_tokenizer("meta-llama/Llama-2-7b-hf")
    assert str(err.value).startswith(
        "model 'meta-llama/Llama-2-7b-hf' on the Hugging Face Hub is gated or private (HTTP 401/403"
    )
    assert "https://huggingface.co/meta-llama/Llama-2-7b-hf" in str(err.value) and "hf auth login" in str(err.value)
    assert TOKEN not in str(err.value)
