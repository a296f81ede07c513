"""The pre-registered hypotheses section: each hypothesis, its primary test and outcome, beside the paper's
numbers."""

from __future__ import annotations

from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.report.cells import bench_label, fmt, md_table, signed
from im_pipeline.results import TrainSummary
from im_pipeline.runs.layout import BASE_ARM

METRIC_TEXT = {
    "train_loss": "the output-token loss of each training example",
    "test_loss": "the output-token loss of each test example",
    "in_domain_loss": "the output-token loss of each in-domain test example",
    "bleu4": "the sentence BLEU-4 of each training prompt's greedy generation vs its training output",
}


def p_cell(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}"


def metric_digits(metric: str) -> int:
    return 2 if metric == "bleu4" else 3


def effect_cell(r: dict[str, Any]) -> str:
    """'effect [low, high]' of a comparison's row, in its metric's digits."""
    d = metric_digits(r["metric"])
    return f"{signed(r['effect'], d)} [{fmt(r['ci'][0], d)}, {fmt(r['ci'][1], d)}]"


def hypotheses_section(run: agg.RunResults) -> str:
    """The pre-registered hypotheses (``study:`` of the config), their outcomes and the tests' numbers; "" without."""
    from im_pipeline.analysis.hypotheses import evaluate_hypotheses

    res = evaluate_hypotheses(run)
    if res is None:
        return ""
    study = res["study"]
    tested = [r for r in res["hypotheses"] if r["tested"]]
    parts = [_method_text(res, tested), primary_table(res), _paper_note(res["hypotheses"])]
    if tested:
        parts.append(seeds_table(study, tested))
    if res["controls"]:
        parts.append(controls_table(study, res["controls"]))
    parts += [lr_scale_text(run, arm, by_seed) for arm, by_seed in res["lr_scale"].items()]
    model, data = run.config.model.source, run.config.data.train
    scope = (study.get("scope") or "").strip()
    data_cfg = run.config.data
    if data_cfg.per_seed and not data_cfg.held_out:
        scope = (scope + " " if scope else "") + (
            f"The test items are in-domain: each seed's test sample comes from the training source (`{data}`); "
            "an effect on them need not hold out of domain (the paper's overfitting test set was another data set)."
        )
    parts.append(
        (f"Scope: {scope} " if scope else "")
        + f"Nothing here is claimed beyond this model (`{model}`), this data (`{data}`) and these settings."
    )
    parts += [compute_text(run), latest_walls_text(run)]
    return "\n\n".join(p for p in parts if p)


def _tested_seeds(tested: list[dict[str, Any]]) -> list[int]:
    return sorted({s for r in tested for s in r["seeds"]})


def _method_text(res: dict[str, Any], tested: list[dict[str, Any]]) -> str:
    """What was tested, how, and what each outcome means."""
    study = res["study"]
    ref, trt, alpha = study["reference"], study["treatment"], study["alpha"]
    seeds = _tested_seeds(tested)
    # Paired items per hypothesis and seed (the train and test measures can pair different numbers of items).
    n_items = "; ".join(
        f"{r['id']} " + ", ".join(f"s{s} {n}" for s, n in sorted(r["n_items"].items(), key=lambda kv: int(kv[0])))
        for r in tested
    )
    family = ", ".join(r["id"] for r in res["hypotheses"])
    head = (
        f"Written in the config (`study:`) before the first run. Each hypothesis is about {trt} − {ref} on the "
        f"overfitting analysis' per-item scores ({len(seeds)} seeds: {seeds}; paired items per hypothesis and seed: "
        f"{n_items or '–'}). "
    )
    if study["primary_test"] == "seeds":
        return head + (
            "**Primary test**: one-sided Student t on the seed deltas (each seed's mean paired difference; the seed "
            f"is the unit that was randomised); Holm's correction over {family} at α = {alpha}. **Outcome**: "
            f"*confirmed* when the Holm-adjusted one-sided p < {alpha}, *reversed* when the two-sided t test, "
            "Holm-adjusted over the same hypotheses, gives p < α with the effect in the other direction, otherwise "
            "*not confirmed*. Effect: the mean of the seed deltas, with the one interval named in its column."
        )
    flips = (
        "all 2^m sign flips enumerated (exact)"
        if {r["exact"] for r in tested} == {True}
        else f"{study['resamples']:,} seeded Monte-Carlo sign flips, p = (b + 1) / (B + 1)"
    )
    return head + (
        "**Primary test** (as pre-registered): one-sided, paired at the item level, stratified "
        "by seed: a sign-flip randomisation test whose statistic is the mean over seeds of each seed's mean paired "
        f"difference (signs flipped within each seed's pairs; {flips}); Holm's correction over "
        f"{family} at α = {alpha}. It is conditional on the trained models: it asks whether these "
        f"{len(seeds)} trained pairs differ on these items, not whether another training run would. **Outcome**: "
        f"*confirmed* when the Holm-adjusted one-sided p < {alpha} in the predicted direction, *reversed* when the "
        "same test and correction give p < α in the opposite direction, otherwise *not confirmed*. Effect: the "
        "stratified mean difference with a 95% bootstrap CI in which only the items vary (resampled within each "
        "seed, 10,000 resamples); the seed-level test is the secondary table's."
    )


