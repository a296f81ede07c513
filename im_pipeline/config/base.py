"""What every config section shares: strict validation (unknown keys, inf / nan are errors), names that become
directory names, the data directory's resolution, the stable hash."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from im_pipeline.config.settings import DATA_DIR_ENV, env_setting


class ConfigError(ValueError):
    """A configuration file or override is invalid. The message names key, value and allowed values."""


class Strict(BaseModel):
    """Base of every config section: unknown keys, ``inf`` and ``nan`` are errors; assignments are validated."""

    # allow_inf_nan=False: ``.inf`` / ``.nan`` (YAML) or ``inf`` (--set) are rejected for every float.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=True, allow_inf_nan=False)


NAME_CHARS = "letters, digits, '-', '_', '.', '+'"


_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")


def check_name(value: str, what: str) -> str:
    """A name used as a path component: allowed characters only, never ``..`` or ``/`` (stays inside its dir)."""
    if not _NAME_RE.fullmatch(value) or ".." in value or value == ".":
        raise ValueError(
            f"{what} {value!r} is not allowed: use {NAME_CHARS} (no '/', no '..'); it becomes a directory name"
        )
    return value


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def data_dir_of(
    value: str | os.PathLike[str] | None = None,
    *,
    must_exist: type[Exception] | None = None,
    given_as: str = "--data-dir / data_dir",
) -> Path | None:
    """The offline data directory: ``value`` (the config's ``data_dir``, ``--data-dir``), else
    ``$IM_PIPELINE_DATA_DIR``, else None; absolute. The one place it is resolved.

    With ``must_exist`` (an exception class), a directory that is set but missing raises it at once, naming the
    directory and where it came from (``given_as`` for ``value``), never a silent fall-back to the Hub.
    """
    given = value not in (None, "")
    raw = value if given else env_setting(DATA_DIR_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if must_exist is not None and not path.is_dir():
        where = given_as if given else f"${DATA_DIR_ENV}"
        raise must_exist(f"data directory {path} (from {where}) does not exist")
    return path
