"""``im-pipeline advise``: should the loss also cover the instruction, for this dataset?

Predicts the relative AlpacaEval 1.0 gain of Instruction Modelling over Instruction Tuning from the
dataset's instruction/output length ratio and size, with the paper's Figure 2 fits
(:mod:`im_pipeline.analysis.paper_reference`). The fits come from LLaMA-2/OPT 7B-scale runs; they are
a prior for deciding what to run, not a result: run the comparison to know.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from im_pipeline.analysis.paper_reference import (
    FIG2_GAIN_VS_LOG_NUM_EXAMPLES,
    FIG2_GAIN_VS_LOG_RATIO,
    PAPER,
    TABLE5_LENGTH_STATS,
    gain_from_num_examples,
    gain_from_ratio,
    observed_gain,
)

CLEAR_GAIN_PCT = 5.0  # predicted relative gains within ±5% are treated as "no clear difference"


def break_even_ratio() -> float:
    """Length ratio at which the Figure 2 ratio fit predicts no gain (about 0.25)."""
    return math.exp(-FIG2_GAIN_VS_LOG_RATIO["intercept"] / FIG2_GAIN_VS_LOG_RATIO["slope"])


def nearest_paper_dataset(ratio: float) -> dict[str, Any] | None:
    """The paper dataset whose Table-5 ratio is closest in log space, with its Table-1 observed gain."""
    best = None
    for name, ref in TABLE5_LENGTH_STATS.items():
        gain = observed_gain(name)
        if gain is None:
            continue
        dist = abs(math.log(ratio) - math.log(ref["ratio"]))
        if best is None or dist < best[0]:
            best = (dist, name, ref["ratio"], gain)
    if best is None:
        return None
    return {"name": best[1], "ratio": best[2], "observed_gain_pct": round(best[3], 2)}


def advise(stats: dict[str, Any]) -> dict[str, Any]:
    """Prediction and recommendation from :func:`im_pipeline.data.length_stats` output."""
    ratio, n = stats.get("ratio"), stats["n"]
    if not ratio or n <= 0:
        raise ValueError("need a dataset with at least one example and a positive length ratio")
    g_ratio = gain_from_ratio(ratio)
    lo, hi = FIG2_GAIN_VS_LOG_NUM_EXAMPLES["range"]
    # The size fit holds the ratio fixed at about 10; only trust it near that ratio and inside its range.
    size_in_range = lo <= n <= hi and 3.0 <= ratio <= 30.0
    if g_ratio > CLEAR_GAIN_PCT:
        rec = "IM"
        why = (
            f"instructions are long relative to outputs (ratio {ratio:.3g} > break-even {break_even_ratio():.2f}); "
            "the paper finds IM helps most in this regime"
        )
    elif g_ratio < -CLEAR_GAIN_PCT:
        rec = "IT"
        why = (
            f"outputs are much longer than instructions (ratio {ratio:.3g}); the paper's fit predicts no gain "
            "from IM here (LIMA, ratio 0.094, showed none)"
        )
    else:
        rec = "either"
        why = f"the ratio {ratio:.3g} is near the break-even {break_even_ratio():.2f}; expect little difference"
    if n < 5_000 and rec != "IT":
        why += f"; a small dataset ({n} examples) strengthens the case for IM"
    return {
        "n": n,
        "instruction_words_mean": stats["instruction_words_mean"],
        "output_words_mean": stats["output_words_mean"],
        "ratio": ratio,
        "predicted_gain_pct_from_ratio": round(g_ratio, 2),
        "predicted_gain_pct_from_size": round(gain_from_num_examples(n), 2),
        "size_fit_applicable": size_in_range,
        "size_fit_note": (
            f"the size fit was made on Tulu V2 subsets of {lo:,}-{hi:,} examples with ratio about "
            f"{FIG2_GAIN_VS_LOG_NUM_EXAMPLES['ratio']:g}"
        ),
        "break_even_ratio": round(break_even_ratio(), 4),
        "nearest_paper_dataset": nearest_paper_dataset(ratio),
        "recommendation": rec,
        "reason": why,
        "metric": "relative AlpacaEval 1.0 win-rate gain of IM over IT, (IM-IT)/IT*100",
        "fits": {
            "gain_vs_log_ratio": FIG2_GAIN_VS_LOG_RATIO,
            "gain_vs_log_num_examples": FIG2_GAIN_VS_LOG_NUM_EXAMPLES,
        },
        "citation": f"{PAPER}, Figure 2",
    }


def format_advice(source: str, adv: dict[str, Any]) -> str:
    near = adv["nearest_paper_dataset"]
    lines = [
        f"dataset: {source}  ({adv['n']} examples; instruction {adv['instruction_words_mean']:.2f} words, "
        f"output {adv['output_words_mean']:.2f} words, ratio {adv['ratio']:.4f})",
        f"predicted IM gain over IT (AlpacaEval 1.0, relative): {adv['predicted_gain_pct_from_ratio']:+.1f}% "
        f"from the length ratio",
        f"  from the dataset size: {adv['predicted_gain_pct_from_size']:+.1f}%"
        + ("" if adv["size_fit_applicable"] else " (outside the fit's size/ratio range; indicative only)")
        + f" — {adv['size_fit_note']}",
    ]
    if near:
        lines.append(
            f"closest paper dataset by ratio: {near['name']} (ratio {near['ratio']}), observed gain "
            f"{near['observed_gain_pct']:+.1f}%"
        )
    lines.append(f"recommendation: {adv['recommendation']} — {adv['reason']}")
    lines.append(f"source: {adv['citation']}. A prior, not a result: run `im-pipeline run` to measure.")
    return "\n".join(lines)


def advise_command(args: argparse.Namespace) -> int:
    """``im-pipeline advise NAME_OR_PATH [--data-dir DIR] [--json]``."""
    from im_pipeline.data import length_stats, load_records

    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else None
    stats = length_stats(load_records(args.source, data_dir))
    adv = advise(stats)
    adv = {"source": args.source, **adv}
    if args.json:
        print(json.dumps(adv, indent=2))
    else:
        print(format_advice(args.source, adv))
    return 0
