"""Loading a resolved model and its tokenizer (a pad token guaranteed, the dtype applied, Hub errors made
readable), on the device asked for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from im_pipeline import hub
from im_pipeline.models.common import ModelSourceError, ensure_pad_token, torch_dtype
from im_pipeline.models.resolve import how_to_provide, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _wrap_hub_error(source: str, resolved: str, exc: Exception) -> Exception:
    if _is_hub(source, resolved):  # a Hub id used online
        if hub.auth_problem(exc):  # gated (meta-llama/Llama-2-7b-hf) or private: say how to log in
            return ModelSourceError(hub.auth_message(source, "model"))
        msg = f"could not load {source!r} from the Hugging Face Hub: {hub.redact_token(str(exc))}\n"
        return ModelSourceError(msg + how_to_provide(source))
    return exc


def _is_hub(source: str, resolved: str) -> bool:
    return resolved == source and not Path(source).exists()


def _tokenizer_from(resolved: str, source: str, revision: str | None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    hub = _is_hub(source, resolved)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, revision=revision if hub else None)
    except (OSError, ValueError) as exc:
        raise _wrap_hub_error(source, resolved, exc) from exc
    ensure_pad_token(tokenizer, source)
    return tokenizer


def load_tokenizer(
    source: str, *, cache_dir: str | None = None, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model source, with a pad token (existing pad, else EOS; never a new token)."""
    resolved = resolve_model(source, cache_dir=cache_dir, revision=revision)
    return _tokenizer_from(resolved, source, revision)


def load_model_and_tokenizer(
    source: str,
    *,
    dtype: Any = "float32",
    cache_dir: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    attn_implementation: str | None = None,
    **load_kw: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from any model source (see module docstring), on ``device``; ``load_kw``
    go to ``from_pretrained`` (QLoRA's ``quantization_config`` and ``device_map``, which then places the model).

    ``attn_implementation`` (``model.attn_implementation``) goes to ``from_pretrained`` as is; None leaves
    transformers' default.

    The tokenizer has a pad token and ``model.config.pad_token_id`` / ``generation_config.pad_token_id`` match it.
    The model is returned in eval mode; callers that train switch it with ``model.train()``.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(source, cache_dir=cache_dir, revision=revision)
    hub = _is_hub(source, resolved)
    tokenizer = _tokenizer_from(resolved, source, revision)
    try:
        attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(
            resolved, dtype=torch_dtype(dtype), revision=revision if hub else None, **attn, **load_kw
        )
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelSourceError):
            raise
        raise _wrap_hub_error(source, resolved, exc) from exc
    n_embed = model.get_input_embeddings().num_embeddings
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= n_embed:
        raise ModelSourceError(
            f"{source!r}: pad token id {tokenizer.pad_token_id} is outside the embedding matrix ({n_embed} rows)"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    if device != "cpu" and "device_map" not in load_kw:
        model = model.to(device)
    return model, tokenizer
