"""One :class:`BenchmarkSpec` per benchmark: everything the pipeline knows about it, in one module.

A spec names its runner (``"module:function"``, imported on first use: lm-eval alone takes seconds to import), its
typed options model (checked when the config loads), its label, its place in the report and in a unit's run order,
the per-item score behind its headline value, its chance level, how to provide its data, and what besides the
model its results depend on (the judge, the run's training data). The config's ``evaluation`` section, the cache
keys, the CLI's choices, the aggregation and the report all read the registry below.

Adding a benchmark = one module here (an options model and a :func:`register` call) + its name in
:data:`BUILTIN`; the runner ``(ctx: EvalContext, cfg: BenchmarkConfig) -> dict`` returns at least ``metric``,
``value``, ``stderr`` and ``n``, and ``items`` (per-item scores) for paired statistics.

This package imports nothing heavier than pydantic: the config imports it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Options(BaseModel):
    """Base of every benchmark's options model: unknown keys and ``inf`` / ``nan`` are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class BenchmarkSpec:
    """What the pipeline knows about one benchmark."""

    name: str
    label: str  # in the report's tables
    runner: str  # "module:function"
    options: type[Options]
    order: int  # row in the report's tables
    run_order: int  # position in a unit's evaluations: cheap (loss-based) first, generation-heavy last
    item_key: str  # the per-item score (``items[item_key]`` of a result) behind the headline value
    how_to_provide: str  # what to do when it was skipped for lack of data
    chance: float | None = None  # on the scale of the result's value; None = no fixed chance level
    chance_note: str = ""
    item_scale: float = 1.0  # per-item score → the scale of the value (e.g. a 0-1 win share → a percent)
    limit: int | None = None  # the default ``limit`` of ``evaluation.<name>``
    default_options: dict[str, Any] = field(default_factory=dict)  # the default ``options`` of the config section
    uses_judge: bool = False  # its results depend on ``evaluation.judge`` (part of its cache key)
    uses_training_data: bool = False  # it reads the run's prepared training / held-out data (part of its key)

    @property
    def chance_percent(self) -> float | None:
        return None if self.chance is None else self.chance * 100.0

    def load_runner(self) -> Callable[..., dict[str, Any]]:
        module, func = self.runner.split(":")
        return getattr(importlib.import_module(module), func)

    def validate_options(self, options: dict[str, Any]) -> Options:
        """The typed options (defaults filled in); :class:`OptionsError` names every bad option (an unknown one
        with its closest valid options and all of them)."""
        try:
            return self.options.model_validate(options)
        except ValidationError as err:
            unknown = tuple(".".join(map(str, e["loc"])) for e in err.errors() if e["type"] == "extra_forbidden")
            raise OptionsError(_options_error(self, err), self.name, unknown) from None


class OptionsError(ValueError):
    """A benchmark's bad options: the message, the benchmark and its unknown option keys (the config's loader
    names the ``--set`` that wrote one)."""

    def __init__(self, message: str, benchmark: str, unknown: tuple[str, ...]) -> None:
        super().__init__(message)
        self.benchmark, self.unknown = benchmark, unknown

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (a task's exception may cross processes)
        return (OptionsError, (str(self), self.benchmark, self.unknown))


def _options_error(spec: BenchmarkSpec, err: ValidationError) -> str:
    parts = []
    valid = list(spec.options.model_fields)
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "options"
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)  # as unknown config keys (config.loading)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            parts.append(f"unknown option {key!r} (value {e['input']!r}){hint} (valid options: {', '.join(valid)})")
        else:
            shown = e.get("input")
            parts.append(f"option {key}: {e['msg']}" + ("" if isinstance(shown, dict) else f" (got {shown!r})"))
    return f"{spec.name}: " + "; ".join(parts)


_REGISTRY: dict[str, BenchmarkSpec] = {}


def register(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Add ``spec`` to the registry (its name must be new)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"benchmark {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BenchmarkSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(names())}") from None


def find_spec(name: str) -> BenchmarkSpec | None:
    """The spec of ``name``, or None (a result file of an unregistered benchmark is still reported)."""
    return _REGISTRY.get(name)


def specs() -> list[BenchmarkSpec]:
    """Every registered benchmark, in report order."""
    return sorted(_REGISTRY.values(), key=lambda s: s.order)


def names() -> list[str]:
    """Benchmark names in report order."""
    return [s.name for s in specs()]


def run_order(enabled: list[str] | None = None) -> list[str]:
    """Benchmark names in a unit's run order (only ``enabled`` ones when given)."""
    chosen = [s for s in _REGISTRY.values() if enabled is None or s.name in enabled]
    return [s.name for s in sorted(chosen, key=lambda s: s.run_order)]


BUILTIN = ("mmlu", "truthfulqa", "humaneval", "alpaca_eval", "overfitting")
"""The modules of this package that register a benchmark."""

for _module in BUILTIN:
    importlib.import_module(f"{__name__}.{_module}")
