"""The study section: pre-registered hypotheses and how they are tested (im_pipeline.analysis.hypotheses)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from im_pipeline.config.base import Strict


class PaperValues(Strict):
    reference: float = Field(description="The paper's value for the reference arm (IT).")
    treatment: float = Field(description="The paper's value for the treatment arm (IM).")
    source: str = Field("", description="Where in the paper, e.g. 'Additional Exp. 1, Dolly 3k'.")


Metric = Literal["train_loss", "test_loss", "bleu4", "in_domain_loss"]
METRIC_DESCRIPTION = (
    "Per-item score of the overfitting analysis: 'train_loss' (output-token loss of each training example), "
    "'test_loss' (of each held-out test example), 'in_domain_loss' (of each in-domain test example), 'bleu4' "
    "(sentence BLEU-4 of the greedy generation for each training prompt against its training output)."
)
Direction = Literal["greater", "less"]
BASE = "base"
"""A check's reference may be the base model (its results are the run's arm ``base``, seed None)."""

# New optional fields (issue 23) are left out of the dump when unset: the config key (and the unit keys) of every
# study without them stays what it was.
_OPTIONAL = ("stratum", "between_strata", "reference", "treatment", "equivalence_band")


class Hypothesis(Strict):
    id: str = Field(description="Short label, e.g. 'H1'.")
    metric: Metric = Field(description=METRIC_DESCRIPTION)
    direction: Direction = Field(
        description="Predicted sign of treatment − reference: 'greater' (treatment higher) or 'less'."
    )
    paper: PaperValues | None = Field(None, description="The paper's numbers, printed beside ours.")
    text: str = Field(description="The hypothesis in words.")
    stratum: str | None = Field(None, description="With strata: the stratum whose seeds are compared.")
    between_strata: tuple[str, str] | None = Field(
        None,
        description="With strata: [A, B], the hypothesis is about (treatment − reference in A) − (the same in B), "
        "tested on the two strata's seed deltas (Welch's two-sample t); 'direction' is that difference's sign.",
    )
    reference: str | None = Field(None, description="Reference arm of this hypothesis (null: the study's).")
    treatment: str | None = Field(None, description="Treatment arm of this hypothesis (null: the study's).")
    equivalence_band: float | None = Field(
        None,
        gt=0,
        description="b > 0: also report whether the effect lies within ±b (TOST at α: the 1 − 2α interval inside "
        "±b = equivalent, entirely outside = different, else inconclusive); outside the Holm family.",
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        return {k: v for k, v in out.items() if k not in _OPTIONAL or v is not None}

    @model_validator(mode="after")
    def _strata_fields(self) -> Hypothesis:
        if self.stratum is not None and self.between_strata is not None:
            raise ValueError(f"hypothesis {self.id}: give either stratum or between_strata, not both")
        if self.between_strata is not None and self.between_strata[0] == self.between_strata[1]:
            raise ValueError(
                f"hypothesis {self.id}: between_strata needs two distinct strata, got {self.between_strata}"
            )
        return self


class Check(Strict):
    """A manipulation check: a descriptive difference with a margin, not a hypothesis (no p-value, no Holm)."""

    id: str = Field(description="Short label, e.g. 'M1'.")
    text: str = Field(description="The check in words.")
    treatment: str | None = Field(None, description="Treatment arm (null: the study's).")
    reference: str | None = Field(
        None, description="Reference arm, or 'base' (the base model's result, paired by item id; null: the study's)."
    )
    metric: Metric = Field(description=METRIC_DESCRIPTION)
    direction: Direction = Field(description="Required sign of treatment − reference.")
    margin: float = Field(
        0.0,
        ge=0,
        description="Passed when the mean over seeds of treatment − reference is beyond this margin in 'direction' "
        "(≤ −margin for 'less', ≥ margin for 'greater'; strictly beyond 0 with margin 0).",
    )
    strata: list[str] | None = Field(None, description="Strata checked (null: every stratum).")


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
    checks: list[Check] = Field(
        default_factory=list,
        description="Manipulation checks (outside the Holm family); a failed check against 'base' makes the study "
        "uninformative.",
    )
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

    @model_serializer(mode="wrap")
    def _without_unset_checks(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if not self.checks:
            out.pop("checks", None)
        return out

    @model_validator(mode="after")
    def _unique_ids(self) -> StudyConfig:
        ids = [h.id for h in self.hypotheses] + [c.id for c in self.checks]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"hypothesis ids must be unique (across hypotheses and checks); repeated: {dup}")
        return self


def _stratum_errors(study: StudyConfig, arms_by_stratum: dict[str | None, list[str]]) -> list[str]:
    """What a study with strata names that its strata do not have."""
    errors: list[str] = []
    for h in study.hypotheses:
        named = [h.stratum] if h.stratum is not None else list(h.between_strata or ())
        if not named:
            errors.append(f"hypothesis {h.id} names neither stratum nor between_strata (the config has strata)")
        wanted = [h.treatment or study.treatment, h.reference or study.reference]
        errors += _missing_in_strata(f"hypothesis {h.id}", named, wanted, arms_by_stratum)
    for c in study.checks:
        wanted = [a for a in (c.treatment or study.treatment, c.reference or study.reference) if a != BASE]
        named = c.strata if c.strata is not None else list(arms_by_stratum)
        errors += _missing_in_strata(f"check {c.id}", named, wanted, arms_by_stratum)
    return errors


def _missing_in_strata(
    what: str, strata: Sequence[str | None], arms: list[str], arms_by_stratum: dict[str | None, list[str]]
) -> list[str]:
    """Each of ``strata`` the experiment does not have, and each of ``arms`` missing from one it has."""
    errors = []
    for s in strata:
        if s not in arms_by_stratum:
            errors.append(f"{what}: unknown stratum {s!r} (strata: {list(arms_by_stratum)})")
        else:
            errors += [f"{what}: arm {a!r} is not in stratum {s}" for a in arms if a not in arms_by_stratum[s]]
    return errors


def check_study_arms(study: StudyConfig, arms_by_stratum: dict[str | None, list[str]]) -> None:
    """ValueError when the study names an arm or stratum the experiment does not have. ``arms_by_stratum``: stratum
    name -> its arms; the key None alone = no strata (the experiment's arms; hypotheses may not name strata)."""
    if set(arms_by_stratum) == {None}:
        names = arms_by_stratum[None]
        missing = [a for a in [study.reference, study.treatment, *study.controls] if a not in names]
        if missing:
            raise ValueError(f"study names arm(s) {missing} that are not in arms {names}")
        # Without strata the study is im_pipeline.analysis.hypotheses', which reads none of these.
        only = [h.id for h in study.hypotheses if any(getattr(h, f) is not None for f in _OPTIONAL)]
        only += [c.id for c in study.checks]
        if only:
            raise ValueError(
                f"study: {only} use fields only a config with strata reads (checks; a hypothesis' "
                f"{', '.join(_OPTIONAL)}), but the config has no strata"
            )
        return
    if None in arms_by_stratum:
        raise ValueError("arms_by_stratum: the key None (no strata) cannot be mixed with stratum names")
    errors = _stratum_errors(study, arms_by_stratum)
    missing = [c for c in study.controls if any(c not in arms for arms in arms_by_stratum.values())]
    errors += [f"control arm {c!r} is not in every stratum" for c in missing]
    if errors:
        raise ValueError("study: " + "; ".join(errors))
