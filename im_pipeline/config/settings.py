"""The settings a run takes from its environment, read here and nowhere else: the data directory, the training
launcher, the model cache, the number of concurrent task runs and the download mirror.

Loading a config (:func:`im_pipeline.config.load_config`, :func:`~im_pipeline.config.config_from_dict`) folds them
into its fields with :func:`fold_settings` before the one validation: ``data_dir`` (the config's, else
``--data-dir``, else ``$IM_PIPELINE_DATA_DIR``; absolute), ``training.launcher`` (else
``$IM_PIPELINE_TRAIN_LAUNCHER``), ``model.cache_dir`` (else ``$IM_PIPELINE_CACHE``, else ``~/.cache/im-pipeline``)
and ``orchestration.max_workers`` (else ``$IM_PIPELINE_MAX_WORKERS``, else 1). From then on the loaded config is
the only source: unit keys, units and flows read its fields (:attr:`ExperimentConfig.settings
<im_pipeline.config.ExperimentConfig.settings>`), never the process's environment, and a unit flow on a work pool
gets the parent's values with the config. A config already folded folds to itself.

The download mirror (``$IM_PIPELINE_MIRROR``, :func:`default_mirror`) is the exception: read when a download
happens (``data fetch``, ``models fetch``, a shipped model's first use), it is in no config, since it changes where
bytes come from, never which (every downloaded file is checked against its pinned sha256).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

DATA_DIR_ENV = "IM_PIPELINE_DATA_DIR"
"""Environment variable naming the offline data directory (e.g. ``../shared/data``)."""

TRAIN_LAUNCHER_ENV = "IM_PIPELINE_TRAIN_LAUNCHER"
"""Environment variable with the default training launcher (``training.launcher`` wins)."""

CACHE_ENV = "IM_PIPELINE_CACHE"
"""Environment variable naming the model cache directory (``model.cache_dir`` wins)."""

MAX_WORKERS_ENV = "IM_PIPELINE_MAX_WORKERS"
"""Environment variable with the number of concurrent task runs in one flow run (``orchestration.max_workers`` wins)."""

MIRROR_ENV = "IM_PIPELINE_MIRROR"
"""Environment variable naming a mirror (an HTTP or ``file://`` URL) that ``data fetch``, ``models fetch`` and the
shipped models' first use download from instead of the public origins (``--mirror`` wins)."""


def env_setting(name: str) -> str | None:
    """The value of one of the ``IM_PIPELINE_*`` variables above, stripped; None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def default_cache_dir() -> Path:
    """The model cache when no config names one: ``$IM_PIPELINE_CACHE``, else ``~/.cache/im-pipeline``."""
    return Path(env_setting(CACHE_ENV) or Path.home() / ".cache" / "im-pipeline").expanduser()


def default_mirror() -> str | None:
    """The mirror when no ``--mirror`` names one: ``$IM_PIPELINE_MIRROR``, else None (the public origins)."""
    return env_setting(MIRROR_ENV)


def default_max_workers() -> int:
    """Concurrent task runs when no config names them: ``$IM_PIPELINE_MAX_WORKERS``, else 1 (read at call time)."""
    raw = env_setting(MAX_WORKERS_ENV)
    if raw is None:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"${MAX_WORKERS_ENV}={raw!r}: must be a positive integer")
    return int(raw)


class Settings(BaseModel):
    """The resolved settings of a loaded config (frozen): what the environment contributed, as the run uses it."""

    model_config = ConfigDict(frozen=True)

    data_dir: Path | None
    train_launcher: str | None
    cache_dir: Path
    max_workers: int


def data_dir_origin(data: dict[str, Any], data_dir: str | os.PathLike[str] | None = None) -> str:
    """Where :func:`fold_settings` takes the data directory from (for an error naming a missing one)."""
    if data.get("data_dir"):
        return "data_dir in the config"
    return "--data-dir" if data_dir else f"${DATA_DIR_ENV}"


def fold_settings(data: dict[str, Any], data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``data`` (a raw config mapping, not yet validated) with every setting filled in: a value the config gives
    wins, then ``data_dir`` (``--data-dir``), then the environment. Returns a new mapping; ``data`` is unchanged.

    Values of the wrong type are left alone for validation to name.
    """
    out = dict(data)

    def section(name: str) -> dict[str, Any] | None:
        value = out.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return None
        out[name] = dict(value)
        return out[name]

    raw_dir = out.get("data_dir") or data_dir or env_setting(DATA_DIR_ENV)
    if isinstance(raw_dir, (str, os.PathLike)) and str(raw_dir):
        out["data_dir"] = str(Path(raw_dir).expanduser().resolve())
    elif raw_dir is None:
        out["data_dir"] = None
    training, model, orch = section("training"), section("model"), section("orchestration")
    if training is not None and not training.get("launcher"):
        training["launcher"] = env_setting(TRAIN_LAUNCHER_ENV)
    if model is not None and not model.get("cache_dir"):
        model["cache_dir"] = str(default_cache_dir())
    if orch is not None and orch.get("max_workers") is None:
        orch["max_workers"] = default_max_workers()
    return out
