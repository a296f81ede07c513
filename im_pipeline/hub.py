"""Whether the Hugging Face Hub may be used: the one definition (data sources, models, lm-eval, AlpacaEval ask here).

Offline when any of ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value
(``1``, ``true``, ``yes``, ``on``: huggingface_hub's own reading), so nothing tries the network; otherwise usable
when huggingface.co answers a short connection attempt, so an air-gapped machine fails at once instead of spending
the libraries' retries (``datasets`` takes about 25 s) before the same error.
"""

from __future__ import annotations

import os
import socket

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def hub_offline() -> bool:
    """True when the environment says the Hub must not be contacted."""
    return any(os.environ.get(var, "").strip().lower() in TRUE_VALUES for var in OFFLINE_VARIABLES)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True unless the Hub is switched off (:func:`hub_offline`) or huggingface.co cannot be reached."""
    if hub_offline():
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_state() -> str:
    """Why the Hub is not used, in words (for error messages)."""
    set_vars = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().lower() in TRUE_VALUES]
    return f"offline ({', '.join(f'{v}=1' for v in set_vars)})" if set_vars else "unreachable from this machine"
