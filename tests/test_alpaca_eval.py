"""AlpacaEval benchmark: reference loading, subset choice, generation + judging + win rate, caching, key hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_stub_server import StubOpenAIServer

from im_pipeline import hub
from im_pipeline.config import BenchmarkConfig, JudgeConfig
from im_pipeline.evaluation.alpaca_eval import runner as ae
from im_pipeline.evaluation.alpaca_eval.judges import AnnotationCache
from im_pipeline.evaluation.alpaca_eval.judging import annotator_config
from im_pipeline.evaluation.alpaca_eval.metrics import compute_metrics
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext, run_benchmark

KEY = "sk-alpaca-test-5b1e0d-secret"
REFERENCE = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Write a function that returns the sum of two numbers.", "def add(a, b):\n    return a + b"),
    ("Tell me a story about a small model.", "Once upon a time there was a small model."),
    ("Which answer is correct: A or B?", "A"),
    ("Print the numbers from 0 to 9.", "for i in range(10):\n    print(i)"),
    ("Describe the quick brown fox.", "The quick brown fox jumps over the lazy dog."),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fake_data_dir(root: Path, reference: str = "text_davinci_003") -> Path:
    path = root / "alpaca_eval" / reference / "model_outputs.json"
    path.parent.mkdir(parents=True)
    records = [{"dataset": "test", "instruction": i, "output": o, "generator": reference} for i, o in REFERENCE]
    path.write_text(json.dumps(records))
    return root


def make_ctx(model_dir: Path, out_dir: Path, data_dir: Path, judge: JudgeConfig) -> EvalContext:
    return EvalContext(
        model_source=str(model_dir),
        out_dir=out_dir,
        data_dir=data_dir,
        arm="IT",
        seed=0,
        template="tulu",
        batch_size=4,
        judge=judge,
    )


def test_missing_reference_is_a_skip_naming_the_file(tmp_path, tiny_model_dir):
    for version, ref in [(1, "text_davinci_003"), (2, "gpt4_1106_preview")]:
        ctx = make_ctx(tiny_model_dir, tmp_path / "out", tmp_path, JudgeConfig(model=str(tiny_model_dir)))
        with pytest.raises(BenchmarkSkipped, match=str(tmp_path / "alpaca_eval" / ref / "model_outputs.json")):
            ae.run_alpaca_eval(ctx, BenchmarkConfig(limit=2, options={"version": version}))
    result = json.loads(run_benchmark("alpaca_eval", ctx, BenchmarkConfig(limit=2)).read_text())
    assert result["status"] == "skipped" and "text_davinci_003/model_outputs.json" in result["reason"]


def test_bad_version_and_annotator_are_errors(tmp_path, tiny_model_dir):
    ctx = make_ctx(tiny_model_dir, tmp_path / "out", fake_data_dir(tmp_path), JudgeConfig(model=str(tiny_model_dir)))
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        ae.run_alpaca_eval(ctx, BenchmarkConfig(limit=2, options={"version": 3}))
    # both_orders is true or false (default true, as the runner applies it); null used to pass and mean false
    with pytest.raises(ValueError, match="alpaca_eval: option both_orders"):
        run_benchmark("alpaca_eval", ctx, BenchmarkConfig(limit=2, options={"both_orders": None}))
    with pytest.raises(ValueError, match="unknown alpaca_eval annotator 'nope'"):
        annotator_config("nope")


def test_select_is_seeded_subset_with_original_index():
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)]
    a, b = ae.select(records, 7), ae.select(records, 7)
    assert a == b and len(a) == 7 and len({r["instruction"] for r in a}) == 7
    assert all(r["instruction"] == f"q{r['index']}" for r in a)
    assert [r["index"] for r in a] != list(range(7))  # shuffled like alpaca_eval's max_instances
    assert [r["index"] for r in ae.select(records, None)] == list(range(50))


def _check_result(result: dict, out_dir: Path, n: int) -> list[dict]:
    assert result["status"] == "ok" and result["metric"] == "win_rate" and result["n"] == n
    annotations = json.loads(Path(result["artifacts"]["annotations"]).read_text())
    prefs = [a["preference"] for a in annotations]
    assert len(prefs) == n and all(1 <= p <= 2 for p in prefs)
    # alpaca_eval's win rate: mean over (preference - 1), in percent; standard error of that mean
    assert result["value"] == pytest.approx(100 * sum(p - 1 for p in prefs) / n)
    assert 0 <= result["value"] <= 100 and result["stderr"] >= 0
    outputs = json.loads(Path(result["artifacts"]["model_outputs"]).read_text())
    assert [o["instruction"] for o in outputs] == [a["instruction"] for a in annotations]
    ref = {i: o for i, o in REFERENCE}
    want_ref_chars = sum(len(ref[a["instruction"]]) for a in annotations) / n
    assert result["avg_length"]["reference_chars"] == pytest.approx(want_ref_chars, abs=0.051)
    assert result["avg_length"]["model_chars"] == pytest.approx(sum(len(o["output"]) for o in outputs) / n, abs=0.051)
    assert result["length_controlled_win_rate"] is None and result["lc_unavailable"]
    return annotations


def test_local_judge_end_to_end_and_rerun_is_free(tmp_path, tiny_model_dir, monkeypatch):
    data_dir = fake_data_dir(tmp_path / "data")
    judge = JudgeConfig(kind="local_hf", model=str(tiny_model_dir))
    ctx = make_ctx(tiny_model_dir, tmp_path / "out", data_dir, judge)
    cfg = BenchmarkConfig(
        limit=4, options={"version": 1, "max_new_tokens": 6, "annotator": "alpaca_eval_gpt4", "both_orders": False}
    )
    result = json.loads(run_benchmark("alpaca_eval", ctx, cfg).read_text())
    _check_result(result, ctx.out_dir, 4)
    assert result["judge"] == {"kind": "local_hf", "model": str(tiny_model_dir), "base_url_host": None}
    assert result["version"] == "1.0" and result["reference"] == "text_davinci_003"
    assert result["annotator"] == "alpaca_eval_gpt4" and result["judge_calls"] == 4
    assert result["instructions_source"].endswith("text_davinci_003/model_outputs.json")
    # alpaca_eval's leaderboard.csv: the model's row, win_rate and standard_error first
    import pandas as pd

    board = pd.read_csv(result["artifacts"]["leaderboard"], index_col=0)
    assert list(board.index) == ["IT"] and list(board.columns[:2]) == ["win_rate", "standard_error"]
    assert board.loc["IT", "win_rate"] == pytest.approx(result["value"])
    assert board.loc["IT", "n_total"] == 4 and board.loc["IT", "mode"] == "community"
    # the recomputed swap agrees with what the judge actually saw: its raw answer ranks the first-shown output
    from alpaca_eval.completion_parsers import ranking_parser

    cache = json.loads(Path(result["artifacts"]["judge_cache"]).read_text())
    annotations = json.loads(Path(result["artifacts"]["annotations"]).read_text())
    ident = result["judge"]
    for a in annotations:
        raw = cache[AnnotationCache.key(ident, "alpaca_eval_gpt4", a["instruction"], a["output_1"], a["output_2"])]
        assert a["first_shown_won"] == [ranking_parser(raw["raw_completion"])[0] == 1]

    # a re-run neither generates nor judges again, and gives the same numbers
    import im_pipeline.evaluation.generation as generation

    def no_generate(*a, **k):
        raise AssertionError("generation should come from the cache")

    monkeypatch.setattr(generation, "generate", no_generate)
    again = json.loads(
        run_benchmark("alpaca_eval", make_ctx(tiny_model_dir, tmp_path / "out", data_dir, judge), cfg).read_text()
    )
    assert again["judge_calls"] == 0 and again["value"] == result["value"] and again["stderr"] == result["stderr"]


def test_openai_judge_end_to_end_through_http(tmp_path, tiny_model_dir, monkeypatch):
    """The full client path: HTTP to a local OpenAI-compatible server, one 500 retried, parsing, cache."""
    monkeypatch.setenv("IM_TEST_ALPACA_KEY", KEY)
    data_dir = fake_data_dir(tmp_path / "data", "gpt4_1106_preview")
    out = tmp_path / "out"
    with StubOpenAIServer(str(tiny_model_dir), api_key=KEY, fail_first=1) as srv:
        judge = JudgeConfig(kind="openai", model="tiny-judge", base_url=srv.base_url, api_key_env="IM_TEST_ALPACA_KEY")
        cfg = BenchmarkConfig(
            limit=5,
            options={
                "version": 2,
                "max_new_tokens": 6,
                "guided_choice": True,
                "judge_concurrency": 1,
                "both_orders": False,  # one call per pair: this test counts HTTP requests
            },
        )
        result = json.loads(
            run_benchmark("alpaca_eval", make_ctx(tiny_model_dir, out, data_dir, judge), cfg).read_text()
        )
        annotations = _check_result(result, out, 5)
        assert [r["status"] for r in srv.requests].count(500) == 1
        assert srv.count() == 5 + 1  # 5 pairs, one of them retried
        assert result["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and result["reference"] == "gpt4_1106_preview"
        port = srv.base_url.split(":")[2].split("/")[0]
        assert result["judge"] == {"kind": "openai", "model": "tiny-judge", "base_url_host": f"127.0.0.1:{port}"}
        # weighted judge: preferences are probabilities, not just 1 or 2
        assert any(1 < a["preference"] < 2 for a in annotations)

        again = json.loads(
            run_benchmark("alpaca_eval", make_ctx(tiny_model_dir, out, data_dir, judge), cfg).read_text()
        )
        assert srv.count() == 6 and again["judge_calls"] == 0 and again["value"] == result["value"]

    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "judge_cache.json" for p in written)
    for p in written:
        assert KEY not in p.read_text(encoding="utf-8", errors="replace"), p


def test_real_reference_file_version_2(tmp_path, tiny_model_dir, data_dir):
    """The shared offline AlpacaEval set: 805 instructions, same in both reference files."""
    records, source = ae.load_reference(2, data_dir)
    v1, _ = ae.load_reference(1, data_dir)
    assert len(records) == ae.N_OFFICIAL and source.endswith("gpt4_1106_preview/model_outputs.json")
    assert [r["instruction"] for r in records] == [r["instruction"] for r in v1]
    ctx = make_ctx(tiny_model_dir, tmp_path / "out", data_dir, JudgeConfig(model=str(tiny_model_dir)))
    result = ae.run_alpaca_eval(ctx, BenchmarkConfig(limit=2, options={"version": 2, "max_new_tokens": 4}))
    assert result["n"] == 2 and "this run used 2" in result["lc_note"]
    assert result["avg_length"]["reference_chars"] > result["avg_length"]["model_chars"]


def test_both_orders_averages_the_two_presentations(tmp_path, tiny_model_dir):
    data_dir = fake_data_dir(tmp_path / "data")
    ctx = make_ctx(tiny_model_dir, tmp_path / "out", data_dir, JudgeConfig(model=str(tiny_model_dir)))
    cfg = BenchmarkConfig(limit=3, options={"version": 1, "max_new_tokens": 6})  # local judge: both orders, weighted
    result = ae.run_alpaca_eval(ctx, cfg)
    assert result["judge_calls"] == 6 and result["both_orders"] is True
    assert result["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and result["reference"] == "text_davinci_003"
    annotations = json.loads(Path(result["artifacts"]["annotations"]).read_text())
    cache = json.loads(Path(result["artifacts"]["judge_cache"]).read_text())
    ident = {"kind": "local_hf", "model": str(tiny_model_dir), "base_url_host": None}
    for a in annotations:
        fwd = cache[
            AnnotationCache.key(
                ident, "weighted_alpaca_eval_gpt4_turbo|both-orders", a["instruction"], a["output_1"], a["output_2"]
            )
        ]["preference"]
        rev = cache[
            AnnotationCache.key(
                ident, "weighted_alpaca_eval_gpt4_turbo|both-orders", a["instruction"], a["output_2"], a["output_1"]
            )
        ]["preference"]
        assert a["preference"] == pytest.approx((fwd + 3 - rev) / 2)
        assert len(a["first_shown_won"]) == 2
    won = [w for a in annotations for w in a["first_shown_won"]]
    assert result["judge_prefers_first_shown"] == pytest.approx(sum(won) / len(won), abs=1e-4)
    share = sum(won) / len(won)
    assert result["judge_position_biased"] is (max(share, 1 - share) >= 0.9)
    # per-instruction win shares (preference − 1), keyed by the instruction's index, for paired comparisons
    assert result["items"]["win"] == {str(a["index"]): pytest.approx(a["preference"] - 1) for a in annotations}
    assert sum(result["items"]["win"].values()) / 3 * 100 == pytest.approx(result["value"])


def test_position_bias_flag(monkeypatch):
    """compute_metrics flags a judge whose first-shown output wins >= 90% of decided verdicts."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    rows = [
        {"index": i, "preference": p, "first_shown_won": w, "output_1": "a", "output_2": "b", "instruction": "q"}
        for i, (p, w) in enumerate([(1.5, [True, True])] * 9 + [(1.5, [True, False])])
    ]
    m = compute_metrics(rows)
    assert m["judge_prefers_first_shown"] == pytest.approx(19 / 20) and m["judge_position_biased"] is True
    rows[0]["first_shown_won"] = [False, False]
    rows[1]["first_shown_won"] = [False, False]
    m = compute_metrics(rows)
    assert m["judge_prefers_first_shown"] == pytest.approx(15 / 20) and m["judge_position_biased"] is False


def test_hub_path_when_no_offline_file(tmp_path, monkeypatch):
    """No local file and the Hub allowed: alpaca_eval's loader, else the raw JSON file of the Hub dataset."""
    import alpaca_eval.constants
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub_file = fake_data_dir(tmp_path / "hub") / "alpaca_eval" / "text_davinci_003" / "model_outputs.json"
    asked = []

    def script_loader(name):
        raise RuntimeError("Dataset scripts are no longer supported")

    def download(repo, filename, repo_type):
        asked.append((repo, filename, repo_type))
        return str(hub_file)

    monkeypatch.setattr(alpaca_eval.constants, "get_alpaca_eval_data", script_loader)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    records, source = ae.load_reference(1, tmp_path / "empty")
    assert len(records) == len(REFERENCE) and source == "hub:tatsu-lab/alpaca_eval/alpaca_eval.json"
    assert asked == [("tatsu-lab/alpaca_eval", "alpaca_eval.json", "dataset")]

    def unreachable(*a, **k):
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(BenchmarkSkipped, match=r"gpt4_1106_preview/model_outputs\.json.*connection refused"):
        ae.load_reference(2, tmp_path / "empty")
