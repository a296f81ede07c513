"""Greedy batched decoding that stops paying for finished rows (used by :func:`generation.generate`).

Hugging Face ``model.generate`` keeps every row of a batch in the forward pass until the *last* row is
done: a row that met EOS or a stop string early goes on costing a full row of compute, padded. It cannot
drop rows, and it prefills the whole left-padded batch at the width of its longest prompt. What this
module adds around it (everything else — the forward pass, greedy token choice, EOS handling, the
model's own logits processors — stays ``model.generate``'s):

* **rounds**: each ``model.generate`` call ends as soon as any row finishes (:class:`EndRoundOnFinish`);
  the finished rows are taken out of the batch and of its KV cache (``Cache.batch_select_indices``) and
  generation resumes for the rest from the same cache (``past_key_values``), so no step is computed
  for a finished row;
* **prefill in chunks**: the prompts (all but their last token, which the first generate step feeds)
  are prefilled in chunks of rows of similar length, each padded only to its own longest prompt, and
  their keys/values are written right-aligned into the batch's left-padded cache;
* **preallocated KV cache** (:class:`PreallocatedCache`): keys/values are written into a buffer sized for
  the whole generation instead of being concatenated onto a growing tensor at every step (which copies
  the whole cache of every layer once per token).

Only greedy decoding takes this path: sampled generation keeps the single ``model.generate`` call so
that its seeded random stream is unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer of ``capacity`` positions (no per-step ``cat``).

    ``self.keys``/``self.values`` are views of the filled prefix, so everything that reads a dynamic layer
    (sequence length, masks, attention) sees exactly what ``DynamicLayer`` would hold.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.filled = 0
        self.key_buf: torch.Tensor | None = None
        self.value_buf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if self.key_buf is None or end > self.key_buf.shape[-2]:
            self._grow(key_states, value_states, max(end, self.capacity))
        assert self.key_buf is not None and self.value_buf is not None
        self.key_buf[:, :, self.filled : end] = key_states
        self.value_buf[:, :, self.filled : end] = value_states
        self.filled = end
        self.keys = self.key_buf[:, :, :end]
        self.values = self.value_buf[:, :, :end]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, size: int) -> None:
        b, h, _, d = key_states.shape
        # Zeros, not empty memory: padded positions are masked out, and 0 * NaN would still be NaN.
        key_buf = key_states.new_zeros((b, h, size, d))
        value_buf = value_states.new_zeros((b, h, size, value_states.shape[-1]))
        if self.filled:
            key_buf[:, :, : self.filled] = self.keys
            value_buf[:, :, : self.filled] = self.values
        self.key_buf, self.value_buf = key_buf, value_buf

    def get_seq_length(self) -> int:
        return self.filled

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.key_buf is not None and self.value_buf is not None:
            self.key_buf = self.key_buf[indices]
            self.value_buf = self.value_buf[indices]
            self.keys = self.key_buf[:, :, : self.filled]
            self.values = self.value_buf[:, :, : self.filled]

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("PreallocatedLayer is for plain decoding; it does not crop")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("PreallocatedLayer is for plain decoding; it does not repeat rows")


class PreallocatedCache(DynamicCache):
    """A dynamic cache of :class:`PreallocatedLayer` (one per decoder layer), ``capacity`` positions each."""

    def __init__(self, num_layers: int, capacity: int):
        Cache.__init__(self, layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


class EndRoundOnFinish(StoppingCriteria):
    """Ends the whole ``generate`` call as soon as one row finishes (EOS or, via ``stop``, a stop string).

    The caller then drops the finished rows and resumes the others; the rows that had not finished are
    told apart by :meth:`finished`.
    """

    def __init__(self, eos_ids: list[int], stop: StoppingCriteria | None):
        self.eos_ids = eos_ids
        self.stop = stop
        self.last: torch.Tensor | None = None

    def finished(self, input_ids: torch.Tensor) -> torch.Tensor:
        done = torch.isin(input_ids[:, -1], torch.tensor(self.eos_ids, device=input_ids.device))
        if self.stop is not None:
            done = done | self.stop(input_ids, None)
        return done

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.last = self.finished(input_ids)
        return torch.full_like(self.last, bool(self.last.any()))


def _eos_ids(gen_cfg: Any) -> list[int]:
    eos = gen_cfg.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` left-padded with ``pad_id`` to the longest (an empty row is all padding): (ids, attention mask).

    By hand: independent of the tokenizer's padding_side setting, which we must not mutate for other callers
    (the training collator pads on the right).
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _prefill(model: Any, rows: list[list[int]], width: int, capacity: int, chunk: int, pad_id: int) -> Any:
    """Cache of ``rows`` (already without their last token), left-padded to ``width``, chunk by chunk."""
    cache = PreallocatedCache(model.config.get_text_config(decoder=True).num_hidden_layers, capacity)
    device = next(model.parameters()).device
    for c in range(0, len(rows), chunk):
        part = rows[c : c + chunk]
        ids, mask = left_pad(part, pad_id)
        w = ids.shape[1]
        if w == 0:
            continue
        # As generate computes them for a left-padded batch (pads: position 0, masked anyway).
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=1,
        )
        for layer, src in zip(cache.layers, out.past_key_values.layers, strict=True):
            k, v = src.keys, src.values
            if layer.key_buf is None:
                layer.lazy_initialization(k, v)
                _, h, _, d = k.shape
                layer.key_buf = k.new_zeros((len(rows), h, capacity, d))
                layer.value_buf = v.new_zeros((len(rows), h, capacity, v.shape[-1]))
            layer.key_buf[c : c + len(part), :, width - w : width] = k
            layer.value_buf[c : c + len(part), :, width - w : width] = v
    for layer in cache.layers:
        if layer.key_buf is not None:
            layer.filled = width
            layer.keys, layer.values = layer.key_buf[:, :, :width], layer.value_buf[:, :, :width]
    return cache


def greedy_batch(
    model: Any,
    rows: list[list[int]],
    gen_cfg: Any,
    max_new_tokens: int,
    pad_id: int,
    stop_factory: Any = None,
    prefill_chunk: int = 8,
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS included when generated) of ``rows``, in their order.

    ``rows`` should be sorted by length (longest first) so that prefill chunks carry little padding.
    ``stop_factory(prompt_length)`` builds the per-row stop-string criterion, or is None.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(rows, pad_id)
    width = ids.shape[1]
    ids, mask = ids.to(device), mask.to(device)
    # Always our cache (empty when every prompt is one token): generate fills it, the next round resumes it.
    cache = _prefill(model, [r[:-1] for r in rows], width - 1, width - 1 + max_new_tokens, prefill_chunk, pad_id)
    eos = _eos_ids(gen_cfg)
    alive = list(range(len(rows)))  # original row index of each row still in the batch
    results: list[list[int]] = [[] for _ in rows]
    while alive:
        generated = ids.shape[1] - width
        round_cfg = copy.deepcopy(gen_cfg)
        round_cfg.max_new_tokens = max_new_tokens - generated
        round_end = EndRoundOnFinish(eos, stop_factory(width) if stop_factory else None)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=cache,
            generation_config=round_cfg,
            stopping_criteria=StoppingCriteriaList([round_end]),
        )
        done = round_end.last
        if done is None or out.shape[1] - width >= max_new_tokens:  # out of new tokens: every row is done
            done = torch.ones(len(alive), dtype=torch.bool, device=out.device)
        for j in done.nonzero().flatten().tolist():
            results[alive[j]] = out[j, width:].tolist()
        keep = (~done).nonzero().flatten()
        if len(keep) == 0:
            break
        cache.batch_select_indices(keep.to(device))
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], out.shape[1] - ids.shape[1]))], dim=1)[keep]
        ids = out[keep]
        alive = [alive[j] for j in keep.tolist()]
    return results
