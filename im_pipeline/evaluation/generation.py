"""Fast batched text generation shared by the generative benchmarks (HumanEval, AlpacaEval, BLEU).

:func:`generate` wraps Hugging Face ``model.generate`` (KV cache on) and adds what the benchmarks
need around it:

* prompts are tokenized once, **sorted by length** and cut into batches of ``batch_size`` so that
  each batch carries little padding; results are returned in the original order;
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

Optional backend: :func:`generate_vllm` runs the same :class:`GenerationConfig` through vLLM when the
``vllm`` package is importable (GPU machines). It takes a model *path* rather than a loaded model and
is not exercised by the CPU test-suite.
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
    for b in range(0, len(order), cfg.batch_size):
        idx = order[b : b + cfg.batch_size]
        batch = [encoded[i] for i in idx]
        if cfg.greedy:
            texts = _greedy_texts(model, tokenizer, batch, cfg, gen_cfg, pad_id)
            outs = [[t] * cfg.n for t in texts]
        else:
            texts = _sampled_texts(model, tokenizer, batch, cfg, gen_cfg, pad_id)
            outs = [texts[j * cfg.n : (j + 1) * cfg.n] for j in range(len(idx))]
        for i, out in zip(idx, outs, strict=True):
            results[i] = out
        bar.update(len(idx))
    bar.close()
    return [r for r in results if r is not None]


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


def generate_vllm(model_path: str, prompts: list[str], cfg: GenerationConfig, **llm_kwargs: Any) -> list[list[str]]:
    """Same contract as :func:`generate`, through vLLM (GPU machines; not tested on CPU).

    ``model_path`` is a local HF-format directory or Hub id (see ``im_pipeline.models.resolve_model``);
    ``llm_kwargs`` go to ``vllm.LLM`` (e.g. ``dtype``, ``gpu_memory_utilization``). vLLM applies the
    stop strings itself and leaves them out of the text, as :func:`generate` does.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise RuntimeError("the vLLM backend needs the 'vllm' package (pip install vllm, on a GPU machine)") from exc
    params = SamplingParams(
        n=cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p if not cfg.greedy else 1.0,
        max_tokens=cfg.max_new_tokens,
        stop=list(cfg.stop) or None,
        seed=cfg.seed,
    )
    llm = LLM(model=model_path, seed=cfg.seed, **llm_kwargs)
    outputs = llm.generate(prompts, params)
    return [[truncate_at_stop(o.text, cfg.stop) for o in r.outputs] for r in outputs]
