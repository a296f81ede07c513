"""MMLU and TruthfulQA (mc2) through lm-evaluation-harness, online or offline.

Scoring is lm-eval's own: the already-loaded model is wrapped in ``lm_eval.models.huggingface.HFLM``
and evaluated with ``lm_eval.simple_evaluate``. Two task sources:

* ``hub``: lm-eval's standard tasks (``mmlu_<subject>``, ``truthfulqa_mc2``), which download their
  datasets from the Hugging Face Hub.
* ``local``: the project's task YAMLs (``im_pipeline/evaluation/tasks/``) that ``include:`` the
  installed standard task YAML and swap only the dataset for the local files in the data directory
  (``<data_dir>/mmlu/{dev,test}/<subject>_{dev,test}.csv``, ``<data_dir>/truthfulqa/mc_task.json``).
  Prompts, few-shot sampling and metrics are therefore the standard ones. The data directory is only
  known at run time, so the YAMLs are filled in and written to a temporary include path per run and
  loaded with ``TaskManager(include_path=..., include_defaults=False)`` (no 15 s index of every
  built-in task).

``source: auto`` (the default) uses the Hub when ``HF_HUB_OFFLINE`` is unset and huggingface.co is
reachable, else the local files.

Options (``BenchmarkConfig.options``):

* MMLU: ``num_fewshot`` (0 or 5; shots from the dev split), ``subjects`` (list, or comma-separated
  string, to restrict subjects), ``apply_chat_template`` (bool), ``source`` (auto | hub | local).
  ``limit`` is per subject.
* TruthfulQA: ``apply_chat_template``, ``source``; ``limit`` is the number of questions.
"""

from __future__ import annotations

import contextvars
import copy
import json
import logging
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, cast

from im_pipeline import hub
from im_pipeline.config import DATA_DIR_ENV, BenchmarkConfig
from im_pipeline.config.base import data_dir_of
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext
from im_pipeline.evaluation.lm_eval_data import (
    lm_eval_tasks_dir,
    mmlu_file,
    read_mmlu_csv,
    read_truthfulqa,
    standard_mmlu_subjects,
)
from im_pipeline.evaluation.specs import get_spec
from im_pipeline.evaluation.specs.mmlu import MMLUOptions
from im_pipeline.evaluation.specs.truthfulqa import TruthfulQAOptions

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
MMLU_GROUP = "im_pipeline_mmlu"
LM_EVAL_DIR = "lm_eval"  # lm-eval's own results JSON + samples, per benchmark, beside <benchmark>.json
TRUTHFULQA_LOCAL_TASK = "truthfulqa_mc2_local"


