"""Loading and normalisation: registered names, local files (messages / Alpaca / LIMA history), Hub ids offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from im_pipeline.data import REGISTRY, DataError, load_records, read_jsonl, write_jsonl
from im_pipeline.data.normalise import join_instruction_input


def test_alpaca_input_joined_like_open_instruct(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    rows = [
        {"instruction": " Summarise. ", "input": "A long text.\n", "output": " Short. "},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ]
    path.write_text(json.dumps(rows))
    recs = load_records(str(path))
    assert recs[0] == {
        "id": "a-00000",
        "source": "a",
        "messages": [
            {"role": "user", "content": "Summarise.\n\nA long text."},
            {"role": "assistant", "content": "Short."},
        ],
    }
    assert recs[1]["messages"][0]["content"] == "Say hi."
    assert join_instruction_input("x", "  ") == "x"


def test_lima_style_history_becomes_turns(tmp_path: Path) -> None:
    path = tmp_path / "lima.jsonl"
    path.write_text(json.dumps({"instruction": "u2", "input": "", "output": "a2", "history": [["u1", "a1"]]}) + "\n")
    (rec,) = load_records(str(path))
    assert [(m["role"], m["content"]) for m in rec["messages"]] == [
        ("user", "u1"),
        ("assistant", "a1"),
        ("user", "u2"),
        ("assistant", "a2"),
    ]
    assert load_records(str(path), multi_turn=False) == []


def test_messages_format_keeps_ids_and_system(tmp_path: Path) -> None:
    recs = [
        {
            "id": 7,
            "source": "mine",
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"},
            ],
        },
        {"messages": [{"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]},
    ]
    path = write_jsonl(recs, tmp_path / "m.jsonl")
    out = load_records(str(path))
    assert out[0]["id"] == "7" and out[0]["source"] == "mine" and out[0]["messages"][0]["role"] == "system"
    assert out[1]["id"] == "m-00001" and out[1]["source"] == "m"


def test_gair_conversations_format(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"conversations": ["q", "a", "q2", "a2"], "source": "stackexchange"}) + "\n")
    (rec,) = load_records(str(path))
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rec["source"] == "g"


def test_write_then_read_jsonl_roundtrip(tmp_path: Path) -> None:
    recs = [{"id": "x", "text": "é ünïcode"}, {"id": "y"}]
    path = write_jsonl(recs, tmp_path / "sub" / "r.jsonl")
    assert read_jsonl(path) == recs
    assert not list(path.parent.glob(".*tmp"))
    write_jsonl([], tmp_path / "empty.jsonl")
    assert read_jsonl(tmp_path / "empty.jsonl") == []


@pytest.mark.parametrize("name", ["less_mmlu_chat", "less_bbh_icl", "less_tydiqa", "alpaca_chatgpt_9k"])
def test_hub_only_dataset_offline_error_names_hub_id_and_local_path(name: str, tmp_path: Path) -> None:
    spec = REGISTRY[name]
    with pytest.raises(DataError) as err:
        load_records(name, tmp_path)
    msg = str(err.value)
    assert spec.hub_id in msg and str(tmp_path / spec.local_path) in msg and "--data-dir" in msg


def test_hub_only_dataset_loads_from_local_copy(tmp_path: Path) -> None:
    target = tmp_path / REGISTRY["less_tydiqa"].local_path
    write_jsonl(
        [{"id": "t1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], target
    )
    (rec,) = load_records("less_tydiqa", tmp_path)
    assert rec["id"] == "t1" and rec["source"] == "less_tydiqa"


def test_unknown_name_and_offline_hub_id(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_records("nope", tmp_path)
    with pytest.raises(DataError, match="Hub is offline"):
        load_records("someone/some_dataset", tmp_path)


def test_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / REGISTRY["dolly_3k"].local_path
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps([{"instruction": "i", "input": "", "output": "o", "category": "open_qa"}]))
    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path))
    assert load_records("dolly_3k")[0]["messages"][1]["content"] == "o"


def test_named_datasets_offline(data_dir: Path) -> None:
    sizes = {
        "lima": 1029,
        "lima_full": 1029,
        "lima_1k": 1000,
        "dolly_3k": 2996,
        "alpaca_5k": 5305,
        "alpaca_random_9k": 9229,
    }
    for name, n in sizes.items():
        recs = load_records(name, data_dir)
        assert len(recs) == n, name
        assert len({r["id"] for r in recs}) == n
    assert len(load_records("lima", data_dir, multi_turn=False)) == 1000


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    line = json.dumps({"instruction": "Café?", "output": "Oui."})
    path.write_bytes(b"\xef\xbb\xbf" + (line + "\r\n" + line + "\r\n").encode())
    recs = load_records(str(path))
    assert len(recs) == 2 and recs[0]["messages"][0]["content"] == "Café?"
