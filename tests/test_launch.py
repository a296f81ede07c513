"""Training under a launcher: ``torchrun --nproc_per_node 2`` (gloo, CPU) equals one process with doubled accumulation.

The launched run goes through :func:`im_pipeline.training.launch.launch` (what the train task calls when
``training.launcher`` is set): two processes train, rank 0 alone writes the checkpoint, the log and the summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import processes_naming
from test_trainer import make_cfg, make_records
from transformers import AutoModelForCausalLM

from im_pipeline.config import ArmConfig
from im_pipeline.data import write_jsonl
from im_pipeline.training import train_arm
from im_pipeline.training.launch import launch, launch_command

TORCHRUN = "torchrun --standalone --nproc_per_node 2"


def test_launch_command_uses_the_projects_launcher(tmp_path: Path) -> None:
    job = tmp_path / "launch.json"
    cmd = launch_command("torchrun --nproc_per_node 8", job)
    assert cmd[0] == str(Path(sys.executable).parent / "torchrun")  # the environment's, not whatever is on PATH
    # --standalone: a rendezvous on a free port of its own, so two units on one node never clash
    assert cmd[1:] == ["--standalone", "--nproc_per_node", "8", "-m", "im_pipeline.training.launch", str(job)]
    for own in ("--standalone", "--master_port=29511", "--rdzv-endpoint host:1", "--nnodes 2"):
        assert launch_command(f"torchrun {own} --nproc_per_node 2", job)[1:-3] == [
            *own.split(),
            "--nproc_per_node",
            "2",
        ]
    acc = launch_command("accelerate launch --config_file z.yaml", job)
    assert acc[1:3] == ["launch", "--main_process_port"] and acc[4:] == ["--config_file", "z.yaml", *cmd[-3:]]
    assert 1024 <= int(acc[3]) <= 65535
    assert launch_command("accelerate launch --main_process_port 7 x", job)[1:-3] == [
        "launch",
        "--main_process_port",
        "7",
        "x",
    ]
    with pytest.raises(FileNotFoundError, match="no-such-launcher"):
        launch_command("no-such-launcher -x", tmp_path / "launch.json")


def test_threads_per_rank_share_the_nodes_cores(monkeypatch) -> None:
    from im_pipeline.training.trainer import RunFacts

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert RunFacts.start("k", None).threads == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 4))
    assert RunFacts.start("k", None).threads == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert RunFacts.start("k", None).threads == max(1, cores // 2)
    assert RunFacts.start("k", 3).threads == 3  # training.threads wins


def test_launch_entry_point_takes_one_job_file(capsys) -> None:
    from im_pipeline.training.launch import main

    assert main(["--config", "x.yaml"]) == 2
    assert "JOB.json" in capsys.readouterr().err


def test_train_launcher_comes_from_config_then_environment(tiny_model_dir: Path, monkeypatch) -> None:
    from im_pipeline.config import config_from_dict
    from im_pipeline.runs.staleness import train_key

    monkeypatch.delenv("IM_PIPELINE_TRAIN_LAUNCHER", raising=False)
    cfg = make_cfg(tiny_model_dir)
    assert cfg.train_launcher() is None
    plain = train_key(cfg, cfg.arms[0], 0, "h")
    monkeypatch.setenv("IM_PIPELINE_TRAIN_LAUNCHER", "torchrun --nproc_per_node 2")
    assert cfg.train_launcher() is None  # resolved at load: the environment is not read again
    cfg = config_from_dict(cfg.to_dict())  # loaded now: the launcher comes from the environment
    assert cfg.train_launcher() == "torchrun --nproc_per_node 2"
    assert train_key(cfg, cfg.arms[0], 0, "h") != plain  # more processes, bigger global batch: another run
    cfg.training.launcher = "accelerate launch"
    assert cfg.train_launcher() == "accelerate launch"


@pytest.mark.integration
@pytest.mark.parametrize("normalisation", ["sequence", "token"])
def test_torchrun_two_processes_equal_one_with_double_accumulation(
    tiny_model_dir: Path, tmp_path: Path, normalisation: str
) -> None:
    train, held = make_records(16), make_records(20)[16:]
    data = tmp_path / "data"
    write_jsonl(train, data / "train.jsonl")
    write_jsonl(held, data / "held_out.jsonl")
    arm = ArmConfig(name="IM", loss_mode="im")
    common = {"batch_size": 2, "save_steps": 2, "loss_normalisation": normalisation, "threads": 1}

    two = make_cfg(tiny_model_dir, gradient_accumulation_steps=1, launcher=TORCHRUN, **common)
    launched = launch(two.train_launcher(), two, "IM", 0, tmp_path / "two" / "IM" / "seed-0", data, key="k2")
    one = make_cfg(tiny_model_dir, gradient_accumulation_steps=2, **common)
    single = train_arm(one, arm, 0, train, held, tmp_path / "one", key="k")

    run = tmp_path / "two" / "IM" / "seed-0"
    assert launched == json.loads((run / "train_summary.json").read_text())
    job = json.loads((run / "launch.json").read_text())
    assert (job["arm"], job["seed"], job["run_dir"], job["key"]) == ("IM", 0, str(run.resolve()), "k2")
    assert launched["key"] == "k2" and single["key"] == "k"  # the unit's key reached every launched process
    assert launched["world_size"] == 2 and single["world_size"] == 1
    assert launched["steps"] == single["steps"] == 4  # 16 examples, 4 per optimiser step
    delta = abs(launched["final_train_loss"] - single["final_train_loss"])
    assert delta <= 1e-4, (launched["final_train_loss"], single["final_train_loss"])
    print(
        f"\n{normalisation}: torchrun x2 {launched['final_train_loss']!r}, one process {single['final_train_loss']!r}"
    )
    # rank 0 alone wrote the log (one line per step, not one per process) and one checkpoint
    rows = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ref = [json.loads(ln) for ln in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    for a, b in zip(rows, ref, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["it_mask_loss"] == pytest.approx(b["it_mask_loss"], abs=1e-4)
        assert a["tokens"] == b["tokens"]  # counted over both processes
    assert launched["final_held_out_loss"] == pytest.approx(single["final_held_out_loss"], abs=1e-4)
    assert (run / "checkpoint" / "config.json").is_file() and not (run / "trainer_checkpoints").exists()
    assert len(list((run / "tensorboard").rglob("events.out.tfevents.*"))) == 1  # TensorBoard: rank 0 only
    assert not (run / "checkpoint" / "training_args.bin").exists()
    assert AutoModelForCausalLM.from_pretrained(run / "checkpoint").config.vocab_size > 0
    for key in ("host", "pid", "started_at", "finished_at"):
        assert launched[key], key
    assert launched["started_at"] < launched["finished_at"] and launched["finished_at"].endswith("Z")


UNIT = """
import json, sys
from pathlib import Path
from im_pipeline.config import config_from_dict
from im_pipeline.training.launch import launch
cfg = config_from_dict(json.loads(Path(sys.argv[1]).read_text()))
launch(cfg.train_launcher(), cfg, "IM", 0, Path(sys.argv[2]), Path(sys.argv[3]), key="k")
"""


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_unit_killed_with_sigkill_leaves_no_rank_alive(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A real unit process runs torchrun (2 ranks, gloo) on a long training; kill -9 of the unit ends every rank."""
    data = tmp_path / "data"
    write_jsonl(make_records(16), data / "train.jsonl")
    write_jsonl(make_records(20)[16:], data / "held_out.jsonl")
    # no --standalone here: the launcher adds it
    cfg = make_cfg(tiny_model_dir, launcher="torchrun --nproc_per_node 2", max_steps=100_000, save_steps=100_000)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    run = tmp_path / "run"
    unit = subprocess.Popen([sys.executable, "-c", UNIT, str(tmp_path / "cfg.json"), str(run), str(data)])
    job = str(run.resolve() / "launch.json")
    try:
        deadline = time.monotonic() + 240
        while not ((run / "train_log.jsonl").is_file() and (run / "train_log.jsonl").read_text().strip()):
            assert unit.poll() is None, f"the unit ended before training ({unit.returncode})"
            assert time.monotonic() < deadline, "no training step within 240 s"
            time.sleep(0.5)
        launched = processes_naming(job)  # torchrun and its two ranks, training
        assert len(launched) == 3, launched
        unit.send_signal(signal.SIGKILL)
        unit.wait()
        deadline = time.monotonic() + 60
        while (alive := set(processes_naming(job)) & set(launched)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive, {p: launched[p] for p in alive}
    finally:
        unit.kill()
        for pid in processes_naming(job):  # only if the test failed: clean up what it started
            os.kill(pid, signal.SIGKILL)
