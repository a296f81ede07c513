"""Your data: every accepted shape (messages, ShareGPT, prompt/completion, Alpaca, LIMA) in every file format (.jsonl,
.json, .parquet, .csv) reads as the same conversations; data.columns maps other names; errors name file, line or
row, and the accepted shapes."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from im_pipeline.config import ConfigError, DataConfig, config_from_dict
from im_pipeline.data import DataError, length_stats, load_records
from im_pipeline.data.files import LIST_FIELDS
from im_pipeline.data.normalise import SHAPES
from im_pipeline_flows.cli.main import main

# One conversation set: a system turn, a multi-turn conversation, plain single turns (words chosen so every
# statistic differs between the conversations).
CONVERSATIONS: list[list[dict[str, str]]] = [
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."},
        {"role": "user", "content": "And an even one?"},
        {"role": "assistant", "content": "Two is the only even prime number."},
    ],
    [
        {"role": "user", "content": "Write a haiku about rain on a tin roof"},
        {"role": "assistant", "content": "Drumming overhead / the tin roof counts every drop / sleep comes anyway"},
    ],
    [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ],
]


class NotRepresentable(Exception):
    """The shape cannot hold this conversation (e.g. a system turn in LIMA's list of strings)."""


def _split(conv: list[dict[str, str]]) -> tuple[str | None, list[tuple[str, str]]]:
    system = conv[0]["content"] if conv[0]["role"] == "system" else None
    body = conv[1:] if system is not None else conv
    return system, [(body[i]["content"], body[i + 1]["content"]) for i in range(0, len(body), 2)]


def as_messages(conv: list[dict[str, str]]) -> dict[str, Any]:
    return {"messages": conv}


def as_sharegpt(conv: list[dict[str, str]]) -> dict[str, Any]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}


def as_prompt_completion(conv: list[dict[str, str]]) -> dict[str, Any]:
    """TRL's standard form: two strings (one user turn, one assistant turn)."""
    if len(conv) != 2 or conv[0]["role"] != "user":
        raise NotRepresentable
    return {"prompt": conv[0]["content"], "completion": conv[1]["content"]}


def as_conversational_prompt_completion(conv: list[dict[str, str]]) -> dict[str, Any]:
    """TRL's conversational form: the prompt's messages, then the completion's assistant message."""
    return {"prompt": conv[:-1], "completion": conv[-1:]}


def as_alpaca(conv: list[dict[str, str]]) -> dict[str, Any]:
    system, pairs = _split(conv)
    row: dict[str, Any] = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
    if len(pairs) > 1:
        row["history"] = [list(p) for p in pairs[:-1]]
    if system is not None:
        row["system"] = system
    return row


def as_lima(conv: list[dict[str, str]]) -> dict[str, Any]:
    system, pairs = _split(conv)
    if system is not None:
        raise NotRepresentable
    return {"conversations": [text for pair in pairs for text in pair]}


SHAPE_WRITERS: dict[str, Callable[[list[dict[str, str]]], dict[str, Any]]] = {
    "messages": as_messages,
    "sharegpt": as_sharegpt,
    "prompt_completion": as_prompt_completion,
    "conversational_prompt_completion": as_conversational_prompt_completion,
    "alpaca": as_alpaca,
    "lima": as_lima,
}


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif suffix == ".parquet":
        keys = list(dict.fromkeys(k for r in rows for k in r))  # from_pylist takes its columns from the first row
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    else:
        header = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(header)
            for r in rows:
                out.writerow([json.dumps(r[k]) if not isinstance(r.get(k, ""), str) else r.get(k, "") for k in header])
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
@pytest.mark.parametrize("shape", list(SHAPE_WRITERS))
def test_every_shape_and_format_reads_as_the_same_conversations(tmp_path: Path, shape: str, suffix: str) -> None:
    rows, expected = [], []
    for conv in CONVERSATIONS:
        try:
            rows.append(SHAPE_WRITERS[shape](conv))
        except NotRepresentable:
            continue
        expected.append(conv)
    assert len(expected) >= 2  # LIMA holds all but the system turn, string prompt/completion the two single turns
    path = write_rows(rows, tmp_path / f"mine{suffix}")
    records = load_records(str(path))
    assert [r["messages"] for r in records] == expected
    reference = write_rows([as_messages(c) for c in expected], tmp_path / "reference.jsonl")
    assert length_stats(records) == length_stats(load_records(str(reference)))


