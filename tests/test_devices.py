"""Devices and precision (issue 20 items 1-3): the evaluation device and dtype, per-GPU leases across fake GPUs and
concurrent units, the refusal of in-process multi-GPU training, and fp32 master weights under bf16 autocast."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from test_trainer import make_cfg, make_records
from transformers import AutoModelForCausalLM

from im_pipeline import devices
from im_pipeline.config import ArmConfig, ExperimentConfig, load_config
from im_pipeline.evaluation.common import EvalContext, ModelCache
from im_pipeline.plan.build import precision_of
from im_pipeline.runs.staleness import train_key, training_identity
from im_pipeline.training import train_arm

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """A fake host with ``n`` bf16-capable GPUs (``gpus(n)``), its lock files under tmp_path."""

    def fake(n: int, bf16: bool = True) -> Path:
        monkeypatch.setattr(devices, "cuda_count", lambda: n)
        monkeypatch.setattr(devices, "bf16_capable", lambda: bf16)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setattr(devices, "LOCK_DIR", tmp_path / "gpu-locks")
        return tmp_path / "gpu-locks"

    return fake


# -- device and dtype --------------------------------------------------------------------------------------------------


def test_device_and_dtype_resolution(gpus):
    gpus(0)
    assert devices.resolve_device("auto") == "cpu" and devices.resolve_eval_dtype("auto", "cpu") == "float32"
    with pytest.raises(RuntimeError, match="0 GPU"):
        devices.resolve_device("cuda")
    gpus(4)
    assert devices.resolve_device("auto") == "cuda:0" and devices.resolve_device("cuda:3") == "cuda:3"
    assert devices.resolve_device("cpu") == "cpu"
    assert devices.resolve_eval_dtype("auto", "cuda:3") == "bfloat16"
    assert devices.resolve_eval_dtype("float16", "cuda:3") == "float16"
    with pytest.raises(RuntimeError, match="'cuda:4'"):
        devices.resolve_device("cuda:4")
    gpus(2, bf16=False)
    assert devices.resolve_eval_dtype("auto", "cuda:0") == "float32"


def test_config_device_and_precision_fields_are_checked_at_load(tiny_model_dir):
    cfg = make_cfg(tiny_model_dir)
    assert cfg.evaluation.device == "auto" and cfg.evaluation.dtype == "auto" and cfg.training.precision == "mixed"
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N"):
        ExperimentConfig.model_validate({**cfg.model_dump(), "evaluation": {"device": "gpu"}})
    with pytest.raises(ValueError, match="float16 is refused for training: use bfloat16"):
        ExperimentConfig.model_validate({**cfg.model_dump(), "model": {"source": "x", "dtype": "float16"}})
    with pytest.raises(ValueError, match=r"pure_bf16 needs model\.dtype bfloat16"):
        ExperimentConfig.model_validate({**cfg.model_dump(), "training": {"precision": "pure_bf16"}})


def test_plan_precision_follows_the_new_meaning():
    paper = load_config(REPO / "configs" / "paper_llama2_7b_lima.yaml")
    assert paper.model.dtype == "bfloat16" and precision_of(paper) == "bf16_autocast"
    pure = paper.model_copy(update={"training": paper.training.model_copy(update={"precision": "pure_bf16"})})
    assert precision_of(pure) == "bf16_weights"
    assert precision_of(load_config(REPO / "configs" / "demo.yaml")) == "fp32"


def test_precision_enters_the_training_key_only_where_it_acts(tiny_model_dir):
    cfg = make_cfg(tiny_model_dir)
    arm = ArmConfig(name="IT", loss_mode="it")
    assert "precision" not in training_identity(cfg)  # no effect in float32: the keys of float32 configs unchanged
    bf16 = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "bfloat16"})})
    pure = bf16.model_copy(update={"training": bf16.training.model_copy(update={"precision": "pure_bf16"})})
    assert train_key(bf16, arm, 0, "h") != train_key(pure, arm, 0, "h")


# -- evaluators on the device ------------------------------------------------------------------------------------------


def test_eval_context_loads_on_its_device_and_hflm_uses_it(tiny_model_dir, tmp_path, monkeypatch):
    import im_pipeline.models as models_pkg

    real = models_pkg.load_model_and_tokenizer
    seen: list[tuple[str, str]] = []

    def recording(source, **kw):
        seen.append((kw["device"], kw["dtype"]))
        return real(source, **{**kw, "device": "cpu"})  # no CUDA here: the fake GPU's model stays on the CPU

    monkeypatch.setattr(models_pkg, "load_model_and_tokenizer", recording)
    cache = ModelCache()
    ctx = EvalContext(str(tiny_model_dir), tmp_path, dtype="bfloat16", device="cuda:1", cache=cache)
    ctx.model_and_tokenizer()
    assert seen == [("cuda:1", "bfloat16")] and cache.devices == {"cuda:1"}
    freed: list[str] = []
    monkeypatch.setattr(devices, "free_memory", freed.append)
    cache.clear()
    assert freed == ["cuda:1"]

    # On the real (CPU) device: the loaded model is there, and lm-eval's HFLM takes the model's device.
    from lm_eval.models.huggingface import HFLM

    model, tok = real(str(tiny_model_dir), dtype="float32", device="cpu")
    assert model.device.type == "cpu"
    assert HFLM(pretrained=model, tokenizer=tok, batch_size=2).device == model.device


# -- GPU leases across fake GPUs and concurrent units ------------------------------------------------------------------


def test_concurrent_units_each_get_their_own_gpu(gpus):
    gpus(3)
    held: dict[int, tuple[int, ...]] = {}
    barrier = threading.Barrier(3)

    def unit(i: int) -> None:
        with devices.eval_lease("auto") as lease:
            held[i] = lease.indices
            barrier.wait(timeout=10)  # all three hold theirs at the same time

    threads = [threading.Thread(target=unit, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(i for ix in held.values() for i in ix) == [0, 1, 2]


def test_a_fourth_unit_waits_for_a_free_gpu_and_cuda_n_waits_for_gpu_n(gpus):
    gpus(2)
    order: list[str] = []
    with devices.gpu_lease(1) as a, devices.gpu_lease(1) as b:
        assert {a.device, b.device} == {"cuda:0", "cuda:1"}
        waiting = threading.Thread(target=lambda: _take(order, "auto"))
        waiting.start()
        time.sleep(0.8)
        order.append("released")
    waiting.join(timeout=10)
    assert order == ["released", "auto"]
    with devices.eval_lease("cuda:1") as only:
        assert only.device == "cuda:1" and only.env == {"CUDA_VISIBLE_DEVICES": "1"}


def _take(order: list[str], spec: str) -> None:
    with devices.eval_lease(spec, on_wait=lambda _m: None):
        order.append(spec)


def test_launched_training_leases_its_processes_gpus_by_physical_id(gpus, monkeypatch):
    gpus(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # this process sees the host's GPUs 4-7
    with devices.gpu_lease(devices.train_gpus(2)) as first, devices.gpu_lease(devices.train_gpus(2)) as second:
        assert first.env == {"CUDA_VISIBLE_DEVICES": "4,5"} and second.env == {"CUDA_VISIBLE_DEVICES": "6,7"}
    assert devices.train_gpus(1) == 4 and devices.train_gpus(None) == 1  # undeclared count: all; in-process: one
    gpus(0)
    with devices.gpu_lease(devices.train_gpus(8)) as none:
        assert none.env == {} and none.device == "cpu"


def test_cpu_eval_takes_no_lease(gpus):
    lock_dir = gpus(2)
    with devices.eval_lease("cpu") as lease:
        assert lease.device == "cpu"
    assert not lock_dir.exists()


# -- in-process training on several GPUs is refused -------------------------------------------------------------------


def test_in_process_training_with_several_gpus_is_refused(gpus, tiny_model_dir, tmp_path):
    gpus(8)
    cfg = make_cfg(tiny_model_dir, max_steps=1)
    with pytest.raises(RuntimeError, match=r"training\.launcher") as err:
        train_arm(cfg, ArmConfig(name="IT", loss_mode="it"), 0, make_records(4), [], tmp_path / "run", key="k")
    assert "DataParallel is never used" in str(err.value)
    devices.refuse_data_parallel(world_size=8)  # under a launcher (one process per GPU) it is fine
    gpus(1)
    devices.refuse_data_parallel(world_size=1)


# -- fp32 master weights under bf16 autocast ---------------------------------------------------------------------------


def _norms(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for n, p in model.named_parameters() if "norm" in n])


@pytest.mark.parametrize(("precision", "moved_at_least", "moved_at_most"), [("mixed", 0.9, 1.0), ("pure_bf16", 0, 0.1)])
def test_bf16_training_keeps_fp32_masters_unless_pure_bf16(
    tiny_model_dir, tmp_path, precision, moved_at_least, moved_at_most
):
    """The issue's 12-step run: lr 1e-3, constant schedule, 16 examples, model.dtype bfloat16."""
    cfg = make_cfg(tiny_model_dir, max_steps=12, lr_scheduler="constant", save_steps=100)
    cfg = ExperimentConfig.model_validate(
        {
            **cfg.model_dump(),
            "model": {"source": str(tiny_model_dir), "dtype": "bfloat16"},
            "training": {**cfg.training.model_dump(), "precision": precision},
        }
    )
    run = tmp_path / precision
    train_arm(cfg, ArmConfig(name="IT", loss_mode="it"), 0, make_records(16), make_records(4), run, key="k")
    base = _norms(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    trained_model = AutoModelForCausalLM.from_pretrained(run / "checkpoint", dtype="auto")
    assert trained_model.dtype == (torch.float32 if precision == "mixed" else torch.bfloat16)  # what was trained
    trained = _norms(trained_model)
    in_range = (base.abs() >= 0.5) & (base.abs() < 2)
    moved = (trained[in_range] != base[in_range]).float().mean().item()
    assert moved_at_least <= moved <= moved_at_most, moved


def test_report_names_the_precision_of_bf16_training():
    from im_pipeline.analysis.run_files import RunConfig
    from im_pipeline.report.provenance import precision_note

    def note(dtype: str, precision: str | None) -> str:
        training = {"precision": precision} if precision else {}
        return precision_note(RunConfig.model_validate({"model": {"dtype": dtype}, "training": training}))

    assert note("float32", "mixed") == "" and note("bfloat16", None) == ""  # float32, and runs before the field
    assert note("bfloat16", "mixed") == "; trained with fp32 master weights under bf16 autocast"
    assert "training.precision: pure_bf16" in note("bfloat16", "pure_bf16")


# -- the unit layer: concurrent units on a fake 4-GPU host -------------------------------------------------------------


def _unit_cfg(tmp_path: Path, model_dir: Path, **training: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "gpus",
            "model": {"source": str(model_dir)},
            "arms": [{"name": "IT", "loss_mode": "it"}, {"name": "IM", "loss_mode": "im"}],
            "training": {"threads": 1, **training},
            "output_dir": str(tmp_path / "runs"),
        }
    )


