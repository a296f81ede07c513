"""Resume under an engine (issue 20): a unit training under accelerate launch + DeepSpeed ZeRO-3 (the committed
configs/accelerate/zero3.yaml on 2 CPU processes, gloo) is killed with SIGKILL after it left a Trainer checkpoint;
launched again, it resumes from that checkpoint (``resumed_from``) and ends with the weights of an uninterrupted run.

FSDP has no such test: accelerate refuses its FSDP plugin without an accelerator, so the Trainer cannot train under
FSDP on this CPU-only machine (README "On GPUs": untested)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from processes import processes_naming
from test_trainer import make_cfg, make_records
from transformers import AutoModelForCausalLM

from im_pipeline.data import write_jsonl
from im_pipeline.training.launch import launch

ACCELERATE = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
UNIT = """
import json, sys
from pathlib import Path
from im_pipeline.config import config_from_dict
from im_pipeline.training.launch import launch
cfg = config_from_dict(json.loads(Path(sys.argv[1]).read_text()))
launch(cfg.train_launcher(), cfg, "IM", 0, Path(sys.argv[2]), Path(sys.argv[3]), key="k")
"""
STEPS = 40


def whole_checkpoints(run: Path) -> list[int]:
    """Steps of the Trainer checkpoints whose ``trainer_state.json`` (written last) reads."""
    steps = []
    for ckpt in (run / "trainer_checkpoints").glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        steps.append(int(ckpt.name.split("-")[1]))
    return sorted(steps)


def kill_after_a_checkpoint(cfg_file: Path, run: Path, data: Path) -> int:
    """Run the unit in its own process; SIGKILL it once a whole checkpoint exists; wait until no rank is left.
    Returns the last whole checkpoint's step."""
    unit = subprocess.Popen([sys.executable, "-c", UNIT, str(cfg_file), str(run), str(data)])
    job = str(run.resolve() / "launch.json")
    try:
        deadline = time.monotonic() + 300
        while not whole_checkpoints(run):
            assert unit.poll() is None, f"the unit ended before a checkpoint ({unit.returncode})"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        unit.send_signal(signal.SIGKILL)
        unit.wait()
        deadline = time.monotonic() + 60
        while processes_naming(job) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not processes_naming(job)
    finally:
        unit.kill()
        for pid in processes_naming(job):  # only if the test failed: clean up what it started
            os.kill(pid, signal.SIGKILL)
    return whole_checkpoints(run)[-1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (the `gpu` extra)")
def test_zero3_unit_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    acc = yaml.safe_load((ACCELERATE / "zero3.yaml").read_text())
    acc.update(num_processes=2, use_cpu=True, mixed_precision="no")  # the committed file, on this machine
    acc["deepspeed_config"]["gradient_accumulation_steps"] = 1
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(acc))
    data = tmp_path / "data"
    write_jsonl(make_records(8), data / "train.jsonl")
    write_jsonl(make_records(12)[8:], data / "held_out.jsonl")
    launcher = f"accelerate launch --config_file {tmp_path / 'zero3.yaml'}"
    cfg = make_cfg(tiny_model_dir, gradient_accumulation_steps=1, launcher=launcher, max_steps=STEPS, save_steps=2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))

    run = tmp_path / "killed" / "IM" / "seed-0"
    step = kill_after_a_checkpoint(tmp_path / "cfg.json", run, data)
    assert not (run / "train_summary.json").exists() and step < STEPS  # killed mid-training
    resumed = launch(cfg.train_launcher(), cfg, "IM", 0, run, data, key="k")
    whole = launch(cfg.train_launcher(), cfg, "IM", 0, tmp_path / "whole" / "IM" / "seed-0", data, key="k")

    assert resumed["resumed_from"] == f"checkpoint-{step}" and whole["resumed_from"] is None
    assert resumed["world_size"] == whole["world_size"] == 2 and resumed["steps"] == whole["steps"] == STEPS
    a = AutoModelForCausalLM.from_pretrained(run / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "IM" / "seed-0" / "checkpoint").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in b)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = max((b[k] - base[k]).abs().max().item() for k in b)
    print(f"\nZeRO-3 x2 killed after step {step}, resumed: max |Δw| vs uninterrupted {worst:.3g} (moved {moved:.3g})")
    assert worst <= 1e-5 < moved
