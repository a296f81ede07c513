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


def test_workers_and_the_cache_dir_keep_the_keys() -> None:
    """Settings of how a run executes (concurrent task runs, where models are cached) change no key."""
    from im_pipeline.config import config_from_dict
    from im_pipeline.runs.staleness import eval_key, train_key

    a = config_from_dict({"name": "x", "model": {"source": "m", "cache_dir": "/a"}})
    b = config_from_dict(
        {"name": "x", "model": {"source": "m", "cache_dir": "/b"}, "orchestration": {"max_workers": 4}}
    )
    for cfg in (a, b):
        assert cfg.settings.cache_dir.name in ("a", "b")
    ka, kb = (train_key(c, c.arms[0], 0, "h") for c in (a, b))
    assert ka == kb
    assert eval_key(a, ka, "mmlu", a.evaluation.mmlu, "h") == eval_key(b, kb, "mmlu", b.evaluation.mmlu, "h")


def test_keys_depend_on_the_loaded_config_not_the_process(tmp_path: Path, monkeypatch) -> None:
    """Settings are folded in at load: a key computed later, in a process with another environment, is the same."""
    from im_pipeline.config import config_from_dict
    from im_pipeline.runs.staleness import data_key, eval_key, train_key

    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IM_PIPELINE_TRAIN_LAUNCHER", "torchrun --nproc_per_node 2")
    cfg = config_from_dict({"name": "x"})

    def keys():
        k = train_key(cfg, cfg.arms[0], 0, "h")
        return data_key(cfg), k, eval_key(cfg, k, "mmlu", cfg.evaluation.mmlu, "h")

    before = keys()
    monkeypatch.delenv("IM_PIPELINE_DATA_DIR")
    monkeypatch.delenv("IM_PIPELINE_TRAIN_LAUNCHER")
    assert keys() == before
    plain = config_from_dict({"name": "x"})  # loaded without them: other data directory, one process
    assert data_key(plain) != before[0] and train_key(plain, plain.arms[0], 0, "h") != before[1]
    # the launcher counts through the processes it starts (the global batch); the config's own value wins
    launched = config_from_dict({"name": "x", "training": {"launcher": "torchrun --nproc_per_node 2"}})
    assert train_key(launched, launched.arms[0], 0, "h") != train_key(plain, plain.arms[0], 0, "h")


def test_rerun_marks_the_named_stages_and_benchmarks() -> None:
    import pytest

    from im_pipeline.config import config_from_dict
    from im_pipeline.runs.units import STAGES, jobs_of, rerun_stages

    assert rerun_stages(force=True) == frozenset(STAGES)
    assert rerun_stages(["train", "mmlu"]) == {"train", "mmlu"}
    with pytest.raises(ValueError, match="--rerun training: not a stage or benchmark; allowed: data, train, eval"):
        rerun_stages(["training"])
    cfg = config_from_dict({"name": "x", "evaluation": {"humaneval": {"enabled": False}}})

    def marked(rerun):
        train, evals = jobs_of(cfg, "IT", 0, "h", rerun_stages(rerun))
        return train.replace, {e.benchmark for e in evals if e.replace}

    assert marked([]) == (False, set())
    assert marked(["train"]) == (True, set())
    assert marked(["mmlu"]) == (False, {"mmlu"})
    assert marked(["eval"]) == (False, {"mmlu", "truthfulqa", "alpaca_eval", "overfitting"})
    keys = [e.key for e in jobs_of(cfg, "IT", 0, "h")[1]]
    assert [e.key for e in jobs_of(cfg, "IT", 0, "h", rerun_stages(force=True))[1]] == keys  # same keys


def test_replace_prepares_again_and_clears_a_run_with_the_same_key(tmp_path: Path) -> None:
    import json

    from im_pipeline.config import config_from_dict
    from im_pipeline.runs.staleness import data_key
    from im_pipeline.runs.units import prepare_unit

    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict(
        {"name": "x", "output_dir": str(tmp_path / "runs"), "data": {"train": str(data), "held_out_size": 2}}
    )
    key = data_key(cfg)
    first = prepare_unit(cfg, key)
    assert first[0] is True
    assert prepare_unit(cfg, key) == (False, first[1])  # done under its key
    assert prepare_unit(cfg, key, replace=True) == (True, first[1])  # replaced on purpose: the same content
    unit = RunLayout(tmp_path / "u").unit("IT", 0)
    unit.dir.mkdir(parents=True)
    write_stamp(unit.dir, "train-started", "k1")
    assert clear_stale_run(unit.dir, "k1", replace=True) is True and not unit.dir.exists()


def test_a_code_version_recomputes_only_its_stage(monkeypatch) -> None:
    """Raising a stage's code version changes that stage's keys only; at 0 the keys are those of earlier runs."""
    from im_pipeline.config import config_from_dict, stable_hash
    from im_pipeline.runs import staleness
    from im_pipeline.runs.staleness import CODE_VERSIONS, data_key, eval_key, train_key

    monkeypatch.delenv("IM_PIPELINE_DATA_DIR", raising=False)
    cfg = config_from_dict({"name": "x", "model": {"source": "m"}})

    def keys():
        k = train_key(cfg, cfg.arms[0], 0, "h")
        ev = {b: eval_key(cfg, k, b, getattr(cfg.evaluation, b), "h") for b in ("mmlu", "humaneval")}
        return data_key(cfg), k, ev

    before = keys()
    # version 0 adds nothing: the data key is the hash of exactly its parts, as before code versions existed
    assert before[0] == stable_hash(
        {"stage": "data", "data": cfg.data.model_dump(mode="json"), "data_dir": None, "seed": staleness.DATA_SEED}
    )
    monkeypatch.setitem(CODE_VERSIONS, "humaneval", 1)
    after = keys()
    assert after[:2] == before[:2] and after[2]["mmlu"] == before[2]["mmlu"]
    assert after[2]["humaneval"] != before[2]["humaneval"]
    monkeypatch.setitem(CODE_VERSIONS, "train", 1)
    assert data_key(cfg) == before[0] and train_key(cfg, cfg.arms[0], 0, "h") != before[1]
