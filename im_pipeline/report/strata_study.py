"""The report's section of a study across strata (:mod:`im_pipeline.analysis.strata_study`): the hypotheses with
their seed-level tests and outcomes, the equivalence verdicts, the manipulation checks, the per-seed deltas and the
scope."""

from __future__ import annotations

from typing import Any

from im_pipeline.analysis.run_files import RunResults
from im_pipeline.config.study import BASE, StudyConfig
from im_pipeline.report.cells import fmt, md_table, signed
from im_pipeline.report.hypotheses import METRIC_TEXT, effect_cell, metric_digits, p_cell, sign_test_reachable


def _sign(direction: str) -> str:
    return ">" if direction == "greater" else "<"


def _claim(r: dict[str, Any]) -> str:
    """The hypothesis' effect in symbols, e.g. '(IM − IT)_HIGH − (IM − IT)_LOW < 0'."""
    diff = f"{r['treatment']} − {r['reference']}"
    if r["between"]:
        a, b = r["strata"]
        return f"({diff})_{a} − ({diff})_{b} {_sign(r['direction'])} 0"
    return f"{diff} {_sign(r['direction'])} 0"


def _hypothesis_row(r: dict[str, Any], informative: bool) -> list[Any]:
    label = "" if informative else " (uninformative study)"
    where = " vs ".join(r["strata"]) if r["between"] else r["strata"][0]
    text = f"{r['text']} ({_claim(r)} on {METRIC_TEXT[r['metric']]})"
    if not r["tested"]:
        return [r["id"], text, where, "–", "–", "–", "–", "–", f"**{r['outcome']}**{label} ({r['reason']})", "–"]
    mde = fmt(r["detectable"], metric_digits(r["metric"])) if r["detectable"] is not None else "–"
    return [
        r["id"],
        text,
        where,
        effect_cell(r),
        r["ci_varies"],
        p_cell(r["p_predicted"]),
        p_cell(r["p_holm"]),
        p_cell(r["p_opposite_holm"]),
        f"**{r['outcome']}**{label}",
        mde,
    ]


def _method_text(res: dict[str, Any]) -> str:
    alpha = res["study"]["alpha"]
    family = ", ".join(r["id"] for r in res["hypotheses"])
    return (
        f"Written in the config (`study:`) before the first run, across the strata {', '.join(res['strata'])}. "
        "**Primary test**, at the seed level (the seed is the unit that was randomised): within a stratum, the "
        "one-sided Student t on the seed deltas (each seed's mean paired difference over the items both arms "
        "scored); between two strata, Welch's two-sample t on the two strata's seed deltas, one-sided in the "
        f"predicted direction; Holm's correction over {family} at α = {alpha}. **Outcome**: *confirmed* when the "
        f"Holm-adjusted one-sided p < {alpha}, *reversed* when the two-sided test, Holm-adjusted over the same "
        "hypotheses, gives p < α with the effect in the other direction, *not tested* when a stratum has fewer than "
        "2 seeds of results, otherwise *not confirmed*. Effect: the mean of the seed deltas (between strata: the "
        "difference of the two means), with one 95% interval whose column says what varies in it. Detectable: the "
        f"smallest |effect| the primary test detects with 80% power at α = {res['power_alpha']:.4g} (Holm's "
        "strictest step), given the observed spread of the seed deltas."
    )


def _equivalence_lines(res: dict[str, Any]) -> str:
    alpha, lines = res["study"]["alpha"], []
    for r in res["hypotheses"]:
        if r["band"] is None:
            continue
        if not r["tested"]:
            lines.append(f"{r['id']}, equivalence band ±{r['band']:g}: not tested ({r['reason']}).")
            continue
        d = metric_digits(r["metric"])
        lo, hi = r["equivalence"]["ci"]
        lines.append(
            f"{r['id']}, equivalence band ±{r['band']:g} (outside the Holm family): the {1 - 2 * alpha:.0%} interval "
            f"of the same kind (the two one-sided tests at α = {alpha}) is [{fmt(lo, d)}, {fmt(hi, d)}]: "
            f"**{r['equivalence']['verdict']}** (inside ±{r['band']:g}: equivalent; entirely outside: different; "
            "else inconclusive)."
        )
    return "\n\n".join(lines)