def test_concurrent_eval_units_run_on_their_own_gpus(gpus, tiny_model_dir, tmp_path, monkeypatch):
    from im_pipeline.evaluation import common
    from im_pipeline.runs.units import EvalJob, evaluate_unit

    gpus(4)
    cfg = _unit_cfg(tmp_path, tiny_model_dir)
    seen: dict[str, tuple[str, str]] = {}
    barrier = threading.Barrier(4)

    def fake_benchmark(name, ctx, _bcfg):
        seen[ctx.arm + str(ctx.seed)] = (ctx.device, ctx.dtype)
        barrier.wait(timeout=20)  # the four units evaluate at the same time
        return tmp_path / f"{name}.json"

    monkeypatch.setattr(common, "run_benchmark", fake_benchmark)
    jobs = [EvalJob(arm, seed, "overfitting", "k", str(tiny_model_dir), "m") for arm in ("IT", "IM") for seed in (0, 1)]
    threads = [threading.Thread(target=evaluate_unit, args=(cfg, job)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(seen.values()) == [(f"cuda:{i}", "bfloat16") for i in range(4)]


def test_concurrent_launched_units_see_only_their_gpus(gpus, tiny_model_dir, tmp_path, monkeypatch):
    from im_pipeline.runs.units import TrainJob, train_unit
    from im_pipeline.training import launch as launch_module

    gpus(4)
    cfg = _unit_cfg(tmp_path, tiny_model_dir, launcher="torchrun --standalone --nproc_per_node 2")
    envs: list[str] = []
    barrier = threading.Barrier(2)

    def fake_launch(*_args, env, **_kw):
        envs.append(env["CUDA_VISIBLE_DEVICES"])
        barrier.wait(timeout=120)  # both units train at the same time (generous: a loaded CI box)
        return {}

    monkeypatch.setattr(launch_module, "launch", fake_launch)
    threads = [threading.Thread(target=train_unit, args=(cfg, TrainJob(arm, 0, "k"))) for arm in ("IT", "IM")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    # each unit its own two GPUs (which two depends on how the two leases interleave: "0,1"/"2,3" or "0,2"/"1,3")
    gpu_sets = [set(e.split(",")) for e in envs]
    assert len(gpu_sets) == 2 and all(len(g) == 2 for g in gpu_sets)
    assert not gpu_sets[0] & gpu_sets[1] and gpu_sets[0] | gpu_sets[1] == {"0", "1", "2", "3"}


def test_the_local_judge_loads_on_the_units_device(tiny_model_dir, monkeypatch):
    import im_pipeline.models as models_pkg
    from im_pipeline.config.evaluation import JudgeConfig
    from im_pipeline.evaluation.alpaca_eval.judging import load_local_judge

    real = models_pkg.load_model_and_tokenizer
    seen: list[str] = []

    def recording(source, **kw):
        seen.append(kw["device"])
        return real(source, **{**kw, "device": "cpu"})

    monkeypatch.setattr(models_pkg, "load_model_and_tokenizer", recording)
    cache = ModelCache()
    judge = JudgeConfig(model=str(tiny_model_dir))
    first = load_local_judge(judge, "bfloat16", None, cache, "cuda:2")
    assert seen == ["cuda:2"] and cache.devices == {"cuda:2"}
    assert load_local_judge(judge, "bfloat16", None, cache, "cuda:2") is first  # loaded once per unit and device
