"""im-pipeline plan: meta-device parameter counts, units and judge calls of the paper configs, the memory formula
against a measured CPU peak, which units are done, the CLI's JSON offline, and run's summary line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from im_pipeline.config import load_config
from im_pipeline.plan import memory, work
from im_pipeline.plan.arch import Arch, count_params, load_model_config, shipped_config
from im_pipeline.plan.build import done_units, engine_of, plan_line, unit_names
from im_pipeline_flows.cli.main import main

REPO = Path(__file__).resolve().parent.parent
PAPER = {  # config: (models evaluated, judge calls = models × 805 AlpacaEval instructions × both orders)
    "paper_llama2_7b_lima.yaml": (22, 35_420),
    "paper_llama2_7b_alpaca5k.yaml": (16, 25_760),
    "paper_llama2_7b_dolly3k.yaml": (16, 25_760),
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("meta-llama/Llama-2-7b-hf", 6_738_415_616),
        ("meta-llama/Llama-2-13b-hf", 13_015_864_320),
        ("smollm2-135m-instruct", 134_515_008),  # tied embeddings counted once
    ],
)
def test_meta_device_parameter_counts_of_the_shipped_configs(source: str, expected: int) -> None:
    assert count_params(shipped_config(source)) == expected


def test_architecture_offline_comes_from_the_shipped_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty Hub cache
    config, origin = load_model_config("meta-llama/Llama-2-7b-hf")
    assert origin == "llama-2-7b.json (shipped with im-pipeline)"
    assert Arch.of(config) == Arch("llama", 4096, 32, 11008, 32000, 32, 32, 128, False, 4096)
    own = tmp_path / "config.json"
    own.write_text(json.dumps(shipped_config("meta-llama/Llama-2-13b-hf")))
    assert load_model_config("anything", model_config=str(own))[1] == f"{own} (--model-config)"
    with pytest.raises(FileNotFoundError, match="--model-config"):
        load_model_config("no-such/model")


def test_architecture_from_gguf_metadata_without_loading_tensors(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(1024)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(100)
    w.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    config, origin = load_model_config(str(path))
    assert origin == f"{path} (GGUF metadata)"
    # No output.weight tensor: the head is tied to the embeddings, as transformers reads the file.
    assert Arch.of(config) == Arch("llama", 64, 2, 128, 100, 4, 2, 16, True, 1024)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_units_and_judge_calls_of_the_paper_configs(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    models, calls = PAPER[name]
    assert work.models_evaluated(cfg) == len(unit_names(cfg)) == models
    bench = work.per_model_work(cfg)
    assert models * bench["alpaca_eval"]["judge_calls"] == calls
    assert bench["humaneval"]["samples"] == 164 * 20 * 2 and bench["humaneval"]["rows_per_batch"] == 32 * 20
    assert bench["mmlu"]["loglikelihood_requests"] == 14_042 * 4
    cost = work.judge_cost(cfg, calls)
    assert cost["input_tokens"] == calls * 900 and cost["usd"] == round(calls * (900 * 30 + 30 * 60) / 1e6, 2)


def test_engine_and_processes_from_the_launcher() -> None:
    zero3 = f"accelerate launch --config_file {REPO / 'configs' / 'accelerate' / 'zero3.yaml'}"
    assert engine_of(zero3, None) == ("zero3", 8) and engine_of(zero3, 4) == ("zero3", 4)
    fsdp = f"accelerate launch --config_file {REPO / 'configs' / 'accelerate' / 'fsdp.yaml'}"
    assert engine_of(fsdp, None) == ("fsdp", 8)
    assert engine_of("torchrun --standalone --nproc_per_node 4", None) == ("ddp", 4)
    assert engine_of("torchrun --nproc-per-node=2", None) == ("ddp", 2)
    assert engine_of(None, 8) == ("single", 1)  # in-process: one process whatever the GPUs


def test_memory_parts_exact_for_llama2_7b() -> None:
    arch, n = Arch.of(shipped_config("meta-llama/Llama-2-7b-hf")), 6_738_415_616
    single = memory.training_memory(arch, n, memory.TrainSetup(precision="bf16_autocast"))
    assert (single["weights"], single["gradients"], single["optimizer"]) == (4 * n, 4 * n, 8 * n)
    assert single["autocast_copies"] == 2 * n
    zero3 = memory.training_memory(arch, n, memory.TrainSetup(engine="zero3", world_size=8))
    assert (zero3["weights"], zero3["optimizer"]) == (4 * n // 8, 8 * n // 8)
    assert zero3["activations"] == single["activations"] and zero3["gathered_layers"] == int(4 * n / 32)
    assert memory.lora_param_count(arch, 16) == 39_976_960  # PEFT's count for r=16 on every linear
    lora = memory.training_memory(arch, n, memory.TrainSetup(adapter="lora"))
    assert (lora["weights"], lora["gradients"]) == (2 * n + 4 * 39_976_960, 4 * 39_976_960)
    qlora = memory.training_memory(arch, n, memory.TrainSetup(adapter="qlora"))
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert qlora["weights"] == int((0.5 + 0.127 / 8) * linear + 2 * (n - linear) + 4 * 39_976_960)
    assert memory.kv_bytes_per_token(arch, 2) == 2 * 32 * 4096 * 2
    ckpt = memory.training_memory(arch, n, memory.TrainSetup(gradient_checkpointing=True))
    inputs, layer = 32 * 4 * 4096 * 2048, memory.layer_activation_bytes(arch, "bf16_autocast") * 2048
    final_norm = 8 * 4096 * 2048  # its fp32 input and output at every position
    assert ckpt["activations_with_checkpointing"] == ckpt["activations"] == inputs + final_norm
    assert ckpt["activations_without_checkpointing"] == 32 * layer + final_norm
    assert ckpt["recomputed_layer"] == layer and single["recomputed_layer"] == 0
    # 7B with checkpointing: the gradients (4n) beside a recomputed layer exceed activations + logits
    assert ckpt["peak_moment"] == "layers backward"
    fixed = 4 * n + 8 * n + 2 * n
    assert ckpt["total"] == fixed + layer + 4 * 4096 * 2048 + 4 * n
    # without: batch 1 × 2048 keeps 15 GiB of activations, below the gradients (25 GiB) beside one layer's
    assert single["total"] == fixed + max(single["activations"] + single["logits"], layer + 4 * n)
    assert single["peak_moment"] == "layers backward"
    wide = memory.training_memory(arch, n, memory.TrainSetup(batch_size=4))  # 4 rows: the activations dominate
    assert wide["peak_moment"] == "loss backward"
    assert wide["total"] == fixed + wide["activations"] + wide["logits"]


SHAPES = {  # Llama-family decoders small enough to measure in seconds: (config overrides, what they exercise)
    "wide": {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4},
    "small-vocab": {"vocab_size": 64, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2},
    "large-vocab": {"vocab_size": 32000, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2},
}


@pytest.mark.parametrize(
    ("shape", "batch", "seq", "ckpt", "keep", "moment"),
    [
        ("tiny", 8, 1024, False, 0.5, "loss backward"),  # logits at half of each row, as IT reads the output
        ("wide", 4, 512, True, 1.0, "loss backward"),
        ("small-vocab", 4, 512, True, 1.0, "layers backward"),  # a recomputed layer beside the gradients
        pytest.param("large-vocab", 4, 512, False, 1.0, "loss backward", marks=pytest.mark.slow),
    ],
)
def test_memory_formula_against_the_measured_cpu_peak(
    tmp_path: Path, tiny_model_dir: Path, shape: str, batch: int, seq: int, ckpt: bool, keep: float, moment: str
) -> None:
    """Within 15% (the GPU goal's tolerance) of the peak tensor bytes of two bf16-autocast training steps with logits
    only at the kept positions and the chunked cross-entropy, at the moment the formula names. Tensor bytes as the
    profiler counts them (tests/memory_peak.py), the CPU's ``max_memory_allocated``: the same count on every machine."""
    path = tiny_model_dir / "config.json"
    if shape != "tiny":
        path = tmp_path / "config.json"
        base = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2}
        path.write_text(
            json.dumps({**base, "max_position_embeddings": 1024, "tie_word_embeddings": False, **SHAPES[shape]})
        )
    script = str(REPO / "tests" / "memory_peak.py")
    cmd = [sys.executable, script, str(path), str(batch), str(seq), str(int(ckpt)), str(keep)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True)
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    config = json.loads(path.read_text())
    setup = memory.TrainSetup(
        precision="bf16_autocast", batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt, kept_fraction=keep
    )
    predicted = memory.training_memory(Arch.of(config), measured["params"], setup)
    assert abs(measured["kept"] - keep * batch * seq) <= batch  # the script kept what the plan assumes
    # the profiler saw every weight (and files a few small tensors, 8-16 kB here, with them)
    assert 0 <= measured["at_peak"]["parameter"] - predicted["weights"] <= 32 * 1024
    assert predicted["peak_moment"] == moment
    above_weights = predicted["total"] - predicted["weights"]  # the weights were resident before the measurement
    assert measured["peak_above_start"] == pytest.approx(above_weights, rel=0.15), measured["at_peak"]


