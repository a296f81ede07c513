"""Where models run: the accelerators torch sees, the evaluation device and dtype a config asks for, per-GPU leases
for units running concurrently on one host, and the refusal of in-process training on several GPUs.

Every question to ``torch.cuda`` goes through :func:`cuda_count` and :func:`bf16_capable`, so tests fake a
multi-GPU host by monkeypatching those two. A lease (:func:`gpu_lease`) takes an exclusive ``flock`` per GPU in a
host-wide directory: units in threads of one process, and processes of one host (several ``im-pipeline run``,
several work-pool workers), each get their own GPU(s); the kernel releases a dead holder's locks.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EVAL_DEVICES = ("auto", "cpu", "cuda")
"""``evaluation.device`` values besides ``cuda:N``."""

LOCK_DIR = Path(tempfile.gettempdir()) / "im-pipeline-gpu-locks"
"""Host-wide directory of the per-GPU lock files (one per physical GPU id)."""


def cuda_count() -> int:
    """GPUs visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def bf16_capable() -> bool:
    """Whether the visible GPU computes in bfloat16 natively (Ampere or newer)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def check_device_spec(spec: str) -> str:
    """``spec`` when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a ValueError naming the allowed values."""
    if spec in EVAL_DEVICES or (spec.startswith("cuda:") and spec[5:].isdigit()):
        return spec
    raise ValueError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_device(spec: str) -> str:
    """The torch device for ``spec``: ``auto`` = ``cuda:0`` when a GPU is visible, else ``cpu``; asking for a GPU
    that is not there is an error (never a silent fall-back to the CPU)."""
    n = cuda_count()
    if check_device_spec(spec) == "cpu" or (spec == "auto" and n == 0):
        return "cpu"
    index = 0 if spec in ("auto", "cuda") else int(spec[5:])
    if index >= n:
        raise RuntimeError(f"evaluation.device {spec!r}: {n} GPU(s) visible to this process")
    return f"cuda:{index}"


def resolve_eval_dtype(spec: str, device: str) -> str:
    """The evaluation dtype: an explicit one as given; ``auto`` = bfloat16 on a bf16-capable GPU, else float32 (the
    CPU, and GPUs before Ampere: float16 there only when asked for, it can overflow on bf16-trained models)."""
    if spec != "auto":
        return spec
    return "bfloat16" if device.startswith("cuda") and bf16_capable() else "float32"


def free_memory(device: str) -> None:
    """Return the cached blocks of a CUDA device to the driver (after a unit's models are dropped)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def visible_ids() -> list[str]:
    """The physical ids of the visible GPUs (``CUDA_VISIBLE_DEVICES`` when set: what the lock files are named by)."""
    n = cuda_count()
    given = [w.strip() for w in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if w.strip()]
    return given[:n] if len(given) >= n else [str(i) for i in range(n)]


def refuse_data_parallel(world_size: int) -> None:
    """In-process training sees one GPU at most: with more, transformers' Trainer would wrap the model in
    ``nn.DataParallel`` (one process, replicas re-made every step). Refused with the way out."""
    n = cuda_count()
    if world_size == 1 and n > 1:
        raise RuntimeError(
            f"{n} GPUs are visible to in-process training: set training.launcher (e.g. 'accelerate launch "
            f"--num_processes {n}' or 'torchrun --standalone --nproc_per_node {n}') to train on all of them with "
            "one process per GPU, or make one GPU visible (CUDA_VISIBLE_DEVICES); DataParallel is never used"
        )


@dataclass(frozen=True)
class GpuLease:
    """GPUs held by one unit: their indices in this process and their physical ids."""

    indices: tuple[int, ...]
    ids: tuple[str, ...]

    @property
    def device(self) -> str:
        """The torch device of the first leased GPU (``cpu`` for an empty lease)."""
        return f"cuda:{self.indices[0]}" if self.indices else "cpu"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a subprocess that must see only these GPUs (nothing for an empty lease)."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.ids)} if self.ids else {}


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _release(fds: Sequence[int]) -> None:
    for fd in fds:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def gpu_lease(
    count: int,
    *,
    only: Sequence[int] | None = None,
    prefer: Sequence[int] = (),
    lock_dir: Path | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll_s: float = 0.5,
) -> Iterator[GpuLease]:
    """Hold ``count`` visible GPUs exclusively for the block (an empty lease without GPUs or with ``count`` 0).

    ``only``: the indices allowed (``cuda:N`` asks for GPU N); ``prefer``: tried first (a unit's GPU of its last
    job, where its model still sits). Waits, saying so once, while the other units hold them."""
    ids = visible_ids()
    allowed = [i for i in (range(len(ids)) if only is None else only) if i < len(ids)]
    if count == 0 or not ids:
        yield GpuLease((), ())
        return
    if count > len(allowed):
        raise RuntimeError(f"a unit asks for {count} GPU(s); {len(allowed)} of this host's are allowed")
    folder = lock_dir or LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    order = [i for i in prefer if i in allowed] + [i for i in allowed if i not in prefer]
    told = False
    while True:
        held: dict[int, int] = {}
        for i in order:
            fd = _try_lock(folder / f"gpu-{ids[i]}.lock")
            if fd is not None:
                held[i] = fd
            if len(held) == count:
                break
        if len(held) == count:
            break
        _release(list(held.values()))  # never sit on part of a lease while waiting (no deadlock between units)
        if not told and on_wait is not None:
            on_wait(f"waiting for {count} free GPU(s) of {[ids[i] for i in allowed]}")
            told = True
        time.sleep(poll_s)
    try:
        picked = tuple(sorted(held))
        yield GpuLease(picked, tuple(ids[i] for i in picked))
    finally:
        _release(list(held.values()))


@contextmanager
def eval_lease(spec: str, *, on_wait: Callable[[str], None] | None = None) -> Iterator[GpuLease]:
    """The GPU one evaluation job runs on, held for the job (an empty lease: the CPU). ``auto`` / ``cuda``: any free
    visible GPU; ``cuda:N``: GPU N, waiting for it."""
    if resolve_device(spec) == "cpu":
        yield GpuLease((), ())
        return
    only = None if spec in ("auto", "cuda") else [int(spec[5:])]
    with gpu_lease(1, only=only, on_wait=on_wait) as lease:
        yield lease


def train_gpus(processes: int | None) -> int:
    """GPUs a training unit holds: one per launched process (all visible ones when the launcher does not say how
    many: accelerate and torchrun then use them all), one in-process (0 without GPUs)."""
    n = cuda_count()
    if n == 0:
        return 0
    if processes is None:
        return 1
    return processes if processes > 1 else n
