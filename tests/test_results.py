"""Typed result files (im_pipeline.results): round trip, schema version, errors that name the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from im_pipeline.results import (
    SCHEMA_VERSION,
    AlpacaEvalResult,
    EvalResult,
    HumanEvalResult,
    OverfittingResult,
    ResultFileError,
    TrainSummary,
    new_eval_result,
    new_train_summary,
    read_eval_result,
)

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "reports" / "study_cpu" / "results"


def _overfitting() -> dict:
    return {
        "benchmark": "overfitting",
        "status": "ok",
        "limit": 4,
        "options": {"loss_examples": 4},
        "metric": "bleu4",
        "value": 12.5,
        "stderr": None,
        "n": 4,
        "train_loss": 0.9,
        "test_loss": 2,  # an int where a float is declared: read as 2.0
        "bleu": {"corpus_precisions": [1.0, 2.0], "corpus_brevity_penalty": 0.5, "hyp_len": 3, "ref_len": 4,
                 "signature": "s"},
        "items": {"bleu4": {"a": 10.0, "b": 15.0}},
        "examples": [{"id": "a", "generation": "g", "reference": "r"}],
        "wall_time_s": 1.5,
    }  # fmt: skip


def test_eval_result_round_trip(tmp_path: Path) -> None:
    rec = new_eval_result(_overfitting())
    assert isinstance(rec, OverfittingResult) and rec.test_loss == 2.0 and rec.bleu is not None
    path = rec.write(tmp_path / "eval" / "overfitting.json")
    data = json.loads(path.read_text())
    assert next(iter(data)) == "schema_version" and data["schema_version"] == SCHEMA_VERSION
    assert list(data)[-3:] == ["items", "examples", "wall_time_s"]  # per-item scores and provenance last
    assert "reason" not in data and "host" not in data  # only the fields that were given
    back = read_eval_result(path)
    assert back == rec and back.to_json() == data


def test_each_benchmark_reads_as_its_model(tmp_path: Path) -> None:
    he = new_eval_result({"benchmark": "humaneval", "n": 1, "per_problem_pass@1": {"t/0": 1.0}})
    assert isinstance(he, HumanEvalResult) and he.per_problem_pass1 == {"t/0": 1.0}
    assert "per_problem_pass@1" in he.to_json()  # written under the name humaneval uses
    ae = new_eval_result({"benchmark": "alpaca_eval", "judge_position_biased": True, "judge_prefers_first_shown": 0.95})
    assert isinstance(ae, AlpacaEvalResult) and ae.judge_position_biased
    other = new_eval_result({"benchmark": "my_bench", "value": 0.5})
    assert type(other) is EvalResult and other.ok


def test_file_without_schema_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "IT" / "seed-0" / "eval" / "overfitting.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_overfitting()))
    with pytest.raises(ResultFileError) as err:
        read_eval_result(path)
    msg = str(err.value)
    assert str(path) in msg and "without a schema_version" in msg and "--rerun eval" in msg and "--force" in msg
    summary = tmp_path / "train_summary.json"
    summary.write_text(json.dumps({"arm": "IT", "seed": 0}))
    with pytest.raises(ResultFileError, match="--rerun train"):
        TrainSummary.read(summary)


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mmlu.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "benchmark": "mmlu"}))
    with pytest.raises(ResultFileError, match=rf"schema_version {SCHEMA_VERSION + 1}, this im-pipeline reads"):
        read_eval_result(path)


def test_wrong_type_and_unknown_field_are_named(tmp_path: Path) -> None:
    path = tmp_path / "overfitting.json"
    path.write_text(json.dumps({**_overfitting(), "schema_version": SCHEMA_VERSION, "train_loss": "low"}))
    with pytest.raises(ResultFileError, match=r"overfitting.json: not a valid eval result record: train_loss: .*'low'"):
        read_eval_result(path)
    with pytest.raises(ResultFileError, match=r"new overfitting result: .*trian_loss: Extra inputs.*a code fix"):
        new_eval_result({**_overfitting(), "trian_loss": 1.0})  # a writer's typo fails at write time


def test_train_summary_key_accepts_the_old_name_fingerprint(tmp_path: Path) -> None:
    s = new_train_summary({"arm": "IM", "seed": 1, "fingerprint": "abc", "lr_scale": "output_over_im_release"})
    assert s.key == "abc" and s.lr_scale == "output_over_im_release"
    data = json.loads(s.write(tmp_path / "train_summary.json").read_text())
    assert data == {"schema_version": SCHEMA_VERSION, "arm": "IM", "seed": 1, "lr_scale": "output_over_im_release",
                    "key": "abc"}  # fmt: skip
    assert TrainSummary.read(tmp_path / "train_summary.json") == s


def test_committed_study_results_are_current_and_round_trip() -> None:
    """The committed study_cpu results (migrated once) read and write back byte for byte."""
    summaries = sorted(STUDY.glob("*/seed-*/train_summary.json"))
    evals = sorted(STUDY.glob("*/seed-*/eval/*.json"))
    assert len(summaries) == 15 and len(evals) == 15
    for path in summaries:
        rec = TrainSummary.read(path)
        assert json.dumps(rec.to_json(), indent=2, ensure_ascii=False) + "\n" == path.read_text()
    for path in evals:
        rec = read_eval_result(path)
        assert isinstance(rec, OverfittingResult)
        assert json.dumps(rec.to_json(), indent=2, ensure_ascii=False) + "\n" == path.read_text()
