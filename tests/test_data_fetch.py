"""``im-pipeline data fetch``: a local HTTP server (127.0.0.1) over fixture files, good / corrupt / missing, the
pinned sha256 of every registered file, the per-user cache the loaders search, and the offline message."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_mirror import Server

from im_pipeline.data import REGISTRY, DataError, DatasetSpec, load_records
from im_pipeline.data.fetch import fetch, fetchable, sha256_of
from im_pipeline_flows.cli.main import main

GOOD = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}\n'
SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture(autouse=True)
def no_mirror_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The public origins unless a test names a mirror ($IM_PIPELINE_MIRROR would redirect every fetch)."""
    monkeypatch.delenv("IM_PIPELINE_MIRROR", raising=False)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """An HTTP server laid out like a data directory: good/tiny.jsonl (right bytes), corrupt/tiny.jsonl (wrong)."""
    root = tmp_path / "served"
    (root / "good" / "fixture").mkdir(parents=True)
    (root / "good" / "fixture" / "tiny.jsonl").write_bytes(GOOD)
    (root / "corrupt" / "fixture").mkdir(parents=True)
    (root / "corrupt" / "fixture" / "tiny.jsonl").write_bytes(GOOD.replace(b"Hello", b"Hullo"))
    server = Server(root)
    yield server, root
    server.close()


@pytest.fixture
def tiny_spec(monkeypatch: pytest.MonkeyPatch, mirror: tuple[Server, Path]) -> DatasetSpec:
    server, _ = mirror
    spec = DatasetSpec("tiny_fixture", "fixture", "fixture/tiny.jsonl", url=f"{server.url}/good/fixture/tiny.jsonl")
    spec = DatasetSpec(**{**spec.__dict__, "sha256": SHA})
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


