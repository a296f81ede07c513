"""What was run, on what, by whom: the description, the data's origin, the judge, the KL form and the provenance
section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.analysis.run_files import RunConfig
from im_pipeline.config.base import data_dir_of
from im_pipeline.loss_modes import LossMode
from im_pipeline.report.cells import fmt, md_table
from im_pipeline.report.results import RESULTS_DIR
from im_pipeline.results import AlpacaEvalResult
from im_pipeline.runs.layout import BASE_ARM

PRECISION_NOTES = {
    "mixed": "; trained with fp32 master weights under bf16 autocast",
    "pure_bf16": "; trained with pure bf16 weights (training.precision: pure_bf16, updates under half a bf16 ulp lost)",
}


def precision_note(cfg: RunConfig) -> str:
    """How a bfloat16 model was trained, for the provenance line (nothing for float32, or for runs from before
    ``training.precision`` existed)."""
    if cfg.model.dtype != "bfloat16":
        return ""
    return PRECISION_NOTES.get(cfg.training.precision or "", "")


def built_by(run: agg.RunResults) -> str:
    """The report's last line; the same wherever the run directory lies (a rebuild from the committed results is
    byte-identical)."""
    cfg = run.config
    line = "\n_Built by `im-pipeline report RUN_DIR` from the run directory's JSON files only"
    if cfg.save_results:
        where = f"{cfg.report_dir or 'reports'}/{run.experiment}/{RESULTS_DIR}"
        line += f"; they are committed in `{where}/` and `im-pipeline report {where} --out DIR` rebuilds this report"
    return line + "._"


def describe(cfg: RunConfig, run: agg.RunResults) -> str:
    """One sentence on what was run, built from the resolved config (so ``--set data.n=8`` reads 8)."""
    d, t = cfg.data, cfg.training
    n_train = run.data_stats.train.n if run.data_stats else None
    size = f"{n_train} examples" if n_train else (f"{d.n} examples" if d.n else "all examples")
    if d.per_seed and d.held_out:
        size = f"{d.n} examples per seed (each seed its own sample; every seed tested on the same `{d.held_out}` set)"
    elif d.per_seed:
        size = f"{d.n} examples per seed (each seed its own sample, tested on a disjoint sample of {d.held_out_size})"
    steps = f"{t.max_steps} steps" if (t.max_steps or -1) > 0 else f"{t.epochs} epoch(s)"
    arms = []
    for a in cfg.arms:
        mode = a.loss_mode
        what = LossMode(mode).short if mode in set(LossMode) else mode
        if mode == "weighted":
            what += f" λ={a.prompt_loss_weight}"
        arms.append(f"{a.name or '?'} ({what})")
    seeds = cfg.seeds
    return (
        f"`{cfg.model.source}` fine-tuned on {size} of `{d.train}` ({steps}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}) as {' and '.join(arms) or '?'}."
    )


JUDGE_KINDS = {"local_hf": "local model", "openai": "OpenAI-compatible API"}


def judge_text(judge: Any) -> str:
    """A judge (its identity dict from a result or the config's judge section) as words, not a dict."""
    if not isinstance(judge, dict):
        return str(judge)
    kind = JUDGE_KINDS.get(judge.get("kind"), judge.get("kind"))
    where = judge.get("base_url_host") or judge.get("base_url")
    if where and "://" in str(where):
        where = str(where).split("://", 1)[1].split("/", 1)[0]  # host only: never a path or key
    return f"{judge.get('model', '?')} ({kind}{f' at {where}' if where else ''})"


def data_origin_text(origin: str | None, cfg: RunConfig) -> str:
    """Where the training data was read from, relative to the data directory (no host paths)."""
    if not origin:
        return "?"
    if origin.startswith("hub:"):
        return f"the Hugging Face Hub (`{origin[4:]}`)"
    data_dir = data_dir_of(cfg.resolved_data_dir or cfg.data_dir)
    if data_dir:
        try:
            rel = Path(origin).resolve().relative_to(data_dir)
            return f"`{rel.as_posix()}` in the data directory"
        except ValueError:
            pass
    return f"`{Path(origin).name}` (a local file given in the config)"


def _judges(run: agg.RunResults) -> list[str]:
    judges = sorted({judge_text(r.judge) for r in run.records() if isinstance(r, AlpacaEvalResult) and r.judge})
    if not judges and run.config.judge():
        judges = [f"{judge_text(run.config.judge())} configured, not used (no AlpacaEval result)"]
    return judges


def model_text(source: str | None, dtype: str | None, note: str = "") -> str:
    """The model line: its source and dtype (``note``: how it was trained, :func:`precision_note`), and, for a GGUF
    (a shipped model or a .gguf file), that the weights are a dequantised quantisation, named."""
    import re

    from im_pipeline.models.shipped import NAMED_MODELS

    text = f"`{source}` (dtype {dtype}{note})"
    named = NAMED_MODELS.get(str(source))
    if named is None and not str(source).lower().endswith(".gguf"):
        return text
    what = named.description if named else f"the GGUF file {Path(str(source)).name}"
    quant = re.search(r"\b(Q\d\w*|IQ\d\w*|F16|BF16)\b", what, re.IGNORECASE)
    q = f" (quantisation {quant.group(1).upper()})" if quant else ""
    return (
        f"{text}: {what}, dequantised to {dtype} by transformers' GGUF loader{q}: the trained and evaluated weights "
        "are the quantised checkpoint's values, not the original release's"
    )


def provenance_section(run: agg.RunResults) -> str:
    """The Prefect flow run, model, data, judge, config hash, commits and libraries; the machine and the wall time
    of the recent flow runs; the compute time of every result shown."""
    cfg = run.config
    recs = run.records()
    commits = sorted({str(r.git_commit) for r in recs if r.git_commit})
    versions = next((r.versions for r in recs if r.versions), {})
    judges = _judges(run)
    origin = run.data_stats.train_origin if run.data_stats else None
    last = run.timings.latest
    link = last.flow_run.link() if last else ""
    lines = [
        *([f"- Prefect: {link}"] if link else []),
        f"- Model: {model_text(cfg.model.source, cfg.model.dtype, precision_note(cfg))}",
        f"- Data: `{cfg.data.train}`, read from {data_origin_text(origin, cfg)}",
        f"- Judge: {'; '.join(judges) if judges else 'none (no AlpacaEval result)'}",
        f"- Config hash: `{cfg.config_hash}`",
        f"- Git commit(s) of the results: {', '.join(f'`{c}`' for c in commits) or '?'}",
        "- Libraries: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or "?"),
    ]
    if last:
        lines += [machine_line(run), timings_table(run)]
    compute = compute_table(run)
    if compute:
        lines.append(compute)
    return "\n".join(lines)


def machine_line(run: agg.RunResults) -> str:
    """The machine of the latest flow run."""
    m = run.timings.runs[-1].machine
    threads = m.torch_threads or run.config.training.threads or m.cpu_count
    return (
        f"- Machine: {m.platform}, Python {m.python}, {m.cpu_count} "
        f"CPUs, torch threads {threads}, CUDA {m.cuda or 'none'}"
    )


def timings_table(run: agg.RunResults) -> str:
    """Wall time per stage of the (at most 8) recent flow runs."""
    header = [
        "flow run (UTC)",
        "prepare (s)",
        "train (s)",
        "evaluate (s)",
        "report (s)",
        "flow total (s)",
        "command total (s)",
        "tasks computed / cached",
    ]
    rows = [
        [
            t.started,
            *[fmt(t.stage(s).seconds) for s in ("prepare", "train", "evaluate", "report")],
            fmt(t.total_seconds),
            fmt(t.command_seconds),
            f"{sum(v.computed for v in t.stages.values())} / {sum(v.cached for v in t.stages.values())}",
        ]
        for t in run.timings.runs[-8:]
    ]
    return (
        "\nWall time per stage of the recent flow runs (a stage's time is the sum of its task runs' "
        "times; units already done cost ~0; the flow total of a run covers everything up to writing this "
        "report, the command total the same from the start of `im-pipeline run`, Prefect's start-up included):\n\n"
        + md_table(header, rows)
    )


def compute_table(run: agg.RunResults) -> str:
    """Compute time (s) of every result shown, per model and stage ("" when there is no model)."""
    benches = agg.benchmark_order(run)  # the names only: comparison_rows would recompute every paired statistic
    models: list[tuple[str, int | None]] = (
        [(BASE_ARM, None)] if any(BASE_ARM in b for b in run.results.values()) else []
    )
    models += [(arm, seed) for arm in run.arms for seed in run.seeds]
    compute, total = [], 0.0
    for arm, seed in models:
        s = run.summaries(arm).get(seed) if seed is not None else None
        cells = [fmt(s.wall_time_s) if s else "–"]
        total += float(s.wall_time_s or 0.0) if s else 0.0
        for bench in benches:
            r = run.by_seed(bench, arm).get(seed)
            skipped = " (skipped)" if r is not None and r.status == "skipped" else ""
            cells.append("–" if r is None else fmt(r.wall_time_s) + skipped)
            total += float(r.wall_time_s or 0.0) if r else 0.0
        compute.append([arm if seed is None else f"{arm}/seed-{seed}", *cells])
    if not compute:
        return ""
    return (
        f"\nCompute time (s) of the results shown, recorded when each was computed (total {total:.0f} s):"
        "\n\n" + md_table(["model", "train", *benches], compute)
    )


def kl_note(run: agg.RunResults) -> str:
    """Which KL term ran (per arm with kl_coef > 0) and why the paper's Table 3 cannot be read as "KL hurts"."""
    kl_arms = [(arm, run.arm_config(arm)) for arm in run.arms if run.arm_config(arm).kl_coef]
    if not kl_arms:
        return ""
    forms = {
        "full": "full-distribution KL(model ‖ base) (paper Eq. 5)",
        "release": "the released code's target-token log-ratio log p_model(y) − log p_base(y), reduced like the NLL "
        "(src/finetune.py)",
    }
    tokens = {"full": "over the output tokens", "release": "over the tokens of the arm's own NLL"}
    lines = [
        f"`{arm}`: c = {a.kl_coef}, {forms.get(a.kl_form, a.kl_form)}, {tokens.get(a.kl_form, '')} "
        f"(loss_mode `{a.loss_mode}`)"
        for arm, a in kl_arms
    ]
    return (
        "- **KL term**: "
        + "; ".join(lines)
        + ". The released form shares tokens and denominator with the arm's NLL, so loss = (1 − c)·NLL + const: "
        "its gradient is (1 − c) times the NLL's and exactly zero at c = 1 (tests/test_kl_form.py). The paper's "
        "Table 3 (IT + KL, c = 1) came from that code, and its IT+KL scores sit at the base model's (NLP mean "
        "49.26 / 49.31 vs base 49.32; AlpacaEval 2.0 0.06 / 0.04 vs 0.01): a model that never moved, so Table 3 "
        'cannot be read as "KL hurts".'
    )
