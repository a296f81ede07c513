"""A model source (Hub id, local directory, .gguf file, shipped name) resolved to something from_pretrained loads,
with an error that says how to provide it."""

from __future__ import annotations

import re
from pathlib import Path

from im_pipeline import hub
from im_pipeline.models.cache import cache_root
from im_pipeline.models.common import ModelSourceError
from im_pipeline.models.gguf import cached_conversion, gguf_cache_key
from im_pipeline.models.shipped import NAMED_MODELS

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def how_to_provide(source: str) -> str:
    """The end of every "cannot load this Hub id" error: the ways to provide the model offline."""
    names = ", ".join(NAMED_MODELS)
    return (
        f"Provide the model locally instead: on a machine with Hub access run "
        f"`huggingface-cli download {source} --local-dir DIR` (or `save_pretrained(DIR)`) and pass DIR as the "
        f"model source; or pass a .gguf file; or use an offline model ({names})."
    )


def resolve_model(source: str, *, cache_dir: str | None = None, revision: str | None = None) -> str:
    """Turn a model source into a local HF-format directory path, or a Hub id string when online.

    GGUF sources (files and the named PyPI-shipped models) are dequantised on first use and cached.
    Raises ``ModelSourceError`` for a missing path, an unusable directory, or a Hub id that cannot be reached.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"model source must be a non-empty string, got {source!r}")
    source = source.strip()
    if source.lower() in NAMED_MODELS:
        named = NAMED_MODELS[source.lower()]
        root = cache_root(cache_dir)
        fetch = lambda: named.gguf(root)  # noqa: E731
        return str(cached_conversion(named.name, root, fetch, cleanup=named.temporary_gguf, origin=named.description))

    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"model source {source!r} is a file but not a .gguf file; pass a model directory "
                "(with config.json), a .gguf file, a Hub id, or one of: " + ", ".join(NAMED_MODELS)
            )
        root = cache_root(cache_dir)
        return str(cached_conversion(gguf_cache_key(path), root, lambda: path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_model(str(ggufs[0]), cache_dir=cache_dir)
        what = f"{len(ggufs)} .gguf files (pass one of them)" if ggufs else "no config.json and no .gguf file"
        raise ModelSourceError(f"model directory {source!r} has {what}; expected a save_pretrained() directory")

    looks_like_path = source.startswith(("/", ".", "~")) or source.lower().endswith(".gguf") or "\\" in source
    if looks_like_path or not _HUB_ID.match(source):
        raise ModelSourceError(
            f"model path {source!r} does not exist (and it is not a Hub id nor one of: {', '.join(NAMED_MODELS)})"
        )
    if not hub.hub_offline(hub.MODELS):
        return source
    # Offline: a Hub id is usable only if it is already in the local HF cache.
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, revision=revision, local_files_only=True)
    except Exception as exc:
        raise ModelSourceError(
            f"unknown model source {source!r}: not one of the offline models ({', '.join(NAMED_MODELS)}), "
            f"no local path of that name exists, and the Hugging Face Hub is offline (HF_HUB_OFFLINE) with no "
            f"cached copy of it ({type(exc).__name__}). " + how_to_provide(source)
        ) from exc
