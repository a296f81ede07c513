"""Cells, tables and labels shared by the report's sections (numbers formatted once, the same way everywhere)."""

from __future__ import annotations

import math
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import stats as pstats
from im_pipeline.evaluation.specs import find_spec

LENGTH_BENCHMARK = "alpaca_eval"  # the paper's Figure 2 measures the AlpacaEval 1.0 gain


def factor(rec: dict[str, Any] | None, bench: str) -> float:
    """Display factor: fractions become percent; percent, loss and BLEU values are shown as they are."""
    if rec is None or bench == "overfitting":
        return 1.0
    metric = str(rec.get("metric") or "")
    if rec.get("unit") == "percent" or "loss" in metric or "bleu" in metric.lower():
        return 1.0
    return 100.0


def _f(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0" for a value that rounds to zero


BIASED = "judge position-biased — not a measurement"


def _cell(s: dict[str, Any] | None, k: float, digits: int) -> str:
    """An arm's value: "mean [Wilson CI]" (binary items), "mean ± stderr", "mean (too few items)", or with 2-4
    seeds "mean (too few seeds: every seed's value)"."""
    if s is None:
        return "–"
    mean = _f(s["mean"] * k, digits)
    if s.get("too_few_items"):
        return f"{mean} ({pstats.TOO_FEW}: {s.get('n_items')})"
    if s.get("too_few_seeds"):
        return f"{mean} (seeds: {', '.join(_f(v * k, digits) for v in s['values'])}; {pstats.TOO_FEW_SEEDS})"
    if s.get("interval"):
        lo, hi = s["interval"]
        return f"{mean} [{_f(lo * k, digits)}, {_f(hi * k, digits)}]"
    se = f" ± {_f(s['stderr'] * k, digits)}" if s.get("stderr") is not None else ""
    return f"{mean}{se}"


def _signed(x: float, digits: int) -> str:
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def _delta_cell(d: dict[str, Any] | None, k: float, digits: int) -> str:
    if not d:
        return "–"
    head = _signed(d["delta"] * k, digits)
    if d.get("too_few_items"):
        return f"{head} ({pstats.TOO_FEW}: {d.get('n_items')})"
    if d.get("ci_low") is None:
        return f"{head} (no interval)"
    if d.get("identical"):  # a bootstrap of all-zero differences is the degenerate [0, 0]: say what it means
        return f"{head} (all {d.get('n_items')} paired items equal: no interval)"
    return f"{head} [{_f(d['ci_low'] * k, digits)}, {_f(d['ci_high'] * k, digits)}]"


def _p_cell(d: dict[str, Any] | None) -> str:
    if not d or d.get("p_value") is None:
        return "–"
    return f"{_f(d['p_value'], 3)} ({d.get('test')})"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _first_record(run: agg.RunResults, bench: str) -> dict[str, Any] | None:
    for by_seed in run.results.get(bench, {}).values():
        for r in by_seed.values():
            if agg.ok(r):
                return r
    return None


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
