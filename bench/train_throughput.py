"""Training throughput: our trainer (WeightedLossTrainer via train_arm, IT mode; padded and padding-free) vs TRL
``SFTTrainer`` with gradient checkpointing on and off.

Per source (``--source paper_lima paper_dolly_3k``, both by default): the same model, the same ``steps × batch``
single-turn training examples (one epoch: every trainer sees the same examples, in its own order), max length, batch
size, learning rate and number of optimiser steps. TRL gets its defaults for everything else (prompt/completion
format with completion-only loss, random sampling, padding to the longest in the batch) except the precision, which is
matched to ours (fp32; ``--trl-bf16`` for TRL's CPU default of bf16 autocast) and gradient checkpointing, run both
ways. Ours: length-grouped batches (its default), ``padding_free`` off and on.

Printed per run: real (non-padding) tokens per second of ``train()``, the padding fraction, the train loss, the loss
on the output tokens of ``--eval-n`` further examples after the same number of steps ("at equal loss": the held-out
losses should agree; the speed ratio means something only if they do), and MFU: model FLOPs per second over a peak
fp32 matmul FLOP/s measured here (best of timed ``torch.matmul`` of square fp32 matrices, 1024–3072, with the threads
used). Model FLOPs = 6 · N · real tokens (forward 2·N, backward 4·N per token; N = the parameters that take part in
matmuls: all but an untied input embedding). Attention score FLOPs and gradient-checkpointing recomputation are not
counted, so MFU is conservative and comparable between runs. Then the ratios ours / TRL, and one ``SUMMARY`` line.

    nice -n 10 python bench/train_throughput.py                            # both sources, default sizes
    python bench/train_throughput.py --source paper_dolly_3k --steps 2 --json out.json

``--loss-kernels``: instead of the runs above, the loss step alone (forward + backward of ``compute_loss``, IT,
padded batches of the source), the trainer's path (logits only where a loss term reads them, chunked cross-entropy)
against the path before it (every position's logits, ``F.cross_entropy``), alternating batch by batch on the same
model; prints real tokens per second and per CPU-second of this process for both, their ratio and both losses
(equal to 1e-5). The optimiser step and data loading, the same on both paths, are left out.

    nice -n 10 python bench/train_throughput.py --model gemma-3-270m --source paper_dolly_3k --loss-kernels

Default sizes (LIMA: 4 steps of 4 at max length 512; Dolly 3k: 4 steps of 8 at 256, the paper's setting) take about
4 minutes per source on a quiet 2-core CPU. Not a test: timings on a shared CPU are noisy; run it on a quiet machine
for numbers you publish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

log = logging.getLogger("bench")


class Timer(TrainerCallback):
    """Wall time of the training loop proper (from on_train_begin to on_train_end)."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self.t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


class TokenCounter:
    """Wraps a trainer's ``compute_loss``; counts real (attention_mask) and padded tokens of the batches trained on.

    Counting in the collator would over-count: accelerate's data loader fetches one batch ahead.
    """

    def __init__(self, trainer: Any) -> None:
        self.real = 0
        self.padded = 0
        self._inner = trainer.compute_loss
        trainer.compute_loss = self

    def __call__(self, model: Any, inputs: dict, *args: Any, **kwargs: Any) -> Any:
        if model.training:
            mask = inputs.get("attention_mask")
            mask = mask if mask is not None else torch.ones_like(inputs["input_ids"])
            self.real += int(mask.sum())
            self.padded += int(mask.numel())
        return self._inner(model, inputs, *args, **kwargs)


# Per-source defaults: (max length, batch size) — LIMA as the paper trains it on our CPU budget; Dolly 3k as the
# issue measured it (max length 256, batch 8).
SOURCE_DEFAULTS = {"paper_lima": (512, 4), "paper_dolly_3k": (256, 8)}


def load_source(source: str, data_dir: Path | None, n: int) -> list[dict]:
    """First ``n`` single-turn records of a named source (normalised)."""
    from im_pipeline.data import load_records

    records = load_records(source, data_dir, multi_turn=False)
    if len(records) < n:
        raise SystemExit(f"need {n} {source} examples, found {len(records)}")
    return records[:n]


