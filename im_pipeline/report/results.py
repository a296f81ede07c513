"""The small result files of a run, copied beside its report so they can be committed (``save_results: true``).

``reports/<experiment>/results/`` mirrors the run directory's layout for exactly the files the report reads
(:func:`im_pipeline.analysis.aggregate.load_run`): ``config.yaml``, ``timings.json``, ``data/data_stats.json``
(``data/unavailable.json``), ``<arm>/seed-<s>/train_summary.json`` and ``train_log.jsonl``,
``<arm>/seed-<s>/eval/*.json`` and ``base/eval/*.json``; never checkpoints, weights or the prepared data. So
``im-pipeline report reports/<experiment>/results --out DIR`` rebuilds the same REPORT.md anywhere. The pipeline
copies the files as soon as a unit finishes (a later session sees every finished seed) and again with every report.

Each unit's cache stamps (``.keys/*.key``, a few bytes) travel with its files: :func:`restore_unit` puts a finished
unit's files back into a run directory that lacks them, and the pipeline's own "done" checks (output exists and its
stamp equals the key) then skip it, so a later session resumes a partial study from the committed files.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from im_pipeline.provenance import write_text_atomic

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
MARKER = "README.md"
MARKER_HEAD = "# Result files of experiment"
PATTERNS = (
    "config.yaml",
    "timings.json",
    "data/data_stats.json",
    "data/unavailable.json",
    "*/seed-*/train_summary.json",
    "*/seed-*/train_log.jsonl",
    "*/seed-*/.keys/train.key",
    "*/seed-*/eval/*.json",
    "*/seed-*/eval/.keys/*.key",
    "base/eval/*.json",
    "base/eval/.keys/*.key",
)


def is_results_dir(path: Path) -> bool:
    """True for a directory written by :func:`save_results` (it carries the marker README)."""
    marker = Path(path) / MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").startswith(MARKER_HEAD)


def result_files(run_root: Path) -> list[Path]:
    """The small result files under ``run_root`` (paths relative to it), sorted."""
    root = Path(run_root)
    found = {p.relative_to(root) for pattern in PATTERNS for p in root.glob(pattern) if p.is_file()}
    return sorted(found)


def _copy_changed(files: list[Path], src: Path, dst: Path) -> list[str]:
    copied = []
    for rel in files:
        data = (src / rel).read_bytes()
        target = dst / rel
        if target.is_file() and target.read_bytes() == data:
            continue
        write_text_atomic(target, data)
        copied.append(rel.as_posix())
    return copied


def save_results(run_root: Path, results_dir: Path, experiment: str = "") -> dict[str, Any]:
    """Copy the result files of ``run_root`` into ``results_dir`` (only those whose content changed). Returns
    ``{"results_dir", "copied": [relative paths], "files": count}``."""
    run_root, results_dir = Path(run_root), Path(results_dir)
    if run_root.resolve() == results_dir.resolve():
        raise ValueError(f"{results_dir} is the run directory itself")
    files = result_files(run_root)
    copied = _copy_changed(files, run_root, results_dir)
    name = experiment or run_root.name
    readme = (
        f"{MARKER_HEAD} `{name}`\n\n"
        "Copied by im-pipeline (`save_results: true`) from the run directory: configuration, data statistics, "
        "training summaries and logs, evaluation results (with per-item scores), timings and cache stamps; no "
        "weights. Rebuild the report from them with\n\n"
        f"    im-pipeline report {results_dir.as_posix()} --out DIR\n\n"
        "A run of the same config finds finished units here and skips them (see im_pipeline/report/results.py).\n"
    )
    if not (results_dir / MARKER).is_file() or (results_dir / MARKER).read_text(encoding="utf-8") != readme:
        write_text_atomic(results_dir / MARKER, readme)
    if copied:
        log.info("results: %d file(s) copied to %s", len(copied), results_dir)
    return {"results_dir": str(results_dir), "copied": copied, "files": len(files)}


def restore_unit(results_dir: Path, run_root: Path, unit: str, benchmarks: list[str]) -> list[str]:
    """Put one finished unit's committed files (``unit`` = ``<arm>/seed-<s>``) back into ``run_root`` when the run
    directory has none of them and the results hold the whole unit: its training summary and stamp, and every
    benchmark's result and stamp. The pipeline's "done" checks then skip it (same keys: same config, same data).
    Never overwrites; returns the relative paths restored ([] when nothing was)."""
    results_dir, run_root = Path(results_dir), Path(run_root)
    if not is_results_dir(results_dir):
        return []
    need = [f"{unit}/train_summary.json", f"{unit}/.keys/train.key"]
    need += [p for b in benchmarks for p in (f"{unit}/eval/{b}.json", f"{unit}/eval/.keys/{b}.key")]
    if not all((results_dir / p).is_file() for p in need) or (run_root / unit).exists():
        return []
    files = [rel for rel in result_files(results_dir) if rel.as_posix().startswith(unit + "/")]
    if not (run_root / "timings.json").exists() and (results_dir / "timings.json").is_file():
        files.append(Path("timings.json"))  # the earlier sessions' wall times stay in the report
    for rel in files:
        (run_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results_dir / rel, run_root / rel)
    log.info("results: %s restored from %s (%d files): finished in an earlier session", unit, results_dir, len(files))
    return [rel.as_posix() for rel in files]
