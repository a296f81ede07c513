"""Measured peak tensor memory of training steps on the CPU, for tests/test_plan.py:
``python tests/memory_peak.py CONFIG.json B T CKPT [KEEP]``.

A fresh process builds the model from ``CONFIG.json`` (random weights, fp32) and runs two steps as the project's
Trainer does under ``bf16=True``: the forward under bf16 autocast with logits only at the kept positions
(transformers' boolean ``logits_to_keep``), the project's ``chunked_cross_entropy`` on them, backward, AdamW,
``zero_grad(set_to_none=True)``. ``KEEP`` (default 1): the fraction of each row's positions the loss reads, its last
ones (as IT reads the output that ends an example).

The peak is the profiler's count of live tensor bytes (``profile_memory``; its memory timeline), the CPU's
counterpart of ``torch.cuda.max_memory_allocated``, which ``bench/gpu_verify.py`` compares with the same formula on
a GPU. Not the resident set size, which counts the freed blocks glibc keeps (its mmap threshold adapts to the sizes
it has seen): for the tiny shape's steps RSS rose 97-103 MB here from run to run, 68 MB with the threshold fixed, and
120 MB on CI's machine, where the tensors' own peak is 38 MB. Prints JSON: the peak above the weights (resident before
the steps), the live tensor bytes per category at that moment, the parameter count and the kept positions.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings

CATEGORIES = ("parameter", "optimizer", "input", "temporary", "activation", "gradient", "autograd", "unknown")
"""The memory timeline's columns after its first, unused one (torch.profiler._memory_profiler._CATEGORY_TO_INDEX)."""


def main(config_path: str, batch: int, seq: int, checkpointing: bool, keep_fraction: float = 1.0) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
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
    # The categories (parameter, optimizer state, ...) need the shapes and stacks recorded.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            chunked_cross_entropy(logits, targets).mean().backward()
            del logits
            opt.step()
            opt.zero_grad(set_to_none=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA's memory snapshots; the CPU has no such
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path, encoding="utf-8") as f:
            _, sizes = json.load(f)
    totals = [sum(row) for row in sizes]
    at = max(range(len(totals)), key=totals.__getitem__)
    by = dict(zip(CATEGORIES, sizes[at][1:], strict=True))
    return {
        "peak_above_start": totals[at] - by["parameter"],
        "at_peak": {k: v for k, v in by.items() if v},
        "params": sum(p.numel() for p in model.parameters()),
        "kept": int(keep.sum()),
    }


if __name__ == "__main__":
    keep_arg = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", keep_arg)))
