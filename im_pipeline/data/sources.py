"""Where training data come from: a registered name, a local file, or a Hugging Face Hub id.

Registered datasets have a Hub id (the real loading path, used when online) and a path relative to
the offline data directory (``--data-dir`` / config ``data_dir`` / ``$IM_PIPELINE_DATA_DIR``). A
local copy in the data directory always wins, so air-gapped machines never touch the network.
A dataset that is neither local nor reachable fails with a :class:`DataError` that names the Hub id
and where to put a local copy.

Files: ``.jsonl`` (one example per line) or ``.json`` (a list of examples); each example in the
normalised messages format or Alpaca style (see :mod:`im_pipeline.data.normalise`). Every problem
is reported as one :class:`DataError` naming the file and the line (JSONL) or record index (JSON).
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from im_pipeline.config import DATA_DIR_ENV
from im_pipeline.data.normalise import DataError, Phraser, is_multi_turn, normalise_record
from im_pipeline.provenance import write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset."""

    name: str
    description: str
    local_path: str | None  # relative to the data directory
    hub_id: str | None = None
    hub_config: str | None = None
    hub_data_files: str | None = None
    hub_split: str = "train"
    single_turn_only: bool = False
    upstream: str = ""  # where the file originally comes from (for people building a local copy)


_PAPER_DATA = "GitHub ZhengxiangShi/InstructionModelling @ 325b77e, data"

REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "lima",
            "LIMA, all conversations (1,000 single-turn + multi-turn; the paper's 1,030; local copy 1,029)",
            "lima/lima.json",
            hub_id="GAIR/lima",
            upstream="hiyouga/LLaMA-Factory data/lima.json @ b9cdff4 (Alpaca style with history)",
        ),
        DatasetSpec(
            "lima_full",
            "alias of 'lima': all LIMA conversations including the multi-turn ones",
            "lima/lima.json",
            hub_id="GAIR/lima",
        ),
        DatasetSpec(
            "lima_1k",
            "LIMA single-turn subset (1,000 conversations)",
            "lima/lima.json",
            hub_id="GAIR/lima",
            single_turn_only=True,
        ),
        DatasetSpec(
            "dolly_3k",
            "AlpaGasus Dolly 3k (ChatGPT-filtered databricks-dolly-15k)",
            "alpagasus/dolly_3k.json",
            upstream="gpt4life/alpagasus data/filtered/dolly_3k.json",
        ),
        DatasetSpec(
            "alpaca_5k",
            "AlpaGasus Alpaca 5k: Alpaca 52k filtered by Claude, threshold 4.5 (claude_t45)",
            "alpagasus/claude_t45.json",
            upstream="gpt4life/alpagasus data/filtered/claude_t45.json",
        ),
        DatasetSpec(
            "alpaca_random_9k",
            "9k random Alpaca examples (AlpaGasus random baseline)",
            "alpagasus/random_9k.json",
            upstream="gpt4life/alpagasus data/random/random_9k.json",
        ),
        DatasetSpec(
            "alpaca_chatgpt_9k",
            "AlpaGasus Alpaca 9k filtered by ChatGPT (the paper's 'Dolly 9k' label); Hub copy is unofficial",
            "alpagasus/chatgpt_9k.json",
            hub_id="mlabonne/alpagasus",
            upstream="gpt4life/alpagasus data/filtered/chatgpt_9k.json",
        ),
        # The paper's own processed training files (released code, data/ @ 325b77e): Tulu ``messages`` format with
        # the open-instruct instruction phrasings already applied. Table 5's counting rule on these gives the paper's
        # numbers exactly. Offline only (no Hub copy).
        DatasetSpec(
            "paper_lima",
            "LIMA as the paper trained on it (1,030 conversations incl. multi-turn; released lima_data.jsonl)",
            "paper_processed/lima_data.jsonl",
            upstream=f"{_PAPER_DATA}/lima_data.jsonl",
        ),
        DatasetSpec(
            "paper_dolly_3k",
            "AlpaGasus Dolly 3k as the paper trained on it (2,996; instruction phrasings applied)",
            "paper_processed/alpagasus_3k_dolly.jsonl",
            upstream=f"{_PAPER_DATA}/alpagasus_3k_dolly.jsonl",
        ),
        DatasetSpec(
            "paper_alpaca_5k",
            "AlpaGasus Alpaca 5k (claude_t45) as the paper trained on it (5,305; instruction phrasings applied)",
            "paper_processed/alpagasus_claude_t45_alpaca.jsonl",
            upstream=f"{_PAPER_DATA}/alpagasus_claude_t45_alpaca.jsonl",
        ),
        DatasetSpec(
            "less_mmlu_chat",
            "LESS-selected Tulu V2 subset for MMLU (paper: 'Less MMLU Chat')",
            "less/mmlu_chat.jsonl",
            hub_id="princeton-nlp/less_data",
            hub_data_files="mmlu*",
        ),
        DatasetSpec(
            "less_bbh_icl",
            "LESS-selected Tulu V2 subset for BBH (paper: 'Less BBH ICL')",
            "less/bbh_icl.jsonl",
            hub_id="princeton-nlp/less_data",
            hub_data_files="bbh*",
        ),
        DatasetSpec(
            "less_tydiqa",
            "LESS-selected Tulu V2 subset for TyDiQA (paper: 'Less TydiQA')",
            "less/tydiqa.jsonl",
            hub_id="princeton-nlp/less_data",
            hub_data_files="tydiqa*",
        ),
    ]
}


