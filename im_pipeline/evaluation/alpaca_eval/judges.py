"""Pairwise judges for AlpacaEval, as ``fn_completions`` for ``alpaca_eval``'s annotators.

``alpaca_eval`` does the AlpacaEval-specific work: the annotator prompt templates, the random (seeded) swap of
the two outputs against position bias, the parsing of completions into preferences and the win-rate metrics.
What it calls a "decoder" (``fn_completions(prompts, **completions_kwargs) -> {"completions": [...], ...}``) is
what this module provides, for two kinds of judge (:class:`im_pipeline.config.JudgeConfig`):

- ``openai``: any OpenAI-compatible chat endpoint (the hosted API, a local vLLM server), through the ``openai``
  client. The API key is read from the environment variable named by ``api_key_env`` and never logged or written.
  Transient failures (connection errors, timeouts, HTTP 408/409/429 and 5xx) are retried by the client with
  exponential backoff (0.5 s doubling up to 8 s, with jitter; ``max_retries``); other 4xx fail at once.
  We do not use ``alpaca_eval.decoders.openai_completions``: it logs its ``client_kwargs`` (where a key would
  sit), reads keys at import time and turns exhausted retries into empty completions.
- ``local_hf``: a local Hugging Face causal LM, offline. ``alpaca_eval``'s ``huggingface_local_completions``
  breaks with transformers 5 (it passes ``load_in_8bit``) and a small model's free text rarely parses, so the
  judge instead compares its probabilities of the two verdict labels after the annotator prompt
  (:func:`choice_logprobs`): every annotation parses.

:class:`AnnotationCache` stores verdicts keyed by a hash of (judge, annotator, instruction, output_1, output_2),
so a re-run pays for no judge call twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from im_pipeline.config import JudgeConfig
from im_pipeline.provenance import write_json

log = logging.getLogger(__name__)

FnCompletions = Callable[..., dict[str, list[Any]]]


class JudgeError(RuntimeError):
    """A judge could not be built or called (missing key, HTTP error after retries, unsupported annotator)."""


# -- identity (what result files may say about a judge) --------------------------------------------


def judge_identity(judge: JudgeConfig) -> dict[str, Any]:
    """Kind, model and endpoint host of a judge: what results and caches name. Never the key, never a URL path."""
    host = None
    if judge.kind == "openai":
        if judge.base_url:
            parsed = urlparse(judge.base_url)
            host = parsed.hostname + (f":{parsed.port}" if parsed.port else "") if parsed.hostname else None
        else:
            host = "api.openai.com"
    return {"kind": judge.kind, "model": judge.model, "base_url_host": host}


# -- how verdicts look --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelProtocol:
    """The two verdicts of an ``alpaca_eval`` annotator, as fixed strings.

    ``labels[i]`` is what the judge says when output ``i + 1`` (as shown in the prompt) is better; ``prefix`` is
    forced before the label when scoring locally; ``completions[i]`` is the full answer the annotator's parser
    expects for that verdict; ``logprob_format`` means the parser reads OpenAI-style ``logprobs`` instead of text.
    """

    prefix: str
    labels: tuple[str, str]
    completions: tuple[str, str]
    logprob_format: bool


def protocol_for(annotator_config: dict[str, Any]) -> LabelProtocol:
    """The label protocol of an ``alpaca_eval`` annotator config (``ranking_parser`` or ``logprob_parser``)."""
    parser = annotator_config.get("fn_completion_parser")
    kwargs = annotator_config.get("completion_parser_kwargs") or {}
    if parser == "ranking_parser":
        first = kwargs.get("model_1_name", "model_1")
        second = "model_2" if first == "model_1" else "model_1"
        prefix = f"[{{'model': '{first}', 'rank': "
        return LabelProtocol(
            prefix=prefix,
            labels=("1", "2"),
            completions=(
                f"{prefix}1}}, {{'model': '{second}', 'rank': 2}}]",
                f"{prefix}2}}, {{'model': '{second}', 'rank': 1}}]",
            ),
            logprob_format=False,
        )
    if parser == "logprob_parser":
        num = kwargs["numerator_token"]
        others = [t for t in kwargs["denominator_tokens"] if t != num]
        if len(others) != 1:
            raise JudgeError(f"logprob_parser with denominator tokens {kwargs['denominator_tokens']} is not pairwise")
        return LabelProtocol(prefix="", labels=(num, others[0]), completions=(num, others[0]), logprob_format=True)
    raise JudgeError(
        f"annotator parser {parser!r} is not supported by label-comparing judges; "
        "use an annotator with 'ranking_parser' (e.g. alpaca_eval_gpt4) or 'logprob_parser' "
        "(e.g. weighted_alpaca_eval_gpt4_turbo)"
    )


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """An annotator prompt as chat messages (``alpaca_eval`` prompts are ChatML text)."""
    from alpaca_eval.utils import prompt_to_chatml

    prompt = prompt.strip()
    if prompt.startswith("<|im_start|>") and prompt.endswith("<|im_end|>"):
        return [{"role": m["role"], "content": m["content"]} for m in prompt_to_chatml(prompt)]
    return [{"role": "user", "content": prompt}]


def _logprob_completion(labels: Sequence[str], logprobs: Sequence[float]) -> dict[str, Any]:
    """An OpenAI-style choice whose first token is the best label, with the labels as ``top_logprobs``."""
    best = max(range(len(labels)), key=lambda i: logprobs[i])
    top = [{"token": t, "logprob": lp} for t, lp in zip(labels, logprobs, strict=True)]
    return {
        "text": labels[best],
        "message": {"role": "assistant", "content": labels[best]},
        "logprobs": {"content": [{"token": labels[best], "logprob": logprobs[best], "top_logprobs": top}]},
    }


def _normalise(logprobs: Sequence[float]) -> list[float]:
    m = max(logprobs)
    z = m + math.log(sum(math.exp(lp - m) for lp in logprobs))
    return [lp - z for lp in logprobs]


# -- local Hugging Face judge -------------------------------------------------------------------------


def render_judge_context(tokenizer: Any, messages: list[dict[str, str]], prefix: str = "") -> tuple[str, bool]:
    """Text the judge reads before its answer; second value: whether to add special tokens when encoding.

    Uses the tokenizer's chat template when it has one; otherwise a plain transcript ending in ``Answer:``.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + prefix, False
    body = "\n\n".join(m["content"] for m in messages)
    return f"{body}\n\nAnswer: {prefix}", True


