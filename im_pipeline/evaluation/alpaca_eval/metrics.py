"""AlpacaEval's numbers: win rate with both orders, per-instruction win shares, length statistics, position bias,
and alpaca_eval's leaderboard CSV."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from im_pipeline import hub
from im_pipeline.evaluation.alpaca_eval.judging import alpaca_eval_lib

POSITION_BIAS_LIMIT = 0.9
"""A judge whose first-shown (or second-shown) output wins at least this share of decided verdicts is biased."""


def _words(text: str) -> int:
    return len(text.split())


def length_stats(outputs: list[str], references: list[str]) -> dict[str, float]:
    """Mean length of the model's outputs and of the reference outputs, in characters and in words."""
    return {
        "model_chars": round(statistics.mean(len(o) for o in outputs), 1),
        "reference_chars": round(statistics.mean(len(r) for r in references), 1),
        "model_words": round(statistics.mean(_words(o) for o in outputs), 1),
        "reference_words": round(statistics.mean(_words(r) for r in references), 1),
    }


def compute_metrics(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """Win rate (percent) and its standard error via ``alpaca_eval.metrics``; LC win rate when available."""
    import pandas as pd

    ae = alpaca_eval_lib()
    rows = [a for a in annotations if a["preference"] is not None]
    if not rows:
        raise RuntimeError("no judge annotation parsed; cannot compute a win rate")
    df = pd.DataFrame(rows)
    out = ae.metrics.get_winrate(df)
    result: dict[str, Any] = {
        "win_rate": float(out["win_rate"]),
        "standard_error": float(out["standard_error"]),
        "discrete_win_rate": float(out["discrete_win_rate"]),
        "n_wins": int(out["n_wins"]),
        "n_wins_base": int(out["n_wins_base"]),
        "n_draws": int(out["n_draws"]),
        "n_total": int(out["n_total"]),
        "n_unparsed": len(annotations) - len(rows),
    }
    # Position bias of the judge: how often it preferred whichever output it saw first (0.5 = none).
    first = [won for a in rows for won in a.get("first_shown_won", [])]
    share = sum(first) / len(first) if first else None
    result["judge_prefers_first_shown"] = round(share, 4) if share is not None else None
    result["judge_verdicts_with_position"] = len(first)
    result["judge_position_biased"] = share is not None and max(share, 1 - share) >= POSITION_BIAS_LIMIT
    # Per instruction: the model's share of the win (preference 1 = reference, 2 = model), for paired comparisons.
    result["items"] = {"win": {str(a["index"]): float(a["preference"]) - 1.0 for a in rows}}
    # The LC win rate needs a Hub file (df_gamed.csv): don't spend huggingface_hub's retries offline.
    if not hub.hub_reachable():
        result["length_controlled_win_rate"] = None
        result["lc_unavailable"] = "offline: the length-controlled win rate needs a file from the Hugging Face Hub"
        return result
    try:
        lc = ae.metrics.get_length_controlled_winrate(df.copy(), save_weights_dir=None)
        result["length_controlled_win_rate"] = float(lc["length_controlled_winrate"])
        result["lc_standard_error"] = float(lc["lc_standard_error"])
    except Exception as exc:
        result["length_controlled_win_rate"] = None
        result["lc_unavailable"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return result


def write_leaderboard(path: Path, generator: str, metrics: dict[str, Any], outputs: list[str]) -> Path:
    """alpaca_eval's ``leaderboard.csv`` for this model (one row, indexed by the generator name).

    Built as ``alpaca_eval.main.evaluate`` builds it (``mode``, ``avg_length`` in characters, the metric
    function's fields, ``win_rate`` and ``standard_error`` first, via ``alpaca_eval.utils.prioritize_elements``);
    ``evaluate`` itself is not called because it would annotate again through its own annotator, while the
    verdicts here come from :func:`annotate` (local judge or OpenAI-compatible endpoint, cached).
    """
    import pandas as pd

    ae = alpaca_eval_lib()
    row: dict[str, Any] = {
        "win_rate": metrics["win_rate"],
        "standard_error": metrics["standard_error"],
        "n_wins": metrics["n_wins"],
        "n_wins_base": metrics["n_wins_base"],
        "n_draws": metrics["n_draws"],
        "n_total": metrics["n_total"],
        "discrete_win_rate": metrics["discrete_win_rate"],
        "mode": "community",
        "avg_length": int(statistics.mean(len(o) for o in outputs)) if outputs else 0,
    }
    if metrics.get("length_controlled_win_rate") is not None:
        row["length_controlled_winrate"] = metrics["length_controlled_win_rate"]
        row["lc_standard_error"] = metrics.get("lc_standard_error")
    df = pd.DataFrame.from_dict({generator: row}, orient="index")
    df = df[ae.utils.prioritize_elements(list(df.columns), ["win_rate", "standard_error"])]
    df.to_csv(path)
    return path
