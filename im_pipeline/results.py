"""Typed result files: ``train_summary.json`` (:class:`TrainSummary`) and ``eval/<benchmark>.json``
(:class:`EvalResult` and one subclass per benchmark whose record differs), written and read only through here.

Every file carries :data:`SCHEMA_VERSION`. A file without one (written before results were typed), with another
version, or whose fields do not fit its model is refused with :class:`ResultFileError`, which names the file, what
is wrong and how to replace it (re-run that unit). A record is written with the fields that were given (plus the
schema version), so a file round-trips unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from im_pipeline.provenance import write_json

SCHEMA_VERSION = 1
"""The version of every result file's layout; raise it when a field changes meaning or type."""

ItemScores = dict[str, dict[str, float]]  # score name -> item id -> score (the paired comparisons' input)


class ResultFileError(ValueError):
    """A result file that cannot be read as this version's model: old, foreign or malformed."""


class _Record(BaseModel):
    """What every result file shares: strict fields, the schema version, writing and reading."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: ClassVar[str] = "result"
    rerun: ClassVar[str] = "--force"

    schema_version: int = SCHEMA_VERSION

    def write(self, path: Path) -> Path:
        """Write the record atomically as JSON: the schema version and every field that was set."""
        return write_json(Path(path), self.to_json())

    def to_json(self) -> dict[str, Any]:
        """The record as written: ``schema_version`` first, then the fields that were set, by name (not alias)."""
        body = self.model_dump(mode="json", exclude_unset=True, by_alias=True)
        body.pop("schema_version", None)
        return {"schema_version": self.schema_version, **body}

    @classmethod
    def read(cls: type[_R], path: Path) -> _R:
        """Read and validate ``path``; :class:`ResultFileError` names the file and what to do when it does not fit."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultFileError(f"cannot read result file {path}: {exc}") from exc
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls: type[_R], data: Any, path: Path | str = "<record>", advice: str | None = None) -> _R:
        """Validate ``data`` (read from ``path``); ``advice`` replaces the default "re-run that unit" in errors."""
        check_version(data, path, cls.kind, cls.rerun)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            fix = advice or _redo(cls.rerun)
            raise ResultFileError(f"{path}: not a valid {cls.kind} record: {_errors(exc)}. {fix}") from exc


_R = TypeVar("_R", bound=_Record)


def _redo(rerun: str) -> str:
    return f"Re-run that unit: `im-pipeline run CONFIG {rerun}` (or `--force`)."


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r:.60})")
    return "; ".join(parts)


def check_version(data: Any, path: Path | str, kind: str, rerun: str) -> None:
    """Refuse a record that is not a JSON object of this :data:`SCHEMA_VERSION`, naming ``path`` and the fix."""
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: not a {kind} record (a JSON {type(data).__name__}). {_redo(rerun)}")
    version = data.get("schema_version")
    if version is None:
        raise ResultFileError(
            f"{path}: {kind} written without a schema_version (by an im-pipeline older than schema version "
            f"{SCHEMA_VERSION}). {_redo(rerun)}"
        )
    if version != SCHEMA_VERSION:
        raise ResultFileError(
            f"{path}: {kind} has schema_version {version!r}, this im-pipeline reads {SCHEMA_VERSION}. {_redo(rerun)}"
        )


# -- train_summary.json ----------------------------------------------------------------------------------------


class EncodingStats(BaseModel):
    """How many examples of one split survived encoding (truncation, drops)."""

    model_config = ConfigDict(extra="forbid")
    n_in: int
    n_truncated: int
    n_dropped_overlength: int
    n_dropped_no_output: int
    n_out: int


class Encoding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: EncodingStats
    held_out: EncodingStats


class LrScaleTokens(BaseModel):
    """The token counts behind ``lr_scale: output_over_im_release`` on one seed's sample."""

    model_config = ConfigDict(extra="forbid")
    output_tokens: int
    im_release_tokens: int
    ratio: float


