"""Overfitting (paper, Additional Experiments 1 and 2): output-token train / held-out loss and BLEU-4 of
generations against the training outputs."""

from __future__ import annotations

from pydantic import Field

from im_pipeline.evaluation.specs import BenchmarkSpec, Options, register


class OverfittingOptions(Options):
    loss_examples: int = Field(128, ge=1, description="Examples for the train / held-out output-token loss.")
    max_new_tokens: int = Field(256, ge=1, description="Generation budget for BLEU.")
    bleu: bool = Field(
        True,
        description="Greedy generations and BLEU-4 for the training prompts; false: the output-token losses only "
        "(no generation; the result's headline metric is then the per-example test loss, the train loss without "
        "a test set).",
    )
    max_length: int = Field(512, ge=8, description="Maximum tokens per example for the loss.")
    sample_seed: int = Field(0, description="Seed of the example sample (same items for every arm).")
    train: str | None = Field(None, description="Training records for standalone use (the pipeline passes its own).")
    held_out: str | None = Field(None, description="Held-out records for standalone use.")
    held_out_kind: str | None = Field(None, description="Label of the held-out records for standalone use.")


SPEC = register(
    BenchmarkSpec(
        name="overfitting",
        label="Memorisation (BLEU-4 vs training outputs)",
        runner="im_pipeline.evaluation.overfitting:run_overfitting",
        options=OverfittingOptions,
        order=4,
        run_order=0,
        item_key="bleu4",
        how_to_provide="needs the prepared training / held-out data of the run",
        limit=16,
        uses_training_data=True,
    )
)