def test_data_stats_cli_gives_the_same_numbers_for_sharegpt_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = write_rows([as_sharegpt(c) for c in CONVERSATIONS], tmp_path / "mine.parquet")
    reference = write_rows([as_messages(c) for c in CONVERSATIONS], tmp_path / "reference.jsonl")
    outputs = []
    for path in (mine, reference):
        assert main(["data", "stats", str(path), "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        outputs.append({k: v for k, v in stats.items() if k not in ("source", "origin")})
    assert outputs[0] == outputs[1]
    assert outputs[0]["n"] == 4


def test_columns_map_other_field_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"question": "Q one", "answer": "A one two"}, {"question": "Q two", "answer": "A"}]
    path = write_rows(rows, tmp_path / "qa.csv")
    with pytest.raises(
        DataError, match=r"qa\.csv: line 2: missing field: the keys answer, question match no accepted shape"
    ):
        load_records(str(path))
    records = load_records(str(path), columns={"instruction": "question", "output": "answer"})
    assert [r["messages"][1]["content"] for r in records] == ["A one two", "A"]
    # the same from the CLI and from the config
    assert main(["data", "stats", str(path), "--column", "prompt=question", "--column", "completion=answer"]) == 0
    assert "qa.csv" in capsys.readouterr().out
    cfg = DataConfig(train=str(path), columns={"instruction": "question", "output": "answer"})
    assert cfg.model_dump()["columns"] == {"instruction": "question", "output": "answer"}
    with pytest.raises(ConfigError, match=r"data\.columns"):
        config_from_dict({"name": "x", "data": {"columns": {"question": "instruction"}}})


def test_unset_columns_leave_the_data_section_as_before() -> None:
    """No columns, no key: the data section's dump (and so every existing run's data key) is unchanged."""
    assert "columns" not in DataConfig().model_dump(mode="json")


def test_errors_name_file_line_or_row_and_the_shapes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(as_messages(CONVERSATIONS[3])) + "\n" + json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(DataError) as err:
        load_records(str(bad))
    assert str(err.value) == f"{bad}: line 2: missing field: the keys text match no accepted shape: {SHAPES}"
    for shape in ("messages", "ShareGPT", "prompt/completion", "Alpaca", "LIMA", "data.columns"):
        assert shape in SHAPES

    rows = [as_sharegpt(CONVERSATIONS[3]), {"conversations": [{"from": "bot", "value": "x"}]}]
    with pytest.raises(DataError, match=r"bad\.parquet: row 2: conversations\[0\] has from 'bot'; allowed: human"):
        load_records(str(write_rows(rows, tmp_path / "bad.parquet")))

    csv_path = tmp_path / "bad.csv"
    csv_path.write_text('prompt,completion\n"two\nlines",ok\nonly one cell\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv: line 4: 1 cells, but the header has 2 columns"):
        load_records(str(csv_path))

    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}]))
    with pytest.raises(DataError, match=r"mixed\.json: record 1: 'prompt' and 'completion' must both be strings"):
        load_records(str(mixed))


def test_csv_list_fields_hold_json(tmp_path: Path) -> None:
    assert set(LIST_FIELDS) == {"messages", "conversations", "history", "prompt", "completion"}
    path = tmp_path / "m.csv"
    write_rows([as_messages(c) for c in CONVERSATIONS], path)
    assert [r["messages"] for r in load_records(str(path))] == CONVERSATIONS
    path.write_text('messages\n"[{""role"": ""user"""\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.csv: line 2: column 'messages' must hold a JSON list"):
        load_records(str(path))
    # a prompt that merely starts with '[' is text
    path.write_text("prompt,completion\n[1] is a list?,yes\n", encoding="utf-8")
    assert load_records(str(path))[0]["messages"][0]["content"] == "[1] is a list?"
