"""Where training data come from: a registered name, a local file, or a Hugging Face Hub id.

Registered datasets (:mod:`im_pipeline.data.registry`) have a Hub id (used when online), a path relative to the
offline data directory (``--data-dir`` / config ``data_dir`` / ``$IM_PIPELINE_DATA_DIR``) and, where that copy has a
public origin, its URL and sha256 (``im-pipeline data fetch``). A local copy, in the data directory or else in the
per-user data cache, always wins, so air-gapped machines never touch the network; a dataset that is neither local
nor reachable fails with a :class:`DataError` that says how to provide it. Files and shapes:
:mod:`im_pipeline.data.files`, :mod:`im_pipeline.data.normalise`; every problem is one :class:`DataError` naming the
file and the line or row.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from im_pipeline import hub
from im_pipeline.config import DATA_DIR_ENV
from im_pipeline.config.base import data_dir_of
from im_pipeline.config.settings import default_cache_dir
from im_pipeline.data.files import SUFFIXES, read_raw_file
from im_pipeline.data.normalise import DataError, Phraser, apply_columns, is_multi_turn, normalise_record
from im_pipeline.data.registry import REGISTRY, DatasetSpec

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """Records plus where each came from (for error messages in later policies)."""

    records: list[dict[str, Any]]
    locations: list[str]
    origin: str  # the file or Hub id actually read (and the rows its spec excludes, if any)
    dropped_multi_turn: int = 0
    excluded: int = 0  # rows left out by the spec's ``exclude``
    notes: list[str] = field(default_factory=list)


def data_cache_dir() -> Path:
    """The per-user data cache (``<$IM_PIPELINE_CACHE or ~/.cache/im-pipeline>/data``), laid out like the data
    directory: where ``im-pipeline data fetch`` writes when no data directory is set, searched after it."""
    return default_cache_dir().resolve() / "data"


def local_copy(spec: DatasetSpec, data_dir: Path | None) -> Path | None:
    """The local copy of a registered dataset: in the data directory, else in the per-user data cache, else None."""
    if not spec.local_path:
        return None
    for root in (data_dir, data_cache_dir()):
        if root is not None and (root / spec.local_path).is_file():
            return root / spec.local_path
    return None


def _normalise_all(
    raws: list[tuple[Any, str]],
    source: str,
    phrase: Phraser | None,
    id_prefix: str,
    columns: dict[str, str] | None = None,
    exclude: dict[str, tuple[str, ...]] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalise every raw row but those ``exclude`` names; ids default to ``<id_prefix>-<row number in raws>``."""
    width = max(5, len(str(len(raws))))
    records, locations = [], []
    for i, (raw, where) in enumerate(raws):
        if exclude and isinstance(raw, dict) and any(raw.get(k) in values for k, values in exclude.items()):
            continue
        records.append(
            normalise_record(
                apply_columns(raw, columns),
                source=source,
                default_id=f"{id_prefix}-{i:0{width}d}",
                where=where,
                phrase=phrase,
            )
        )
        locations.append(where)
    return records, locations


HUB_PARAMS = ("split", "name", "revision", "data_files")
"""What an unregistered Hub source may add after ``?`` (``owner/name?split=test&revision=v1``): the arguments of
``datasets.load_dataset`` of the same names (default split: ``train``)."""


def hub_source(source: str) -> tuple[str, dict[str, str]] | None:
    """``owner/name[?key=value&...]`` as (Hub id, load_dataset arguments); None when ``source`` is not one."""
    hub_id, _, query = source.partition("?")
    if hub_id.count("/") != 1 or hub_id.startswith((".", "/", "~")) or not all(hub_id.split("/")):
        return None
    try:
        pairs = urllib.parse.parse_qsl(query, strict_parsing=True) if query else []
    except ValueError:
        pairs = [("", query)]
    keys = [k for k, _ in pairs]
    if any(k not in HUB_PARAMS for k in keys) or len(set(keys)) != len(keys):
        raise DataError(
            f"{source!r}: Hub parameters are {', '.join(HUB_PARAMS)}, each once (owner/name?split=test&revision=v1); "
            f"got {query!r}"
        )
    return hub_id, dict(pairs)


def _hub_error(hub_id: str, spec: DatasetSpec | None, exc: Exception) -> DataError:
    if hub.auth_problem(exc):
        return DataError(hub.auth_message(hub_id, "dataset"))
    text = hub.redact_token(str(exc))
    return DataError(f"could not load {hub_id!r} from the Hugging Face Hub: {text}. {_local_copy_hint(spec, None)}")


def _load_hub(
    hub_id: str,
    spec: DatasetSpec | None,
    source: str,
    phrase: Phraser | None,
    params: dict[str, str] | None = None,
    columns: dict[str, str] | None = None,
) -> Loaded:
    """Load from the Hub with ``datasets.load_dataset`` (only reached when online)."""
    import datasets  # imported lazily: heavy, and only this path needs it

    kwargs: dict[str, Any] = {"split": spec.hub_split if spec else "train"}
    if spec and spec.hub_config:
        kwargs["name"] = spec.hub_config
    if spec and spec.hub_data_files:
        kwargs["data_files"] = spec.hub_data_files
    kwargs.update(params or {})
    log.info("loading %s from the Hugging Face Hub (%s, %s)", source, hub_id, kwargs)
    try:
        ds = datasets.load_dataset(hub_id, **kwargs)
    except Exception as exc:  # network, auth (gated sets such as GAIR/lima), missing files
        raise _hub_error(hub_id, spec, exc) from None
    where = hub_id + "".join(f" {k}={v}" for k, v in (params or {}).items())
    raws = [(dict(row), f"{where}: row {i}") for i, row in enumerate(ds, start=1)]
    exclude = spec.exclude if spec else None
    records, locations = _normalise_all(raws, source, phrase, source, columns, exclude)
    origin = f"hub:{hub_id}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    return _with_exclusions(Loaded(records, locations, origin), spec, len(raws))


