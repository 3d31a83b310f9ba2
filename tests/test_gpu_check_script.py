"""benchmarks/gpu_check.sh and the calls it runs under compute-sanitizer, checked without a GPU: the
script parses (bash -n), and benchmarks/sanitize_calls.py runs every call in its dry mode (the
CUDA backend in its simulator, Triton in its interpreter). On a GPU the script itself runs them
under compute-sanitizer."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="on a GPU benchmarks/gpu_check.sh runs these calls under compute-sanitizer")


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_parses():
    proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_sanitize_calls_dry_run(backend):
    """Every call the sanitizer steps make, on CPU tensors, in a fresh process (the dry run sets
    up the simulator or the interpreter itself)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sanitize_calls.py"), "--backend", backend,
                           "--dry-run"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("calls done"), proc.stdout[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.endswith(": ok")]
    assert len(lines) == (3 if backend == "cuda" else 14), proc.stdout
