"""Batched generation vs the fixed baseline (batch 1, default cache): throughput ratio (goal >= 10x), identical outputs.

    nice -n 10 python bench/generation_speed.py [--model smollm2-135m-instruct] [--prompts 32] [--new-tokens 64]
        [--batch-size 32] [--threads N]

Baseline (fixed, as issue 15 defines it): the same prompts, one at a time through ``model.generate``
(batch 1, no padding, the model's default cache), greedy, the same ``max_new_tokens``. Ours:
:func:`im_pipeline.evaluation.generation.generate`, greedy: length-sorted, left-padded batches; the prompts
prefilled in chunks of similar length; a row that met EOS leaves the batch (see
:mod:`im_pipeline.evaluation.greedy_batch`); a preallocated KV cache.
Both get the same token ids (ours encodes each prompt once; the baseline is handed those ids). Throughput
counts the new tokens each path actually produced (EOS may end a row early). The texts are compared
prompt by prompt: padding changes floating-point sums slightly, and a flipped greedy token would show up
as a differing output (the count of identical outputs is printed).

Beside the wall clock, the CPU seconds of each path are printed with their ratio: on a shared machine run
``--threads 1`` and read that ratio (with 2 threads, idle OpenMP threads spin and count as CPU time).

The prompts are 32 distinct instructions of varied length in the training template (``--prompts`` above
32 repeats them). The default size takes about 3 minutes on a quiet 2-core machine, most of it the baseline.
``--continuous`` also times transformers' own continuous batching (``model.generate_batch``: paged KV cache,
requests scheduled in and out of one running batch), greedy, on the same token ids, and prints its throughput
and CPU seconds beside ours, with its identical count against the baseline.

The last line, ``SUMMARY generation: ...``, gives both ratios, the identical count and the settings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from im_pipeline.data.templates import render_prompt
from im_pipeline.evaluation.generation import GenerationConfig, encode_prompt, generate
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
    "Hi!",
    "Translate 'good morning' into French.",
    "What is 17 times 23?",
    "Name three primary colours.",
    "Give me a haiku about autumn leaves falling in a quiet park.",
    "I am planning a small garden on a balcony that gets about four hours of sun a day. Which vegetables and herbs "
    "would grow well there, and how should I arrange the pots?",
    "Explain the difference between a list and a tuple in Python, and say when each one is the better choice.",
    "My laptop has become slow over the last few months. What are the most likely causes and what can I check "
    "first, before buying a new one?",
    "Write a limerick about a cat who loves cheese.",
    "What is the capital of Australia?",
    "Describe how a bill becomes a law in the United States, step by step, including what happens if the president "
    "vetoes it.",
    "Suggest a name for a bakery.",
    "Explain what an API is to someone who has never programmed, using an analogy from everyday life.",
    "How many legs does a spider have?",
    "Write a short motivational message for a friend who is about to run their first marathon next weekend.",
    "Summarise the main ideas of the theory of evolution by natural selection in a few sentences.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--template", default="tulu", choices=["tulu", "chat_template"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--continuous", action="store_true", help="also time transformers' generate_batch")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    model, tok = load_model_and_tokenizer(args.model)
    model.eval()
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.prompts)]
    prompts = [render_prompt([{"role": "user", "content": x}], args.template, tok) for x in instructions]
    encoded = [encode_prompt(tok, p) for p in prompts]
    lengths = sorted(len(ids) for ids in encoded)
    dtype = next(model.parameters()).dtype
    print(
        f"settings: model {args.model} ({dtype}), {args.prompts} prompts ({lengths[0]}-{lengths[-1]} tokens, "
        f"template {args.template}), max {args.new_tokens} new tokens, greedy, "
        f"torch threads {torch.get_num_threads()}; "
        f"ours: batch size {args.batch_size}, length-sorted, left-padded, prefill in chunks of 8 rows, "
        "finished rows leave the batch, preallocated KV cache"
    )

    def count(texts: list[str]) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    # Warm-up (first-call overheads) on one prompt, for both paths.
    generate(model, tok, prompts[:1], GenerationConfig(max_new_tokens=4), progress=False)

    start, cpu_start = time.perf_counter(), time.process_time()
    baseline = []
    with torch.inference_mode():
        for ids in encoded:
            input_ids = torch.tensor([ids])
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            baseline.append(tok.decode(out[0, len(ids) :], skip_special_tokens=True))
    t_base, c_base = time.perf_counter() - start, time.process_time() - cpu_start

    start, cpu_start = time.perf_counter(), time.process_time()
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    ours = [r[0] for r in generate(model, tok, prompts, cfg, progress=False)]
    t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu_start

    if args.continuous:
        continuous_batching(model, tok, encoded, baseline, args.new_tokens, count)
    n_base, n_ours = count(baseline), count(ours)
    same = sum(a == b for a, b in zip(baseline, ours, strict=True))
    rate_base, rate_ours = n_base / t_base, n_ours / t_ours
    print(f"baseline (batch 1, default cache): {t_base:7.2f} s  {n_base} new tokens  {rate_base:7.1f} new tokens/s")
    label = f"ours (batch size {args.batch_size}):"
    print(f"{label:<35}{t_ours:7.2f} s  {n_ours} new tokens  {rate_ours:7.1f} new tokens/s")
    print(f"ratio (throughput): {rate_ours / rate_base:.2f}x (goal >= 10x); identical outputs {same}/{len(prompts)}")
    # CPU seconds of this process (all its threads): on a shared machine less distorted than the wall clock.
    cpu_ratio = (n_ours / c_ours) / (n_base / c_base)
    print(f"CPU time: baseline {c_base:.2f} s, ours {c_ours:.2f} s; new tokens per CPU second: {cpu_ratio:.2f}x")
    for i, (a, b) in enumerate(zip(baseline, ours, strict=True)):
        if a != b:
            cut = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            where = f"prompt {i} ({len(encoded[i])} tokens) from char {cut}"
            print(f"  differs: {where}: {a[cut : cut + 40]!r} vs {b[cut : cut + 40]!r}")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(load)
    print(
        f"SUMMARY generation: {rate_ours / rate_base:.2f}x new tokens/s (wall), {cpu_ratio:.2f}x per CPU second "
        f"(goal >= 10x); identical {same}/{len(prompts)}; batch size {args.batch_size}, "
        f"threads {torch.get_num_threads()}, {args.prompts} prompts, max {args.new_tokens} new tokens; "
        f"load {load.split('load average:')[-1].strip()}",
        flush=True,
    )


def continuous_batching(model, tok, encoded, baseline, new_tokens, count) -> None:
    """transformers' ``generate_batch`` (continuous batching), greedy, timed like the other paths."""
    from transformers import ContinuousBatchingConfig
    from transformers import GenerationConfig as HFGenerationConfig

    # Its paged cache sized for this workload: left to size itself on a CPU it took 13.6 GB of RSS for 16 prompts of a
    # 135M model here and was OOM-killed.
    page = 64
    blocks = sum(-(-(len(ids) + new_tokens) // page) for ids in encoded) + len(encoded)
    cb_cfg = ContinuousBatchingConfig(
        page_size=page, num_blocks=blocks, max_batch_tokens=max(len(ids) for ids in encoded) * 4
    )
    gen = HFGenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    # Not under inference_mode: generate_batch's worker thread updates its cache in place outside it.
    out = model.generate_batch(inputs=encoded, generation_config=gen, continuous_batching_config=cb_cfg)
    t, c = time.perf_counter() - start, time.process_time() - cpu_start
    ordered = sorted(out.values(), key=lambda o: int(o.request_id.rsplit("_", 1)[-1]))
    texts = [tok.decode(o.generated_tokens, skip_special_tokens=True) for o in ordered]
    same = sum(a == b for a, b in zip(baseline, texts, strict=True))
    n = count(texts)
    print(
        f"{'transformers generate_batch:':<35}{t:7.2f} s  {n} new tokens  {n / t:7.1f} new tokens/s  "
        f"CPU {c:.2f} s ({n / c:.1f} new tokens per CPU second); identical to baseline {same}/{len(texts)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
