"""advise: Figure-2 predictions and the CLI commands (data stats, advise)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as sps

from im_pipeline.analysis import paper_reference as paper
from im_pipeline.analysis.advise import advise, format_advice, nearest_paper_dataset, verdict
from im_pipeline.analysis.paper_reference import gain_from_num_examples, gain_from_ratio, observed_gain
from im_pipeline.analysis.stats import ols_prediction
from im_pipeline.data import length_stats, load_records, write_jsonl
from im_pipeline_flows.cli import main


def test_fig2_fits() -> None:
    assert gain_from_ratio(1.0) == pytest.approx(25.83)
    assert gain_from_ratio(math.e) == pytest.approx(25.83 + 18.85)
    assert gain_from_num_examples(1000) == pytest.approx(-39.37 * math.log(1000) + 431.74)
    assert observed_gain("less_mmlu_chat") == pytest.approx((9.78 - 4.42) / 4.42 * 100)
    with pytest.raises(ValueError):
        gain_from_ratio(0)


def test_transcribed_points_reproduce_the_figure_legends() -> None:
    """The Figure 2 points read off the released figure give the legend's fits back (natural log)."""
    left = sps.linregress([math.log(p[0]) for p in paper.FIG2_RATIO_POINTS], [p[1] for p in paper.FIG2_RATIO_POINTS])
    assert left.slope == pytest.approx(18.85, abs=0.3) and left.intercept == pytest.approx(25.83, abs=0.5)
    right = sps.linregress([math.log(k) for k, _ in paper.FIG2_SIZE_POINTS], [g for _, g in paper.FIG2_SIZE_POINTS])
    assert right.slope == pytest.approx(-39.37, abs=0.5) and right.intercept == pytest.approx(431.74, abs=2.0)
    # ... while the legend's ratio fit misses the Table 1 points by ~27 points RMS (the finding)
    t1 = [(math.log(paper.TABLE5_LENGTH_STATS[k]["ratio"]), observed_gain(k)) for k in paper.TABLE1_ALPACA_EVAL_1]
    rms = math.sqrt(sum((g - gain_from_ratio(math.exp(x))) ** 2 for x, g in t1) / len(t1))
    assert 20 < rms < 35


def test_ols_prediction_interval_matches_the_textbook_formula() -> None:
    x = [math.log(p[0]) for p in paper.FIG2_RATIO_POINTS]
    y = [p[1] for p in paper.FIG2_RATIO_POINTS]
    x0 = math.log(0.3)
    res = ols_prediction([[v] for v in x], y, [x0])
    lr = sps.linregress(x, y)
    assert res["coefficients"] == pytest.approx([lr.intercept, lr.slope])
    n = len(x)
    mean = sum(x) / n
    sxx = sum((v - mean) ** 2 for v in x)
    s = math.sqrt(sum((yi - lr.intercept - lr.slope * xi) ** 2 for xi, yi in zip(x, y, strict=True)) / (n - 2))
    half = sps.t.ppf(0.975, n - 2) * s * math.sqrt(1 + 1 / n + (x0 - mean) ** 2 / sxx)
    pred = lr.intercept + lr.slope * x0
    assert (res["prediction"], res["low"], res["high"]) == pytest.approx((pred, pred - half, pred + half))
    assert res["df"] == n - 2 and res["residual_sd"] == pytest.approx(s)


def test_verdict_follows_the_interval() -> None:
    assert verdict(0.1, 5.0) == "IM" and verdict(-5.0, -0.1) == "IT" and verdict(-1.0, 1.0) == "uncertain"
    strong = advise({"n": 13000, "instruction_words_mean": 500.0, "output_words_mean": 20.0, "ratio": 25.0})
    assert strong["recommendation"] == "IM" and strong["interval"]["low"] > 0
    assert strong["fits"]["size"]["applicable"] and strong["nearest_paper_dataset"]["name"] == "less_mmlu_chat"
    assert "the whole headline interval" in format_advice("x", strong)
    assert nearest_paper_dataset(0.5)["name"] == "alpaca_5k"


def _check_sentences(text: str, adv: dict) -> None:
    """Every sentence of the advice agrees with the numbers it prints."""
    iv = adv["interval"]
    head = next(ln for ln in text.splitlines() if "ratio + size (headline)" in ln)
    assert f"{adv['predicted_gain_pct']:+.1f}%" in head
    assert f"{iv['low']:+.1f}% to {iv['high']:+.1f}%" in head
    rec = next(ln for ln in text.splitlines() if ln.startswith("recommendation:"))
    assert f"{iv['low']:+.1f}% to {iv['high']:+.1f}%" in rec
    if iv["low"] <= 0 <= iv["high"]:
        assert rec.startswith("recommendation: uncertain") and "includes 0" in rec
    else:
        assert ("above 0" in rec) == (iv["low"] > 0)
    shape = "shorter than outputs" if adv["ratio"] < 1 else "longer than outputs"
    assert shape in text.splitlines()[0] and f"ratio {adv['ratio']:.3f}" in text.splitlines()[0]
    size_line = next(ln for ln in text.splitlines() if "size only" in ln)
    assert ("not used" in size_line) == (not adv["fits"]["size"]["applicable"])
    near = adv["nearest_paper_dataset"]
    assert f"observed gain {near['observed_gain_pct']:+.1f}%" in text
    for key in ("ratio", "table1"):
        f = adv["fits"][key]
        assert f"{f['prediction']:+.1f}% (95% prediction interval {f['low']:+.1f}% to {f['high']:+.1f}%)" in text


