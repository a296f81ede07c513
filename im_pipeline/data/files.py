"""Data files read strictly (duplicate keys, NaN / Infinity, lone surrogates and bad UTF-8 are errors naming the
file and its line or record) and written atomically.

Example files: ``.jsonl`` (one object per line), ``.json`` (a list of objects), ``.parquet`` (one row per example;
list and struct columns as they are; null cells dropped) and ``.csv`` (a header row; cells are strings; a cell of a
list-valued field, ``messages`` / ``conversations`` / ``history`` / a conversational ``prompt`` / ``completion``,
holds JSON). Locations: ``file: line N`` (JSONL; CSV: the line a row starts on), ``file: record N`` (JSON) or
``file: row N`` (Parquet); all counted from 1.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from im_pipeline.data.normalise import DataError
from im_pipeline.provenance import write_text_atomic


def _decode(path: Path, data: bytes, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = line if line is not None else data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: line {at}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


class _Problem:
    """Stands in for a JSON value that must be rejected (found after parsing, to name its record)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Problem:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # json keeps the last value silently; a duplicated field is almost always a mistake
            return _Problem(f"duplicate key {key!r} in one object")
        out[key] = value
    return out


def _constant_hook(name: str) -> _Problem:
    return _Problem(f"non-finite number {name} is not allowed")


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _find_problem(obj: Any, surrogates: bool) -> str | None:
    """The first rejected value inside ``obj``: a duplicate key, NaN/Infinity, or a lone surrogate."""
    if isinstance(obj, _Problem):
        return obj.message
    if isinstance(obj, str):
        if surrogates:
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"lone surrogate \\u{ord(obj[exc.start]):04x} in a string (not valid Unicode text)"
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _find_problem(key, surrogates) or _find_problem(value, surrogates)
            if found:
                return found
    elif isinstance(obj, list):
        for value in obj:
            found = _find_problem(value, surrogates)
            if found:
                return found
    return None


def strict_json_loads(text: str) -> tuple[Any, bool]:
    """``json.loads`` that marks duplicate keys and NaN/Infinity; returns (value, may hold surrogates)."""
    obj = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_constant_hook)
    return obj, _SURROGATE.search(text) is not None


def check_json_value(obj: Any, surrogates: bool, where: str) -> Any:
    """Raise :class:`DataError` at ``where`` when the parsed value holds a rejected value."""
    problem = _find_problem(obj, surrogates)
    if problem:
        raise DataError(f"{where}: {problem}")
    return obj


SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
"""The example file types :func:`read_raw_file` reads."""

LIST_FIELDS = ("messages", "conversations", "history", "prompt", "completion")
"""Fields whose CSV cells may hold JSON lists."""


def read_raw_file(path: str | Path) -> list[tuple[Any, str]]:
    """Parse an example file (:data:`SUFFIXES`) into ``(raw example, location)`` pairs, location like ``f: line 3``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):  # tolerate a UTF-8 byte-order mark (common from Windows editors)
        data = data[len(codecs.BOM_UTF8) :]
    if not data.strip():
        raise DataError(f"{path}: file is empty (expected JSON or JSONL examples)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet_raw(path)
    if suffix == ".csv":
        return _read_csv_raw(path, data)
    if suffix == ".jsonl" or (suffix != ".json" and data.lstrip()[:1] == b"{"):
        return _read_jsonl_raw(path, data)
    text = _decode(path, data)
    try:
        obj, surrogates = strict_json_loads(text)
    except json.JSONDecodeError as exc:
        truncated = not text[exc.pos :].strip() or "Unterminated" in exc.msg
        hint = " (the file looks truncated)" if truncated else ""
        raise DataError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}{hint}") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if isinstance(obj, _Problem) or not isinstance(obj, list):
        check_json_value(obj, surrogates, str(path))
        raise DataError(
            f"{path}: top level must be a list of examples (or JSONL, one object per line), got {type(obj).__name__}"
        )
    if not obj:
        raise DataError(f"{path}: contains no examples (empty list)")
    out = [(raw, f"{path}: record {i}") for i, raw in enumerate(obj, start=1)]  # 1-based, as line numbers
    for raw, where in out:
        check_json_value(raw, surrogates, where)
    return out


def _read_parquet_raw(path: Path) -> list[tuple[Any, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    if not rows:
        raise DataError(f"{path}: contains no examples (no rows)")
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}: row {i}"
        out.append((check_json_value({k: v for k, v in row.items() if v is not None}, True, where), where))
    return out


def _csv_cell(key: str, value: str, where: str) -> Any:
    """A CSV cell: a string, or the JSON list of a list-valued field (a prompt that is no JSON list stays text)."""
    if key not in LIST_FIELDS or not value.lstrip().startswith("["):
        return value
    try:
        obj, surrogates = strict_json_loads(value)
    except json.JSONDecodeError as exc:
        if key in ("prompt", "completion"):
            return value
        raise DataError(f"{where}: column {key!r} must hold a JSON list: {exc.msg}") from None
    if key in ("prompt", "completion") and not (isinstance(obj, list) and all(isinstance(m, dict) for m in obj)):
        return value
    return check_json_value(obj, surrogates, f"{where}: column {key!r}")


def _read_csv_raw(path: Path, data: bytes) -> list[tuple[Any, str]]:
    reader = csv.reader(io.StringIO(_decode(path, data), newline=""), strict=True)
    try:
        header = next(reader)
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise DataError(f"{path}: line 1: duplicate column {dup!r} in the header")
        out = []
        start = reader.line_num + 1
        for row in reader:
            where = f"{path}: line {start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} cells, but the header has {len(header)} columns")
            out.append(({k: _csv_cell(k, v, where) for k, v in zip(header, row, strict=True)}, where))
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from None
    if not out:
        raise DataError(f"{path}: contains no examples (a header row and no data rows)")
    return out


def _read_jsonl_raw(path: Path, data: bytes) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    lines = data.split(b"\n")
    for n, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        line = _decode(path, raw_line, n)
        try:
            obj, surrogates = strict_json_loads(line)
        except json.JSONDecodeError as exc:
            last = n == len(lines) and not data.endswith(b"\n")
            hint = " (the file looks truncated)" if last else ""
            raise DataError(f"{path}: line {n}: not valid JSON: {exc.msg}{hint}") from None
        out.append((check_json_value(obj, surrogates, f"{path}: line {n}"), f"{path}: line {n}"))
    return out


def read_jsonl(path: str | Path, *, with_locations: bool = False) -> list[Any]:
    """Read a JSONL file of JSON objects (an empty file gives ``[]``).

    Raises :class:`DataError` naming file and line for bad JSON, bad UTF-8 or a non-object line.
    ``with_locations``: return ``(object, "file: line N")`` pairs instead of the objects.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    for obj, where in _read_jsonl_raw(path, path.read_bytes()):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        rows.append((obj, where) if with_locations else obj)
    return rows


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL atomically (temporary file + rename): a failure leaves no partial file."""
    text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    return write_text_atomic(Path(path), text.encode("utf-8"))  # encoding errors raise before anything is written
