"""summary.csv / summary.json beside the report, and ``im-pipeline compare A B`` (issue 22, item 6)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from synthetic_run import make_experiment

from im_pipeline.analysis import stats as st
from im_pipeline.analysis.compare import compare_runs, run_dir_of
from im_pipeline.report.build import build_report
from im_pipeline.report.results import save_results
from im_pipeline_flows.cli.main import main

IT_ITEMS = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0]
IM_ITEMS = [1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0]


def _run(tmp_path: Path, name: str, im_items: list[int]) -> Path:
    return make_experiment(
        tmp_path / "runs",
        name,
        ratio=0.1,
        n=100,
        values={},
        seeds=(0,),
        items={"mmlu": {"IT": [IT_ITEMS], "IM": [im_items]}},
    )


def test_summary_rows_one_per_arm_seed_benchmark_metric(tmp_path: Path) -> None:
    root = _run(tmp_path, "exp-a", IM_ITEMS)
    out = build_report(root, tmp_path / "report")
    assert out["summary"] == {
        "csv": str(tmp_path / "report" / "summary.csv"),
        "json": str(tmp_path / "report" / "summary.json"),
    }
    with open(out["summary"]["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    doc = json.loads(Path(out["summary"]["json"]).read_text())
    assert len(doc["rows"]) == len(rows) and list(rows[0]) == doc["columns"]
    key = {(r["arm"], r["seed"], r["benchmark"], r["metric"]): r for r in doc["rows"]}
    assert len(key) == len(rows)  # one row per arm × seed × benchmark × metric
    it = key[("IT", 0, "mmlu", "acc")]
    k = sum(IT_ITEMS)
    assert it["n"] == 20 and it["value"] == pytest.approx(k / 20)
    assert (it["ci_low"], it["ci_high"]) == pytest.approx(st.wilson(k, 20)) and it["interval"] == "Wilson 95%"
    base = key[("base", None, "mmlu", "acc")]  # no per-item scores: value ± 1.96 stderr
    assert base["n"] == 10 and (base["ci_low"], base["ci_high"]) == pytest.approx(
        (0.25 - 1.96 * 0.05, 0.25 + 1.96 * 0.05), abs=1e-4
    )
    skipped = key[("IM", 0, "humaneval", None)]
    assert skipped["status"] == "skipped" and skipped["value"] is None
    assert key[("IM", 0, "overfitting", "test_loss")]["value"] == 1.4
    assert key[("IT", 0, "overfitting", "bleu4")]["value"] == 20.0
    csv_it = next(r for r in rows if (r["arm"], r["benchmark"], r["metric"]) == ("IT", "mmlu", "acc"))
    assert float(csv_it["ci_low"]) == it["ci_low"] and csv_it["seed"] == "0"


def test_compare_pairs_matching_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path, "exp-a", IT_ITEMS)  # A's IM scored like IT
    b = _run(tmp_path, "exp-b", IM_ITEMS)
    save_results(a, tmp_path / "report-a" / "results", "exp-a")  # a report directory: compare reads its results/
    assert run_dir_of(tmp_path / "report-a") == tmp_path / "report-a" / "results"
    result = compare_runs(tmp_path / "report-a", b)
    rows = {(r["benchmark"], r["arm"], r["seed"]): r for r in result["rows"]}
    im = rows[("mmlu", "IM", 0)]
    assert im["paired"] and im["n_items"] == 20
    assert im["delta"] == pytest.approx((sum(IM_ITEMS) - sum(IT_ITEMS)) / 20)
    assert im["p_value"] == pytest.approx(st.mcnemar_exact(IM_ITEMS, IT_ITEMS)["p_value"])
    assert im["ci_low"] <= im["delta"] <= im["ci_high"] and im["ci_low"] > 0  # 4 items 0 → 1, none 1 → 0
    assert rows[("mmlu", "IT", 0)]["delta"] == 0
    base = rows[("mmlu", "base", None)]  # no per-item scores: the plain difference, no interval
    assert not base["paired"] and base["delta"] == 0 and base["ci_low"] is None
    assert main(["compare", str(tmp_path / "report-a"), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == json.loads(json.dumps(result["rows"]))
    assert main(["compare", str(a), str(b)]) == 0
    assert "| mmlu | IM | 0 | acc | 0.45 | 0.65 | 0.2 |" in capsys.readouterr().out


def test_compare_without_common_items_is_unpaired(tmp_path: Path) -> None:
    a = _run(tmp_path, "exp-a", IT_ITEMS)
    b = _run(tmp_path, "exp-b", IM_ITEMS)
    for path in (b / "IM" / "seed-0" / "eval" / "mmlu.json",):
        data = json.loads(path.read_text())
        data["items"] = {k: {f"other{i}": v for i, v in scores.items()} for k, scores in data["items"].items()}
        path.write_text(json.dumps(data))
    im = next(r for r in compare_runs(a, b)["rows"] if (r["benchmark"], r["arm"]) == ("mmlu", "IM"))
    assert not im["paired"] and im["ci_low"] is None
    assert im["delta"] == pytest.approx((sum(IM_ITEMS) - sum(IT_ITEMS)) / 20)
