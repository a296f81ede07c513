"""The plan of an experiment, before it runs: units (and which are done), parameters, training memory per GPU and
whether it fits, the evaluation's KV budget, benchmark work and judge cost, wall time per stage, warnings.

Offline and without weights: the architecture comes from :mod:`.arch` (a model on the meta device).
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from im_pipeline.plan import memory, timing, work
from im_pipeline.plan.arch import Arch, count_params, load_model_config

if TYPE_CHECKING:
    from im_pipeline.config import ExperimentConfig


def unit_names(cfg: ExperimentConfig) -> list[str]:
    """``base`` (when evaluated), then ``<arm>/seed-<s>`` for every arm and seed."""
    base = ["base"] if cfg.evaluation.evaluate_base else []
    return base + [f"{a.name}/seed-{s}" for a in cfg.arms for s in cfg.seeds]


def done_units(cfg: ExperimentConfig) -> list[str]:
    """The units whose training and every enabled benchmark are done under their current keys.

    The one place that asks ``im_pipeline.runs.units`` (``jobs_of`` and the ``*_done`` functions).
    """
    from im_pipeline.runs.layout import RunLayout
    from im_pipeline.runs.staleness import files_hash
    from im_pipeline.runs.units import eval_done, jobs_of, train_done

    layout = RunLayout.of(cfg)
    try:
        data_hash = files_hash(layout.train_data, layout.held_out_data) if layout.train_data.is_file() else None
    except OSError:
        data_hash = None
    done = []
    for name in unit_names(cfg):
        arm, _, seed = name.partition("/seed-")
        if arm != "base" and data_hash is None:
            continue
        train, evals = jobs_of(cfg, arm, int(seed) if seed else None, data_hash)
        if (train is None or train_done(cfg, train)) and all(eval_done(cfg, job) for job in evals):
            done.append(name)
    return done


def precision_of(cfg: ExperimentConfig) -> str:
    """How the configured dtype trains (:data:`memory.PRECISIONS`): bfloat16 = fp32 master weights under bf16
    autocast, bf16 weights only with ``training.precision: pure_bf16``."""
    if cfg.model.dtype == "float32":
        return "fp32"
    return "bf16_weights" if cfg.training.precision == "pure_bf16" else "bf16_autocast"


def engine_of(launcher: str | None, declared_gpus: int | None) -> tuple[str, int]:
    """(engine, processes) from the training launcher: DeepSpeed ZeRO-3 / FSDP from an accelerate config, DDP from
    torchrun or accelerate, else one process. ``declared_gpus`` (``--gpus``) wins for the process count."""
    if not launcher:
        return "single", 1
    words = [part for w in shlex.split(launcher) for part in (w.split("=", 1) if w.startswith("--") else [w])]
    engine, procs = "ddp", None
    for flag, value in itertools.pairwise(words):
        if flag in ("--nproc_per_node", "--nproc-per-node", "--num_processes", "--num-processes") and value.isdigit():
            procs = int(value)
        if flag in ("--config_file", "--config-file") and Path(value).is_file():
            text = Path(value).read_text(encoding="utf-8")
            if re.search(r"zero_stage:\s*3", text):
                engine = "zero3"
            elif "distributed_type: FSDP" in text:
                engine = "fsdp"
            found = re.search(r"^num_processes:\s*(\d+)", text, re.MULTILINE)
            procs = procs or (int(found.group(1)) if found else None)
    return engine, declared_gpus or procs or 1


def visible_gpus() -> tuple[int, float | None, str | None]:
    """(count, GiB of the first, its name) of the CUDA GPUs torch sees.

    Name and memory come from ``nvidia-smi``, not from torch: asking torch would create a CUDA context in this
    process (``im-pipeline run`` asks before its flow starts, and must not hold GPU memory or poison forks).
    """
    import shutil
    import subprocess

    import torch

    if not torch.cuda.is_available():
        return 0, None, None
    count, smi = torch.cuda.device_count(), shutil.which("nvidia-smi")
    if smi:
        cmd = [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
        try:
            first = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
            name, mib = first.rsplit(",", 1)
            return count, float(mib) / 1024, name.strip()
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return count, None, None


def kept_fraction(cfg: ExperimentConfig) -> tuple[float, str]:
    """(fraction of the positions whose logits the loss reads, how it was estimated), the largest over the arms.

    Every loss term reads the arm's targets and the output tokens (KL and the logged IT loss read the output tokens,
    ``training.weighted_trainer.Targets.logit_positions``): an arm that trains on the instruction (``im``,
    ``im_release``, ``weighted`` with λ > 0) reads nearly every position, counted as all; an output-only arm (``it``,
    ``it_w``, λ = 0) reads the output's share, mean output words / (instruction + output words), from the prepared
    data's statistics, else the paper's Table 5 ratio for a paper data set, else all positions (an upper bound).
    """
    from im_pipeline.analysis.paper_reference import TABLE5_ALIASES, TABLE5_LENGTH_STATS

    reads_instruction = [a.name for a in cfg.arms if a.loss.user_weight > 0]  # im, im_release, weighted with λ > 0
    if reads_instruction:
        return 1.0, f"all positions: arm {reads_instruction[0]} trains on the instruction too"
    ratio, basis = _prepared_ratio(cfg), "the prepared data's statistics"
    if ratio is None:
        ratio = TABLE5_LENGTH_STATS.get(TABLE5_ALIASES.get(cfg.data.train, cfg.data.train), {}).get("ratio")
        basis = "paper Table 5's instruction / output ratio"
    if ratio is None:
        return 1.0, "all positions assumed, an upper bound (no length statistics of data.train)"
    return round(1 / (1 + ratio), 4), f"output tokens only, their mean share from {basis} (ratio {ratio:g})"


def _prepared_ratio(cfg: ExperimentConfig) -> float | None:
    """The training data's instruction / output word ratio from ``data_stats.json``, when the data is prepared (read
    through the report's typed view of that file, :class:`im_pipeline.analysis.run_files.DataStats`)."""
    from im_pipeline.analysis.run_files import DataStats
    from im_pipeline.runs.layout import RunLayout

    try:
        ratio = DataStats.model_validate_json(RunLayout.of(cfg).data_stats.read_bytes()).train.ratio
    except (OSError, ValueError):  # missing, or not a data_stats.json (pydantic's ValidationError is a ValueError)
        return None
    return ratio if ratio is not None and ratio >= 0 else None