class TrainSummary(_Record):
    """``<arm>/seed-<s>/train_summary.json``: what one training unit did and measured; ``key`` is its training key
    (older writers called it ``fingerprint``; that name is accepted on input)."""

    kind: ClassVar[str] = "train_summary.json"
    rerun: ClassVar[str] = "--rerun train"

    arm: str
    seed: int
    mode: str | None = None
    prompt_loss_weight: float | None = None
    neftune_alpha: float | None = None
    kl_coef: float | None = None
    kl_form: str | None = None
    loss_normalisation: str | None = None
    lr_scale: float | str | None = None
    lr_scale_factor: float | None = None
    lr_scale_tokens: LrScaleTokens | None = None
    learning_rate: float | None = None
    model: str | None = None
    steps: int | None = None
    epochs: float | None = None
    final_train_loss: float | None = None
    mean_train_loss: float | None = None
    final_held_out_loss: float | None = None
    final_held_out_loss_per_example: float | None = None
    held_out_loss_on: str | None = None
    train_tokens: int | None = None
    train_seconds: float | None = None
    tokens_per_s: float | None = None
    padding_fraction: float | None = None
    wall_time_s: float | None = None
    resumed_from: str | None = None
    threads: int | None = None
    world_size: int | None = None
    host: str | None = None
    pid: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    n_train: int | None = None
    n_held_out: int | None = None
    encoding: Encoding | None = None
    key: str | None = Field(default=None, validation_alias=AliasChoices("key", "fingerprint"))
    checkpoint: str | None = None
    trainable_params: int | None = None  # parameters the optimiser updates (the adapters' with training.peft)
    trainable_fraction: float | None = None  # trainable_params / all parameters of the model


# -- eval/<benchmark>.json -------------------------------------------------------------------------------------


class EvalResult(_Record):
    """``eval/<benchmark>.json``: one benchmark on one model (the fields every benchmark writes). ``status`` is ``ok``
    or ``skipped`` (then ``reason`` says why and how to provide the inputs). ``items`` holds per-item scores (score
    name → item id → score), the input of every paired IM − IT comparison."""

    kind: ClassVar[str] = "eval result"
    rerun: ClassVar[str] = "--rerun eval"

    benchmark: str
    status: Literal["ok", "skipped"] = "ok"
    reason: str | None = None
    limit: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    arm: str | None = None
    seed: int | None = None
    config_hash: str | None = None
    metric: str | None = None
    value: float | None = None
    stderr: float | None = None
    n: int = 0
    items: ItemScores | None = None
    wall_time_s: float | None = None
    host: str | None = None
    pid: int | None = None
    git_commit: str | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)

    LAST: ClassVar[tuple[str, ...]] = ("items", "examples", "wall_time_s", "host", "pid", "git_commit", "versions")

    def to_json(self) -> dict[str, Any]:
        """As :meth:`_Record.to_json`, with the per-item scores and the provenance last (as the writers order them)."""
        body = super().to_json()
        return {**{k: v for k, v in body.items() if k not in self.LAST}, **{k: body[k] for k in self.LAST if k in body}}

    @property
    def ok(self) -> bool:
        """A result with a usable value (not skipped)."""
        return self.status == "ok" and self.value is not None


class SubjectScore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    acc: float
    stderr: float | None = None
    n: int


class LmEvalResult(EvalResult):
    """MMLU and TruthfulQA through lm-evaluation-harness."""

    apply_chat_template: bool | None = None
    source: str | None = None
    tasks: str | None = None
    lm_eval_output: str | None = None


class MmluResult(LmEvalResult):
    num_fewshot: int | None = None
    subjects: dict[str, SubjectScore] | None = None


class HumanEvalResult(EvalResult):
    samples_per_problem: int | None = None
    best_temperature: float | None = None
    per_temperature: dict[str, dict[str, float]] | None = None
    per_problem_pass1: dict[str, float] | None = Field(default=None, alias="per_problem_pass@1")
    status_counts: dict[str, int] | None = None
    prompt_format: str | None = None
    sandbox_isolation: dict[str, bool] | None = None
    samples_file: str | None = None
    generation_time_s: float | None = None
    execution_time_s: float | None = None


