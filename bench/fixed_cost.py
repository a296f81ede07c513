"""Per-(model, benchmark) fixed cost vs work: each benchmark of a config at ``n`` and ``2n`` items (goal: fixed <= 3 s).

    nice -n 10 python bench/fixed_cost.py [--config configs/demo.yaml] [--n 2] [--only truthfulqa,overfitting]
        [--profile] [--threads N]

For every benchmark the config enables (its options as configured, only ``limit`` changed), on ONE model
loaded once (the config's base model): ``t(n)`` and ``t(2n)``, each in a fresh unit (a new
:class:`~im_pipeline.evaluation.common.ModelCache` holding the already loaded model, so nothing a unit
builds carries over between the two measurements, as between two models of a run).
A linear model ``t = fixed + work_per_item * items`` gives

    fixed = 2 t(n) - t(2n)        work (for n items) = t(2n) - t(n)

Three units run every benchmark once each, in the config's order, as a pipeline unit does: a warm-up at
``limit = 1`` (one-off imports such as lm-eval, sacrebleu or alpaca_eval happen once per process in a
pipeline run too, not per model), then ``n``, then ``2n``. What a unit builds once for all its benchmarks
(the judge model, lm-eval's environment report) is paid by the first benchmark that needs it. The model's
load time is printed separately (once per unit, not per benchmark).

``n`` is what ``limit`` means for the benchmark: MMLU items per subject, TruthfulQA questions, HumanEval
problems, AlpacaEval instructions, overfitting BLEU prompts (``loss_examples`` is scaled with it, so both
of its parts double). ``--profile`` prints the top functions by cumulative time of each ``t(n)`` run.
A generative benchmark whose n and 2n items fit in one generation batch (``evaluation.batch_size``) shows
most of that batch's cost as "fixed": a decoding step costs about the same for 4 rows as for 8 (choose n
so that n and 2n fill whole batches to see the per-item work). Results go to a temporary directory.
Wall time on a loaded machine is inflated (``uptime`` is printed); the CPU-time columns are less so.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from im_pipeline.config import BenchmarkConfig, load_config
from im_pipeline.evaluation.common import EvalContext, ModelCache, OverfittingInputs, run_benchmark
from im_pipeline.evaluation.specs import names as benchmark_names
from im_pipeline.models import load_model_and_tokenizer


def _scaled(name: str, bench: BenchmarkConfig, n: int) -> BenchmarkConfig:
    options = dict(bench.options)
    if name == "overfitting":
        base_limit = bench.limit or 1
        loss = int(options.get("loss_examples", 128))
        options["loss_examples"] = max(1, round(loss * n / base_limit))
    return bench.model_copy(update={"limit": n, "options": options})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--n", type=int, default=None, help="items at the small size (default: the config's limit)")
    parser.add_argument("--only", default=None, help="comma-separated benchmarks (default: all the config enables)")
    parser.add_argument("--profile", action="store_true", help="print the top functions of each t(n) run")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    ev = cfg.evaluation
    names = [b for b in benchmark_names() if getattr(ev, b).enabled]
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"--only: {unknown} not enabled in {args.config}; enabled: {names}")
        names = [b for b in names if b in wanted]

    data_dir = cfg.resolved_data_dir()
    overfitting = None
    if "overfitting" in names:
        from im_pipeline.data import load_records

        overfitting = OverfittingInputs(
            train=load_records(cfg.data.train, data_dir),
            held_out=load_records(cfg.data.held_out, data_dir) if cfg.data.held_out else [],
            held_out_kind=f"another data set ({cfg.data.held_out})",
        )

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    start = time.perf_counter()
    loaded = load_model_and_tokenizer(cfg.model.source, dtype=cfg.model.dtype, cache_dir=cfg.model.cache_dir)
    load_s = time.perf_counter() - start
    print(f"model {cfg.model.source}: loaded once in {load_s:.2f} s; torch threads {torch.get_num_threads()}")

    def cpu() -> float:
        self, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return self.ru_utime + self.ru_stime + children.ru_utime + children.ru_stime

    def unit() -> ModelCache:
        """A fresh unit (as the pipeline makes per model), holding the already loaded model."""
        cache = ModelCache()
        cache.model((cfg.model.source, None, cfg.model.dtype), lambda: loaded)
        return cache

    def run(name: str, n: int, cache: ModelCache, tmp: Path, profile: bool = False) -> tuple[float, float]:
        ctx = EvalContext(
            model_source=cfg.model.source,
            out_dir=tmp / f"{name}-{n}",
            data_dir=data_dir,
            arm="base",
            template=cfg.data.template,
            batch_size=ev.batch_size,
            judge=ev.judge,
            dtype=cfg.model.dtype,
            cache_dir=cfg.model.cache_dir,
            overfitting=overfitting,
            cache=cache,
        )
        prof = cProfile.Profile() if profile else None
        t0, c0 = time.perf_counter(), cpu()
        if prof:
            prof.enable()
        run_benchmark(name, ctx, _scaled(name, getattr(ev, name), n))
        if prof:
            prof.disable()
        elapsed, cpu_s = time.perf_counter() - t0, cpu() - c0
        if prof:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
            print(f"--- profile {name} n={n} ({elapsed:.2f} s) ---\n{buf.getvalue()}")
        return elapsed, cpu_s

    sizes = {name: args.n or getattr(ev, name).limit or 2 for name in names}
    times: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="im-pipeline-fixed-cost-") as tmp_name:
        tmp = Path(tmp_name)
        # Three units, each running every benchmark once, as a pipeline unit does: the warm-up (one-off imports),
        # then n items, then 2n items. What a unit builds once (e.g. lm-eval's environment report) is paid by its
        # first benchmark that needs it, in both measured units alike.
        for label, factor in (("warm-up", 0), ("n", 1), ("2n", 2)):
            cache = unit()
            for name in names:
                n = max(1, factor * sizes[name])
                wall, cpu_s = run(name, n, cache, tmp / label, profile=args.profile and factor == 1)
                times[(name, factor)] = (wall, cpu_s)
                print(f"unit {label}: {name} at {n} items: {wall:.2f} s (CPU {cpu_s:.2f} s)", flush=True)

    rows = [(name, sizes[name], *times[(name, 1)], *times[(name, 2)]) for name in names]
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(
        "\nwall clock: fixed = 2 t(n) - t(2n), work = t(2n) - t(n); CPU time (process + children, user + system) "
        "beside it, less inflated by other load (goal: fixed <= 3 s on a quiet machine)"
    )
    header = f"{'benchmark':<12} {'n':>3} {'t(n)':>7} {'t(2n)':>7} {'fixed':>7} {'work':>7}"
    print(f"{header} | {'cpu fixed':>9} {'cpu work':>8}")
    for name, n, t_n, c_n, t_2n, c_2n in rows:
        print(
            f"{name:<12} {n:>3} {t_n:>7.2f} {t_2n:>7.2f} {2 * t_n - t_2n:>7.2f} {t_2n - t_n:>7.2f} | "
            f"{2 * c_n - c_2n:>9.2f} {c_2n - c_n:>8.2f}  {'ok' if 2 * t_n - t_2n <= 3.0 else 'OVER'}"
        )


if __name__ == "__main__":
    main()