def test_logits_memory_counts_the_kept_positions_and_one_chunk(tiny_model_dir: Path) -> None:
    from im_pipeline.training.loss import CE_CHUNK_ROWS

    assert memory.CE_CHUNK_ROWS == CE_CHUNK_ROWS
    arch = Arch.of(shipped_config("meta-llama/Llama-2-7b-hf"))
    every = memory.training_memory(arch, 6_738_415_616, memory.TrainSetup())
    half = memory.training_memory(arch, 6_738_415_616, memory.TrainSetup(kept_fraction=0.5))
    # logits and their gradient in bf16 (4 · vocab) and the LM head's input (2 · hidden) per kept position, one chunk
    assert every["logits"] == (4 * 32_000 + 2 * 4096) * 2048 + 4 * 1024 * 32_000
    assert half["logits"] == (4 * 32_000 + 2 * 4096) * 1024 + 4 * 1024 * 32_000
    assert memory.training_memory(arch, 6_738_415_616, memory.TrainSetup(kept_fraction=0.25))["logits"] == (
        (4 * 32_000 + 2 * 4096) * 512 + 4 * 512 * 32_000  # fewer rows than one chunk: the chunk is that small
    )
    with pytest.raises(ValueError, match="kept_fraction"):
        memory.TrainSetup(kept_fraction=0)