@pytest.mark.parametrize(
    ("source", "nearest", "observed"),
    [
        ("paper_lima", "lima", -0.36),
        ("paper_dolly_3k", "dolly_3k", 12.59),
        ("alpaca_random_9k", "alpaca_chatgpt_9k", 42.85),
    ],
)
def test_advise_lima_dolly_random9k(data_dir: Path, source: str, nearest: str, observed: float, capsys) -> None:
    """LIMA, Dolly 3k, random 9k: every interval spans 0 (the fits are too noisy to sign the gain): "uncertain"."""
    if not (data_dir / "paper_processed").is_dir() and source.startswith("paper_"):
        pytest.skip(f"{data_dir}/paper_processed not found (see its SOURCE.md)")
    assert main(["advise", source, "--data-dir", str(data_dir), "--json"]) == 0
    adv = json.loads(capsys.readouterr().out)
    stats = length_stats(load_records(source, data_dir))
    assert adv["n"] == stats["n"] and adv["ratio"] == pytest.approx(stats["ratio"])
    iv = adv["interval"]
    assert iv["confidence"] == 0.95 and iv["low"] < adv["predicted_gain_pct"] < iv["high"]
    assert iv["low"] < 0 < iv["high"] and adv["recommendation"] == "uncertain"
    assert adv["nearest_paper_dataset"]["name"] == nearest
    assert adv["nearest_paper_dataset"]["observed_gain_pct"] == pytest.approx(observed, abs=0.01)
    assert not adv["fits"]["size"]["applicable"]  # ratio far below the size fit's ≈ 10
    assert main(["advise", source, "--data-dir", str(data_dir)]) == 0
    _check_sentences(capsys.readouterr().out, adv)


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
    ratio_fit = out["fits"]["ratio"]
    ref = ols_prediction(
        [[math.log(p[0])] for p in paper.FIG2_RATIO_POINTS], [p[1] for p in paper.FIG2_RATIO_POINTS], [math.log(3.0)]
    )
    assert ratio_fit["prediction"] == pytest.approx(round(ref["prediction"], 2))
    assert out["recommendation"] == verdict(out["interval"]["low"], out["interval"]["high"])
    assert out["fits"]["ratio_and_size"]["extrapolation"] is True  # 5 examples: far below the fitted sizes
    assert main(["advise", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"recommendation: {out['recommendation']}" in text and "extrapolation" in text
    _check_sentences(text, out)


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


def test_closest_dataset_distance_is_standardised_and_disagreements_are_named() -> None:
    import math

    from scipy.stats import linregress, t

    from im_pipeline.analysis.advise import figure_table_disagreements
    from im_pipeline.analysis.stats import ols_prediction

    # ratio 0.5 with 1,000 examples: unscaled, Dolly 3k is closer (ln ratio 0.25 and ln n 1.10 away: 1.24 vs LIMA's
    # ln ratio 1.67 away: 2.79); over the Table 1 SDs (ln ratio 1.93, ln n 0.98) LIMA is (0.87 vs 1.13).
    near = nearest_paper_dataset(0.5, 1_000)
    assert near["name"] == "lima"
    assert near["scale"] == {"ln_ratio_sd": pytest.approx(1.93, abs=0.005), "ln_n_sd": pytest.approx(0.98, abs=0.005)}
    sd_r, sd_n = near["scale"]["ln_ratio_sd"], near["scale"]["ln_n_sd"]
    expected = math.hypot(math.log(0.5 / 0.094) / sd_r, math.log(1000 / 1030) / sd_n)
    assert near["distance"] == pytest.approx(expected, abs=0.002)
    # Figure 2 and Table 1 disagree on Less TydiQA only (63.1% in the figure; (10.10 − 5.12) / 5.12 = 97.3%).
    assert figure_table_disagreements() == [
        {"dataset": "less_tydiqa", "label": "Less Tydiqa", "figure_gain_pct": 63.1, "table1_gain_pct": 97.3,
         "ratio": 5.81}
    ]  # fmt: skip
    # The coefficient CIs are the textbook ones (one predictor: scipy's linregress slope ± t · stderr).
    xs, ys = [1.0, 2.0, 3.0, 4.0, 5.5], [2.0, 2.9, 4.2, 4.8, 6.1]
    res, lr = ols_prediction([[x] for x in xs], ys, [3.0]), linregress(xs, ys)
    half = t.ppf(0.975, 3) * lr.stderr
    assert res["coefficient_ci"][1] == pytest.approx([lr.slope - half, lr.slope + half])
    adv = advise({"n": 2996, "ratio": 0.644, "instruction_words_mean": 43.8, "output_words_mean": 68.1})
    assert adv["size_effect"]["per_ln_n"] == pytest.approx(adv["fits"]["ratio_and_size"]["coefficients"][2], abs=0.01)
    text = format_advice("x", adv)
    assert "size effect in the headline fit: " in text and "Figure 2 and Table 1 disagree on Less Tydiqa" in text
