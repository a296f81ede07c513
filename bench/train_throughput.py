"""Training throughput: our trainer (WeightedLossTrainer via train_arm, IT mode) vs TRL ``SFTTrainer``.

Same model, same LIMA examples (single-turn, first ``--n``), same max length, batch size, learning rate and number of
optimiser steps, in one run. TRL gets its defaults for everything else (prompt/completion format with
completion-only loss, random sampling, padding to the longest in the batch, gradient checkpointing on) except the
precision, which is matched to ours (fp32; ``--trl-bf16`` for TRL's CPU default of bf16 autocast).

Prints tokens/s (real, non-padding tokens per second of ``train()``), padding fractions, the ratio, and the loss on
the output tokens of ``--eval-n`` further LIMA examples for both trained models ("at equal loss").

    nice -n 10 python bench/train_throughput.py            # smollm2-135m-instruct, 64 examples, 8 steps of 4, 512
    python bench/train_throughput.py --model DIR --steps 4 --json out.json

Not a test: timings on a shared CPU are noisy; run it on a quiet machine for numbers you publish.
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


def load_lima(data_dir: Path | None, n: int) -> list[dict]:
    """First ``n`` single-turn LIMA records (normalised)."""
    try:
        from im_pipeline.data import load_records

        records = load_records("lima", data_dir, multi_turn=False)
    except ImportError:  # data layer not installed: read the offline file directly
        path = (data_dir or REPO.parent / "shared" / "data") / "lima" / "lima.json"
        raw = json.loads(path.read_text())
        records = [
            {
                "id": f"lima-{i}",
                "source": "lima",
                "messages": [
                    {"role": "user", "content": r["conversations"][0]},
                    {"role": "assistant", "content": r["conversations"][1]},
                ],
            }
            for i, r in enumerate(raw)
            if len(r["conversations"]) == 2
        ]
    if len(records) < n:
        raise SystemExit(f"need {n} LIMA examples, found {len(records)}")
    return records[:n]


def run_ours(args: argparse.Namespace, train: list[dict], held: list[dict], work: Path) -> dict:
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
        ),
    )
    timer = Timer()
    summary = train_arm(cfg, ArmConfig(name="IT", loss_mode="it"), 0, train, [], work / "ours", callbacks=[timer])
    padded = summary["train_tokens"] / (1 - summary["padding_fraction"]) if summary["padding_fraction"] < 1 else 0
    return {
        "tokens": summary["train_tokens"],
        "padded_tokens": round(padded),
        "seconds": timer.seconds,
        "train_loss": summary["mean_train_loss"],
        "model_dir": str(work / "ours" / "checkpoint"),
    }


def run_trl(args: argparse.Namespace, train: list[dict], work: Path) -> dict:
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
    config = SFTConfig(
        output_dir=str(work / "trl"),
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
        gradient_checkpointing=not args.trl_no_gradient_checkpointing,
    )
    timer = Timer()
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer]
    )
    counter = TokenCounter(trainer)
    out = trainer.train()
    trainer.model.save_pretrained(work / "trl" / "final")
    tok.save_pretrained(work / "trl" / "final")
    return {
        "tokens": counter.real,
        "padded_tokens": counter.padded,
        "seconds": timer.seconds,
        "train_loss": out.training_loss,
        "model_dir": str(work / "trl" / "final"),
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": config.bf16,
    }


def held_out_loss(model_dir: str, held: list[dict], max_length: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from im_pipeline.training import output_token_loss

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return output_token_loss(model, tok, held, template="tulu", max_length=max_length, batch_size=4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model source (name, local dir, .gguf)")
    p.add_argument("--data-dir", default=None, help="offline data dir (default: $IM_PIPELINE_DATA_DIR, ../shared/data)")
    p.add_argument("--n", type=int, default=64, help="training examples")
    p.add_argument("--eval-n", type=int, default=16, help="held-out examples for the output-token loss")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trl-bf16", action="store_true", help="TRL's CPU default: bf16 autocast (ours stays fp32)")
    p.add_argument(
        "--trl-no-gradient-checkpointing", action="store_true", help="turn off TRL's default gradient checkpointing"
    )
    p.add_argument("--only", choices=["ours", "trl"], default=None, help="run one side only")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    data_dir = Path(args.data_dir or os.environ.get("IM_PIPELINE_DATA_DIR") or REPO.parent / "shared" / "data")
    records = load_lima(data_dir, args.n + args.eval_n)
    train, held = records[: args.n], records[args.n :]
    results: dict[str, Any] = {
        "model": args.model,
        "n": args.n,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="im-bench-") as tmp:
        work = Path(tmp)
        sides = {"ours": lambda: run_ours(args, train, held, work), "trl": lambda: run_trl(args, train, work)}
        for name, fn in sides.items():
            if args.only and name != args.only:
                continue
            log.info("training: %s", name)
            r = fn()
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            r["padding_fraction"] = 1 - r["tokens"] / r["padded_tokens"] if r["padded_tokens"] else 0.0
            if held:
                r["held_out_loss"] = held_out_loss(r.pop("model_dir"), held, args.max_length)
            else:
                r.pop("model_dir")
            results[name] = r
    if "ours" in results and "trl" in results:
        results["speedup"] = results["ours"]["tokens_per_s"] / results["trl"]["tokens_per_s"]

    print(
        f"\nmodel {args.model}, {args.n} LIMA examples, max_length {args.max_length}, batch {args.batch_size}, "
        f"{args.steps} steps, {results['threads']} threads"
    )
    print(f"{'trainer':8} {'tokens':>8} {'seconds':>8} {'tok/s':>8} {'padding':>8} {'train loss':>11} {'held-out':>9}")
    for name in ("ours", "trl"):
        if name in results:
            r = results[name]
            held = r.get("held_out_loss", float("nan"))
            print(
                f"{name:8} {r['tokens']:8d} {r['seconds']:8.1f} {r['tokens_per_s']:8.1f} "
                f"{100 * r['padding_fraction']:7.1f}% {r['train_loss']:11.4f} {held:9.4f}"
            )
    if "speedup" in results:
        print(f"speed-up (ours / TRL tokens/s): {results['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