def _primary_row(r: dict[str, Any], ref: str, trt: str) -> list[Any]:
    d = metric_digits(r["metric"])
    pap = r["paper"]
    paper_cell = f"{fmt(pap['reference'], d)} / {fmt(pap['treatment'], d)}" if pap else "–"
    if not r["tested"]:
        return [r["id"], r["text"], paper_cell, "–", "–", "–", "–", "–", f"**{r['outcome']}** ({r['reason']})"]
    sign = ">" if r["direction"] == "greater" else "<"
    return [
        r["id"],
        f"{r['text']} ({trt} − {ref} {sign} 0 on {METRIC_TEXT[r['metric']]})",
        paper_cell,
        f"{fmt(r['reference_mean'], d)} / {fmt(r['treatment_mean'], d)}",
        effect_cell(r),
        p_cell(r["p_predicted"]),
        p_cell(r["p_holm"]),
        p_cell(r["p_opposite_holm"]),
        f"**{r['outcome']}**",
    ]


def primary_table(res: dict[str, Any]) -> str:
    """One row per hypothesis: the paper's and our means, the effect, the p-values and the outcome."""
    ref, trt = res["study"]["reference"], res["study"]["treatment"]
    seeds = res["study"]["primary_test"] == "seeds"
    varies = next((r["ci_varies"] for r in res["hypotheses"] if r["tested"]), "–")
    header = [
        "id",
        "hypothesis",
        f"paper {ref} / {trt}",
        f"ours {ref} / {trt}",
        f"{trt} − {ref} [95% CI; varies: {varies}]",
        "p one-sided (t, seeds)" if seeds else "p one-sided (items | trained models)",
        "p Holm",
        "p Holm, two-sided" if seeds else "p Holm, opposite direction",
        "outcome",
    ]
    return md_table(header, [_primary_row(r, ref, trt) for r in res["hypotheses"]])


def _paper_note(rows: list[dict[str, Any]]) -> str:
    sources = [f"{r['id']}: {r['paper']['source']}" for r in rows if r["paper"] and r["paper"]["source"]]
    return (
        "Paper values"
        + (f" ({'; '.join(sources)})" if sources else "")
        + " are printed for reference only: they come from another model, training-set size, budget and test set."
    )


def sign_test_reachable(k: int, alpha: float) -> bool:
    """Whether a one-sided exact sign test over k seeds can reach p < α at all (its smallest p is 0.5^k)."""
    return 0.5**k < alpha


def _seed_row(r: dict[str, Any], seeds: list[int], items_primary: bool, sign: bool) -> list[Any]:
    d = metric_digits(r["metric"])
    cells = [signed(r["seed_deltas"][s], d) if s in r["seed_deltas"] else "–" for s in seeds]
    t = r["seed_t"]
    second = p_cell(t["p_predicted"]) if items_primary and t else p_cell(r["items_test"]["p_predicted"])
    if not items_primary and t is None:
        second = "–"
    row = [r["id"], *cells, second]
    if sign:
        row.append(p_cell(r["sign_test"]["p_value"]))
    sd, mde = r["seed_sd"], r["detectable"]
    row += [fmt(sd, d) if sd is not None else "–", fmt(mde, d) if mde is not None else "–"]
    return row