def test_kept_fraction_follows_the_arms_and_the_data_stats(tmp_path: Path, tiny_model_dir: Path) -> None:
    from im_pipeline.config import ArmConfig, DataConfig, ExperimentConfig, ModelConfig
    from im_pipeline.plan.build import kept_fraction
    from im_pipeline.runs.layout import RunLayout

    def cfg(train: str, *modes: str) -> ExperimentConfig:
        arms = [ArmConfig(name=m, loss_mode=m) for m in modes]
        model = ModelConfig(source=str(tiny_model_dir))
        data = DataConfig(train=train)
        return ExperimentConfig(name="k", model=model, data=data, arms=arms, output_dir=str(tmp_path))

    assert kept_fraction(cfg("paper_lima", "it", "im"))[0] == 1.0  # IM reads the instruction: all positions
    assert kept_fraction(cfg("paper_lima", "im_release"))[0] == 1.0
    weighted = cfg("paper_lima", "it")
    for lam, everything in ((0.5, True), (0.0, False)):  # λ > 0 reads the instruction, λ = 0 only the output
        arm = ArmConfig(name="W", loss_mode="weighted", prompt_loss_weight=lam)
        assert (kept_fraction(weighted.model_copy(update={"arms": [arm]}))[0] == 1.0) is everything
    fraction, basis = kept_fraction(cfg("paper_lima", "it"))
    assert fraction == round(1 / 1.094, 4) and "Table 5" in basis  # LIMA: instruction / output words 0.094
    fraction, basis = kept_fraction(cfg("my.jsonl", "it"))
    assert fraction == 1.0 and "upper bound" in basis
    it_only = cfg("my.jsonl", "it")
    stats = RunLayout.of(it_only).data_stats
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({"stats": {"train": {"ratio": 0.25}}}))
    fraction, basis = kept_fraction(it_only)
    assert fraction == 0.8 and "prepared data" in basis


