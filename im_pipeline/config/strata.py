"""The ``strata`` section: one experiment run as several strata, each its own run root (``runs/<name>/<stratum>``)
with its own ratio range and arms (:meth:`~im_pipeline.config.experiment.ExperimentConfig.stratum_configs`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from im_pipeline.config.base import NAME_CHARS, Strict
from im_pipeline.config.sections import check_dir_name, check_ratio_range


class StratumConfig(Strict):
    name: str = Field(
        description=f"Stratum name: runs/<experiment>/<name>/, the report's '## Stratum <name>'; {NAME_CHARS}."
    )
    ratio_range: tuple[float, float | None] = Field(
        description="[low, high]: this stratum's data.ratio_range (per-example instruction/output word ratio, "
        "low ≤ ratio ≤ high, high null = no upper bound): its seeds draw their training and in-domain test samples "
        "from these examples only."
    )
    arms: list[str] | None = Field(
        None, min_length=1, description="Names of top-level arms run in this stratum (null = every arm)."
    )
    description: str = Field("", description="Free text shown under the stratum's heading in the report.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_dir_name(value, "stratum name")

    @field_validator("ratio_range")
    @classmethod
    def _check_ratio_range(cls, value: tuple[float, float | None]) -> tuple[float, float | None]:
        check_ratio_range(value)
        return value
