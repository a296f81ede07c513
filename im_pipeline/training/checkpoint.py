"""The saved model: tokenizer with the training template as its chat_template, the model card, and removal of
Trainer checkpoints a crash cut short."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from im_pipeline.config import ArmConfig, ExperimentConfig
from im_pipeline.data.templates import TULU_CHAT_TEMPLATE

log = logging.getLogger(__name__)


def save_tokenizer(tokenizer: Any, out_dir: Path, template: str) -> None:
    """Save the tokenizer with the chat template the model was trained with as its ``chat_template``.

    With the Tulu template the base model's own template (e.g. ChatML) would build prompts the model was not
    tuned on, so :data:`TULU_CHAT_TEMPLATE` replaces it in the saved copy (the loaded tokenizer is left as it
    was). With ``chat_template`` training used the tokenizer's own template, which is kept.
    """
    if template != "tulu":
        tokenizer.save_pretrained(out_dir)
        return
    original = tokenizer.chat_template
    tokenizer.chat_template = TULU_CHAT_TEMPLATE
    try:
        tokenizer.save_pretrained(out_dir)
    finally:
        tokenizer.chat_template = original


def write_model_card(final_dir: Path, cfg: ExperimentConfig, arm: ArmConfig, seed: int, summary: dict) -> Path:
    """``checkpoint/README.md``: a Hugging Face model card (metadata + what was trained, how, and how well)."""
    from huggingface_hub import ModelCard, ModelCardData

    report = (Path(cfg.report_dir) / cfg.name / "REPORT.md").resolve()
    try:
        report_link = os.path.relpath(report, Path(final_dir).resolve())
    except ValueError:  # another drive (Windows)
        report_link = str(report)
    base = cfg.model.source
    meta = ModelCardData(
        base_model=base if "/" in base and not Path(base).exists() else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["im-pipeline", f"loss-mode-{arm.loss_mode}", "instruction-tuning"],
    )
    table = "\n".join(
        ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in _card_rows(cfg, arm, seed, summary).items())]
    )
    content = f"""---
{meta.to_yaml()}
---

# {cfg.name} / {arm.name} / seed {seed}

`{base}` fine-tuned by im-pipeline (Instruction Tuning vs Instruction Modelling, Shi et al. 2024) with loss
mode **{arm.loss_mode}** ({arm.loss_mode.description}), experiment `{cfg.name}`.

{table}

Benchmark results (MMLU, TruthfulQA, HumanEval, AlpacaEval, overfitting) of this model next to the base model
and the other arms: [the experiment's report]({report_link}).

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("PATH/TO/checkpoint")
model = AutoModelForCausalLM.from_pretrained("PATH/TO/checkpoint")
prompt = tok.apply_chat_template([{{"role": "user", "content": "Hello"}}], tokenize=False, add_generation_prompt=True)
```

The tokenizer's `chat_template` is the template used in training, so `apply_chat_template` builds the prompts
the model was tuned on.
"""
    path = Path(final_dir) / "README.md"
    ModelCard(content).save(path)
    return path


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _card_rows(cfg: ExperimentConfig, arm: ArmConfig, seed: int, summary: dict) -> dict[str, Any]:
    """The model card's table: base model, data, template, loss, seed, schedule, batch, losses, time."""
    t, data = cfg.training, cfg.data
    extras = {k: getattr(arm, k) for k in ("prompt_loss_weight", "neftune_alpha", "kl_coef") if getattr(arm, k)}
    return {
        "base model": f"`{cfg.model.source}`" + (f" (revision `{cfg.model.revision}`)" if cfg.model.revision else ""),
        "training data": f"`{data.train}`, {summary.get('n_train')} examples"
        + (f" (subsample n={data.n})" if data.n else "")
        + f", {summary.get('n_held_out')} held out",
        "chat template": f"`{data.template}` (saved as the tokenizer's `chat_template`)",
        "loss mode": f"`{arm.loss_mode}` (arm `{arm.name}`)" + (f", {extras}" if extras else ""),
        "seed": seed,
        "epochs / steps": f"{t.epochs} / {summary.get('steps')}",
        "learning rate": f"{summary.get('learning_rate', t.learning_rate)} ({t.lr_scheduler}, warm-up {t.warmup_ratio})"
        + (f"; {t.learning_rate} × lr_scale {summary['lr_scale_factor']:.6g}" if arm.lr_scale != 1.0 else ""),
        "batch": f"{t.batch_size} × {t.gradient_accumulation_steps} accumulation",
        "max length": data.max_length,
        "loss normalisation": t.loss_normalisation,
        "weight decay": t.weight_decay,
        "final train loss": _fmt(summary.get("final_train_loss")),
        "held-out loss (output tokens)": _fmt(summary.get("final_held_out_loss")),
        "training time": f"{summary.get('wall_time_s')} s, {summary.get('tokens_per_s')} tokens/s",
    }


def drop_incomplete_checkpoints(ckpt_root: Path) -> None:
    """Remove Trainer checkpoints a crash interrupted while they were written (so resume takes the last whole one).

    Trainer writes ``trainer_state.json`` last; a ``checkpoint-N`` without a readable one was cut short (a process
    killed mid-save), and ``get_last_checkpoint`` would otherwise pick it and fail to resume.
    """
    for ckpt in ckpt_root.glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("%s: incomplete checkpoint (interrupted while saving), removed", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