def test_done_units_follow_the_units_own_keys(tmp_path: Path) -> None:
    from im_pipeline.runs.layout import RunLayout
    from im_pipeline.runs.staleness import write_stamp
    from im_pipeline.runs.units import jobs_of

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"output_dir={tmp_path}"])
    assert unit_names(cfg) == ["base", "IT/seed-0", "IM/seed-0"] and done_units(cfg) == []
    unit = RunLayout.of(cfg).unit("base", None)
    _, evals = jobs_of(cfg, "base", None, None)
    for job in evals:
        unit.eval_result(job.benchmark).parent.mkdir(parents=True, exist_ok=True)
        unit.eval_result(job.benchmark).write_text("{}")
        write_stamp(unit.eval_dir, job.benchmark, job.key if job is not evals[-1] else "another key")
    assert done_units(cfg) == []  # one benchmark's stamp has another key: not done
    write_stamp(unit.eval_dir, evals[-1].benchmark, evals[-1].key)
    assert done_units(cfg) == ["base"]


def test_plan_json_offline_without_network(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path
) -> None:
    import socket

    def no_network(*a, **k):
        raise AssertionError("plan tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)  # offline means no connection, not a slow one
    args = ["plan", str(REPO / "configs" / "paper_llama2_7b_lima.yaml"), "--set", f"output_dir={tmp_path}", "--json"]
    assert main([*args, "--gpus", "8", "--gpu-memory", "80"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"units", "params", "judge_calls", "memory", "time"} <= set(plan)
    assert len(plan["units"]) == 22 and plan["units"][:2] == ["base", "IT/seed-0"] and plan["units_done"] == []
    assert (plan["params"], plan["judge_calls"]) == (6_738_415_616, 35_420)
    assert plan["memory"]["training_gib"]["setup"]["precision"] == "bf16_autocast"  # fp32 masters (issue 20)
    assert plan["memory"]["evaluation"]["humaneval"] == {
        "rows_per_batch": 640,
        "kv_gib": 210.0,  # 640 rows × (160 + 512) tokens × 0.5 MiB
        "safe_rows_per_batch": 181,
        "fits": False,
    }
    # the paper configs train under accelerate + DeepSpeed ZeRO-3 (training.launcher), as the released scripts did
    assert not any("no training.launcher" in w for w in plan["warnings"])
    assert not any("no fp32 master weights" in w for w in plan["warnings"])
    pure = [*args, "--set", "training.precision=pure_bf16", "--gpus", "8", "--gpu-memory", "80"]
    assert main(pure) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["memory"]["training_gib"]["setup"]["precision"] == "bf16_weights"
    assert any("no fp32 master weights" in w for w in plan["warnings"])
    assert plan["time"]["train_hours"] > 0


@pytest.mark.parametrize(
    ("launcher", "key", "label"),
    [(None, "gathered_layers", "gathered layers"), ("torchrun --nproc_per_node 8", "ddp_buckets", "DDP buckets")],
)
def test_text_plan_shows_the_engines_own_part(
    capsys: pytest.CaptureFixture, tmp_path: Path, launcher: str | None, key: str, label: str
) -> None:
    """ZeRO-3's two gathered layers and DDP's gradient buckets are in the peak: the text names them with the rest."""
    args = ["plan", str(REPO / "configs" / "paper_llama2_7b_lima.yaml"), "--set", f"output_dir={tmp_path}"]
    args += ["--set", f"training.launcher={launcher}"] if launcher else []
    assert main([*args, "--gpus", "8", "--gpu-memory", "80", "--json"]) == 0
    part = json.loads(capsys.readouterr().out)["memory"]["training_gib"][key]
    assert main([*args, "--gpus", "8", "--gpu-memory", "80"]) == 0
    assert f" + {label} {part} + KL reference model " in capsys.readouterr().out


def test_run_prints_the_plan_line_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(REPO / "configs" / "paper_llama2_7b_lima.yaml", [f"output_dir={tmp_path}"])
    line = plan_line(cfg)
    assert (
        line.startswith("plan: 22 units (0 done), 6.74B parameters, training ")
        and "35,420 judge calls ≈ $1,020" in line
    )
    bad = load_config(REPO / "configs" / "demo.yaml", ["model.source=no-such/model"])
    assert plan_line(bad).startswith(
        "plan: not available (FileNotFoundError: no architecture for model 'no-such/model'"
    )


def test_run_prints_the_plan_line_before_the_flow_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    from im_pipeline_flows.cli import run

    class Stop(Exception):
        pass

    def stop() -> None:  # the first step after the plan line: Prefect's settings, before any flow starts
        raise Stop

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(run, "prefect_defaults", stop)
    with pytest.raises(Stop):
        main(["run", str(REPO / "configs" / "paper_llama2_7b_lima.yaml"), "--set", f"output_dir={tmp_path}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("plan: 22 units (0 done), 6.74B parameters") and lines[1].startswith(
        "running experiment"
    )


def test_estimates_read_in_minutes_under_an_hour() -> None:
    from im_pipeline.plan.show import duration

    assert duration(0.05) == "~3 min"
    assert duration(0.999) == "~60 min"
    assert duration(1.0) == "~1.0 h"
    assert duration(1234.56) == "~1,234.6 h"


def test_overfitting_work_without_bleu_counts_no_generations_and_the_in_domain_losses() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "study_base.yaml")
    overfitting = work.per_model_work(cfg)["overfitting"]
    assert overfitting["generations"] == 0  # bleu: false
    assert overfitting["loss_examples"] == 2 * 40 + 16  # train and OOD (loss_examples 40 each), in-domain 16


def test_cpu_time_uses_the_models_own_measured_speed_else_the_closest_in_size() -> None:
    from im_pipeline.plan import timing

    gemma = timing.cpu_reference("gemma-3-270m", 268_098_176)
    assert gemma.model.startswith("gemma-3-270m") and gemma.tokens_per_s == 57.6
    assert timing.train_seconds(
        268_098_176, 5760, gpus=0, gpu_name=None, ckpt=False, kl=False, source="gemma-3-270m"
    ) == (pytest.approx(100.0))
    # a 1B model nobody measured here: gemma's speed (closer in size than SmolLM2's) scaled by parameters
    assert timing.cpu_reference("my/1b", 1_000_000_000) is gemma
    assert timing.train_seconds(1_072_392_704, 5760, gpus=0, gpu_name=None, ckpt=False, kl=False) == pytest.approx(
        400.0
    )
    assert timing.cpu_reference("my/100m", 100_000_000).model.startswith("SmolLM2")
    plan = {
        "training": {"tokens_per_unit": 5760, "checkpointing": False, "kl_per_unit": [False]},
        "memory": {"training_gib": {"setup": {"world_size": 1}}},
        "benchmarks": {},
        "models_evaluated": 1,
    }
    own = timing.stage_times({**plan, "model": {"source": " Gemma-3-270m"}}, 268_098_176, 0, None)
    assert own["train_hours"] == round(100 / 3600, 2) and own["note"].endswith("from this model's measured speed")
    other = timing.stage_times({**plan, "model": {"source": "my/1b"}}, 1_000_000_000, 0, None)
    assert other["note"].endswith("scaled by parameters from the measured model closest in size")
