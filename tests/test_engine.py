"""What the DeepSpeed / FSDP engine needs beyond the Trainer (im_pipeline.training.engine).

The final save: the committed accelerate configs make ``Trainer.save_model`` gather a full model; a ZeRO-3 config
without the 16-bit gather or an FSDP config with a sharded state dict is refused before training, and a final
directory without weights after it.

The KL reference model under FSDP: 2 processes (torchrun, gloo, CPU) load it as transformers does under
accelerate's FSDP with cpu-RAM-efficient loading, shard it with torch's FSDP (accelerate refuses FSDP without an
accelerator, so :func:`fsdp_inference` is driven directly, with a decoder-layer wrap policy like accelerate's), and
compute the reference log-probs of one padded batch: identical on both ranks and equal to one unsharded process.
A rank whose copy differs from rank 0's is caught before sharding."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from transformers import AutoModelForCausalLM

from im_pipeline.models import load_model_and_tokenizer
from im_pipeline.training.engine import require_full_save, require_saved_weights
from im_pipeline.training.loss import target_token_logprobs

ACCELERATE = Path(__file__).resolve().parent.parent / "configs" / "accelerate"


def _engine(kind: DistributedType, plugin: object) -> SimpleNamespace:
    """What require_full_save reads of an Accelerator: its distributed type and the engine's plugin."""
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=plugin))


def _zero3(save_16bit: bool) -> SimpleNamespace:
    ds = yaml.safe_load((ACCELERATE / "zero3.yaml").read_text())["deepspeed_config"]
    assert ds["zero_stage"] == 3 and ds["zero3_save_16bit_model"] is True  # the committed config gathers
    plugin = DeepSpeedPlugin(zero_stage=3, zero3_save_16bit_model=save_16bit, gradient_clipping=1.0)
    return _engine(DistributedType.DEEPSPEED, plugin)


def test_the_committed_engine_configs_save_a_full_model_and_others_are_refused() -> None:
    require_full_save(_zero3(save_16bit=True))
    with pytest.raises(ValueError, match="stage3_gather_16bit_weights_on_model_save"):
        require_full_save(_zero3(save_16bit=False))
    fsdp = yaml.safe_load((ACCELERATE / "fsdp.yaml").read_text())["fsdp_config"]
    require_full_save(
        _engine(DistributedType.FSDP, FullyShardedDataParallelPlugin(state_dict_type=fsdp["fsdp_state_dict_type"]))
    )
    sharded = FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT")
    with pytest.raises(ValueError, match="FULL_STATE_DICT"):
        require_full_save(_engine(DistributedType.FSDP, sharded))
    require_full_save(_engine(DistributedType.MULTI_GPU, None))  # DDP: the model is whole on every rank


def test_a_final_directory_without_weights_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path / "full")
    require_saved_weights(tmp_path / "full")
    (tmp_path / "empty").mkdir()
    model.config.save_pretrained(tmp_path / "empty")  # what FSDP's sharded save_model leaves: no weights
    with pytest.raises(RuntimeError, match="no model weights"):
        require_saved_weights(tmp_path / "empty")


RANK = """
import functools, sys
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from im_pipeline.models import load_model_and_tokenizer
from im_pipeline.training.loss import target_token_logprobs
from im_pipeline.training.engine import check_replicas_equal, fsdp_inference

model_dir, out, corrupt = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "corrupt"
dist.init_process_group("gloo")
rank, cpu = dist.get_rank(), torch.device("cpu")
model, tok = load_model_and_tokenizer(model_dir, dtype="float32")
if corrupt and rank == 1:
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
try:
    check_replicas_equal(model, cpu)
except RuntimeError as err:
    (out / f"refused{rank}.txt").write_text(str(err))
    sys.exit(0)
layers = {type(m) for m in model.modules() if type(m).__name__ in model._no_split_modules}
policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)
total = sum(p.numel() for p in model.parameters())
ref = fsdp_inference(model, cpu, auto_wrap_policy=policy, use_orig_params=True)
local = sum(p.numel() for p in ref.parameters())
batch = tok(["Name a colour.", "Count to three, please: one two"], return_tensors="pt", padding=True)
labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
with torch.no_grad():
    logp = target_token_logprobs(ref(**batch).logits, labels)
torch.save({"logp": logp, "local": local, "total": total}, out / f"rank{rank}.pt")
dist.destroy_process_group()
"""


