"""Whether the Hugging Face Hub may be used: the one definition (data sources, models, lm-eval, AlpacaEval ask here).

Each library reads its own switches, and so does each caller here: ``huggingface_hub`` downloads honour
``HF_HUB_OFFLINE`` (:data:`HUB`), ``datasets`` also ``HF_DATASETS_OFFLINE`` (:data:`DATASETS`), ``transformers``
also ``TRANSFORMERS_OFFLINE`` (:data:`MODELS`). A switch set to a true value (``1``, ``true``, ``yes``, ``on``:
huggingface_hub's own reading) means offline and nothing tries the network; otherwise the Hub is usable when
huggingface.co answers a short connection attempt, so an air-gapped machine fails at once instead of spending the
libraries' retries (``datasets`` takes about 25 s) before the same error.
"""

from __future__ import annotations

import os
import socket

HUB = ("HF_HUB_OFFLINE",)
DATASETS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
MODELS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def _switched_off(variables: tuple[str, ...]) -> list[str]:
    return [v for v in variables if os.environ.get(v, "").strip().lower() in TRUE_VALUES]


def hub_offline(variables: tuple[str, ...] = HUB) -> bool:
    """True when one of ``variables`` says the Hub must not be contacted."""
    return bool(_switched_off(variables))


def hub_reachable(timeout: float = 3.0, variables: tuple[str, ...] = HUB) -> bool:
    """True unless the Hub is switched off (:func:`hub_offline`) or huggingface.co cannot be reached."""
    if hub_offline(variables):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_state(variables: tuple[str, ...] = HUB) -> str:
    """Why the Hub is not used, in words (for error messages)."""
    off = _switched_off(variables)
    return f"offline ({off[0]}=1)" if off else "unreachable from this machine"
