"""Where converted and downloaded models are kept (the config's ``model.cache_dir``, resolved at load; called
without one, $IM_PIPELINE_CACHE, else ~/.cache/im-pipeline): one lock per entry, directories appear whole (built
aside, then renamed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from im_pipeline.config.settings import CACHE_ENV as CACHE_ENV  # the variable's name, for callers and tests
from im_pipeline.config.settings import default_cache_dir

PROVENANCE_FILE = "im_pipeline_model.json"  # written into every directory this module creates


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir`` (a loaded config's ``model.cache_dir``), else the default
    (:func:`im_pipeline.config.default_cache_dir`: ``$IM_PIPELINE_CACHE``, else ``~/.cache/im-pipeline``)."""
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (POSIX ``flock``; a no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``target``, on error remove it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a shared cache must stay readable
    try:
        yield tmp
        if target.exists():  # someone else finished first (only possible without a working lock)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete_hf_dir(path: Path) -> bool:
    """A cache entry written whole: ``config.json`` and the provenance file (written last) are there."""
    return (path / "config.json").is_file() and (path / PROVENANCE_FILE).is_file()
