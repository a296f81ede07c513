"""What a DeepSpeed / FSDP engine needs beyond the Trainer: the KL reference model placed by it, and a final
checkpoint that plain transformers loads.

**The final checkpoint.** ``Trainer.save_model`` gathers the full weights into a ``save_pretrained`` model only when
the engine is told to: ``stage3_gather_16bit_weights_on_model_save`` under ZeRO-3 (accelerate's
``zero3_save_16bit_model``), ``FULL_STATE_DICT`` under FSDP. Otherwise it writes DeepSpeed's shards (to be merged by
``zero_to_fp32.py``) or, under FSDP with a sharded state dict, no weights at all, and nothing says so.
:func:`require_full_save` refuses such a setup before training starts; :func:`require_saved_weights` checks the
final directory after the save.

**The reference model.** Under a plain process or DDP every rank holds the whole reference model on its device.
Under DeepSpeed ZeRO-3 the reference is loaded inside ``zero.Init`` (the Trainer's DeepSpeed config is active when
it is loaded), so its parameters are partitioned: run outside an engine it would compute with empty weights. It is
therefore wrapped for inference by DeepSpeed itself, as TRL's ``prepare_deepspeed`` does for DPO's reference model
(no optimizer, no scheduler; ZeRO-3 shards it, other stages keep a whole copy). Under FSDP (version 1,
configs/accelerate/fsdp.yaml) it is sharded by FSDP with the training plugin's wrap policy and precision, as TRL's
``prepare_fsdp`` does. With ``fsdp_cpu_ram_efficient_loading`` transformers 5 still loads the full weights on every
rank (measured: equal checksums on both ranks of a 2-process gloo run), and FSDP's ``sync_module_states`` cannot run
on CPU, so the ranks' copies are compared before sharding instead of broadcast: a rank whose copy differs from rank
0's (e.g. a transformers that leaves ranks > 0 empty) stops the run with an error rather than training against
wrong logits.

Why by hand: TRL holds the two reference functions but is only a benchmark extra here (``bench``), and accelerate
prepares a second model only for training (``Accelerator.prepare_model(evaluation_mode=True)`` does not shard it).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn


def prepare_reference(model: nn.Module, accelerator: Any) -> nn.Module:
    """The frozen reference ``model`` (eval mode, no gradients) ready for inference under ``accelerator``'s engine."""
    from accelerate.utils import DistributedType

    model.eval().requires_grad_(False)
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return deepspeed_inference(model, accelerator.state.deepspeed_plugin.deepspeed_config)
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version != 1:
            raise NotImplementedError(
                "the KL reference model under FSDP version 2 is not supported; use fsdp_version 1 "
                "(configs/accelerate/fsdp.yaml) or DeepSpeed (configs/accelerate/zero3.yaml)"
            )
        plugin.set_auto_wrap_policy(model)
        check_replicas_equal(model, accelerator.device)
        return fsdp_inference(
            model,
            accelerator.device,
            auto_wrap_policy=plugin.auto_wrap_policy,
            mixed_precision=plugin.mixed_precision_policy,
            sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
            cpu_offload=plugin.cpu_offload,
            use_orig_params=plugin.use_orig_params,
        )
    return model.to(accelerator.device)


def deepspeed_inference(model: nn.Module, training_config: dict[str, Any]) -> nn.Module:
    """``model`` wrapped by a DeepSpeed engine for inference: the training config without its optimizer, scheduler
    and optimizer offload; ZeRO-3 stays (the model is sharded), other stages become 0 (a whole copy per rank)."""
    import deepspeed

    config = copy.deepcopy(training_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if zero.get("stage") == 3 and hidden:  # TRL's bucket sizes for a model that only runs forward
        zero.update(
            reduce_bucket_size=hidden * hidden,
            stage3_param_persistence_threshold=10 * hidden,
            stage3_prefetch_bucket_size=int(0.9 * hidden * hidden),
        )
    elif zero.get("stage") != 3:
        zero["stage"] = 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def fsdp_inference(model: nn.Module, device: torch.device, **fsdp_kwargs: Any) -> nn.Module:
    """``model`` (whole on every rank) sharded by FSDP (version 1) over the default process group, in eval mode."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    fsdp_kwargs = {k: v for k, v in fsdp_kwargs.items() if v is not None}
    sharded = FullyShardedDataParallel(model, device_id=device, sync_module_states=False, **fsdp_kwargs)
    sharded.eval()
    return sharded


def check_replicas_equal(model: nn.Module, device: torch.device) -> None:
    """Raise unless every rank holds rank 0's weights (a float64 checksum per tensor, compared across ranks)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if any(t.is_meta for t in tensors):
        raise RuntimeError(f"rank {dist.get_rank()}: the KL reference model has no weights (meta tensors)")
    mine = torch.stack([t.detach().double().sum() for t in tensors] + [torch.zeros((), dtype=torch.float64)])
    mine = mine.to(device)  # NCCL reduces only on the GPU
    rank0 = mine.clone()
    dist.broadcast(rank0, src=0)
    differs = torch.ne(mine, rank0).any().to(torch.int64)
    dist.all_reduce(differs)  # every rank learns whether any rank differs, so all raise together
    if int(differs):
        raise RuntimeError(
            "the KL reference model differs between ranks (a rank loaded other or empty weights); "
            "load it in full on every rank (fsdp_cpu_ram_efficient_loading: false)"
        )


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def require_full_save(accelerator: Any) -> None:
    """Raise unless the engine's final save gathers the full weights (see the module docstring)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        zero = ds.get("zero_optimization", {})
        if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save"):
            raise ValueError(
                "DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the final checkpoint would be "
                "DeepSpeed shards, not a model transformers loads; set zero3_save_16bit_model: true in the "
                "accelerate config (configs/accelerate/zero3.yaml does)"
            )
    elif kind == DistributedType.FSDP and "FULL_STATE_DICT" not in str(accelerator.state.fsdp_plugin.state_dict_type):
        raise ValueError(
            "FSDP without fsdp_state_dict_type: FULL_STATE_DICT: the final checkpoint would hold no weights "
            "transformers loads (configs/accelerate/fsdp.yaml sets FULL_STATE_DICT)"
        )


def require_saved_weights(final_dir: Path) -> None:
    """Raise unless ``final_dir`` holds a model's weights in a file ``from_pretrained`` reads."""
    if not any((final_dir / name).is_file() for name in WEIGHT_FILES):
        raise RuntimeError(f"the final save wrote no model weights to {final_dir} (expected one of {WEIGHT_FILES})")
