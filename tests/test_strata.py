"""Strata (issue 23): one experiment as several run roots (runs/<exp>/<stratum>), validated, expanded, run in one
flow run, and reported in one REPORT.md that the committed results rebuild byte for byte."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest

from im_pipeline.config import ConfigError, config_from_dict, load_config
from im_pipeline.config.base import stable_hash
from im_pipeline.runs.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]


WORDS = [
    "the",
    "model",
    "reads",
    "every",
    "word",
    "of",
    "this",
    "long",
    "and",
    "careful",
    "answer",
    "about",
    "foxes",
    "dogs",
    "and",
    "Paris",
]


def _records() -> list[dict[str, Any]]:
    """10 LOW examples (a two-word instruction, a long output) and 10 HIGH ones (the reverse)."""
    low = [("Say more.", " ".join(WORDS[: 12 + i % 3]) + f" {i}.") for i in range(10)]
    high = [(" ".join(WORDS[: 12 + i % 3]) + f" {i}?", "Yes.") for i in range(10)]
    return [
        {
            "id": f"{kind}-{i}",
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        }
        for kind, pairs in (("low", low), ("high", high))
        for i, (q, a) in enumerate(pairs)
    ]


def strata_config(tmp: Path, model: str = "smollm2-135m-instruct", **extra: Any) -> dict[str, Any]:
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    off = {"enabled": False}
    return {
        "name": "tiny-strata",
        "description": "Two strata of a tiny model.",
        "model": {"source": model},
        "data": {"train": str(data), "n": 3, "held_out_size": 3, "per_seed": True, "max_length": 64},
        "strata": [
            {"name": "LOW", "ratio_range": [0, 0.5], "arms": ["IT"], "description": "Long outputs."},
            {"name": "HIGH", "ratio_range": [5, None]},
        ],
        "arms": [{"name": "IT", "loss_mode": "it"}, {"name": "IM", "loss_mode": "im_release"}],
        "training": {"epochs": 1, "batch_size": 3, "learning_rate": 1e-3, "threads": 1, "report_to": []},
        "evaluation": {
            "mmlu": off,
            "truthfulqa": off,
            "alpaca_eval": off,
            "humaneval": off,
            "evaluate_base": False,
            "overfitting": {"limit": 3, "options": {"bleu": False, "loss_examples": 3}},
            "batch_size": 3,
        },
        "seeds": [0],
        "save_results": True,
        "output_dir": str(tmp / "runs"),
        "report_dir": str(tmp / "reports"),
    } | extra


# -- the config ------------------------------------------------------------------------------------------------------


def test_each_stratum_is_a_complete_run_config(tmp_path: Path) -> None:
    cfg = config_from_dict(strata_config(tmp_path, study=None))
    subs = cfg.stratum_configs()
    assert list(subs) == ["LOW", "HIGH"]
    low, high = subs["LOW"], subs["HIGH"]
    assert [a.name for a in low.arms] == ["IT"] and [a.name for a in high.arms] == ["IT", "IM"]
    assert low.data.ratio_range == (0, 0.5) and high.data.ratio_range == (5, None)
    assert low.strata is None and low.study is None and low.stratum == "LOW"
    assert low.description == "Long outputs." and low.seeds == [0] and low.data.n == 3
    assert RunLayout.of(low).root == tmp_path / "runs" / "tiny-strata" / "LOW"
    assert RunLayout.of(cfg).root == tmp_path / "runs" / "tiny-strata"
    assert low.results_dir() == tmp_path / "reports" / "tiny-strata" / "results" / "LOW"
    assert low.run_label() == "tiny-strata/LOW" and cfg.run_label() == "tiny-strata"
    assert cfg.arms_by_stratum() == {"LOW": ["IT"], "HIGH": ["IT", "IM"]}
    # a stratum's config survives its own serialisation (a work pool's unit flow run receives it as a mapping)
    assert config_from_dict(low.to_dict()).to_dict() == low.to_dict()
    assert "strata" not in low.to_dict() and cfg.to_dict()["strata"][1]["ratio_range"] == [5.0, None]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strata": [{"name": "A", "ratio_range": [0, 1]}, {"name": "A", "ratio_range": [2, 3]}]}, "repeated: ['A']"),
        ({"strata": [{"name": "A", "ratio_range": [0, 1], "arms": ["IT", "XX"]}]}, "names arm(s) ['XX']"),
        ({"strata": [{"name": "base", "ratio_range": [0, 1]}]}, "stratum name 'base' is reserved"),
        ({"strata": [{"name": "a/b", "ratio_range": [0, 1]}]}, "stratum name 'a/b' is not allowed"),
        ({"strata": [{"name": "A", "ratio_range": [2, 1]}]}, "0 <= low <= high"),
        ({"strata": []}, "at least 1 item"),
        ({"stratum": "LOW"}, "strata or stratum, not both"),
    ],
)
def test_invalid_strata_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(strata_config(tmp_path) | change)
    assert message in str(err.value)


def test_strata_need_per_seed_and_no_ratio_range_of_their_own(tmp_path: Path) -> None:
    base = strata_config(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.ratio_range must be null"):
        config_from_dict(base | {"data": base["data"] | {"ratio_range": [0, 1]}})
    with pytest.raises(ConfigError, match=r"data\.per_seed must be true"):
        config_from_dict(base | {"data": base["data"] | {"per_seed": False}})


def test_configs_without_strata_serialise_and_lay_out_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """No strata, no new keys: the hash of the resolved config (and so every key built from it) and the run root
    stay what they were (the hashes below were computed before strata existed)."""
    for var in [k for k in os.environ if k.startswith("IM_PIPELINE_")]:
        monkeypatch.delenv(var)
    pinned = ["data_dir=null", "model.cache_dir=/nowhere", "orchestration.max_workers=1"]
    for name, before in PINNED_HASHES.items():
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", pinned)
        assert "strata" not in cfg.to_dict() and "stratum" not in cfg.to_dict()
        assert cfg.stratum_configs() == {} and cfg.arms_by_stratum() == {None: [a.name for a in cfg.arms]}
        assert RunLayout.of(cfg).root == Path("runs") / cfg.name
        assert cfg.results_dir() == Path("reports") / cfg.name / "results"
        assert stable_hash(cfg.to_dict()) == before, name


PINNED_HASHES = {"study_cpu": "bca68f2e583c", "demo": "b1c8b509032d"}


def test_keys_lists_the_strata_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from im_pipeline.config import ExperimentConfig
    from im_pipeline_flows.cli.commands import config_keys

    keys = [k for k, _, _ in config_keys(ExperimentConfig)]
    assert {"strata", "strata.N.name", "strata.N.ratio_range", "strata.N.arms", "strata.N.description"} <= set(keys)


# -- the report ------------------------------------------------------------------------------------------------------


def test_demote_moves_headings_down_outside_code() -> None:
    from im_pipeline.report.strata import demote

    text = "## Results\n\ntext # not a heading\n```\n# code\n```\n### Sub\n#tag"
    assert demote(text) == "### Results\n\ntext # not a heading\n```\n# code\n```\n#### Sub\n#tag"


@pytest.mark.slow
def test_a_strata_run_reports_every_stratum_and_rebuilds_identically(
    prefect_harness, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from im_pipeline.report.build import build_report
    from im_pipeline_flows.compare import compare_flow

    study = {
        "hypotheses": [{"id": "H1", "stratum": "HIGH", "metric": "test_loss", "direction": "less", "text": "lower"}]
    }
    cfg = strata_config(tmp_path, str(tiny_model_dir), study=study)
    summary = compare_flow(cfg)
    assert summary["failed"] == []
    root, report_dir = tmp_path / "runs" / "tiny-strata", tmp_path / "reports" / "tiny-strata"
    # one run root per stratum, with its own data, arms and seeds; the experiment's config above them
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["HIGH", "LOW"]
    assert (root / "config.yaml").is_file() and "strata:" in (root / "config.yaml").read_text()
    assert sorted(p.name for p in (root / "LOW").iterdir() if p.is_dir()) == ["IT", "data"]
    assert sorted(p.name for p in (root / "HIGH").iterdir() if p.is_dir()) == ["IM", "IT", "data"]
    for stratum, prefix in (("LOW", "low-"), ("HIGH", "high-")):
        ov = json.loads((root / stratum / "IT" / "seed-0" / "eval" / "overfitting.json").read_text())
        ids = set(ov["items"]["train_loss"]) | set(ov["items"]["test_loss"])
        assert len(ids) == 6 and all(i.startswith(prefix) for i in ids)  # drawn from the stratum only
    assert set(summary["timings"]["tasks"]) >= {"train/LOW/IT/0", "train/HIGH/IM/0", "prepare/LOW/data"}
    high_timings = json.loads((root / "HIGH" / "timings.json").read_text())["runs"][-1]
    assert high_timings["stages"]["train"]["computed"] == 2 and high_timings["stages"]["report"]["computed"] == 1
    # the report: the study across strata first (one seed: H1 is not tested), then each stratum's sections one level
    # down
    text = (report_dir / "REPORT.md").read_text()
    assert text.startswith("# IT vs IM: tiny-strata\n\nTwo strata of a tiny model.")
    assert "- Stratum `LOW`: instruction/output word ratio 0.0 ≤ ratio ≤ 0.5; arms IT" in text
    assert text.index("## Pre-registered hypotheses") < text.index("## Stratum LOW") < text.index("## Stratum HIGH")
    study_text = text[: text.index("## Stratum LOW")]
    assert "| H1 |" in study_text and "**not tested**" in study_text
    low = text[text.index("## Stratum LOW") : text.index("## Stratum HIGH")]
    assert "### Results" in low and "Long outputs." in low and "`IM`" not in low
    assert "\n## Results" not in text and text.count("### Overfitting") == 2
    assert "](figures/HIGH/" in text and not list((report_dir / "figures").glob("*.png"))
    assert all((report_dir / "figures" / s).is_dir() for s in ("LOW", "HIGH"))
    # summary: a stratum column
    rows = list(csv.DictReader((report_dir / "summary.csv").open()))
    assert list(rows[0])[:3] == ["experiment", "stratum", "arm"]
    assert {(r["stratum"], r["arm"]) for r in rows} == {("LOW", "IT"), ("HIGH", "IT"), ("HIGH", "IM")}
    # the committed results: the experiment's config and one tree per stratum; they rebuild the same report
    results = report_dir / "results"
    assert (results / "config.yaml").is_file() and (results / "LOW" / "IT" / "seed-0" / "eval").is_dir()
    build_report(results, tmp_path / "rebuilt")
    assert (tmp_path / "rebuilt" / "REPORT.md").read_bytes() == (report_dir / "REPORT.md").read_bytes()
    assert (tmp_path / "rebuilt" / "summary.csv").read_bytes() == (report_dir / "summary.csv").read_bytes()
    assert not (tmp_path / "rebuilt" / "results").exists()
    # a second run: nothing is recomputed but the report
    again = compare_flow(cfg)
    assert again["timings"]["stages"]["train"]["computed"] == 0
    assert again["timings"]["stages"]["evaluate"]["computed"] == 0


def _write_yaml(tmp: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path = tmp / "strata.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_and_run_show_one_plan_per_stratum(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from im_pipeline_flows.cli import run
    from im_pipeline_flows.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _write_yaml(tmp_path, strata_config(tmp_path, seeds=[0, 1]))
    assert main(["plan", str(path), "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)["strata"]
    assert {k: v["units"] for k, v in plans.items()} == {
        "LOW": ["IT/seed-0", "IT/seed-1"],
        "HIGH": ["IT/seed-0", "IT/seed-1", "IM/seed-0", "IM/seed-1"],
    }
    assert main(["plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("stratum LOW:\n") and "\nstratum HIGH:\n" in text

    class Stop(Exception):
        pass

    def stop() -> None:  # the first step after the plan lines: Prefect's settings, before any flow starts
        raise Stop

    monkeypatch.setattr(run, "prefect_defaults", stop)
    with pytest.raises(Stop):
        main(["run", str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stratum LOW: plan: 2 units (0 done)")
    assert lines[1].startswith("stratum HIGH: plan: 4 units (0 done)")
    assert lines[2] == "running experiment 'tiny-strata' (2 strata, 2 arms × 2 seeds)"


def test_prefect_names_and_task_records_carry_the_stratum(tmp_path: Path) -> None:
    from im_pipeline_flows.compare import in_stratum
    from im_pipeline_flows.pool import unit_run_name

    cfg = config_from_dict(strata_config(tmp_path))
    high = cfg.stratum_configs()["HIGH"]
    assert unit_run_name(high, "IM", 3, 1) == "tiny-strata/HIGH/IM/seed-3-1"
    assert unit_run_name(high, "base", None, 2) == "tiny-strata/HIGH/base-2"
    assert unit_run_name(cfg, "IM", 3, 1) == "tiny-strata-IM-seed-3-1"  # as before strata
    assert in_stratum("evaluate/IT/0/overfitting", "LOW") == "evaluate/LOW/IT/0/overfitting"
    assert in_stratum("evaluate/IT/0/overfitting", "") == "evaluate/IT/0/overfitting"


def test_on_a_work_pool_every_stratum_is_submitted_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One unit deployment, every stratum's units submitted before any is watched, records per stratum."""
    pytest.importorskip("prefect")
    import logging

    from fake_pool import fake_pool
    from prefect.states import Completed

    from im_pipeline_flows import pool

    cfg = config_from_dict(strata_config(tmp_path) | {"orchestration": {"poll_s": 0.01}})
    low, high = cfg.stratum_configs().values()
    events: list[str] = []

    def submit(name: str, parameters: dict, flow_run_name: str) -> Completed:
        events.append(f"submit {flow_run_name} {parameters['config']['stratum']} {parameters['data_hash']}")
        return Completed()

    fake_pool(
        monkeypatch, submit, on_deploy=lambda p: events.append(f"deploy {p}"), on_read=lambda: events.append("watch")
    )
    done: list[int] = []
    plan = [(low, [("IT", 0)], "h-low"), (high, [("IT", 0), ("IM", 0)], "h-high")]
    records = pool.run_units_on_pool(plan, "p", lambda i, r: done.append(i), logging.getLogger())
    assert events[:4] == [
        "deploy p",
        "submit tiny-strata/LOW/IT/seed-0-1 LOW h-low",
        "submit tiny-strata/HIGH/IT/seed-0-1 HIGH h-high",
        "submit tiny-strata/HIGH/IM/seed-0-1 HIGH h-high",
    ]
    assert events.count("deploy p") == 1 and done == [1, 2, 3]
    assert [sorted(r) for r in records] == [["unit/IT/0"], ["unit/IM/0", "unit/IT/0"]]