class _QuietCustomDataset(logging.Filter):
    """Drops lm-eval's per-task hint about passing kwargs to a ``custom_dataset`` (one line per MMLU subject)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


# -- task definitions --------------------------------------------------------------------------


def _fill(template: str, out: Path, **values: str) -> Path:
    """Fill a task YAML template (values JSON-quoted, valid YAML scalars) and write it to ``out``."""
    text = string.Template((TASKS_DIR / template).read_text(encoding="utf-8"))
    out.write_text(text.substitute({k: json.dumps(v) for k, v in values.items()}), encoding="utf-8")
    return out


def write_local_mmlu_tasks(data_dir: Path, subjects: list[str], out_dir: Path) -> list[str]:
    """Write one offline task YAML per subject into ``out_dir``; returns the task names."""
    std = lm_eval_tasks_dir() / "mmlu" / "default"
    names = []
    for subject in subjects:
        name = f"mmlu_local_{subject}"
        _fill(
            "mmlu_local_subject.yaml",
            out_dir / f"{name}.yaml",
            include=str(std / f"mmlu_{subject}.yaml"),
            task=name,
            subject=subject,
            data_dir=str(data_dir),
            dataset_path=str(Path(data_dir) / "mmlu"),
        )
        names.append(name)
    return names


def write_local_truthfulqa_task(data_dir: Path, out_dir: Path) -> str:
    """Write the offline ``truthfulqa_mc2`` task YAML into ``out_dir``; returns the task name."""
    _fill(
        "truthfulqa_mc2_local.yaml",
        out_dir / f"{TRUTHFULQA_LOCAL_TASK}.yaml",
        include=str(lm_eval_tasks_dir() / "truthfulqa" / "truthfulqa_mc2.yaml"),
        task=TRUTHFULQA_LOCAL_TASK,
        dataset_path=str(Path(data_dir) / "truthfulqa" / "mc_task.json"),
    )
    return TRUTHFULQA_LOCAL_TASK


# -- running ----------------------------------------------------------------------------------


def _data_hint(layout: str) -> str:
    return (
        f"pass --data-dir DIR (or set ${DATA_DIR_ENV} / the config's data_dir) to a directory holding {layout}; "
        "or evaluate online (HF_HUB_OFFLINE unset, huggingface.co reachable) with the standard lm-eval task"
    )


def _source(source: str) -> str:
    """``source`` ("auto" | "hub" | "local", checked by the spec's options) with "auto" resolved."""
    if source == "auto":
        return "hub" if hub.hub_reachable() else "local"
    return source


def _data_dir(ctx: EvalContext, benchmark: str, layout: str) -> Path:
    path = data_dir_of(ctx.data_dir)
    if path is None:
        raise BenchmarkSkipped(
            f"{benchmark}: offline (Hub unreachable or HF_HUB_OFFLINE set) and no data directory; " + _data_hint(layout)
        )
    return path


# lm-eval's simple_evaluate ends with ``add_env_info(results)``: torch's collect_env, which runs ``pip list`` and a
# dozen more subprocesses (1-2 s on 2 cores), for every call, although its answer cannot change within a process.
# lm-eval offers no switch, so the function is wrapped once: inside _evaluate the unit's report (kept on the unit's
# ModelCache, filled by lm-eval's own add_env_info on the unit's first call) is copied in instead. The ContextVar
# says which unit's report belongs to the running call (each thread has its own); outside _evaluate nothing changes.
_UNIT_ENV_INFO: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("lm_eval_env_info", default=None)


def _install_env_info_hook() -> None:
    import lm_eval.evaluator as evaluator

    if getattr(evaluator.add_env_info, "im_pipeline_hook", False):
        return
    original = evaluator.add_env_info

    def add_env_info(storage: dict[str, Any]) -> None:
        unit = _UNIT_ENV_INFO.get()
        if unit is None:
            original(storage)
            return
        if not unit:
            original(unit)
        storage.update(unit)

    add_env_info.im_pipeline_hook = True  # type: ignore[attr-defined]
    evaluator.add_env_info = add_env_info


def _evaluate(
    ctx: EvalContext,
    tasks: list[Any],
    *,
    include_path: Path | None,
    include_defaults: bool,
    num_fewshot: int | None,
    limit: int | None,
    apply_chat_template: bool,
    save_as: str,
) -> dict[str, Any]:
    """Run lm-eval on the context's (already loaded) model; returns simple_evaluate's result dict.

    lm-eval's own output (``results_<date>.json`` and ``samples_<task>_<date>.jsonl``, written by its
    ``EvaluationTracker`` as ``lm_eval --output_path --log_samples`` would) is kept beside the project's
    result, in ``<out_dir>/lm_eval/<save_as>/``; ``results["lm_eval_output"]`` names that directory.
    """
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = ctx.model_and_tokenizer()
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"apply_chat_template=true but the tokenizer of {ctx.model_source} has no chat template")
    # include_defaults=True indexes all built-in task YAMLs (~15 s); only needed for the standard tasks.
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)
    out = Path(ctx.out_dir) / LM_EVAL_DIR / save_as
    shutil.rmtree(out, ignore_errors=True)  # one evaluation's files, not a history
    tracker = EvaluationTracker(output_path=str(out))
    results = _simple_evaluate(
        ctx,
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=ctx.batch_size),
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=apply_chat_template,
        log_samples=True,  # per-item scores, so arms can be compared item by item (paired statistics)
        bootstrap_iters=1000,
        evaluation_tracker=tracker,
    )
    _save_lm_eval_output(tracker, results)
    results["lm_eval_output"] = f"{LM_EVAL_DIR}/{save_as}"
    return results


