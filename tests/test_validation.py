"""Malformed input, as a careless user writes it: each gives one error naming the file and the line or record,
exit status 2 from the CLI, and nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from im_pipeline.config import ConfigError, ExperimentConfig, load_config
from im_pipeline.evaluation.specs import get_spec
from im_pipeline_flows.cli import main

REPO = Path(__file__).resolve().parent.parent
BASE = {"name": "exp", "arms": [{"name": "IT", "loss_mode": "it"}]}


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def _dump(tmp_path: Path, data: dict) -> Path:
    return _yaml(tmp_path, yaml.safe_dump(data))


def _run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    code = main(list(argv))
    return code, capsys.readouterr().err


# -- the experiment YAML -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: a\nname: b\n", "line 2: duplicate key 'name' (first at line 1)"),
        ("name: a\ntraining:\n  epochs: 1\n  lr_scheduler: linear\n  epochs: 3\n", "line 5: duplicate key 'epochs'"),
        ("name: a\narms:\n  - {name: IT, loss_mode: it, name: IM}\n", "line 3: duplicate key 'name'"),
    ],
)
def test_duplicate_yaml_keys_are_errors_with_line(tmp_path, text, fragment):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: {fragment}" in str(err.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("training.learning_rate=.inf", "training.learning_rate"),
        ("training.learning_rate=.nan", "training.learning_rate"),
        ("training.epochs=-.inf", "training.epochs"),
        ("arms.0.kl_coef=.inf", "arms.0.kl_coef"),
        ("seeds=[0, 0]", "seeds must be unique"),
        ("name=../../etc", "experiment name '../../etc' is not allowed"),
        ("name=a/b", "experiment name 'a/b'"),
        ("name=..", "experiment name '..'"),
        ("name=.", "experiment name '.'"),
        ("name=a b", "experiment name 'a b'"),
        ("arms.0.name=../IT", "arm name '../IT' is not allowed"),
        ("arms.0.name=x/y", "arm name 'x/y'"),
        ("arms.0.name=base", "arm name 'base' is reserved"),
        ("evaluation.humaneval.options={temprature: 0.1}", "humaneval: unknown option 'temprature'"),
        ("evaluation.humaneval.options={n: 2, k: [5]}", "pass@k needs 1 <= k <= n"),
        ("evaluation.mmlu.options={num_fewshot: 7}", "mmlu: option num_fewshot"),
        ("evaluation.alpaca_eval.options={version: 3}", "alpaca_eval: option version"),
        ("evaluation.overfitting.options={boostrap: 10}", "overfitting: unknown option 'boostrap'"),
        ("evaluation.truthfulqa.options={source: web}", "truthfulqa: option source"),
    ],
)
def test_bad_values_are_rejected_when_the_config_loads(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(_dump(tmp_path, BASE), [override])
    assert fragment in str(err.value), str(err.value)


def test_unknown_benchmark_option_names_the_closest_and_every_valid_option():
    valid = ", ".join(get_spec("humaneval").options.model_fields)
    with pytest.raises(ValueError) as err:
        get_spec("humaneval").validate_options({"temprature": 0.1})
    expected = (
        f"humaneval: unknown option 'temprature' (value 0.1); did you mean 'temperatures'? (valid options: {valid})"
    )
    assert str(err.value) == expected
    with pytest.raises(ValueError) as err:  # nothing close: no guess, still every valid option
        get_spec("humaneval").validate_options({"zzz": 1})
    assert str(err.value) == f"humaneval: unknown option 'zzz' (value 1) (valid options: {valid})"


@pytest.mark.parametrize(
    "override",
    ["evaluation.overfitting.options.sample_sed=3", "evaluation.overfitting.options={sample_sed: 3}"],
)
def test_unknown_benchmark_option_from_set_names_the_override(tmp_path, override):
    with pytest.raises(ConfigError) as err:
        load_config(_dump(tmp_path, BASE), [override])
    msg = str(err.value)
    line = "  evaluation.overfitting.options: overfitting: unknown option 'sample_sed' (value 3); did you mean "
    assert line + "'sample_seed' or 'loss_examples'? (valid options: loss_examples, max_new_tokens, bleu," in msg, msg
    assert msg.endswith(f"held_out_kind) (from --set {override})")
    with pytest.raises(ConfigError) as err:  # written in the file: no --set named
        load_config(_dump(tmp_path, {**BASE, "evaluation": {"overfitting": {"options": {"sample_sed": 3}}}}))
    assert "did you mean 'sample_seed'" in str(err.value) and "--set" not in str(err.value)


def test_allowed_names_and_paper_configs_load():
    for name in ("IT+NEFTune", "IM-Eq4", "it_0.5", "IT+KL-release"):
        ExperimentConfig.model_validate({**BASE, "name": name, "arms": [{"name": name, "loss_mode": "it"}]})
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert all(".." not in a.name and "/" not in a.name for a in cfg.arms)
    assert "IT+NEFTune" in [a.name for a in load_config(REPO / "configs" / "paper_llama2_7b_lima.yaml").arms]


def test_benchmark_options_are_typed_with_defaults():
    he = get_spec("humaneval").validate_options({"n": 20, "temperatures": [0.1, 0.7], "k": [1, 10]})
    assert he.n == 20 and he.timeout == 10.0 and he.backend == "hf"
    assert get_spec("mmlu").validate_options({}).num_fewshot == 0
    with pytest.raises(ValueError, match="unknown benchmark"):
        get_spec("gsm8k")


def test_cli_run_with_malformed_config_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    path = _yaml(tmp_path, "name: a\nseeds: [0, 0]\noutput_dir: runs\n")
    start = time.perf_counter()
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "run", str(path))
    assert code == 2 and "seeds must be unique" in err and str(path) in err
    assert not (tmp_path / "runs").exists() and time.perf_counter() - start < 10


def test_cli_run_names_a_missing_data_directory_at_once(tmp_path, monkeypatch, capsys):
    path = _dump(tmp_path, {**BASE, "data_dir": str(tmp_path / "no-such-dir"), "output_dir": "runs"})
    start = time.perf_counter()
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "run", str(path))
    assert (
        code == 2 and f"data directory {tmp_path / 'no-such-dir'} (from data_dir in the config) does not exist" in err
    )
    assert time.perf_counter() - start < 10 and not (tmp_path / "runs").exists()
    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path / "gone"))
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "data", "stats", "lima")
    assert code == 2 and f"data directory {tmp_path / 'gone'} (from $IM_PIPELINE_DATA_DIR) does not exist" in err


# -- data files through the CLI ------------------------------------------------------------------------------

BAD_DATA = {
    "lone surrogate": ('{"instruction": "a\\ud800", "output": "b"}\n', "line 1: lone surrogate \\ud800"),
    "duplicate key": (
        '{"instruction": "a", "output": "b"}\n{"instruction": "a", "instruction": "c", "output": "b"}\n',
        "line 2: duplicate key 'instruction'",
    ),
    "NaN": ('{"instruction": "a", "output": "b", "score": NaN}\n', "line 1: non-finite number NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_cli_data_errors_exit_2_naming_file_and_line(tmp_path, monkeypatch, capsys, case):
    text, fragment = BAD_DATA[case]
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "data", "stats", str(path))
    assert code == 2 and f"{path}: {fragment}" in err, err


def test_json_array_records_are_numbered_from_1(tmp_path, monkeypatch, capsys):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "a"}]))
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "data", "stats", str(path))
    assert code == 2 and f"{path}: record 2:" in err


# -- offline: no Hub retries -----------------------------------------------------------------------------------


def test_offline_named_dataset_fails_at_once_without_touching_the_hub(tmp_path, monkeypatch, capsys):
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("the Hub must not be tried")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.delenv("IM_PIPELINE_DATA_DIR", raising=False)
    start = time.perf_counter()
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "data", "stats", "lima")
    assert code == 2 and "offline (HF_HUB_OFFLINE=1)" in err and time.perf_counter() - start < 10

    # not declared offline, but unreachable: same, no retries
    from im_pipeline import hub

    for var in hub.OFFLINE_VARIABLES:  # any of them declares the Hub off (im_pipeline/hub.py)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "data", "stats", "lima")
    assert code == 2 and "unreachable from this machine" in err
    code, err = _run_cli(tmp_path, monkeypatch, capsys, "data", "stats", "someone/some-set")
    assert code == 2 and "unreachable from this machine" in err
