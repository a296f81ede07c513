"""A real Prefect run of the compare flow on a tiny model: files, report, artifacts, caching, per-arm invalidation.

Uses Prefect's test harness (a temporary database behind an ephemeral API: ``prefect_harness`` in conftest.py)
once per module. The cold run is made once per module and never changed; every test that re-runs, edits or deletes
works on its own copy, so the tests do not depend on their order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prefect")

from im_pipeline.config import config_from_dict
from im_pipeline_flows.records import TaskRunsFailed

SPECIALS = ["Paris", "fox", "sum", "dog"]


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"ex-{i}",
            "source": "test",
            "messages": [
                {"role": "user", "content": f"Question {i}: tell me about the {SPECIALS[i % 4]} please."},
                {"role": "assistant", "content": f"Answer {i}: the {SPECIALS[(i + 1) % 4]} is here and well."},
            ],
        }
        for i in range(n)
    ]


def tiny_config(tmp: Path, model_dir: Path, **arms_extra: Any) -> dict[str, Any]:
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(12)))
    off = {"enabled": False}
    return {
        "name": "tiny-flow",
        "model": {"source": str(model_dir)},
        "data": {"train": str(data), "held_out_size": 4, "max_length": 64},
        "arms": [{"name": "IT", "loss_mode": "it"}, {"name": "IM", "loss_mode": "im", **arms_extra}],
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "threads": 1},
        "evaluation": {
            "mmlu": off,
            "truthfulqa": off,
            "alpaca_eval": off,
            "humaneval": {"enabled": False},
            "overfitting": {"limit": 2, "options": {"max_new_tokens": 4}},
            "batch_size": 4,
        },
        "seeds": [0],
        "output_dir": str(tmp / "runs"),
        "report_dir": str(tmp / "reports"),
    }


@pytest.fixture(scope="module")
def cold_run(prefect_harness, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One cold run of the compare flow, never written to again (tests get their own copy: :func:`first_run`)."""
    from im_pipeline_flows.compare import compare_flow

    tmp = tmp_path_factory.mktemp("flow")
    cfg = tiny_config(tmp, tiny_model_dir)
    return {"tmp": tmp, "cfg": cfg, "root": tmp / "runs" / "tiny-flow", "summary": compare_flow(cfg)}


