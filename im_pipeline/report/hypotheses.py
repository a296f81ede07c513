"""The pre-registered hypotheses section: each hypothesis, its primary test and outcome, beside the paper's
numbers."""

from __future__ import annotations

from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.report.cells import (
    _f,
    _md_table,
    _signed,
    bench_label,
)
from im_pipeline.runs.layout import BASE_ARM

METRIC_TEXT = {
    "train_loss": "the output-token loss of each training example",
    "test_loss": "the output-token loss of each test example",
    "bleu4": "the sentence BLEU-4 of each training prompt's greedy generation vs its training output",
}


def _p(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}"


def _metric_digits(metric: str) -> int:
    return 2 if metric == "bleu4" else 3


def _effect_cell(r: dict[str, Any]) -> str:
    d = _metric_digits(r["metric"])
    return f"{_signed(r['effect'], d)} [{_f(r['ci'][0], d)}, {_f(r['ci'][1], d)}]"


def hypotheses_section(run: agg.RunResults) -> str:
    """The pre-registered hypotheses (``study:`` of the config), their outcomes and the tests' numbers; "" without."""
    from im_pipeline.analysis.hypotheses import evaluate_hypotheses

    res = evaluate_hypotheses(run)
    if res is None:
        return ""
    study = res["study"]
    ref, trt, alpha = study["reference"], study["treatment"], study["alpha"]
    rows = []
    for r in res["hypotheses"]:
        d = _metric_digits(r["metric"])
        pap = r.get("paper")
        paper_cell = f"{_f(pap['reference'], d)} / {_f(pap['treatment'], d)}" if pap else "–"
        if not r["tested"]:
            rows.append(
                [r["id"], r["text"], paper_cell, "–", "–", "–", "–", "–", f"**{r['outcome']}** ({r['reason']})"]
            )
            continue
        sign = ">" if r["direction"] == "greater" else "<"
        rows.append(
            [
                r["id"],
                f"{r['text']} ({trt} − {ref} {sign} 0 on {METRIC_TEXT[r['metric']]})",
                paper_cell,
                f"{_f(r['reference_mean'], d)} / {_f(r['treatment_mean'], d)}",
                _effect_cell(r),
                _p(r["p_predicted"]),
                _p(r["p_holm"]),
                _p(r["p_opposite_holm"]),
                f"**{r['outcome']}**",
            ]
        )
    tested = [r for r in res["hypotheses"] if r["tested"]]
    seeds = sorted({s for r in tested for s in r["seeds"]})
    # Paired items per hypothesis and seed (the train and test measures can pair different numbers of items).
    n_items = "; ".join(
        f"{r['id']} " + ", ".join(f"s{s} {n}" for s, n in sorted(r["n_items"].items(), key=lambda kv: int(kv[0])))
        for r in tested
    )
    exact = {r["exact"] for r in tested}
    flips = (
        "all 2^m sign flips enumerated (exact)"
        if exact == {True}
        else f"{study['resamples']:,} seeded Monte-Carlo sign flips, p = (b + 1) / (B + 1)"
    )
    parts = [
        f"Written in the config (`study:`) before the first run. Each hypothesis is about {trt} − {ref} on the "
        f"overfitting analysis' per-item scores ({len(seeds)} seeds: {seeds}; paired items per hypothesis and seed: "
        f"{n_items or '–'}). **Primary test**: one-sided, paired at the item level, stratified "
        "by seed: a sign-flip randomisation test whose statistic is the mean over seeds of each seed's mean paired "
        f"difference (signs flipped within each seed's pairs; {flips}); Holm's correction over "
        f"{', '.join(r['id'] for r in res['hypotheses'])} at α = {alpha}. **Outcome**: *confirmed* when the "
        f"Holm-adjusted one-sided p < {alpha} in the predicted direction, *reversed* when the same test and "
        "correction give p < α in the opposite direction, otherwise *not confirmed*. Effect: the stratified mean "
        "difference with a 95% bootstrap CI (items resampled within each seed, 10,000 resamples).",
        _md_table(
            [
                "id",
                "hypothesis",
                f"paper {ref} / {trt}",
                f"ours {ref} / {trt}",
                f"{trt} − {ref} [95% CI]",
                "p one-sided",
                "p Holm",
                "p Holm, opposite direction",
                "outcome",
            ],
            rows,
        ),
        "Paper values"
        + (f" ({'; '.join(sources)})" if (sources := _paper_sources(res["hypotheses"])) else "")
        + " are printed for reference only: they come from another model, training-set size, budget and test set.",
    ]
    if tested:
        k = len(seeds)
        srows = [
            [
                r["id"],
                *[
                    _signed(r["seed_deltas"][s], _metric_digits(r["metric"])) if s in r["seed_deltas"] else "–"
                    for s in seeds
                ],
                f"{r['sign_test']['positive']}+ / {r['sign_test']['negative']}−",
                _p(r["sign_test"]["p_value"]),
            ]
            for r in tested
        ]
        parts.append(
            f"Secondary: every seed's {trt} − {ref} (mean over its paired items) and the exact one-sided sign test "
            f"across seeds in the predicted direction (with {k} seeds its smallest possible p is "
            f"{0.5**k:g}):\n\n"
            + _md_table(["id", *[f"seed {s}" for s in seeds], "signs", "sign test p (one-sided)"], srows)
        )
    if res["controls"]:
        crows = []
        for r in res["controls"]:
            if not r["tested"]:
                crows.append([r["id"], f"{trt} − {r['reference']}", "–", "–", "–"])
                continue
            d = _metric_digits(r["metric"])
            crows.append(
                [
                    r["id"],
                    f"{trt} − {r['reference']} ({'>' if r['direction'] == 'greater' else '<'} 0 predicted)",
                    f"{_f(r['reference_mean'], d)} / {_f(r['treatment_mean'], d)}",
                    _effect_cell(r),
                    f"{_p(r['p_predicted'])} / {_p(r['p_opposite'])}",
                ]
            )
        parts.append(
            f"Exploratory, outside the Holm family: {trt} against the control arm(s) "
            f"{', '.join(f'`{c}`' for c in study['controls'])} on the same metrics, same test, raw p-values:\n\n"
            + _md_table(
                ["id", "comparison", "control / treatment", "effect [95% CI]", "p one-sided (predicted / opposite)"],
                crows,
            )
        )
    for arm, by_seed in res["lr_scale"].items():
        a = run.arm_config(arm)
        scale = a.get("lr_scale")
        cfg_lr = run.config.get("training", {}).get("learning_rate")
        items = []
        for s, v in by_seed.items():
            tokens = (
                f" ({v['output_tokens']} output / {v['im_release_tokens']} im_release target tokens)"
                if v.get("output_tokens") is not None
                else ""
            )
            factor_ = v.get("factor")
            lr = v.get("learning_rate")
            items.append(f"seed {s}: × {factor_:.4f}{tokens} → lr {lr:.4g}" if factor_ is not None else f"seed {s}: –")
        what = (
            "Σ output tokens / Σ `im_release` target tokens of the seed's training sample"
            if scale == "output_over_im_release"
            else f"× {scale}"
        )
        parts.append(f"Learning rate of `{arm}`: {cfg_lr} scaled by {what}; " + "; ".join(items) + ".")
    scope = (study.get("scope") or "").strip()
    model = run.config.get("model", {}).get("source", "?")
    data = run.config.get("data", {}).get("train", "?")
    parts.append(
        (f"Scope: {scope} " if scope else "")
        + f"Nothing here is claimed beyond this model (`{model}`), this data (`{data}`) and these settings."
    )
    train_s = [float(s.get("wall_time_s") or 0.0) for by in run.train_summaries.values() for s in by.values()]
    eval_s = {
        bench: [
            float(r.get("wall_time_s") or 0.0) for arm, by in by_arm.items() if arm != BASE_ARM for r in by.values()
        ]
        for bench, by_arm in run.results.items()
    }
    if train_s:
        evals = "; ".join(f"{bench_label(b)} {sum(v):.0f} s ({len(v)} runs)" for b, v in eval_s.items() if v)
        parts.append(
            f"Compute time of these results, recorded when each was computed (a resumed study's earlier sessions "
            f"included): training {sum(train_s):.0f} s ({len(train_s)} runs, {sum(train_s) / len(train_s):.0f} s "
            f"each); evaluation: {evals or '–'}."
        )
    timings = (run.timings or {}).get("runs") or []
    if timings:
        stg = timings[-1].get("stages", {})
        walls = ", ".join(
            f"{s} {_f(stg.get(s, {}).get('seconds'))} s" for s in ("prepare", "train", "evaluate", "report")
        )
        parts.append(
            f"Wall time per stage of the latest flow run ({timings[-1].get('started', '?')}): {walls}; command total "
            f"{_f(timings[-1].get('command_seconds'))} s (cached task runs cost ~0: a resumed study's earlier runs "
            "are in the provenance table)."
        )
    return "\n\n".join(parts)


def _paper_sources(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['id']}: {r['paper']['source']}" for r in rows if (r.get("paper") or {}).get("source")]
