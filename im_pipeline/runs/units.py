"""What one unit of work does, start to end: prepare the data, train one arm × seed, run one benchmark on one model.

Each takes the unit's lock (a concurrent run of the same experiment waits, then finds the unit done), skips it when
its output exists under its key (:mod:`im_pipeline.runs.staleness`), otherwise computes it and stamps the key: this
is the one place that decides whether a unit is done. A job marked ``replace`` (``im-pipeline run --force`` /
``--rerun STAGE``, see :func:`rerun_stages`) is recomputed even when its stamp matches. The Prefect tasks
(``tasks/``) call these and nothing else, so a unit behaves the same in a flow, a test or a notebook. Each returns
True when it computed (False: already done).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from im_pipeline.config import ExperimentConfig
from im_pipeline.devices import eval_lease, gpu_lease, resolve_eval_dtype, train_gpus
from im_pipeline.locking import unit_lock
from im_pipeline.provenance import write_json
from im_pipeline.runs.layout import RunLayout
from im_pipeline.runs.staleness import (
    DATA_SEED,
    base_key,
    clear_stale_run,
    eval_key,
    files_hash,
    is_done,
    train_key,
    write_stamp,
)

Say = Callable[[str], None] | None

STAGES = ("data", "train", "eval", "report")
"""What ``--rerun`` names (besides a benchmark): the stages of a run."""


def rerun_stages(rerun: Iterable[str] = (), *, force: bool = False) -> frozenset[str]:
    """The stages and benchmarks to recompute although their stamps match: ``--rerun`` values (a stage of
    :data:`STAGES` or a benchmark name), every stage with ``force``. An unknown name is a ValueError naming the
    allowed ones."""
    from im_pipeline.evaluation.specs import names

    wanted = set(STAGES) if force else set(rerun)
    allowed = [*STAGES, *names()]
    unknown = sorted(wanted - set(allowed))
    if unknown:
        raise ValueError(f"--rerun {', '.join(unknown)}: not a stage or benchmark; allowed: {', '.join(allowed)}")
    return frozenset(wanted)


@dataclass(frozen=True)
class TrainJob:
    """One arm × seed's training under its key (``replace``: retrain from nothing even when done)."""

    arm: str
    seed: int
    key: str
    replace: bool = False


@dataclass(frozen=True)
class EvalJob:
    """One benchmark on one model: an arm × seed's checkpoint, or the base model (``arm`` = ``base``, no seed)."""

    arm: str
    seed: int | None
    benchmark: str
    key: str
    model: str  # what to load: the checkpoint directory or the base model's source
    model_key: str  # what identifies its weights (the training key, or the base key)
    replace: bool = False  # recompute even when done under this key


def prepare_unit(
    cfg: ExperimentConfig, key: str, *, replace: bool = False, on_wait: Say = None
) -> tuple[bool, dict[str, Any]]:
    """Write ``data/train.jsonl``, ``held_out.jsonl`` and ``data_stats.json``; returns (computed, result) with the
    result ``{"data_hash": <content hash>}``, or ``{"data_hash": None, "unavailable": why}`` when a registered
    training set has neither a local copy nor a reachable Hub (``data/unavailable.json`` says why and how to provide
    it; the flow then evaluates the base model only). ``replace``: prepare again even when done under ``key``."""
    from im_pipeline.data import DataError, local_copy_missing, prepare_data

    layout = RunLayout.of(cfg)
    data_files = (layout.train_data, layout.held_out_data)
    with unit_lock(layout.data_lock, on_wait=on_wait):  # concurrent runs prepare once
        computed = replace or not data_done(cfg, key)
        if computed:
            try:
                prepare_data(cfg.data, cfg.resolved_data_dir(), DATA_SEED, out_dir=layout.data)
            except DataError as exc:
                if not local_copy_missing(cfg.data, cfg.resolved_data_dir()):
                    raise
                for stale in (*data_files, layout.data_stats):
                    stale.unlink(missing_ok=True)
                write_json(layout.data_unavailable, {"train_source": cfg.data.train, "reason": str(exc)})
                return computed, {"data_hash": None, "unavailable": str(exc)}
            layout.data_unavailable.unlink(missing_ok=True)
            write_stamp(layout.data, "data", key)
    return computed, {"data_hash": files_hash(*data_files)}


