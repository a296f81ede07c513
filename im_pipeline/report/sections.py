"""The report's main sections: IM vs IT per benchmark (paired), per seed, failures, skipped benchmarks and the data
table (paper Table 5)."""

from __future__ import annotations

from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis import paper_reference as paper
from im_pipeline.analysis import stats as pstats
from im_pipeline.analysis.run_files import Selection
from im_pipeline.report.cells import (
    BIASED,
    arm_cell,
    bench_label,
    chance_percent,
    delta_cell,
    digits_of,
    factor,
    fmt,
    how_to_provide,
    md_table,
    p_cell,
    signed,
    unit_of,
)
from im_pipeline.runs.layout import BASE_ARM


def comparison_section(run: agg.RunResults, rows: list[agg.ComparisonRow]) -> tuple[str, list[dict[str, Any]]]:
    """The main table (Markdown) and the same as records for a Prefect table artifact."""
    arms = ([BASE_ARM] if any(r.arm(BASE_ARM) for r in rows) else []) + run.arms
    it, im = agg.it_im_arms(run)
    header = ["benchmark", "metric", "chance", *arms, f"{im} − {it} [95% CI]" if it and im else "delta", "p (test)"]
    md_rows, records = [], []
    for row in rows:
        cells = comparison_cells(run, row, arms)
        md_rows.append(cells)
        record = dict(zip(["benchmark", "metric", "chance", *arms, "delta", "p"], cells, strict=True))
        records.append({**record, "metric": "" if record["metric"] == "–" else record["metric"]})
    biased_notes = [biased_note(row) for row in rows if row.position_bias]
    notes = [*comparison_notes(run), *biased_notes]
    text = md_table(header, md_rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n)
    per_seed = seeds_section(run, rows)
    if per_seed:
        text += "\n\n" + per_seed
    return text, records


def comparison_cells(run: agg.RunResults, row: agg.ComparisonRow, arms: list[str]) -> list[str]:
    """One benchmark's cells of the main table: label, metric, chance, every arm, the difference and its p."""
    bench = row.benchmark
    rec = run.first_ok(bench)
    k, digits = factor(rec, bench), digits_of(bench)
    unit = "%" if k == 100.0 or unit_of(rec) == "percent" else ""
    metric = f"{row.metric or ''}{' (' + unit + ')' if unit else ''}"
    biased = row.position_bias
    cells = []
    for arm in arms:
        if arm in row.skipped and row.arm(arm) is None:
            cells.append("skipped")
            continue
        cell = arm_cell(row.arm(arm), k, digits)
        cells.append(f"{cell} — {BIASED}" if arm in biased or any(b.startswith(f"{arm}/") for b in biased) else cell)
    dcell, pcell = delta_cell(row.delta, k, digits), p_cell(row.delta)
    if biased and row.delta:
        dcell, pcell = f"{dcell} — {BIASED}", "–"
    chance = chance_percent(bench)
    chance_cell = "n/a¹" if bench == "truthfulqa" else ("–" if chance is None else f"{chance:g}")
    return [bench_label(bench), metric or "–", chance_cell, *cells, dcell, pcell]


def biased_note(row: agg.ComparisonRow) -> str:
    """Why a position-biased judge's win rates are not measurements."""
    shares = ", ".join(f"{a} {100 * v:.0f}%" for a, v in row.position_bias.items() if v is not None)
    return (
        f"**{bench_label(row.benchmark)}: {BIASED}.** One presentation position won at least 90% of the "
        f"judge's decided verdicts (share won by the first-shown output: {shares}). Such a judge reads the "
        "order, not the outputs: these win rates say nothing about output quality, and a value near 50% "
        "is the two orders cancelling, not equal quality."
    )


def comparison_notes(run: agg.RunResults) -> list[str]:
    """The notes under the main table: what a cell is, how the difference was tested, the chance levels."""
    it, im = agg.it_im_arms(run)
    seeds = len(run.seeds)
    if seeds >= 2:
        test = (
            "the exact two-sided sign test on the seed deltas"
            if 2 * 0.5**seeds < 0.05
            else f"a two-sided one-sample t test on the seed deltas (the sign test cannot reach p < 0.05 with {seeds} "
            f"seeds: its smallest p is {2 * 0.5**seeds:g})"
        )
        delta = (
            f"{seeds} seeds: mean of the per-seed deltas with a Student-t 95% CI ({seeds - 1} df), the one interval "
            f"per effect, in which the seeds vary (the items are fixed); p from {test}; every seed's delta is in the "
            "per-seed table below."
        )
    else:
        delta = (
            "One seed: paired bootstrap 95% CI over the items (10,000 resamples, percentile); p from an "
            "exact McNemar test (binary items) or a Wilcoxon signed-rank test (continuous items). One seed "
            "measures the items, not the training run: a second seed can move the difference more than this "
            "interval."
        )
    return [
        "Cells (one seed): binary items (MMLU, greedy HumanEval) show the rate with a Wilson 95% interval; other "
        f"benchmarks mean ± the benchmark's item-level standard error; 2–{pstats.MIN_ITEMS - 1} seeds: the mean "
        f'and every seed\'s value ("{pstats.TOO_FEW_SEEDS}" for a ±); {pstats.MIN_ITEMS} or more seeds: mean ± the '
        f"standard error across seeds. Below {pstats.MIN_ITEMS} items no interval is given "
        f'("{pstats.TOO_FEW}": n).',
        f"{im} − {it}: from per-item paired differences (the same items for every arm). {delta}" if it and im else "",
        "Chance levels: MMLU 25% (4 options), HumanEval 0, AlpacaEval 50% (a model judged against outputs of "
        "its own quality, by an unbiased judge). ¹ TruthfulQA mc2 has no fixed chance level (a uniform model "
        "scores #true/#choices per question). Memorisation row: mean sentence BLEU-4 of greedy generations "
        "against their whole training outputs (0–100, lower = less copying).",
    ]


