"""One training run as a stand-alone process, for multi-GPU launchers.

The train task calls :func:`im_pipeline.training.train_arm` in-process by default. When
``$IM_PIPELINE_TRAIN_LAUNCHER`` is set (e.g. ``accelerate launch --config_file
configs/accelerate/zero3.yaml`` or ``torchrun --nproc_per_node 8``), it runs this module under that
launcher instead; the Hugging Face Trainer inside ``train_arm`` then picks up DDP / FSDP / DeepSpeed
from the launcher's environment (docs/scale_out.md).

    python -m flows.train_worker --config runs/x/config.yaml --arm IM --seed 0 --run-dir runs/x/IM/seed-0 \\
        --data runs/x/data
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

LAUNCHER_ENV = "IM_PIPELINE_TRAIN_LAUNCHER"


def launch(launcher: str, config_file: Path, arm: str, seed: int, run_dir: Path, data_dir: Path) -> None:
    """Run one training run under ``launcher`` (a command prefix); raises on a non-zero exit."""
    cmd = [
        *shlex.split(launcher),
        "-m",
        "flows.train_worker",
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
    logging.getLogger(__name__).info("launching: %s", shlex.join(cmd))
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.train_worker", description=__doc__)
    p.add_argument("--config", required=True, help="resolved experiment config (YAML)")
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data", required=True, help="directory with train.jsonl and held_out.jsonl")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from im_pipeline.config import config_from_dict
    from im_pipeline.data import read_jsonl
    from im_pipeline.training import train_arm

    raw = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    cfg = config_from_dict({k: v for k, v in raw.items() if not k.startswith("_")}, args.config)
    data = Path(args.data)
    train_arm(
        cfg,
        cfg.arm(args.arm),
        args.seed,
        read_jsonl(data / "train.jsonl"),
        read_jsonl(data / "held_out.jsonl"),
        Path(args.run_dir),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
