"""TruthfulQA mc2 through lm-evaluation-harness (offline from the data directory's ``mc_task.json``)."""

from __future__ import annotations

from im_pipeline.evaluation.specs import BenchmarkSpec, register
from im_pipeline.evaluation.specs.mmlu import LmEvalOptions


class TruthfulQAOptions(LmEvalOptions):
    """lm-eval's options alone (``truthfulqa_mc2`` is 0-shot over every question)."""


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
