"""The report's main sections: IM vs IT per benchmark (paired), per seed, failures, skipped benchmarks and the data
table (paper Table 5)."""

from __future__ import annotations

from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import paper_reference as paper
from im_pipeline.analysis import stats as pstats
from im_pipeline.report.cells import (
    BIASED,
    _cell,
    _delta_cell,
    _f,
    _first_record,
    _md_table,
    _p_cell,
    _signed,
    bench_label,
    chance_percent,
    factor,
    how_to_provide,
)
from im_pipeline.runs.layout import BASE_ARM


def comparison_section(run: agg.RunResults, rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The main table (Markdown) and the same as records for a Prefect table artifact."""
    arms = ([BASE_ARM] if any(r["arms"].get(BASE_ARM) for r in rows) else []) + run.arms
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
                f"**{bench_label(bench)}: {BIASED}.** One presentation position won at least 90% of the "
                f"judge's decided verdicts (share won by the first-shown output: {shares}). Such a judge reads the "
                "order, not the outputs: these win rates say nothing about output quality, and a value near 50% "
                "is the two orders cancelling, not equal quality."
            )
        chance = chance_percent(bench)
        chance_cell = "n/a¹" if bench == "truthfulqa" else ("–" if chance is None else f"{chance:g}")
        md_rows.append([bench_label(bench), metric or "–", chance_cell, *cells, dcell, pcell])
        records.append(
            {
                "benchmark": bench_label(bench),
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
                bench_label(bench),
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
            hint = how_to_provide(bench)
            lines.append(
                f"- **{bench_label(bench)}** ({', '.join(where)}): {reason}"
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
