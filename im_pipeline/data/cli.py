"""``im-pipeline data stats NAME_OR_PATH``: the paper's Table-5 length statistics of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from im_pipeline.analysis.paper_reference import table5_reference
from im_pipeline.data.sources import load_source
from im_pipeline.data.stats import format_stats_table, length_stats


def stats_command(args: argparse.Namespace) -> int:
    """Print Table-5 statistics (a table, or one JSON object with ``--json``)."""
    if args.data_command != "stats":  # only sub-command today
        raise ValueError(f"unknown data command {args.data_command!r}")
    data_dir = Path(args.data_dir) if args.data_dir else None
    loaded = load_source(
        args.source,
        data_dir,
        multi_turn=not args.single_turn,
        instruction_templates=args.instruction_templates,
        seed=args.seed,
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
