"""Turn a :class:`~im_pipeline.config.DataConfig` into the training and held-out sets of an experiment.

Steps, each recorded in ``PreparedData.report``:

1. load + normalise the training source (``multi_turn``, ``instruction_templates`` with the seed);
2. ``on_duplicate_id`` policy (``drop``: keep the first occurrence; ``error``: :class:`DataError` naming both places);
3. ``on_empty`` policy for empty instructions or outputs (``drop`` or ``error``);
4. held-out set: another data set (same policies; a seeded sample of ``held_out_size`` examples, 0 = all;
   nothing is removed from training, examples present in both are counted) or ``held_out_size`` examples
   split off the training source by a seeded hash; ``held_out_kind`` records which;
5. ``select_ratio`` (the n examples with ratio closest to α) or ``n`` (seeded, order-independent subsample);
6. Table-5 statistics of what is actually used, plus word-count maxima. The over-length policy
   (``on_overlength``) needs a tokenizer and is applied in training.

With ``per_seed`` the prepared training set is the cleaned (``ratio_range``-filtered) pool: every seed draws its own
training sample, its test sample or, beside a fixed ``held_out`` set, its ``in_domain_size`` in-domain test sample
from it (:func:`seed_data`, :func:`in_domain_data`).

Nothing is written unless everything succeeded: with ``out_dir`` the files are written at the end,
each atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from im_pipeline.config import DataConfig
from im_pipeline.data.normalise import DataError
from im_pipeline.data.select import select_by_ratio, split_held_out, subsample
from im_pipeline.data.sources import Loaded, load_source
from im_pipeline.data.stats import length_stats
from im_pipeline.provenance import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The examples an experiment trains and measures held-out loss on, and what was done to get them."""

    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