@pytest.fixture
def no_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No data directory; the per-user cache in tmp_path/cache."""
    monkeypatch.delenv("IM_PIPELINE_DATA_DIR", raising=False)
    monkeypatch.setenv("IM_PIPELINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def test_good_file_from_origin_then_present(tiny_spec: DatasetSpec, mirror: tuple[Server, Path], tmp_path: Path):
    server, _ = mirror
    (item,) = fetch(["tiny_fixture"], to=tmp_path / "out")
    assert item.status == "fetched" and item.url == tiny_spec.url and item.size == len(GOOD)
    dest = tmp_path / "out" / "fixture" / "tiny.jsonl"
    assert item.path == dest and dest.read_bytes() == GOOD and dest.stat().st_mode & 0o777 == 0o644
    assert _leftovers(tmp_path / "out") == ["fixture", "tiny.jsonl"]  # no temporary file left
    assert server.requests == ["/good/fixture/tiny.jsonl"]
    (again,) = fetch(["tiny_fixture"], to=tmp_path / "out")
    assert again.status == "present" and len(server.requests) == 1  # verified locally, nothing downloaded


def test_mirror_laid_out_like_the_data_directory(tiny_spec: DatasetSpec, mirror: tuple[Server, Path], tmp_path):
    server, _ = mirror
    (item,) = fetch(["tiny_fixture"], to=tmp_path / "out", mirror=f"{server.url}/good/")
    assert item.url == f"{server.url}/good/fixture/tiny.jsonl" and item.path.read_bytes() == GOOD


def test_mirror_from_the_environment_and_the_flag_wins(
    tiny_spec: DatasetSpec, mirror: tuple[Server, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = mirror
    monkeypatch.setenv("IM_PIPELINE_MIRROR", f"{server.url}/good")
    (item,) = fetch(["tiny_fixture"], to=tmp_path / "env")
    assert item.url == f"{server.url}/good/fixture/tiny.jsonl" and item.path.read_bytes() == GOOD
    with pytest.raises(DataError, match="sha256 mismatch"):  # --mirror names another mirror: the variable is unread
        fetch(["tiny_fixture"], to=tmp_path / "flag", mirror=f"{server.url}/corrupt")
    assert server.requests == ["/good/fixture/tiny.jsonl", "/corrupt/fixture/tiny.jsonl"]


def test_file_mirror(tiny_spec: DatasetSpec, mirror: tuple[Server, Path], tmp_path: Path) -> None:
    _, root = mirror
    (item,) = fetch(["tiny_fixture"], to=tmp_path / "out", mirror=(root / "good").as_uri())
    assert item.status == "fetched" and item.path.read_bytes() == GOOD


def test_corrupt_file_is_an_error_and_nothing_is_kept(tiny_spec: DatasetSpec, mirror, tmp_path: Path) -> None:
    server, _ = mirror
    with pytest.raises(DataError, match=rf"sha256 mismatch for 'tiny_fixture': got [0-9a-f]{{64}}, expected {SHA}"):
        fetch(["tiny_fixture"], to=tmp_path / "out", mirror=f"{server.url}/corrupt")
    assert _leftovers(tmp_path / "out") == ["fixture"]  # the folder, no file, no temporary


def test_missing_file_404_is_a_clear_error(tiny_spec: DatasetSpec, mirror, tmp_path: Path) -> None:
    server, _ = mirror
    with pytest.raises(DataError) as err:
        fetch(["tiny_fixture"], to=tmp_path / "out", mirror=f"{server.url}/nowhere")
    assert str(err.value) == (
        f"cannot download 'tiny_fixture': {server.url}/nowhere/fixture/tiny.jsonl answered HTTP 404 (File not found); "
        "the mirror has no such file"
    )
    assert _leftovers(tmp_path / "out") == ["fixture"]


def test_a_different_file_already_there_is_not_overwritten(tiny_spec: DatasetSpec, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "fixture" / "tiny.jsonl"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"mine\n")
    with pytest.raises(DataError, match=r"exists with sha256 .* it is not overwritten"):
        fetch(["tiny_fixture"], to=tmp_path / "out")
    assert dest.read_bytes() == b"mine\n"


def test_without_to_the_cache_is_used_and_loaders_search_it(tiny_spec: DatasetSpec, no_data_dir: Path) -> None:
    with pytest.raises(DataError, match="`im-pipeline data fetch tiny_fixture`"):
        load_records("tiny_fixture")
    (item,) = fetch(["tiny_fixture"])
    assert item.path == no_data_dir / "data" / "fixture" / "tiny.jsonl"
    assert load_records("tiny_fixture")[0]["messages"][1]["content"] == "Hello there"


def test_without_to_the_data_directory_is_used_when_set(tiny_spec, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path / "dd"))
    (item,) = fetch(["tiny_fixture"])
    assert item.path == tmp_path / "dd" / "fixture" / "tiny.jsonl"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_within_seconds_naming_mirror_and_data_dir(
    monkeypatch: pytest.MonkeyPatch, no_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing answers at the origin (as on a machine without network): one message, exit status 2."""
    url = f"http://127.0.0.1:{_closed_port()}/paper/lima_data.jsonl"
    spec = REGISTRY["paper_lima"]
    monkeypatch.setitem(REGISTRY, "paper_lima", DatasetSpec(**{**spec.__dict__, "url": url}))
    start = time.monotonic()
    assert main(["data", "fetch", "paper_lima"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot download 'paper_lima' from {url} (")
    assert "`im-pipeline data fetch paper_lima --mirror URL`" in err[0] and "--data-dir DIR`" in err[0]
    assert _leftovers(no_data_dir) in ([], ["data", "paper_processed"])  # no partial file


def test_cli_prints_one_line_per_file(tiny_spec, mirror, tmp_path: Path, capsys) -> None:
    assert main(["data", "fetch", "tiny_fixture", "--to", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    dest = tmp_path / "out" / "fixture" / "tiny.jsonl"
    assert out == f"tiny_fixture: {dest} ({len(GOOD)} bytes, fetched from {tiny_spec.url})\n"


def test_names_without_a_pinned_file_are_refused() -> None:
    with pytest.raises(DataError, match=r"'less_tydiqa' has no pinned file .* as 'princeton-nlp/less_data'"):
        fetch(["less_tydiqa"])
    with pytest.raises(DataError, match="'nope' is not a registered dataset with a pinned file; fetchable: lima"):
        fetch(["nope"])


def test_pins_match_the_data_directory_copies(data_dir: Path) -> None:
    """Every pinned sha256 is that of the copy in the data directory; the paper's files come from the released
    repository at commit 325b77e (raw URLs at the full commit)."""
    assert set(fetchable()) >= {"paper_lima", "paper_dolly_3k", "paper_alpaca_5k", "lima", "dolly_3k"}
    for name in fetchable():
        spec = REGISTRY[name]
        assert spec.local_path and sha256_of(data_dir / spec.local_path) == spec.sha256, name
        assert spec.url and spec.url.startswith("https://raw.githubusercontent.com/")
    assert REGISTRY["paper_lima"].url == (
        "https://raw.githubusercontent.com/ZhengxiangShi/InstructionModelling/"
        "325b77e256d44e6280ba123a8781b26ef85ec362/data/lima_data.jsonl"
    )
    (item,) = fetch(["paper_dolly_3k"], to=data_dir)  # present: verified in place, nothing written
    assert item.status == "present"
    json.loads((data_dir / REGISTRY["paper_dolly_3k"].local_path).read_text().splitlines()[0])
