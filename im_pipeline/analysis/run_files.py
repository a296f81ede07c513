"""A run directory read for the report (:func:`load_run` → :class:`RunResults`): the typed result files
(:mod:`im_pipeline.results`) and typed views of the other files, ``config.yaml`` (:class:`RunConfig`),
``data/data_stats.json`` (:class:`DataStats`), ``data/unavailable.json`` and ``timings.json`` (:class:`Timings`).

The views are lenient on purpose: the report rebuilds from run directories written by older versions, so unknown
keys are ignored and every field has the default the report prints when it is missing (a value written as null stays
None). The result files themselves are strict (:mod:`im_pipeline.results`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from im_pipeline.results import EvalResult, TrainSummary, read_eval_result
from im_pipeline.runs.layout import BASE_ARM, RunLayout, UnitLayout

Shown = float | int | str  # a config value printed as written (3.0 stays "3.0", 8 stays "8")


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- config.yaml ----------------------------------------------------------------------------------------------------


class ModelView(_View):
    source: str | None = "?"
    dtype: str | None = "?"


class DataView(_View):
    train: str | None = "?"
    n: int | None = None
    per_seed: bool = False
    held_out: str | None = None
    held_out_size: int | None = None
    max_length: Shown | None = "?"
    template: str | None = "?"


class ArmView(_View):
    name: str | None = None
    loss_mode: str | None = "?"
    prompt_loss_weight: int | float | None = None
    neftune_alpha: int | float | None = None
    kl_coef: int | float | None = None
    kl_form: str | None = "full"
    lr_scale: int | float | str | None = 1.0

    @property
    def plain(self) -> bool:
        """No NEFTune, no KL: an arm that differs from another only by its loss mode."""
        return not self.neftune_alpha and not self.kl_coef


class TrainingView(_View):
    epochs: Shown | None = "?"
    max_steps: int | None = None
    learning_rate: Shown | None = None
    batch_size: Shown | None = "?"
    gradient_accumulation_steps: Shown | None = 1
    loss_normalisation: str | None = None
    threads: int | None = None
    precision: str | None = None  # with a bfloat16 model: mixed | pure_bf16 (absent in runs before issue 20)


class StratumView(_View):
    name: str = "?"
    ratio_range: list[float | None] = Field(default_factory=list)
    arms: list[str] | None = None
    description: str = ""


class RunConfig(_View):
    """``config.yaml`` of a run: what the report prints from it."""

    name: str | None = None
    description: str = ""
    model: ModelView = Field(default_factory=ModelView)
    data: DataView = Field(default_factory=DataView)
    arms: list[ArmView] = Field(default_factory=list)
    training: TrainingView = Field(default_factory=TrainingView)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=list)
    study: dict[str, Any] | None = None
    strata: list[StratumView] | None = None  # an experiment with strata: runs/<name>/<stratum>/ each
    save_results: bool = False
    report_dir: str | None = None
    data_dir: str | None = None
    config_hash: str = Field(default="?", alias="_config_hash")
    resolved_data_dir: str | None = Field(default=None, alias="_resolved_data_dir")

    def arm(self, name: str) -> ArmView:
        """The arm's section (all defaults for an arm the config does not name)."""
        return next((a for a in self.arms if a.name == name), ArmView())

    def judge(self) -> Any:
        """The configured judge section, or None."""
        return self.evaluation.get("judge")

    def benchmark_enabled(self, name: str) -> bool:
        """Whether ``evaluation.<name>.enabled`` (a benchmark the config does not mention counts as enabled)."""
        section = self.evaluation.get(name)
        return not isinstance(section, dict) or bool(section.get("enabled", True))


# -- data/data_stats.json, data/unavailable.json ----------------------------------------------------------------------


class SplitStats(_View):
    n: int | None = None
    instruction_words_mean: float | None = None
    output_words_mean: float | None = None
    ratio: float | None = None
    counting_rule: str = ""


class Selection(_View):
    method: str | None = None
    n: int | None = None
    test_n: int | None = None
    available: Shown | None = "?"
    selected: Shown | None = "?"


