"""AlpacaEval's judging: alpaca_eval's annotators with our judges as fn_completions, both presentation orders,
cached annotations."""

from __future__ import annotations

import json
import logging
from typing import Any

from im_pipeline.config import JudgeConfig
from im_pipeline.evaluation.alpaca_eval.judges import (
    AnnotationCache,
    LocalHFJudge,
    judge_identity,
    make_fn_completions,
    protocol_for,
)
from im_pipeline.evaluation.common import ModelCache

log = logging.getLogger(__name__)


# Small local judges are almost fully position-biased (smollm2-135m-instruct picked the first-shown output in
# 20/20 pairs with alpaca_eval_gpt4's prompt, the second-shown one in 40/40 with the m/M prompt). Under
# alpaca_eval's random swap their hard verdicts are coin flips; label probabilities averaged over both orders
# cancel the bias and keep what signal there is. Hence these defaults for local_hf judges.
LOCAL_JUDGE_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def alpaca_eval_lib() -> Any:
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
    ae = alpaca_eval_lib()
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


def load_local_judge(
    judge: JudgeConfig, dtype: str, cache_dir: str | None, cache: ModelCache | None, device: str = "cpu"
) -> LocalHFJudge:
    """The local judge model on ``device``, from the unit's :class:`ModelCache` (loaded once per unit), or a fresh
    one."""

    def load() -> LocalHFJudge:
        return LocalHFJudge(judge.model, dtype=dtype, cache_dir=cache_dir, device=device)

    if cache is None:
        return load()
    cache.devices.add(device)
    return cache.judge(("local_hf", judge.model, dtype, device), load)


Presentation = tuple[str, str, str]  # (instruction, output_1, output_2) as handed to alpaca_eval


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
    config = annotator_config(annotator)
    tag = f"{annotator}|both-orders" if both_orders else annotator
    shown = [_presentations(p, both_orders) for p in pairs]
    identity = judge_identity(judge)
    keys = [[AnnotationCache.key(identity, tag, *s) for s in per] for per in shown]
    todo = _uncached(shown, keys, cache)
    if todo:
        protocol = protocol_for(config)
        if judge.kind == "local_hf" and local_judge is None:
            from im_pipeline.devices import resolve_device

            local_judge = load_local_judge(judge, "float32", None, None, resolve_device("auto"))
        fn = make_fn_completions(
            judge, protocol, guided_choice=guided_choice, concurrency=concurrency, local_judge=local_judge
        )
        log.info("AlpacaEval: %d judge calls with %s (%s); %d pairs", len(todo), identity, tag, len(pairs))
        _judge(todo, _single_annotator(config, fn, judge.model, both_orders), cache, chunk)
    annotations = [_combine(p, ks, cache, both_orders) for p, ks in zip(pairs, keys, strict=True)]
    return [{**p, "annotator": tag, **a} for p, a in zip(pairs, annotations, strict=True)], len(todo)


def _presentations(pair: dict[str, Any], both_orders: bool) -> list[Presentation]:
    """How the judge is shown one pair: reference first (alpaca_eval then swaps at random), or both ways."""
    forward = (pair["instruction"], pair["output_1"], pair["output_2"])
    return [forward, (pair["instruction"], pair["output_2"], pair["output_1"])] if both_orders else [forward]


def _uncached(
    shown: list[list[Presentation]], keys: list[list[str]], cache: AnnotationCache
) -> list[tuple[str, Presentation]]:
    """The presentations no verdict is cached for (once each; identical outputs need no judge)."""
    todo = {
        k: s
        for per, ks in zip(shown, keys, strict=True)
        for s, k in zip(per, ks, strict=True)
        if cache.get(k) is None and s[1] != s[2]
    }
    return list(todo.items())


def _single_annotator(config: dict[str, Any], fn: Any, model_name: str, both_orders: bool) -> Any:
    """``alpaca_eval``'s SinglePairwiseAnnotator for ``config`` with ``fn`` as its decoder."""
    ae = alpaca_eval_lib()
    kwargs = {k: v for k, v in config.items() if k not in ("fn_completions", "pretty_name", "link")}
    kwargs.setdefault("completions_kwargs", {})["model_name"] = model_name
    return ae.annotators.pairwise_evaluator.SinglePairwiseAnnotator(
        fn_completions=fn,
        seed=0,
        annotation_column="preference",
        completion_column="raw_completion",
        is_randomize_output_order=not both_orders,
        **kwargs,
    )


def _judge(todo: list[tuple[str, Presentation]], single: Any, cache: AnnotationCache, chunk: int) -> None:
    """Ask the annotator about ``todo`` in chunks; parsed verdicts go into ``cache``, saved after each chunk."""
    import pandas as pd

    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        df = pd.DataFrame([{"instruction": s[0], "output_1": s[1], "output_2": s[2], "_key": k} for k, s in part])
        by_key = {row["_key"]: row for row in single(df).to_dict(orient="records")}
        for k, s in part:
            row = by_key.get(k)
            if row is None or pd.isna(row.get("preference")):
                log.warning("judge answer for instruction %r did not parse; not cached", s[0][:60])
                continue
            raw = row.get("raw_completion")
            raw = raw if isinstance(raw, str) else json.dumps(raw, default=str)
            cache.put(k, {"preference": float(row["preference"]), "raw_completion": raw[:2000]})
        cache.save()


def _combine(pair: dict[str, Any], keys: list[str], cache: AnnotationCache, both_orders: bool) -> dict[str, Any]:
    """One pair's ``preference`` (its cached verdicts, back in (reference, model) order, averaged) and
    ``first_shown_won``."""
    if pair["output_1"] == pair["output_2"]:
        return {"preference": 1.5, "first_shown_won": []}
    prefs, first_won = [], []
    for j, k in enumerate(keys):
        hit = cache.get(k)
        if hit is None:
            continue
        pref = hit["preference"] if j == 0 else 3.0 - hit["preference"]  # back to (reference, model)
        prefs.append(pref)
        model_first = (j == 1) if both_orders else shown_switched(pair)
        if pref != 1.5:
            first_won.append((pref > 1.5) == model_first)
    return {"preference": sum(prefs) / len(prefs) if prefs else None, "first_shown_won": first_won}


def shown_switched(pair: dict[str, Any], seed: int = 0) -> bool:
    """Whether ``alpaca_eval`` showed the judge the model output first (its seeded swap, recomputed)."""
    ae = alpaca_eval_lib()
    # Same seed string as SinglePairwiseAnnotator's RandomSwitchTwoColumnsProcessor (switch column + instruction).
    return bool(
        ae.utils.random_seeded_choice(
            seed="is_switched_outputs" + pair["instruction"] + str(seed), choices=[False, True]
        )
    )
