"""AlpacaEval's judging: alpaca_eval's annotators with our judges as fn_completions, both presentation orders,
cached annotations."""

from __future__ import annotations

import json
import logging
from typing import Any

from im_pipeline.config import JudgeConfig
from im_pipeline.evaluation.common import ModelCache
from im_pipeline.evaluation.judges import (
    AnnotationCache,
    LocalHFJudge,
    judge_identity,
    make_fn_completions,
    protocol_for,
)

log = logging.getLogger(__name__)


# Small local judges are almost fully position-biased (smollm2-135m-instruct picked the first-shown output in
# 20/20 pairs with alpaca_eval_gpt4's prompt, the second-shown one in 40/40 with the m/M prompt). Under
# alpaca_eval's random swap their hard verdicts are coin flips; label probabilities averaged over both orders
# cancel the bias and keep what signal there is. Hence these defaults for local_hf judges.
LOCAL_JUDGE_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def _alpaca_eval() -> Any:
    """Import ``alpaca_eval`` without letting it raise the root logger to INFO (it does so on import)."""
    root = logging.getLogger()
    level = root.level
    import alpaca_eval.annotators.pairwise_evaluator
    import alpaca_eval.metrics
    import alpaca_eval.utils

    root.setLevel(level)
    return alpaca_eval


def annotator_config(name: str) -> dict[str, Any]:
    """One ``alpaca_eval`` evaluator config (``evaluators_configs/<name>/configs.yaml``), prompt path made absolute."""
    ae = _alpaca_eval()
    base = ae.constants.EVALUATORS_CONFIG_DIR
    path = base / name / "configs.yaml"
    if not path.is_file():
        known = sorted(p.name for p in base.iterdir() if (p / "configs.yaml").is_file())
        raise ValueError(f"unknown alpaca_eval annotator {name!r}; known: {known}")
    configs = ae.utils.load_configs(path)
    if len(configs) != 1:
        raise ValueError(f"annotator {name!r} is a pool of {len(configs)} annotators; use a single one")
    config = dict(next(iter(configs.values())))
    config["prompt_template"] = str(base / config["prompt_template"])
    return config


def _local_judge(judge: JudgeConfig, dtype: str, cache_dir: str | None, cache: ModelCache | None) -> LocalHFJudge:
    """The local judge model, from the unit's :class:`ModelCache` (loaded once per unit), or a fresh one."""

    def load() -> LocalHFJudge:
        return LocalHFJudge(judge.model, dtype=dtype, cache_dir=cache_dir)

    return cache.judge(("local_hf", judge.model, dtype), load) if cache is not None else load()


def annotate(
    pairs: list[dict[str, Any]],
    judge: JudgeConfig,
    annotator: str,
    cache: AnnotationCache,
    *,
    both_orders: bool = False,
    guided_choice: bool = False,
    concurrency: int = 4,
    local_judge: LocalHFJudge | None = None,
    chunk: int = 16,
) -> tuple[list[dict[str, Any]], int]:
    """Preference for each pair (``instruction``, ``output_1`` = reference, ``output_2`` = model).

    ``preference``: 1 = reference better, 2 = model better, in between for weighted judges (or averaged orders),
    1.5 for identical outputs, None when the judge's answer did not parse. Default: ``alpaca_eval``'s protocol,
    one verdict per pair with the two outputs in a seeded random order. ``both_orders``: the judge sees each pair
    both ways and the two verdicts are averaged, which cancels a judge's position bias (small judges have a lot)
    at twice the cost. ``first_shown_won``: per verdict, whether the judge preferred the output it saw first.
    Verdicts are looked up in / added to ``cache`` (saved after each chunk, so an interrupted run keeps what it
    paid for). Returns (annotations, new judge calls).
    """
    import pandas as pd

    ae = _alpaca_eval()
    config = annotator_config(annotator)
    identity = judge_identity(judge)
    tag = f"{annotator}|both-orders" if both_orders else annotator
    # presentations: (instruction, output_1, output_2) as handed to alpaca_eval, per pair
    shown: list[list[tuple[str, str, str]]] = []
    for p in pairs:
        forward = (p["instruction"], p["output_1"], p["output_2"])
        shown.append([forward, (p["instruction"], p["output_2"], p["output_1"])] if both_orders else [forward])
    keys = [[AnnotationCache.key(identity, tag, *s) for s in per] for per in shown]
    todo = list(
        {
            k: s
            for per, ks in zip(shown, keys, strict=True)
            for s, k in zip(per, ks, strict=True)
            if cache.get(k) is None and s[1] != s[2]
        }.items()
    )
    calls = 0
    if todo:
        protocol = protocol_for(config)
        if judge.kind == "local_hf" and local_judge is None:
            local_judge = _local_judge(judge, "float32", None, None)
        fn = make_fn_completions(
            judge, protocol, guided_choice=guided_choice, concurrency=concurrency, local_judge=local_judge
        )
        kwargs = {k: v for k, v in config.items() if k not in ("fn_completions", "pretty_name", "link")}
        kwargs.setdefault("completions_kwargs", {})["model_name"] = judge.model
        single = ae.annotators.pairwise_evaluator.SinglePairwiseAnnotator(
            fn_completions=fn,
            seed=0,
            annotation_column="preference",
            completion_column="raw_completion",
            is_randomize_output_order=not both_orders,
            **kwargs,
        )
        log.info("AlpacaEval: %d judge calls with %s (%s); %d pairs", len(todo), identity, tag, len(pairs))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            df = pd.DataFrame([{"instruction": s[0], "output_1": s[1], "output_2": s[2], "_key": k} for k, s in part])
            done = single(df)
            calls += len(part)
            by_key = {row["_key"]: row for row in done.to_dict(orient="records")}
            for k, s in part:
                row = by_key.get(k)
                if row is None or pd.isna(row.get("preference")):
                    log.warning("judge answer for instruction %r did not parse; not cached", s[0][:60])
                    continue
                raw = row.get("raw_completion")
                raw = raw if isinstance(raw, str) else json.dumps(raw, default=str)
                cache.put(k, {"preference": float(row["preference"]), "raw_completion": raw[:2000]})
            cache.save()

    annotations = []
    for p, ks in zip(pairs, keys, strict=True):
        if p["output_1"] == p["output_2"]:
            annotations.append({**p, "annotator": tag, "preference": 1.5, "first_shown_won": []})
            continue
        prefs, first_won = [], []
        for j, k in enumerate(ks):
            hit = cache.get(k)
            if hit is None:
                continue
            pref = hit["preference"] if j == 0 else 3.0 - hit["preference"]  # back to (reference, model)
            prefs.append(pref)
            model_first = (j == 1) if both_orders else shown_switched(p)
            if pref != 1.5:
                first_won.append((pref > 1.5) == model_first)
        preference = sum(prefs) / len(prefs) if prefs else None
        annotations.append({**p, "annotator": tag, "preference": preference, "first_shown_won": first_won})
    return annotations, calls


def shown_switched(pair: dict[str, Any], seed: int = 0) -> bool:
    """Whether ``alpaca_eval`` showed the judge the model output first (its seeded swap, recomputed)."""
    ae = _alpaca_eval()
    # Same seed string as SinglePairwiseAnnotator's RandomSwitchTwoColumnsProcessor (switch column + instruction).
    return bool(
        ae.utils.random_seeded_choice(
            seed="is_switched_outputs" + pair["instruction"] + str(seed), choices=[False, True]
        )
    )
