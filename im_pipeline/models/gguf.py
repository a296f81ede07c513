"""A GGUF file as a Hugging Face model directory: dequantised once by transformers' GGUF loader, cached as
safetensors."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from im_pipeline.models.cache import PROVENANCE_FILE, atomic_dir, file_lock, is_complete_hf_dir
from im_pipeline.models.common import ensure_pad_token

log = logging.getLogger(__name__)


def gguf_cache_key(gguf: Path) -> str:
    """Name of the cache entry of an arbitrary .gguf file: its stem + a hash of (absolute path, size, mtime).

    Only ``stat`` is used, so a cache hit never reads the (large) file.
    """
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^\w.-]+", "_", gguf.stem)[:60]
    return f"gguf-{stem}-{digest}"


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` with transformers and write a plain float32 safetensors model + tokenizer to ``out_dir``.

    For some architectures transformers keeps GGUF weights packed (``GgufLinear``) unless told to dequantise
    (``GgufConfig(dequantize=True)``), and the loaded model carries a GGUF ``quantization_config``; so the
    dequantised weights are copied into a fresh ``AutoModelForCausalLM.from_config`` model (no quantisation
    config) before ``save_pretrained``.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.perf_counter()
    folder, fname = str(gguf.parent), gguf.name
    log.info("Dequantising %s (one time; later loads use the cache)", gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    ensure_pad_token(tokenizer, str(gguf))
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=fname, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.pad_token_id = tokenizer.pad_token_id
    max_len = getattr(config, "max_position_embeddings", None)
    if max_len and tokenizer.model_max_length > max_len:  # GGUF tokenizers come with an "infinite" max length
        tokenizer.model_max_length = max_len
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key)
        if value is not None:
            setattr(model.generation_config, key, value)
            setattr(model.config, key, value)
    del loaded
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # transformers' GemmaTokenizer defaults to left padding and save_pretrained does not record padding_side; pin
    # every converted tokenizer to the training convention (right), so batches padded with tokenizer.pad() keep
    # their position ids. (Generation pads by hand.)
    tok_cfg_path = out_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["padding_side"] = "right"
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    st = gguf.stat()
    provenance = {
        "source_gguf": str(gguf.resolve()),
        "gguf_size": st.st_size,
        "architecture": model.config.model_type,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "convert_seconds": round(time.perf_counter() - start, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("Dequantised %s in %.1f s", gguf.name, provenance["convert_seconds"])


def cached_conversion(
    name: str, root: Path, get_gguf: Callable[[], Path], cleanup: bool = False, origin: str | None = None
) -> Path:
    """The cached HF directory ``<root>/models/<name>``, creating it from ``get_gguf()`` if absent.

    ``cleanup`` deletes the .gguf afterwards when it lies under ``root`` (a copy made for the conversion; a file
    elsewhere, an installed package's, is never deleted); ``origin`` is recorded in the provenance file.
    """
    target = root / "models" / name
    if is_complete_hf_dir(target):
        return target
    with file_lock(root / "locks" / f"{name}.lock"):
        if is_complete_hf_dir(target):  # converted by another process while we waited
            return target
        if target.exists():  # incomplete (no provenance file): never trust it
            shutil.rmtree(target)
        for stale in target.parent.glob(f".{name}.tmp-*"):  # left by a killed process (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        gguf = get_gguf()
        try:
            with atomic_dir(target) as tmp:
                convert_gguf(gguf, tmp)
                prov_path = tmp / PROVENANCE_FILE
                prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
                prov["origin"] = origin or str(gguf.resolve())
                prov_path.write_text(json.dumps(prov, indent=2) + "\n")
            log.info("Cached %s as %s", gguf.name, target)
        finally:
            if cleanup and gguf.resolve().is_relative_to(root.resolve()):
                gguf.unlink(missing_ok=True)
    return target
