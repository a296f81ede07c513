"""Subsampling, ratio-targeted selection and the held-out split.

All choices rank examples by a hash of ``(purpose, seed, example id)``. The selected *set* therefore
depends only on the seed and the ids, never on the order of the input file, and the returned order
is the hash order (deterministic too). Ids must be unique (see the ``on_duplicate_id`` policy).
"""

from __future__ import annotations

import hashlib
from typing import Any

from im_pipeline.data.normalise import DataError
from im_pipeline.data.stats import example_ratio


def stable_key(seed: int, example_id: str, purpose: str = "subsample") -> int:
    """A 64-bit rank for an example, a function of (purpose, seed, id) only."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def subsample(records: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """The ``n`` examples with the smallest ``stable_key(seed, id)`` (all of them if there are fewer)."""
    if n < 0:
        raise DataError(f"subsample size must be >= 0, got {n}")
    ranked = sorted(records, key=lambda r: stable_key(seed, r["id"]))
    return ranked[:n]


def select_by_ratio(
    records: list[dict[str, Any]], alpha: float, k: int, *, seed: int = 0, role_markers: bool = True
) -> list[dict[str, Any]]:
    """The ``k`` examples whose instruction/output word ratio is closest to ``alpha``.

    Same idea as the paper's ``select_data.py`` (sort by ``|ratio - alpha|``, take the first k); the
    paper breaks ties by a random shuffle, here ties are broken by ``stable_key`` so that the result
    is reproducible and independent of input order. Ratios use :func:`im_pipeline.data.stats.example_ratio`.
    """
    if alpha <= 0:
        raise DataError(f"select_ratio (alpha) must be > 0, got {alpha}")
    scored = sorted(
        records,
        key=lambda r: (abs(example_ratio(r, role_markers=role_markers) - alpha), stable_key(seed, r["id"], "ratio")),
    )
    return scored[:k]


def split_held_out(
    records: list[dict[str, Any]], size: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``size`` examples off for held-out loss: returns ``(train, held_out)``.

    Uses its own hash salt, so the held-out set does not depend on later subsampling; training
    examples keep their input order.
    """
    if size < 0:
        raise DataError(f"held_out_size must be >= 0, got {size}")
    if size and size >= len(records):
        raise DataError(f"held_out_size {size} leaves no training examples (only {len(records)} available)")
    held_ids = {r["id"] for r in sorted(records, key=lambda r: stable_key(seed, r["id"], "held_out"))[:size]}
    train = [r for r in records if r["id"] not in held_ids]
    held = sorted((r for r in records if r["id"] in held_ids), key=lambda r: stable_key(seed, r["id"], "held_out"))
    return train, held


def seed_sample(
    records: list[dict[str, Any]], n: int, test_n: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seed ``seed``'s own training sample (``n`` examples) and a disjoint test sample (``test_n``) of ``records``.

    One ranking by ``stable_key(seed, id, "per_seed")``: the first ``n`` train, the next ``test_n`` test, so the two
    never share an example (ids are unique) and each seed gets another pair of samples from the same source.
    ``test_n`` 0: no test sample (the seeds share a fixed ``data.held_out`` set).
    """
    if n < 1 or test_n < 0:
        raise DataError(f"per-seed samples need n >= 1 and held_out_size >= 0, got {n} and {test_n}")
    if n + test_n > len(records):
        raise DataError(
            f"per-seed samples of {n} training + {test_n} test examples need {n + test_n} examples; "
            f"only {len(records)} are available"
        )
    ranked = sorted(records, key=lambda r: stable_key(seed, r["id"], "per_seed"))
    return ranked[:n], ranked[n : n + test_n]
