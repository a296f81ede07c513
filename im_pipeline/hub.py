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
import re
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


def auth_problem(exc: BaseException) -> bool:
    """True when ``exc`` or its cause says a repository is gated, private or needs a login (HTTP 401 / 403)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(getattr(current, "response", None), "status_code", None)
        gated = re.search(r"\bgated\b", str(current), flags=re.I)  # not "aggregated"
        if type(current).__name__ == "GatedRepoError" or status in (401, 403) or gated:
            return True
        current = current.__cause__ or current.__context__
    return False


def auth_message(repo_id: str, kind: str) -> str:
    """The error for a gated or private repository (``kind``: "model" or "dataset"); never holds the token."""
    url = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    return (
        f"{kind} {repo_id!r} on the Hugging Face Hub is gated or private (HTTP 401/403: access needs a login): "
        f"request access at {url} with your account, then log in on this machine with `hf auth login` or set "
        "HF_TOKEN (huggingface_hub reads it; im-pipeline never logs or writes it)"
    )


def redact_token(text: str) -> str:
    """``text`` with the Hub token (HF_TOKEN or the saved login), if any, replaced by ``***``."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text
