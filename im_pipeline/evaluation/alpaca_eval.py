"""AlpacaEval 1.0 / 2.0: win rate of the model's outputs against reference outputs, by a configurable judge.

Steps: the 805 instructions and the reference outputs (1.0: ``text_davinci_003``; 2.0: ``gpt4_1106_preview``)
come from ``<data_dir>/alpaca_eval/<reference>/model_outputs.json`` offline, else from the Hub through
``alpaca_eval``'s own dataset loading. The model answers each instruction with the training template
(``render_prompt``, greedy). ``alpaca_eval``'s pairwise annotator (its prompt template for the version, its
seeded random swap of the two outputs, its parser) asks the judge (:mod:`im_pipeline.evaluation.judges`) which
output is better, and ``alpaca_eval.metrics`` turns the preferences into a win rate and its standard error.
The length-controlled win rate needs a file from the Hub; it is reported only when that works.

Options (``evaluation.alpaca_eval.options``):

- ``version``: 1 (default) or 2.
- ``annotator``: an ``alpaca_eval`` evaluator config name (default ``alpaca_eval_gpt4`` for 1.0,
  ``weighted_alpaca_eval_gpt4_turbo`` for 2.0; for a ``local_hf`` judge ``weighted_alpaca_eval_gpt4_turbo``
  for both, see ``LOCAL_JUDGE_ANNOTATOR``); the judge replaces its model. Annotators with ``ranking_parser`` or
  ``logprob_parser`` work with every judge; others only with an OpenAI-compatible one.
- ``max_new_tokens`` (default 512): generation budget per answer; output length matters to AlpacaEval.
- ``cache_dir``: where generations and judge verdicts are cached (default ``<out_dir>/alpaca_eval``).
- ``both_orders`` (default true, for every judge): judge each pair in both orders and average, cancelling the
  judge's position bias (doubles judge cost); false: ``alpaca_eval``'s seeded random order. The result's
  ``judge_prefers_first_shown`` measures the bias (0.5 = none); ``judge_position_biased`` is true when one
  position wins >= 90% of the decided verdicts (:data:`POSITION_BIAS_LIMIT`): the win rate is then not a
  measurement of the outputs, and the report says so instead of interpreting it.
- ``guided_choice`` (default false): send vLLM's ``guided_choice`` to an OpenAI-compatible judge server.
- ``judge_concurrency`` (default 4): parallel requests to an OpenAI-compatible judge.
- ``seed`` (default 123): which instructions a ``limit`` picks (``alpaca_eval``'s own ``max_instances`` seed).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from im_pipeline import hub
from im_pipeline.config import BenchmarkConfig, stable_hash
from im_pipeline.evaluation.alpaca_eval_judging import LOCAL_JUDGE_ANNOTATOR, _local_judge, annotate
from im_pipeline.evaluation.alpaca_eval_metrics import _words, compute_metrics, write_leaderboard
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext
from im_pipeline.evaluation.judges import (
    AnnotationCache,
    judge_identity,
)
from im_pipeline.provenance import write_json

log = logging.getLogger(__name__)

VERSIONS: dict[int, dict[str, str]] = {
    1: {"reference": "text_davinci_003", "annotator": "alpaca_eval_gpt4", "hub_config": "alpaca_eval"},
    2: {
        "reference": "gpt4_1106_preview",
        "annotator": "weighted_alpaca_eval_gpt4_turbo",
        "hub_config": "alpaca_eval_gpt4_baseline",
    },
}
N_OFFICIAL = 805


# -- inputs -------------------------------------------------------------------------------------------------


def reference_path(data_dir: Path | None, reference: str) -> Path | None:
    return Path(data_dir) / "alpaca_eval" / reference / "model_outputs.json" if data_dir else None


def load_reference(version: int, data_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    """Reference records (``instruction``, ``output``, ``generator``, ``dataset``) and where they came from.

    Offline file first; the Hub (``alpaca_eval``'s loader) when the file is missing and the Hub is allowed.
    Raises :class:`BenchmarkSkipped` naming the missing file when neither works.
    """
    spec = VERSIONS[version]
    path = reference_path(data_dir, spec["reference"])
    if path is not None and path.is_file():
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        bad = [i for i, r in enumerate(records, start=1) if not {"instruction", "output"} <= set(r)]
        if bad:
            raise ValueError(f"{path}: record {bad[0]} lacks 'instruction'/'output'")
        return records, str(path)
    where = str(path) if path else "<data_dir>/alpaca_eval/" + spec["reference"] + "/model_outputs.json (no data_dir)"
    if hub.hub_offline():
        raise BenchmarkSkipped(
            f"AlpacaEval {version}.0 reference outputs not found at {where}, and HF_HUB_OFFLINE "
            "is set (set data_dir / IM_PIPELINE_DATA_DIR to a directory holding them)"
        )
    errors = []
    try:  # alpaca_eval's own loader (a dataset script: datasets >= 4 no longer runs those)
        from alpaca_eval import constants

        dataset = constants.get_alpaca_eval_data(spec["hub_config"])
        return [dict(r) for r in dataset], f"hub:tatsu-lab/alpaca_eval/{spec['hub_config']}"
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {str(exc)[:150]}")
    try:  # the JSON file that script reads
        from huggingface_hub import hf_hub_download

        filename = f"{spec['hub_config']}.json"
        local = hf_hub_download("tatsu-lab/alpaca_eval", filename, repo_type="dataset")
        records = json.loads(Path(local).read_text(encoding="utf-8"))
        return records, f"hub:tatsu-lab/alpaca_eval/{filename}"
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {str(exc)[:150]}")
    raise BenchmarkSkipped(
        f"AlpacaEval {version}.0 reference outputs not found at {where}, and the Hub failed: {'; '.join(errors)}"
    )


def select(records: list[dict[str, Any]], limit: int | None, seed: int = 123) -> list[dict[str, Any]]:
    """All records, or ``limit`` of them picked as ``alpaca_eval evaluate --max_instances`` does (seeded shuffle).

    Each gets ``index``: its position in the full set (the length-controlled GLM keys on it).
    """
    import pandas as pd

    rows = [dict(r, index=i) for i, r in enumerate(records)]
    if limit is None or limit >= len(rows):
        return rows
    order = pd.DataFrame({"i": range(len(rows))}).sample(frac=1, random_state=seed)["i"].tolist()
    return [rows[i] for i in order[:limit]]


def _weights_fingerprint(source: str) -> str | None:
    path = Path(source)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return stable_hash([(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files])


# -- generation -------------------------------------------------------------------------------------------


def generate_outputs(ctx: EvalContext, instructions: list[str], *, max_new_tokens: int, cache_dir: Path) -> list[str]:
    """The model's greedy answers (training template), cached per (model, template, settings) and instruction."""
    from im_pipeline.data.templates import render_prompt
    from im_pipeline.evaluation.generation import GenerationConfig, generate

    stop = ("<|user|>", "<|system|>", "<|assistant|>") if ctx.template == "tulu" else ()
    settings = {
        "model": ctx.model_source,
        "weights": _weights_fingerprint(ctx.model_source),
        "template": ctx.template,
        "max_new_tokens": max_new_tokens,
        "stop": list(stop),
        "dtype": ctx.dtype,
    }
    path = cache_dir / f"generations-{stable_hash(settings)}.json"
    cached: dict[str, str] = {}
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8")).get("outputs", {})
    todo = [s for s in dict.fromkeys(instructions) if s not in cached]
    log.info(
        "AlpacaEval generation: %d instructions, %d cached, %d to generate",
        len(instructions),
        len(instructions) - len(todo),
        len(todo),
    )
    if todo:
        model, tokenizer = ctx.model_and_tokenizer()
        prompts = [
            render_prompt([{"role": "user", "content": s}], template=ctx.template, tokenizer=tokenizer) for s in todo
        ]
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=stop, batch_size=ctx.batch_size)
        step = max(32, 4 * ctx.batch_size)  # save every few batches: an interrupted run keeps its generations
        for start in range(0, len(todo), step):
            outs = generate(model, tokenizer, prompts[start : start + step], cfg)
            cached.update({s: o[0].strip() for s, o in zip(todo[start : start + step], outs, strict=True)})
            write_json(path, {"settings": settings, "outputs": cached})
    return [cached[s] for s in instructions]


