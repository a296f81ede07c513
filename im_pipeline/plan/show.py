"""The plan in words: one summary line (``im-pipeline run`` prints it first) and the text of ``im-pipeline plan``."""

from __future__ import annotations

from typing import Any


def _gpus(plan: dict[str, Any]) -> str:
    g = plan["gpus"]
    if not g["count"]:
        return "no GPU"
    each = f" × {g['gib_each']:.0f} GiB" if g["gib_each"] else ""
    return f"{g['count']} GPU{'s' if g['count'] > 1 else ''}{each}"


def duration(hours: float) -> str:
    """A time estimate in the unit that reads best: minutes under an hour, else hours."""
    return f"~{hours * 60:.0f} min" if hours < 1 else f"~{hours:,.1f} h"


def summary_line(plan: dict[str, Any]) -> str:
    """One line: units (done), parameters, training memory per GPU and whether it fits, judge calls and cost, time."""
    mem = plan["memory"]["training_gib"]
    fits = {True: "fits, ", False: "does NOT fit, ", None: "no GPU memory known, "}[mem["fits"]]
    if not plan["gpus"]["count"]:
        fits = ""  # "no GPU" says it
    judge = plan["judge"]
    cost = f" ≈ ${judge['usd']:,.0f}" if judge.get("usd") else ""
    t = plan["time"]
    hours = t["train_hours"] + t.get("scoring_hours", 0) + t.get("generation_hours_upper", 0)
    warn = f", {len(plan['warnings'])} warning(s)" if plan["warnings"] else ""
    return (
        f"plan: {len(plan['units'])} units ({len(plan['units_done'])} done), {plan['params'] / 1e9:.2f}B parameters, "
        f"training {mem['total']} GiB per GPU ({fits}{_gpus(plan)}), {plan['judge_calls']:,} judge calls{cost}, "
        f"{duration(hours)} estimated{warn} (`im-pipeline plan` for details)"
    )


ENGINE_PARTS = {"gathered_layers": "gathered layers", "ddp_buckets": "DDP buckets"}
"""The parts only a multi-process engine has (ZeRO-3 / FSDP, DDP), shown when the plan has them."""


def _memory_lines(plan: dict[str, Any]) -> list[str]:
    m = plan["memory"]["training_gib"]
    s = m["setup"]
    ckpt = "on" if s["gradient_checkpointing"] else "off"
    engine = "".join(f" + {label} {m[k]}" for k, label in ENGINE_PARTS.items() if k in m)  # counted in the peak too
    lines = [
        f"training memory per GPU ({s['precision']}, {s['engine']} × {s['world_size']}, adapter {s['adapter']}, "
        f"batch {s['batch_size']} × {s['seq_len']} tokens, checkpointing {ckpt}):",
        f"  weights {m['weights']} + gradients {m['gradients']} + optimizer {m['optimizer']} + autocast copies "
        f"{m['autocast_copies']}{engine} + KL reference model {m.get('reference_model', 0)} + activations "
        f"{m['activations']} + logits {m['logits']} + recomputed layer {m['recomputed_layer']} GiB; peak {m['total']} "
        f"GiB of tensors, at the {m['peak_moment']} (the parts are not all live at once: "
        "im_pipeline/plan/memory.py's training_memory says which are at each moment)",
        f"  activations without / with checkpointing: {m['activations_without_checkpointing']} / "
        f"{m['activations_with_checkpointing']} GiB; {_gpus(plan)}: "
        + {True: "fits", False: "does NOT fit", None: "unknown (pass --gpus N --gpu-memory GiB)"}[m["fits"]],
    ]
    t = plan["training"]
    lines.append(
        f"  logits at {t['logits_kept_fraction']:.0%} of the positions ({t['logits_kept_basis']}) plus one "
        "cross-entropy chunk"
    )
    ev = plan["memory"]["evaluation"]
    lines.append(f"evaluation: batch {ev['batch_size']}, KV cache {ev['kv_bytes_per_token'] / 2**20:.2f} MiB per token")
    for name in ("humaneval", "alpaca_eval"):
        if name in ev:
            e = ev[name]
            safe = f", {e['safe_rows_per_batch']} fit" if "safe_rows_per_batch" in e else ""
            lines.append(f"  {name}: {e['rows_per_batch']} rows per batch = {e['kv_gib']} GiB of KV{safe}")
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: model, units, memory, benchmark work, judge, time, warnings."""
    m = plan["model"]
    done = set(plan["units_done"])
    units = ", ".join(f"{u}{' (done)' if u in done else ''}" for u in plan["units"])
    lines = [
        f"experiment {plan['experiment']}: {len(plan['units'])} units ({len(done)} done): {units}",
        f"model {m['source']}: {plan['params']:,} parameters (architecture from {m['config']})",
        *_memory_lines(plan),
        f"benchmarks per model ({plan['models_evaluated']} models):",
    ]
    for name, w in plan["benchmarks"].items():
        items = (f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in w.items())
        lines.append(f"  {name}: " + ", ".join(items))
    j = plan["judge"]
    price = j.get("price_per_million_tokens")
    cost = f" ≈ ${j['usd']:,.2f} at ${price['input']}/${price['output']} per million tokens" if price else ""
    lines.append(
        f"judge {j['kind']} {j['model']}: {j['calls']:,} calls, ~{j['input_tokens']:,} input + ~{j['output_tokens']:,} "
        f"output tokens{cost}"
    )
    t = plan["time"]
    hours = {k: v for k, v in t.items() if k.endswith(("hours", "upper"))}
    parts = [f"{k.replace('_hours', '').replace('_', ' ')} {v} h" for k, v in hours.items()]
    lines.append("time: " + ", ".join(parts) + f" ({t['basis']})")
    lines.extend(f"warning: {w}" for w in plan["warnings"])
    return "\n".join(lines)
