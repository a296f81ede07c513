"""When a unit's outputs are still valid: one key per unit, and the unit layer decides with that key alone.

A unit's **key** hashes exactly what changes its output: data preparation its data section, data directory and
seed; a training run the model, the data section, the prepared data's content hash, the training settings that
change the model (:func:`training_identity`), *this* arm and the seed (never the other arms, so editing one arm
recomputes only that arm); an evaluation the model's key, the benchmark's settings and what else it reads. Keys
read the loaded config's fields only (its settings were resolved once, at load: :mod:`im_pipeline.config.settings`),
never the environment of the process that computes them.

The key is stamped beside the outputs (``<dir>/.keys/<stage>.key``): :func:`is_done` is true when the output exists
and its stamp equals the key. That is the one definition of done (:mod:`im_pipeline.runs.units` asks it, under the
unit's lock); Prefect caches nothing. The trainer receives the training key (``train_arm(..., key=)``): a run
directory started under the same key (its ``train-started`` stamp) is resumed from its checkpoints, one started
under another key is removed first (:func:`clear_stale_run`). Settings that do not change the model
(``save_steps``, ``logging_steps``, threads, loggers) are outside the key, so they neither retrain nor throw
checkpoints away.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from im_pipeline.config import ArmConfig, BenchmarkConfig, ExperimentConfig, stable_hash
from im_pipeline.evaluation.specs import get_spec
from im_pipeline.provenance import write_text_atomic
from im_pipeline.runs.layout import stamp_path

DATA_SEED = 0
"""Seed of data preparation (subsampling, splits): fixed, so adding a training seed keeps the data."""

NOT_IN_IDENTITY = frozenset({"threads", "logging_steps", "save_steps", "report_to", "launcher"})
"""Training settings that do not change the trained model: how often to log or checkpoint, threads, loggers; the
launcher counts through the number of processes it starts (the global batch), see :func:`train_key`."""


CODE_VERSIONS: dict[str, int] = {"data": 0, "train": 0, "eval": 0}
"""Version of the code behind each stage's outputs (``data``, ``train``, ``eval``; a benchmark's name for one
benchmark), part of the stage's key from 1 on. The commit that changes what a stage computes (a preparation rule, the
loss, a benchmark's scoring) raises its number, so units an older im-pipeline finished are recomputed instead of
being read as done; settings that leave results unchanged never need it. 0 adds nothing to the key (the keys of
runs made before this existed stay valid)."""


def with_code_version(part: dict[str, Any], *stages: str) -> dict[str, Any]:
    """``part`` plus the code versions of ``stages`` that are above 0 (see :data:`CODE_VERSIONS`)."""
    versions = {s: CODE_VERSIONS[s] for s in stages if CODE_VERSIONS.get(s, 0) > 0}
    return {**part, "code": versions} if versions else part


def training_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """The training settings that change the trained model (everything but :data:`NOT_IN_IDENTITY`; ``precision``
    only where it acts, with a bfloat16 model)."""
    exclude = set(NOT_IN_IDENTITY) | ({"precision"} if cfg.model.dtype == "float32" else set())
    return cfg.training.model_dump(mode="json", exclude=exclude)


def model_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """The model settings that change the model (where it is cached does not; the attention kernel counts only when
    chosen, so configs without it keep their keys)."""
    exclude = {"cache_dir"} | ({"attn_implementation"} if cfg.model.attn_implementation is None else set())
    return cfg.model.model_dump(mode="json", exclude=exclude)


def data_key(cfg: ExperimentConfig) -> str:
    """Key of data preparation: the data section, the data directory and the data seed."""
    data_dir = cfg.resolved_data_dir()
    part = {
        "stage": "data",
        "data": cfg.data.model_dump(mode="json"),
        "data_dir": str(data_dir) if data_dir else None,
        "seed": DATA_SEED,
    }
    return stable_hash(with_code_version(part, "data"))


def files_hash(*paths: Path) -> str:
    """Content hash of files (the prepared data), so training keys follow the data, not its recipe."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:12]


def train_key(cfg: ExperimentConfig, arm: ArmConfig, seed: int, data_hash: str) -> str:
    """Key of one (arm, seed) training run. Excludes other arms, evaluation settings and names."""
    training = training_identity(cfg)
    if cfg.train_launcher():  # resolved at load (config, else environment): it sets the number of processes
        training["launcher"] = cfg.train_launcher()
    # data.in_domain_size leaves the training sample as it is (the first n of the seed's ranking): not in the key.
    data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k != "in_domain_size"}
    part = {
        "stage": "train",
        "model": model_identity(cfg),
        "data": data,
        "data_hash": data_hash,
        "training": training,
        "arm": arm.model_dump(mode="json"),
        "seed": seed,
    }
    return stable_hash(with_code_version(part, "train"))


def base_key(cfg: ExperimentConfig) -> str:
    """Key standing in for "training" of the untouched base model."""
    return stable_hash({"stage": "base", "model": model_identity(cfg)})


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
        **({"eval_dtype": cfg.evaluation.dtype} if cfg.evaluation.dtype != "auto" else {}),
        "data_dir": str(data_dir) if data_dir else None,
    }
    spec = get_spec(benchmark)
    if spec.uses_judge:
        part["judge"] = cfg.evaluation.judge.model_dump(mode="json")
    if spec.uses_training_data:
        part["data_hash"] = data_hash
        if cfg.data.in_domain_size:  # the in-domain sample: the seed's, or for the base model every seed's union
            seeds = list(cfg.seeds) if model_key == base_key(cfg) else None
            part["in_domain"] = {"size": cfg.data.in_domain_size, "n": cfg.data.n, "seeds": seeds}
    return stable_hash(with_code_version(part, "eval", benchmark))


def read_stamp(out_dir: Path, stage: str) -> str | None:
    p = stamp_path(out_dir, stage)
    return p.read_text().strip() if p.is_file() else None


def write_stamp(out_dir: Path, stage: str, key: str) -> None:
    write_text_atomic(stamp_path(out_dir, stage), key + "\n")


def is_done(output: Path, out_dir: Path, stage: str, key: str) -> bool:
    """True when ``output`` exists and was produced under ``key``."""
    return Path(output).exists() and read_stamp(out_dir, stage) == key


def clear_stale_run(run_dir: Path, key: str, *, replace: bool = False) -> bool:
    """Remove a run directory trained under another key (so the trainer does not resume a stale run).

    A run directory whose ``train-started`` stamp equals ``key`` is kept (an interrupted run resumes from its
    checkpoints), unless ``replace`` (``run --force`` / ``--rerun train``: start again from nothing). Returns True
    when something was removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return False
    if read_stamp(run_dir, "train-started") == key and not replace:
        return False
    if not any(run_dir.iterdir()):
        return False
    shutil.rmtree(run_dir)
    return True