def _simple_evaluate(ctx: EvalContext, **kwargs: Any) -> dict[str, Any]:
    """``lm_eval.simple_evaluate(**kwargs)`` with the unit's environment report (see :data:`_UNIT_ENV_INFO`) and
    without lm-eval's custom_dataset hint per task."""
    import lm_eval

    quiet, task_log = _QuietCustomDataset(), logging.getLogger("lm_eval.api.task")
    task_log.addFilter(quiet)
    _install_env_info_hook()
    unit_env = _UNIT_ENV_INFO.set(ctx.cache.state("lm_eval_env_info", dict))
    try:
        results = lm_eval.simple_evaluate(**kwargs)
    finally:
        _UNIT_ENV_INFO.reset(unit_env)
        task_log.removeFilter(quiet)
    if results is None:  # only for non-zero ranks in distributed runs
        raise RuntimeError("lm-eval returned no results")
    return results


def _save_lm_eval_output(tracker: Any, results: dict[str, Any]) -> None:
    """lm-eval's results JSON and per-task samples, written by its tracker (as ``lm_eval --log_samples`` does)."""
    # lm-eval's writers change what they are given (hashes added, samples sanitised): give them copies
    saved = copy.deepcopy({k: v for k, v in results.items() if k != "samples"})
    samples = copy.deepcopy(results.get("samples") or {})
    tracker.save_results_aggregated(results=saved, samples=samples)
    for task_name in saved.get("configs", {}):
        if task_name in samples:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])


def _metric(results: dict[str, Any], task: str, metric: str) -> tuple[float, float | None]:
    row = results["results"][task]
    value = row[f"{metric},none"]
    stderr = row.get(f"{metric}_stderr,none")
    return float(value), (float(stderr) if isinstance(stderr, (int, float)) else None)


def _items(results: dict[str, Any], task: str, metric: str, prefix: str = "") -> dict[str, float]:
    """Per-item scores from lm-eval's logged samples: ``{prefix + doc_id: metric value}``."""
    samples = (results.get("samples") or {}).get(task) or []
    return {f"{prefix}{s['doc_id']}": float(s[metric]) for s in samples if metric in s}


def _n(results: dict[str, Any], task: str) -> int:
    return int(results["n-samples"][task]["effective"])