def choice_logprobs(
    model: Any, tokenizer: Any, context: str, choices: Sequence[str], *, add_special_tokens: bool
) -> list[float]:
    """Log-probability of each choice as the continuation of ``context`` (sum over its tokens).

    One forward pass over the context; a choice longer than one token is scored on a copy of the KV cache.
    The choice tokens are those the tokenizer produces for ``context + choice`` beyond the context's own tokens
    (so BPE merges across the boundary are scored as the model would see them).
    """
    import torch

    ctx_ids = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    conts: list[list[int]] = []
    for choice in choices:
        full = tokenizer(context + choice, add_special_tokens=add_special_tokens)["input_ids"]
        if full[: len(ctx_ids)] == ctx_ids and len(full) > len(ctx_ids):
            conts.append(full[len(ctx_ids) :])
        else:
            conts.append(tokenizer(choice, add_special_tokens=False)["input_ids"])
        if not conts[-1]:
            raise JudgeError(f"choice {choice!r} encodes to no tokens")
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ctx_ids], device=device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores = []
        for cont in conts:
            lp = float(first[cont[0]])
            if len(cont) > 1:
                rest = model(
                    input_ids=torch.tensor([cont[:-1]], device=device),
                    past_key_values=copy.deepcopy(out.past_key_values),
                    use_cache=True,
                )
                logp = torch.log_softmax(rest.logits[0].float(), dim=-1)
                lp += float(sum(logp[i, t] for i, t in enumerate(cont[1:])))
            scores.append(lp)
    return scores


