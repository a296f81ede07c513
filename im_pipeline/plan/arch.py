"""A model's architecture without its weights: its config (a file, the converted cache, GGUF metadata, the Hub or a
shipped copy) and its parameter count from a model built on the meta device.

Imports only the standard library at module level (torch / transformers inside the functions that need them), so
``bench/gpu_verify.py`` can use it on a machine without the rest of the project's dependencies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parent / "model_configs"
SHIPPED = {
    "meta-llama/llama-2-7b-hf": "llama-2-7b.json",
    "meta-llama/llama-2-7b-chat-hf": "llama-2-7b.json",
    "meta-llama/llama-2-13b-hf": "llama-2-13b.json",
    "meta-llama/llama-2-13b-chat-hf": "llama-2-13b.json",
    "smollm2-135m-instruct": "smollm2-135m-instruct.json",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m-instruct.json",
}
"""Model sources (lower case) whose config ships with the package: the paper's models and the default model."""


@dataclass(frozen=True)
class Arch:
    """The shapes that memory and time depend on."""

    model_type: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    max_positions: int | None

    @classmethod
    def of(cls, config: dict[str, Any]) -> Arch:
        text = config.get("text_config") or config  # multimodal configs (gemma-3) nest the decoder's
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        return cls(
            model_type=str(text.get("model_type", config.get("model_type", "?"))),
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            intermediate=int(text.get("intermediate_size") or 4 * hidden),
            vocab=int(text["vocab_size"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            max_positions=text.get("max_position_embeddings"),
        )


def shipped_config(source: str) -> dict[str, Any] | None:
    """The packaged copy of a known model's config.json, or None."""
    name = SHIPPED.get(source.strip().lower())
    if name is None:
        return None
    return json.loads((SHIPPED_DIR / name).read_text(encoding="utf-8"))


def _gguf_config(path: Path) -> dict[str, Any]:
    """The config in a GGUF file's metadata (transformers' reader, tensors not loaded, nothing dequantised)."""
    from transformers import AutoConfig

    folder, name = str(path.parent), path.name
    return AutoConfig.from_pretrained(folder, gguf_file=name).to_dict()


def _hub_config(source: str, revision: str | None) -> dict[str, Any] | None:
    """config.json from the Hub (or its local cache); None when neither has it."""
    from transformers import AutoConfig

    from im_pipeline.hub import hub_reachable

    try:
        if hub_reachable(timeout=2.0):
            return AutoConfig.from_pretrained(source, revision=revision).to_dict()
        return AutoConfig.from_pretrained(source, revision=revision, local_files_only=True).to_dict()
    except (OSError, ValueError):
        return None


def load_model_config(
    source: str, *, model_config: str | Path | None = None, cache_dir: str | None = None, revision: str | None = None
) -> tuple[dict[str, Any], str]:
    """``(config dict, where it came from)`` for a model source, without loading weights.

    In order: ``model_config`` (a config.json given by the user); a local directory's config.json; a .gguf file's
    metadata; a shipped model's converted cache; the Hub (or its local cache); the packaged copy of a known model's
    config (:data:`SHIPPED`). Raises ``FileNotFoundError`` naming ``--model-config`` when none has it.
    """
    if model_config:
        path = Path(model_config).expanduser()
        return json.loads(path.read_text(encoding="utf-8")), f"{path} (--model-config)"
    local = Path(source).expanduser()
    if local.is_dir() and (local / "config.json").is_file():
        return json.loads((local / "config.json").read_text(encoding="utf-8")), f"{local / 'config.json'}"
    if local.suffix == ".gguf" and local.is_file():
        return _gguf_config(local), f"{local} (GGUF metadata)"
    if "/" not in source and not local.exists():  # a PyPI-shipped model's name: its converted cache, if any
        from im_pipeline.models.cache import cache_root

        converted = cache_root(cache_dir) / "models" / source / "config.json"
        if converted.is_file():
            return json.loads(converted.read_text(encoding="utf-8")), f"{converted} (converted cache)"
    elif "/" in source:
        hub = _hub_config(source, revision)
        if hub is not None:
            return hub, f"{source} (Hub config)"
    shipped = shipped_config(source)
    if shipped is not None:
        return shipped, f"{SHIPPED[source.strip().lower()]} (shipped with im-pipeline)"
    raise FileNotFoundError(
        f"no architecture for model {source!r}: neither a local config.json, a GGUF file, the Hub nor a shipped "
        "config has it; pass --model-config PATH/config.json"
    )


def meta_model(config: dict[str, Any], layers: int | None = None) -> Any:
    """The model of ``config`` built on the meta device (no memory, no weights); ``layers`` overrides the depth."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = AutoConfig.for_model(**clean)
    if layers is not None:
        cfg.num_hidden_layers = layers
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def count_params(config: dict[str, Any]) -> int:
    """Parameters of the model of ``config`` (shared tensors such as tied embeddings once), on the meta device."""
    model = meta_model(config)
    return sum(p.numel() for p in model.parameters())
