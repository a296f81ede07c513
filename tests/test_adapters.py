"""LoRA / QLoRA through peft (``training.peft``) on the tiny random Llama: the config and its key, gradients only in
the adapters, the KL reference as the base with adapters disabled, the adapter + merged checkpoint, the summary's
trainable counts, QLoRA refused without CUDA, and ``plan``'s input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from im_pipeline.config import AdapterConfig, ArmConfig, DataConfig, ExperimentConfig, ModelConfig, TrainingConfig
from im_pipeline.models import load_model_and_tokenizer
from im_pipeline.plan import memory
from im_pipeline.plan.arch import Arch
from im_pipeline.plan.build import make_plan
from im_pipeline.results import TrainSummary
from im_pipeline.runs.staleness import training_identity
from im_pipeline.training import train_arm
from im_pipeline.training.adapters import AdapterError, AdaptersDisabled, trainable_fields
from im_pipeline.training.trainer import load_models

R = 4
# The tiny Llama (hidden 32, intermediate 64, 4 heads of 8, 2 kv heads, 2 layers), r = 4 on every linear:
# 2 layers × 4 × [(32+32) q + 2·(32+16) k,v + (32+32) o + 2·(32+64) gate,up + (64+32) down] = 4096.
TINY_LORA_PARAMS = 4096


def records(n: int) -> list[dict]:
    pairs = [
        ("Write a function that returns the sum of two numbers.", "def add(a, b):\n    return a + b"),
        ("What is the capital of France?", "The capital of France is Paris."),
        ("Tell a story about a small model.", "Once upon a time there was a small model."),
    ]
    return [
        {
            "id": f"a-{i}",
            "source": "test",
            "messages": [
                {"role": "user", "content": pairs[i % 3][0]},
                {"role": "assistant", "content": pairs[i % 3][1]},
            ],
        }
        for i in range(n)
    ]


def make_cfg(model_dir: Path, method: str = "lora", **training: object) -> ExperimentConfig:
    t: dict = {"max_steps": 4, "batch_size": 2, "save_steps": 50, "learning_rate": 2e-2, "warmup_ratio": 0.0}
    t.update(training, threads=1, report_to=[], peft=AdapterConfig(method=method, r=R, alpha=8, dropout=0.0))
    return ExperimentConfig(
        name="lora",
        model=ModelConfig(source=str(model_dir)),
        data=DataConfig(max_length=48),
        training=TrainingConfig(**t),
    )


def logits_of(model, tok, text: str = "What is the capital of France? Paris.") -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_full_training_keeps_its_key_and_lora_changes_it() -> None:
    full = TrainingConfig()
    assert full.peft.method == "none" and "peft" not in full.model_dump(mode="json")
    cfg = ExperimentConfig(name="k")
    assert "peft" not in training_identity(cfg)  # the training key of every config without adapters is unchanged
    lora = cfg.model_copy(update={"training": TrainingConfig(peft=AdapterConfig(method="lora"))})
    assert training_identity(lora)["peft"] == {
        "method": "lora",
        "r": 16,
        "alpha": 32.0,
        "dropout": 0.05,
        "target_modules": "all-linear",
    }
    with pytest.raises(ValueError, match="method"):
        AdapterConfig(method="prefix")


class GradNames(TrainerCallback):
    """Names of the parameters holding a gradient just before each optimiser step."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.names |= {n for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GradNames]:
    """A LoRA IT arm with a KL term (reference: the adapters disabled), 4 steps on the tiny model."""
    cfg = make_cfg(tiny_model_dir)
    arm = ArmConfig(name="IT", loss_mode="it", kl_coef=0.5)
    grads = GradNames()
    run_dir = tmp_path_factory.mktemp("lora") / "IT" / "seed-0"
    train_arm(cfg, arm, 0, records(12), records(3), run_dir, key="k", callbacks=[grads])
    return run_dir, grads


def test_gradients_reach_only_the_adapters(lora_run) -> None:
    _, grads = lora_run
    assert grads.names, "no gradient recorded"
    assert all("lora_A" in n or "lora_B" in n for n in grads.names), sorted(grads.names)
    # every adapted linear of both layers: 7 linears × A, B × 2 layers
    assert len(grads.names) == 28


def test_lora_with_checkpointing_padding_free_and_neftune(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The training options that touch the inputs' gradients or the embeddings also train the adapters alone."""
    cfg = make_cfg(tiny_model_dir, max_steps=2, gradient_checkpointing=True, padding_free=True)
    arm = ArmConfig(name="IM", loss_mode="im", neftune_alpha=5.0, kl_coef=0.1)
    grads = GradNames()
    summary = train_arm(cfg, arm, 0, records(6), [], tmp_path / "run", key="k", callbacks=[grads])
    assert summary["steps"] == 2 and summary["trainable_params"] == TINY_LORA_PARAMS
    assert len(grads.names) == 28 and all("lora_" in n for n in grads.names)


def test_checkpoint_holds_the_adapter_and_a_merged_model_equal_to_the_adapter_forward(
    lora_run, tiny_model_dir: Path
) -> None:
    from peft import PeftModel

    run_dir, _ = lora_run
    ckpt = run_dir / "checkpoint"
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert not (ckpt / "adapter_config.json").exists() and not list(ckpt.rglob("training_args.bin"))
    # The merged model loads with plain transformers and with the evaluation's loader.
    merged = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    evaluated, tok = load_model_and_tokenizer(str(ckpt))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ckpt / "adapter").eval()
    out_merged, out_adapted = logits_of(merged, tok), logits_of(adapted, tok)
    assert (out_merged - out_adapted).abs().max() < 1e-5
    assert (logits_of(evaluated, tok) - out_adapted).abs().max() < 1e-5
    assert (out_merged - logits_of(base, tok)).abs().max() > 1e-3  # the adapters learned something


