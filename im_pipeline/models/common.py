"""What resolving, converting and loading share: the error for a source that cannot be provided, a pad token that
never adds a token, the dtype by name."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class ModelSourceError(ValueError):
    """A model source cannot be resolved; the message says what was tried and how to fix it."""


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
    """Give the tokenizer a pad token without adding a token: keep an existing one, else reuse EOS.

    Padding is masked by ``attention_mask`` and labels (-100), so pad == EOS does not hide EOS from the loss.
    A tokenizer with neither pad nor EOS is an error: adding a token would silently resize the embeddings.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ModelSourceError(
            f"tokenizer of {source!r} has neither a pad nor an EOS token; add one explicitly "
            "(tokenizer.add_special_tokens + model.resize_token_embeddings) and save it as a local directory"
        )
    tokenizer.pad_token = tokenizer.eos_token
    log.info("%s: no pad token; using EOS %r as pad", source, tokenizer.eos_token)


def torch_dtype(dtype: Any) -> Any:
    """A ``torch.dtype`` from its name (``"bfloat16"``, ``"torch.float16"``); ``None``, ``"auto"`` and dtypes pass."""
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelSourceError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value