def _training(cfg: ExperimentConfig, arch: Arch, n_params: int, engine: str, world: int) -> dict[str, Any]:
    t, d = cfg.training, cfg.data
    fraction, fraction_basis = kept_fraction(cfg)
    setup = memory.TrainSetup(
        precision=precision_of(cfg),
        engine=engine,
        world_size=world,
        batch_size=t.batch_size,
        seq_len=d.max_length,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        adapter=t.peft.method,
        lora_rank=t.peft.r,
        # with adapters the KL reference is the same model, adapters disabled: no second copy
        reference_model=t.peft.method == "none" and any(a.kl_coef > 0 for a in cfg.arms),
        kept_fraction=fraction,
    )
    mem = memory.training_memory(arch, n_params, setup)
    examples, tokens_each, basis = _data_size(cfg)
    return {
        "memory": mem,
        "examples": examples,
        "tokens_per_example": tokens_each,
        "data_basis": basis,
        "logits_kept_fraction": fraction,
        "logits_kept_basis": fraction_basis,
        "tokens_per_unit": examples * tokens_each * (t.epochs if t.max_steps < 0 else 1),
        "checkpointing": t.gradient_checkpointing,
        "kl_per_unit": [a.kl_coef > 0 for a in cfg.arms for _ in cfg.seeds],
    }


def _data_size(cfg: ExperimentConfig) -> tuple[int, int, str]:
    """(examples, tokens per example, how they were estimated): Table 5's words × 1.3 tokens + 16 template tokens
    for a paper data set, else half of ``data.max_length``."""
    from im_pipeline.analysis.paper_reference import TABLE5_ALIASES, TABLE5_LENGTH_STATS

    ref = TABLE5_LENGTH_STATS.get(TABLE5_ALIASES.get(cfg.data.train, cfg.data.train), {})
    examples = cfg.data.n or int(ref.get("n", 1000))
    if "output_words_mean" in ref:
        words = ref["instruction_words_mean"] + ref["output_words_mean"]
        tokens = min(int(words * 1.3) + 16, cfg.data.max_length)
        return examples, tokens, "paper Table 5 words × 1.3 tokens/word + 16 template tokens"
    basis = "data.n" if cfg.data.n else "1000 examples assumed (data.n is null)"
    return examples, cfg.data.max_length // 2, f"{basis}; half of data.max_length per example, assumed"


def _evaluation(cfg: ExperimentConfig, arch: Arch, n_params: int, benchmarks: dict, gpu_gib: float | None) -> dict:
    """KV cache per configured batch and the rows that fit beside the weights (when the GPU memory is known)."""
    dtype_bytes = 4 if cfg.model.dtype == "float32" else 2
    per_token = memory.kv_bytes_per_token(arch, dtype_bytes)
    out: dict[str, Any] = {"batch_size": cfg.evaluation.batch_size, "kv_bytes_per_token": per_token}
    for name in ("humaneval", "alpaca_eval"):
        w = benchmarks.get(name)
        if not w:
            continue
        row_tokens = w["prompt_tokens"] + w["max_new_tokens"]
        kv = memory.gib(per_token * row_tokens * w["rows_per_batch"])
        entry = {"rows_per_batch": w["rows_per_batch"], "kv_gib": kv}
        if gpu_gib:
            safe = memory.generation_rows_fitting(arch, n_params, gpu_gib * memory.GIB, row_tokens, dtype_bytes)
            entry.update(safe_rows_per_batch=safe, fits=w["rows_per_batch"] <= safe)
            w["safe_rows_per_batch"] = min(safe, w["rows_per_batch"]) or 1
        out[name] = entry
    return out


