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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from im_pipeline import hub
from im_pipeline.config import DATA_DIR_ENV
from im_pipeline.config.base import data_dir_of
from im_pipeline.data.files import read_raw_file
from im_pipeline.data.normalise import DataError, Phraser, is_multi_turn, normalise_record

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


# -- files ------------------------------------------------------------------------------------------


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
        ddir = data_dir_of(
            data_dir, must_exist=DataError
        )  # only a registered name reads the data directory (checked here)
        local = ddir / spec.local_path if ddir and spec.local_path else None
        if local is not None and local.is_file():
            records, locations = _normalise_all(read_raw_file(local), spec.name, phrase, spec.name)
            loaded = Loaded(records, locations, origin=str(local))
        elif spec.hub_id and hub.hub_reachable(variables=hub.DATASETS):
            loaded = _load_hub(spec.hub_id, spec, spec.name, phrase)
        else:
            why = f"{local} does not exist" if local else f"no data directory set (--data-dir or ${DATA_DIR_ENV})"
            on_hub = (
                f"it is on the Hugging Face Hub as {spec.hub_id!r}, but the Hub is " + hub.offline_state(hub.DATASETS)
                if spec.hub_id
                else "it has no Hub copy"
            )
            raise DataError(f"dataset {source!r} is not available: {why}; {on_hub}. {_local_copy_hint(spec, ddir)}")
        single_only = spec.single_turn_only or not multi_turn
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
        name = path.name.split(".")[0]
        records, locations = _normalise_all(read_raw_file(path), name, phrase, name)
        loaded = Loaded(records, locations, origin=str(path))
        single_only = not multi_turn
    elif "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        if not hub.hub_reachable(variables=hub.DATASETS):
            state = hub.offline_state(hub.DATASETS)
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