class DataStats(_View):
    """``data/data_stats.json``: the prepared data's origin, selection and length statistics."""

    train_source: str | None = None
    held_out_source: str | None = "?"
    selection: Selection | None = None
    stats: dict[str, SplitStats | None] = Field(default_factory=dict)
    actions: dict[str, Any] = Field(default_factory=dict)  # per split what the policies did (counts, ids, origin)

    @property
    def train(self) -> SplitStats:
        return self.stats.get("train") or SplitStats()

    @property
    def train_origin(self) -> str | None:
        """Where the training set was read from (a path or ``hub:<id>``), when recorded."""
        action = self.actions.get("train")
        origin = action.get("origin") if isinstance(action, dict) else None
        return str(origin) if origin else None


class DataUnavailable(_View):
    """``data/unavailable.json``: why no arm could be trained."""

    train_source: str | None = None
    reason: str | None = None


# -- timings.json ------------------------------------------------------------------------------------------------------


class Stage(_View):
    seconds: float | None = None
    computed: int = 0
    cached: int = 0


class TaskRecord(_View):
    state: str | None = "?"
    error: str | None = None


class Machine(_View):
    platform: str | None = "?"
    python: str | None = "?"
    cpu_count: int | str | None = "?"
    torch_threads: int | None = None
    cuda: str | None = None


class FlowRunRef(_View):
    name: str | None = None
    url: str | None = None

    def link(self) -> str:
        """Markdown link to the flow run's page in the Prefect UI (its name when there is no UI URL)."""
        if self.url:
            return f"[{self.name or 'flow run'}]({self.url})"
        return f"flow run `{self.name}`" if self.name else ""