def make_plan(
    cfg: ExperimentConfig,
    *,
    model_config: str | None = None,
    gpus: int | None = None,
    gpu_memory_gib: float | None = None,
    judge_price: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Everything ``im-pipeline plan`` states, as one JSON-able dict (top-level keys ``units``, ``params``,
    ``judge_calls``, ``memory``, ``time`` and the details)."""
    config, origin = load_model_config(
        cfg.model.source, model_config=model_config, cache_dir=cfg.model.cache_dir, revision=cfg.model.revision
    )
    arch, n_params = Arch.of(config), count_params(config)
    seen, seen_gib, gpu_name = visible_gpus()
    n_gpus, per_gpu = (gpus if gpus is not None else seen), (gpu_memory_gib or seen_gib)
    engine, world = engine_of(cfg.train_launcher(), gpus)
    training = _training(cfg, arch, n_params, engine, world)
    benchmarks = work.per_model_work(cfg)
    models = work.models_evaluated(cfg)
    judge_calls = models * benchmarks.get("alpaca_eval", {}).get("judge_calls", 0)
    mem = training.pop("memory")
    mem_gib = {k: memory.gib(v) for k, v in mem.items() if isinstance(v, int)}
    fits = None if not per_gpu else mem["total"] <= memory.FITS_FRACTION * per_gpu * memory.GIB
    mem_gib.update(setup=mem["setup"], peak_moment=mem["peak_moment"], gpu_gib=per_gpu, fits=fits)
    plan: dict[str, Any] = {
        "experiment": cfg.name,
        "units": unit_names(cfg),
        "units_done": done_units(cfg),
        "params": n_params,
        "judge_calls": judge_calls,
        "model": {"source": cfg.model.source, "config": origin, "arch": arch.__dict__},
        "gpus": {"count": n_gpus, "gib_each": per_gpu, "name": gpu_name, "visible": seen},
        "memory": {"training_gib": mem_gib},
        "training": training,
        "models_evaluated": models,
        "benchmarks": benchmarks,
    }
    plan["memory"]["evaluation"] = _evaluation(cfg, arch, n_params, benchmarks, per_gpu)
    plan["judge"] = work.judge_cost(cfg, judge_calls, judge_price)
    plan["time"] = timing.stage_times(plan, n_params, n_gpus or 0, gpu_name)
    plan["warnings"] = warnings(cfg, plan, n_gpus or 0)
    return plan


def warnings(cfg: ExperimentConfig, plan: dict[str, Any], gpus: int) -> list[str]:
    """What the user should know before starting."""
    out = []
    judge = cfg.evaluation.judge
    if cfg.evaluation.alpaca_eval.enabled and judge.kind == "local_hf" and "135m" in judge.model.lower():
        out.append(
            f"the AlpacaEval judge is a 135M local model ({judge.model}): it is position-biased and its win rates "
            "say little; use an OpenAI-compatible judge (evaluation.judge.kind: openai)"
        )
    if gpus > 1 and not cfg.train_launcher():
        out.append(
            f"{gpus} GPUs but no training.launcher: in-process training is refused with more than one visible GPU; "
            "set training.launcher (torchrun / accelerate launch)"
        )
    if precision_of(cfg) == "bf16_weights":
        out.append(
            "training.precision pure_bf16 trains bf16 weights and AdamW state (no fp32 master weights): updates "
            "below half an ulp are lost; at lr 2e-5 most weights never change"
        )
    fits = plan["memory"]["training_gib"]["fits"]
    if fits is False:
        total, each = plan["memory"]["training_gib"]["total"], plan["gpus"]["gib_each"]
        out.append(f"training needs {total} GiB per GPU, more than the {each:.0f} GiB available")
    for name, entry in plan["memory"]["evaluation"].items():
        if isinstance(entry, dict) and entry.get("fits") is False:
            out.append(
                f"{name}: {entry['rows_per_batch']} rows per batch need {entry['kv_gib']} GiB of KV cache; at most "
                f"{entry['safe_rows_per_batch']} fit beside the weights"
            )
    return out


def plan_line(cfg: ExperimentConfig) -> str:
    """:func:`~im_pipeline.plan.show.summary_line` of the experiment's plan, or why there is none (never raises:
    ``im-pipeline run`` prints it first and must start anyway)."""
    from im_pipeline.plan.show import summary_line

    try:
        return summary_line(make_plan(cfg))
    except Exception as exc:  # a plan is advice: a failure to make one must not stop the run
        return f"plan: not available ({type(exc).__name__}: {exc})"