@pytest.fixture
def first_run(cold_run: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A private copy of the cold run's run and report directories (its config points there), so that tests
    that re-run, edit or delete outputs are independent of each other and of their order."""
    import shutil

    shutil.copytree(cold_run["tmp"] / "runs", tmp_path / "runs")
    shutil.copytree(cold_run["tmp"] / "reports", tmp_path / "reports")
    cfg = {**cold_run["cfg"], "output_dir": str(tmp_path / "runs"), "report_dir": str(tmp_path / "reports")}
    return {"tmp": tmp_path, "cfg": cfg, "root": tmp_path / "runs" / "tiny-flow", "summary": cold_run["summary"]}


def test_compare_flow_end_to_end(cold_run: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary, root, tmp = cold_run["summary"], cold_run["root"], cold_run["tmp"]
    assert summary["failed"] == []
    for arm in ("IT", "IM"):
        rd = root / arm / "seed-0"
        assert (rd / "checkpoint" / "config.json").is_file()
        assert json.loads((rd / "train_summary.json").read_text())["arm"] == arm
        ov = json.loads((rd / "eval" / "overfitting.json").read_text())
        assert ov["status"] == "ok" and ov["metric"] == "bleu4" and ov["train_loss"] > 0
    assert json.loads((root / "base" / "eval" / "overfitting.json").read_text())["arm"] == "base"
    assert {"train.jsonl", "held_out.jsonl", "data_stats.json"} <= {p.name for p in (root / "data").iterdir()}
    report = Path(summary["report"])
    assert report == tmp / "reports" / "tiny-flow" / "REPORT.md"
    text = report.read_text()
    assert "# IT vs IM: tiny-flow" in text and "| Memorisation (BLEU-4 vs training outputs) |" in text
    assert (report.parent / "figures" / "loss_curves.png").is_file()
    stages = summary["timings"]["stages"]
    assert stages["train"]["computed"] == 2 and stages["evaluate"]["computed"] == 3
    timings = json.loads((root / "timings.json").read_text())["runs"][-1]
    assert timings["total_seconds"] > 0 and set(timings["stages"]) == {"prepare", "train", "evaluate", "report"}

    async def _artifacts() -> set[str]:
        async with get_client() as client:
            keys = ["tiny-flow-report", "tiny-flow-comparison", "tiny-flow-progress"]
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
            return {a.key for a in arts}

    import asyncio

    assert asyncio.run(_artifacts()) == {"tiny-flow-report", "tiny-flow-comparison", "tiny-flow-progress"}
    # the UI shows the run by experiment name + time, with tags, and clean task run names
    run, task_names, report_md = asyncio.run(_flow_run_and_tasks("tiny-flow"))
    assert re.fullmatch(r"tiny-flow \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", run.name)
    assert {"im-pipeline", "experiment:tiny-flow", "arm:IT", "arm:IM"} <= set(run.tags)
    assert f"model:{Path(cold_run['cfg']['model']['source']).name}" in run.tags
    assert task_names == {
        "prepare data",
        "train IT seed 0",
        "train IM seed 0",
        "eval overfitting base",
        "eval overfitting IT seed 0",
        "eval overfitting IM seed 0",
        "report",
    }
    # the report artifact carries its figures inline (the UI cannot follow relative links)
    assert "](figures/" not in report_md
    assert "![loss curves](data:image/png;base64,iVBORw0KGgo" in report_md


async def _flow_run_and_tasks(experiment: str) -> tuple[Any, set[str], str]:
    """The latest flow run carrying ``experiment:<experiment>``, its task run names and its report artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"experiment:{experiment}"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{experiment}-report"])),
        )
        return runs[0], {t.name for t in tasks}, arts[0].data


def test_rerun_recomputes_nothing_but_the_report(first_run: dict[str, Any]) -> None:
    from im_pipeline_flows.compare import compare_flow

    root = first_run["root"]
    files = [*root.glob("*/seed-0/train_summary.json"), *root.glob("*/*/eval/*.json"), *root.glob("base/eval/*.json")]
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = compare_flow(first_run["cfg"])
    st = again["timings"]["stages"]
    assert again["failed"] == []
    assert st["train"]["computed"] == 0 and st["evaluate"]["computed"] == 0 and st["prepare"]["computed"] == 0
    assert st["train"]["cached"] == 2 and st["evaluate"]["cached"] == 3 and st["report"]["computed"] == 1
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_force_and_rerun_replace_units_whose_stamps_match(first_run: dict[str, Any]) -> None:
    """--rerun eval recomputes every benchmark and no training; --rerun train retrains (from nothing) and so
    evaluates the retrained arms again; --rerun data prepares the same data again and nothing else."""
    from im_pipeline_flows.compare import compare_flow

    def computed(config: Any = first_run["cfg"], **kw: Any) -> dict[str, int]:
        summary = compare_flow(config, **kw)
        assert summary["failed"] == []
        return {stage: v["computed"] for stage, v in summary["timings"]["stages"].items()}

    assert computed(rerun=["eval"]) == {"prepare": 0, "train": 0, "evaluate": 3, "report": 1}
    assert computed(rerun=["data"]) == {"prepare": 1, "train": 0, "evaluate": 0, "report": 1}
    summary = first_run["root"] / "IT" / "seed-0" / "train_summary.json"
    before = summary.stat().st_mtime_ns
    assert computed(rerun=["train"]) == {"prepare": 0, "train": 2, "evaluate": 2, "report": 1}
    assert summary.stat().st_mtime_ns != before
    # a loaded config (what `im-pipeline run` passes: validated once, before the flow) is taken as it is
    assert computed(config_from_dict(first_run["cfg"])) == {"prepare": 0, "train": 0, "evaluate": 0, "report": 1}