def train_unit(cfg: ExperimentConfig, job: TrainJob, *, on_wait: Say = None, say: Say = None) -> bool:
    """Train (or resume, or skip when done under the same key) one arm × seed into ``<arm>/seed-<s>/``."""
    layout = RunLayout.of(cfg)
    unit = layout.unit(job.arm, job.seed)
    with unit_lock(unit.lock, on_wait=on_wait):
        if cfg.save_results:  # a unit finished in an earlier session: its committed files make it "done"
            from im_pipeline.evaluation.specs import names
            from im_pipeline.report.results import restore_unit

            benches = [b for b in names() if getattr(cfg.evaluation, b).enabled]
            restore_unit(cfg.results_dir(), layout.root, f"{job.arm}/seed-{job.seed}", benches)
        if not job.replace and train_done(cfg, job):
            return False
        from im_pipeline.data import seed_data
        from im_pipeline.training import train_arm

        if clear_stale_run(unit.dir, job.key, replace=job.replace) and say:
            why = "replaced on request" if job.replace else "settings changed"
            say(f"{job.arm}/seed-{job.seed}: {why}, removed the old run directory {unit.dir}")
        write_stamp(unit.dir, "train-started", job.key)  # an interrupted run with this key resumes
        launcher = cfg.train_launcher()
        # The unit's own GPUs: the launcher sees only them (CUDA_VISIBLE_DEVICES); in-process training uses the one
        # GPU of its process (more are refused by train_arm), held so that no concurrent evaluation lands on it.
        only = None if launcher else [0]
        with gpu_lease(train_gpus(_processes(launcher)), only=only, on_wait=on_wait) as lease:
            if launcher:  # torchrun / accelerate launch: one process per device, rank 0 writes the outputs
                from im_pipeline.training.launch import launch

                launch(launcher, cfg, job.arm, job.seed, unit.dir, layout.data, key=job.key, env=lease.env)
            else:
                train, held_out = seed_data(cfg.data, layout.data, job.seed)
                train_arm(cfg, cfg.arm(job.arm), job.seed, train, held_out, unit.dir, key=job.key)
        write_stamp(unit.dir, "train", job.key)
    return True


def _processes(launcher: str | None) -> int | None:
    """Processes the launcher starts (1 when it does not say: then all visible GPUs), None in-process."""
    if not launcher:
        return None
    from im_pipeline.plan.build import engine_of

    return engine_of(launcher, None)[1]


def evaluate_unit(cfg: ExperimentConfig, job: EvalJob, models: Any = None, *, on_wait: Say = None) -> bool:
    """Run ``job.benchmark`` on ``job.model`` and write ``eval/<benchmark>.json`` (skipped when done).

    ``models``: the unit's :class:`~im_pipeline.evaluation.common.ModelCache` (its benchmarks load the model once);
    never shared between units.
    """
    from im_pipeline.evaluation.common import ModelCache, OverfittingInputs
    from im_pipeline.evaluation.specs import get_spec

    layout = RunLayout.of(cfg)
    unit = layout.unit(job.arm, job.seed)
    with unit_lock(unit.eval_lock(job.benchmark), on_wait=on_wait):
        if not job.replace and eval_done(cfg, job):
            return False
        overfitting = None
        if get_spec(job.benchmark).uses_training_data and layout.train_data.is_file():
            from im_pipeline.data import held_out_kind, in_domain_data, seed_data

            # The seed's own samples with data.per_seed (the base model, seedless, takes the first seed's training
            # sample and the union of every seed's in-domain sample).
            train, held_out = seed_data(cfg.data, layout.data, cfg.seeds[0] if job.seed is None else job.seed)
            in_domain = in_domain_data(cfg.data, layout.data, cfg.seeds if job.seed is None else [job.seed])
            overfitting = OverfittingInputs(train, held_out, held_out_kind(cfg.data), in_domain)
        models = models if models is not None else ModelCache()
        with eval_lease(cfg.evaluation.device, on_wait=on_wait) as lease:
            try:
                _evaluate(cfg, job, unit.eval_dir, models, overfitting, lease.device)
            finally:
                if lease.indices:  # the GPU goes to the next job with nothing of this unit left on it
                    models.clear()
        write_stamp(unit.eval_dir, job.benchmark, job.key)
    return True


