"""Typed experiment configuration: one YAML per experiment, ``--set key=value`` overrides.

Every field carries help text (``description``), in the spirit of TRL's config dataclasses. Validation happens at
load time; :class:`ConfigError` names the bad key, the bad value and what is allowed. Modules: ``base`` (strict
models, names, the stable hash), ``sections`` (model, data, arm, training), ``evaluation`` (one entry per registered
benchmark, the judge), ``study`` (pre-registered hypotheses), ``experiment`` (the whole config), ``settings`` (the
environment's ``IM_PIPELINE_*`` settings, read there only and folded in at load), ``loading`` (YAML, overrides, one
validation). The names below are the package's public API.
"""

from im_pipeline.config.base import ConfigError, stable_hash
from im_pipeline.config.evaluation import BenchmarkConfig, EvaluationConfig, JudgeConfig
from im_pipeline.config.experiment import ExperimentConfig
from im_pipeline.config.loading import (
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    write_resolved_config,
)
from im_pipeline.config.sections import AdapterConfig, ArmConfig, DataConfig, ModelConfig, TrainingConfig
from im_pipeline.config.settings import DATA_DIR_ENV, Settings, default_cache_dir, default_max_workers

__all__ = [
    "DATA_DIR_ENV",
    "AdapterConfig",
    "ArmConfig",
    "BenchmarkConfig",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "JudgeConfig",
    "ModelConfig",
    "Settings",
    "TrainingConfig",
    "apply_overrides",
    "config_from_dict",
    "default_cache_dir",
    "default_max_workers",
    "load_config",
    "parse_override",
    "stable_hash",
    "write_resolved_config",
]