@pytest.mark.slow
def test_changing_one_arm_recomputes_only_that_arm(first_run: dict[str, Any]) -> None:
    from im_pipeline_flows.compare import compare_flow

    root = first_run["root"]
    it_summary, im_summary = (root / a / "seed-0" / "train_summary.json" for a in ("IT", "IM"))
    before = {p: p.stat().st_mtime_ns for p in (it_summary, im_summary)}
    im = {"name": "IM", "loss_mode": "im", "neftune_alpha": 5.0}
    changed = {**first_run["cfg"], "arms": [first_run["cfg"]["arms"][0], im]}
    third = compare_flow(changed)
    st = third["timings"]["stages"]
    assert st["train"]["computed"] == 1 and st["evaluate"]["computed"] == 1
    assert it_summary.stat().st_mtime_ns == before[it_summary]
    assert im_summary.stat().st_mtime_ns != before[im_summary]
    assert json.loads(im_summary.read_text())["neftune_alpha"] == 5.0

    # a deleted result is recomputed (its stamp still matches, but the output is gone)
    (root / "IT" / "seed-0" / "eval" / "overfitting.json").unlink()
    fourth = compare_flow(changed)
    assert fourth["timings"]["stages"]["evaluate"]["computed"] == 1
    assert (root / "IT" / "seed-0" / "eval" / "overfitting.json").is_file()


def test_cache_keys_are_per_arm(tmp_path: Path, tiny_model_dir: Path) -> None:
    from im_pipeline.runs.staleness import eval_key, train_key

    a = config_from_dict(tiny_config(tmp_path, tiny_model_dir))
    b = config_from_dict(tiny_config(tmp_path, tiny_model_dir, kl_coef=0.1))
    assert train_key(a, a.arm("IT"), 0, "h") == train_key(b, b.arm("IT"), 0, "h")
    assert train_key(a, a.arm("IM"), 0, "h") != train_key(b, b.arm("IM"), 0, "h")
    assert train_key(a, a.arm("IT"), 0, "h") != train_key(a, a.arm("IT"), 1, "h")
    assert train_key(a, a.arm("IT"), 0, "h") != train_key(a, a.arm("IT"), 0, "other-data")
    # an evaluation key follows its model and its own benchmark settings only
    k = train_key(a, a.arm("IT"), 0, "h")
    ov = a.evaluation.overfitting
    assert eval_key(a, k, "overfitting", ov, "h") == eval_key(b, k, "overfitting", b.evaluation.overfitting, "h")
    c = config_from_dict({**tiny_config(tmp_path, tiny_model_dir), "name": "renamed"})
    assert train_key(a, a.arm("IT"), 0, "h") == train_key(c, c.arm("IT"), 0, "h")


def test_transient_errors_only_are_retried() -> None:
    from im_pipeline_tasks.common import is_transient

    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError("x")) and not is_transient(ValueError("bad"))
    assert not is_transient(RuntimeError("bug"))