# -- the benchmark -------------------------------------------------------------------------------------------


def run_alpaca_eval(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """AlpacaEval (``options.version`` 1 or 2) on ``ctx.model_source`` with ``ctx.judge``; see the module docs."""
    opts = dict(cfg.options)
    version = int(opts.get("version", 1))
    if version not in VERSIONS:
        raise ValueError(f"alpaca_eval options.version must be 1 or 2, got {opts.get('version')!r}")
    spec = VERSIONS[version]
    local = ctx.judge.kind == "local_hf"
    annotator = str(opts.get("annotator") or (LOCAL_JUDGE_ANNOTATOR if local else spec["annotator"]))
    both_orders = bool(opts.get("both_orders", True))
    max_new_tokens = int(opts.get("max_new_tokens", 512))
    cache_dir = Path(opts.get("cache_dir") or Path(ctx.out_dir) / "alpaca_eval")
    cache_dir.mkdir(parents=True, exist_ok=True)

    reference, source = load_reference(version, ctx.data_dir)
    chosen = select(reference, cfg.limit, seed=int(opts.get("seed", 123)))
    instructions = [r["instruction"] for r in chosen]

    t0 = time.perf_counter()
    outputs = generate_outputs(ctx, instructions, max_new_tokens=max_new_tokens, cache_dir=cache_dir)
    t_gen = time.perf_counter() - t0

    generator = ctx.arm or Path(ctx.model_source).name or ctx.model_source
    pairs = [
        {
            "instruction": r["instruction"],
            "dataset": r.get("dataset"),
            "index": r["index"],
            "output_1": r["output"],
            "generator_1": r.get("generator", spec["reference"]),
            "output_2": out,
            "generator_2": generator,
        }
        for r, out in zip(chosen, outputs, strict=True)
    ]
    cache = AnnotationCache(cache_dir / "judge_cache.json")
    t1 = time.perf_counter()
    local_judge = _local_judge(ctx.judge, ctx.dtype, ctx.cache_dir, ctx.cache) if local else None
    annotations, calls = annotate(
        pairs,
        ctx.judge,
        annotator,
        cache,
        both_orders=both_orders,
        guided_choice=bool(opts.get("guided_choice", False)),
        concurrency=int(opts.get("judge_concurrency", 4)),
        local_judge=local_judge,
    )
    t_judge = time.perf_counter() - t1
    metrics = compute_metrics(annotations)

    tag = f"v{version}"
    write_json(
        cache_dir / f"model_outputs_{tag}.json",
        [
            {"instruction": p["instruction"], "output": p["output_2"], "generator": generator, "dataset": p["dataset"]}
            for p in pairs
        ],
    )
    write_json(cache_dir / f"annotations_{tag}.json", annotations)
    board = write_leaderboard(cache_dir / f"leaderboard_{tag}.csv", generator, metrics, outputs)

    model_chars = [len(o) for o in outputs]
    ref_chars = [len(r["output"]) for r in chosen]
    return {
        "metric": "win_rate",
        "value": metrics["win_rate"],
        "stderr": metrics["standard_error"],
        "n": metrics["n_total"],
        "unit": "percent",
        "version": f"{version}.0",
        "reference": spec["reference"],
        "annotator": annotator,
        "both_orders": both_orders,
        "judge": judge_identity(ctx.judge),
        **{k: v for k, v in metrics.items() if k not in ("win_rate", "standard_error", "n_total")},
        "lc_note": None
        if len(chosen) == N_OFFICIAL
        else f"LC win rate is calibrated on all {N_OFFICIAL} instructions; this run used {len(chosen)}",
        "avg_length": {
            "model_chars": round(statistics.mean(model_chars), 1),
            "reference_chars": round(statistics.mean(ref_chars), 1),
            "model_words": round(statistics.mean(_words(o) for o in outputs), 1),
            "reference_words": round(statistics.mean(_words(r["output"]) for r in chosen), 1),
        },
        "instructions_source": source,
        "generation": {
            "template": ctx.template,
            "max_new_tokens": max_new_tokens,
            "temperature": 0.0,
            "seconds": round(t_gen, 2),
        },
        "judge_calls": calls,
        "judge_seconds": round(t_judge, 2),
        "artifacts": {
            "model_outputs": str(cache_dir / f"model_outputs_{tag}.json"),
            "annotations": str(cache_dir / f"annotations_{tag}.json"),
            "leaderboard": str(board),
            "judge_cache": str(cache.path),
        },
    }
