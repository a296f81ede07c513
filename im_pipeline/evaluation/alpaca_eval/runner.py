"""AlpacaEval's runner: reference outputs, the model's answers, the judge's verdicts, the result record.

See the package docstring (:mod:`im_pipeline.evaluation.alpaca_eval`) for the steps and the options.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from im_pipeline import hub
from im_pipeline.config import BenchmarkConfig, stable_hash
from im_pipeline.evaluation.alpaca_eval.judges import AnnotationCache, judge_identity
from im_pipeline.evaluation.alpaca_eval.judging import LOCAL_JUDGE_ANNOTATOR, annotate, load_local_judge
from im_pipeline.evaluation.alpaca_eval.metrics import compute_metrics, length_stats, write_leaderboard
from im_pipeline.evaluation.common import BenchmarkSkipped, EvalContext
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
        cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            stop=stop,
            batch_size=ctx.batch_size,
            kv_cache_bytes=ctx.kv_cache_bytes,
        )
        step = max(32, 4 * ctx.batch_size)  # save every few batches: an interrupted run keeps its generations
        for start in range(0, len(todo), step):
            outs = generate(model, tokenizer, prompts[start : start + step], cfg)
            cached.update({s: o[0].strip() for s, o in zip(todo[start : start + step], outs, strict=True)})
            write_json(path, {"settings": settings, "outputs": cached})
    return [cached[s] for s in instructions]


# -- the benchmark -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """One AlpacaEval run's options, defaults applied (see the package docstring)."""

    version: int
    annotator: str
    both_orders: bool
    max_new_tokens: int
    cache_dir: Path
    seed: int
    guided_choice: bool
    judge_concurrency: int

    @property
    def reference(self) -> str:
        return VERSIONS[self.version]["reference"]


def _settings(ctx: EvalContext, cfg: BenchmarkConfig) -> _Settings:
    opts = dict(cfg.options)
    version = int(opts.get("version", 1))
    if version not in VERSIONS:
        raise ValueError(f"alpaca_eval options.version must be 1 or 2, got {opts.get('version')!r}")
    default_annotator = LOCAL_JUDGE_ANNOTATOR if ctx.judge.kind == "local_hf" else VERSIONS[version]["annotator"]
    return _Settings(
        version=version,
        annotator=str(opts.get("annotator") or default_annotator),
        both_orders=bool(opts.get("both_orders", True)),
        max_new_tokens=int(opts.get("max_new_tokens", 512)),
        cache_dir=Path(opts.get("cache_dir") or Path(ctx.out_dir) / "alpaca_eval"),
        seed=int(opts.get("seed", 123)),
        guided_choice=bool(opts.get("guided_choice", False)),
        judge_concurrency=int(opts.get("judge_concurrency", 4)),
    )


def run_alpaca_eval(ctx: EvalContext, cfg: BenchmarkConfig) -> dict[str, Any]:
    """AlpacaEval (``options.version`` 1 or 2) on ``ctx.model_source`` with ``ctx.judge``; see the package docs."""
    run = _settings(ctx, cfg)
    run.cache_dir.mkdir(parents=True, exist_ok=True)
    reference, source = load_reference(run.version, ctx.data_dir)
    chosen = select(reference, cfg.limit, seed=run.seed)

    instructions = [r["instruction"] for r in chosen]
    t0 = time.perf_counter()
    outputs = generate_outputs(ctx, instructions, max_new_tokens=run.max_new_tokens, cache_dir=run.cache_dir)
    t_gen = time.perf_counter() - t0

    generator = ctx.arm or Path(ctx.model_source).name or ctx.model_source
    pairs = _pairs(chosen, outputs, generator, run.reference)
    cache = AnnotationCache(run.cache_dir / "judge_cache.json")
    t1 = time.perf_counter()
    annotations, calls = _annotate(ctx, run, pairs, cache)
    t_judge = time.perf_counter() - t1
    metrics = compute_metrics(annotations)
    artifacts = _write_artifacts(run, pairs, annotations, generator, metrics, outputs)
    artifacts["judge_cache"] = str(cache.path)
    return _record(ctx, run, metrics, chosen, outputs, source) | {
        "generation": {
            "template": ctx.template,
            "max_new_tokens": run.max_new_tokens,
            "temperature": 0.0,
            "seconds": round(t_gen, 2),
        },
        "judge_calls": calls,
        "judge_seconds": round(t_judge, 2),
        "artifacts": artifacts,
    }


def _pairs(chosen: list[dict[str, Any]], outputs: list[str], generator: str, reference: str) -> list[dict[str, Any]]:
    """What the judge compares: each reference output (``output_1``) against the model's (``output_2``)."""
    return [
        {
            "instruction": r["instruction"],
            "dataset": r.get("dataset"),
            "index": r["index"],
            "output_1": r["output"],
            "generator_1": r.get("generator", reference),
            "output_2": out,
            "generator_2": generator,
        }
        for r, out in zip(chosen, outputs, strict=True)
    ]


def _annotate(
    ctx: EvalContext, run: _Settings, pairs: list[dict[str, Any]], cache: AnnotationCache
) -> tuple[list[dict[str, Any]], int]:
    """The judge's verdicts on ``pairs`` (a local judge comes from the unit's model cache)."""
    local = ctx.judge.kind == "local_hf"
    local_judge = load_local_judge(ctx.judge, ctx.dtype, ctx.cache_dir, ctx.cache, ctx.device) if local else None
    return annotate(
        pairs,
        ctx.judge,
        run.annotator,
        cache,
        both_orders=run.both_orders,
        guided_choice=run.guided_choice,
        concurrency=run.judge_concurrency,
        local_judge=local_judge,
    )


def _write_artifacts(
    run: _Settings,
    pairs: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    generator: str,
    metrics: dict[str, Any],
    outputs: list[str],
) -> dict[str, str]:
    """alpaca_eval's files for this model (its outputs, the annotations, the leaderboard); their paths."""
    tag = f"v{run.version}"
    model_outputs = run.cache_dir / f"model_outputs_{tag}.json"
    write_json(
        model_outputs,
        [
            {"instruction": p["instruction"], "output": p["output_2"], "generator": generator, "dataset": p["dataset"]}
            for p in pairs
        ],
    )
    annotations_path = write_json(run.cache_dir / f"annotations_{tag}.json", annotations)
    board = write_leaderboard(run.cache_dir / f"leaderboard_{tag}.csv", generator, metrics, outputs)
    return {"model_outputs": str(model_outputs), "annotations": str(annotations_path), "leaderboard": str(board)}


def _record(
    ctx: EvalContext,
    run: _Settings,
    metrics: dict[str, Any],
    chosen: list[dict[str, Any]],
    outputs: list[str],
    source: str,
) -> dict[str, Any]:
    """The result's numbers: the win rate and what qualifies it (judge, position bias, lengths, inputs)."""
    return {
        "metric": "win_rate",
        "value": metrics["win_rate"],
        "stderr": metrics["standard_error"],
        "n": metrics["n_total"],
        "unit": "percent",
        "version": f"{run.version}.0",
        "reference": run.reference,
        "annotator": run.annotator,
        "both_orders": run.both_orders,
        "judge": judge_identity(ctx.judge),
        **{k: v for k, v in metrics.items() if k not in ("win_rate", "standard_error", "n_total")},
        "lc_note": None
        if len(chosen) == N_OFFICIAL
        else f"LC win rate is calibrated on all {N_OFFICIAL} instructions; this run used {len(chosen)}",
        "avg_length": length_stats(outputs, [r["output"] for r in chosen]),
        "instructions_source": source,
    }
