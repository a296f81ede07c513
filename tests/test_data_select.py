"""Seeded, order-independent subsampling; ratio-targeted selection; held-out split."""

from __future__ import annotations

import random

import pytest

from im_pipeline.data import DataError, select_by_ratio, split_held_out, subsample
from im_pipeline.data.stats import example_ratio


def _rec(i: int, n_instr: int, n_out: int) -> dict:
    return {
        "id": f"r{i}",
        "source": "t",
        "messages": [
            {"role": "user", "content": " ".join(["w"] * n_instr)},
            {"role": "assistant", "content": " ".join(["w"] * n_out)},
        ],
    }


RECS = [_rec(i, 1 + i % 7, 1 + (i * 3) % 11) for i in range(200)]


def _ids(recs: list[dict]) -> list[str]:
    return [r["id"] for r in recs]


def test_subsample_is_stable_under_reordering() -> None:
    shuffled = RECS[:]
    random.Random(1).shuffle(shuffled)
    a, b = subsample(RECS, 50, seed=3), subsample(shuffled, 50, seed=3)
    assert _ids(a) == _ids(b) and len(set(_ids(a))) == 50
    assert set(_ids(subsample(RECS, 50, seed=4))) != set(_ids(a))
    # Nested: a larger sample contains the smaller one (same seed).
    assert set(_ids(a)) <= set(_ids(subsample(RECS, 80, seed=3)))
    assert len(subsample(RECS, 500, seed=0)) == 200
    with pytest.raises(DataError):
        subsample(RECS, -1, 0)


def test_select_by_ratio_takes_closest() -> None:
    alpha = 1.0
    chosen = select_by_ratio(RECS, alpha, 30)
    worst_chosen = max(abs(example_ratio(r) - alpha) for r in chosen)
    rest = [r for r in RECS if r["id"] not in set(_ids(chosen))]
    assert min(abs(example_ratio(r) - alpha) for r in rest) >= worst_chosen
    shuffled = RECS[::-1]
    assert _ids(select_by_ratio(shuffled, alpha, 30)) == _ids(chosen)
    with pytest.raises(DataError):
        select_by_ratio(RECS, 0.0, 3)


def test_held_out_split_disjoint_and_stable() -> None:
    train, held = split_held_out(RECS, 20, seed=0)
    assert len(held) == 20 and len(train) == 180
    assert not set(_ids(train)) & set(_ids(held))
    assert _ids(train) == [r["id"] for r in RECS if r["id"] not in set(_ids(held))]  # input order kept
    _, held2 = split_held_out(RECS[::-1], 20, seed=0)
    assert _ids(held2) == _ids(held)
    assert split_held_out(RECS, 0, 0) == (RECS, [])
    with pytest.raises(DataError, match="leaves no training"):
        split_held_out(RECS, 200, 0)