def _with_exclusions(loaded: Loaded, spec: DatasetSpec | None, rows: int) -> Loaded:
    """``loaded`` with the rows its spec's ``exclude`` left out counted and named in its origin (``data stats``
    and ``data_stats.json`` show it)."""
    if spec is None or not spec.exclude:
        return loaded
    loaded.excluded = rows - len(loaded.records)
    what = ", ".join(f"{key} {'/'.join(values)}" for key, values in spec.exclude.items())
    loaded.origin += f" (without {what}: {loaded.excluded} of {rows} rows)"
    return loaded


def _local_copy_hint(spec: DatasetSpec | None, data_dir: Path | None) -> str:
    if spec is None or spec.local_path is None:
        return "To use a local copy, pass the path of a .json/.jsonl file instead."
    where = f"{data_dir}/{spec.local_path}" if data_dir else f"<data dir>/{spec.local_path}"
    up = f" (original file: {spec.upstream})" if spec.upstream else ""
    if spec.url:
        return (
            f"Download it with `im-pipeline data fetch {spec.name}` (from a mirror: add --mirror URL), or save a "
            f"copy as {where}{up} and pass --data-dir (or set ${DATA_DIR_ENV})."
        )
    return (
        f"To provide a local copy, save it as {where}{up} and pass --data-dir (or set ${DATA_DIR_ENV}), "
        "or pass the file path itself instead of the name."
    )


def _load_registered(
    spec: DatasetSpec, data_dir: str | Path | None, phrase: Phraser | None, columns: dict[str, str] | None
) -> Loaded:
    ddir = data_dir_of(data_dir, must_exist=DataError)  # only a registered name reads the data directory
    local = local_copy(spec, ddir)
    if local is not None:
        raws = read_raw_file(local)
        records, locations = _normalise_all(raws, spec.name, phrase, spec.name, columns, spec.exclude)
        return _with_exclusions(Loaded(records, locations, origin=str(local)), spec, len(raws))
    if spec.hub_id and hub.hub_reachable(variables=hub.DATASETS):
        return _load_hub(spec.hub_id, spec, spec.name, phrase, columns=columns)
    where = f"{ddir / spec.local_path} does not exist" if ddir and spec.local_path else "no data directory set"
    why = f"{where} (nor is it in {data_cache_dir()})" if spec.local_path else where
    on_hub = (
        f"it is on the Hugging Face Hub as {spec.hub_id!r}, but the Hub is " + hub.offline_state(hub.DATASETS)
        if spec.hub_id
        else "it has no Hub copy"
    )
    raise DataError(f"dataset {spec.name!r} is not available: {why}; {on_hub}. {_local_copy_hint(spec, ddir)}")


def load_source(
    source: str,
    data_dir: str | Path | None = None,
    *,
    multi_turn: bool = True,
    instruction_templates: bool = False,
    seed: int = 0,
    columns: dict[str, str] | None = None,
) -> Loaded:
    """Like :func:`load_records`, but also returns where each record came from."""
    from im_pipeline.data.phrasings import make_phraser

    phrase = make_phraser(seed) if instruction_templates else None
    spec = REGISTRY.get(source)
    if spec is not None:
        loaded = _load_registered(spec, data_dir, phrase, columns)
        single_only = spec.single_turn_only or not multi_turn
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
        name = path.name.split(".")[0]
        records, locations = _normalise_all(read_raw_file(path), name, phrase, name, columns)
        loaded = Loaded(records, locations, origin=str(path))
        single_only = not multi_turn
    elif (on_hub := hub_source(source)) is not None:
        if not hub.hub_reachable(variables=hub.DATASETS):
            state = hub.offline_state(hub.DATASETS)
            raise DataError(
                f"{source!r} is not a registered dataset or a local file, and the Hugging Face Hub is {state}. "
                f"Pass the path of a local copy instead ({', '.join(SUFFIXES)})."
            )
        hub_id, params = on_hub
        loaded = _load_hub(hub_id, None, hub_id.split("/")[-1], phrase, params, columns)
        single_only = not multi_turn
    else:
        names = ", ".join(REGISTRY)
        raise DataError(
            f"unknown dataset {source!r}: not a registered name ({names}), a file ({', '.join(SUFFIXES)}), or a Hub "
            "id (owner/name, optionally ?split=...&name=...&revision=...)"
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
    columns: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Load and normalise a dataset: a registered name, a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``),
    or a Hub id (``owner/name``, optionally ``?split=...&name=...&revision=...&data_files=...``).

    ``columns`` maps our field names to the file's (``{"instruction": "question"}``). ``multi_turn=False`` drops
    conversations with more than one user turn. ``instruction_templates``
    wraps each instruction in an open-instruct-style phrasing chosen by ``(seed, id)``.
    Raises :class:`DataError` (a ``ValueError``) naming the file and line/record on malformed data.
    """
    return load_source(
        source,
        data_dir,
        multi_turn=multi_turn,
        instruction_templates=instruction_templates,
        seed=seed,
        columns=columns,
    ).records
