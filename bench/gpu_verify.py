"""GPU verification: the project's own numerics, Trainer path, throughput, memory and generation on one GPU, in phases.

Needs only this repository, torch and transformers (the Trainer phases also ``accelerate``, which transformers'
Trainer requires; without it they are recorded as skipped): no pydantic, prefect, lm-eval, network or weights.
Models are randomly initialised from shipped configs (``bench/assets/smollm2-135m``, ``im_pipeline/plan/
model_configs``); the project's modules are imported without their packages' ``__init__`` (which pull in the config
layer, i.e. pydantic): masking, loss, the Trainer subclass, generation, and ``im_pipeline.plan``'s memory formula.

    python bench/gpu_verify.py --out bench/results/h200           # CUDA, about 10 minutes on one H200
    python bench/gpu_verify.py --out /tmp/verify --cpu-dry-run     # every phase at tiny shapes on CPU (fast suite)

Phases (each writes ``gpu_verify.json`` in ``--out`` when it ends; a phase that would start after the internal
deadline is skipped, so the script ends in time): env (versions, measured bf16 matmul peak), numerics (loss and
masks on the device against CPU fp32 for every loss mode and both normalisations, with padding), padding_free
(packed against padded under sdpa, and flash-attention when importable), trainer (the project's WeightedLossTrainer:
bf16 autocast over fp32 masters, gradient checkpointing, NEFTune, KL), throughput (135M and 1B shapes; a 7B shape with
a few full-width layers, extrapolated to full depth; MFU, peak memory against ``im-pipeline plan``'s prediction),
generation (batched greedy equals one-at-a-time in fp32, 7B-shape forward and decoding speed, HumanEval-shaped rows
under a KV budget), torchrun (1 process; 2 processes with gloo equal to 1 process with accumulation 2), zero3 (when
deepspeed is importable: 1 process under DeepSpeed ZeRO-3, the KL reference model loaded inside ``zero.Init`` and
run by ``im_pipeline.training.engine``'s inference engine gives the logits of the same model loaded whole). Exit
status 1 when a phase failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import importlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "bench" / "assets" / "smollm2-135m"
FORBIDDEN = ("pydantic", "prefect", "datasets", "lm_eval")
PHASES = ("env", "numerics", "padding_free", "trainer", "throughput", "generation", "torchrun", "zero3")
MODES = ("it", "im", "im_release", "weighted")
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
ONE_B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32}
ONE_B["num_key_value_heads"], ONE_B["head_dim"] = 8, 64
TINY["num_key_value_heads"], TINY["head_dim"] = 2, 16


def project() -> types.SimpleNamespace:
    """The project's modules, without running ``im_pipeline``'s package ``__init__`` files (pydantic)."""
    for name in (
        "im_pipeline",
        "im_pipeline.training",
        "im_pipeline.data",
        "im_pipeline.evaluation",
        "im_pipeline.plan",
    ):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(REPO.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    get = importlib.import_module
    return types.SimpleNamespace(
        masking=get("im_pipeline.training.masking"),
        packing=get("im_pipeline.training.packing"),
        loss_modes=get("im_pipeline.loss_modes"),
        loss=get("im_pipeline.training.loss"),
        generation=get("im_pipeline.evaluation.generation"),
        templates=get("im_pipeline.data.templates"),
        arch=get("im_pipeline.plan.arch"),
        memory=get("im_pipeline.plan.memory"),
    )


def trainer_module() -> Any:
    """``im_pipeline.training.weighted_trainer`` (needs ``accelerate`` through transformers' Trainer)."""
    project()
    return importlib.import_module("im_pipeline.training.weighted_trainer")


def load_tokenizer() -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    special = json.loads((ASSETS / "special_tokens.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_str(gzip.decompress((ASSETS / "tokenizer.json.gz").read_bytes()).decode("utf-8"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def base_config(shape: str) -> dict[str, Any]:
    """A model config by shape name: ``135m`` (SmolLM2), ``tiny``, ``1b`` (SmolLM2 vocabulary), ``7b`` (LLaMA-2)."""
    if shape == "7b":
        return json.loads((REPO / "im_pipeline" / "plan" / "model_configs" / "llama-2-7b.json").read_text())
    cfg = json.loads((ASSETS / "config.json").read_text(encoding="utf-8"))
    return {**cfg, **{"tiny": TINY, "1b": ONE_B}.get(shape, {})}


def build_model(config: dict[str, Any], device: str, dtype: Any, layers: int | None = None, attn: str = "sdpa") -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if not k.startswith("_")})
    if layers is not None:
        cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
    return model


def conversations(n: int, words_per_turn: int) -> list[dict[str, Any]]:
    """Deterministic conversations of varied length (so batches carry real padding)."""
    text = "the model learns to follow instructions and answer questions about data code and language"
    vocab = text.split()
    out = []
    for i in range(n):
        k = max(4, words_per_turn - (i * 7) % max(words_per_turn // 2, 1))
        ask = " ".join(vocab[(i + j) % len(vocab)] for j in range(k // 2))
        answer = " ".join(vocab[(3 * i + j) % len(vocab)] for j in range(k))
        out.append(
            {"messages": [{"role": "user", "content": f"Q{i}: {ask}?"}, {"role": "assistant", "content": answer}]}
        )
    return out


def encoded(p: Any, tok: Any, n: int, words: int, mode: str = "it", max_length: int = 4096) -> list[dict]:
    lam = 0.5 if mode == "weighted" else None
    loss = p.loss_modes.LossSpec(p.loss_modes.LossMode(mode), prompt_loss_weight=lam)
    return [
        p.masking.encode_example(r, tok, loss=loss, template="tulu", max_length=max_length)
        for r in conversations(n, words)
    ]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compute_loss(model: Any, batch: dict, norm: str) -> float:
    """The Trainer subclass's own ``compute_loss`` (evaluation mode, no KL), called without building a Trainer."""
    import torch

    wt = trainer_module_or_none()
    fake = types.SimpleNamespace(
        loss_normalisation=norm,
        loss_spec=project().loss_modes.OUTPUT_ONLY,
        _denominators=None,
        args=types.SimpleNamespace(world_size=1),
        _neftune_as_padded=lambda *a: contextlib.nullcontext(),
    )
    with torch.no_grad():
        if wt is not None:
            return float(wt.WeightedLossTrainer.compute_loss(fake, model, batch))
        p = project()  # no accelerate: the same functions compute_loss calls, padded batches only
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return float(p.loss.weighted_lm_loss(logits, batch["labels"], batch["loss_weights"], norm))


class SkipPhase(Exception):
    """A phase that cannot run here (a missing optional package), recorded as skipped with the reason."""


def trainer_module_or_none() -> Any:
    try:
        return trainer_module()
    except ImportError:
        return None


class Verify:
    """The phases, sharing the device, the deadline and the JSON written after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.cpu_dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.deadline = args.deadline_s
        self.p = project()
        self.tok = load_tokenizer()
        self.results: dict[str, Any] = {"cpu_dry_run": self.dry, "deadline_s": self.deadline, "phases": {}}

    def shape(self, name: str) -> str:
        return "tiny" if self.dry else name

    def write(self) -> None:
        self.results["wall_s"] = round(time.perf_counter() - self.t0, 1)
        forbidden = set(FORBIDDEN)
        if sys.modules.get("deepspeed") is not None:
            # the `gpu` extra: accelerate imports deepspeed in every Trainer, and deepspeed imports pydantic itself
            forbidden.discard("pydantic")
        self.results["imported_forbidden"] = sorted(m for m in forbidden if sys.modules.get(m) is not None)
        path = self.out / "gpu_verify.json"
        path.write_text(json.dumps(self.results, indent=2) + "\n", encoding="utf-8")

    def run(self, only: list[str]) -> int:
        failed = 0
        for name in only:
            left = self.deadline - (time.perf_counter() - self.t0)
            entry: dict[str, Any]
            if left < self.args.phase_reserve_s:
                entry = {"status": "skipped", "why": f"internal deadline: {left:.0f} s left"}
            else:
                t = time.perf_counter()
                try:
                    entry = {"status": "ok", **globals()[f"phase_{name}"](self)}
                    if entry.pop("failed", None):
                        entry["status"] = "fail"
                except SkipPhase as exc:
                    entry = {"status": "skipped", "why": str(exc)}
                except Exception as exc:  # a phase's failure is recorded; the next phases still run
                    entry = {
                        "status": "fail",
                        "error": f"{type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc()[-3000:],
                    }
                entry["seconds"] = round(time.perf_counter() - t, 2)
                self._free()
            failed += entry["status"] == "fail"
            self.results["phases"][name] = entry
            print(
                f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {entry['status']}"
                + (f" ({entry.get('error') or entry.get('why')})" if entry["status"] != "ok" else ""),
                flush=True,
            )
            self.write()
        return 1 if failed or self.results["imported_forbidden"] else 0

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- phases ---------------------------------------------------------------------------------------------------------


def matmul_tflops(device: str, dtype: Any, n: int, reps: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def phase_env(v: Verify) -> dict[str, Any]:
    import platform

    import torch
    import transformers

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if v.device == "cuda" else platform.processor() or "cpu",
    }
    if v.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    for pkg in ("accelerate", "flash_attn", "deepspeed"):
        try:
            out[pkg] = importlib.import_module(pkg).__version__
        except ImportError:
            out[pkg] = None
    n, reps = (256, 3) if v.dry else (8192, 50)
    measured = matmul_tflops(v.device, torch.bfloat16, n, reps)
    out["bf16_matmul_tflops"] = round(measured, 4)
    v.results["peak_tflops"] = v.args.peak_tflops or measured
    if v.device == "cuda":  # the data sheet's dense bf16 peak (MFU goals are stated against it)
        timing = importlib.import_module("im_pipeline.plan.timing")
        name, flops, _ = timing.gpu_specs(out["device"])
        out["datasheet_bf16_tflops"] = {"gpu": name, "tflops": flops / 1e12}
        v.results["datasheet_tflops"] = flops / 1e12
    return out


def batch_to(batch: dict, device: str) -> dict:
    return {k: t.to(device) for k, t in batch.items()}


def phase_numerics(v: Verify) -> dict[str, Any]:
    """Every loss mode × normalisation: the device's fp32 and bf16-autocast loss against CPU fp32 (padded batch)."""
    import torch

    # initializer_range 0.2 (10× the default): peaked logits, so the loss is far from ln(vocab) and precision shows.
    cfg = {**base_config("tiny" if v.dry else "135m"), "initializer_range": 0.2}
    ref = build_model(cfg, "cpu", torch.float32, layers=2).eval()
    dev = copy.deepcopy(ref).to(v.device)
    rows, worst = [], {"fp32": 0.0, "bf16_autocast": 0.0}
    for mode in MODES:
        examples = encoded(v.p, v.tok, 3 if v.dry else 6, 12 if v.dry else 40, mode)
        batch = v.p.masking.WeightedCollator(v.tok.pad_token_id)(examples)
        padding = 1 - float(batch["attention_mask"].float().mean())
        for norm in ("sequence", "token"):
            cpu = compute_loss(ref, batch, norm)
            fp32 = compute_loss(dev, batch_to(batch, v.device), norm)
            with torch.autocast(v.device, dtype=torch.bfloat16):
                bf16 = compute_loss(dev, batch_to(batch, v.device), norm)
            r = {"mode": mode, "norm": norm, "cpu_fp32": cpu, "rel_fp32": rel(fp32, cpu), "rel_bf16": rel(bf16, cpu)}
            worst["fp32"], worst["bf16_autocast"] = (
                max(worst["fp32"], r["rel_fp32"]),
                max(worst["bf16_autocast"], r["rel_bf16"]),
            )
            rows.append({**r, "padding_fraction": round(padding, 3), "targets": int((batch["loss_weights"] > 0).sum())})
    it_targets = next(r["targets"] for r in rows if r["mode"] == "it")
    im_targets = next(r["targets"] for r in rows if r["mode"] == "im")
    ok = worst["fp32"] <= 1e-5 and worst["bf16_autocast"] <= 5e-3 and im_targets > it_targets
    return {"rows": rows, "worst_rel": worst, "limits": {"fp32": 1e-5, "bf16_autocast": 5e-3}, "failed": not ok}


def phase_padding_free(v: Verify) -> dict[str, Any]:
    """The Trainer's loss on packed rows (PaddingFreeCollator) equals the padded batch's: sdpa fp32, flash bf16."""
    import torch

    if trainer_module_or_none() is None:
        raise SkipPhase("im_pipeline.training.weighted_trainer is not importable (transformers' Trainer)")
    cfg = base_config("tiny" if v.dry else "135m")
    examples = encoded(v.p, v.tok, 4 if v.dry else 8, 16 if v.dry else 60, "im")
    padded = v.p.masking.WeightedCollator(v.tok.pad_token_id)(examples)
    packed = v.p.packing.PaddingFreeCollator(v.tok.pad_token_id)(examples)
    out: dict[str, Any] = {
        "rows_packed": int(packed["input_ids"].shape[0]),
        "padding_fraction": round(1 - float(padded["attention_mask"].float().mean()), 3),
    }
    model = build_model(cfg, v.device, torch.float32, layers=2).eval()
    for norm in ("sequence", "token"):
        a = compute_loss(model, batch_to(padded, v.device), norm)
        b = compute_loss(model, batch_to(packed, v.device), norm)
        out[f"sdpa_fp32_{norm}"] = {"padded": a, "packed": b, "rel": rel(b, a)}
    failed = any(out[f"sdpa_fp32_{n}"]["rel"] > 1e-5 for n in ("sequence", "token"))
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        out["flash_attention_2"] = "not importable: skipped"
        return {**out, "failed": failed}
    if v.device == "cuda":
        flash = build_model(cfg, v.device, torch.bfloat16, layers=2, attn="flash_attention_2").eval()
        sdpa = build_model(cfg, v.device, torch.bfloat16, layers=2).eval()
        a = compute_loss(sdpa, batch_to(padded, v.device), "sequence")
        b = compute_loss(flash, batch_to(packed, v.device), "sequence")
        out["flash_bf16_packed_vs_sdpa_padded"] = {"sdpa_padded": a, "flash_packed": b, "rel": rel(b, a)}
        failed = failed or rel(b, a) > 5e-3
    return {**out, "failed": failed}


def training_args(out_dir: Path, dry: bool, **kw: Any) -> Any:
    """``TrainingArguments`` as the project builds them (im_pipeline.training.trainer), names of this transformers."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    base = dict(
        output_dir=str(out_dir),
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        seed=0,
        data_seed=0,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=dry,
        bf16=True,
        train_sampling_strategy="sequential",
    )
    base.update(kw)
    ckpt = base.pop("checkpointing", False)
    base["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = ckpt
    return TrainingArguments(**{k: v for k, v in base.items() if k in fields})


def need_accelerate() -> None:
    """transformers' Trainer (TrainingArguments) needs accelerate; without it the phase is skipped, saying why."""
    import importlib.util

    try:
        found = importlib.util.find_spec("accelerate") is not None
    except ValueError:  # sys.modules["accelerate"] is None: blocked
        found = False
    if not found or trainer_module_or_none() is None:
        raise SkipPhase("accelerate is not importable (transformers' Trainer needs it): pip install accelerate")


def train_with_trainer(v: Verify, model: Any, examples: list[dict], args: Any, **kw: Any) -> tuple[Any, list[float]]:
    wt = trainer_module()
    collate = kw.pop("collator", None) or v.p.masking.WeightedCollator(v.tok.pad_token_id)
    trainer = wt.WeightedLossTrainer(model=model, args=args, train_dataset=examples, data_collator=collate, **kw)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, losses


def phase_trainer(v: Verify) -> dict[str, Any]:
    """The project's Trainer path: fp32 masters under bf16 autocast, gradient checkpointing, NEFTune and the KL term."""
    import torch

    need_accelerate()
    cfg = base_config("tiny" if v.dry else "135m")
    model = build_model(cfg, "cpu", torch.float32, layers=2 if v.dry else 4)
    ref = copy.deepcopy(model)
    norms0 = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    steps = 2 if v.dry else 12
    args = training_args(
        v.out / "trainer",
        v.dry,
        max_steps=steps,
        gradient_accumulation_steps=2,
        checkpointing=True,
        neftune_noise_alpha=5.0,
    )
    examples = encoded(v.p, v.tok, 4 * steps, 16 if v.dry else 60, "im")
    trainer, losses = train_with_trainer(
        v,
        model,
        examples,
        args,
        loss=v.p.loss_modes.LossSpec(v.p.loss_modes.LossMode.im, kl_coef=0.1, kl_form="full"),
        ref_model=ref,
        loss_normalisation="sequence",
    )
    moved = [
        float((p.detach().cpu() != norms0[n].cpu()).float().mean()) for n, p in model.named_parameters() if n in norms0
    ]
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    kl = [h.get("kl") for h in trainer.state.log_history if "kl" in h]
    ok = all(math.isfinite(x) for x in losses) and dtypes == ["torch.float32"] and min(moved) > 0.5 and bool(kl)
    return {
        "steps": steps,
        "losses": losses,
        "kl": kl,
        "master_dtypes": dtypes,
        "norm_weights_moved_min": min(moved),
        "autocast": "bf16",
        "gradient_checkpointing": True,
        "neftune_alpha": 5.0,
        "failed": not ok,
    }


def train_steps(v: Verify, model: Any, batch: int, seq: int, steps: int) -> dict[str, Any]:
    """``steps`` AdamW steps of the project's loss under bf16 autocast over fp32 weights; the first is untimed."""
    import torch

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen).to(v.device)
    mask = torch.ones_like(ids)
    keep = torch.ones_like(ids, dtype=torch.bool)  # the training loss's path: logits where it reads (all but the last)
    keep[:, -1] = False
    targets = v.p.loss.next_token_labels(ids)[keep]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=v.device == "cuda")
    model.train()
    if v.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed, losses = 0.0, []
    for step in range(steps + 1):
        sync(v.device)
        t = time.perf_counter()
        with torch.autocast(v.device, dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        loss = v.p.loss.chunked_cross_entropy(logits, targets).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del logits
        sync(v.device)
        timed += (time.perf_counter() - t) if step else 0.0
        losses.append(float(loss.detach()))
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    flops_token = 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq
    tps = batch * seq * steps / timed
    peak = v.results.get("peak_tflops")
    sheet = v.results.get("datasheet_tflops")
    out = {
        "mfu_datasheet": round(tps * flops_token / (sheet * 1e12), 4) if sheet else None,
        "params": n,
        "layers": cfg.num_hidden_layers,
        "batch": batch,
        "seq": seq,
        "tokens_per_s": round(tps, 1),
        "mfu": round(tps * flops_token / (peak * 1e12), 4) if peak else None,
        "losses": [round(x, 4) for x in losses],
    }
    if v.device == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    del opt
    return out


def predicted_gib(v: Verify, config: dict, n_params: int, batch: int, seq: int, layers: int | None = None) -> float:
    """``im-pipeline plan``'s training memory for this shape (bf16 autocast over fp32 masters, one GPU)."""
    cfg = {**config, "num_hidden_layers": layers or config["num_hidden_layers"]}
    arch = v.p.arch.Arch.of(cfg)
    setup = v.p.memory.TrainSetup(precision="bf16_autocast", batch_size=batch, seq_len=seq)
    return round(v.p.memory.training_memory(arch, n_params, setup)["total"] / 2**30, 3)


def _compare(r: dict, predicted: float) -> dict:
    r["plan_gib"] = predicted
    if "peak_gib" in r:
        r["peak_vs_plan"] = round(r["peak_gib"] / predicted - 1, 3)
    return r


def phase_throughput(v: Verify) -> dict[str, Any]:
    """Training tokens/s, MFU and peak memory (against plan's prediction) for 135M and 1B shapes and a 7B shape."""
    import torch

    out: dict[str, Any] = {}
    batch, seq, steps = (1, 32, 1) if v.dry else (8, 1024, 5)
    for name in ("135m", "1b"):
        cfg = base_config(v.shape(name))
        model = build_model(cfg, v.device, torch.float32)
        r = train_steps(v, model, batch, seq, steps)
        out[name] = _compare(r, predicted_gib(v, cfg, r["params"], batch, seq))
        del model
        v._free()
    cfg7 = base_config("7b") if not v.dry else {**base_config("tiny"), "vocab_size": 49152}
    batch7, seq7 = (1, 32) if v.dry else (4, 2048)
    part = {}
    for layers in (1, 2) if v.dry else (2, 4):
        model = build_model(cfg7, v.device, torch.float32, layers=layers)
        r = train_steps(v, model, batch7, seq7, steps)
        full_n = v.p.arch.count_params(cfg7)
        part[layers] = _compare(r, predicted_gib(v, cfg7, r["params"], batch7, seq7, layers))
        part[layers]["full_params"] = full_n
        del model
        v._free()
    (l1, a), (l2, b) = sorted(part.items())
    depth = cfg7["num_hidden_layers"]
    step_s = {k: r["batch"] * r["seq"] / r["tokens_per_s"] for k, r in part.items()}
    per_layer_s = (step_s[l2] - step_s[l1]) / (l2 - l1)
    full_step = step_s[l1] + per_layer_s * (depth - l1)
    full_n = part[l1]["full_params"]
    ext = {
        "layers_measured": [l1, l2],
        "depth": depth,
        "step_s": round(full_step, 3),
        "tokens_per_s": round(batch7 * seq7 / full_step, 1),
    }
    peak = v.results.get("peak_tflops")
    if peak:
        ext["mfu"] = round(
            ext["tokens_per_s"] * (6 * full_n + 12 * depth * cfg7["hidden_size"] * seq7) / (peak * 1e12), 4
        )
    if "peak_gib" in a:
        per_layer = (b["peak_gib"] - a["peak_gib"]) / (l2 - l1)
        ext["peak_gib"] = round(a["peak_gib"] + per_layer * (depth - l1), 2)
        _compare(ext, predicted_gib(v, cfg7, full_n, batch7, seq7))
    out["7b"] = {"measured": part, "extrapolated": ext}
    goals = {"1b_mfu_ge_0.40": (out["1b"]["mfu_datasheet"] or out["1b"]["mfu"] or 0) >= 0.40}
    for k in ("135m", "1b"):
        if "peak_vs_plan" in out[k]:
            goals[f"{k}_peak_within_15pct"] = abs(out[k]["peak_vs_plan"]) <= 0.15
    out["goals"] = goals
    return out


def phase_generation(v: Verify) -> dict[str, Any]:
    """Batched greedy equals one-at-a-time (fp32); 7B-shape prefill and decoding speed; HumanEval-shaped rows."""
    import torch

    gen = v.p.generation
    prompts = [
        v.p.templates.render_prompt([{"role": "user", "content": c["messages"][0]["content"]}], template="tulu")
        for c in conversations(6, 30)
    ]
    small = build_model(base_config("tiny" if v.dry else "135m"), v.device, torch.float32, layers=2).eval()
    new = 8 if v.dry else 32
    batched = gen.generate(
        small, v.tok, prompts, gen.GenerationConfig(max_new_tokens=new, batch_size=6), progress=False
    )
    single = gen.generate(small, v.tok, prompts, gen.GenerationConfig(max_new_tokens=new, batch_size=1), progress=False)
    out: dict[str, Any] = {"batched_equals_single": batched == single, "prompts": len(prompts)}
    del small
    v._free()
    # The LLaMA-2-7B shape with the bundled tokenizer's vocabulary (49,152 instead of 32,000: +0.14B parameters).
    cfg7 = {**base_config("tiny" if v.dry else "7b"), "vocab_size": len(v.tok)}
    model = build_model(cfg7, v.device, torch.bfloat16).eval()
    n = sum(p.numel() for p in model.parameters())
    seq = 64 if v.dry else 2048
    ids = torch.randint(3, 32000, (1, seq), device=v.device)
    with torch.no_grad():
        model(input_ids=ids)
        sync(v.device)
        t = time.perf_counter()
        model(input_ids=ids)
        sync(v.device)
    out["7b_prefill_tokens_per_s"] = round(seq / (time.perf_counter() - t), 1)
    rows, new = (4, 8) if v.dry else (32, 128)
    cfg = gen.GenerationConfig(max_new_tokens=new, batch_size=rows)
    t = time.perf_counter()
    texts = gen.generate(model, v.tok, (prompts * rows)[:rows], cfg, progress=False)
    sync(v.device)
    made = sum(len(v.tok(o[0], add_special_tokens=False)["input_ids"]) for o in texts)
    out["7b_greedy"] = {"rows": rows, "new_tokens": made, "tokens_per_s": round(made / (time.perf_counter() - t), 1)}
    out["humaneval_rows"] = humaneval_rows(v, model, cfg7, n, prompts)
    ok = out["batched_equals_single"] and out["humaneval_rows"].get("within_memory", True)
    return {**out, "failed": not ok}


def humaneval_rows(v: Verify, model: Any, cfg7: dict, n: int, prompts: list[str]) -> dict[str, Any]:
    """HumanEval-shaped sampling (n = 20 per prompt, 512 new tokens) with as many rows as the KV budget allows."""
    import torch

    gen = v.p.generation
    arch = v.p.arch.Arch.of(cfg7)
    new, prompt_tokens = (8, 160) if v.dry else (512, 160)
    if v.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        free_total = free + 2 * n  # the budget counts the (already loaded) weights
        rows_fit = v.p.memory.generation_rows_fitting(arch, n, free_total, prompt_tokens + new, 2)
        torch.cuda.reset_peak_memory_stats()
    else:
        rows_fit = 8
    per_prompt = 20 if rows_fit >= 20 else max(rows_fit, 1)
    k = max(min(rows_fit // per_prompt, 32), 1)
    cfg = gen.GenerationConfig(max_new_tokens=new, temperature=0.7, top_p=0.95, n=per_prompt, batch_size=k)
    t = time.perf_counter()
    gen.generate(model, v.tok, (prompts * k)[:k], cfg, progress=False)
    sync(v.device)
    out = {"rows_fitting": rows_fit, "rows": k * per_prompt, "seconds": round(time.perf_counter() - t, 2)}
    if v.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["within_memory"] = torch.cuda.max_memory_allocated() <= total
    return out


def ddp_worker(args: argparse.Namespace) -> int:
    """One torchrun rank (or the single-process reference): a few Trainer steps; rank 0 writes the weights' sums."""
    import torch

    if args.same_device:  # two ranks on the one GPU: both use cuda:0 (gloo between them)
        os.environ["LOCAL_RANK"] = "0"
    p = project()
    tok = load_tokenizer()
    v = types.SimpleNamespace(p=p, tok=tok)
    model = build_model(base_config("tiny" if args.cpu_dry_run else "135m"), "cpu", torch.float32, layers=2)
    examples = encoded(p, tok, 8, 40, "im")
    args_ = training_args(
        Path(args.out) / "trainer",
        args.cpu_dry_run,
        max_steps=3,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=args.accumulation,
        bf16=False,
        ddp_backend=args.backend or None,
    )
    trainer, losses = train_with_trainer(v, model, examples, args_, loss_normalisation="sequence")
    if trainer.args.process_index == 0:
        flat = torch.cat([q.detach().float().cpu().reshape(-1) for q in model.parameters()])
        info = {
            "world_size": trainer.args.world_size,
            "losses": losses,
            "sum": float(flat.sum()),
            "abs_sum": float(flat.abs().sum()),
            "first": flat[:64].tolist(),
            "device": str(trainer.args.device),
        }
        (Path(args.out) / "weights.json").write_text(json.dumps(info), encoding="utf-8")
    return 0


def _launch(v: Verify, tag: str, nproc: int, backend: str | None, accumulation: int, same_device: bool) -> dict:
    out = v.out / tag
    out.mkdir(parents=True, exist_ok=True)
    me = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--accumulation", str(accumulation)]
    me += ["--cpu-dry-run"] * v.dry + ["--same-device"] * same_device + (["--backend", backend] if backend else [])
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *me]
    else:
        cmd = [sys.executable, *me]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, start_new_session=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{tag} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    return json.loads((out / "weights.json").read_text(encoding="utf-8"))


def phase_torchrun(v: Verify) -> dict[str, Any]:
    """torchrun: 2 processes (gloo) equal 1 process with accumulation 2; on CUDA also 1 process over NCCL."""
    need_accelerate()
    out: dict[str, Any] = {}
    one = _launch(v, "ref-1proc-acc2", 0, None, 2, False)
    two = _launch(v, "torchrun-2proc-gloo", 2, "gloo", 1, v.device == "cuda")
    diff = max(abs(a - b) for a, b in zip(one["first"], two["first"], strict=True))
    out["two_gloo_vs_one_acc2"] = {
        "max_abs_diff_first64": diff,
        "sum": [one["sum"], two["sum"]],
        "losses": [one["losses"], two["losses"]],
        "world_size": two["world_size"],
    }
    ok = diff <= 1e-5 and rel(two["sum"], one["sum"]) <= 1e-5 and two["world_size"] == 2
    if v.device == "cuda":
        nccl = _launch(v, "torchrun-1proc-nccl", 1, "nccl", 2, False)
        out["one_nccl"] = {"device": nccl["device"], "losses": nccl["losses"]}
    return {**out, "failed": not ok}


def zero3_worker(args: argparse.Namespace) -> int:
    """One process under DeepSpeed ZeRO-3: the reference model loaded inside ``zero.Init`` (partitioned: no weights
    outside an engine) and wrapped by ``im_pipeline.training.engine.deepspeed_inference`` against the model whole."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    project()
    engine = importlib.import_module("im_pipeline.training.engine")
    device = "cpu" if args.cpu_dry_run else "cuda"
    deepspeed.init_distributed("gloo" if args.cpu_dry_run else "nccl")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    src = Path(args.out) / "model"
    model = build_model(base_config("tiny" if args.cpu_dry_run else "135m"), "cpu", torch.float32, layers=2)
    model.save_pretrained(src)
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model.to(device)(input_ids=ids.to(device)).logits.float().cpu()
    del model
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3}}
    keep = HfDeepSpeedConfig(config)  # while it lives, from_pretrained loads inside zero.Init (as under the Trainer)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    partitioned = sum(q.numel() for q in ref.parameters())
    wrapped = engine.deepspeed_inference(ref, config)
    with torch.no_grad():
        sharded = wrapped(input_ids=ids.to(device)).logits.float().cpu()
    info = {
        "deepspeed": deepspeed.__version__,
        "device": device,
        "partitioned_numel_outside_engine": partitioned,
        "max_abs_diff_logits": float((sharded - whole).abs().max()),
    }
    (Path(args.out) / "zero3.json").write_text(json.dumps(info), encoding="utf-8")
    del keep
    return 0


def phase_zero3(v: Verify) -> dict[str, Any]:
    """DeepSpeed ZeRO-3, 1 process: the KL reference model under zero.Init, run by the project's inference engine."""
    if importlib.util.find_spec("deepspeed") is None:
        raise SkipPhase("deepspeed is not installed (the `gpu` extra: pip install deepspeed)")
    out = v.out / "zero3"
    out.mkdir(parents=True, exist_ok=True)
    me = [str(Path(__file__).resolve()), "--zero3-worker", "--out", str(out)] + ["--cpu-dry-run"] * v.dry
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *me]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, start_new_session=True)
    if proc.returncode != 0:
        raise RuntimeError(f"zero3 worker exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    r = json.loads((out / "zero3.json").read_text(encoding="utf-8"))
    ok = r["partitioned_numel_outside_engine"] == 0 and r["max_abs_diff_logits"] <= 1e-5
    return {**r, "failed": not ok}


def export_assets(out: Path = ASSETS) -> None:
    """Write ``bench/assets/smollm2-135m/`` from the project's SmolLM2 model (needs the full environment)."""
    sys.path.insert(0, str(REPO))
    from im_pipeline.models import resolve_model

    src = Path(resolve_model("smollm2-135m-instruct"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    keep = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("dtype", "transformers_version")}
    (out / "config.json").write_text(json.dumps(keep, indent=2) + "\n", encoding="utf-8")
    tc = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    special = {k: tc[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length")}
    (out / "special_tokens.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    (out / "tokenizer.json.gz").write_bytes(gzip.compress((src / "tokenizer.json").read_bytes(), 9, mtime=0))
    print(f"assets written to {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="directory for gpu_verify.json (written after every phase)")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every phase at tiny shapes on the CPU")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="no phase starts after this (default 540 s)")
    ap.add_argument("--phase-reserve-s", type=float, default=20.0, help="a phase needs this much time left to start")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: measured)")
    ap.add_argument("--export-assets", action="store_true", help="(re)write bench/assets/smollm2-135m and exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--same-device", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--accumulation", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--zero3-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.export_assets:
        export_assets()
        return 0
    if not args.out:
        ap.error("--out DIR is required")
    if args.worker:
        return ddp_worker(args)
    if args.zero3_worker:
        return zero3_worker(args)
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --cpu-dry-run to run every phase on the CPU)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)) if args.cpu_dry_run else torch.get_num_threads())
    phases = [p for p in args.phases.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        ap.error(f"unknown phases {unknown}; choose from {PHASES}")
    return Verify(args).run(phases)


if __name__ == "__main__":
    sys.exit(main())
