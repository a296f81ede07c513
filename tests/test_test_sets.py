"""Issue 23's test sets: the out-of-domain source ``alpaca_eval_ood`` (AlpacaEval 1.0 reference outputs without the
``selfinstruct`` subset)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from im_pipeline.data import load_records
from im_pipeline.data.sources import REGISTRY, load_source

ALPACA_EVAL = "alpaca_eval/text_davinci_003/model_outputs.json"

# -- alpaca_eval_ood ---------------------------------------------------------------------------------------------------


def test_alpaca_eval_ood_is_553_records_without_selfinstruct(data_dir: Path) -> None:
    raw = json.loads((data_dir / ALPACA_EVAL).read_text(encoding="utf-8"))
    assert len(raw) == 805 and Counter(r["dataset"] for r in raw)["selfinstruct"] == 252
    loaded = load_source("alpaca_eval_ood", data_dir)
    assert len(loaded.records) == 553 and loaded.excluded == 252
    assert loaded.origin == f"{data_dir / ALPACA_EVAL} (without dataset selfinstruct: 252 of 805 rows)"
    # each record is row i of the whole file, id alpaca_eval_ood-<i>: stable, whatever is excluded around it
    kept = [(i, r) for i, r in enumerate(raw) if r["dataset"] != "selfinstruct"]
    assert [r["id"] for r in loaded.records] == [f"alpaca_eval_ood-{i:05d}" for i, _ in kept]
    for rec, (_, row) in zip(loaded.records, kept, strict=True):
        assert rec["messages"] == [
            {"role": "user", "content": row["instruction"].strip()},
            {"role": "assistant", "content": row["output"].strip()},
        ]
    assert Counter(row["dataset"] for _, row in kept) == {"oasst": 188, "koala": 156, "helpful_base": 129, "vicuna": 80}
    assert load_records("alpaca_eval_ood", data_dir) == loaded.records  # the same ids on every load


def test_alpaca_eval_ood_is_pinned_and_its_hub_route_excludes_too(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import datasets

    from im_pipeline import hub
    from im_pipeline.data import sources
    from im_pipeline.data.fetch import fetch, fetchable

    spec = REGISTRY["alpaca_eval_ood"]
    assert "alpaca_eval_ood" in fetchable() and spec.exclude == {"dataset": ("selfinstruct",)}
    assert spec.url == (
        "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/cd543a149df89434d8a54582c0151c0b945c3d20/"
        "results/text_davinci_003/model_outputs.json"
    )
    (item,) = fetch(["alpaca_eval_ood"], to=data_dir)  # the data directory's copy has the pinned sha256
    assert item.status == "present" and item.size == 474_865
    # No local copy, the Hub reachable: the same exclusion and ids (load_dataset stands in for the Hub here).
    rows = json.loads((data_dir / ALPACA_EVAL).read_text(encoding="utf-8"))
    calls = []

    def load_dataset(hub_id: str, **kwargs: object) -> list[dict]:
        calls.append((hub_id, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub, "hub_reachable", lambda **_: True)
    monkeypatch.setattr(sources, "data_cache_dir", lambda: tmp_path / "cache")
    on_hub = load_source("alpaca_eval_ood", tmp_path)
    assert calls == [("tatsu-lab/alpaca_eval", {"split": "eval", "name": "alpaca_eval"})]
    assert on_hub.records == load_records("alpaca_eval_ood", data_dir) and on_hub.excluded == 252
    assert on_hub.origin == "hub:tatsu-lab/alpaca_eval (without dataset selfinstruct: 252 of 805 rows)"


def test_data_stats_names_the_exclusion(data_dir: Path, capsys) -> None:
    from im_pipeline_flows.cli import main

    assert main(["data", "stats", "alpaca_eval_ood", "--data-dir", str(data_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["origin"].endswith("(without dataset selfinstruct: 252 of 805 rows)") and stats["n"] == 553
