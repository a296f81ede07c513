"""The report as a Prefect UI Markdown artifact: figures inlined (the UI cannot follow relative links), wide tables
transposed or split."""

from __future__ import annotations

from pathlib import Path

from im_pipeline.report.cells import (
    md_table,
)

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
        return md_table(t_header, t_rows).split("\n")
    # split: tables that repeat the first column, each as wide as fits (at least one more column)
    out: list[str] = []
    k = 1
    while k < len(header):
        keep = [0, k]
        k += 1
        while k < len(header) and _fits([header[i] for i in [*keep, k]], [[r[i] for i in [*keep, k]] for r in rows]):
            keep.append(k)
            k += 1
        out.extend(md_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows]).split("\n"))
        out.append("")
    return out[:-1]