def _evaluate(cfg: ExperimentConfig, job: EvalJob, out_dir: Path, models: Any, overfitting: Any, device: str) -> None:
    """One benchmark on ``device`` (the unit's leased GPU, or the CPU) in the evaluation dtype resolved there."""
    from im_pipeline.evaluation.common import EvalContext, run_benchmark

    ev = cfg.evaluation
    ctx = EvalContext(
        model_source=job.model,
        out_dir=out_dir,
        data_dir=cfg.resolved_data_dir(),
        arm=job.arm,
        seed=job.seed,
        config_hash=job.key,
        template=cfg.data.template,
        batch_size=ev.batch_size,
        kv_cache_bytes=int(ev.kv_cache_gib * 2**30) if ev.kv_cache_gib else None,
        judge=ev.judge,
        dtype=resolve_eval_dtype(ev.dtype, device),
        device=device,
        attn_implementation=cfg.model.attn_implementation,
        cache_dir=cfg.model.cache_dir,
        overfitting=overfitting,
        cache=models,
        model_key=job.model_key,
    )
    run_benchmark(job.benchmark, ctx, getattr(ev, job.benchmark))


def jobs_of(
    cfg: ExperimentConfig, arm: str, seed: int | None, data_hash: str | None, rerun: frozenset[str] = frozenset()
) -> tuple[TrainJob | None, list[EvalJob]]:
    """One unit's jobs with their keys: the training (none for the base model), then every enabled benchmark in
    run order (cheap first). ``data_hash``: the prepared data's content hash (part of the training key);
    ``rerun``: :func:`rerun_stages` (``train``, ``eval`` or a benchmark name marks those jobs ``replace``)."""
    from im_pipeline.evaluation.specs import run_order

    unit = RunLayout.of(cfg).unit(arm, seed)
    train = None
    if unit.is_base:
        model, model_key = cfg.model.source, base_key(cfg)
    else:
        key = train_key(cfg, cfg.arm(arm), int(unit.seed or 0), data_hash or "")
        train = TrainJob(arm, int(unit.seed or 0), key, replace="train" in rerun)
        model, model_key = str(unit.checkpoint), key
    enabled = [b for b in run_order() if getattr(cfg.evaluation, b).enabled]
    evals = [
        EvalJob(
            arm,
            unit.seed,
            b,
            eval_key(cfg, model_key, b, getattr(cfg.evaluation, b), data_hash),
            model,
            model_key,
            replace="eval" in rerun or b in rerun,
        )
        for b in enabled
    ]
    return train, evals


def report_unit(run_root: Path, report_dir: Path, *, replace: bool = False) -> dict[str, Any]:
    """Build the report from the run directory (always: it is cheap and must see every result). ``replace``
    (``--rerun report``): redraw its figures too, even when their inputs did not change."""
    from im_pipeline.report.build import build_report
    from im_pipeline.report.figures import INPUTS_STAMP

    if replace:  # figures/.inputs, and figures/<stratum>/.inputs of an experiment with strata
        for stamp in [Path(report_dir) / "figures" / INPUTS_STAMP, *Path(report_dir).glob(f"figures/*/{INPUTS_STAMP}")]:
            stamp.unlink(missing_ok=True)
    return build_report(Path(run_root), Path(report_dir))


def data_done(cfg: ExperimentConfig, key: str) -> bool:
    """The prepared data exist under ``key``."""
    layout = RunLayout.of(cfg)
    return is_done(layout.data_stats, layout.data, "data", key)


def train_done(cfg: ExperimentConfig, job: TrainJob) -> bool:
    """The unit's training finished under ``job.key``."""
    unit = RunLayout.of(cfg).unit(job.arm, job.seed)
    return is_done(unit.train_summary, unit.dir, "train", job.key)


def eval_done(cfg: ExperimentConfig, job: EvalJob) -> bool:
    """The benchmark's result exists under ``job.key``."""
    unit = RunLayout.of(cfg).unit(job.arm, job.seed)
    return is_done(unit.eval_result(job.benchmark), unit.eval_dir, job.benchmark, job.key)