def test_study_base_expands_into_its_two_strata() -> None:
    """configs/study_base.yaml as issue 23 pre-registers it."""
    from im_pipeline.config.loading import yaml_load

    data = yaml_load((ROOT / "configs" / "study_base.yaml").read_text(encoding="utf-8"))
    cfg = config_from_dict(data | {"data_dir": None})
    subs = cfg.stratum_configs()
    assert {k: [a.name for a in c.arms] for k, c in subs.items()} == {"LOW": ["IT", "IM"], "HIGH": ["IT", "IM", "IT-w"]}
    assert subs["LOW"].data.ratio_range == (0, 0.2) and subs["HIGH"].data.ratio_range == (3, None)
    assert RunLayout.of(subs["HIGH"]).root == Path("runs") / "study_base" / "HIGH"
    assert (
        cfg.model.source == "gemma-3-270m" and cfg.data.held_out == "alpaca_eval_ood" and cfg.seeds == [0, 1, 2, 3, 4]
    )
    assert (cfg.training.warmup_ratio, cfg.training.loss_normalisation, cfg.data.max_length) == (0.0, "sequence", 384)
    assert [(h.id, h.stratum, h.between_strata, h.reference) for h in cfg.study.hypotheses] == [
        ("P1", "HIGH", None, None),
        ("P2", None, ("HIGH", "LOW"), None),
        ("P3", "HIGH", None, "IT-w"),
    ]
    assert [(c.id, c.reference, c.margin) for c in cfg.study.checks] == [("M1", "base", 0.1), ("M2", None, 0.0)]