class LocalHFJudge:
    """A local causal LM that picks a verdict by comparing the probabilities of the two labels."""

    def __init__(
        self,
        source: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        dtype: str = "float32",
        cache_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        if model is None or tokenizer is None:
            if source is None:
                raise JudgeError("LocalHFJudge needs a model source or a (model, tokenizer) pair")
            from im_pipeline.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(source, dtype=dtype, cache_dir=cache_dir, device=device)
        self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        self.calls = 0

    def score(self, prompt: str, protocol: LabelProtocol) -> list[float]:
        """Label log-probabilities, renormalised over the two labels."""
        context, special = render_judge_context(self.tokenizer, prompt_messages(prompt), protocol.prefix)
        self.calls += 1
        return _normalise(
            choice_logprobs(self.model, self.tokenizer, context, protocol.labels, add_special_tokens=special)
        )

    def fn_completions(self, protocol: LabelProtocol) -> FnCompletions:
        """An ``alpaca_eval`` decoder that answers with the more probable label in the parser's format."""

        def complete(prompts: Sequence[str], **_: Any) -> dict[str, list[Any]]:
            from tqdm.auto import tqdm

            texts, alls, times = [], [], []
            for prompt in tqdm(prompts, desc="judge (local)", unit="pair", disable=len(prompts) < 2):
                start = time.perf_counter()
                lps = self.score(prompt, protocol)
                best = max(range(2), key=lambda i: lps[i])
                if protocol.logprob_format:
                    alls.append(_logprob_completion(protocol.labels, lps))
                texts.append(protocol.completions[best])
                times.append(time.perf_counter() - start)
            out: dict[str, list[Any]] = {
                "completions": texts,
                "time_per_example": times,
                "price_per_example": [0.0] * len(texts),
            }
            if protocol.logprob_format:
                out["completions_all"] = alls
            return out

        return complete


# -- OpenAI-compatible judge -----------------------------------------------------------------------------


class OpenAIJudge:
    """A chat model behind an OpenAI-compatible endpoint.

    ``guided_choice`` (for local vLLM servers) sends vLLM's ``guided_choice`` extension with the two verdict
    completions, so a weak judge model still always answers in a parseable form. The hosted API rejects it.
    """

    def __init__(
        self, judge: JudgeConfig, *, timeout: float = 120.0, concurrency: int = 4, guided_choice: bool = False
    ) -> None:
        import openai

        if judge.kind != "openai":
            raise JudgeError(f"OpenAIJudge needs judge.kind 'openai', got {judge.kind!r}")
        key = os.environ.get(judge.api_key_env)
        if not key:
            raise JudgeError(
                f"the OpenAI-compatible judge needs an API key in the environment variable {judge.api_key_env!r} "
                "(judge.api_key_env); it is not set"
            )
        self.judge = judge
        self._key = key
        self.identity = judge_identity(judge)
        self.concurrency = max(1, concurrency)
        self.guided_choice = guided_choice
        self.client = openai.OpenAI(
            api_key=key, base_url=judge.base_url, max_retries=judge.max_retries, timeout=timeout
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _call(self, prompt: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.judge.model, messages=prompt_messages(prompt), **kwargs
            )
        except openai.APIStatusError as exc:
            detail = "" if exc.status_code in (401, 403) else f": {self._redact(str(exc))[:300]}"
            raise JudgeError(
                f"judge {self.identity['model']} at {self.identity['base_url_host']} answered HTTP "
                f"{exc.status_code}{detail}"
            ) from None
        except openai.APIConnectionError as exc:  # includes timeouts, after the client's retries
            raise JudgeError(
                f"judge at {self.identity['base_url_host']} unreachable after {self.judge.max_retries} retries: "
                f"{type(exc).__name__}"
            ) from None
        choice = response.choices[0].model_dump()
        choice["text"] = choice["message"].get("content") or " "
        return choice

    def fn_completions(self, protocol: LabelProtocol | None = None) -> FnCompletions:
        """An ``alpaca_eval`` decoder; ``completions_kwargs`` of the annotator become request parameters."""

        def complete(prompts: Sequence[str], model_name: str | None = None, **completions_kwargs: Any) -> dict:
            del model_name  # the annotator config names a model; the judge config decides
            kwargs = {
                k: v
                for k, v in completions_kwargs.items()
                if k in ("max_tokens", "temperature", "top_p", "logprobs", "top_logprobs", "stop", "seed")
            }
            if self.guided_choice and protocol is not None:
                kwargs["extra_body"] = {"guided_choice": list(protocol.completions)}
            start = time.perf_counter()
            with ThreadPoolExecutor(self.concurrency) as pool:
                choices = list(pool.map(lambda p: self._call(p, kwargs), prompts))
            per = (time.perf_counter() - start) / max(1, len(prompts))
            return {
                "completions": [c["text"] for c in choices],
                "completions_all": choices,
                "time_per_example": [per] * len(choices),
                "price_per_example": [float("nan")] * len(choices),
            }

        return complete


def make_fn_completions(
    judge: JudgeConfig,
    protocol: LabelProtocol,
    *,
    guided_choice: bool = False,
    concurrency: int = 4,
    local_judge: LocalHFJudge | None = None,
) -> FnCompletions:
    """The ``alpaca_eval`` decoder for a configured judge."""
    if judge.kind == "local_hf":
        return (local_judge or LocalHFJudge(judge.model)).fn_completions(protocol)
    if judge.kind == "openai":
        return OpenAIJudge(judge, concurrency=concurrency, guided_choice=guided_choice).fn_completions(protocol)
    raise JudgeError(f"unknown judge kind {judge.kind!r}; allowed: local_hf, openai")


# -- cache -----------------------------------------------------------------------------------------------


class AnnotationCache:
    """Judge verdicts on disk: ``{key: {"preference": float, ...}}`` in one JSON file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                log.warning("annotation cache %s is not valid JSON; starting afresh", self.path)

    @staticmethod
    def key(judge: dict[str, Any], annotator: str, instruction: str, output_1: str, output_2: str) -> str:
        blob = json.dumps([judge, annotator, instruction, output_1, output_2], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.entries[key] = value

    def save(self) -> None:
        write_json(self.path, self.entries)

    def __len__(self) -> int:
        return len(self.entries)