def peak_matmul_flops(threads: int, sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 3) -> dict:
    """Peak fp32 matmul FLOP/s on this machine: best of ``repeats`` timed ``torch.matmul`` per square size."""
    torch.set_num_threads(threads)
    best = 0.0
    per_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t0)
        flops = 2 * n**3 / min(times)
        per_size[n] = flops
        best = max(best, flops)
    return {"flops": best, "per_size": per_size, "threads": threads}


def matmul_params(model_source: str) -> int:
    """Parameters that take part in matmuls (:func:`im_pipeline.training.packing.linear_params`)."""
    from im_pipeline.models import load_model_and_tokenizer
    from im_pipeline.training.packing import linear_params

    model, _ = load_model_and_tokenizer(model_source)
    return linear_params(model)


def run_ours(
    args: argparse.Namespace, train: list[dict], held: list[dict], work: Path, *, padding_free: bool = False
) -> dict:
    from im_pipeline.config import ArmConfig, DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
    from im_pipeline.training import train_arm

    cfg = ExperimentConfig(
        name="bench",
        model=ModelConfig(source=args.model),
        data=DataConfig(max_length=args.max_length),
        training=TrainingConfig(
            max_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_ratio=0.0,
            loss_normalisation="token",  # the same loss definition as TRL's (token mean over completion tokens)
            save_steps=10**9,
            logging_steps=1,
            threads=args.threads,
            group_by_length=True,
            padding_free=padding_free,
            report_to=[],
        ),
    )
    timer = Timer()
    name = "ours_padding_free" if padding_free else "ours"
    arm = ArmConfig(name="IT", loss_mode="it")
    summary = train_arm(cfg, arm, 0, train, [], work / name, key=f"bench-{name}", callbacks=[timer])
    padded = summary["train_tokens"] / (1 - summary["padding_fraction"]) if summary["padding_fraction"] < 1 else 0
    return {
        "tokens": summary["train_tokens"],
        "padded_tokens": round(padded),
        "seconds": timer.seconds,
        "train_loss": summary["mean_train_loss"],
        "model_dir": str(work / name / "checkpoint"),
        "padding_free": padding_free,
    }


def run_trl(args: argparse.Namespace, train: list[dict], work: Path, *, gradient_checkpointing: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from im_pipeline.data.templates import render_prompt
    from im_pipeline.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(args.model)
    rows = [
        {
            "prompt": render_prompt(r["messages"][:-1], "tulu", tok),
            "completion": r["messages"][-1]["content"].strip() + tok.eos_token,
        }
        for r in train
    ]
    out_dir = work / ("trl_gc" if gradient_checkpointing else "trl_no_gc")
    config = SFTConfig(
        output_dir=str(out_dir),
        max_length=args.max_length,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        max_steps=args.steps,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.trl_bf16,
        gradient_checkpointing=gradient_checkpointing,
    )
    timer = Timer()
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer]
    )
    counter = TokenCounter(trainer)
    out = trainer.train()
    trainer.model.save_pretrained(out_dir / "final")
    tok.save_pretrained(out_dir / "final")
    return {
        "tokens": counter.real,
        "padded_tokens": counter.padded,
        "seconds": timer.seconds,
        "train_loss": out.training_loss,
        "model_dir": str(out_dir / "final"),
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": config.bf16,
    }


