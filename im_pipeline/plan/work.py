"""Benchmark work of an experiment before it runs: MMLU and TruthfulQA log-likelihood requests, HumanEval samples,
AlpacaEval generations, judge calls and judge tokens with their cost, the overfitting analysis's generations.

Item counts are the benchmarks' published sizes (a configured ``limit`` caps them); judge tokens per call are an
assumption (:data:`JUDGE_TOKENS`), stated in the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from im_pipeline.config import ExperimentConfig

MMLU_QUESTIONS, MMLU_SUBJECTS, MMLU_CHOICES = 14_042, 57, 4
TRUTHFULQA_QUESTIONS, TRUTHFULQA_MC2_TARGETS = 817, 6_204  # mc_task.json: one request per mc2 target
HUMANEVAL_PROBLEMS = 164
ALPACA_EVAL_INSTRUCTIONS = 805
HUMANEVAL_PROMPT_TOKENS, ALPACA_PROMPT_TOKENS = 160, 60  # typical prompt lengths (Llama tokenizer), assumed

JUDGE_TOKENS = {"input": 900, "output": 30}
"""Tokens per judge call, assumed: alpaca_eval's GPT-4 annotator prompt (~450 tokens) with the instruction and two
outputs of ~200 tokens each; the answer is a short ranking."""

JUDGE_PRICES = {"gpt-4-0613": (30.0, 60.0), "gpt-4": (30.0, 60.0), "gpt-4-turbo": (10.0, 30.0), "gpt-4o": (2.5, 10.0)}
"""USD per million (input, output) tokens: OpenAI's list prices, an assumption (``plan --judge-price`` overrides)."""


def models_evaluated(cfg: ExperimentConfig) -> int:
    """Trained models (arms × seeds) plus the base model when it is evaluated."""
    return len(cfg.arms) * len(cfg.seeds) + (1 if cfg.evaluation.evaluate_base else 0)


def _options(cfg: ExperimentConfig, name: str) -> tuple[Any, Any] | None:
    from im_pipeline.evaluation.specs import get_spec

    bench = getattr(cfg.evaluation, name, None)
    if bench is None or not bench.enabled:
        return None
    return bench, get_spec(name).validate_options(bench.options)


def _capped(total: int, limit: int | None) -> int:
    return total if limit is None else min(total, limit)


def per_model_work(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """What each enabled benchmark asks of one model."""
    work: dict[str, dict[str, Any]] = {}
    if found := _options(cfg, "mmlu"):
        bench, _ = found
        questions = MMLU_QUESTIONS if bench.limit is None else min(MMLU_QUESTIONS, bench.limit * MMLU_SUBJECTS)
        work["mmlu"] = {"questions": questions, "loglikelihood_requests": questions * MMLU_CHOICES}
    if found := _options(cfg, "truthfulqa"):
        bench, _ = found
        q = _capped(TRUTHFULQA_QUESTIONS, bench.limit)
        work["truthfulqa"] = {"questions": q, "loglikelihood_requests": round(TRUTHFULQA_MC2_TARGETS * q / 817)}
    if found := _options(cfg, "humaneval"):
        bench, o = found
        temps = o.temperatures if isinstance(o.temperatures, list) else [o.temperatures]
        if o.temperatures is None:
            temps = [0.0] if o.n == 1 else [0.1, 0.7]
        problems = _capped(HUMANEVAL_PROBLEMS, bench.limit)
        batch = o.batch_size or cfg.evaluation.batch_size
        work["humaneval"] = {
            "problems": problems,
            "samples": problems * o.n * len(temps),
            "max_new_tokens": o.max_new_tokens,
            "rows_per_batch": batch * o.n,
            "prompt_tokens": HUMANEVAL_PROMPT_TOKENS,
        }
    if found := _options(cfg, "alpaca_eval"):
        bench, o = found
        n = _capped(ALPACA_EVAL_INSTRUCTIONS, bench.limit)
        work["alpaca_eval"] = {
            "generations": n,
            "max_new_tokens": o.max_new_tokens,
            "rows_per_batch": cfg.evaluation.batch_size,
            "prompt_tokens": ALPACA_PROMPT_TOKENS,
            "judge_calls": n * (2 if o.both_orders else 1),
        }
    if found := _options(cfg, "overfitting"):
        bench, o = found
        work["overfitting"] = {
            "generations": (bench.limit or o.loss_examples) if o.bleu else 0,  # bleu: false generates nothing
            "max_new_tokens": o.max_new_tokens,
            # train and held-out, plus a seed's in-domain sample (data.in_domain_size, every record of it)
            "loss_examples": 2 * o.loss_examples + cfg.data.in_domain_size,
        }
    return work


def judge_cost(cfg: ExperimentConfig, calls: int, price: tuple[float, float] | None = None) -> dict[str, Any]:
    """Judge tokens and cost of ``calls`` judge calls (a local judge costs nothing but its GPU time)."""
    judge = cfg.evaluation.judge
    tokens_in, tokens_out = calls * JUDGE_TOKENS["input"], calls * JUDGE_TOKENS["output"]
    out: dict[str, Any] = {
        "kind": judge.kind,
        "model": judge.model,
        "calls": calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens_per_call_assumed": dict(JUDGE_TOKENS),
    }
    if judge.kind != "openai":
        out.update(usd=0.0, price=None)
        return out
    price = price or JUDGE_PRICES.get(judge.model)
    if price is None:
        out.update(usd=None, price="unknown for this model: pass --judge-price INPUT OUTPUT")
        return out
    out["price_per_million_tokens"] = {"input": price[0], "output": price[1]}
    out["usd"] = round((tokens_in * price[0] + tokens_out * price[1]) / 1e6, 2)
    return out
