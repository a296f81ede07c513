"""AlpacaEval 1.0 / 2.0: win rate against reference outputs, by the configured judge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from im_pipeline.evaluation.specs import BenchmarkSpec, Options, register


class AlpacaEvalOptions(Options):
    version: Literal[1, 2] = Field(1, description="AlpacaEval 1.0 or 2.0.")
    annotator: str | None = Field(None, description="alpaca_eval annotator config; null = the version's default.")
    both_orders: bool = Field(True, description="Judge each pair in both output orders and average (every judge).")
    max_new_tokens: int = Field(512, ge=1, description="Generation budget per answer.")
    cache_dir: str | None = Field(None, description="Annotation cache; null = <eval dir>/alpaca_eval.")
    seed: int = Field(123, description="Seed of the subsample of instructions (limit).")
    guided_choice: bool = Field(False, description="Constrain an OpenAI-compatible judge to the labels (vLLM).")
    judge_concurrency: int = Field(4, ge=1, description="Concurrent judge requests.")


SPEC = register(
    BenchmarkSpec(
        name="alpaca_eval",
        label="AlpacaEval",
        runner="im_pipeline.evaluation.alpaca_eval.runner:run_alpaca_eval",
        options=AlpacaEvalOptions,
        order=3,
        run_order=4,
        item_key="win",
        item_scale=100.0,  # per-instruction win share (0-1) → the percent win rate
        chance=0.5,
        chance_note="a model judged against outputs of equal quality (e.g. itself) wins 50%",
        how_to_provide="set `data_dir` to a directory with `alpaca_eval/` (instructions + reference outputs)",
        limit=20,
        uses_judge=True,
    )
)
