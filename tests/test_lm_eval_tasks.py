"""MMLU and TruthfulQA through lm-eval, offline: task definitions, local data checks, tiny-model runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from im_pipeline.config import DATA_DIR_ENV, BenchmarkConfig
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext, run_benchmark
from im_pipeline.evaluation.lm_eval_data import (
    LocalDataError,
    lm_eval_tasks_dir,
    read_mmlu_csv,
    read_truthfulqa,
    standard_mmlu_subjects,
)
from im_pipeline.evaluation.lm_eval_tasks import (
    run_mmlu,
    run_truthfulqa,
    write_local_mmlu_tasks,
    write_local_truthfulqa_task,
)

SUBJECTS = ["anatomy", "astronomy"]
HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


@pytest.fixture(scope="module")
def lm_eval_mod():
    """Import lm-eval once per module (slow import)."""
    import lm_eval
    import lm_eval.models.huggingface
    import lm_eval.tasks

    return lm_eval


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _ctx(tmp_path: Path, data_dir: Path | None, loaded=None) -> EvalContext:
    # model_source does not exist: anything that tries to load the model (instead of failing early) errors.
    out = tmp_path / "eval"
    ctx = EvalContext(model_source="no-such-model", out_dir=out, data_dir=data_dir, batch_size=4)
    if loaded is not None:  # the unit already holds the model
        ctx.cache.model(ctx.model_identity, lambda: loaded)
    return ctx


def _write_mmlu(root: Path, subject: str, rows: list[list[str]], splits=("test", "dev")) -> None:
    for split in splits:
        path = root / "mmlu" / split / f"{subject}_{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HEADER)
            writer.writerows(rows)


# -- local data readers ------------------------------------------------------------------------


def test_read_mmlu_csv_maps_to_hub_fields(tmp_path: Path) -> None:
    _write_mmlu(tmp_path, "anatomy", [["What, exactly?", "a", "b, c", "d", "e", "2"], ["Q2", "1", "2", "3", "4", "0"]])
    docs = read_mmlu_csv(tmp_path / "mmlu" / "test" / "anatomy_test.csv", "anatomy")
    assert docs == [
        {"question": "What, exactly?", "subject": "anatomy", "choices": ["a", "b, c", "d", "e"], "answer": 2},
        {"question": "Q2", "subject": "anatomy", "choices": ["1", "2", "3", "4"], "answer": 0},
    ]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("q,a,b,c,d,answer\nQ,1,2,3,4,0\n", "header must be"),
        (",".join(HEADER) + "\nQ,1,2,3,4,4\n", "answer_test.csv:2: answer must be 0, 1, 2 or 3"),
        (",".join(HEADER) + "\nQ,1,2,3,0\n", "answer_test.csv:2: expected 6 fields, got 5"),
        (",".join(HEADER) + "\n", "no questions"),
    ],
)
def test_read_mmlu_csv_malformed_names_file(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "answer_test.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LocalDataError, match=r"answer_test\.csv") as err:
        read_mmlu_csv(path, "answer")
    assert needle in str(err.value)


def test_read_truthfulqa_keeps_answer_order(tmp_path: Path) -> None:
    path = tmp_path / "mc_task.json"
    item = {"question": "Q?", "mc1_targets": {"yes": 1, "no": 0}, "mc2_targets": {"a": 1, "b": 0, "c": 1}}
    path.write_text(json.dumps([item]), encoding="utf-8")
    assert read_truthfulqa(path) == [
        {
            "question": "Q?",
            "mc1_targets": {"choices": ["yes", "no"], "labels": [1, 0]},
            "mc2_targets": {"choices": ["a", "b", "c"], "labels": [1, 0, 1]},
        }
    ]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[{", "not valid JSON"),
        ("{}", "non-empty JSON list"),
        (
            json.dumps([{"question": "Q", "mc1_targets": {"a": 1}, "mc2_targets": {"a": 0}}]),
            "record 1: 'mc2_targets' has no true",
        ),
        (json.dumps([{"question": "Q", "mc1_targets": {"a": 1}}]), "record 1: 'mc2_targets' must be"),
        (json.dumps([{"mc1_targets": {"a": 1}, "mc2_targets": {"a": 1}}]), "record 1: needs a non-empty 'question'"),
    ],
)
def test_read_truthfulqa_malformed_names_file(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "mc_task.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LocalDataError, match=r"mc_task\.json") as err:
        read_truthfulqa(path)
    assert needle in str(err.value)


# -- errors and skips before any model is loaded -------------------------------------------------


def test_no_data_dir_offline_skips_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    for fn in (run_mmlu, run_truthfulqa):
        with pytest.raises(BenchmarkSkipped, match="--data-dir") as err:
            fn(_ctx(tmp_path, None), BenchmarkConfig(limit=1))
        assert DATA_DIR_ENV in str(err.value)


def test_missing_local_files_skip_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_mmlu(tmp_path, "anatomy", [["Q", "1", "2", "3", "4", "0"]], splits=("test",))  # no dev file
    cfg = BenchmarkConfig(limit=1, options={"subjects": ["anatomy"]})
    with pytest.raises(BenchmarkSkipped, match=r"mmlu/dev/anatomy_dev\.csv"):
        run_mmlu(_ctx(tmp_path, tmp_path), cfg)
    with pytest.raises(BenchmarkSkipped, match=r"truthfulqa/mc_task\.json"):
        run_truthfulqa(_ctx(tmp_path, tmp_path), BenchmarkConfig(limit=1))


def test_malformed_local_files_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_mmlu(tmp_path, "anatomy", [["Q", "1", "2", "3", "4", "D"]])
    with pytest.raises(LocalDataError, match=r"anatomy_test\.csv:2: answer must be"):
        run_mmlu(_ctx(tmp_path, tmp_path), BenchmarkConfig(limit=1, options={"subjects": "anatomy"}))
    bad = tmp_path / "truthfulqa" / "mc_task.json"
    bad.parent.mkdir()
    bad.write_text("not json", encoding="utf-8")
    with pytest.raises(LocalDataError, match=r"truthfulqa/mc_task\.json: not valid JSON"):
        run_truthfulqa(_ctx(tmp_path, tmp_path), BenchmarkConfig(limit=1))


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        run_mmlu(_ctx(tmp_path, tmp_path), BenchmarkConfig(options={"shots": 5}))
    with pytest.raises(ValueError, match="unknown subject"):
        run_mmlu(_ctx(tmp_path, tmp_path), BenchmarkConfig(options={"subjects": ["anatomy", "astrology"]}))
    with pytest.raises(ValueError, match="num_fewshot"):
        run_mmlu(_ctx(tmp_path, tmp_path), BenchmarkConfig(options={"num_fewshot": 6}))
    with pytest.raises(ValueError, match="source"):
        run_truthfulqa(_ctx(tmp_path, tmp_path), BenchmarkConfig(options={"source": "web"}))
    with pytest.raises(ValueError, match="truthfulqa: option apply_chat_template"):
        run_truthfulqa(_ctx(tmp_path, tmp_path), BenchmarkConfig(options={"apply_chat_template": "maybe"}))


def test_standard_subjects_are_the_57_of_lm_eval() -> None:
    subjects = standard_mmlu_subjects()
    assert len(subjects) == 57
    assert {"abstract_algebra", "world_religions", "high_school_us_history"} <= set(subjects)


# -- offline task definitions render exactly as the standard tasks ------------------------------


def _standard_task(yaml_path: Path, splits: dict[str, list[dict]]):
    """lm-eval's installed standard task, with its Hub dataset replaced by the given docs (no network)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(yaml_path)  # resolves include: and !function like the TaskManager does
    for key in ("tag", "group"):
        cfg.pop(key, None)
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict(
        {name: datasets.Dataset.from_list(docs) for name, docs in splits.items()}
    )
    return ConfigurableTask(config=cfg)


