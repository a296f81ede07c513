"""advise: Figure-2 predictions and the CLI commands (data stats, advise)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from im_pipeline.analysis.advise import advise, break_even_ratio, nearest_paper_dataset
from im_pipeline.analysis.paper_reference import gain_from_num_examples, gain_from_ratio, observed_gain
from im_pipeline.cli import main
from im_pipeline.data import write_jsonl


def test_fig2_fits() -> None:
    assert gain_from_ratio(1.0) == pytest.approx(25.83)
    assert gain_from_ratio(math.e) == pytest.approx(25.83 + 18.85)
    assert gain_from_num_examples(1000) == pytest.approx(-39.37 * math.log(1000) + 431.74)
    assert gain_from_ratio(break_even_ratio()) == pytest.approx(0.0, abs=1e-9)
    assert observed_gain("less_mmlu_chat") == pytest.approx((9.78 - 4.42) / 4.42 * 100)
    with pytest.raises(ValueError):
        gain_from_ratio(0)


def test_advise_recommendations() -> None:
    long_out = advise({"n": 1000, "instruction_words_mean": 40.0, "output_words_mean": 440.0, "ratio": 0.09})
    assert long_out["recommendation"] == "IT" and long_out["predicted_gain_pct_from_ratio"] < 0
    long_in = advise({"n": 13000, "instruction_words_mean": 500.0, "output_words_mean": 20.0, "ratio": 25.0})
    assert long_in["recommendation"] == "IM" and long_in["size_fit_applicable"]
    assert long_in["nearest_paper_dataset"]["name"] == "less_mmlu_chat"
    near = advise({"n": 3000, "instruction_words_mean": 1.0, "output_words_mean": 4.0, "ratio": 0.25})
    assert near["recommendation"] == "either"
    assert nearest_paper_dataset(0.5)["name"] == "alpaca_5k"


def _messages_file(tmp_path: Path) -> Path:
    recs = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": "a b c d e f g h"}, {"role": "assistant", "content": "x y"}],
        }
        for i in range(5)
    ]
    return write_jsonl(recs, tmp_path / "long_instr.jsonl")


def test_advise_command_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _messages_file(tmp_path)
    assert main(["advise", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 5 and out["ratio"] == pytest.approx(9 / 3)
    assert out["predicted_gain_pct_from_ratio"] == pytest.approx(round(gain_from_ratio(3.0), 2))
    assert out["recommendation"] == "IM"
    assert main(["advise", str(path)]) == 0
    assert "recommendation: IM" in capsys.readouterr().out


def test_data_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _messages_file(tmp_path)
    assert main(["data", "stats", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 5 and out["instruction_words_mean"] == 9 and out["output_words_mean"] == 3
    assert set(out["ratio_quantiles"]) == {"p10", "p25", "p50", "p75", "p90"}
    assert main(["data", "stats", str(path)]) == 0
    assert "instruction words, mean" in capsys.readouterr().out


def test_data_stats_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    assert main(["data", "stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: line 1" in err and "Traceback" not in err
    assert main(["data", "stats", "less_tydiqa", "--data-dir", str(tmp_path)]) == 2
    assert "princeton-nlp/less_data" in capsys.readouterr().err


def test_data_stats_lima_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "lima", "--data-dir", str(data_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["instruction_words_mean"] / 41.72 - 1) < 0.005
    assert abs(out["output_words_mean"] / 442.75 - 1) < 0.005
    assert out["paper_table5"]["n"] == 1030
    assert main(["data", "stats", "dolly_3k", "--data-dir", str(data_dir), "--json", "--instruction-templates"]) == 0
    assert json.loads(capsys.readouterr().out)["instruction_templates"] is True
