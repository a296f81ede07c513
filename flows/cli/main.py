"""The ``im-pipeline`` command: parse (``parser.py``), then hand over to one handler (``commands.py``, ``run.py``).

Each sub-command imports only what it needs, so ``im-pipeline data stats`` never starts Prefect or torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from im_pipeline.config import ConfigError
from im_pipeline_flows.cli.parser import build_parser


class RunNameFormatter(logging.Formatter):
    """Console lines that name the Prefect task or flow run they come from.

    Prefect's run loggers carry ``task_run_name`` / ``flow_run_name``; library loggers (``im_pipeline.*``) get the
    name of the task run active in their thread, so "Finished in state Completed()" says which task finished.
    """

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if run is None and "prefect.context" in sys.modules:
            from prefect.context import TaskRunContext

            ctx = TaskRunContext.get()
            run = ctx.task_run.name if ctx is not None else None
        line = super().format(record)
        return line.replace(" :: ", f" [{run}] " if run else " ", 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(RunNameFormatter("%(asctime)s %(levelname)s %(name)s :: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        return _dispatch(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # User errors: one clear message, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("run", "serve", "deploy"):  # the flows: Prefect starts only for these
        from im_pipeline_flows.cli import run

        return {"run": run.run_command, "serve": run.serve_command, "deploy": run.deploy_command}[args.command](args)
    from im_pipeline_flows.cli import commands

    handlers = {
        "data": commands.data_command,
        "models": commands.models_command,
        "init": commands.init_command,
        "advise": commands.advise_command,
        "mask": commands.mask_command,
        "eval": commands.eval_command,
        "humaneval": commands.score_command,
        "report": commands.report_command,
        "keys": commands.keys_command,
        "compare": commands.compare_command,
        "plan": commands.plan_command,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