class FlowRunTimes(_View):
    started: str | None = "?"
    stages: dict[str, Stage] = Field(default_factory=dict)
    tasks: dict[str, TaskRecord] = Field(default_factory=dict)
    machine: Machine = Field(default_factory=Machine)
    flow_run: FlowRunRef = Field(default_factory=FlowRunRef)
    total_seconds: float | None = None
    command_seconds: float | None = None

    @field_validator("stages", "tasks", "machine", "flow_run", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def stage(self, name: str) -> Stage:
        return self.stages.get(name) or Stage()

    def failed_tasks(self) -> list[str]:
        """Task runs that did not finish (neither Completed nor Cached), by name."""
        return sorted(name for name, t in self.tasks.items() if t.state not in ("Completed", "Cached"))


class Timings(_View):
    """``timings.json``: wall time per stage of the recent flow runs, oldest first."""

    runs: list[FlowRunTimes] = Field(default_factory=list)

    @property
    def latest(self) -> FlowRunTimes | None:
        return self.runs[-1] if self.runs else None


# -- the run directory ------------------------------------------------------------------------------------------


BySeed = dict[int | None, EvalResult]  # seed (None for the base model) -> result


@dataclass
class RunResults:
    """Everything a report needs from one experiment's run directory."""

    experiment: str
    root: Path
    config: RunConfig = field(default_factory=RunConfig)
    arms: list[str] = field(default_factory=list)  # trained arms, config order
    seeds: list[int] = field(default_factory=list)
    # benchmark -> arm -> seed (None for the base model) -> result record
    results: dict[str, dict[str, BySeed]] = field(default_factory=dict)
    train_summaries: dict[str, dict[int, TrainSummary]] = field(default_factory=dict)
    train_logs: dict[str, dict[int, list[dict[str, Any]]]] = field(default_factory=dict)
    data_stats: DataStats | None = None
    data_unavailable: DataUnavailable | None = None  # data/unavailable.json: why no arm could be trained
    timings: Timings = field(default_factory=Timings)

    def arm_config(self, arm: str) -> ArmView:
        return self.config.arm(arm)

    def benchmarks(self) -> list[str]:
        return list(self.results)

    def by_arm(self, bench: str) -> dict[str, BySeed]:
        """Arm -> seed -> result of one benchmark (empty when the run has none)."""
        return self.results.get(bench, {})

    def by_seed(self, bench: str, arm: str | None) -> BySeed:
        """Seed -> result of one benchmark and arm (empty when the run has none)."""
        return self.by_arm(bench).get(arm, {}) if arm else {}

    def summaries(self, arm: str) -> dict[int, TrainSummary]:
        return self.train_summaries.get(arm, {})

    def records(self) -> list[EvalResult]:
        """Every result of the run, benchmark by benchmark."""
        return [r for by_arm in self.results.values() for by_seed in by_arm.values() for r in by_seed.values()]

    def first_ok(self, bench: str) -> EvalResult | None:
        """The first usable result of ``bench`` (its metric and unit stand for all)."""
        return next((r for by_seed in self.by_arm(bench).values() for r in by_seed.values() if ok(r)), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read result file {path}: {exc}") from exc


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON: {exc}") from exc
    return out


def is_run_root(path: Path) -> bool:
    """A directory that looks like ``runs/<experiment>/`` (a config, prepared data or an arm's results)."""
    layout = RunLayout(Path(path))
    if layout.config.is_file() or layout.data_stats.is_file():
        return True
    return any(layout.root.glob("*/seed-*/eval/*.json")) or any(layout.unit(BASE_ARM).eval_dir.glob("*.json"))


def read_config(root: Path) -> RunConfig:
    """``root/config.yaml`` as its view (all defaults when there is none)."""
    path = RunLayout(Path(root)).config
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return _view(RunConfig, raw or {}, path)


def strata_of(root: Path) -> list[str]:
    """The stratum names of an experiment with ``strata`` whose run root (or results directory) is ``root``, in the
    config's order; [] for any other directory."""
    return [s.name for s in read_config(root).strata or []]


def load_strata(root: Path) -> tuple[RunConfig, dict[str, RunResults]]:
    """An experiment with strata: its config (``root/config.yaml``) and each stratum's run (``root/<stratum>``,
    :func:`load_run`) that has any files yet, in the config's order."""
    root, config = Path(root), read_config(root)
    names = [s.name for s in config.strata or []]
    return config, {n: load_run(root / n) for n in names if (root / n).is_dir() and is_run_root(root / n)}


def load_run(root: Path) -> RunResults:
    """Read ``runs/<experiment>/``: config, data stats, per-arm/seed results, train logs, timings.

    Result files are read through their typed models (:mod:`im_pipeline.results`): an old or foreign one raises
    :class:`~im_pipeline.results.ResultFileError` naming it.
    """
    layout = RunLayout(Path(root))
    root = layout.root
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    if not is_run_root(root):
        raise ValueError(f"{root} is not an experiment run directory (no config.yaml, data/ or <arm>/seed-*/eval/)")
    config = read_config(root)
    run = RunResults(experiment=config.name or root.name, root=root, config=config)
    if layout.data_stats.is_file():
        run.data_stats = _view(DataStats, _read_json(layout.data_stats), layout.data_stats)
    if layout.data_unavailable.is_file():
        run.data_unavailable = _view(DataUnavailable, _read_json(layout.data_unavailable), layout.data_unavailable)
    if layout.timings.is_file():
        run.timings = _view(Timings, _read_json(layout.timings), layout.timings)
    configured = [a.name for a in config.arms if a.name is not None]
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("seed-*")))
    run.arms = [a for a in configured if a in found] + [a for a in found if a not in configured]
    seeds = {_load_unit(run, arm, UnitLayout.at(sd)) for arm in run.arms for sd in sorted((root / arm).glob("seed-*"))}
    for f in sorted(layout.unit(BASE_ARM).eval_dir.glob("*.json")):
        rec = read_eval_result(f)
        run.results.setdefault(rec.benchmark, {}).setdefault(BASE_ARM, {})[None] = rec
    run.seeds = sorted(s for s in seeds if s is not None)
    return run


_V = TypeVar("_V", bound=_View)


def _view(model: type[_V], data: Any, path: Path) -> _V:
    """``data`` (read from ``path``) as its view; a value of the wrong type is an error naming the file."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _load_unit(run: RunResults, arm: str, unit: UnitLayout) -> int | None:
    """One arm × seed directory: its train summary, train log and eval results (those that exist); its seed."""
    seed = unit.seed
    if seed is None:
        return None
    if unit.train_summary.is_file():
        run.train_summaries.setdefault(arm, {})[seed] = TrainSummary.read(unit.train_summary)
    if unit.train_log.is_file():
        run.train_logs.setdefault(arm, {})[seed] = _read_jsonl(unit.train_log)
    for f in sorted(unit.eval_dir.glob("*.json")):
        rec = read_eval_result(f)
        run.results.setdefault(rec.benchmark, {}).setdefault(arm, {})[seed] = rec
    return seed


def ok(rec: EvalResult | None) -> bool:
    """A result with a usable value (not skipped, not failed)."""
    return rec is not None and rec.ok
