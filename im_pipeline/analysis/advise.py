"""Should the loss also cover the instruction, for this dataset? (``im-pipeline advise`` prints it.)

Predicts the relative AlpacaEval 1.0 gain of Instruction Modelling over Instruction Tuning, (IM − IT) / IT · 100,
from the dataset's instruction/output length ratio and its size, with a 95% *prediction interval*. Every fit says
which points it uses (all from :mod:`im_pipeline.analysis.paper_reference`):

* ``ratio_and_size`` (the headline): ``gain ~ ln(ratio) + ln(n)`` on the Figure 2 (left) points whose dataset size
  is known (printed in the figure, or matched to Table 1 / Table 5);
* ``ratio``: ``gain ~ ln(ratio)`` on all Figure 2 (left) points (OLS on the transcription gives 18.85·x + 25.99;
  the legend prints 18.85·x + 25.83);
* ``table1``: ``gain ~ ln(ratio)`` on the 7 Table 1 datasets (AlpacaEval 1.0 IT/IM at Table 5 ratios);
* ``size``: ``gain ~ ln(n)`` on the Figure 2 (right) Tulu V2 subsets — all at ratio ≈ 10, so it is used only for
  datasets with a ratio in 3–30 and 1,000–35,000 examples.

The recommendation follows the headline interval: IM when all of it is above 0, IT when all of it is below 0,
otherwise **uncertain** (run both arms). Beside it: the headline fit's size effect (b2 with its 95% CI), the closest
Table 1 dataset in standardised (ln ratio, ln n), and every dataset whose Figure 2 point and Table 1 numbers disagree
(Less TydiQA: +63% vs +97%), with which points each fit uses. The fits come from LLaMA-2 7B-scale runs with a GPT-4
judge: a prior for deciding what to run, not a result. Every sentence of :func:`format_advice` is built from the
numbers it prints.
"""

from __future__ import annotations

import math
from typing import Any

from im_pipeline.analysis import paper_reference as paper
from im_pipeline.analysis.stats import ols_prediction

CONFIDENCE = 0.95
SIZE_FIT_RATIO_RANGE = (3.0, 30.0)  # the right panel's subsets have ratio about 10
# Dataset sizes of the Table 1 sets (the released code's data files; LESS sets: 13.5k as printed in Figure 2).
TABLE1_SIZES = {
    "lima": 1_030,
    "dolly_3k": 2_996,
    "alpaca_5k": 5_305,
    "alpaca_chatgpt_9k": 9_229,
    "less_tydiqa": 13_500,
    "less_mmlu_chat": 13_500,
    "less_bbh_icl": 13_500,
}
TABLE1_LABELS = {"alpaca_chatgpt_9k": "Dolly 9k (the paper's label; AlpaGasus chatgpt_9k)"}
# Figure 2 (left) labels of the Table 1 datasets (the label's text before " (").
FIG2_TABLE1 = {
    "LIMA": "lima",
    "Alpaca 5k": "alpaca_5k",
    "Dolly 3k": "dolly_3k",
    "Less Tydiqa": "less_tydiqa",
    "Less MMLU-Chat": "less_mmlu_chat",
    "Less BBH ICL": "less_bbh_icl",
}
DISAGREE_POINTS = 5.0  # a Figure 2 point and Table 1 disagree when their gains differ by more (transcription ±2)


def figure_table_disagreements() -> list[dict[str, Any]]:
    """The Table 1 datasets whose Figure 2 (left) point shows another gain than Table 1's AlpacaEval 1.0 numbers
    give (more than :data:`DISAGREE_POINTS` apart), e.g. Less TydiQA: +63% in the figure, +97% in the table."""
    out = []
    for ratio, gain, label, _ in paper.FIG2_RATIO_POINTS:
        name = FIG2_TABLE1.get(label.split(" (")[0])
        table = paper.observed_gain(name) if name else None
        if table is not None and abs(table - gain) > DISAGREE_POINTS:
            out.append({"dataset": name, "label": label.split(" (")[0], "figure_gain_pct": gain,
                        "table1_gain_pct": round(table, 1), "ratio": ratio})  # fmt: skip
    return out


