"""bench/gpu_check.py: the CPU dry run (one step per arm), with pydantic, prefect, datasets and lm_eval unimportable.

The device machine has only torch and transformers; blocking the other packages here proves the check's import
chain does not need them. (The check itself, on CUDA, is run on a lent GPU: see docs/scale_out.md.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK = ("pydantic", "prefect", "datasets", "lm_eval")


def test_gpu_check_cpu_dry_run_without_the_pipeline_packages(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    argv = ["gpu_check.py", "--device", "cpu", "--steps", "1", "--batch-size", "1", "--seq-len", "64"]
    argv += ["--prompts", "2", "--new-tokens", "4", "--gen-batch-size", "2", "--layers", "2", "--out", str(out)]
    code = (
        "import runpy, sys\n"
        f"for name in {BLOCK!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, as on the device machine\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path('bench/gpu_check.py', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads(out.read_text())
    assert summary["attention"] == "sdpa" and summary["dtype"] == "bfloat16" and summary["imported_forbidden"] == []
    it, im = summary["train"]
    assert (it["mode"], im["mode"]) == ("it", "im") and it["steps"] == im["steps"] == 1
    assert 0 < it["target_tokens"] < im["target_tokens"]  # the IM mask also trains the instruction
    assert all(0 < loss < 20 for loss in it["losses"] + im["losses"])  # about ln(49152) ≈ 10.8 at random init
    assert summary["generation"]["generated_tokens"] > 0 and summary["generation"]["tokens_per_s"] > 0
    assert "train IT: 1 steps" in proc.stdout and "generate: 2 prompts" in proc.stdout
