"""MMLU and TruthfulQA from the data directory: readers used both to validate the files up front and as lm-eval's
custom_dataset (the task YAMLs name them)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


class LocalDataError(ValueError):
    """A local benchmark file is malformed. The message names the file (and line or record)."""


def lm_eval_tasks_dir() -> Path:
    """The directory of lm-eval's installed task YAMLs."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def standard_mmlu_subjects() -> list[str]:
    """The 57 subjects of lm-eval's standard ``mmlu`` group (from its installed YAMLs, no import of lm_eval)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise RuntimeError("lm_eval is not installed")
    default = Path(spec.origin).parent / "tasks" / "mmlu" / "default"
    return sorted(p.stem.removeprefix("mmlu_") for p in default.glob("mmlu_*.yaml"))


def mmlu_file(data_dir: Path, subject: str, split: str) -> Path:
    return Path(data_dir) / "mmlu" / split / f"{subject}_{split}.csv"


def read_mmlu_csv(path: Path, subject: str) -> list[dict[str, Any]]:
    """Read one local MMLU CSV into the fields of the Hub dataset ``cais/mmlu``.

    Expects the header ``question,choice0,choice1,choice2,choice3,answer`` and answers 0-3.
    Raises :class:`LocalDataError` naming the file and line for anything else.
    """
    path = Path(path)
    docs: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header != MMLU_HEADER:
                raise LocalDataError(f"{path}: header must be {','.join(MMLU_HEADER)!r}, got {header!r}")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != len(MMLU_HEADER):
                    raise LocalDataError(f"{path}:{line}: expected {len(MMLU_HEADER)} fields, got {len(row)}")
                question, *choices, answer = row
                if answer.strip() not in {"0", "1", "2", "3"}:
                    raise LocalDataError(f"{path}:{line}: answer must be 0, 1, 2 or 3, got {answer!r}")
                if not question.strip():
                    raise LocalDataError(f"{path}:{line}: empty question")
                docs.append({"question": question, "subject": subject, "choices": choices, "answer": int(answer)})
    except UnicodeDecodeError as exc:
        raise LocalDataError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise LocalDataError(f"{path}: not valid CSV ({exc})") from None
    if not docs:
        raise LocalDataError(f"{path}: no questions")
    return docs


def load_mmlu_subject(data_dir: str, subject: str, **_: Any) -> Any:
    """lm-eval ``custom_dataset`` for one MMLU subject: a DatasetDict with ``test`` and ``dev`` splits."""
    import datasets

    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(read_mmlu_csv(mmlu_file(Path(data_dir), subject, split), subject))
            for split in ("test", "dev")
        }
    )


def _targets(path: Path, i: int, item: dict[str, Any], key: str) -> dict[str, list]:
    targets = item.get(key)
    if not isinstance(targets, dict) or not targets:
        raise LocalDataError(f"{path}: record {i}: {key!r} must be a non-empty mapping answer -> 0/1")
    labels = list(targets.values())
    if any(label not in (0, 1) or isinstance(label, bool) for label in labels):
        raise LocalDataError(f"{path}: record {i}: {key!r} labels must be 0 or 1")
    if 1 not in labels:
        raise LocalDataError(f"{path}: record {i}: {key!r} has no true answer")
    return {"choices": [str(c) for c in targets], "labels": labels}


def read_truthfulqa(path: Path) -> list[dict[str, Any]]:
    """Read TruthfulQA's ``mc_task.json`` into the fields of the Hub dataset (``multiple_choice``).

    Each record ``{question, mc1_targets: {answer: 0/1}, mc2_targets: {...}}`` becomes
    ``{question, mc1_targets: {choices, labels}, mc2_targets: {choices, labels}}`` (answer order kept).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LocalDataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, list) or not raw:
        raise LocalDataError(f"{path}: expected a non-empty JSON list of questions")
    docs = []
    for i, item in enumerate(raw, start=1):  # records counted from 1, as line numbers
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise LocalDataError(f"{path}: record {i}: needs a non-empty 'question' string")
        mc1 = _targets(path, i, item, "mc1_targets")
        if mc1["labels"][0] != 1:
            raise LocalDataError(f"{path}: record {i}: the first mc1 answer must be the true one")
        mc2 = _targets(path, i, item, "mc2_targets")
        docs.append({"question": item["question"], "mc1_targets": mc1, "mc2_targets": mc2})
    return docs


def load_truthfulqa(path: str, **_: Any) -> Any:
    """lm-eval ``custom_dataset`` for TruthfulQA: a DatasetDict with the ``validation`` split."""
    import datasets

    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(read_truthfulqa(Path(path)))})