def _table1_spread() -> tuple[float, float]:
    """The SDs (ddof 1) of ln ratio and ln size over the Table 1 datasets: the units of the standardised distance."""
    names = list(paper.TABLE1_ALPACA_EVAL_1)
    lr = [math.log(paper.TABLE5_LENGTH_STATS[k]["ratio"]) for k in names]
    ln = [math.log(TABLE1_SIZES[k]) for k in names]
    sd = lambda v: math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1))  # noqa: E731
    return sd(lr), sd(ln)


def _fit(name: str, points: str, model: str, xs: list[list[float]], ys: list[float], x0: list[float]) -> dict:
    res = ols_prediction(xs, ys, x0, CONFIDENCE)
    lo = [min(x[i] for x in xs) for i in range(len(x0))]
    hi = [max(x[i] for x in xs) for i in range(len(x0))]
    res.update(
        name=name,
        points=points,
        model=model,
        extrapolation=any(not lo[i] <= x0[i] <= hi[i] for i in range(len(x0))),
    )
    return res


def fits_for(ratio: float, n: int) -> dict[str, dict[str, Any]]:
    """The four fits (see the module docstring) evaluated at this dataset's ratio and size."""
    lr, ln = math.log(ratio), math.log(n)
    left = paper.FIG2_RATIO_POINTS
    sized = [p for p in left if p[3] is not None]
    t1 = [(paper.TABLE5_LENGTH_STATS[k]["ratio"], paper.observed_gain(k)) for k in paper.TABLE1_ALPACA_EVAL_1]
    size_lo, size_hi = paper.FIG2_GAIN_VS_LOG_NUM_EXAMPLES["range"]
    fits = {
        "ratio_and_size": _fit(
            "ratio_and_size",
            f"the {len(sized)} Figure 2 (left) points of known size: " + ", ".join(p[2].split(" (")[0] for p in sized),
            "gain = b0 + b1·ln(ratio) + b2·ln(n)",
            [[math.log(p[0]), math.log(p[3])] for p in sized],  # type: ignore[arg-type]
            [p[1] for p in sized],
            [lr, ln],
        ),
        "ratio": _fit(
            "ratio",
            f"all {len(left)} Figure 2 (left) points (transcribed; the legend's fit is "
            f"{paper.FIG2_GAIN_VS_LOG_RATIO['slope']}·x + {paper.FIG2_GAIN_VS_LOG_RATIO['intercept']})",
            "gain = b0 + b1·ln(ratio)",
            [[math.log(p[0])] for p in left],
            [p[1] for p in left],
            [lr],
        ),
        "table1": _fit(
            "table1",
            f"the {len(t1)} Table 1 datasets (AlpacaEval 1.0 IT vs IM at their Table 5 ratios)",
            "gain = b0 + b1·ln(ratio)",
            [[math.log(r)] for r, _ in t1],
            [g for _, g in t1],
            [lr],
        ),
    }
    size = _fit(
        "size",
        f"the {len(paper.FIG2_SIZE_POINTS)} Figure 2 (right) points: Tulu V2 subsets of "
        f"{size_lo:,}–{size_hi:,} examples, ratio about 10",
        "gain = b0 + b1·ln(n)",
        [[math.log(k)] for k, _ in paper.FIG2_SIZE_POINTS],
        [g for _, g in paper.FIG2_SIZE_POINTS],
        [ln],
    )
    lo_r, hi_r = SIZE_FIT_RATIO_RANGE
    reasons = []
    if not lo_r <= ratio <= hi_r:
        reasons.append(f"ratio {ratio:.3g} is outside {lo_r:g}–{hi_r:g}")
    if not size_lo <= n <= size_hi:
        reasons.append(f"{n:,} examples is outside {size_lo:,}–{size_hi:,}")
    size["applicable"] = not reasons
    size["not_applicable_because"] = "; ".join(reasons) or None
    fits["size"] = size
    return fits