def _checks_table(res: dict[str, Any]) -> str:
    if not res["checks"]:
        return ""
    rows = []
    for c in res["checks"]:
        d = metric_digits(c["metric"])
        ref = "the base model" if c["reference"] == BASE else c["reference"]
        need = {("less", True): "≤ −", ("less", False): "< ", ("greater", True): "≥ ", ("greater", False): "> "}[
            (c["direction"], c["margin"] > 0)
        ]
        passed = "–" if c["passed"] is None else ("yes" if c["passed"] else "**no**")
        diff = signed(c["difference"], d) if c["difference"] is not None else f"– ({c['reason']})"
        rows.append([c["id"], c["text"], c["stratum"], f"{c['treatment']} − {ref}", diff, len(c["seed_deltas"]),
                     f"{need}{c['margin']:g}", passed])  # fmt: skip
    return (
        "Manipulation checks (not hypotheses: no p-value, outside the Holm family): per stratum the mean over seeds "
        "of each seed's mean difference over the items both scored (the base model's items paired by id with each "
        "seed's), against the pre-registered margin:\n\n"
        + md_table(["id", "check", "stratum", "comparison", "mean over seeds", "seeds", "required", "passed"], rows)
    )


def _seeds_table(res: dict[str, Any]) -> str:
    tested = [r for r in res["hypotheses"] if r["tested"]]
    if not tested:
        return ""
    seeds = sorted({s for r in tested for by in r["seed_deltas"].values() for s in by})
    alpha = res["study"]["alpha"]
    # a test printed only where it can reach p < α with these seeds (the sign test's smallest p is 0.5^k)
    sign = sign_test_reachable(len(seeds), alpha)
    diffs = " and ".join(sorted({f"{r['treatment']} − {r['reference']}" for r in tested}))
    rows = []
    for r in tested:
        d = metric_digits(r["metric"])
        for stratum, by in r["seed_deltas"].items():
            row = [r["id"], stratum, *[signed(by[s], d) if s in by else "–" for s in seeds], p_cell(r["items_p"])]
            rows.append(row + ([p_cell(r["sign_p"])] if sign else []))
    sign_text = (
        f" The exact one-sided sign test across a stratum's seeds is printed beside it (its smallest possible p with "
        f"{len(seeds)} seeds is {0.5 ** len(seeds):g})."
        if sign
        else f" No sign test across seeds: with {len(seeds)} seeds its smallest possible one-sided p, "
        f"{0.5 ** len(seeds):g}, is not < {alpha}."
    )
    header = ["id", "stratum", *[f"seed {s}" for s in seeds], "p one-sided (items, given the trained models)"]
    return (
        f"Secondary: every seed's {diffs} per stratum (mean over its paired items) and, within a stratum, the "
        "one-sided item-level stratified sign-flip test, conditional on the trained models (it asks whether these "
        f"trained pairs differ on these items, not whether another training run would; raw p).{sign_text}\n\n"
        + md_table(header + (["sign test p (one-sided)"] if sign else []), rows)
    )


def _scope_text(runs: dict[str, RunResults], study: StudyConfig) -> str:
    cfg = next(iter(runs.values())).config if runs else None
    model = cfg.model.source if cfg else "?"
    data = cfg.data.train if cfg else "?"
    scope = study.scope.strip()
    held = cfg.data.held_out if cfg else None
    ood = (
        f"The hypotheses' test loss is measured on `{held}`, one out-of-domain test set common to every seed, arm "
        "and stratum. "
        if held
        else ""
    )
    return (
        (f"Scope: {scope} " if scope else "Scope: ")
        + ood
        + f"Nothing here is claimed beyond this model (`{model}`), this data (`{data}`, strata "
        f"{', '.join(runs)}) and these settings."
    )


def strata_study_section(runs: dict[str, RunResults], study: StudyConfig) -> str:
    """``## Pre-registered hypotheses`` of a study across strata (Markdown)."""
    from im_pipeline.analysis.strata_study import evaluate_strata_study

    res = evaluate_strata_study(runs, study)
    banner = (
        ""
        if res["informative"]
        else f"**The study is uninformative** ({res['uninformative_reason']}): as pre-registered, the hypotheses' "
        "outcomes below are printed as computed and labelled, not read as evidence for or against them."
    )
    header = ["id", "hypothesis", "stratum", "effect [95% CI]", "CI: what varies", "p one-sided (seeds)", "p Holm",
              "p Holm, two-sided", "outcome", "detectable at 80% power"]  # fmt: skip
    table = md_table(header, [_hypothesis_row(r, res["informative"]) for r in res["hypotheses"]])
    parts = [
        "## Pre-registered hypotheses",
        banner,
        _method_text(res),
        table,
        _equivalence_lines(res),
        _checks_table(res),
        _seeds_table(res),
        _scope_text(runs, study),
    ]
    return "\n\n".join(p for p in parts if p)
