"""Batched generation vs plain sequential ``generate``: throughput and ratio (goal >= 3x on CPU).

    nice -n 10 python bench/generation_speed.py [--model smollm2-135m-instruct] [--prompts 16] [--new-tokens 64]
        [--batch-size 16] [--threads N]

Both paths decode greedily the same prompts with the same ``max_new_tokens``. Sequential = one unpadded
prompt at a time through ``model.generate`` (what a naive evaluation loop does); batched =
:func:`im_pipeline.evaluation.generation.generate` (length-sorted, left-padded batches, KV cache).
Throughput counts the new tokens each path actually produced (EOS may end a row early).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from im_pipeline.data.templates import render_prompt
from im_pipeline.evaluation.generation import GenerationConfig, generate
from im_pipeline.models import load_model_and_tokenizer

INSTRUCTIONS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works to a ten-year-old.",
    "List five tips for writing clean Python code.",
    "What are the main causes of the French Revolution?",
    "Describe the water cycle in detail.",
    "Write a poem about the sea at night.",
    "How do vaccines train the immune system?",
    "Give me a recipe for a simple vegetable soup.",
    "Summarise the plot of Romeo and Juliet.",
    "Why is the sky blue? Explain the physics.",
    "Write a cover letter for a junior data analyst position.",
    "Compare cats and dogs as pets.",
    "Explain recursion with an example in Python.",
    "What should I pack for a week-long hiking trip?",
    "Describe the history of the printing press.",
    "How does a hash table work?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--template", default="tulu", choices=["tulu", "chat_template"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (on a loaded machine 1 is often fastest)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model_and_tokenizer(args.model)
    model.eval()
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.prompts)]
    prompts = [render_prompt([{"role": "user", "content": x}], args.template, tok) for x in instructions]
    threads = torch.get_num_threads()
    print(f"model {args.model}: {args.prompts} prompts x {args.new_tokens} new tokens, torch threads {threads}")

    def count(texts: list[str]) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    # Warm-up (first-call overheads) on one prompt, for both paths.
    generate(model, tok, prompts[:1], GenerationConfig(max_new_tokens=4), progress=False)

    start = time.perf_counter()
    sequential = []
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            sequential.append(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    t_seq = time.perf_counter() - start

    start = time.perf_counter()
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    batched = [r[0] for r in generate(model, tok, prompts, cfg, progress=False)]
    t_bat = time.perf_counter() - start

    n_seq, n_bat = count(sequential), count(batched)
    same = sum(a == b for a, b in zip(sequential, batched, strict=True))
    print(f"sequential: {t_seq:7.2f} s  {n_seq} new tokens  {n_seq / t_seq:7.1f} tok/s")
    print(f"batched:    {t_bat:7.2f} s  {n_bat} new tokens  {n_bat / t_bat:7.1f} tok/s  (batch size {args.batch_size})")
    ratio = (n_bat / t_bat) / (n_seq / t_seq)
    print(f"speed-up (throughput ratio): {ratio:.2f}x; identical outputs {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