def _apply_policies(loaded: Loaded, cfg: DataConfig, label: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    actions: dict[str, Any] = {"dropped_duplicate_id": [], "dropped_empty": []}
    seen: dict[str, str] = {}
    kept: list[tuple[dict[str, Any], str]] = []
    for rec, where in zip(loaded.records, loaded.locations, strict=True):
        if rec["id"] in seen:
            if cfg.on_duplicate_id == "error":
                raise DataError(
                    f"{where}: duplicate id {rec['id']!r} (first seen at {seen[rec['id']]}); "
                    "policy data.on_duplicate_id=error (use 'drop' to keep the first occurrence)"
                )
            actions["dropped_duplicate_id"].append(rec["id"])
            continue
        seen[rec["id"]] = where
        kept.append((rec, where))
    out = []
    for rec, where in kept:
        empty = [m["role"] for m in rec["messages"] if m["role"] != "system" and not m["content"].strip()]
        if empty:
            what = "instruction" if empty[0] == "user" else "output"
            if cfg.on_empty == "error":
                raise DataError(
                    f"{where}: example {rec['id']!r} has an empty {what}; "
                    "policy data.on_empty=error (use 'drop' to skip such examples)"
                )
            actions["dropped_empty"].append(rec["id"])
            continue
        out.append(rec)
    for key in ("dropped_duplicate_id", "dropped_empty"):
        if actions[key]:
            log.warning("%s: %s %d examples (%s)", label, key.replace("_", " "), len(actions[key]), actions[key][:5])
    actions["dropped_multi_turn"] = loaded.dropped_multi_turn
    actions["loaded"] = len(loaded.records) + loaded.dropped_multi_turn
    actions["kept"] = len(out)
    actions["origin"] = loaded.origin
    return out, actions


def _content_key(rec: dict[str, Any]) -> str:
    return json.dumps([(m["role"], m["content"].strip()) for m in rec["messages"]], ensure_ascii=False)


def prepare_data(
    cfg: DataConfig, data_dir: Path | str | None, seed: int, *, out_dir: Path | str | None = None
) -> PreparedData:
    """Load, clean, split and subsample the data of an experiment (see the module docstring).

    With ``out_dir``, writes ``train.jsonl``, ``held_out.jsonl`` and ``data_stats.json`` there
    once everything has succeeded. Raises :class:`DataError` on malformed data or a policy error.
    """
    opts = {
        "multi_turn": cfg.multi_turn,
        "instruction_templates": cfg.instruction_templates,
        "seed": seed,
        "columns": cfg.columns,
    }
    train, train_actions = _apply_policies(load_source(cfg.train, data_dir, **opts), cfg, f"train ({cfg.train})")
    train = _ratio_range(cfg, train, train_actions)
    report = _report_head(cfg, seed, train_actions)
    if cfg.per_seed:
        prepared = _per_seed_pool(cfg, train, report)
        if cfg.held_out:  # one fixed test set for every seed and the base model
            _, held = _held_out(cfg, data_dir, seed, opts, prepared.train, report)
            report["held_out_kind"] = f"another data set ({cfg.held_out}), the same for every seed"
            report["stats"]["held_out"] = length_stats(held)
            prepared = PreparedData(train=prepared.train, held_out=held, report=report)
    else:
        train, held_out = _held_out(cfg, data_dir, seed, opts, train, report)
        train = _select(cfg, train, seed, report)
        report["stats"] = {"train": length_stats(train), "held_out": length_stats(held_out)}
        prepared = PreparedData(train=train, held_out=held_out, report=report)
    if out_dir is not None:
        write_prepared(prepared, Path(out_dir))
    return prepared


def _ratio_range(cfg: DataConfig, train: list[dict[str, Any]], actions: dict[str, Any]) -> list[dict[str, Any]]:
    """``data.ratio_range``: keep the examples whose own instruction/output word ratio is in [low, high]."""
    if cfg.ratio_range is None:
        return train
    from im_pipeline.data.stats import example_ratio

    low, high = cfg.ratio_range
    kept = [r for r in train if low <= example_ratio(r) and (high is None or example_ratio(r) <= high)]
    actions["ratio_range"] = {"low": low, "high": high, "kept": len(kept), "dropped": len(train) - len(kept)}
    if not kept:
        raise DataError(f"data.ratio_range {[low, high]}: no example of {cfg.train!r} has a ratio in range")
    return kept


def _report_head(cfg: DataConfig, seed: int, train_actions: dict[str, Any]) -> dict[str, Any]:
    """``data_stats.json``'s first part: the sources, the seed, the policies and what they did to the training set."""
    return {
        "train_source": cfg.train,
        "held_out_source": cfg.held_out or f"split from {cfg.train}",
        "seed": seed,
        "policies": {
            "on_empty": cfg.on_empty,
            "on_duplicate_id": cfg.on_duplicate_id,
            "on_overlength": f"{cfg.on_overlength} (applied at tokenisation, max_length={cfg.max_length})",
            "multi_turn": cfg.multi_turn,
            "instruction_templates": cfg.instruction_templates,
        },
        "actions": {"train": train_actions},
    }


def _per_seed_pool(cfg: DataConfig, train: list[dict[str, Any]], report: dict[str, Any]) -> PreparedData:
    """``data.per_seed``: the cleaned pool, from which every seed draws its own training and test samples when it
    trains (:func:`seed_data`)."""
    report["held_out_kind"] = f"per-seed sample of {cfg.train}, disjoint from that seed's training sample"
    report["selection"] = {
        "available": len(train),
        "method": "per seed",
        "n": cfg.n,
        "test_n": cfg.held_out_size,
        "selected": len(train),
    }
    # A fixed held_out set takes nothing from the pool; the in-domain samples (data.in_domain_size) do.
    test_n = cfg.in_domain_size if cfg.held_out else cfg.held_out_size
    if cfg.in_domain_size:
        report["selection"]["in_domain_n"] = cfg.in_domain_size
    if cfg.n is not None and cfg.n + test_n > len(train):
        what = "in-domain test (data.in_domain_size)" if cfg.held_out else "test (data.held_out_size)"
        raise DataError(
            f"data.per_seed: {cfg.n} training + {test_n} {what} examples per seed need {cfg.n + test_n}, but only "
            f"{len(train)} examples are left in {cfg.train!r}" + (" after data.ratio_range" if cfg.ratio_range else "")
        )
    report["stats"] = {"train": length_stats(train)}  # the pool; the samples are drawn per seed
    return PreparedData(train=train, held_out=[], report=report)


def _held_out(
    cfg: DataConfig,
    data_dir: Path | str | None,
    seed: int,
    opts: dict[str, Any],
    train: list[dict[str, Any]],
    report: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, held-out): another data set as the test set, or a seeded split off the training set."""
    if not cfg.held_out:
        train, held_out = split_held_out(train, cfg.held_out_size, seed)
        report["actions"]["held_out_split"] = len(held_out)
        report["held_out_kind"] = "in-distribution split"
        return train, held_out
    # Another data set as the test set (the paper's protocol: a Tulu V2 sample for LIMA-trained models). The
    # training set stays whole; examples that also occur in the training set are only counted.
    held_loaded = load_source(cfg.held_out, data_dir, **opts)
    held_out, held_actions = _apply_policies(held_loaded, cfg, f"held_out ({cfg.held_out})")
    if cfg.held_out_size and len(held_out) > cfg.held_out_size:
        held_out = subsample(held_out, cfg.held_out_size, seed)
        held_actions["sampled"] = len(held_out)
    train_keys = {_content_key(r) for r in train}
    report["actions"]["held_out"] = held_actions
    report["actions"]["held_out_also_in_train"] = sum(_content_key(r) in train_keys for r in held_out)
    report["held_out_kind"] = "another data set"
    return train, held_out


def _select(cfg: DataConfig, train: list[dict[str, Any]], seed: int, report: dict[str, Any]) -> list[dict[str, Any]]:
    """``select_ratio`` (the n examples with ratio closest to α), ``n`` (seeded subsample) or all; recorded."""
    available = len(train)
    selection: dict[str, Any] = {"available": available}
    if cfg.select_ratio is not None:
        k = cfg.n or available
        train = select_by_ratio(train, cfg.select_ratio, min(k, available), seed=seed)
        selection.update(method="ratio", alpha=cfg.select_ratio, k=k)
    elif cfg.n is not None:
        train = subsample(train, cfg.n, seed)
        selection.update(method="subsample", n=cfg.n)
    else:
        selection["method"] = "all"
    if cfg.n is not None and cfg.n > available:
        selection["warning"] = f"asked for n={cfg.n} but only {available} examples are available; using all"
        log.warning(selection["warning"])
    selection["selected"] = len(train)
    report["selection"] = selection
    if not train:
        raise DataError(f"no training examples left from {cfg.train!r} after the policies: {report['actions']}")
    return train


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    """Write ``train.jsonl``, ``held_out.jsonl`` and, last, ``data_stats.json`` (the file that marks the stage done).

    All three are serialised and encoded first (bad text fails here, before anything is written), then each is
    written atomically (a unique temporary file + rename): no reader or concurrent writer ever sees a partial file.
    """

    def jsonl(records: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8")

    files = {
        "train.jsonl": jsonl(prepared.train),
        "held_out.jsonl": jsonl(prepared.held_out),
        "data_stats.json": json.dumps(prepared.report, indent=2, ensure_ascii=False).encode("utf-8"),
    }
    for name, payload in files.items():
        write_text_atomic(out_dir / name, payload)


def seed_data(cfg: DataConfig, data_out: Path | str, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training, test) records of one seed from the prepared ``data_out``: the prepared files as they are, or with
    ``data.per_seed`` this seed's own training sample and its disjoint test sample (:func:`seed_sample`)."""
    from im_pipeline.data.files import read_jsonl
    from im_pipeline.data.select import seed_sample

    data_out = Path(data_out)
    train = read_jsonl(data_out / "train.jsonl")
    if not cfg.per_seed:
        return train, read_jsonl(data_out / "held_out.jsonl")
    if cfg.held_out:  # the seed's own training sample (the first n of its ranking), the one fixed test set
        return seed_sample(train, int(cfg.n or 0), 0, seed)[0], read_jsonl(data_out / "held_out.jsonl")
    return seed_sample(train, int(cfg.n or 0), cfg.held_out_size, seed)


def in_domain_data(cfg: DataConfig, data_out: Path | str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The in-domain test records of ``seeds`` (``data.in_domain_size`` > 0, with ``per_seed`` and a fixed
    ``held_out``): each seed's sample drawn beside its training sample (:func:`seed_sample`, disjoint from it), their
    union in seed order with each id once (one seed: a trained unit; every seed: the base model). [] without."""
    from im_pipeline.data.files import read_jsonl
    from im_pipeline.data.select import seed_sample

    if not (cfg.in_domain_size and cfg.per_seed and cfg.held_out):
        return []
    pool = read_jsonl(Path(data_out) / "train.jsonl")
    union: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        for rec in seed_sample(pool, int(cfg.n or 0), cfg.in_domain_size, seed)[1]:
            union.setdefault(rec["id"], rec)
    return list(union.values())


def local_copy_missing(cfg: DataConfig, data_dir: Path | None) -> bool:
    """True when the training or test set is a registered dataset whose local copy is neither in ``data_dir`` nor in
    the per-user data cache."""
    from im_pipeline.data.sources import REGISTRY, local_copy

    for source in (cfg.train, cfg.held_out):
        spec = REGISTRY.get(source) if source else None
        if spec is not None and local_copy(spec, data_dir) is None:
            return True
    return False


def held_out_kind(cfg: DataConfig) -> str:
    """What the overfitting analysis's test set is, in words (the report says it)."""
    if cfg.per_seed and cfg.held_out:
        return f"another data set ({cfg.held_out}), the same for every seed"
    if cfg.per_seed:
        return f"per-seed sample of {cfg.train}, disjoint from that seed's training sample"
    if cfg.held_out:
        return f"another data set ({cfg.held_out})"
    return f"in-distribution split of {cfg.train}"
