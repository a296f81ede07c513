"""Measured CPU peak of training steps, for tests/test_plan.py:
``python tests/memory_peak.py CONFIG.json B T CKPT [KEEP]``.

A fresh process builds the model from ``CONFIG.json`` (random weights, fp32), then resets the peak resident set size
(``/proc/self/clear_refs``) and runs two steps as the project's Trainer does under ``bf16=True``: the forward under
bf16 autocast with logits only at the kept positions (transformers' boolean ``logits_to_keep``), the project's
``chunked_cross_entropy`` on them, backward, AdamW, ``zero_grad(set_to_none=True)``. ``KEEP`` (default 1): the
fraction of each row's positions the loss reads, its last ones (as IT reads the output that ends an example). Prints
JSON: the peak RSS above the level before the steps (the weights are already resident), the parameter count and the
kept positions. Linux only.
"""

from __future__ import annotations

import json
import sys


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main(config_path: str, batch: int, seq: int, checkpointing: bool, keep_fraction: float = 1.0) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from im_pipeline.training.loss import chunked_cross_entropy, next_token_labels

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with open(config_path, encoding="utf-8") as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(5, config["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, seq - 1 - round(keep_fraction * (seq - 1)) : seq - 1] = True  # the last position predicts nothing
    targets = next_token_labels(ids)[keep]
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # reset VmHWM (the peak) to the current RSS
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        chunked_cross_entropy(logits, targets).mean().backward()
        del logits
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = _status("VmHWM") - before
    return {"peak_above_start": peak, "params": sum(p.numel() for p in model.parameters()), "kept": int(keep.sum())}


if __name__ == "__main__":
    keep_arg = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", keep_arg)))
