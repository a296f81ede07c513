"""Where training data come from: a registered name, a local file, or a Hugging Face Hub id.

Registered datasets have a Hub id (used when online), a path relative to the offline data directory (``--data-dir``
/ config ``data_dir`` / ``$IM_PIPELINE_DATA_DIR``) and, where that copy has a public origin, its URL and sha256
(``im-pipeline data fetch``). A local copy, in the data directory or else in the per-user data cache, always wins,
so air-gapped machines never touch the network; a dataset that is neither local nor reachable fails with a
:class:`DataError` that says how to provide it. Files and shapes: :mod:`im_pipeline.data.files`,
:mod:`im_pipeline.data.normalise`; every problem is one :class:`DataError` naming the file and the line or row.
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
    url: str | None = None  # public origin of the local copy's exact bytes (``im-pipeline data fetch``)
    sha256: str | None = None  # of the local copy: a fetched file must match it


def _raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_PAPER_DATA = "GitHub ZhengxiangShi/InstructionModelling @ 325b77e, data"
_PAPER = ("ZhengxiangShi/InstructionModelling", "325b77e256d44e6280ba123a8781b26ef85ec362")
_LIMA = _raw("hiyouga/LLaMA-Factory", "b9cdff41bbb6084380606cde6c875c994b6b1868", "data/lima.json")
_LIMA_SHA = "1d447bd5d4750e651a6e28660e452c24d18d18e10e1d334b3c8277c2aa956322"
_ALPAGASUS = ("gpt4life/alpagasus", "95ad3e52510df8c0a2f0dd6cbe50b501acde83a1")

REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "lima",
            "LIMA, all conversations (1,000 single-turn + multi-turn; the paper's 1,030; local copy 1,029)",
            "lima/lima.json",
            hub_id="GAIR/lima",
            upstream="hiyouga/LLaMA-Factory data/lima.json @ b9cdff4 (Alpaca style with history)",
            url=_LIMA,
            sha256=_LIMA_SHA,
        ),
        DatasetSpec(
            "lima_full",
            "alias of 'lima': all LIMA conversations including the multi-turn ones",
            "lima/lima.json",
            hub_id="GAIR/lima",
            url=_LIMA,
            sha256=_LIMA_SHA,
        ),
        DatasetSpec(
            "lima_1k",
            "LIMA single-turn subset (1,000 conversations)",
            "lima/lima.json",
            hub_id="GAIR/lima",
            single_turn_only=True,
            url=_LIMA,
            sha256=_LIMA_SHA,
        ),
        DatasetSpec(
            "dolly_3k",
            "AlpaGasus Dolly 3k (ChatGPT-filtered databricks-dolly-15k)",
            "alpagasus/dolly_3k.json",
            upstream="gpt4life/alpagasus data/filtered/dolly_3k.json",
            url=_raw(*_ALPAGASUS, "data/filtered/dolly_3k.json"),
            sha256="cb8d16e85ec217a53587c96596a1e8971b8d72a2fd9d5bc23a2dd3d57b59eeea",
        ),
        DatasetSpec(
            "alpaca_5k",
            "AlpaGasus Alpaca 5k: Alpaca 52k filtered by Claude, threshold 4.5 (claude_t45)",
            "alpagasus/claude_t45.json",
            upstream="gpt4life/alpagasus data/filtered/claude_t45.json",
            url=_raw(*_ALPAGASUS, "data/filtered/claude_t45.json"),
            sha256="726de12839a57201915867a0cdaec5010619915d8668fa57ff5fa9efa6e893f3",
        ),
        DatasetSpec(
            "alpaca_random_9k",
            "9k random Alpaca examples (AlpaGasus random baseline)",
            "alpagasus/random_9k.json",
            upstream="gpt4life/alpagasus data/random/random_9k.json",
            url=_raw(*_ALPAGASUS, "data/random/random_9k.json"),
            sha256="dbb217523fb750e4c56013844e22f5f3363c8c8b01013df5b39e8cabec0e48b0",
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
        # numbers exactly. No Hub copy: `im-pipeline data fetch` downloads them from the repository at that commit.
        DatasetSpec(
            "paper_lima",
            "LIMA as the paper trained on it (1,030 conversations incl. multi-turn; released lima_data.jsonl)",
            "paper_processed/lima_data.jsonl",
            upstream=f"{_PAPER_DATA}/lima_data.jsonl",
            url=_raw(*_PAPER, "data/lima_data.jsonl"),
            sha256="c15ce7cacc2696192727351f4392dc059608dc5a96d69bb69f8ca461725c15b1",
        ),
        DatasetSpec(
            "paper_dolly_3k",
            "AlpaGasus Dolly 3k as the paper trained on it (2,996; instruction phrasings applied)",
            "paper_processed/alpagasus_3k_dolly.jsonl",
            upstream=f"{_PAPER_DATA}/alpagasus_3k_dolly.jsonl",
            url=_raw(*_PAPER, "data/alpagasus_3k_dolly.jsonl"),
            sha256="28b89ba107e6776179515990d12a231b1a209ee360e21f365341033d8fad9f23",
        ),
        DatasetSpec(
            "paper_alpaca_5k",
            "AlpaGasus Alpaca 5k (claude_t45) as the paper trained on it (5,305; instruction phrasings applied)",
            "paper_processed/alpagasus_claude_t45_alpaca.jsonl",
            upstream=f"{_PAPER_DATA}/alpagasus_claude_t45_alpaca.jsonl",
            url=_raw(*_PAPER, "data/alpagasus_claude_t45_alpaca.jsonl"),
            sha256="7faffd3ac3a580402ddca3dd824616d5d5c81cdc782de330c6b0a3e6d95936fe",
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
) -> tuple[list[dict[str, Any]], list[str]]:
    width = max(5, len(str(len(raws))))
    records, locations = [], []
    for i, (raw, where) in enumerate(raws):
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
    records, locations = _normalise_all(raws, source, phrase, source, columns)
    return Loaded(records, locations, origin=f"hub:{hub_id}" + (f"?{urllib.parse.urlencode(params)}" if params else ""))


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
        records, locations = _normalise_all(read_raw_file(local), spec.name, phrase, spec.name, columns)
        return Loaded(records, locations, origin=str(local))
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