@dataclass
class Loaded:
    """Records plus where each came from (for error messages in later policies)."""

    records: list[dict[str, Any]]
    locations: list[str]
    origin: str  # the file or Hub id actually read
    dropped_multi_turn: int = 0
    notes: list[str] = field(default_factory=list)


# -- data directory ---------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The data directory: the argument, else ``$IM_PIPELINE_DATA_DIR``, else None.

    A directory that is set but does not exist is an error at once (naming it and where it came from),
    never a silent fall-back to the Hub.
    """
    given = data_dir not in (None, "")
    value = data_dir if given else os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        where = "--data-dir / data_dir" if given else f"${DATA_DIR_ENV}"
        raise DataError(f"data directory {path} (from {where}) does not exist")
    return path


def hub_available() -> bool:
    """True when the Hub may be used: not ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, and reachable.

    Checked once per call with a short connection attempt, so an offline machine fails at once instead of
    spending ``datasets``' retries (about 25 s) before the same error.
    """
    if hub_offline():
        return False
    from im_pipeline.evaluation.common import hub_reachable

    return hub_reachable()


def hub_offline() -> bool:
    """True when the Hub must not be contacted (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


# -- files ------------------------------------------------------------------------------------------


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


def read_raw_file(path: str | Path) -> list[tuple[Any, str]]:
    """Parse a ``.json`` / ``.jsonl`` file into ``(raw example, location)`` pairs, location like ``f: line 3``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):  # tolerate a UTF-8 byte-order mark (common from Windows editors)
        data = data[len(codecs.BOM_UTF8) :]
    if not data.strip():
        raise DataError(f"{path}: file is empty (expected JSON or JSONL examples)")
    suffix = path.suffix.lower()
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


# -- loading ----------------------------------------------------------------------------------------


def _normalise_all(
    raws: list[tuple[Any, str]], source: str, phrase: Phraser | None, id_prefix: str
) -> tuple[list[dict[str, Any]], list[str]]:
    width = max(5, len(str(len(raws))))
    records, locations = [], []
    for i, (raw, where) in enumerate(raws):
        records.append(
            normalise_record(raw, source=source, default_id=f"{id_prefix}-{i:0{width}d}", where=where, phrase=phrase)
        )
        locations.append(where)
    return records, locations


def _load_hub(hub_id: str, spec: DatasetSpec | None, source: str, phrase: Phraser | None) -> Loaded:
    """Load from the Hub with ``datasets.load_dataset`` (only reached when online)."""
    import datasets  # imported lazily: heavy, and only this path needs it

    kwargs: dict[str, Any] = {"split": spec.hub_split if spec else "train"}
    if spec and spec.hub_config:
        kwargs["name"] = spec.hub_config
    if spec and spec.hub_data_files:
        kwargs["data_files"] = spec.hub_data_files
    log.info("loading %s from the Hugging Face Hub (%s)", source, hub_id)
    try:
        ds = datasets.load_dataset(hub_id, **kwargs)
    except Exception as exc:  # network, auth (gated sets such as GAIR/lima), missing files
        raise DataError(
            f"could not load {hub_id!r} from the Hugging Face Hub: {exc}. {_local_copy_hint(spec, None)}"
        ) from exc
    raws = [(dict(row), f"{hub_id}: record {i}") for i, row in enumerate(ds, start=1)]
    records, locations = _normalise_all(raws, source, phrase, source)
    return Loaded(records, locations, origin=f"hub:{hub_id}")


def _local_copy_hint(spec: DatasetSpec | None, data_dir: Path | None) -> str:
    if spec is None or spec.local_path is None:
        return "To use a local copy, pass the path of a .json/.jsonl file instead."
    where = f"{data_dir}/{spec.local_path}" if data_dir else f"<data dir>/{spec.local_path}"
    up = f" (original file: {spec.upstream})" if spec.upstream else ""
    return (
        f"To provide a local copy, save it as {where}{up} and pass --data-dir (or set ${DATA_DIR_ENV}), "
        "or pass the file path itself instead of the name."
    )


def load_source(
    source: str,
    data_dir: str | Path | None = None,
    *,
    multi_turn: bool = True,
    instruction_templates: bool = False,
    seed: int = 0,
) -> Loaded:
    """Like :func:`load_records`, but also returns where each record came from."""
    from im_pipeline.data.phrasings import make_phraser

    phrase = make_phraser(seed) if instruction_templates else None
    spec = REGISTRY.get(source)
    if spec is not None:
        ddir = resolve_data_dir(data_dir)  # only a registered name reads the data directory (checked here)
        local = ddir / spec.local_path if ddir and spec.local_path else None
        if local is not None and local.is_file():
            records, locations = _normalise_all(read_raw_file(local), spec.name, phrase, spec.name)
            loaded = Loaded(records, locations, origin=str(local))
        elif spec.hub_id and hub_available():
            loaded = _load_hub(spec.hub_id, spec, spec.name, phrase)
        else:
            why = f"{local} does not exist" if local else f"no data directory set (--data-dir or ${DATA_DIR_ENV})"
            hub = (
                f"it is on the Hugging Face Hub as {spec.hub_id!r}, but the Hub is "
                + ("offline (HF_HUB_OFFLINE=1)" if hub_offline() else "unreachable from this machine")
                if spec.hub_id
                else "it has no Hub copy"
            )
            raise DataError(f"dataset {source!r} is not available: {why}; {hub}. {_local_copy_hint(spec, ddir)}")
        single_only = spec.single_turn_only or not multi_turn
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
        name = path.name.split(".")[0]
        records, locations = _normalise_all(read_raw_file(path), name, phrase, name)
        loaded = Loaded(records, locations, origin=str(path))
        single_only = not multi_turn
    elif "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        if not hub_available():
            state = "offline (HF_HUB_OFFLINE=1)" if hub_offline() else "unreachable from this machine"
            raise DataError(
                f"{source!r} is not a registered dataset or a local file, and the Hugging Face Hub is {state}. "
                "Pass the path of a local .json/.jsonl copy instead."
            )
        loaded = _load_hub(source, None, source.split("/")[-1], phrase)
        single_only = not multi_turn
    else:
        names = ", ".join(REGISTRY)
        raise DataError(
            f"unknown dataset {source!r}: not a registered name ({names}), a file, or a Hub id (owner/name)"
        )

    if single_only:
        keep = [i for i, r in enumerate(loaded.records) if not is_multi_turn(r)]
        loaded.dropped_multi_turn = len(loaded.records) - len(keep)
        loaded.records = [loaded.records[i] for i in keep]
        loaded.locations = [loaded.locations[i] for i in keep]
    log.info("loaded %d examples from %s", len(loaded.records), loaded.origin)
    return loaded


def load_records(
    source: str,
    data_dir: str | Path | None = None,
    *,
    multi_turn: bool = True,
    instruction_templates: bool = False,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Load and normalise a dataset: a registered name, a local ``.json``/``.jsonl`` file, or a Hub id.

    ``multi_turn=False`` drops conversations with more than one user turn. ``instruction_templates``
    wraps each instruction in an open-instruct-style phrasing chosen by ``(seed, id)``.
    Raises :class:`DataError` (a ``ValueError``) naming the file and line/record on malformed data.
    """
    return load_source(
        source, data_dir, multi_turn=multi_turn, instruction_templates=instruction_templates, seed=seed
    ).records
