"""One training unit under a multi-process launcher (``torchrun``, ``accelerate launch``).

With ``training.launcher`` (or ``$IM_PIPELINE_TRAIN_LAUNCHER``) set, the train task does not call
:func:`~im_pipeline.training.train_arm` in its own process: :func:`launch` writes the resolved config beside the
run and a job file (``launch.json``: config, arm, seed, run and data directories, the unit's training key) and runs
``<launcher> -m im_pipeline.training.launch <run dir>/launch.json``. Every process the launcher starts runs
:func:`main`, i.e. ``train_arm``; the Hugging Face Trainer inside picks up DDP / FSDP /
DeepSpeed from the launcher's environment, every process takes part in the final save and rank 0 alone writes the
checkpoint, ``train_log.jsonl`` and ``train_summary.json`` (which records ``world_size``). The launcher's output
goes to this module's logger line by line (so it reaches the Prefect UI with the task's logs).

Process hygiene (a launcher left behind keeps its GPUs after the unit's lock is freed): the launcher runs in its own
process group (session) with a parent-death signal (``PR_SET_PDEATHSIG`` = SIGTERM on Linux, set through ctypes in a
``preexec_fn``), and the whole group is killed when :func:`launch` returns or raises. torchrun starts every rank in a
session of its own, so each rank, in :func:`main`, asks for SIGKILL when its launcher dies: a unit process killed
with SIGKILL leaves no rank alive. Two units on one node never clash on a rendezvous port: ``torchrun`` gets
``--standalone`` and ``accelerate launch`` a free ``--main_process_port`` unless the launcher names its own.

    python -m im_pipeline.training.launch runs/x/IM/seed-0/launch.json

An entry point for launchers, not a command for people: it takes the one job file, no options.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from im_pipeline.results import TrainSummary

log = logging.getLogger(__name__)

MODULE = "im_pipeline.training.launch"


def _program(word: str) -> str:
    """A launcher program: the one installed beside this Python (the project's environment) when there is one."""
    beside = Path(sys.executable).parent / word
    if os.sep not in word and beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    if shutil.which(word) is None:
        raise FileNotFoundError(f"training launcher program {word!r} not found (beside {sys.executable} or on PATH)")
    return word


def _free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _own_rendezvous(words: list[str]) -> list[str]:
    """``words`` (a launcher's own arguments) with a rendezvous of this unit's own, unless they name one already:
    ``--standalone`` for torchrun, a free ``--main_process_port`` for ``accelerate launch``."""
    program, rest = Path(words[0]).name, words[1:]
    named = {w.split("=")[0].replace("_", "-") for w in rest}
    if program == "torchrun" and not named & {"--standalone", "--rdzv-endpoint", "--master-port", "--nnodes"}:
        return [words[0], "--standalone", *rest]
    if program == "accelerate" and rest[:1] == ["launch"] and not named & {"--main-process-port", "--num-machines"}:
        return [words[0], "launch", "--main_process_port", str(_free_port()), *rest[1:]]
    return words


def launch_command(launcher: str, job_file: Path) -> list[str]:
    """The command line that runs one training unit (described by ``job_file``) under ``launcher``."""
    words = shlex.split(launcher)
    if not words:
        raise ValueError("empty training launcher")
    words = _own_rendezvous([_program(words[0]), *words[1:]])
    return [*words, "-m", MODULE, str(job_file)]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Any:
    """libc's ``prctl`` (Linux), or None. Python has no binding for it, hence ctypes."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere
    nothing. Exits at once if the parent is already gone."""
    prctl = _prctl()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request: no signal will come
        sys.exit(1)


def _launcher_preexec() -> Any:
    """The launcher's ``preexec_fn``: SIGTERM when the unit's process dies (torchrun then stops its ranks). libc is
    loaded here, in the parent: between fork and exec the child of a threaded process (a Prefect task runner) only
    makes the system call, never takes the dynamic loader's lock."""
    prctl = _prctl()
    if prctl is None:
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the launcher's process group: SIGTERM (torchrun stops its ranks), 30 s, then SIGKILL to what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is empty
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30.0)


def launch(
    launcher: str,
    cfg: Any,
    arm: str,
    seed: int,
    run_dir: Path,
    data_dir: Path,
    *,
    key: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train one (arm, seed) under ``launcher``; returns ``train_summary.json``. Raises when the launch fails.
    ``env``: added to the launcher's environment (the unit's ``CUDA_VISIBLE_DEVICES``).

    ``key``: the unit's training key, passed on to every process's :func:`~im_pipeline.training.train_arm`."""
    from im_pipeline.config import write_resolved_config
    from im_pipeline.provenance import write_json
    from im_pipeline.runs.layout import UnitLayout

    run_dir = Path(run_dir).resolve()
    config_file = write_resolved_config(cfg, run_dir, arm=arm, seed=seed)
    job = {"config": str(config_file), "arm": arm, "seed": seed, "run_dir": str(run_dir), "key": key}
    job["data"] = str(Path(data_dir).resolve())
    job_file = UnitLayout.at(run_dir).launch_job
    write_json(job_file, job)
    cmd = launch_command(launcher, job_file)
    log.info("%s/seed-%s: launching %s", arm, seed, shlex.join(cmd))
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    code = _run_logged(cmd, env, f"{arm}/seed-{seed}", tail)
    if code != 0:
        last = "\n".join(tail)
        raise RuntimeError(f"training of {arm}/seed-{seed} under {launcher!r} exited with code {code}:\n{last}")
    summary_path = UnitLayout.at(run_dir).train_summary
    if not summary_path.is_file():
        raise RuntimeError(f"training under {launcher!r} exited without writing {summary_path}")
    return TrainSummary.read(summary_path).to_json()


def _run_logged(cmd: list[str], env: dict[str, str], unit: str, tail: collections.deque[str]) -> int:
    """Run the launcher in its own process group, its output to the log (last lines kept in ``tail``); the group is
    killed when this returns or raises (an exception, the task cancelled), so no rank outlives the unit."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, which _kill_group can end as a whole
        preexec_fn=_launcher_preexec(),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log.info("[%s launch] %s", unit, line)
        return proc.wait()
    finally:
        _kill_group(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """One process of a launched training unit: ``python -m im_pipeline.training.launch JOB.json``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: python -m {MODULE} JOB.json  (written by launch(); see the module docstring)", file=sys.stderr)
        return 2
    if "LOCAL_RANK" in os.environ:  # a rank under a launcher: end with it (torchrun gives each its own session)
        die_with_parent(signal.SIGKILL)
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")

    import yaml

    from im_pipeline.config import config_from_dict
    from im_pipeline.data import seed_data
    from im_pipeline.training import train_arm

    raw = yaml.safe_load(Path(job["config"]).read_text(encoding="utf-8"))
    cfg = config_from_dict({k: v for k, v in raw.items() if not k.startswith("_")}, job["config"])
    data = Path(job["data"])
    seed = int(job["seed"])
    train, held_out = seed_data(cfg.data, data, seed)
    train_arm(cfg, cfg.arm(job["arm"]), seed, train, held_out, Path(job["run_dir"]), key=job["key"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
