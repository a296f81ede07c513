"""The Markdown report (``reports/<experiment>/REPORT.md`` + ``figures/*.png``), built only from the run
directory's JSON files (``im-pipeline report RUN_DIR`` rebuilds it anywhere).

Sections: comparison table (base, every arm, IM − IT from per-item paired differences with a 95% CI and a
paired test, chance levels), skipped benchmarks and how to provide them, the data table as the paper's Table 5,
the length-ratio analysis (one point per experiment under the same runs root, the paper's Figure-2
fits overlaid as reference), overfitting (train/held-out loss, curves, BLEU overlap) and provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.provenance import write_text_atomic
from im_pipeline.report.figures import INPUTS_STAMP, cached_figure, comparison_figure, inputs_key
from im_pipeline.report.hypotheses import hypotheses_section
from im_pipeline.report.length_ratio import length_ratio_section
from im_pipeline.report.overfitting import overfitting_section
from im_pipeline.report.provenance import built_by, describe, kl_note, provenance_section
from im_pipeline.report.results import RESULTS_DIR, is_results_dir, save_results
from im_pipeline.report.sections import comparison_section, data_section, failures_section, skipped_section
from im_pipeline.report.summary import write_summary

log = logging.getLogger(__name__)

NORMALISATION_TEXT = {
    "sequence": "per-sequence token mean, then mean over examples (the paper's code with batch 1: "
    "every example weighs the same)",
    "token": "weighted token mean over the whole batch",
}


def build_report(run_root: Path, report_dir: Path) -> dict[str, Any]:
    """Write ``report_dir/REPORT.md`` and ``report_dir/figures/*.png`` from ``run_root``'s JSON files.

    Also writes ``summary.csv`` / ``summary.json`` (:mod:`.summary`). Returns ``{"report": path, "figures": [paths],
    "table": [rows for a table artifact], "summary": {"csv": path, "json": path}}``. A run root of an experiment
    with ``strata`` gets the strata report (:func:`im_pipeline.report.strata.build_strata_report`).
    """
    from im_pipeline.report.strata import build_strata_report, strata_of

    if strata_of(Path(run_root)):
        return build_strata_report(Path(run_root), Path(report_dir))
    run = agg.load_run(Path(run_root))
    report_dir = Path(report_dir)
    if run.config.save_results and not is_results_dir(Path(run_root)):
        save_results(Path(run_root), report_dir / RESULTS_DIR, run.experiment)
    fig_dir = report_dir / "figures"
    sections, table_records = report_sections(run, fig_dir)
    text = "\n\n".join(s for s in sections if s) + "\n"
    out = report_dir / "REPORT.md"
    write_text_atomic(out, text)
    summary = write_summary(run, report_dir)  # summary.csv / summary.json: one row per arm × seed × benchmark
    figures = sorted(str(p) for p in fig_dir.glob("*.png"))
    log.info("report written: %s (%d figures)", out, len(figures))
    return {"report": str(out), "figures": figures, "table": table_records, "summary": summary}


def report_sections(run: agg.RunResults, fig_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """One run's report sections (title first; figures drawn into ``fig_dir``, linked as ``figures/<name>``) and
    the comparison table's records."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    stamp, key = fig_dir / INPUTS_STAMP, inputs_key(run)
    if not (stamp.is_file() and stamp.read_text() == key):  # else: same inputs, keep the figures (see cached_figure)
        stamp.unlink(missing_ok=True)
        for old in fig_dir.glob("*.png"):
            old.unlink()
    rows = agg.comparison_rows(run)
    table_md, table_records = comparison_section(run, rows)
    sections = [*header_sections(run), "## Results", table_md]
    comp = cached_figure(fig_dir, "comparison.png", comparison_figure, run, rows, fig_dir)
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
    return sections, table_records


def arm_line(run: agg.RunResults, arm: str) -> str:
    """An arm, its loss mode and whatever else it sets (λ, NEFTune, KL, lr scale)."""
    a = run.arm_config(arm)
    extras = [
        f"{k}={v}"
        for k, v in (
            ("prompt_loss_weight", a.prompt_loss_weight),
            ("neftune_alpha", a.neftune_alpha),
            ("kl_coef", a.kl_coef),
        )
        if v
    ]
    if a.kl_coef:
        extras.append(f"kl_form={a.kl_form}")
    if a.lr_scale != 1.0:
        extras.append(f"lr_scale={a.lr_scale}")
    return f"`{arm}` (loss_mode `{a.loss_mode}`{', ' + ', '.join(extras) if extras else ''})"


def header_sections(run: agg.RunResults) -> list[str]:
    """Title, what was run, model/data/arms, training settings, loss normalisation, KL, hypotheses, failures."""
    cfg, t = run.config, run.config.training
    summaries = [s for a in run.train_summaries.values() for s in a.values()]
    norm = t.loss_normalisation or next((s.loss_normalisation for s in summaries), "?")
    return [
        f"# IT vs IM: {run.experiment}",
        describe(cfg, run),
        cfg.description.strip(),
        f"- Model: `{cfg.model.source}`; "
        f"training data: `{cfg.data.train}`"
        f"; arms: {', '.join(arm_line(run, arm) for arm in run.arms) or '?'}; seeds: {run.seeds or '–'}",
        f"- Training: {t.epochs} epochs, lr {'?' if t.learning_rate is None else t.learning_rate}, batch "
        f"{t.batch_size} × {t.gradient_accumulation_steps}, max length {cfg.data.max_length}, "
        f"template `{cfg.data.template}`",
        f"- **Loss normalisation: `{norm}`** — {NORMALISATION_TEXT.get(norm, norm)}.",
        kl_note(run),
        *(["## Pre-registered hypotheses", hyp] if (hyp := hypotheses_section(run)) else []),
        *(["## Failed task runs", failures] if (failures := failures_section(run)) else []),
    ]
