"""bench/gpu_verify.py: the CPU dry run of every phase, with pydantic, prefect, datasets and lm_eval unimportable.

The device machine has only torch and transformers (and accelerate for the Trainer phases); blocking the other
packages here proves the script's import chain does not need them. No GPU run has happened yet (README, "GPU
verification").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# peft too: the device machine has none, and where it is installed transformers imports it (and it accelerate)
BLOCK = ("pydantic", "prefect", "datasets", "lm_eval", "peft")


def dry_run(out: Path, phases: str, block: tuple[str, ...] = BLOCK) -> dict:
    argv = ["gpu_verify.py", "--cpu-dry-run", "--out", str(out), "--phases", phases]
    code = (
        "import runpy, sys\n"
        f"for name in {block!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, as on the device machine\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path('bench/gpu_verify.py', run_name='__main__')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "gpu_verify.json").read_text())
    assert result["cpu_dry_run"] is True and result["imported_forbidden"] == []
    return result


def test_cpu_dry_run_every_phase_but_torchrun(tmp_path: Path) -> None:
    phases = dry_run(tmp_path, "env,numerics,padding_free,trainer,throughput,generation")["phases"]
    assert [p for p, r in phases.items() if r["status"] != "ok"] == []
    assert list(phases) == ["env", "numerics", "padding_free", "trainer", "throughput", "generation"]
    num = phases["numerics"]
    assert {(r["mode"], r["norm"]) for r in num["rows"]} == {
        (m, n) for m in ("it", "im", "im_release", "weighted") for n in ("sequence", "token")
    }
    assert all(r["padding_fraction"] > 0 for r in num["rows"])  # real padding in every batch
    assert num["worst_rel"]["fp32"] <= 1e-5 and num["worst_rel"]["bf16_autocast"] <= 5e-3
    pf = phases["padding_free"]
    assert pf["sdpa_fp32_sequence"]["rel"] <= 1e-5 and pf["sdpa_fp32_token"]["rel"] <= 1e-5
    tr = phases["trainer"]
    assert tr["master_dtypes"] == ["torch.float32"] and tr["norm_weights_moved_min"] > 0.5 and len(tr["kl"]) == 2
    th = phases["throughput"]
    assert th["135m"]["plan_gib"] > 0 and th["7b"]["extrapolated"]["depth"] == 2  # the dry run's "7B" is tiny
    gen = phases["generation"]
    assert gen["batched_equals_single"] is True and gen["humaneval_rows"]["rows"] == 8


@pytest.mark.slow
def test_cpu_dry_run_torchrun_two_gloo_processes_equal_one_with_accumulation(tmp_path: Path) -> None:
    phase = dry_run(tmp_path, "torchrun")["phases"]["torchrun"]
    assert phase["status"] == "ok"
    tr = phase["two_gloo_vs_one_acc2"]
    assert tr["world_size"] == 2 and tr["max_abs_diff_first64"] <= 1e-5
    assert tr["losses"][0] == pytest.approx(tr["losses"][1], rel=1e-5)


def test_without_accelerate_the_trainer_phase_is_skipped_saying_why(tmp_path: Path) -> None:
    result = dry_run(tmp_path, "env,trainer", (*BLOCK, "accelerate"))
    trainer = result["phases"]["trainer"]
    assert result["phases"]["env"]["status"] == "ok" and result["phases"]["env"]["accelerate"] is None
    assert trainer["status"] == "skipped" and "pip install accelerate" in trainer["why"]
