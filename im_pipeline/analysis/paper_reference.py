"""Reference values from Shi et al., "Instruction Tuning With Loss Over Instructions" (NeurIPS 2024,
arXiv:2405.14394), transcribed from the paper. For overlays and sanity checks only, never as results.
"""

from __future__ import annotations

import math

PAPER = "Shi et al. 2024, Instruction Tuning With Loss Over Instructions (NeurIPS 2024, arXiv:2405.14394)"

# Figure 2 fits (the legends): y = relative AlpacaEval 1.0 gain of IM over IT in percent, (IM - IT) / IT * 100;
# x = log of the instruction/output length ratio (left panel) or of the number of training examples
# (right panel; Tulu V2 subsets of 1k-35k examples with ratio about 10). The paper does not state the
# log base; the natural log it is: refitting the transcribed points below reproduces both legends
# (tests/test_advise.py). The legend fits do NOT fit the Table 1 points well (RMS residual ~27 points).
FIG2_GAIN_VS_LOG_RATIO = {"slope": 18.85, "intercept": 25.83}
FIG2_GAIN_VS_LOG_NUM_EXAMPLES = {"slope": -39.37, "intercept": 431.74, "range": (1_000, 35_000), "ratio": 10.0}

# Table 5: whitespace words, instruction = all user turns, output = all assistant turns,
# ratio = mean(instruction) / mean(output). Keys are this project's registered dataset names.
TABLE5_LENGTH_STATS: dict[str, dict[str, float]] = {
    "lima": {"n": 1030, "instruction_words_mean": 41.72, "output_words_mean": 442.75, "ratio": 0.094},
    "less_mmlu_chat": {"ratio": 26.33},
    "less_tydiqa": {"ratio": 5.86},
    "less_bbh_icl": {"ratio": 3.27},
    "dolly_3k": {"ratio": 0.64},
    "alpaca_5k": {"ratio": 0.57},
    "alpaca_chatgpt_9k": {"ratio": 0.30},  # the paper's "Dolly 9k"
    "science": {"ratio": 24.74},
    "tulu_v2": {"ratio": 0.58},
}
TABLE5_ALIASES = {
    "lima_full": "lima",
    "paper_lima": "lima",
    "paper_dolly_3k": "dolly_3k",
    "paper_alpaca_5k": "alpaca_5k",
}

# Table 1 (LLaMA-2-7B): AlpacaEval 1.0 win rate, IT vs IM.
TABLE1_ALPACA_EVAL_1: dict[str, dict[str, float]] = {
    "alpaca_5k": {"IT": 16.29, "IM": 19.52},
    "dolly_3k": {"IT": 13.42, "IM": 15.11},
    "alpaca_chatgpt_9k": {"IT": 21.54, "IM": 30.77},
    "less_tydiqa": {"IT": 5.12, "IM": 10.10},
    "less_mmlu_chat": {"IT": 4.42, "IM": 9.78},
    "less_bbh_icl": {"IT": 36.20, "IM": 44.15},
    "lima": {"IT": 33.06, "IM": 32.94},
}


def table5_reference(name: str) -> dict[str, float] | None:
    """Table-5 values for a registered dataset name, or None."""
    return TABLE5_LENGTH_STATS.get(TABLE5_ALIASES.get(name, name))


def gain_from_ratio(ratio: float) -> float:
    """Figure 2 (left) fit: predicted relative AlpacaEval 1.0 gain of IM over IT, in percent."""
    if ratio <= 0:
        raise ValueError(f"length ratio must be > 0, got {ratio}")
    return FIG2_GAIN_VS_LOG_RATIO["slope"] * math.log(ratio) + FIG2_GAIN_VS_LOG_RATIO["intercept"]


def gain_from_num_examples(n: int) -> float:
    """Figure 2 (right) fit: predicted relative gain (percent) from the number of examples (at ratio ≈ 10)."""
    if n <= 0:
        raise ValueError(f"number of examples must be > 0, got {n}")
    return FIG2_GAIN_VS_LOG_NUM_EXAMPLES["slope"] * math.log(n) + FIG2_GAIN_VS_LOG_NUM_EXAMPLES["intercept"]


def observed_gain(name: str) -> float | None:
    """Table 1 relative AlpacaEval 1.0 gain of IM over IT (percent) for a paper dataset, or None."""
    row = TABLE1_ALPACA_EVAL_1.get(TABLE5_ALIASES.get(name, name))
    return None if row is None else (row["IM"] - row["IT"]) / row["IT"] * 100


# Figure 2's points, read off the released figure (GitHub ZhengxiangShi/InstructionModelling @ 325b77e,
# asset/insight.png), by eye against the grid lines of a 1409-px-wide render: about ±2 points of gain and ±5% of
# the x value. Ordinary least squares on them gives 18.85·ln(ratio) + 25.99 (legend:
# 18.85, 25.83) and −39.38·ln(n) + 431.88 (legend: −39.37, 431.74), so the transcription matches the legend fits.
# Left panel: (ratio, gain %, label, number of examples or None). Labels and sizes as printed in the figure; the
# unlabelled (blue) points whose ratio and gain match a Table 1 / Table 5 dataset carry that dataset's name and size.
FIG2_RATIO_POINTS: list[tuple[float, float, str, int | None]] = [
    (0.094, -0.3, "LIMA", 1_000),
    (0.244, 8.2, "ShareGPT", 114_000),
    (0.408, 27.5, "Stanford Alpaca", 52_000),
    (0.811, 34.5, "Code Alpaca", 20_000),
    (0.573, 2.0, "Tulu V2", 326_000),
    (2.80, 3.5, "WizardLM", 30_000),
    (5.81, 63.1, "Less Tydiqa", 13_500),
    (24.5, 73.2, "Science", 7_500),
    (26.0, 121.5, "Less MMLU-Chat", 13_500),
    (0.564, 19.8, "Alpaca 5k (Table 1: +19.8%)", 5_305),
    (0.637, 12.7, "Dolly 3k (Table 1: +12.6%)", 2_996),
    (3.23, 21.9, "Less BBH ICL (Table 1: +22.0%)", 13_500),
    (0.296, 12.1, "unlabelled", None),
    (0.489, 7.6, "unlabelled", None),
    (0.525, 7.9, "unlabelled", None),
    (0.506, 1.4, "unlabelled", None),
    (5.50, 16.8, "unlabelled", None),
    (9.70, 106.7, "unlabelled", None),
    (17.3, 95.6, "unlabelled", None),
]
# Right panel: (number of examples, gain %): Tulu V2 subsets with ratio about 10 (paper, Figure 2 caption).
FIG2_SIZE_POINTS: list[tuple[int, float]] = [
    (1_000, 149.7),
    (2_000, 151.2),
    (3_000, 106.9),
    (4_000, 132.0),
    (5_000, 70.9),
    (7_500, 136.0),
    (10_000, 39.5),
    (12_500, 39.7),
    (15_000, 19.6),
    (17_500, 21.7),
    (20_000, 67.3),
    (22_500, 37.1),
    (25_000, 43.5),
    (27_500, 26.0),
    (35_000, 41.0),
]