def seeds_section(run: agg.RunResults, rows: list[agg.ComparisonRow]) -> str:
    """With ≥ 2 seeds: every seed's IM − IT delta per benchmark, the t-interval (seeds vary) and the test's p."""
    it, im = agg.it_im_arms(run)
    if len(run.seeds) < 2 or not (it and im):
        return ""
    out = []
    for row in rows:
        d = row.delta
        if not d or not d.seed_deltas or d.delta is None:
            continue
        bench = row.benchmark
        k, digits = factor(run.first_ok(bench), bench), digits_of(bench)
        out.append(
            [
                bench_label(bench),
                ", ".join(f"s{s}: {signed(v * k, digits)}" for s, v in sorted(d.seed_deltas.items())),
                signed(d.delta * k, digits),
                f"{pstats.TOO_FEW}: {d.n_items}"
                if d.too_few_items
                else f"[{fmt((d.ci_low or 0.0) * k, digits)}, {fmt((d.ci_high or 0.0) * k, digits)}]",
                f"{fmt(d.p_value, 3)} ({d.test})" if d.p_value is not None else "–",
            ]
        )
        if row.position_bias:  # as in the main table: differences listed, nothing read from them
            out[-1][2] = f"{out[-1][2]} — {BIASED}"
            out[-1][4] = "–"
    if not out:
        return ""
    header = ["benchmark", f"{im} − {it} per seed", "mean", "t 95% CI (seeds vary)", "p (test)"]
    return f"Per-seed differences ({len(run.seeds)} seeds):\n\n" + md_table(header, out)


def failures_section(run: agg.RunResults) -> str:
    """Each task run of the latest flow run that did not complete, with its state and error ("" if none)."""
    last = run.timings.latest
    failed = last.failed_tasks() if last else []
    if not last or not failed:
        return ""
    link = last.flow_run.link()
    lines = [
        f"{len(failed)} task run(s) of the latest flow run{f' ({link})' if link else ''} did not complete, so the "
        "flow run ended **Failed**. Results below are from what finished (or from earlier runs):",
        "",
    ]
    for name in failed:
        t = last.tasks[name]
        error = " ".join(str(t.error or "no error recorded").split())
        lines.append(f"- `{name}` ({t.state}): {error}")
    return "\n".join(lines)


def skipped_section(run: agg.RunResults) -> str:
    """Benchmarks that were skipped (per arm/seed, with the reason and how to provide them), failed task runs and
    unavailable training data."""
    lines = []
    failed = run.timings.latest.failed_tasks() if run.timings.latest else []
    if failed:
        lines.append(f"- **Failed in the latest flow run** (see *Failed task runs* above): {', '.join(failed)}")
    if run.data_unavailable:
        arms = ", ".join(a.name or "?" for a in run.config.arms) or "all arms"
        lines.append(
            f"- **Training ({arms})**: training set `{run.data_unavailable.train_source}` unavailable, "
            f"so only the base model was evaluated: {run.data_unavailable.reason}"
        )
    for bench, by_arm in run.results.items():
        reasons: dict[str, list[str]] = {}
        for arm, by_seed in by_arm.items():
            for seed, r in by_seed.items():
                if r.status == "skipped":
                    where = arm if seed is None else f"{arm}/seed-{seed}"
                    reasons.setdefault(r.reason or "no reason given", []).append(where)
        hint = how_to_provide(bench)
        lines += [
            f"- **{bench_label(bench)}** ({', '.join(where)}): {reason}" + (f" — to run it: {hint}." if hint else "")
            for reason, where in reasons.items()
        ]
    return "\n".join(lines) if lines else "None: every enabled benchmark ran."


def _table5_cell(source: str) -> str:
    ref = paper.table5_reference(source)
    if not ref:
        return "–"
    parts = [f"ratio {ref['ratio']}"]
    if "instruction_words_mean" in ref:
        parts.insert(0, f"{ref['instruction_words_mean']} / {ref['output_words_mean']} words (n={ref['n']})")
    return ", ".join(parts) + " (full set)"


def _selection_text(sel: Selection | None) -> str:
    if sel is None:
        return ""
    if sel.method == "per seed":
        return (
            f"Selection: per seed — each seed draws its own {sel.n} training examples and a disjoint test "
            f"sample of {sel.test_n} from these {sel.available} examples (the statistics above "
            "are of the whole source)."
        )
    return f"Selection: {sel.method or '?'}, {sel.selected} of {sel.available} available examples."


def data_section(run: agg.RunResults) -> str:
    """The prepared data's length statistics beside the paper's Table 5, the counting rule and the selection."""
    ds = run.data_stats
    if (ds is None or not ds.stats) and run.data_unavailable:
        return f"Training data unavailable: {run.data_unavailable.reason}"
    if ds is None or not ds.stats:
        return "No data statistics in the run directory (`data/data_stats.json` missing)."
    header = ["set", "source", "n", "instruction words (mean)", "output words (mean)", "ratio", "paper Table 5"]
    source = ds.train_source or "?"
    rows = [
        [
            split,
            source if split == "train" else ds.held_out_source,
            "–" if st.n is None else st.n,
            fmt(st.instruction_words_mean, 2),
            fmt(st.output_words_mean, 2),
            fmt(st.ratio, 3),
            _table5_cell(str(source)) if split == "train" else "–",
        ]
        for split, st in ds.stats.items()
        if st
    ]
    rule = ds.train.counting_rule
    notes = [f"Counting rule: {rule}." if rule else "", _selection_text(ds.selection)]
    return md_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n)
