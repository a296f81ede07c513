"""One training unit under a multi-process launcher (``torchrun``, ``accelerate launch``).

With ``training.launcher`` (or ``$IM_PIPELINE_TRAIN_LAUNCHER``) set, the train task does not call
:func:`~im_pipeline.training.train_arm` in its own process: :func:`launch` writes the resolved config beside the
run and runs ``<launcher> -m im_pipeline.training.launch --config ... --arm ... --seed ...``. Every process the
launcher starts runs :func:`main`, i.e. ``train_arm``; the Hugging Face Trainer inside picks up DDP / FSDP /
DeepSpeed from the launcher's environment, every process takes part in the final save and rank 0 alone writes the
checkpoint, ``train_log.jsonl`` and ``train_summary.json`` (which records ``world_size``). The launcher's output
goes to this module's logger line by line (so it reaches the Prefect UI with the task's logs).

    python -m im_pipeline.training.launch --config runs/x/IM/seed-0/config.yaml --arm IM --seed 0 \\
        --run-dir runs/x/IM/seed-0 --data runs/x/data
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def launch_command(launcher: str, config_file: Path, arm: str, seed: int, run_dir: Path, data_dir: Path) -> list[str]:
    """The command line that runs one training unit under ``launcher`` (a command prefix)."""
    words = shlex.split(launcher)
    if not words:
        raise ValueError("empty training launcher")
    return [
        _program(words[0]),
        *words[1:],
        "-m",
        MODULE,
        "--config",
        str(config_file),
        "--arm",
        arm,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--data",
        str(data_dir),
    ]


def launch(launcher: str, cfg: Any, arm: str, seed: int, run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Train one (arm, seed) under ``launcher``; returns ``train_summary.json``. Raises when the launch fails."""
    from im_pipeline.config import write_resolved_config
    from im_pipeline.training.trainer import TRAIN_SUMMARY

    run_dir = Path(run_dir).resolve()
    config_file = write_resolved_config(cfg, run_dir, arm=arm, seed=seed)
    cmd = launch_command(launcher, config_file, arm, seed, run_dir, Path(data_dir).resolve())
    log.info("%s/seed-%s: launching %s", arm, seed, shlex.join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=40)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log.info("[%s/seed-%s launch] %s", arm, seed, line)
        code = proc.wait()
    if code != 0:
        last = "\n".join(tail)
        raise RuntimeError(f"training of {arm}/seed-{seed} under {launcher!r} exited with code {code}:\n{last}")
    summary_path = run_dir / TRAIN_SUMMARY
    if not summary_path.is_file():
        raise RuntimeError(f"training under {launcher!r} exited without writing {summary_path}")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    p.add_argument("--config", required=True, help="resolved experiment config (YAML)")
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", required=True, help="directory with the prepared train.jsonl and held_out.jsonl")
    args = p.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")

    import yaml

    from im_pipeline.config import config_from_dict
    from im_pipeline.data import seed_data
    from im_pipeline.training import train_arm

    raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    cfg = config_from_dict({k: v for k, v in raw.items() if not k.startswith("_")}, args.config)
    data = Path(args.data)
    train_arm(cfg, cfg.arm(args.arm), args.seed, *seed_data(cfg.data, data, args.seed), Path(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
