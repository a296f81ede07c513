"""The evaluation section: one entry per registered benchmark (im_pipeline.evaluation.specs), the judge, batch
size."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from im_pipeline.config.base import Strict
from im_pipeline.devices import check_device_spec
from im_pipeline.evaluation.specs import BenchmarkSpec, specs


class BenchmarkConfig(Strict):
    enabled: bool = Field(True, description="Run this benchmark.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most this many items (per subject for MMLU).")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Benchmark-specific options (typed per benchmark: see im_pipeline.evaluation.specs).",
    )


class JudgeConfig(Strict):
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


def _benchmark_field(spec: BenchmarkSpec) -> Any:
    def default() -> BenchmarkConfig:
        return BenchmarkConfig(limit=spec.limit, options=dict(spec.default_options))

    return (BenchmarkConfig, Field(default_factory=default, description=spec.label))


# One field per registered benchmark, in report order (the config, its YAML and its hash keep that order).
_Benchmarks = create_model("_Benchmarks", __base__=Strict, **{spec.name: _benchmark_field(spec) for spec in specs()})


class EvaluationConfig(_Benchmarks):
    """``evaluation.<benchmark>`` for every registered benchmark (im_pipeline.evaluation.specs), the judge, and
    how the models are evaluated."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @model_validator(mode="after")
    def _typed_options(self) -> EvaluationConfig:
        for spec in specs():  # a typo is found when the config loads, not after training
            spec.validate_options(getattr(self, spec.name).options)
        return self

    evaluate_base: bool = Field(True, description="Also evaluate the base model once (base → IT → IM).")
    batch_size: int = Field(8, ge=1, description="Batch size for scoring and generation.")
    device: str = Field(
        "auto",
        description="Where every evaluator runs (lm-eval, generation, overfitting losses, the local judge): 'auto' "
        "(a GPU when one is visible, else the CPU), 'cpu', 'cuda' or 'cuda:N'. Units evaluating at the same time on "
        "one host each hold their own GPU (per-GPU locks).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Evaluation dtype: 'auto' = bfloat16 on a bf16-capable GPU, float32 on the CPU and on older GPUs; "
        "an explicit dtype also enters the evaluation's key.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_spec(value)

    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="KV-cache budget of one generation batch in GiB: rows (prompts × samples) per batch shrink to fit "
        "(null: on CUDA 80% of the free device memory at each batch, on CPU no cap).",
    )
