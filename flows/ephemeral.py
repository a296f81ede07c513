"""Prefect's ephemeral API server, bound to the life of the ``im-pipeline run`` that started it.

Without ``PREFECT_API_URL``, Prefect 3.8.8 starts a temporary server (``SubprocessASGIServer``: a
``uvicorn`` subprocess) on first use and stops it from an ``atexit`` hook. That hook never runs when
the CLI is killed (SIGTERM's default action, SIGKILL, the OOM killer), and the server then keeps
running. Here the same server is started by :func:`start_bound_ephemeral_server` with
``PR_SET_PDEATHSIG(SIGKILL)``: the kernel kills it as soon as the process that started it dies, by
any signal. The instance registers itself where Prefect looks for its ephemeral server, so every
Prefect client of this process uses it, and Prefect's own ``atexit`` stop still applies on a normal
exit.

It must be started from the main thread: ``PR_SET_PDEATHSIG`` fires when the *thread* that created the
child exits, and the main thread lives as long as the process.

The override repeats a private Prefect method, so it is used only where it was verified: :data:`VERIFIED` maps each
Prefect version to the SHA-256 of that method's source there (:func:`verified`). On any other Prefect version, or
when the method's source differs, a warning says so and Prefect starts its own (unbound) server as usual;
``tests/test_prefect_server.py`` fails when the installed Prefect is not verified, so an upgrade is checked here.
"""

from __future__ import annotations

import ctypes
import hashlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, get_current_settings

_PR_SET_PDEATHSIG = 1

VERIFIED = {"3.8.8": "ade91366329f9f14fa49035c1801a6f63c240e439adb65efef67a96ce3f524c6"}
"""Prefect versions whose ``SubprocessASGIServer._run_uvicorn_command`` :class:`BoundEphemeralServer` repeats:
version → SHA-256 of the method's source (``inspect.getsource``)."""

log = logging.getLogger(__name__)


def source_hash() -> str:
    """SHA-256 of the installed Prefect's ``SubprocessASGIServer._run_uvicorn_command`` source."""
    return hashlib.sha256(inspect.getsource(SubprocessASGIServer._run_uvicorn_command).encode()).hexdigest()


def verified() -> bool:
    """True when the installed Prefect is a version the override was verified on, with the same method source."""
    return VERIFIED.get(prefect.__version__) == source_hash()


def _die_with_parent(parent: int) -> Any:
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:  # in the child, between fork and exec
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)  # the parent is already gone (or prctl failed): do not start an orphan server

    return preexec


class BoundEphemeralServer(SubprocessASGIServer):
    """``SubprocessASGIServer`` whose uvicorn process dies with its parent (Linux ``PR_SET_PDEATHSIG``)."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # Prefect 3.8.8's _run_uvicorn_command (prefect/server/api/server.py), plus preexec_fn. Prefect has no
        # hook for extra Popen arguments, so its 20 lines are repeated here: same command, same environment.
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        return subprocess.Popen(
            args=[
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env={
                **os.environ,
                **server_env,
                **get_current_settings().to_environment_variables(exclude_unset=True),
            },
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
        )


def start_bound_ephemeral_server() -> BoundEphemeralServer | None:
    """Start the ephemeral server bound to this process; None when a real server is configured (or not Linux)."""
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None  # Prefect starts its own, unbound, server on first use
    if not verified():
        log.warning(
            "Prefect %s is not a version the ephemeral-server override was verified on (%s): using Prefect's own "
            "server, which may outlive this process if it is killed",
            prefect.__version__,
            ", ".join(VERIFIED),
        )
        return None
    server = BoundEphemeralServer()  # registered under port None: what Prefect's clients look up
    if not isinstance(server, BoundEphemeralServer):  # Prefect already started one in this process
        return None
    server.start()
    return server