def nearest_paper_dataset(ratio: float, n: int | None = None) -> dict[str, Any] | None:
    """The Table 1 dataset closest in (ln ratio, ln size), each coordinate divided by its SD over the Table 1
    datasets (:func:`_table1_spread`: ln size spreads about half as much as ln ratio, so unscaled it would hardly
    count); ln ratio alone when ``n`` is None. With its observed (Table 1) gain."""
    sd_r, sd_n = _table1_spread()
    best = None
    for name in paper.TABLE1_ALPACA_EVAL_1:
        ref_ratio = paper.TABLE5_LENGTH_STATS[name]["ratio"]
        dist = ((math.log(ratio) - math.log(ref_ratio)) / sd_r) ** 2
        if n is not None:
            dist += ((math.log(n) - math.log(TABLE1_SIZES[name])) / sd_n) ** 2
        if best is None or dist < best[0]:
            best = (dist, name)
    if best is None:
        return None
    name = best[1]
    return {
        "name": name,
        "label": TABLE1_LABELS.get(name, name),
        "ratio": paper.TABLE5_LENGTH_STATS[name]["ratio"],
        "n": TABLE1_SIZES[name],
        "observed_gain_pct": round(paper.observed_gain(name), 2),  # type: ignore[arg-type]
        "distance": round(math.sqrt(best[0]), 3),
        "scale": {"ln_ratio_sd": round(sd_r, 3), "ln_n_sd": round(sd_n, 3)},
    }


def verdict(low: float, high: float) -> str:
    """IM when the whole interval is above 0, IT when it is all below, else uncertain."""
    if low > 0:
        return "IM"
    if high < 0:
        return "IT"
    return "uncertain"


def advise(stats: dict[str, Any]) -> dict[str, Any]:
    """Prediction, interval and recommendation from :func:`im_pipeline.data.length_stats` output."""
    ratio, n = stats.get("ratio"), stats["n"]
    if not ratio or ratio <= 0 or n <= 0:
        raise ValueError("need a dataset with at least one example and a positive length ratio")
    fits = fits_for(ratio, n)
    head = fits["ratio_and_size"]
    rec = verdict(head["low"], head["high"])
    return {
        "n": n,
        "instruction_words_mean": stats["instruction_words_mean"],
        "output_words_mean": stats["output_words_mean"],
        "ratio": ratio,
        "predicted_gain_pct": round(head["prediction"], 2),
        "interval": {
            "low": round(head["low"], 2),
            "high": round(head["high"], 2),
            "confidence": CONFIDENCE,
            "kind": "prediction interval (a new dataset), OLS",
            "fit": "ratio_and_size",
        },
        "recommendation": rec,
        "fits": {
            k: {
                "points": f["points"],
                "model": f["model"],
                "n_points": f["n_points"],
                "coefficients": [round(c, 3) for c in f["coefficients"]],
                "residual_sd": round(f["residual_sd"], 2),
                "prediction": round(f["prediction"], 2),
                "low": round(f["low"], 2),
                "high": round(f["high"], 2),
                "extrapolation": f["extrapolation"],
                **(
                    {"applicable": f["applicable"], "not_applicable_because": f["not_applicable_because"]}
                    if k == "size"
                    else {}
                ),
            }
            for k, f in fits.items()
        },
        "nearest_paper_dataset": nearest_paper_dataset(ratio, n),
        "size_effect": {
            "per_ln_n": round(head["coefficients"][2], 2),
            "ci": [round(c, 2) for c in head["coefficient_ci"][2]],
            "per_doubling": round(head["coefficients"][2] * math.log(2), 2),
        },
        "figure_table_disagreements": figure_table_disagreements(),
        "metric": "relative AlpacaEval 1.0 win-rate gain of IM over IT, (IM-IT)/IT*100",
        "citation": f"{paper.PAPER}, Table 1 and Figure 2",
    }


