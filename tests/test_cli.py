"""The ``im-pipeline`` command line: help on every argument, choices listed, --data-dir, console lines."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import yaml

from im_pipeline_flows.cli.main import RunNameFormatter, build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: str = "im-pipeline"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_argument_has_help() -> None:
    missing = [
        f"{path}: {action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    names = [path for path, _ in _parsers(build_parser())]
    assert {"im-pipeline run", "im-pipeline serve", "im-pipeline deploy", "im-pipeline eval"} <= set(names)


def test_help_lists_choices_and_a_clean_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "{mmlu,truthfulqa,humaneval,alpaca_eval,overfitting}" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "Each sub-command imports" not in out
    assert "Instruction Modelling (IM: loss on instructions and" in out
    for command in ("run", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--data-dir DIR" in capsys.readouterr().out


def test_work_pool_is_an_option_of_run_only(capsys: pytest.CaptureFixture[str]) -> None:
    """serve and deploy never read --work-pool (deploy names its pool with --pool): they must refuse it."""
    parser = build_parser()
    args = parser.parse_args(["run", "x.yaml", "--work-pool", "gpu", "--set", "a=1", "--data-dir", "d"])
    assert (args.config, args.work_pool, args.overrides, args.data_dir) == ("x.yaml", "gpu", ["a=1"], "d")
    for argv in (["serve", "x.yaml", "--cron", "0 2 * * *"], ["deploy", "x.yaml", "--pool", "cpu"]):
        args = parser.parse_args([*argv, "--set", "a=1", "--data-dir", "d"])
        assert (args.config, args.overrides, args.data_dir) == ("x.yaml", ["a=1"], "d")
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*argv, "--work-pool", "gpu"])
        assert exc.value.code == 2
        assert "unrecognized arguments: --work-pool gpu" in capsys.readouterr().err


def _config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "cli-exp", **extra}))
    return path


def test_data_dir_is_resolved_at_load_and_travels_to_deployments(tmp_path: Path, monkeypatch) -> None:
    from im_pipeline.config import load_config
    from im_pipeline_flows.cli.run import data_dir_overrides

    data, env = tmp_path / "data", tmp_path / "env"
    data.mkdir()
    env.mkdir()
    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(env))
    cfg = _config(tmp_path)
    loaded = load_config(cfg, ["data.n=8"], data_dir=str(data))
    assert loaded.data_dir == str(data.resolve()) and loaded.data.n == 8
    assert data_dir_overrides(["data.n=8"], loaded, str(data)) == ["data.n=8", f"data_dir={data.resolve()}"]
    # the config's own data_dir wins (documented precedence: data_dir, --data-dir, $IM_PIPELINE_DATA_DIR)
    (tmp_path / "own").mkdir()
    own = load_config(_config(tmp_path / "own", data_dir=str(tmp_path)), data_dir=str(data))
    assert own.data_dir == str(tmp_path.resolve())
    assert load_config(cfg).data_dir == str(env.resolve())  # no flag: the environment, made absolute
    assert data_dir_overrides([], load_config(cfg), None) == []  # a deployment resolves its own


def test_run_with_a_missing_data_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(_config(tmp_path)), "--data-dir", str(tmp_path / "nope")])
    assert code == 2
    assert f"error: data directory {tmp_path / 'nope'} (from --data-dir) does not exist" in capsys.readouterr().err


def test_run_names_an_unknown_rerun_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from im_pipeline_flows.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "x.yaml", "--rerun", "train", "--rerun", "mmlu"])
    assert args.rerun == ["train", "mmlu"] and args.force is False
    assert parser.parse_args(["run", "x.yaml", "--force"]).force is True
    for argv in (["--rerun", "training"], ["--force", "--rerun", "eval"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["run", "x.yaml", *argv])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'training'" in err and "not allowed with argument --force" in err


def test_console_lines_name_the_task_run() -> None:
    fmt = RunNameFormatter("%(levelname)s %(name)s :: %(message)s")
    rec = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished in state Completed()", (), None)
    rec.task_run_name = "train IM seed 0"
    assert fmt.format(rec) == "INFO prefect.task_runs [train IM seed 0] Finished in state Completed()"
    plain = logging.LogRecord("im_pipeline.x", logging.INFO, __file__, 1, "hello :: world", (), None)
    assert fmt.format(plain) == "INFO im_pipeline.x hello :: world"


def test_keys_lists_every_config_key_with_default_and_help(capsys) -> None:
    """`im-pipeline keys` is the config's own field help as CLI help (what --set takes)."""
    from im_pipeline.config import ExperimentConfig
    from im_pipeline_flows.cli.commands import config_keys

    rows = {key: (default, text) for key, default, text in config_keys(ExperimentConfig)}
    assert rows["training.save_steps"] == (
        "50",
        ExperimentConfig.model_fields["training"].annotation.model_fields["save_steps"].description,
    )
    assert rows["arms.N.loss_mode"][0] == "(required)" and "evaluation.mmlu.limit" in rows
    assert main(["keys", "training.learning"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("training.learning_rate = 2e-05\n    Peak learning rate")
    assert main(["keys", "no.such"]) == 2
    assert "no config key starts with 'no.such'" in capsys.readouterr().err


def test_schedules_are_refused_without_a_server(tmp_path: Path, monkeypatch, capsys) -> None:
    """serve and deploy need a real server (the ephemeral one has no scheduler): refused, exit 2, before any flow."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    cfg = str(_config(tmp_path))
    for argv in (["serve", cfg, "--cron", "0 2 * * *"], ["deploy", cfg, "--pool", "cpu", "--cron", "0 2 * * *"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error: schedules need a running Prefect server" in err and "PREFECT_API_URL" in err
    assert not (tmp_path / "runs").exists()


def test_serve_and_deploy_take_the_same_options() -> None:
    """Beside deploy's pool, serve and deploy read the same options, with the same defaults."""
    parser = build_parser()
    common = ["x.yaml", "--set", "a=1", "--data-dir", "d", "--cron", "0 2 * * *", "--name", "nightly"]
    serve = vars(parser.parse_args(["serve", *common]))
    deploy = vars(parser.parse_args(["deploy", *common, "--pool", "cpu"]))
    assert deploy.pop("pool") == "cpu"
    serve.pop("command"), deploy.pop("command")
    assert serve == deploy
    assert serve["cron"] == "0 2 * * *" and serve["name"] == "nightly"
    bare = vars(parser.parse_args(["serve", "x.yaml"]))
    assert (bare["cron"], bare["name"]) == (None, None)


def test_a_prefect_profile_counts_as_a_server(tmp_path: Path) -> None:
    """`prefect config set PREFECT_API_URL=…` in the active profile (a temporary PREFECT_HOME) is the server the
    commands use, as Prefect resolves it; with no profile value and no variable there is none."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    probe = [sys.executable, "-c", "from im_pipeline_flows.cli.run import prefect_api_url; print(prefect_api_url())"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "None"
    prefect = Path(sys.executable).with_name("prefect")
    url = "http://127.0.0.1:4999/api"
    subprocess.run([str(prefect), "config", "set", f"PREFECT_API_URL={url}"], env=env, check=True, capture_output=True)
    assert (tmp_path / "prefect-home" / "profiles.toml").is_file()
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == url


def test_keys_lists_benchmark_options_and_study_keys(capsys) -> None:
    """Every benchmark's typed options (with the default its section starts from) and the study's keys are listed,
    and each listed key is one that --set accepts."""
    from im_pipeline.config import ExperimentConfig
    from im_pipeline.config.study import StudyConfig
    from im_pipeline.evaluation.specs import specs
    from im_pipeline_flows.cli.commands import config_keys

    rows = {key: default for key, default, _ in config_keys(ExperimentConfig)}
    for spec in specs():
        for option in spec.options.model_fields:
            assert f"evaluation.{spec.name}.options.{option}" in rows
    assert rows["evaluation.mmlu.options.num_fewshot"] == "0"  # the mmlu section's default, not the model's
    assert rows["evaluation.humaneval.options.top_p"] == "0.95"
    for field in StudyConfig.model_fields:
        assert f"study.{field}" in rows
    assert rows["study"] == "null" and rows["study.alpha"] == "0.05"
    assert main(["keys", "evaluation.humaneval.options.tim"]) == 0
    assert capsys.readouterr().out.startswith("evaluation.humaneval.options.timeout = 10.0\n")