def _two_ranks(model_dir: Path, out: Path, mode: str) -> None:
    out.mkdir(parents=True)
    script = out / "rank.py"
    script.write_text(RANK)
    # what accelerate launch sets under configs/accelerate/fsdp.yaml: transformers then loads cpu-RAM-efficiently
    env = {
        **os.environ,
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "OMP_NUM_THREADS": "1",
    }
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(model_dir), str(out), mode]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.integration
def test_fsdp_reference_log_probs_equal_across_ranks_and_to_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    _two_ranks(tiny_model_dir, tmp_path / "fsdp", "plain")
    ranks = [torch.load(tmp_path / "fsdp" / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["local"] < r["total"] for r in ranks)  # sharded: each rank holds part of the weights
    assert ranks[0]["local"] + ranks[1]["local"] >= ranks[0]["total"]
    assert torch.equal(ranks[0]["logp"], ranks[1]["logp"])

    model, tok = load_model_and_tokenizer(str(tiny_model_dir), dtype="float32")
    batch = tok(["Name a colour.", "Count to three, please: one two"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        one = target_token_logprobs(model(**batch).logits, labels)
    assert (one != 0).sum() >= 10  # real targets, not an all-ignored batch
    torch.testing.assert_close(ranks[0]["logp"], one, rtol=0, atol=1e-6)
    print(f"\nFSDP x2 vs one process: max |Δ log p| = {(ranks[0]['logp'] - one).abs().max().item():.3g}")


@pytest.mark.slow
@pytest.mark.integration
def test_a_rank_with_other_reference_weights_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    _two_ranks(tiny_model_dir, tmp_path / "bad", "corrupt")
    for r in (0, 1):  # both ranks stop, neither trains against wrong logits
        assert "differs between ranks" in (tmp_path / "bad" / f"refused{r}.txt").read_text()
    assert not list((tmp_path / "bad").glob("rank?.pt"))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (the `gpu` extra)")
def test_zero3_two_ranks_on_cpu_train_a_kl_arm_as_one_process_and_save_a_full_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """accelerate launch + DeepSpeed ZeRO-3 (configs/accelerate/zero3.yaml on 2 CPU processes, gloo): the KL
    reference is partitioned by zero.Init and run by its own DeepSpeed engine; training equals one process with
    doubled accumulation; the final checkpoint is a full model that plain transformers loads."""
    from test_trainer import make_cfg, make_records

    from im_pipeline.config import ArmConfig
    from im_pipeline.data import write_jsonl
    from im_pipeline.training import train_arm
    from im_pipeline.training.launch import launch

    acc = yaml.safe_load((ACCELERATE / "zero3.yaml").read_text())
    acc.update(num_processes=2, use_cpu=True, mixed_precision="no")  # the committed file, on this machine
    acc["deepspeed_config"]["gradient_accumulation_steps"] = 1
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(acc))
    train, held = make_records(8), make_records(12)[8:]
    write_jsonl(train, tmp_path / "data" / "train.jsonl")
    write_jsonl(held, tmp_path / "data" / "held_out.jsonl")
    arm = ArmConfig(name="KL", loss_mode="it", kl_coef=0.5, kl_form="full")
    launcher = f"accelerate launch --config_file {tmp_path / 'zero3.yaml'}"
    zero3 = make_cfg(tiny_model_dir, gradient_accumulation_steps=1, launcher=launcher)
    zero3.arms = [arm]
    run = tmp_path / "zero3" / "KL" / "seed-0"
    launched = launch(zero3.train_launcher(), zero3, "KL", 0, run, tmp_path / "data", key="k")
    one = make_cfg(tiny_model_dir, gradient_accumulation_steps=2)
    single = train_arm(one, arm, 0, train, held, tmp_path / "one", key="k")

    assert launched["world_size"] == 2 and launched["steps"] == single["steps"] == 2
    assert launched["final_train_loss"] == pytest.approx(single["final_train_loss"], abs=1e-4)
    assert launched["final_held_out_loss"] == pytest.approx(single["final_held_out_loss"], abs=1e-4)
    gathered = AutoModelForCausalLM.from_pretrained(run / "checkpoint")  # plain transformers, no DeepSpeed
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "checkpoint")
    worst = 0.0
    for (name, a), (_, b) in zip(gathered.state_dict().items(), reference.state_dict().items(), strict=True):
        assert a.shape == b.shape and a.numel() > 0, name  # full tensors, not ZeRO-3 partitions
        worst = max(worst, (a - b).abs().max().item())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = max((a - b).abs().max().item() for a, b in zip(gathered.parameters(), base.parameters(), strict=True))
    assert worst <= 1e-4 < moved  # trained, and as one process trains
    print(
        f"\nZeRO-3 x2 vs one process: loss {launched['final_train_loss']} vs {single['final_train_loss']}, "
        f"max |Δw| {worst:.3g} (moved {moved:.3g})"
    )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (the `gpu` extra)")
def test_gpu_verify_zero3_phase_runs_the_reference_in_a_deepspeed_engine(tmp_path: Path) -> None:
    """bench/gpu_verify.py's zero3 phase, CPU dry run: the reference loaded inside zero.Init holds no weights outside
    an engine, and the project's DeepSpeed inference engine gives the logits of the model loaded whole."""
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_verify.py"
    cmd = [sys.executable, str(script), "--cpu-dry-run", "--out", str(tmp_path), "--phases", "zero3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    phase = json.loads((tmp_path / "gpu_verify.json").read_text())["phases"]["zero3"]
    assert phase["status"] == "ok" and phase["partitioned_numel_outside_engine"] == 0
    assert phase["max_abs_diff_logits"] <= 1e-5