def _requests(task, num_fewshot: int, limit: int) -> list[tuple]:
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [(inst.doc_id, inst.arguments) for inst in task.instances]


def _hub_mmlu_rows(path: Path, subject: str) -> list[dict]:
    """cais/mmlu rows built straight from the CSV with the csv module (independent of read_mmlu_csv)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            {
                "question": r["question"],
                "subject": subject,
                "choices": [r[f"choice{i}"] for i in range(4)],
                "answer": int(r["answer"]),
            }
            for r in csv.DictReader(fh)
        ]


@pytest.mark.parametrize("num_fewshot", [0, 5])
def test_offline_mmlu_requests_match_standard_task(lm_eval_mod, data_dir: Path, tmp_path: Path, num_fewshot: int):
    from lm_eval.tasks import TaskManager

    subject = "astronomy"
    [name] = write_local_mmlu_tasks(data_dir, [subject], tmp_path)
    offline = TaskManager(include_path=str(tmp_path), include_defaults=False).load([name])["tasks"][name]
    standard = _standard_task(
        lm_eval_tasks_dir() / "mmlu" / "default" / f"mmlu_{subject}.yaml",
        {s: _hub_mmlu_rows(data_dir / "mmlu" / s / f"{subject}_{s}.csv", subject) for s in ("test", "dev")},
    )
    got, want = _requests(offline, num_fewshot, 3), _requests(standard, num_fewshot, 3)
    assert len(want) == 3 * 4  # 3 questions x 4 choices
    assert got == want
    context, continuation = want[0][1]
    assert context.startswith("The following are multiple choice questions (with answers) about astronomy.\n\n")
    assert context.endswith("\nAnswer:") and continuation == " A"
    assert context.count("Answer:") == num_fewshot + 1
    for key in (
        "description",
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "metric_list",
        "fewshot_split",
        "target_delimiter",
        "fewshot_delimiter",
        "output_type",
    ):
        assert offline.config[key] == standard.config[key], key


def test_offline_truthfulqa_requests_match_standard_task(lm_eval_mod, data_dir: Path, tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager

    name = write_local_truthfulqa_task(data_dir, tmp_path)
    offline = TaskManager(include_path=str(tmp_path), include_defaults=False).load([name])["tasks"][name]
    raw = json.loads((data_dir / "truthfulqa" / "mc_task.json").read_text(encoding="utf-8"))
    docs = [
        {"question": r["question"]}
        | {k: {"choices": list(r[k]), "labels": list(r[k].values())} for k in ("mc1_targets", "mc2_targets")}
        for r in raw
    ]
    standard = _standard_task(lm_eval_tasks_dir() / "truthfulqa" / "truthfulqa_mc2.yaml", {"validation": docs})
    got, want = _requests(offline, 0, 4), _requests(standard, 0, 4)
    assert got == want
    assert len(want) == sum(len(r["mc2_targets"]) for r in raw[:4])
    context, continuation = want[0][1]
    assert context.endswith(f"\n\nQ: {raw[0]['question']}\nA:")
    assert continuation == " " + next(iter(raw[0]["mc2_targets"]))
    assert offline.config.process_results.__qualname__ == "process_results_mc2"
    assert offline.config.process_results.__module__ == standard.config.process_results.__module__


# -- end to end on the tiny model ---------------------------------------------------------------


def test_mmlu_tiny_model_offline(lm_eval_mod, tiny, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx = _ctx(tmp_path, data_dir, loaded=tiny)
    cfg = BenchmarkConfig(limit=2, options={"subjects": SUBJECTS, "num_fewshot": 0})
    path = run_benchmark("mmlu", ctx, cfg)
    result = json.loads(path.read_text())
    assert path == tmp_path / "eval" / "mmlu.json"
    assert result["status"] == "ok" and result["benchmark"] == "mmlu" and result["metric"] == "acc"
    assert result["source"] == "local" and result["num_fewshot"] == 0 and result["apply_chat_template"] is False
    assert result["n"] == 4 and result["limit"] == 2
    assert sorted(result["subjects"]) == SUBJECTS
    per = result["subjects"].values()
    assert all(s["n"] == 2 and s["acc"] in (0.0, 0.5, 1.0) for s in per)
    # the group value is lm-eval's size-weighted mean of the subjects
    assert result["value"] == pytest.approx(sum(s["acc"] * s["n"] for s in per) / 4)
    assert result["stderr"] is not None and result["stderr"] >= 0
    # per-item correctness (lm-eval's logged samples), keyed subject/doc_id, for paired comparisons
    items = result["items"]["acc"]
    assert sorted(items) == sorted(f"{s}/{i}" for s in SUBJECTS for i in range(2))
    assert set(items.values()) <= {0.0, 1.0}
    assert sum(items.values()) / 4 == pytest.approx(result["value"])
    for key in ("wall_time_s", "git_commit", "versions", "model", "arm", "seed", "config_hash"):
        assert key in result
    # lm-eval's own output (as `lm_eval --output_path --log_samples` writes it) beside the result
    assert result["lm_eval_output"] == "lm_eval/mmlu"
    own = list((tmp_path / "eval" / "lm_eval" / "mmlu").rglob("results_*.json"))
    assert len(own) == 1
    theirs = json.loads(own[0].read_text())
    assert theirs["results"]["im_pipeline_mmlu"]["acc,none"] == pytest.approx(result["value"])
    assert "task_hashes" in theirs and "lm_eval_version" in theirs
    samples = sorted(p.name.split("_2")[0] for p in own[0].parent.glob("samples_*.jsonl"))
    assert len(samples) == len(SUBJECTS)
    first = own[0].parent / next(p.name for p in own[0].parent.glob("samples_*.jsonl"))
    assert len(first.read_text().splitlines()) == 2  # limit 2 per subject


def test_truthfulqa_tiny_model_offline(lm_eval_mod, tiny, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx = _ctx(tmp_path, data_dir, loaded=tiny)
    result = json.loads(run_benchmark("truthfulqa", ctx, BenchmarkConfig(limit=2)).read_text())
    assert result["status"] == "ok" and result["metric"] == "mc2" and result["source"] == "local"
    assert result["n"] == 2
    assert 0.0 < result["value"] < 1.0  # a probability mass over true answers, never exactly 0 or 1
    assert result["stderr"] is not None
    items = result["items"]["mc2"]
    assert sorted(items) == ["0", "1"] and sum(items.values()) / 2 == pytest.approx(result["value"])


def test_chat_template_needs_one(lm_eval_mod, tiny, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, tokenizer = tiny
    if getattr(tokenizer, "chat_template", None):
        pytest.skip("tiny tokenizer has a chat template")
    cfg = BenchmarkConfig(limit=1, options={"apply_chat_template": True})
    with pytest.raises(ValueError, match="no chat template"):
        run_truthfulqa(_ctx(tmp_path, data_dir, loaded=tiny), cfg)


def test_mmlu_with_chat_template(lm_eval_mod, tiny, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import copy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = tiny
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    cfg = BenchmarkConfig(limit=1, options={"subjects": "anatomy", "apply_chat_template": "true", "num_fewshot": 1})
    result = run_mmlu(_ctx(tmp_path, data_dir, loaded=(model, tokenizer)), cfg)
    assert result["apply_chat_template"] is True and result["n"] == 1 and result["value"] in (0.0, 1.0)


@pytest.mark.slow
def test_hub_and_local_definitions_give_the_same_scores(
    lm_eval_mod, tiny, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The standard tasks (source=hub, Hub download replaced by the local rows) and the offline tasks give identical
    results on the same model and items: same prompts, same scoring. Slow: indexes every built-in lm-eval task."""
    import datasets

    real_load = datasets.load_dataset

    def fake_hub(path, name=None, **kwargs):
        if path == "cais/mmlu":
            return datasets.DatasetDict(
                {
                    s: datasets.Dataset.from_list(_hub_mmlu_rows(data_dir / "mmlu" / s / f"{name}_{s}.csv", name))
                    for s in ("test", "dev")
                }
            )
        if path == "truthfulqa/truthful_qa" and name == "multiple_choice":
            raw = json.loads((data_dir / "truthfulqa" / "mc_task.json").read_text(encoding="utf-8"))
            docs = [
                {"question": r["question"]}
                | {k: {"choices": list(r[k]), "labels": list(r[k].values())} for k in ("mc1_targets", "mc2_targets")}
                for r in raw
            ]
            return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})
        return real_load(path, name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    ctx = _ctx(tmp_path, data_dir, loaded=tiny)
    for fn, opts, limit in ((run_mmlu, {"subjects": SUBJECTS, "num_fewshot": 1}, 3), (run_truthfulqa, {}, 3)):
        hub = fn(ctx, BenchmarkConfig(limit=limit, options={**opts, "source": "hub"}))
        local = fn(ctx, BenchmarkConfig(limit=limit, options={**opts, "source": "local"}))
        assert hub["source"] == "hub" and local["source"] == "local"
        for key in ("value", "stderr", "n", "subjects"):
            assert hub.get(key) == local.get(key), (fn.__name__, key)


def test_lm_eval_environment_report_built_once_per_unit(
    lm_eval_mod, tiny, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """torch's collect_env (a `pip list` and more subprocesses, 1-2 s) runs once per unit, not once per lm-eval call;
    lm-eval's own results file still carries the report."""
    import torch.utils.collect_env

    from im_pipeline.evaluation.common import ModelCache

    calls: list[int] = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: calls.append(1) or f"env {len(calls)}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = BenchmarkConfig(limit=1, options={"subjects": SUBJECTS[:1], "num_fewshot": 0})

    def ctx(out: str, unit: ModelCache) -> EvalContext:
        return EvalContext("no-such-model", tmp_path / out, data_dir=data_dir, batch_size=4, cache=unit)

    def holding_tiny() -> ModelCache:  # a unit that already holds the model
        unit = ModelCache()
        unit.model(ctx("", unit).model_identity, lambda: tiny)
        return unit

    unit = holding_tiny()
    run_benchmark("mmlu", ctx("a0", unit), cfg)
    run_benchmark("truthfulqa", ctx("a1", unit), BenchmarkConfig(limit=1))
    assert len(calls) == 1  # the unit's second lm-eval call reused the report
    for i in range(2):
        own = next((tmp_path / f"a{i}" / "lm_eval").rglob("results_*.json"))
        assert json.loads(own.read_text())["pretty_env_info"] == "env 1"
    run_benchmark("mmlu", ctx("b", holding_tiny()), cfg)  # another unit builds its own
    assert len(calls) == 2
    own = next((tmp_path / "b" / "lm_eval").rglob("results_*.json"))
    assert json.loads(own.read_text())["pretty_env_info"] == "env 2"
