"""``im-pipeline eval MODEL --benchmark NAME``: option parsing, skips, errors, a real run on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from im_pipeline.config import DATA_DIR_ENV, ConfigError
from im_pipeline.data import write_jsonl
from im_pipeline_flows.cli import main
from im_pipeline_flows.cli.commands import parse_options


def test_parse_options_yaml_values() -> None:
    opts = parse_options(["num_fewshot=5", "subjects=[anatomy, astronomy]", "apply_chat_template=true", "x=a,b"])
    assert opts == {"num_fewshot": 5, "subjects": ["anatomy", "astronomy"], "apply_chat_template": True, "x": "a,b"}
    with pytest.raises(ConfigError, match="must look like"):
        parse_options(["num_fewshot"])
    with pytest.raises(ConfigError, match="flat keys"):
        parse_options(["a.b=1"])


def test_unknown_benchmark_is_a_clear_error(capsys) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse lists the choices
        main(["eval", "some-model", "--benchmark", "mmlu-pro"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mmlu-pro'" in err and "truthfulqa" in err


def test_skip_exits_1_and_writes_the_reason(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    rc = main(["eval", "no-such-model", "--benchmark", "truthfulqa", "--limit", "2", "--out", str(tmp_path)])
    assert rc == 1
    record = json.loads((tmp_path / "truthfulqa.json").read_text())
    assert record["status"] == "skipped" and "--data-dir" in record["reason"] and record["limit"] == 2
    assert "truthfulqa skipped" in capsys.readouterr().err


def test_malformed_data_file_exits_2_naming_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "data" / "truthfulqa" / "mc_task.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("[1, 2]", encoding="utf-8")
    rc = main(
        [
            "eval",
            "no-such-model",
            "--benchmark",
            "truthfulqa",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2
    assert f"{bad}: record 1: needs a non-empty 'question'" in capsys.readouterr().err


def test_eval_overfitting_on_tiny_model(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """The whole command on a model directory: loads it through models.py, writes and prints the JSON."""
    records = [
        {
            "id": f"r{i}",
            "source": "t",
            "messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i} it is."}],
        }
        for i in range(4)
    ]
    write_jsonl(records, tmp_path / "train.jsonl")
    write_jsonl(records[:2], tmp_path / "held.jsonl")
    rc = main(
        [
            "eval",
            str(tiny_model_dir),
            "--benchmark",
            "overfitting",
            "--limit",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--option",
            f"train={tmp_path / 'train.jsonl'}",
            "--option",
            f"held_out={tmp_path / 'held.jsonl'}",
            "--option",
            "max_new_tokens=3",
        ]
    )
    assert rc == 0
    out = capsys.readouterr()
    record = json.loads((tmp_path / "o" / "overfitting.json").read_text())
    assert json.loads(out.out) == record
    assert record["status"] == "ok" and record["metric"] == "bleu4" and record["n"] == 2
    assert record["n_train_loss"] == 4 and record["n_test_loss"] == 2 and record["model"] == str(tiny_model_dir)
    assert record["held_out_kind"].startswith("another data set (") and len(record["items"]["test_loss"]) == 2
    assert "overfitting: bleu4 =" in out.err
