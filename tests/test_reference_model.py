"""The KL reference model under FSDP: 2 processes (torchrun, gloo, CPU) load it as transformers does under
accelerate's FSDP with cpu-RAM-efficient loading, shard it with torch's FSDP (accelerate refuses FSDP without an
accelerator, so :func:`fsdp_inference` is driven directly, with a decoder-layer wrap policy like accelerate's), and
compute the reference log-probs of one padded batch: identical on both ranks and equal to one unsharded process.
A rank whose copy differs from rank 0's is caught before sharding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from im_pipeline.models import load_model_and_tokenizer
from im_pipeline.training.loss import target_token_logprobs

RANK = """
import functools, sys
from pathlib import Path
import torch, torch.distributed as dist
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from im_pipeline.models import load_model_and_tokenizer
from im_pipeline.training.loss import target_token_logprobs
from im_pipeline.training.reference import check_replicas_equal, fsdp_inference

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
