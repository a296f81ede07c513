"""TruthfulQA mc2 through lm-evaluation-harness (offline from the data directory's ``mc_task.json``)."""

from __future__ import annotations

from pydantic import Field

from im_pipeline.evaluation.specs import BenchmarkSpec, Options, register
from im_pipeline.evaluation.specs.mmlu import SOURCE_HELP, Source


class TruthfulQAOptions(Options):
    apply_chat_template: bool = Field(False, description="Wrap prompts in the tokenizer's chat template.")
    source: Source = Field("auto", description=SOURCE_HELP)


SPEC = register(
    BenchmarkSpec(
        name="truthfulqa",
        label="TruthfulQA",
        runner="im_pipeline.evaluation.lm_eval_tasks:run_truthfulqa",
        options=TruthfulQAOptions,
        order=1,
        run_order=2,
        item_key="mc2",
        chance=None,
        chance_note="mc2 has no fixed chance level: a uniform model puts (#true / #choices) of its mass on "
        "true answers, which varies per question",
        how_to_provide="set `data_dir` to a directory with `truthfulqa/mc_task.json`, or run online (`source=hub`)",
        limit=100,
    )
)
