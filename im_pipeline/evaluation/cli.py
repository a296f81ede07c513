"""``im-pipeline eval MODEL --benchmark NAME``: one benchmark on any model source (checkpoint, base model, ...)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from im_pipeline.config import DATA_DIR_ENV, BenchmarkConfig, ConfigError, parse_override


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["num_fewshot=5", "subjects=[anatomy, astronomy]"]`` → ``{"num_fewshot": 5, "subjects": [...]}``.

    Values are YAML scalars or lists, as in ``--set`` overrides.
    """
    options: dict[str, Any] = {}
    for item in items:
        path, value = parse_override(item)
        if len(path) != 1:
            raise ConfigError(f"option {item!r}: benchmark options are flat keys (no dots)")
        options[path[0]] = value
    return options


def eval_command(args: argparse.Namespace) -> int:
    """Run ``args.benchmark`` on ``args.model``; writes ``<args.out>/<benchmark>.json`` and prints it.

    Exit status 0 when the benchmark ran, 1 when it was skipped (the reason is printed).
    """
    from im_pipeline.evaluation.common import BENCHMARKS, EvalContext, run_benchmark

    if args.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {args.benchmark!r}; known: {', '.join(sorted(BENCHMARKS))}")
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    ctx = EvalContext(
        model_source=args.model,
        out_dir=Path(args.out),
        data_dir=Path(data_dir).expanduser().resolve() if data_dir else None,
    )
    cfg = BenchmarkConfig(limit=args.limit, options=parse_options(args.options))
    path = run_benchmark(args.benchmark, ctx, cfg)
    record = json.loads(path.read_text(encoding="utf-8"))
    print(json.dumps(record, indent=2, ensure_ascii=False))
    if record.get("status") == "skipped":
        print(f"{args.benchmark} skipped: {record.get('reason')}", file=sys.stderr)
        return 1
    stderr = record.get("stderr")
    shown = f" ± {stderr:.4f}" if isinstance(stderr, (int, float)) else ""
    print(
        f"{args.benchmark}: {record['metric']} = {record['value']:.4f}{shown} (n={record['n']}, "
        f"{record['wall_time_s']:.1f} s) → {path}",
        file=sys.stderr,
    )
    return 0
