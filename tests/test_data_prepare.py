"""prepare_data: policies, held-out set, selection, report, files written."""

from __future__ import annotations

import json
from pathlib import Path

from im_pipeline.config import DataConfig
from im_pipeline.data import prepare_data, read_jsonl, write_jsonl


def _msg(rid: str, u: str, a: str) -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}


def _write(tmp_path: Path, name: str, recs: list[dict]) -> str:
    return str(write_jsonl(recs, tmp_path / name))


def test_policies_drop_and_report(tmp_path: Path) -> None:
    recs = [_msg(f"x{i}", f"question {i}", f"answer {i} words here") for i in range(10)]
    recs += [_msg("x3", "dup", "dup"), _msg("e1", " ", "out"), _msg("e2", "in", "")]
    src = _write(tmp_path, "d.jsonl", recs)
    out = tmp_path / "run" / "data"
    prep = prepare_data(DataConfig(train=src, held_out_size=2), None, seed=0, out_dir=out)
    acts = prep.report["actions"]["train"]
    assert acts["dropped_duplicate_id"] == ["x3"] and acts["dropped_empty"] == ["e1", "e2"]
    assert acts["loaded"] == 13 and acts["kept"] == 10
    assert len(prep.train) == 8 and len(prep.held_out) == 2
    assert prep.report["stats"]["train"]["n"] == 8
    # the duplicate kept is the first occurrence
    assert all(r["messages"][0]["content"] != "dup" for r in prep.train + prep.held_out)
    assert read_jsonl(out / "train.jsonl") == prep.train
    assert read_jsonl(out / "held_out.jsonl") == prep.held_out
    assert json.loads((out / "data_stats.json").read_text())["actions"]["train"]["kept"] == 10


def test_subsample_and_ratio_selection(tmp_path: Path) -> None:
    recs = [_msg(f"r{i}", " ".join(["w"] * (1 + i % 5)), " ".join(["w"] * (1 + i % 3))) for i in range(40)]
    src = _write(tmp_path, "d.jsonl", recs)
    a = prepare_data(DataConfig(train=src, held_out_size=4, n=10), None, seed=1)
    b = prepare_data(DataConfig(train=_write(tmp_path, "rev.jsonl", recs[::-1]), held_out_size=4, n=10), None, seed=1)
    assert [r["id"] for r in a.train] == [r["id"] for r in b.train]
    assert [r["id"] for r in a.held_out] == [r["id"] for r in b.held_out]
    assert a.report["selection"] == {"available": 36, "method": "subsample", "n": 10, "selected": 10}
    sel = prepare_data(DataConfig(train=src, held_out_size=0, n=5, select_ratio=2.0), None, seed=0)
    assert sel.report["selection"]["method"] == "ratio"
    assert len(sel.train) == 5
    big = prepare_data(DataConfig(train=src, held_out_size=0, n=100), None, seed=0)
    assert len(big.train) == 40 and "warning" in big.report["selection"]


def test_separate_held_out_source_keeps_training_whole(tmp_path: Path) -> None:
    train = _write(tmp_path, "t.jsonl", [_msg("a", "q1", "a1"), _msg("b", "q2", "a2"), _msg("c", "q3", "a3")])
    held = _write(tmp_path, "h.jsonl", [_msg("z", "q2", "a2"), _msg("y", "q9", "a9"), _msg("x", "q8", "a8")])
    prep = prepare_data(DataConfig(train=train, held_out=held, held_out_size=0), None, seed=0)
    assert [r["id"] for r in prep.train] == ["a", "b", "c"]  # nothing removed from training
    assert sorted(r["id"] for r in prep.held_out) == ["x", "y", "z"]
    assert prep.report["actions"]["held_out_also_in_train"] == 1
    assert prep.report["held_out_kind"] == "another data set"
    # held_out_size samples the other set (seeded); a split is labelled as such.
    two = prepare_data(DataConfig(train=train, held_out=held, held_out_size=2), None, seed=0)
    assert len(two.held_out) == 2 and len(two.train) == 3
    split = prepare_data(DataConfig(train=train, held_out_size=1), None, seed=0)
    assert split.report["held_out_kind"] == "in-distribution split" and len(split.train) == 2


def test_instruction_templates_and_multi_turn_options(tmp_path: Path) -> None:
    rows = [{"instruction": f"Do thing {i}.", "input": "", "output": "Done."} for i in range(6)]
    rows.append({"instruction": "last", "input": "", "output": "o", "history": [["first", "o1"]]})
    src = tmp_path / "a.json"
    src.write_text(json.dumps(rows))
    prep = prepare_data(
        DataConfig(train=str(src), held_out_size=0, multi_turn=False, instruction_templates=True), None, seed=5
    )
    assert len(prep.train) == 6 and prep.report["actions"]["train"]["dropped_multi_turn"] == 1
    for i, r in enumerate(prep.train):
        assert f"Do thing {r['id'][-1]}." in r["messages"][0]["content"], i
    again = prepare_data(
        DataConfig(train=str(src), held_out_size=0, multi_turn=False, instruction_templates=True), None, seed=5
    )
    assert again.train == prep.train


def test_prepare_named_lima(data_dir: Path) -> None:
    prep = prepare_data(DataConfig(train="lima", held_out_size=16, n=64), data_dir, seed=0)
    assert len(prep.train) == 64 and len(prep.held_out) == 16
    assert prep.report["actions"]["train"]["origin"].endswith("lima/lima.json")
