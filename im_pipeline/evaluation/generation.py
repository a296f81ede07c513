"""Fast batched text generation shared by the generative benchmarks (HumanEval, AlpacaEval, BLEU).

:func:`generate` wraps Hugging Face ``model.generate`` (KV cache on) and adds what the benchmarks
need around it:

* prompts are tokenized once, **sorted by length** and cut into batches of at most ``batch_size`` so that
  each batch carries little padding; results are returned in the original order;
* **a KV-cache budget** (:func:`plan_batches`): a batch's rows (prompts × samples) times its longest row
  (prompt + ``max_new_tokens``) times the model's KV bytes per token (``plan.memory.kv_bytes_per_token``, the
  plan command's formula) stay within ``kv_cache_bytes`` (on CUDA, unset: 80% of the device's free memory
  at each batch; on CPU, unset: no cap). Batches shrink under it, down to one prompt; a prompt whose ``n``
  samples alone do not fit draws them in several calls. Greedy outputs do not depend on the batching;
* **left padding** (decoder-only models continue from the last real token);
* ``n`` completions per prompt (``num_return_sequences``), greedy (``temperature == 0``) or sampled
  (temperature, top_p; top_k disabled), seeded with ``seed``; for greedy decoding with ``n > 1`` the
  single deterministic completion is generated once and repeated;
* **stop sequences**: a :class:`StopOnStrings` criterion marks a row finished as soon as its generated
  text contains a stop string (the other rows of the batch go on), and the returned text is cut at
  the first stop string (which is not included). EOS stops a row too;
* **greedy** decoding goes through :func:`im_pipeline.evaluation.greedy_batch.greedy_batch`: rows that
  finished leave the batch and its KV cache, prompts are prefilled in chunks of similar length, and the
  cache is preallocated (same ``model.generate`` steps, no compute for finished rows). Sampling keeps one
  ``model.generate`` call per batch, so its seeded random stream is unchanged.

No vLLM backend: nothing here could test one (no GPU), and an engine per unit with its memory released needs a
GPU to verify; generation is transformers' (docs/scale_out.md).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList, set_seed

from im_pipeline.evaluation.greedy_batch import greedy_batch, left_pad

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """How to generate. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    batch_size: int = 8
    seed: int = 0
    kv_cache_bytes: int | None = None

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n (completions per prompt) must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.kv_cache_bytes is not None and self.kv_cache_bytes < 1:
            raise ValueError(f"kv_cache_bytes must be >= 1 (or None), got {self.kv_cache_bytes}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop sequences must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop string is dropped)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1 and i < cut:
            cut = i
    return text[:cut]


class StopOnStrings(StoppingCriteria):
    """Per-row stopping criterion: a row is done once its *generated* text contains a stop string.

    Only the tail of the generated tokens is decoded each step (a stop string of L characters is
    spread over at most about L tokens), so the check stays cheap for long generations. Returns a
    boolean per row, which ``generate`` uses to finish rows independently.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...], prompt_length: int):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.prompt_length = prompt_length
        self.window = max(len(s) for s in self.stop) + 3
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.done is None or self.done.shape[0] != input_ids.shape[0]:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_length :]
        start = max(0, new.shape[1] - self.window)
        active = (~self.done).nonzero().flatten().tolist()
        if active:
            # One batched (Rust) decode of the still-running rows' tails per step, not one call per row.
            tails = self.tokenizer.batch_decode(new[active, start:], skip_special_tokens=True)
            for row, tail in zip(active, tails, strict=True):
                if any(s in tail for s in self.stop):
                    self.done[row] = True
        return self.done.clone()


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The token ids :func:`generate` feeds the model for ``prompt`` (no second BOS; BOS alone for an empty prompt)."""
    bos = getattr(tokenizer, "bos_token", None)
    # A prompt rendered with a template may already start with the BOS text: do not add a second one.
    add_special = not (bos and prompt.startswith(bos))
    ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    if not ids:
        if tokenizer.bos_token_id is None:
            raise ValueError("an empty prompt cannot be generated from: the tokenizer has no BOS token")
        ids = [tokenizer.bos_token_id]
    return ids


def _hf_generation_config(model: Any, tokenizer: Any, cfg: GenerationConfig, num_return: int, pad_id: int) -> Any:
    gen = copy.deepcopy(model.generation_config)
    gen.max_new_tokens = cfg.max_new_tokens
    gen.max_length = None
    gen.num_return_sequences = num_return
    gen.num_beams = 1
    gen.use_cache = True
    gen.pad_token_id = pad_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if cfg.greedy:
        gen.do_sample = False
        gen.temperature = None
        gen.top_p = None
        gen.top_k = None
    else:
        gen.do_sample = True
        gen.temperature = cfg.temperature
        gen.top_p = cfg.top_p
        gen.top_k = 0  # nucleus sampling only, as in the Codex paper (HF's default would be top_k=50)
    return gen


@torch.inference_mode()
def generate(
    model: Any, tokenizer: Any, prompts: list[str], cfg: GenerationConfig, progress: bool = True
) -> list[list[str]]:
    """Generate ``cfg.n`` completions for each prompt.

    Returns one list of ``n`` strings per prompt, in the order of ``prompts``: the generated text only
    (prompt not included), special tokens removed, cut at the first stop sequence.
    """
    _check_prompts(prompts)
    if not prompts:
        return []
    pad_id = _pad_id(tokenizer)
    model.eval()
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    # Longest first: similar lengths share a batch (little padding) and memory peaks show up at once.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    gen_cfg = _hf_generation_config(model, tokenizer, cfg, 1 if cfg.greedy else cfg.n, pad_id)
    set_seed(cfg.seed)

    results: list[list[str] | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress)
    per_token = kv_bytes_per_row_token(model)
    start = 0
    while start < len(order):
        width = len(encoded[order[start]])  # longest first: the batch's widest prompt
        rows_fit = rows_within_budget(per_token, width + cfg.max_new_tokens, kv_budget(model, cfg))
        size, samples = plan_batch(len(order) - start, 1 if cfg.greedy else cfg.n, cfg.batch_size, rows_fit)
        idx = order[start : start + size]
        batch = [encoded[i] for i in idx]
        if cfg.greedy:
            texts = _greedy_texts(model, tokenizer, batch, cfg, gen_cfg, pad_id)
            outs = [[t] * cfg.n for t in texts]
        else:
            texts = _sampled_in_parts(model, tokenizer, batch, cfg, gen_cfg, pad_id, samples)
            outs = [texts[j * cfg.n : (j + 1) * cfg.n] for j in range(len(idx))]
        for i, out in zip(idx, outs, strict=True):
            results[i] = out
        bar.update(len(idx))
        start += size
    bar.close()
    return [r for r in results if r is not None]


def kv_bytes_per_row_token(model: Any) -> int | None:
    """KV-cache bytes per token of one row for ``model`` (``plan.memory.kv_bytes_per_token`` of its config, in its
    parameters' dtype); None when the config lacks the shapes (then only ``batch_size`` limits a batch)."""
    from im_pipeline.plan.arch import Arch
    from im_pipeline.plan.memory import kv_bytes_per_token

    try:
        arch = Arch.of(model.config.to_dict())
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return kv_bytes_per_token(arch, next(model.parameters()).element_size())


def kv_budget(model: Any, cfg: GenerationConfig) -> int | None:
    """Bytes of KV cache one batch may take: ``cfg.kv_cache_bytes``; unset, on CUDA 80% of the memory free now (the
    driver's free plus what torch's allocator holds unused), on CPU no cap (None)."""
    if cfg.kv_cache_bytes is not None:
        return cfg.kv_cache_bytes
    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(0.8 * (free + idle))


def rows_within_budget(per_token: int | None, row_tokens: int, budget: int | None) -> int | None:
    """How many rows of ``row_tokens`` fit in ``budget`` bytes of KV cache (None: no limit)."""
    if per_token is None or budget is None:
        return None
    return budget // (per_token * row_tokens)


def plan_batch(prompts_left: int, rows_per_prompt: int, batch_size: int, rows_fit: int | None) -> tuple[int, int]:
    """(prompts in the next batch, samples per generate call): at most ``batch_size`` prompts, and at most
    ``rows_fit`` rows (prompts × ``rows_per_prompt``); at least one prompt, whose samples are then drawn
    ``rows_fit`` (≥ 1) at a time."""
    size = min(batch_size, prompts_left)
    if rows_fit is None:
        return size, rows_per_prompt
    size = max(1, min(size, rows_fit // rows_per_prompt))
    return size, max(1, min(rows_per_prompt, rows_fit))


def _check_prompts(prompts: list[str]) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings; item {bad[0]} is {type(prompts[bad[0]]).__name__}")


def _pad_id(tokenizer: Any) -> int:
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad_id


def _greedy_texts(
    model: Any, tokenizer: Any, batch: list[list[int]], cfg: GenerationConfig, gen_cfg: Any, pad_id: int
) -> list[str]:
    """One greedy completion per row: finished rows leave the batch, chunked prefill, preallocated KV cache
    (see :mod:`.greedy_batch`)."""
    stop_factory = (lambda width: StopOnStrings(tokenizer, cfg.stop, width)) if cfg.stop else None
    rows = greedy_batch(model, batch, gen_cfg, cfg.max_new_tokens, pad_id, stop_factory)
    return [truncate_at_stop(t, cfg.stop) for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def _sampled_in_parts(
    model: Any, tokenizer: Any, batch: list[list[int]], cfg: GenerationConfig, gen_cfg: Any, pad_id: int, samples: int
) -> list[str]:
    """``cfg.n`` samples per row (row-major): one call, or (one prompt whose samples exceed the budget) calls of
    ``samples`` samples each."""
    if samples >= cfg.n:
        return _sampled_texts(model, tokenizer, batch, cfg, gen_cfg, pad_id)
    texts: list[str] = []
    for done in range(0, cfg.n, samples):
        part = copy.deepcopy(gen_cfg)
        part.num_return_sequences = min(samples, cfg.n - done)
        texts += _sampled_texts(model, tokenizer, batch, cfg, part, pad_id)
    return texts


def _sampled_texts(
    model: Any, tokenizer: Any, batch: list[list[int]], cfg: GenerationConfig, gen_cfg: Any, pad_id: int
) -> list[str]:
    """``cfg.n`` sampled completions per row (row-major), one ``model.generate`` call for the batch."""
    device = next(model.parameters()).device
    input_ids, attention = left_pad(batch, pad_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    criteria = StoppingCriteriaList()
    if cfg.stop:
        criteria.append(StopOnStrings(tokenizer, cfg.stop, input_ids.shape[1]))
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        generation_config=gen_cfg,
        stopping_criteria=criteria,
    )
    texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [truncate_at_stop(t, cfg.stop) for t in texts]
