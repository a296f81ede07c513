"""Cells, tables and labels shared by the report's sections (numbers formatted once, the same way everywhere)."""

from __future__ import annotations

import math
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as pstats
from im_pipeline.evaluation.specs import find_spec
from im_pipeline.results import AlpacaEvalResult, EvalResult

LENGTH_BENCHMARK = "alpaca_eval"  # the paper's Figure 2 measures the AlpacaEval 1.0 gain


def factor(rec: EvalResult | None, bench: str) -> float:
    """Display factor: fractions become percent; percent, loss and BLEU values are shown as they are."""
    if rec is None or bench == "overfitting":
        return 1.0
    metric = rec.metric or ""
    if unit_of(rec) == "percent" or "loss" in metric or "bleu" in metric.lower():
        return 1.0
    return 100.0


def unit_of(rec: EvalResult | None) -> str | None:
    """The unit a result declares for its value (AlpacaEval: percent), else None."""
    return rec.unit if isinstance(rec, AlpacaEvalResult) else None


def fmt(x: float | None, digits: int = 1) -> str:
    """A number rounded to ``digits`` ("–" for none)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0" for a value that rounds to zero


BIASED = "judge position-biased — not a measurement"


def arm_cell(s: agg.ArmSummary | None, k: float, digits: int) -> str:
    """An arm's value: "mean [Wilson CI]" (binary items), "mean ± stderr", "mean (too few items)", or with 2-4
    seeds "mean (too few seeds: every seed's value)"."""
    if s is None:
        return "–"
    mean = fmt(s.mean * k, digits)
    if s.too_few_items:
        return f"{mean} ({pstats.TOO_FEW}: {s.n_items})"
    if s.too_few_seeds:
        return f"{mean} (seeds: {', '.join(fmt(v * k, digits) for v in s.values)}; {pstats.TOO_FEW_SEEDS})"
    if s.interval:
        lo, hi = s.interval
        return f"{mean} [{fmt(lo * k, digits)}, {fmt(hi * k, digits)}]"
    se = f" ± {fmt(s.stderr * k, digits)}" if s.stderr is not None else ""
    return f"{mean}{se}"


def signed(x: float, digits: int) -> str:
    """A difference with its sign, rounded to ``digits``."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def delta_cell(d: agg.DeltaStats | None, k: float, digits: int) -> str:
    """An IM − IT difference with its 95% interval, or why it has none."""
    if not d or d.delta is None:
        return "–"
    head = signed(d.delta * k, digits)
    if d.too_few_items:
        return f"{head} ({pstats.TOO_FEW}: {d.n_items})"
    if d.ci_low is None or d.ci_high is None:
        return f"{head} (no interval)"
    if d.identical:  # a bootstrap of all-zero differences is the degenerate [0, 0]: say what it means
        return f"{head} (all {d.n_items} paired items equal: no interval)"
    return f"{head} [{fmt(d.ci_low * k, digits)}, {fmt(d.ci_high * k, digits)}]"


def p_cell(d: agg.DeltaStats | None) -> str:
    """The p-value of a difference and its test."""
    if not d or d.p_value is None:
        return "–"
    return f"{fmt(d.p_value, 3)} ({d.test})"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (``|`` and newlines in cells escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(out)


def digits_of(bench: str) -> int:
    """Digits shown for a benchmark's values (losses and BLEU of the overfitting row: 2)."""
    return 2 if bench == "overfitting" else 1


def bench_label(bench: str) -> str:
    """A benchmark's name in the report (its spec's label; an unregistered name as it is)."""
    spec = find_spec(bench)
    return spec.label if spec else bench


def chance_percent(bench: str) -> float | None:
    spec = find_spec(bench)
    return spec.chance_percent if spec else None


def how_to_provide(bench: str) -> str:
    spec = find_spec(bench)
    return spec.how_to_provide if spec else ""