def test_without_training_data_only_the_base_model_is_evaluated(
    prefect_harness, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from im_pipeline_flows.compare import compare_flow

    monkeypatch.delenv("IM_PIPELINE_DATA_DIR", raising=False)
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg.update(name="no-data", data={**cfg["data"], "train": "lima"}, data_dir=None)
    summary = compare_flow(cfg)
    root = tmp_path / "runs" / "no-data"
    assert summary["failed"] == []
    assert summary["timings"]["stages"]["train"]["computed"] == 0
    assert not (root / "IT").exists() and not (root / "data" / "train.jsonl").exists()
    assert "lima" in json.loads((root / "data" / "unavailable.json").read_text())["reason"]
    base = json.loads((root / "base" / "eval" / "overfitting.json").read_text())
    assert base["status"] == "skipped"
    text = Path(summary["report"]).read_text()
    assert "**Training (IT, IM)**: training set `lima` unavailable" in text
    assert "Training data unavailable:" in text


def test_a_failed_arm_does_not_stop_the_others(
    prefect_harness, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import im_pipeline.training as training
    from im_pipeline_flows.compare import compare_flow

    real = training.train_arm

    def flaky(cfg, arm, *args, **kwargs):
        if arm.name == "IM":
            raise RuntimeError("simulated crash in IM training")
        return real(cfg, arm, *args, **kwargs)

    monkeypatch.setattr(training, "train_arm", flaky)
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg.update(name="one-fails")
    cfg["evaluation"]["evaluate_base"] = False
    state = compare_flow(cfg, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("2 task run(s) failed: evaluate/IM/0/overfitting, train/IM/0; report: ")
    with pytest.raises(TaskRunsFailed) as raised:  # a direct call raises, carrying the summary
        state.result()
    summary = raised.value.summary
    assert summary["failed"] == ["evaluate/IM/0/overfitting", "train/IM/0"]
    root = tmp_path / "runs" / "one-fails"
    assert (root / "IT" / "seed-0" / "eval" / "overfitting.json").is_file()
    assert not (root / "IM" / "seed-0" / "train_summary.json").exists()
    text = Path(summary["report"]).read_text()
    assert "| IT | 0 |" in text  # the report is still built from what finished
    # ... and lists each failure with its error
    failures = text.split("## Failed task runs", 1)[1].split("## ", 1)[0]
    assert "- `train/IM/0` (Failed): RuntimeError: simulated crash in IM training" in failures
    assert "- `evaluate/IM/0/overfitting` (" in failures
    assert "flow run ended **Failed**" in failures


def test_each_unit_has_its_own_model_cache(
    prefect_harness, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Units never hand each other a loaded model: every unit's evaluations get their own ModelCache."""
    import im_pipeline.evaluation.common as evaluation
    from im_pipeline_flows.compare import compare_flow

    real, seen = evaluation.run_benchmark, []

    def spy(name, ctx, cfg):
        out = real(name, ctx, cfg)
        seen.append((ctx.arm, id(ctx.cache), id(ctx.model_and_tokenizer()[0])))
        return out

    monkeypatch.setattr(evaluation, "run_benchmark", spy)
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg.update(name="own-caches")
    assert compare_flow(cfg)["failed"] == []
    assert sorted(a for a, _, _ in seen) == ["IM", "IT", "base"]
    assert len({c for _, c, _ in seen}) == 3 and len({m for _, _, m in seen}) == 3
    result = json.loads((tmp_path / "runs" / "own-caches" / "IT" / "seed-0" / "eval" / "overfitting.json").read_text())
    assert result["host"] and result["pid"] > 0


def test_model_cache_loads_once_per_identity_and_is_per_object() -> None:
    import threading

    from im_pipeline.evaluation.common import ModelCache

    loads: list[str] = []

    def loader(tag: str):
        def load():
            loads.append(tag)
            return (object(), tag)

        return load

    shared = ModelCache()
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(shared.model(("m", "k"), loader("a")))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["a"] and len({id(g) for g in got}) == 1  # one load, one object, under concurrent use
    other = ModelCache()
    assert other.model(("m", "k"), loader("b")) is not got[0]  # another unit: its own model
    assert shared.model(("m", "k2"), loader("c"))[1] == "c" and loads == ["a", "b", "c"]  # new identity: reload
    assert shared.judge("j", loader("j1")) is shared.judge("j", loader("j2")) and loads[-1] == "j1"
    # other per-unit state: built once per unit and key, never seen by another unit, dropped by clear()
    first = shared.state("env", dict)
    first["x"] = 1
    assert shared.state("env", dict) is first and shared.state("other", dict) is not first
    assert other.state("env", dict) == {}
    shared.clear()
    assert shared.state("env", dict) == {}


@pytest.mark.slow
def test_study_run_saves_results_rebuilds_identically_and_resumes(
    prefect_harness, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A pre-registered study (per-seed samples, an lr-scaled control, save_results): its report leads with the
    hypotheses; the committed results rebuild a byte-identical REPORT.md; a fresh run directory resumes from them."""
    import shutil
    import time

    from im_pipeline.report.build import build_report
    from im_pipeline_flows.compare import compare_flow

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(20)))
    off = {"enabled": False}
    cfg = {
        "name": "tiny-study",
        "model": {"source": str(tiny_model_dir)},
        "data": {"train": str(data), "n": 6, "held_out_size": 5, "per_seed": True, "max_length": 64},
        "arms": [
            {"name": "IT", "loss_mode": "it"},
            {"name": "IM", "loss_mode": "im_release"},
            {"name": "IT-lr", "loss_mode": "it", "lr_scale": "output_over_im_release"},
        ],
        "training": {"epochs": 1, "batch_size": 3, "learning_rate": 1e-3, "threads": 1, "report_to": []},
        "evaluation": {
            "mmlu": off,
            "truthfulqa": off,
            "alpaca_eval": off,
            "humaneval": off,
            "evaluate_base": False,
            "overfitting": {"limit": 6, "options": {"max_new_tokens": 3, "loss_examples": 6}},
            "batch_size": 6,
        },
        "study": {
            "controls": ["IT-lr"],
            "resamples": 1000,
            "scope": "A tiny random model.",
            "hypotheses": [
                {"id": "H1", "metric": "train_loss", "direction": "greater", "text": "train loss higher"},
                {"id": "H2", "metric": "test_loss", "direction": "less", "text": "test loss lower"},
                {"id": "H3", "metric": "bleu4", "direction": "less", "text": "BLEU lower"},
            ],
        },
        "save_results": True,
        "seeds": [0, 1],
        "output_dir": str(tmp_path / "runs"),
        "report_dir": str(tmp_path / "reports"),
    }
    summary = compare_flow(cfg, command_started=time.time() - 12.5)  # as `im-pipeline run` calls it
    assert summary["failed"] == []
    assert summary["timings"]["command_seconds"] >= 12.5
    root, report_dir = tmp_path / "runs" / "tiny-study", tmp_path / "reports" / "tiny-study"
    results = report_dir / "results"
    # per seed its own training sample and a disjoint test sample
    ov = {s: json.loads((root / "IT" / f"seed-{s}" / "eval" / "overfitting.json").read_text()) for s in (0, 1)}
    for s in (0, 1):
        train_ids, test_ids = set(ov[s]["items"]["train_loss"]), set(ov[s]["items"]["test_loss"])
        assert len(train_ids) == 6 and len(test_ids) == 5 and not train_ids & test_ids
        assert set(ov[s]["items"]["bleu4"]) == train_ids  # BLEU for every training prompt of the seed
    assert set(ov[0]["items"]["train_loss"]) != set(ov[1]["items"]["train_loss"])
    # the control's learning rate, from its seed's sample
    lr = json.loads((root / "IT-lr" / "seed-1" / "train_summary.json").read_text())
    assert lr["learning_rate"] == pytest.approx(1e-3 * lr["lr_scale_tokens"]["ratio"])
    # small files only, in the run directory's layout
    saved = {p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()}
    assert {"config.yaml", "timings.json", "data/data_stats.json", "IT-lr/seed-1/eval/overfitting.json"} <= saved
    assert not any("checkpoint" in p or (p.endswith(".jsonl") and "data/" in p) for p in saved)
    text = (report_dir / "REPORT.md").read_text()
    assert text.index("## Pre-registered hypotheses") < text.index("## Results")
    assert "Learning rate of `IT-lr`: 0.001 scaled by Σ output tokens / Σ `im_release` target tokens" in text
    assert f"seed 1: × {lr['lr_scale_tokens']['ratio']:.4f}" in text
    assert "Nothing here is claimed beyond this model" in text
    assert "`IT-lr` (loss_mode `it`, lr_scale=output_over_im_release)" in text
    # the committed results rebuild the same report, byte for byte
    build_report(results, tmp_path / "rebuilt")
    assert (tmp_path / "rebuilt" / "REPORT.md").read_bytes() == (report_dir / "REPORT.md").read_bytes()
    assert not (tmp_path / "rebuilt" / "results").exists()
    # a later session without the run directory: finished units come back from the results, nothing is retrained
    shutil.rmtree(tmp_path / "runs")
    again = compare_flow(cfg)
    assert again["failed"] == []
    assert again["timings"]["stages"]["train"]["computed"] == 0
    assert again["timings"]["stages"]["evaluate"]["computed"] == 0


def test_max_workers_is_read_when_a_flow_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both flows' task runners take their size when a flow run starts: the loaded config's
    orchestration.max_workers when `im-pipeline run` passes it, else $IM_PIPELINE_MAX_WORKERS, else 1."""
    from im_pipeline_flows.compare import SettingsTaskRunner, compare_flow, unit_flow

    def size(runner: SettingsTaskRunner) -> int:
        with runner.duplicate() as entered:  # what a flow run does with its flow's runner
            return entered.max_workers

    monkeypatch.delenv("IM_PIPELINE_MAX_WORKERS", raising=False)
    assert size(compare_flow.task_runner) == size(unit_flow.task_runner) == 1
    monkeypatch.setenv("IM_PIPELINE_MAX_WORKERS", "3")
    assert size(compare_flow.task_runner) == size(unit_flow.task_runner) == 3
    assert size(SettingsTaskRunner(2)) == 2  # the config's value, passed by `im-pipeline run`


def test_the_flow_resolves_its_config_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A loaded config is taken as it is; a mapping (a deployment's parameter) gets the settings folded in. Prefect
    does not validate the parameter itself (it would build an ExperimentConfig without the settings)."""
    from im_pipeline_flows.compare import compare_flow
    from im_pipeline_flows.records import experiment_name, resolve_config

    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path))
    assert compare_flow.should_validate_parameters is False
    assert resolve_config({"name": "x"}).data_dir == str(tmp_path.resolve())
    loaded = config_from_dict({"name": "x"})
    assert resolve_config(loaded) is loaded
    assert resolve_config(loaded, ["seeds=[1]"]).seeds == [1]
    path = tmp_path / "exp.yaml"
    path.write_text("name: from-yaml\nseeds: [0]\n")
    assert experiment_name(str(path)) == "from-yaml" and experiment_name(loaded, ["name=y"]) == "y"


def test_prefect_caches_no_task() -> None:
    """Whether a unit is done is the unit layer's question alone: no task has a Prefect cache policy, key
    function or persisted result that could answer it (or hash the unit's model cache, which cannot be hashed)."""
    from prefect.cache_policies import NO_CACHE

    from im_pipeline_tasks.evaluate import evaluate_task
    from im_pipeline_tasks.prepare import prepare_data_task
    from im_pipeline_tasks.report import report_task, save_results_task
    from im_pipeline_tasks.train import train_task

    for t in (prepare_data_task, train_task, evaluate_task, report_task, save_results_task):
        assert (t.cache_policy, t.cache_key_fn, t.persist_result) == (NO_CACHE, None, None), t.name


def test_compare_flow_parameters_are_typed_for_the_ui() -> None:
    """The run form of a deployment shows the config's fields: the flow's parameter schema references the
    ExperimentConfig model with every section and field (with their descriptions), beside the YAML path."""
    from prefect.utilities.callables import parameter_schema

    from im_pipeline.config import ExperimentConfig
    from im_pipeline_flows.compare import compare_flow

    schema = parameter_schema(compare_flow).model_dump_for_openapi()
    assert schema["properties"]["config"]["anyOf"] == [{"$ref": "#/definitions/ExperimentConfig"}, {"type": "string"}]
    top = schema["definitions"]["ExperimentConfig"]["properties"]
    assert set(top) == set(ExperimentConfig.model_fields)
    epochs = schema["definitions"]["TrainingConfig"]["properties"]["epochs"]
    assert epochs["default"] == ExperimentConfig.model_fields["training"].default_factory().epochs
    assert epochs["description"].startswith("Training epochs")
    assert schema["properties"]["overrides"]["anyOf"][0] == {"items": {"type": "string"}, "type": "array"}
