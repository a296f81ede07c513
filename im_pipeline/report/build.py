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
from im_pipeline.report.figures import (
    INPUTS_STAMP,
    _comparison_figure,
    _figure,
    _inputs_key,
)
from im_pipeline.report.hypotheses import hypotheses_section
from im_pipeline.report.length_ratio import length_ratio_section
from im_pipeline.report.overfitting import overfitting_section
from im_pipeline.report.provenance import built_by, describe, kl_note, provenance_section
from im_pipeline.report.results import RESULTS_DIR, is_results_dir, save_results
from im_pipeline.report.sections import comparison_section, data_section, failures_section, skipped_section

log = logging.getLogger(__name__)


# -- formatting -----------------------------------------------------------------------------------------------------


# -- sections -------------------------------------------------------------------------------------------------------


# -- figures -----------------------------------------------------------------------------------------------------------


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