def _interval(f: dict[str, Any]) -> str:
    return f"{f['prediction']:+.1f}% (95% prediction interval {f['low']:+.1f}% to {f['high']:+.1f}%)"


def _size_and_sources(adv: dict[str, Any]) -> list[str]:
    """The headline fit's size effect, and where Figure 2 and Table 1 disagree, which points each fit uses."""
    se = adv["size_effect"]
    lines = [
        f"size effect in the headline fit: {se['per_ln_n']:+.1f} points of gain per unit of ln(n) (doubling the "
        f"data: {se['per_doubling']:+.1f} points), 95% CI {se['ci'][0]:+.1f} to {se['ci'][1]:+.1f}"
    ]
    for d in adv["figure_table_disagreements"]:
        lines.append(
            f"Figure 2 and Table 1 disagree on {d['label']}: the figure shows {d['figure_gain_pct']:+.1f}%, Table 1's "
            f"AlpacaEval 1.0 win rates give {d['table1_gain_pct']:+.1f}%; the headline and ratio-only fits use the "
            "figure's point, the Table 1 fit and the closest-dataset line use Table 1's"
        )
    return lines


def format_advice(source: str, adv: dict[str, Any]) -> str:
    """Human-readable advice; each sentence states only what the numbers beside it show."""
    ratio = adv["ratio"]
    shape = (
        "instructions shorter than outputs"
        if ratio < 1
        else "instructions longer than outputs"
        if ratio > 1
        else "instructions as long as outputs"
    )
    lines = [
        f"dataset: {source}  ({adv['n']:,} examples; instruction {adv['instruction_words_mean']:.2f} words, "
        f"output {adv['output_words_mean']:.2f} words, ratio {ratio:.3f}: {shape})",
        "predicted relative AlpacaEval 1.0 gain of IM over IT:",
    ]
    labels = {
        "ratio_and_size": "ratio + size (headline)",
        "ratio": "ratio only",
        "table1": "Table 1 only",
        "size": "size only",
    }
    for key in ("ratio_and_size", "ratio", "table1", "size"):
        f = adv["fits"][key]
        if key == "size" and not f["applicable"]:
            lines.append(f"  {labels[key]}: not used ({f['not_applicable_because']}) — fit on {f['points']}")
            continue
        extra = "; outside the fitted points (extrapolation)" if f["extrapolation"] else ""
        lines.append(
            f"  {labels[key]}: {_interval(f)} — {f['model']} on {f['points']}; residual SD {f['residual_sd']:.1f} "
            f"points{extra}"
        )
    lines += _size_and_sources(adv)
    near = adv["nearest_paper_dataset"]
    if near:
        sc = near["scale"]
        lines.append(
            f"closest Table 1 dataset (ln ratio and ln size, each over its SD across the 7 Table 1 datasets: "
            f"{sc['ln_ratio_sd']:.2f} and {sc['ln_n_sd']:.2f}): {near['label']} (ratio {near['ratio']}, "
            f"{near['n']:,} examples; distance {near['distance']:.2f} SD): observed gain "
            f"{near['observed_gain_pct']:+.1f}% (Table 1)"
        )
    iv = adv["interval"]
    if adv["recommendation"] == "uncertain":
        why = (
            f"the headline interval ({iv['low']:+.1f}% to {iv['high']:+.1f}%) includes 0, so the sign of the gain "
            "is unknown"
        )
        lines.append(f"recommendation: uncertain — {why}; run both arms (`im-pipeline run`) to measure it")
    else:
        side = "above" if adv["recommendation"] == "IM" else "below"
        lines.append(
            f"recommendation: {adv['recommendation']} — the whole headline interval ({iv['low']:+.1f}% to "
            f"{iv['high']:+.1f}%) is {side} 0"
        )
    lines.append(f"source: {adv['citation']}. A prior from LLaMA-2-7B runs, not a result for your model.")
    return "\n".join(lines)