def held_out_loss(model_dir: str, held: list[dict], max_length: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from im_pipeline.training import output_token_loss

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return output_token_loss(model, tok, held, template="tulu", max_length=max_length, batch_size=4)


RUNS = ("ours", "ours_padding_free", "trl_gc", "trl_no_gc")


def bench_source(args: argparse.Namespace, source: str, data_dir: Path, peak: float, n_params: int) -> dict:
    """All runs on one source; returns the results with ratios."""
    max_length, batch = SOURCE_DEFAULTS.get(source, (512, 4))
    ns = argparse.Namespace(**vars(args))
    ns.max_length = args.max_length or max_length
    ns.batch_size = args.batch_size or batch
    n = ns.steps * ns.batch_size
    eval_n = args.eval_n
    records = load_source(source, data_dir, n + eval_n)
    train, held = records[:n], records[n:]
    results: dict[str, Any] = {
        "source": source,
        "n_train": n,
        "n_held_out": len(held),
        "max_length": ns.max_length,
        "batch_size": ns.batch_size,
        "steps": ns.steps,
    }
    sides = {
        "ours": lambda w: run_ours(ns, train, held, w),
        "ours_padding_free": lambda w: run_ours(ns, train, held, w, padding_free=True),
        "trl_gc": lambda w: run_trl(ns, train, w, gradient_checkpointing=True),
        "trl_no_gc": lambda w: run_trl(ns, train, w, gradient_checkpointing=False),
    }
    with tempfile.TemporaryDirectory(prefix="im-bench-") as tmp:
        for name in RUNS:
            if args.only and name not in args.only:
                continue
            log.info("%s: training %s", source, name)
            r = sides[name](Path(tmp))
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            r["padding_fraction"] = 1 - r["tokens"] / r["padded_tokens"] if r["padded_tokens"] else 0.0
            r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak
            model_dir = r.pop("model_dir")
            if held:
                r["held_out_loss"] = held_out_loss(model_dir, held, ns.max_length)
            results[name] = r
    ratios = {}
    for ours in ("ours", "ours_padding_free"):
        for trl in ("trl_gc", "trl_no_gc"):
            if ours in results and trl in results:
                ratios[f"{ours}/{trl}"] = results[ours]["tokens_per_s"] / results[trl]["tokens_per_s"]
    results["ratios"] = ratios
    return results


def print_source(res: dict, threads: int) -> None:
    print(
        f"\n{res['source']}: {res['n_train']} examples (one epoch), max_length {res['max_length']}, batch "
        f"{res['batch_size']}, {res['steps']} steps, {threads} threads; held-out loss on {res['n_held_out']} examples"
    )
    header = f"{'run':18} {'tokens':>7} {'seconds':>8} {'tok/s':>7} {'padding':>8} {'MFU':>6} {'train loss':>10}"
    print(header + f" {'held-out':>9}")
    for name in RUNS:
        if name in res:
            r = res[name]
            print(
                f"{name:18} {r['tokens']:7d} {r['seconds']:8.1f} {r['tokens_per_s']:7.1f} "
                f"{100 * r['padding_fraction']:7.1f}% {100 * r['mfu']:5.1f}% {r['train_loss']:10.4f} "
                f"{r.get('held_out_loss', float('nan')):9.4f}"
            )
    for key, v in res["ratios"].items():
        print(f"  speed-up {key}: {v:.2f}x")


def full_logits_loss(trainer: Any, model: Any, batch: dict) -> torch.Tensor:
    """The loss as the trainer computed it before ``logits_to_keep``: every position's logits, ``F.cross_entropy``
    (the full KL form included; the IT arm here has none)."""
    from im_pipeline.training.loss import reduce_token_values, token_ce
    from im_pipeline.training.weighted_trainer import split_batch

    model_inputs, t = split_batch(batch)
    logits = model(**model_inputs).logits
    return reduce_token_values(
        t.per_example(token_ce(logits, t.scored_labels)), t.shifted(), trainer.loss_normalisation
    )


def bench_loss_kernels(args: argparse.Namespace, source: str, data_dir: Path) -> dict:
    """Loss step (forward + backward) of the trainer's path vs the all-logits path, alternating per batch."""
    from transformers import TrainingArguments

    from im_pipeline.loss_modes import LossMode, LossSpec
    from im_pipeline.models import load_model_and_tokenizer
    from im_pipeline.training import WeightedCollator, WeightedLossTrainer, encode_example

    max_length, batch = SOURCE_DEFAULTS.get(source, (512, 4))
    max_length, batch = args.max_length or max_length, args.batch_size or batch
    model, tok = load_model_and_tokenizer(args.model)
    model.train()
    spec = LossSpec(LossMode("it"))
    records = load_source(source, data_dir, args.steps * batch)
    feats = [encode_example(r, tok, loss=spec, max_length=max_length) for r in records]
    collate = WeightedCollator(tok.pad_token_id)
    with tempfile.TemporaryDirectory(prefix="im-bench-") as tmp:
        targs = TrainingArguments(output_dir=tmp, use_cpu=True, report_to="none", remove_unused_columns=False)
        trainer = WeightedLossTrainer(model=model, args=targs, loss=spec)
    paths = {"kept_logits": trainer.compute_loss, "full_logits": lambda m, b: full_logits_loss(trainer, m, b)}
    out = {name: {"seconds": 0.0, "cpu_seconds": 0.0, "tokens": 0, "losses": []} for name in paths}
    for step in range(args.steps):
        b = collate(feats[step * batch : (step + 1) * batch])
        order = list(paths) if step % 2 == 0 else list(reversed(paths))  # alternate who runs first
        for name in order:
            model.zero_grad(set_to_none=True)
            t0, c0 = time.perf_counter(), time.process_time()
            loss = paths[name](model, b)
            loss.backward()
            r = out[name]
            r["seconds"] += time.perf_counter() - t0
            r["cpu_seconds"] += time.process_time() - c0
            r["tokens"] += int(b["attention_mask"].sum())
            r["losses"].append(float(loss.detach()))
    for r in out.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["tokens_per_cpu_s"] = r["tokens"] / r["cpu_seconds"]
    k, f = out["kept_logits"], out["full_logits"]
    out["ratio_wall"] = k["tokens_per_s"] / f["tokens_per_s"]
    out["ratio_cpu"] = k["tokens_per_cpu_s"] / f["tokens_per_cpu_s"]
    out["max_loss_diff"] = max(abs(a - c) for a, c in zip(k["losses"], f["losses"], strict=True))
    return out


def print_loss_kernels(source: str, res: dict) -> None:
    for name in ("full_logits", "kept_logits"):
        r = res[name]
        print(
            f"{source} {name:12} {r['tokens']:6d} tokens {r['seconds']:7.1f} s {r['tokens_per_s']:7.1f} tok/s "
            f"{r['cpu_seconds']:7.1f} CPU-s {r['tokens_per_cpu_s']:7.1f} tok/CPU-s"
        )
    print(
        f"SUMMARY {source} loss step kept/full: {res['ratio_wall']:.2f}x wall, {res['ratio_cpu']:.2f}x per CPU-second;"
        f" max |loss difference| {res['max_loss_diff']:.2e}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model source (name, local dir, .gguf)")
    p.add_argument("--data-dir", default=None, help="offline data dir (default: $IM_PIPELINE_DATA_DIR, ../shared/data)")
    p.add_argument("--source", nargs="+", default=["paper_lima", "paper_dolly_3k"], help="data sources (default: both)")
    p.add_argument("--eval-n", type=int, default=8, help="held-out examples for the output-token loss")
    p.add_argument("--max-length", type=int, default=None, help="default per source: LIMA 512, Dolly 3k 256")
    p.add_argument("--batch-size", type=int, default=None, help="default per source: LIMA 4, Dolly 3k 8")
    p.add_argument("--steps", type=int, default=4, help="optimiser steps (= one epoch of steps × batch examples)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trl-bf16", action="store_true", help="TRL's CPU default: bf16 autocast (ours stays fp32)")
    p.add_argument("--only", nargs="+", choices=RUNS, default=None, help="run only these")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--loss-kernels", action="store_true", help="the loss step alone: kept vs all-position logits")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    data_dir = Path(args.data_dir or os.environ.get("IM_PIPELINE_DATA_DIR") or REPO.parent / "shared" / "data")
    if args.loss_kernels:
        res = {source: bench_loss_kernels(args, source, data_dir) for source in args.source}
        for source, r in res.items():
            print_loss_kernels(source, r)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return 0
    peak = peak_matmul_flops(threads)
    n_params = matmul_params(args.model)
    log.info("peak fp32 matmul %.1f GFLOP/s (%d threads); %d matmul parameters", peak["flops"] / 1e9, threads, n_params)
    results: dict[str, Any] = {"model": args.model, "threads": threads, "peak_matmul": peak, "matmul_params": n_params}
    for source in args.source:
        results[source] = bench_source(args, source, data_dir, peak["flops"], n_params)
        print_source(results[source], threads)
    print(
        f"\npeak fp32 matmul {peak['flops'] / 1e9:.1f} GFLOP/s ({threads} threads); MFU = 6 · {n_params / 1e6:.1f}M "
        "params · real tokens/s / peak (attention and recomputation not counted)"
    )
    for source in args.source:
        res = results[source]
        parts = [f"{k} {v:.2f}x" for k, v in res["ratios"].items()]
        held = {k: res[k].get("held_out_loss") for k in RUNS if k in res}
        held_s = ", ".join(f"{k} {v:.3f}" for k, v in held.items() if v is not None)
        pads = ", ".join(f"{k} {100 * res[k]['padding_fraction']:.1f}%" for k in RUNS if k in res)
        print(f"SUMMARY {source}: {'; '.join(parts)} | held-out loss {held_s} | padding {pads}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