def _subjects(chosen: list[str] | str | None) -> list[str]:
    known = standard_mmlu_subjects()
    if chosen is None:
        return known
    if isinstance(chosen, str):
        chosen = [s.strip() for s in chosen.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        raise ValueError(f"mmlu: unknown subject(s) {unknown or chosen}; known: {', '.join(known)}")
    return sorted(set(chosen), key=chosen.index)


def run_mmlu(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """MMLU accuracy (lm-eval), 0- or 5-shot, ``cfg.limit`` questions per subject.

    Returns metric "acc", value (micro-average over the items scored, as lm-eval's ``mmlu`` group),
    stderr (pooled), n, and a per-subject breakdown.
    """
    opts = cast(MMLUOptions, get_spec("mmlu").validate_options(cfg.options))
    num_fewshot, chat = opts.num_fewshot, opts.apply_chat_template
    subjects = _subjects(opts.subjects)
    source = _source(opts.source)

    with tempfile.TemporaryDirectory(prefix="im-pipeline-mmlu-") as tmp:
        include_path = Path(tmp)
        if source == "hub":
            task_of = {s: f"mmlu_{s}" for s in subjects}
        else:
            data_dir = _data_dir(ctx, "mmlu", "mmlu/{dev,test}/<subject>_{dev,test}.csv")
            for subject in subjects:  # fail before loading the model, naming the file
                for split in ("test", "dev"):
                    path = mmlu_file(data_dir, subject, split)
                    if not path.is_file():
                        layout = "mmlu/{dev,test}/<subject>_{dev,test}.csv"
                        raise BenchmarkSkipped(f"mmlu: local file missing: {path}; {_data_hint(layout)}")
                    read_mmlu_csv(path, subject)
            task_of = dict(zip(subjects, write_local_mmlu_tasks(data_dir, subjects, include_path), strict=True))
        # A group file, not an inline dict: lm-eval 0.4.13 passes an inline group's keys on to its tasks.
        _fill("mmlu_group.yaml", Path(tmp) / "mmlu_group.yaml", group=MMLU_GROUP, tasks=list(task_of.values()))
        log.info("mmlu (%s): %d subjects, %d-shot, limit %s per subject", source, len(subjects), num_fewshot, cfg.limit)
        results = _evaluate(
            ctx,
            [MMLU_GROUP],
            include_path=include_path,
            include_defaults=source == "hub",
            num_fewshot=num_fewshot,
            limit=cfg.limit,
            apply_chat_template=chat,
            save_as="mmlu",
        )

    per_subject, items = {}, {}
    for subject, task in task_of.items():
        value, stderr = _metric(results, task, "acc")
        per_subject[subject] = {"acc": value, "stderr": stderr, "n": _n(results, task)}
        items.update(_items(results, task, "acc", prefix=f"{subject}/"))
    value, stderr = _metric(results, MMLU_GROUP, "acc")
    return {
        "metric": "acc",
        "value": value,
        "stderr": stderr,
        "n": sum(s["n"] for s in per_subject.values()),
        "num_fewshot": num_fewshot,
        "apply_chat_template": chat,
        "source": source,
        "tasks": "lm-eval mmlu_<subject>" if source == "hub" else "lm-eval mmlu_<subject> with local data",
        "subjects": per_subject,
        "items": {"acc": items},
        "lm_eval_output": results["lm_eval_output"],
    }


def run_truthfulqa(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """TruthfulQA mc2 (lm-eval ``truthfulqa_mc2``, 0-shot with its QA primer) on ``cfg.limit`` questions."""
    opts = cast(TruthfulQAOptions, get_spec("truthfulqa").validate_options(cfg.options))
    chat = opts.apply_chat_template
    source = _source(opts.source)
    with tempfile.TemporaryDirectory(prefix="im-pipeline-truthfulqa-") as tmp:
        if source == "hub":
            include_path, task = None, "truthfulqa_mc2"
        else:
            data_dir = _data_dir(ctx, "truthfulqa", "truthfulqa/mc_task.json")
            path = data_dir / "truthfulqa" / "mc_task.json"
            if not path.is_file():
                raise BenchmarkSkipped(
                    f"truthfulqa: local file missing: {path}; {_data_hint('truthfulqa/mc_task.json')}"
                )
            read_truthfulqa(path)
            include_path = Path(tmp)
            task = write_local_truthfulqa_task(data_dir, include_path)
        log.info("truthfulqa_mc2 (%s): limit %s", source, cfg.limit)
        results = _evaluate(
            ctx,
            [task],
            include_path=include_path,
            include_defaults=source == "hub",
            num_fewshot=None,
            limit=cfg.limit,
            apply_chat_template=chat,
            save_as="truthfulqa",
        )
    value, stderr = _metric(results, task, "acc")
    return {
        "metric": "mc2",
        "value": value,
        "stderr": stderr,
        "n": _n(results, task),
        "apply_chat_template": chat,
        "source": source,
        "tasks": "lm-eval truthfulqa_mc2" if source == "hub" else "lm-eval truthfulqa_mc2 with local data",
        "items": {"mc2": _items(results, task, "acc")},
        "lm_eval_output": results["lm_eval_output"],
    }


__all__: list[str] = [
    "run_mmlu",
    "run_truthfulqa",
    "write_local_mmlu_tasks",
    "write_local_truthfulqa_task",
]