def test_summary_records_the_trainable_parameters(lora_run, tiny_model_dir: Path) -> None:
    run_dir, _ = lora_run
    summary = TrainSummary.read(run_dir / "train_summary.json")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert summary.trainable_params == TINY_LORA_PARAMS
    assert summary.trainable_params == memory.lora_param_count(Arch.of(config), R)  # what `plan` counts
    assert summary.trainable_fraction == round(TINY_LORA_PARAMS / (base_params + TINY_LORA_PARAMS), 6)
    assert summary.steps == 4


def test_full_training_counts_every_parameter(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = sum(p.numel() for p in model.parameters())
    assert trainable_fields(model) == {"trainable_params": n, "trainable_fraction": 1.0}
    model.model.embed_tokens.requires_grad_(False)
    frozen = model.model.embed_tokens.weight.numel()
    assert trainable_fields(model)["trainable_params"] == n - frozen


def test_kl_reference_is_the_base_with_adapters_disabled(tiny_model_dir: Path) -> None:
    cfg = make_cfg(tiny_model_dir)
    model, ref, tok = load_models(cfg, ArmConfig(name="IT", loss_mode="it", kl_coef=0.5))
    assert isinstance(ref, AdaptersDisabled) and ref.model is model  # no second model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # adapters that change the output
    model.train()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inputs = tok("What is the capital of France? Paris.", return_tensors="pt")
    with torch.no_grad():
        ref_logits = ref(**inputs).logits
        adapted = model.eval()(**inputs).logits
    assert model.training is False
    assert (ref_logits - base(**inputs).logits).abs().max() < 1e-6
    assert (adapted - ref_logits).abs().max() > 1e-2
    model.train()
    ref(**inputs)
    assert model.training  # the reference forward leaves training mode as it found it
    assert load_models(cfg, ArmConfig(name="IT", loss_mode="it"))[1] is None  # no KL term, no reference


def test_adapter_init_follows_the_seed(tiny_model_dir: Path) -> None:
    cfg, arm = make_cfg(tiny_model_dir), ArmConfig(name="IT", loss_mode="it")

    def lora_a(seed: int) -> torch.Tensor:
        model = load_models(cfg, arm, seed)[0]
        return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()

    torch.manual_seed(123)
    first = lora_a(0)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(lora_a(0), first) and not torch.equal(lora_a(1), first)
    assert torch.equal(torch.rand(1), after)  # the global random state is left as it was


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("crash after step 3")


def test_a_crashed_lora_run_resumes_from_its_adapter_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, save_steps=2)
    arm = ArmConfig(name="IT", loss_mode="it")
    train, held = records(8), records(2)
    straight = train_arm(cfg, arm, 0, train, held, tmp_path / "straight", key="k")
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash after step 3"):
        train_arm(cfg, arm, 0, train, held, run, key="k", callbacks=[Crash()])
    assert (run / "trainer_checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed = train_arm(cfg, arm, 0, train, held, run, key="k")
    assert resumed["resumed_from"] == "checkpoint-2" and resumed["steps"] == straight["steps"] == 4
    assert resumed["final_train_loss"] == pytest.approx(straight["final_train_loss"], abs=1e-6)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run / "checkpoint").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


@pytest.mark.integration
def test_lora_under_torchrun_equals_one_process_with_double_accumulation(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two gloo processes (DDP over the adapters, the KL reference through the unwrapped model, rank 0 saving the
    adapter and merging) train the same adapters as one process accumulating two micro-batches."""
    from im_pipeline.data import write_jsonl
    from im_pipeline.training.launch import launch

    train, held = records(16), records(2)
    data = tmp_path / "data"
    write_jsonl(train, data / "train.jsonl")
    write_jsonl(held, data / "held_out.jsonl")
    arm = ArmConfig(name="IT", loss_mode="it", kl_coef=0.5)
    two = make_cfg(tiny_model_dir, launcher="torchrun --standalone --nproc_per_node 2").model_copy(
        update={"arms": [arm]}
    )
    run = tmp_path / "two" / "IT" / "seed-0"
    launched = launch(two.train_launcher(), two, "IT", 0, run, data, key="k2")
    single = train_arm(
        make_cfg(tiny_model_dir, gradient_accumulation_steps=2), arm, 0, train, held, tmp_path / "one", key="k"
    )
    assert launched["world_size"] == 2 and launched["steps"] == single["steps"] == 4
    assert launched["trainable_params"] == single["trainable_params"] == TINY_LORA_PARAMS
    assert launched["final_train_loss"] == pytest.approx(single["final_train_loss"], abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(run / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "checkpoint").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA's refusal is for machines without CUDA")
def test_qlora_is_refused_without_cuda_when_training_starts(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, method="qlora")  # the config itself loads (plan / keys / a GPU pool need it)
    with pytest.raises(AdapterError, match=r"CUDA GPU.*bitsandbytes.*method=lora"):
        train_arm(cfg, ArmConfig(name="IT", loss_mode="it"), 0, records(4), [], tmp_path / "run", key="k")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_plan_models_the_configured_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ExperimentConfig(
        name="p",
        model=ModelConfig(source="smollm2-135m-instruct"),
        arms=[ArmConfig(name="IT", loss_mode="it", kl_coef=0.1)],
        training=TrainingConfig(peft=AdapterConfig(method="qlora", r=8)),
    )
    setup = make_plan(cfg)["memory"]["training_gib"]["setup"]
    assert (setup["adapter"], setup["lora_rank"], setup["reference_model"]) == ("qlora", 8, False)
    full = make_plan(cfg.model_copy(update={"training": TrainingConfig()}))["memory"]["training_gib"]["setup"]
    assert (full["adapter"], full["reference_model"]) == ("none", True)
