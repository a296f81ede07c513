"""Length statistics as the paper's Table 5 (Shi et al. 2024).

Counting rule (``role_markers=True``, the default, the one that reproduces the paper):

* words are whitespace-separated tokens, ``len(text.split())``;
* each turn is counted as it appears in the Tulu template, ``<|user|>\\n{content}\\n`` or
  ``<|assistant|>\\n{content}</s>\\n``, i.e. content words **plus one word for the role marker**
  (EOS is glued to the last word and adds nothing);
* instruction = all user turns of a conversation (multi-turn history included), output = all
  assistant turns; system turns count towards neither;
* ``ratio = mean(instruction words) / mean(output words)`` over conversations (a ratio of means,
  not a mean of per-example ratios; those are reported separately as quantiles).

On the local LIMA copy (1,029 conversations: 1,000 single-turn + 29 multi-turn) this gives
41.66 / 442.58 words (paper, 1,030 conversations: 41.72 / 442.75; -0.15% / -0.04%), ratio 0.0941
(paper 0.094). Alternatives measured on the same file, all further off:

* content words only (``role_markers=False``): 40.61 / 441.53 (-2.7% / -0.3%);
* single-turn 1k only: 40.53 / 444.41 (-2.9% / +0.4%);
* ``split(" ")`` instead of ``split()``: 40.55 / 441.07; regex ``\\w+`` words: 41.61 / 449.57 (+1.5% output).
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

COUNTING_RULE = (
    "whitespace words (str.split) of each Tulu-rendered turn (content words + 1 role marker); "
    "instruction = all user turns, output = all assistant turns; ratio = mean(instruction)/mean(output)"
)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def word_count(text: str) -> int:
    """Whitespace word count (``str.split``: any run of spaces, tabs, newlines separates words)."""
    return len(text.split())


def example_lengths(record: dict[str, Any], *, role_markers: bool = True) -> tuple[int, int]:
    """``(instruction words, output words)`` of one normalised record (see the module docstring)."""
    extra = 1 if role_markers else 0
    instr = out = 0
    for m in record["messages"]:
        if m["role"] == "user":
            instr += word_count(m["content"]) + extra
        elif m["role"] == "assistant":
            out += word_count(m["content"]) + extra
    return instr, out


def example_ratio(record: dict[str, Any], *, role_markers: bool = True) -> float:
    """Per-example instruction/output ratio (0 when the output has no words, as the paper's select_data)."""
    instr, out = example_lengths(record, role_markers=role_markers)
    return instr / out if out else 0.0


def length_stats(records: list[dict[str, Any]], *, role_markers: bool = True) -> dict[str, Any]:
    """Table-5 statistics of normalised records.

    Returns ``n``, ``instruction_words_mean``, ``output_words_mean``, ``ratio`` (ratio of means),
    medians, ``ratio_quantiles`` of per-example ratios (keys ``p10``..``p90``), ``ratio_mean``
    (mean of per-example ratios), ``n_multi_turn``, ``n_empty_instruction``, ``n_empty_output``,
    max word counts (for over-length checks before tokenisation) and ``counting_rule``.
    """
    if not records:
        return {
            "n": 0,
            "instruction_words_mean": 0.0,
            "output_words_mean": 0.0,
            "ratio": None,
            "ratio_quantiles": {},
            "counting_rule": COUNTING_RULE if role_markers else "content words only",
        }
    lengths = [example_lengths(r, role_markers=role_markers) for r in records]
    instr = np.array([a for a, _ in lengths], dtype=float)
    out = np.array([b for _, b in lengths], dtype=float)
    per = np.array([a / b if b else 0.0 for a, b in lengths])
    mean_i, mean_o = float(instr.mean()), float(out.mean())
    users = [[m["content"] for m in r["messages"] if m["role"] == "user"] for r in records]
    assistants = [[m["content"] for m in r["messages"] if m["role"] == "assistant"] for r in records]
    return {
        "n": len(records),
        "instruction_words_mean": round(mean_i, 4),
        "output_words_mean": round(mean_o, 4),
        "ratio": round(mean_i / mean_o, 6) if mean_o else None,
        "instruction_words_median": float(statistics.median(instr)),
        "output_words_median": float(statistics.median(out)),
        "instruction_words_max": int(instr.max()),
        "output_words_max": int(out.max()),
        "total_words_max": int((instr + out).max()),
        "ratio_mean": round(float(per.mean()), 6),
        "ratio_quantiles": {f"p{round(q * 100)}": round(float(np.quantile(per, q)), 6) for q in QUANTILES},
        "n_multi_turn": sum(len(u) > 1 for u in users),
        "n_empty_instruction": sum(any(not t.strip() for t in u) for u in users),
        "n_empty_output": sum(any(not t.strip() for t in a) for a in assistants),
        "counting_rule": COUNTING_RULE if role_markers else "whitespace words of turn contents only",
    }


def format_stats_table(stats: dict[str, Any], title: str = "", reference: dict[str, Any] | None = None) -> str:
    """A small plain-text table of :func:`length_stats` output, with the paper's value when known."""
    rows = [
        ("examples (n)", "n"),
        ("instruction words, mean", "instruction_words_mean"),
        ("output words, mean", "output_words_mean"),
        ("ratio (mean instr / mean output)", "ratio"),
        ("per-example ratio, median", None),
        ("multi-turn conversations", "n_multi_turn"),
        ("empty instructions / outputs", None),
    ]
    lines = [title] if title else []
    head = f"{'statistic':<34} {'value':>12}" + (f" {'paper':>10}" if reference else "")
    lines += [head, "-" * len(head)]
    for label, key in rows:
        if key is None and label.startswith("per-example"):
            value: Any = stats.get("ratio_quantiles", {}).get("p50")
        elif key is None:
            value = f"{stats.get('n_empty_instruction', 0)} / {stats.get('n_empty_output', 0)}"
        else:
            value = stats.get(key)
        shown = (
            (f"{value:.4f}" if key == "ratio" or key is None else f"{value:.2f}")
            if isinstance(value, float)
            else str(value)
        )
        ref = ""
        if reference:
            r = reference.get(key) if key else None
            ref = f" {r:>10}" if r is not None else f" {'':>10}"
        lines.append(f"{label:<34} {shown:>12}{ref}")
    q = stats.get("ratio_quantiles") or {}
    if q:
        lines.append("per-example ratio quantiles: " + ", ".join(f"{k} {v:.3g}" for k, v in q.items()))
    lines.append(f"counting rule: {stats.get('counting_rule', '')}")
    return "\n".join(lines)
