"""The experiment config: every section, validated together, and the values derived from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from im_pipeline.config.base import NAME_CHARS, Strict, check_name, stable_hash
from im_pipeline.config.evaluation import EvaluationConfig
from im_pipeline.config.sections import ArmConfig, DataConfig, ModelConfig, TrainingConfig
from im_pipeline.config.settings import DATA_DIR_ENV, MAX_WORKERS_ENV, Settings, default_cache_dir
from im_pipeline.config.strata import StratumConfig
from im_pipeline.config.study import StudyConfig, check_study_arms
from im_pipeline.loss_modes import LossMode


class OrchestrationConfig(Strict):
    work_pool: str | None = Field(
        None,
        description="Prefect work pool: every unit (an arm × seed's training and evaluations, and the base model's "
        "evaluations) runs as its own flow run on the pool's workers, which share the run directory's filesystem "
        "(needs PREFECT_API_URL). null = all units in the im-pipeline process.",
    )
    heartbeat_s: int = Field(
        30, ge=30, description="Heartbeat interval of unit flow runs (PREFECT_FLOWS_HEARTBEAT_FREQUENCY; minimum 30)."
    )
    heartbeat_timeout_s: float = Field(
        180.0,
        gt=0,
        description="A unit flow run still Running with no heartbeat for this long is marked Crashed and submitted "
        "again (it resumes from its last checkpoint). Not while it holds its unit lock (same host): heartbeats "
        "arrive late on a loaded machine.",
    )
    max_attempts: int = Field(3, ge=1, description="Flow runs per unit before it counts as failed (crashes only).")
    poll_s: float = Field(5.0, gt=0, description="How often the parent flow checks its units' states.")
    max_workers: int | None = Field(
        None,
        ge=1,
        description=f"Concurrent task runs in one flow run (null: ${MAX_WORKERS_ENV}, else 1, filled in at load). 1 "
        "on a CPU box (runs would fight for the cores); raise it on a multi-GPU machine; across machines use a "
        "work pool.",
    )


class ExperimentConfig(Strict):
    name: str = Field(description=f"Experiment name: runs/<name>/, reports/<name>/; {NAME_CHARS}.")
    description: str = Field("", description="Free text shown in the report.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    arms: list[ArmConfig] = Field(
        default_factory=lambda: [
            ArmConfig(name="IT", loss_mode=LossMode.it),
            ArmConfig(name="IM", loss_mode=LossMode.im),
        ],
        min_length=1,
        description="The arms compared; they differ in loss mode and extras.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    orchestration: OrchestrationConfig = Field(
        default_factory=OrchestrationConfig, description="Where units run (in-process or on a work pool)."
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="One run per arm per seed.")
    strata: list[StratumConfig] | None = Field(
        None,
        min_length=1,
        description="Run the experiment once per stratum, each a full run root runs/<name>/<stratum>/ with the "
        "stratum's ratio_range as data.ratio_range (then null here) and its arms; needs data.per_seed. Results in "
        "<report_dir>/<name>/results/<stratum>/; REPORT.md: the study across strata, then each stratum's sections. "
        "null = one run root.",
    )
    stratum: str | None = Field(
        None,
        description="Set only in the per-stratum configs that `strata` expands into (runs/<name>/<stratum>/); "
        "null in a written config.",
    )
    study: StudyConfig | None = Field(
        None, description="Pre-registered hypotheses, tested and printed at the top of the report (null = none)."
    )
    save_results: bool = Field(
        False,
        description="Copy the small result files (config, data stats, train summaries and logs, evaluation JSONs, "
        "timings; no weights) into <report_dir>/<name>/results/ as each unit finishes and with every report: commit "
        "them, and `im-pipeline report <that dir> --out DIR` rebuilds the same REPORT.md.",
    )
    output_dir: str = Field("runs", description="Root of run directories.")
    report_dir: str = Field("reports", description="Root of generated reports.")
    data_dir: str | None = Field(
        None,
        description=f"Offline data directory (null: --data-dir, else ${DATA_DIR_ENV}, made absolute at load); "
        "null after loading = Hub only.",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_name(value, "experiment name")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        dup = sorted({s for s in value if value.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be unique (each is one run per arm); repeated: {dup}")
        return value

    @model_validator(mode="after")
    def _unique_arms(self) -> ExperimentConfig:
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {dup}")
        it_w = [a.name for a in self.arms if a.loss_mode is LossMode.it_w]
        if it_w and self.training.loss_normalisation != "sequence":
            raise ValueError(f"arm(s) {it_w}: loss_mode it_w needs training.loss_normalisation 'sequence'")
        if self.study is not None:
            check_study_arms(self.study, self.arms_by_stratum())
            if not self.evaluation.overfitting.enabled:
                raise ValueError("study: the hypotheses are tested on the overfitting analysis, which is disabled")
        return self

    @model_validator(mode="after")
    def _check_strata(self) -> ExperimentConfig:
        if self.strata is None:
            return self
        if self.stratum is not None:
            raise ValueError("stratum is set by the expansion of strata: a config sets strata or stratum, not both")
        names = [s.name for s in self.strata]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stratum names must be unique; repeated: {dup}")
        arms = [a.name for a in self.arms]
        for s in self.strata:
            missing = [a for a in s.arms or [] if a not in arms]
            if missing:
                raise ValueError(f"stratum {s.name!r} names arm(s) {missing} that are not in arms {arms}")
        if self.data.ratio_range is not None:
            raise ValueError("with strata, data.ratio_range must be null: each stratum sets its own ratio_range")
        if not self.data.per_seed:
            raise ValueError("with strata, data.per_seed must be true (each seed draws its samples from the stratum)")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_strata(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # No strata, no keys: every config without them serialises (and hashes, data and unit keys) as before.
        out = handler(self)
        for key in ("strata", "stratum"):
            if getattr(self, key) is None:
                out.pop(key, None)
        return out

    @model_validator(mode="after")
    def _precision(self) -> ExperimentConfig:
        if self.training.precision == "pure_bf16" and self.model.dtype != "bfloat16":
            raise ValueError(f"training.precision pure_bf16 needs model.dtype bfloat16, not {self.model.dtype}")
        return self

    # -- derived values (from the fields only: loading folded the environment in) -----------------
    @property
    def settings(self) -> Settings:
        """The settings this config resolved at load (data directory, launcher, model cache, workers), frozen."""
        return Settings(
            data_dir=self.resolved_data_dir(),
            train_launcher=self.train_launcher(),
            cache_dir=Path(self.model.cache_dir).expanduser() if self.model.cache_dir else default_cache_dir(),
            max_workers=self.orchestration.max_workers or 1,
        )

    def resolved_data_dir(self) -> Path | None:
        """The data directory (``data_dir``, which loading resolved), or None (Hub only)."""
        return Path(self.data_dir).expanduser().resolve() if self.data_dir else None

    def train_launcher(self) -> str | None:
        """The training launcher (``training.launcher``, which loading resolved), or None (in the task's process)."""
        value = (self.training.launcher or "").strip()
        return value or None

    def results_dir(self) -> Path:
        """Where ``save_results`` copies the small result files: ``<report_dir>/<name>/results`` (a stratum's:
        ``<report_dir>/<name>/results/<stratum>``)."""
        root = Path(self.report_dir) / self.name / "results"
        return root / self.stratum if self.stratum else root

    def run_label(self) -> str:
        """``<name>``, or ``<name>/<stratum>`` for a stratum's config: how logs and Prefect run names call it."""
        return f"{self.name}/{self.stratum}" if self.stratum else self.name

    def arms_by_stratum(self) -> dict[str | None, list[str]]:
        """Each stratum's arm names (``{None: every arm}`` without strata)."""
        names = [a.name for a in self.arms]
        if not self.strata:
            return {None: names}
        return {s.name: [a for a in names if s.arms is None or a in s.arms] for s in self.strata}

    def stratum_configs(self) -> dict[str, ExperimentConfig]:
        """One complete config per stratum (``{}`` without strata), in the config's order: the stratum's ratio
        range and arms, no study (it spans the strata: the report tests it), ``stratum`` set, so that its run root
        is ``<output_dir>/<name>/<stratum>`` and its results ``<report_dir>/<name>/results/<stratum>``. Everything
        downstream (data, units, keys, locks, resubmission, ``--rerun``) runs on these without knowing strata."""
        out: dict[str, ExperimentConfig] = {}
        for s in self.strata or []:
            data = self.to_dict()
            data.pop("strata", None)
            data |= {"stratum": s.name, "study": None, "description": s.description}
            data["data"]["ratio_range"] = list(s.ratio_range)
            data["arms"] = [a for a in data["arms"] if s.arms is None or a["name"] in s.arms]
            out[s.name] = ExperimentConfig.model_validate(data)
        return out

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"no arm named {name!r}; arms: {[a.name for a in self.arms]}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (what goes into every result JSON)."""
        return stable_hash(self.to_dict())
