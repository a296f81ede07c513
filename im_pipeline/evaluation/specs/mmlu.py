"""MMLU through lm-evaluation-harness (accuracy; offline from the data directory's CSV files)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from im_pipeline.evaluation.specs import BenchmarkSpec, Options, register


class LmEvalOptions(Options):
    """The options of every benchmark run through lm-eval (MMLU, TruthfulQA)."""

    apply_chat_template: bool = Field(False, description="Wrap prompts in the tokenizer's chat template.")
    source: Literal["auto", "hub", "local"] = Field(
        "auto", description="'hub', 'local' (data directory) or 'auto' (hub when reachable)."
    )


class MMLUOptions(LmEvalOptions):
    num_fewshot: int = Field(0, ge=0, le=5, description="Few-shot examples (the dev split holds 5 per subject).")
    subjects: list[str] | str | None = Field(None, description="Subjects (list or comma-separated); null = all 57.")


SPEC = register(
    BenchmarkSpec(
        name="mmlu",
        label="MMLU",
        runner="im_pipeline.evaluation.lm_eval_tasks:run_mmlu",
        options=MMLUOptions,
        order=0,
        run_order=1,
        item_key="acc",
        chance=0.25,
        chance_note="random guess among 4 options",
        how_to_provide="set `data_dir` (or $IM_PIPELINE_DATA_DIR) to a directory with "
        "`mmlu/{dev,test}/<subject>_{dev,test}.csv`, or run online with `evaluation.mmlu.options.source=hub`",
        limit=5,
        default_options={"num_fewshot": 0},
    )
)
