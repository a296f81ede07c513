"""The report of an experiment with ``strata`` (``reports/<experiment>/REPORT.md``): title and description, the
strata, the study across strata (``im_pipeline.report.strata_study``), then each stratum's usual report sections
(:func:`im_pipeline.report.build.report_sections`) under ``## Stratum <name>``, their headings one level down and
their figures in ``figures/<stratum>/``. ``summary.csv`` / ``summary.json`` gain a ``stratum`` column.

Built from ``runs/<experiment>/`` (its ``config.yaml`` and one run root per stratum) or from the committed
``reports/<experiment>/results/`` (the same tree), byte-identically.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from im_pipeline.analysis.run_files import RunConfig, RunResults, load_strata, strata_of
from im_pipeline.config.study import StudyConfig
from im_pipeline.provenance import write_text_atomic
from im_pipeline.report.provenance import built_by
from im_pipeline.report.results import RESULTS_DIR, is_results_dir, save_results
from im_pipeline.report.strata_study import strata_study_section
from im_pipeline.report.summary import write_strata_summary

log = logging.getLogger(__name__)

__all__ = ["build_strata_report", "demote", "strata_of"]

_HEADING = re.compile(r"^(#{1,5}) ")


def build_strata_report(root: Path, report_dir: Path) -> dict[str, Any]:
    """Write ``report_dir/REPORT.md``, ``figures/<stratum>/*.png`` and the summary from ``root`` (``runs/<exp>`` or
    its results directory); with ``save_results``, copy the result files first (``results/config.yaml``,
    ``results/<stratum>/...``). Returns what :func:`im_pipeline.report.build.build_report` returns."""
    from im_pipeline.report.build import report_sections

    config, runs = load_strata(root)
    name = config.name or root.name
    if config.save_results and not is_results_dir(root):
        save_results(root, report_dir / RESULTS_DIR, name)  # the experiment's config.yaml (and the marker)
        for stratum in runs:
            save_results(root / stratum, report_dir / RESULTS_DIR / stratum, name)
    sections = [f"# IT vs IM: {name}", config.description.strip(), strata_lines(config)]
    sections.append(study_section(runs, config.study))
    table: list[dict[str, Any]] = []
    for stratum in (s.name for s in config.strata or []):  # every configured stratum, with results or not
        sections.append(f"## Stratum {stratum}")
        if stratum not in runs:
            sections.append("_No results yet._")
            continue
        body, records = report_sections(runs[stratum], report_dir / "figures" / stratum)
        text = "\n\n".join(s for s in body[1:-1] if s)  # without its title and its "built by" line
        sections.append(demote(text).replace("](figures/", f"](figures/{stratum}/"))
        table += [{"stratum": stratum} | r for r in records]
    if runs:
        sections.append(built_by(next(iter(runs.values()))))
    out = report_dir / "REPORT.md"
    write_text_atomic(out, "\n\n".join(s for s in sections if s) + "\n")
    summary = write_strata_summary(name, runs, report_dir)
    figures = sorted(str(p) for p in (report_dir / "figures").glob("*/*.png"))
    log.info("report written: %s (%d strata, %d figures)", out, len(runs), len(figures))
    return {"report": str(out), "figures": figures, "table": table, "summary": summary}


def strata_lines(config: RunConfig) -> str:
    """One line per stratum: its ratio range and arms."""
    lines = []
    for s in config.strata or []:
        low, high = [*s.ratio_range, None, None][:2]
        ratio = f"{low} ≤ ratio" + (f" ≤ {high}" if high is not None else "")
        arms = s.arms or [a.name or "?" for a in config.arms]
        lines.append(f"- Stratum `{s.name}`: instruction/output word ratio {ratio}; arms {', '.join(arms)}")
    return "\n".join(lines)


def study_section(runs: dict[str, RunResults], study: dict[str, Any] | None) -> str:
    """The study across strata (``im_pipeline.report.strata_study``); "" without a study."""
    if not study:
        return ""
    return strata_study_section(runs, StudyConfig.model_validate(study))


def demote(markdown: str) -> str:
    """Every Markdown heading one level down (``## X`` → ``### X``), outside fenced code blocks."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and _HEADING.match(line) else line)
    return "\n".join(out)