def seeds_table(study: dict[str, Any], tested: list[dict[str, Any]]) -> str:
    """Secondary: every seed's difference, the other level's test, the sign test across seeds when it can reach
    significance with these seeds, and the power line (the effect detectable at 80% from the seed spread)."""
    ref, trt, alpha = study["reference"], study["treatment"], study["alpha"]
    seeds = _tested_seeds(tested)
    items_primary = study["primary_test"] == "items"
    sign = sign_test_reachable(len(seeds), alpha)
    second = "t one-sided p (seeds)" if items_primary else "p one-sided (items | trained models)"
    header = ["id", *[f"seed {s}" for s in seeds], second]
    header += ["sign test p (one-sided)"] if sign else []
    header += ["SD of seed deltas", "detectable at 80% power"]
    level = (
        "the one-sided Student t on the seed deltas (the seed is the unit that was randomised; "
        f"{len(seeds) - 1} df, raw p)"
        if items_primary
        else "the stratified item-level sign-flip test, conditional on the trained models (raw p)"
    )
    sign_text = (
        f"the exact one-sided sign test across seeds (its smallest possible p with {len(seeds)} seeds is "
        f"{0.5 ** len(seeds):g})"
        if sign
        else f"no sign test (with {len(seeds)} seeds its smallest possible p, {0.5 ** len(seeds):g}, is not < {alpha})"
    )
    power_alpha = tested[0]["power_alpha"] if tested else alpha
    return (
        f"Secondary: every seed's {trt} − {ref} (mean over its paired items), {level}, {sign_text}, and the power "
        f"line: the smallest |effect| a one-sided t over these {len(seeds)} seeds detects with 80% power at "
        f"α = {power_alpha:.4g} (Holm's strictest step), given the observed SD of the seed deltas:\n\n"
        + md_table(header, [_seed_row(r, seeds, items_primary, sign) for r in tested])
    )


def controls_table(study: dict[str, Any], controls: list[dict[str, Any]]) -> str:
    """Exploratory: the treatment against the control arm(s), raw p-values."""
    trt = study["treatment"]
    crows = []
    for r in controls:
        if not r["tested"]:
            crows.append([r["id"], f"{trt} − {r['reference']}", "–", "–", "–"])
            continue
        d = metric_digits(r["metric"])
        crows.append(
            [
                r["id"],
                f"{trt} − {r['reference']} ({'>' if r['direction'] == 'greater' else '<'} 0 predicted)",
                f"{fmt(r['reference_mean'], d)} / {fmt(r['treatment_mean'], d)}",
                effect_cell(r),
                f"{p_cell(r['p_predicted'])} / {p_cell(r['p_opposite'])}",
            ]
        )
    return (
        f"Exploratory, outside the Holm family: {trt} against the control arm(s) "
        f"{', '.join(f'`{c}`' for c in study['controls'])} on the same metrics, same test, raw p-values:\n\n"
        + md_table(
            [
                "id",
                "comparison",
                "control / treatment",
                f"effect [95% CI; varies: {next((r['ci_varies'] for r in controls if r['tested']), '–')}]",
                "p one-sided (predicted / opposite)",
            ],
            crows,
        )
    )


def lr_scale_text(run: agg.RunResults, arm: str, by_seed: dict[int, TrainSummary]) -> str:
    """The learning rate an arm with ``lr_scale`` trained with, per seed."""
    scale = run.arm_config(arm).lr_scale
    items = []
    for seed, s in by_seed.items():
        t = s.lr_scale_tokens
        tokens = f" ({t.output_tokens} output / {t.im_release_tokens} im_release target tokens)" if t else ""
        factor_, lr = s.lr_scale_factor, s.learning_rate
        items.append(
            f"seed {seed}: × {factor_:.4f}{tokens} → lr {lr:.4g}" if factor_ is not None else f"seed {seed}: –"
        )
    what = (
        "Σ output tokens / Σ `im_release` target tokens of the seed's training sample"
        if scale == "output_over_im_release"
        else f"× {scale}"
    )
    return f"Learning rate of `{arm}`: {run.config.training.learning_rate} scaled by {what}; " + "; ".join(items) + "."


def compute_text(run: agg.RunResults) -> str:
    """Compute time of the results, training and per benchmark ("" without training summaries)."""
    train_s = [float(s.wall_time_s or 0.0) for by in run.train_summaries.values() for s in by.values()]
    if not train_s:
        return ""
    eval_s = {
        bench: [float(r.wall_time_s or 0.0) for arm, by in by_arm.items() if arm != BASE_ARM for r in by.values()]
        for bench, by_arm in run.results.items()
    }
    evals = "; ".join(f"{bench_label(b)} {sum(v):.0f} s ({len(v)} runs)" for b, v in eval_s.items() if v)
    return (
        f"Compute time of these results, recorded when each was computed (a resumed study's earlier sessions "
        f"included): training {sum(train_s):.0f} s ({len(train_s)} runs, {sum(train_s) / len(train_s):.0f} s "
        f"each); evaluation: {evals or '–'}."
    )


def latest_walls_text(run: agg.RunResults) -> str:
    """Wall time per stage of the latest flow run ("" without timings)."""
    last = run.timings.latest
    if last is None:
        return ""
    walls = ", ".join(f"{s} {fmt(last.stage(s).seconds)} s" for s in ("prepare", "train", "evaluate", "report"))
    return (
        f"Wall time per stage of the latest flow run ({last.started}): {walls}; command total "
        f"{fmt(last.command_seconds)} s (units already done cost ~0: a resumed study's earlier runs "
        "are in the provenance table)."
    )