class AvgLength(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_chars: float
    reference_chars: float
    model_words: float
    reference_words: float


class AlpacaGeneration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str
    max_new_tokens: int
    temperature: float
    seconds: float


class AlpacaEvalResult(EvalResult):
    unit: str | None = None
    version: str | None = None
    reference: str | None = None
    annotator: str | None = None
    both_orders: bool | None = None
    judge: dict[str, Any] | str | None = None
    discrete_win_rate: float | None = None
    n_wins: int | None = None
    n_wins_base: int | None = None
    n_draws: int | None = None
    n_unparsed: int | None = None
    judge_prefers_first_shown: float | None = None
    judge_verdicts_with_position: int | None = None
    judge_position_biased: bool = False
    length_controlled_win_rate: float | None = None
    lc_standard_error: float | None = None
    lc_unavailable: str | None = None
    lc_note: str | None = None
    avg_length: AvgLength | None = None
    instructions_source: str | None = None
    generation: AlpacaGeneration | None = None
    judge_calls: int | None = None
    judge_seconds: float | None = None
    artifacts: dict[str, str] | None = None


class BleuDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpus_precisions: list[float]
    corpus_brevity_penalty: float
    hyp_len: int
    ref_len: int
    signature: str


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = None
    generation: str
    reference: str


class OverfittingResult(EvalResult):
    bleu4_definition: str | None = None
    bleu4_corpus: float | None = None
    train_loss: float | None = None
    test_loss: float | None = None
    loss_gap: float | None = None
    train_loss_token_mean: float | None = None
    test_loss_token_mean: float | None = None
    loss_gap_token_mean: float | None = None
    loss_reduction: str | None = None
    n_train_loss: int | None = None
    n_test_loss: int | None = None
    in_domain_loss: float | None = None
    in_domain_loss_token_mean: float | None = None
    n_in_domain_loss: int | None = None
    held_out_kind: str | None = None
    bleu: BleuDetail | None = None
    max_new_tokens: int | None = None
    template: str | None = None
    examples: list[Example] | None = None


RESULT_TYPES: dict[str, type[EvalResult]] = {
    "mmlu": MmluResult,
    "truthfulqa": LmEvalResult,
    "humaneval": HumanEvalResult,
    "alpaca_eval": AlpacaEvalResult,
    "overfitting": OverfittingResult,
}
"""Benchmark → its result model; any other name is read as the common :class:`EvalResult`."""


def result_type(benchmark: str) -> type[EvalResult]:
    return RESULT_TYPES.get(benchmark, EvalResult)


def eval_result(data: Any, path: Path | str = "<record>", advice: str | None = None) -> EvalResult:
    """Validate one eval record (a dict with ``benchmark``) as its benchmark's model."""
    check_version(data, path, EvalResult.kind, EvalResult.rerun)
    return result_type(str(data.get("benchmark", ""))).from_json(data, path, advice)


NEW_RECORD_ADVICE = "The writer and its model in im_pipeline/results.py disagree: declare the field there (a code fix)"


def new_eval_result(data: dict[str, Any]) -> EvalResult:
    """A record being written now: ``data`` validated as its benchmark's model, stamped with this schema version."""
    return eval_result(
        {**data, "schema_version": SCHEMA_VERSION}, f"new {data.get('benchmark')} result", NEW_RECORD_ADVICE
    )


def read_eval_result(path: Path) -> EvalResult:
    """Read ``eval/<benchmark>.json`` as its benchmark's model (:class:`ResultFileError` if it does not fit)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultFileError(f"cannot read result file {path}: {exc}") from exc
    if isinstance(data, dict) and "benchmark" not in data:
        data = {**data, "benchmark": path.stem}
    return eval_result(data, path)


def new_train_summary(data: dict[str, Any]) -> TrainSummary:
    """A summary being written now, stamped with this schema version."""
    stamped = {**data, "schema_version": SCHEMA_VERSION}
    return TrainSummary.from_json(stamped, "new train_summary.json", NEW_RECORD_ADVICE)


__all__ = [
    "SCHEMA_VERSION",
    "AlpacaEvalResult",
    "EvalResult",
    "HumanEvalResult",
    "LmEvalResult",
    "MmluResult",
    "OverfittingResult",
    "ResultFileError",
    "TrainSummary",
    "eval_result",
    "new_eval_result",
    "new_train_summary",
    "read_eval_result",
    "result_type",
]
