"""The study section: pre-registered hypotheses and how they are tested (im_pipeline.analysis.hypotheses)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from im_pipeline.config.base import Strict


class PaperValues(Strict):
    reference: float = Field(description="The paper's value for the reference arm (IT).")
    treatment: float = Field(description="The paper's value for the treatment arm (IM).")
    source: str = Field("", description="Where in the paper, e.g. 'Additional Exp. 1, Dolly 3k'.")


class Hypothesis(Strict):
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


class StudyConfig(Strict):
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
    primary_test: Literal["items", "seeds"] = Field(
        "items",
        description="'items': the item-level sign-flip test stratified by seed, conditional on the trained models "
        "(CI: items resampled within seeds; 'reversed' = the same one-sided test and Holm in the other tail). "
        "'seeds': the one-sided t test on the seed deltas (the seed is the randomised unit; CI: a crossed seed × "
        "item bootstrap when every seed scored the same items, else the t interval; 'reversed' only from the "
        "two-sided t test, Holm-adjusted); the item-level test is then printed as secondary.",
    )
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
