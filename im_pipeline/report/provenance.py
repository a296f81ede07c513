"""What was run, on what, by whom: the description, the data's origin, the judge, the KL form and the provenance
section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from im_pipeline.analysis import aggregate as agg
from im_pipeline.config.base import data_dir_of
from im_pipeline.loss_modes import LossMode
from im_pipeline.report.cells import (
    _f,
    _md_table,
)
from im_pipeline.report.results import RESULTS_DIR
from im_pipeline.report.sections import _flow_run_link
from im_pipeline.runs.layout import BASE_ARM


def built_by(run: agg.RunResults) -> str:
    """The report's last line; the same wherever the run directory lies (a rebuild from the committed results is
    byte-identical)."""
    cfg = run.config
    line = "\n_Built by `im-pipeline report RUN_DIR` from the run directory's JSON files only"
    if cfg.get("save_results"):
        where = f"{cfg.get('report_dir') or 'reports'}/{run.experiment}/{RESULTS_DIR}"
        line += f"; they are committed in `{where}/` and `im-pipeline report {where} --out DIR` rebuilds this report"
    return line + "._"


def describe(cfg: dict[str, Any], run: agg.RunResults) -> str:
    """One sentence on what was run, built from the resolved config (so ``--set data.n=8`` reads 8)."""
    d, t = cfg.get("data", {}), cfg.get("training", {})
    n_train = ((run.data_stats or {}).get("stats") or {}).get("train", {}).get("n")
    size = f"{n_train} examples" if n_train else (f"{d['n']} examples" if d.get("n") else "all examples")
    if d.get("per_seed"):
        size = (
            f"{d.get('n')} examples per seed (each seed its own sample, tested on a disjoint sample of "
            f"{d.get('held_out_size')})"
        )
    steps = f"{t['max_steps']} steps" if (t.get("max_steps") or -1) > 0 else f"{t.get('epochs', '?')} epoch(s)"
    arms = []
    for a in cfg.get("arms", []):
        mode = a.get("loss_mode", "?")
        what = LossMode(mode).short if mode in set(LossMode) else mode
        if mode == "weighted":
            what += f" λ={a.get('prompt_loss_weight')}"
        arms.append(f"{a.get('name', '?')} ({what})")
    seeds = cfg.get("seeds") or []
    return (
        f"`{cfg.get('model', {}).get('source', '?')}` fine-tuned on {size} of `{d.get('train', '?')}` ({steps}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}) as {' and '.join(arms) or '?'}."
    )


def judge_text(judge: Any) -> str:
    """A judge (its identity dict from a result or the config's judge section) as words, not a dict."""
    if not isinstance(judge, dict):
        return str(judge)
    kind = {"local_hf": "local model", "openai": "OpenAI-compatible API"}.get(judge.get("kind"), judge.get("kind"))
    where = judge.get("base_url_host") or judge.get("base_url")
    if where and "://" in str(where):
        where = str(where).split("://", 1)[1].split("/", 1)[0]  # host only: never a path or key
    return f"{judge.get('model', '?')} ({kind}{f' at {where}' if where else ''})"


def data_origin_text(origin: str | None, cfg: dict[str, Any]) -> str:
    """Where the training data was read from, relative to the data directory (no host paths)."""
    if not origin:
        return "?"
    if origin.startswith("hub:"):
        return f"the Hugging Face Hub (`{origin[4:]}`)"
    data_dir = data_dir_of(cfg.get("_resolved_data_dir") or cfg.get("data_dir"))
    if data_dir:
        try:
            rel = Path(origin).resolve().relative_to(data_dir)
            return f"`{rel.as_posix()}` in the data directory"
        except ValueError:
            pass
    return f"`{Path(origin).name}` (a local file given in the config)"


def provenance_section(run: agg.RunResults) -> str:
    cfg = run.config
    recs = [r for by_arm in run.results.values() for by_seed in by_arm.values() for r in by_seed.values()]
    commits = sorted({str(r.get("git_commit")) for r in recs if r.get("git_commit")})
    versions: dict[str, Any] = next((r["versions"] for r in recs if r.get("versions")), {})
    judges = sorted({judge_text(r["judge"]) for r in recs if r.get("judge")})
    if not judges and cfg.get("evaluation", {}).get("judge"):
        judges = [f"{judge_text(cfg['evaluation']['judge'])} configured, not used (no AlpacaEval result)"]
    origin = (((run.data_stats or {}).get("actions") or {}).get("train") or {}).get("origin")
    timings = (run.timings or {}).get("runs") or []
    link = _flow_run_link(timings[-1]) if timings else ""
    lines = [
        *([f"- Prefect: {link}"] if link else []),
        f"- Model: `{cfg.get('model', {}).get('source', '?')}` (dtype {cfg.get('model', {}).get('dtype', '?')})",
        f"- Data: `{cfg.get('data', {}).get('train', '?')}`, read from {data_origin_text(origin, cfg)}",
        f"- Judge: {'; '.join(judges) if judges else 'none (no AlpacaEval result)'}",
        f"- Config hash: `{cfg.get('_config_hash', '?')}`",
        f"- Git commit(s) of the results: {', '.join(f'`{c}`' for c in commits) or '?'}",
        "- Libraries: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or "?"),
    ]
    if timings:
        m = timings[-1].get("machine", {})
        threads = m.get("torch_threads") or cfg.get("training", {}).get("threads") or m.get("cpu_count", "?")
        lines.append(
            f"- Machine: {m.get('platform', '?')}, Python {m.get('python', '?')}, {m.get('cpu_count', '?')} "
            f"CPUs, torch threads {threads}, CUDA {m.get('cuda') or 'none'}"
        )
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
        rows = []
        for t in timings[-8:]:
            st = t.get("stages", {})
            comp = sum(v.get("computed", 0) for v in st.values())
            cached = sum(v.get("cached", 0) for v in st.values())
            rows.append(
                [
                    t.get("started", "?"),
                    *[_f(st.get(s, {}).get("seconds")) for s in ("prepare", "train", "evaluate", "report")],
                    _f(t.get("total_seconds")),
                    _f(t.get("command_seconds")),
                    f"{comp} / {cached}",
                ]
            )
        lines.append(
            "\nWall time per stage of the recent flow runs (a stage's time is the sum of its task runs' "
            "times; cached task runs cost ~0; the flow total of a run covers everything up to writing this "
            "report, the command total the whole `im-pipeline run` including Prefect's start-up):\n\n"
            + _md_table(header, rows)
        )
    benches = agg.benchmark_order(run)  # the names only: comparison_rows would recompute every paired statistic
    models = ([BASE_ARM] if any(BASE_ARM in b for b in run.results.values()) else []) + [
        f"{arm}/seed-{seed}" for arm in run.arms for seed in run.seeds
    ]
    compute, total = [], 0.0
    for model in models:
        arm, _, seed_txt = model.partition("/seed-")
        seed = int(seed_txt) if seed_txt else None
        s = run.train_summaries.get(arm, {}).get(seed) if seed is not None else None
        cells = [_f(s.get("wall_time_s")) if s else "–"]
        total += float(s.get("wall_time_s") or 0.0) if s else 0.0
        for bench in benches:
            r = run.results.get(bench, {}).get(arm, {}).get(seed)
            cells.append(
                "–" if r is None else _f(r.get("wall_time_s")) + (" (skipped)" if r.get("status") == "skipped" else "")
            )
            total += float(r.get("wall_time_s") or 0.0) if r else 0.0
        compute.append([model, *cells])
    if compute:
        lines.append(
            f"\nCompute time (s) of the results shown, recorded when each was computed (total {total:.0f} s):"
            "\n\n" + _md_table(["model", "train", *benches], compute)
        )
    return "\n".join(lines)


def kl_note(run: agg.RunResults) -> str:
    """Which KL term ran (per arm with kl_coef > 0) and why the paper's Table 3 cannot be read as "KL hurts"."""
    kl_arms = [(arm, run.arm_config(arm)) for arm in run.arms if run.arm_config(arm).get("kl_coef")]
    if not kl_arms:
        return ""
    forms = {
        "full": "full-distribution KL(model ‖ base) (paper Eq. 5)",
        "release": "the released code's target-token log-ratio log p_model(y) − log p_base(y), reduced like the NLL "
        "(src/finetune.py)",
    }
    tokens = {"full": "over the output tokens", "release": "over the tokens of the arm's own NLL"}
    lines = [
        f"`{arm}`: c = {a['kl_coef']}, {forms.get(a.get('kl_form', 'full'), a.get('kl_form'))}, "
        f"{tokens.get(a.get('kl_form', 'full'), '')} (loss_mode `{a.get('loss_mode')}`)"
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
