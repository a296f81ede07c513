"""RunLayout owns every path under runs/<experiment>/; one key per unit decides its staleness."""

from __future__ import annotations

from pathlib import Path

from im_pipeline.runs.layout import BASE_ARM, RunLayout, lock_beside, seed_of
from im_pipeline.runs.staleness import clear_stale_run, is_done, write_stamp


def test_layout_paths(tmp_path: Path) -> None:
    run = RunLayout(tmp_path / "exp")
    unit = run.unit("IM", 2)
    assert unit.dir == tmp_path / "exp" / "IM" / "seed-2" and (unit.arm, unit.seed) == ("IM", 2)
    assert unit.checkpoint == unit.dir / "checkpoint"
    assert unit.eval_result("mmlu") == unit.dir / "eval" / "mmlu.json"
    assert unit.lock == tmp_path / "exp" / "IM" / ".seed-2.lock"
    assert unit.eval_lock("mmlu") == unit.dir / "eval" / ".mmlu.lock"
    assert unit.flow_record == tmp_path / "exp" / "IM" / ".seed-2.unit.json"
    assert unit.flow_lock == tmp_path / "exp" / "IM" / ".seed-2.unit.lock"
    base = run.unit(BASE_ARM)
    assert base.dir == tmp_path / "exp" / "base" and base.seed is None and base.is_base
    assert run.data_lock == tmp_path / "exp" / ".data.lock" == lock_beside(run.data)
    assert (run.train_data.name, run.held_out_data.name, run.data_stats.name) == (
        "train.jsonl",
        "held_out.jsonl",
        "data_stats.json",
    )


def test_trained_units_in_name_order_skipping_reserved_and_odd_dirs(tmp_path: Path) -> None:
    run = RunLayout(tmp_path)
    for d in ("IT/seed-0", "IT/seed-10", "IT/seed-2", "IM/seed-1", "IM/seed-x", "base/eval", "data"):
        (tmp_path / d).mkdir(parents=True)
    assert [(u.arm, u.seed) for u in run.trained_units()] == [("IM", 1), ("IT", 0), ("IT", 10), ("IT", 2)]
    assert seed_of("seed-7") == 7 and seed_of("seed-") is None and seed_of("base") is None


def test_stamps_decide_done_and_stale(tmp_path: Path) -> None:
    unit = RunLayout(tmp_path).unit("IT", 0)
    assert not is_done(unit.train_summary, unit.dir, "train", "k1")
    unit.dir.mkdir(parents=True)
    unit.train_summary.write_text("{}")
    assert not is_done(unit.train_summary, unit.dir, "train", "k1")  # no stamp: not made under this key
    write_stamp(unit.dir, "train", "k1")
    assert is_done(unit.train_summary, unit.dir, "train", "k1")
    assert not is_done(unit.train_summary, unit.dir, "train", "k2")
    write_stamp(unit.dir, "train-started", "k1")
    assert clear_stale_run(unit.dir, "k1") is False and unit.dir.is_dir()  # same key: resume
    assert clear_stale_run(unit.dir, "k2") is True and not unit.dir.exists()  # another key: removed


def test_one_staleness_decision_save_steps_keeps_the_run(tmp_path: Path) -> None:
    """The unit key (the only one: the trainer receives it) leaves out what does not change the model: a new
    save_steps (or logging_steps, threads, loggers) neither retrains nor discards checkpoints; a new learning rate
    makes the unit stale."""
    from im_pipeline.config import config_from_dict
    from im_pipeline.runs.staleness import train_key, training_identity

    base = {"name": "x", "model": {"source": "m", "cache_dir": "/a"}}
    a = config_from_dict(base)

    def key(cfg):
        return train_key(cfg, cfg.arms[0], 0, "h")

    same = [
        {"training": {"save_steps": 7, "logging_steps": 3, "threads": 1, "report_to": []}},
        {"model": {"source": "m", "cache_dir": "/elsewhere"}},
    ]
    for change in same:
        assert key(config_from_dict({**base, **change})) == key(a), change
    other = config_from_dict({**base, "training": {"learning_rate": 1e-3}})
    assert key(other) != key(a)
    assert "save_steps" not in training_identity(a) and "learning_rate" in training_identity(a)
