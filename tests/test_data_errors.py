"""Malformed input: each kind gives one DataError naming the file and line/record, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from im_pipeline.config import DataConfig
from im_pipeline.data import DataError, load_records, prepare_data, read_jsonl

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
GOOD_MSG = {"id": "a", "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}


def _jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


# (file name, bytes, expected message fragments: location + what)
CASES: dict[str, tuple[str, bytes, tuple[str, ...]]] = {
    "not_json": ("d.jsonl", (_jsonl(GOOD_MSG) + "this is not json\n").encode(), ("line 2", "not valid JSON")),
    "not_json_array_file": ("d.json", b'[{"instruction": "x", "output": "y"},\n oops]', ("line 2", "not valid JSON")),
    "wrong_top_level": ("d.json", json.dumps({"instruction": "x", "output": "y"}).encode(), ("top level", "dict")),
    "line_not_object": ("d.jsonl", (_jsonl(GOOD_MSG) + "[1, 2]\n").encode(), ("line 2", "expected a JSON object")),
    "missing_output": ("d.json", json.dumps([GOOD, {"instruction": "x"}]).encode(), ("record 2", "'output'")),
    "missing_fields": ("d.jsonl", _jsonl(GOOD_MSG, {"prompt": "x"}).encode(), ("line 2", "missing field")),
    "wrong_role": (
        "d.jsonl",
        _jsonl(
            GOOD_MSG, {"messages": [{"role": "human", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ).encode(),
        ("line 2", "role 'human'"),
    ),
    "roles_not_alternating": (
        "d.jsonl",
        _jsonl({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}).encode(),
        ("line 1", "messages[1]", "'assistant' was expected"),
    ),
    "ends_with_user": (
        "d.jsonl",
        _jsonl({"messages": [{"role": "user", "content": "x"}]}).encode(),
        ("line 1", "last turn must be 'assistant'"),
    ),
    "empty_messages": (
        "d.jsonl",
        _jsonl(GOOD_MSG, GOOD_MSG | {"id": "b", "messages": []}).encode(),
        ("line 2", "empty"),
    ),
    "non_utf8": ("d.jsonl", _jsonl(GOOD_MSG).encode() + b'{"id": "b", "messages": "\xff\xfe"}\n', ("line 2", "UTF-8")),
    "non_utf8_json": ("d.json", b'[\n{"instruction": "caf\xe9", "output": "x"}\n]', ("line 2", "UTF-8")),
    "truncated_jsonl": (
        "d.jsonl",
        (_jsonl(GOOD_MSG) + '{"id": "b", "messages": [{"ro').encode(),
        ("line 2", "truncated"),
    ),
    "truncated_json": ("d.json", json.dumps([GOOD, GOOD])[:-20].encode(), ("line 1", "truncated")),
    "field_wrong_type": (
        "d.json",
        json.dumps([GOOD, {"instruction": 3, "output": "y"}]).encode(),
        ("record 2", "'instruction' must be a string"),
    ),
    "content_wrong_type": (
        "d.jsonl",
        _jsonl({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}).encode(),
        ("line 1", "'messages[0].content' must be a string"),
    ),
    "messages_wrong_type": ("d.jsonl", _jsonl({"messages": "hello"}).encode(), ("line 1", "'messages' must be a list")),
    "bad_history": ("d.json", json.dumps([GOOD | {"history": [["only one"]]}]).encode(), ("record 1", "history[0]")),
    "bad_id_type": ("d.jsonl", _jsonl(GOOD_MSG | {"id": {"x": 1}}).encode(), ("line 1", "'id'")),
    "empty_file": ("d.jsonl", b"", ("file is empty",)),
    "whitespace_only_file": ("d.json", b"  \n\n ", ("file is empty",)),
    "empty_list": ("d.json", b"[]", ("no examples",)),
    "lone_surrogate_jsonl": (
        "d.jsonl",
        (_jsonl(GOOD_MSG) + '{"instruction": "x\\ud800", "output": "y"}\n').encode(),
        ("line 2", "lone surrogate \\ud800"),
    ),
    "lone_surrogate_in_key": (
        "d.json",
        b'[{"instruction": "x", "output": "y", "\\udc00": 1}]',
        ("record 1", "surrogate"),
    ),
    "duplicate_key_jsonl": (
        "d.jsonl",
        (_jsonl(GOOD_MSG) + '{"instruction": "a", "instruction": "b", "output": "y"}\n').encode(),
        ("line 2", "duplicate key 'instruction'"),
    ),
    "duplicate_key_json_array": (
        "d.json",
        b'[{"instruction": "a", "output": "y"},\n {"instruction": "a", "output": "y", "output": "z"}]',
        ("record 2", "duplicate key 'output'"),
    ),
    "nan_jsonl": ("d.jsonl", b'{"id": NaN, "instruction": "a", "output": "y"}\n', ("line 1", "non-finite number NaN")),
    "infinity_json": ("d.json", b'[{"instruction": "a", "output": "y", "w": -Infinity}]', ("record 1", "-Infinity")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_file_gives_one_clear_error(tmp_path: Path, case: str) -> None:
    name, data, fragments = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_records(str(path))
    msg = str(err.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert "\n" not in msg  # one line, one problem


@pytest.mark.parametrize(
    "case",
    [
        "not_json",
        "wrong_role",
        "truncated_jsonl",
        "non_utf8",
        "empty_messages",
        "lone_surrogate_jsonl",
        "duplicate_key_jsonl",
    ],
)
def test_prepare_writes_nothing_on_bad_input(tmp_path: Path, case: str) -> None:
    name, data, _ = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(DataError):
        prepare_data(DataConfig(train=str(path), held_out_size=0), None, 0, out_dir=out)
    assert not out.exists() or not any(out.iterdir())


def test_duplicate_id_under_error_policy_names_both_places(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text(_jsonl(GOOD_MSG, GOOD_MSG | {"id": "b"}, GOOD_MSG))
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(train=str(path), held_out_size=0, on_duplicate_id="error"), None, 0, out_dir=out)
    msg = str(err.value)
    assert f"{path}: line 3" in msg and "duplicate id 'a'" in msg and f"{path}: line 1" in msg
    assert not out.exists()


def test_empty_output_under_error_policy(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text(json.dumps([GOOD, {"instruction": "x", "output": "   "}]))
    with pytest.raises(DataError) as err:
        prepare_data(DataConfig(train=str(path), held_out_size=0, on_empty="error"), None, 0, out_dir=tmp_path / "o")
    assert f"{path}: record 2" in str(err.value) and "empty output" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_read_jsonl_errors_name_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n"string"\n')
    with pytest.raises(DataError, match=r"r\.jsonl: line 3: expected a JSON object"):
        read_jsonl(path)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)
