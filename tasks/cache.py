"""Cache keys and "done" stamps shared by the task wrappers.

Two layers make re-runs cheap and resumable:

1. **Prefect's task cache** (the task's ``cache_key_fn`` returns the ``key`` parameter): a cached task
   does not even start; the flow passes ``refresh_cache=True`` when the task's output file is missing,
   so a deleted result is recomputed even though Prefect still remembers the key.
2. **Stamps next to the outputs** (``<dir>/.keys/<stage>.key``): the task body itself skips work whose
   output exists and whose stamp equals the key. This is what makes a re-run cheap when Prefect's
   result storage is gone (another machine, a fresh ``PREFECT_HOME``) and what detects a stale run
   directory (arm settings changed → the old checkpoint is removed before training again).

Keys hash only what changes a stage's output: a training key covers the model, the data section,
the data files' content hash, the training section, *this* arm and the seed — never the other arms,
so editing one arm recomputes only that arm.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from im_pipeline.config import ArmConfig, BenchmarkConfig, ExperimentConfig, stable_hash
from im_pipeline.provenance import write_text_atomic

DATA_SEED = 0
"""Seed of data preparation (subsampling, splits): fixed, so adding a training seed keeps the data."""

BASE_ARM = "base"


def _model_part(cfg: ExperimentConfig) -> dict[str, Any]:
    return cfg.model.model_dump(mode="json", exclude={"cache_dir"})


def data_key(cfg: ExperimentConfig) -> str:
    """Key of data preparation: the data section, the data directory and the data seed."""
    data_dir = cfg.resolved_data_dir()
    return stable_hash(
        {
            "stage": "data",
            "data": cfg.data.model_dump(mode="json"),
            "data_dir": str(data_dir) if data_dir else None,
            "seed": DATA_SEED,
        }
    )


def files_hash(*paths: Path) -> str:
    """Content hash of files (the prepared data), so training keys follow the data, not its recipe."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:12]


def train_key(cfg: ExperimentConfig, arm: ArmConfig, seed: int, data_hash: str) -> str:
    """Key of one (arm, seed) training run. Excludes other arms, evaluation settings and names."""
    training = cfg.training.model_dump(
        mode="json", exclude={"threads", "logging_steps", "save_steps", "report_to", "launcher"}
    )
    if cfg.train_launcher():  # the effective one (config or environment): it sets the number of processes
        training["launcher"] = cfg.train_launcher()
    return stable_hash(
        {
            "stage": "train",
            "model": _model_part(cfg),
            "data": cfg.data.model_dump(mode="json"),
            "data_hash": data_hash,
            "training": training,
            "arm": arm.model_dump(mode="json"),
            "seed": seed,
        }
    )


def base_key(cfg: ExperimentConfig) -> str:
    """Key standing in for "training" of the untouched base model."""
    return stable_hash({"stage": "base", "model": _model_part(cfg)})


def eval_key(cfg: ExperimentConfig, model_key: str, benchmark: str, bcfg: BenchmarkConfig, data_hash: str) -> str:
    """Key of one benchmark on one model (``model_key`` = its training key or the base key)."""
    data_dir = cfg.resolved_data_dir()
    part: dict[str, Any] = {
        "stage": "eval",
        "model_key": model_key,
        "benchmark": benchmark,
        "cfg": bcfg.model_dump(mode="json"),
        "template": cfg.data.template,
        "dtype": cfg.model.dtype,
        "data_dir": str(data_dir) if data_dir else None,
    }
    if benchmark == "alpaca_eval":
        part["judge"] = cfg.evaluation.judge.model_dump(mode="json")
    if benchmark == "overfitting":
        part["data_hash"] = data_hash
    return stable_hash(part)


def unit_lock_path(unit: Path) -> Path:
    """The lock file of one unit of work, beside its outputs: ``<parent>/.<name>.lock``.

    Beside, not inside: a unit's directory may be removed and recreated (a stale run), and the lock must
    stay the same file while it is held. Used with :func:`im_pipeline.locking.unit_lock`.
    """
    unit = Path(unit)
    return unit.parent / f".{unit.name}.lock"


def stamp_path(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / ".keys" / f"{stage}.key"


def read_stamp(out_dir: Path, stage: str) -> str | None:
    p = stamp_path(out_dir, stage)
    return p.read_text().strip() if p.is_file() else None


def write_stamp(out_dir: Path, stage: str, key: str) -> None:
    write_text_atomic(stamp_path(out_dir, stage), key + "\n")


def is_done(output: Path, out_dir: Path, stage: str, key: str) -> bool:
    """True when ``output`` exists and was produced under ``key``."""
    return Path(output).exists() and read_stamp(out_dir, stage) == key


def clear_stale_run(run_dir: Path, key: str) -> bool:
    """Remove a run directory trained under another key (so the trainer does not resume a stale run).

    A run directory whose ``train`` stamp equals ``key`` is kept (an interrupted run resumes from its
    checkpoints). Returns True when something was removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return False
    stamp = read_stamp(run_dir, "train-started")
    if stamp == key:
        return False
    if not any(run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir)
    return True


def prefect_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: task name + the explicit ``key`` parameter + a hash of the output directory."""
    name = context.task.name if context is not None else "task"
    extra = parameters.get("benchmark") or ""
    where = stable_hash(str(Path(parameters["out_dir"]).resolve()), 8)
    return f"im-pipeline-{name}-{extra}-{parameters['key']}-{where}"
