"""Prefect's task cache, keyed by the unit's own key (:mod:`im_pipeline.runs.staleness` defines the keys, the
stamps and when a unit is done; this module only hands the key to Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from im_pipeline.config import stable_hash


def prefect_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: task name + the explicit ``key`` parameter + a hash of the output directory."""
    name = context.task.name if context is not None else "task"
    extra = parameters.get("benchmark") or ""
    where = stable_hash(str(Path(parameters["out_dir"]).resolve()), 8)
    return f"im-pipeline-{name}-{extra}-{parameters['key']}-{where}"
