"""Every Triton kernel variant our launchers use compiles for the H200 (sm_90), on any machine.

The interpreter tests check the math; this checks docs/design.md convention 10 (the kernels compile for
the GPU: block shapes, ``tl.dot`` operand sizes, dtypes, constexpr branches) without a GPU, by
running duality_kernels/testing/triton_aot.py (ahead-of-time compilation to cubin) in a subprocess without
TRITON_INTERPRET. Compiled kernels land in triton's cache, so a second run takes seconds.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "duality_kernels.testing.triton_aot"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-6000:]
    assert " compiled in " in report and "FAIL" not in report, report[-3000:]


def test_duplicate_kernel_names_are_refused(tmp_path):
    """The compile check and the kernel report key variants by kernel name: two different kernels
    with one name (lse.py's and gram.py's _prep_kernel once) would be merged silently, so
    triton_aot.launchable refuses them (run without the interpreter, as triton_aot.py must be)."""
    src = "import triton\n\n\n@triton.jit\ndef _twin_kernel(x_ptr):\n    pass\n"
    for name in ("dk_twin_a", "dk_twin_b"):
        (tmp_path / f"{name}.py").write_text(src)
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(tmp_path)!r}]\n"
        "import dk_twin_a, dk_twin_b\n"
        "from duality_kernels.testing import triton_aot\n"
        "assert list(triton_aot.launchable([dk_twin_a, dk_twin_a])) == ['_twin_kernel']\n"
        "try:\n"
        "    triton_aot.launchable([dk_twin_a, dk_twin_b])\n"
        "except ValueError as e:\n"
        "    print('REFUSED:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED: two different Triton kernels named '_twin_kernel': dk_twin_a._twin_kernel and " \
           "dk_twin_b._twin_kernel" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_launch_table_family_follows_the_architecture(monkeypatch):
    """The launch tables are chosen per call from the device's compute capability; CPU tensors
    (the interpreter) take the Hopper tables, and the ahead-of-time compile selects its target's
    through ARCH_OVERRIDE (benchmarks/kernel_report.py --arch checks the tables themselves)."""
    import torch

    from duality_kernels.ops.triton import _common

    z = torch.zeros(2, 3)
    assert _common.ARCH_OVERRIDE is None
    assert _common.device_arch(z) == 90 and _common.arch_family(z) == _common.HOPPER
    expect = {80: _common.AMPERE, 86: _common.AMPERE, 89: _common.AMPERE, 90: _common.HOPPER,
              100: _common.BLACKWELL, 103: _common.BLACKWELL, 120: _common.BLACKWELL}
    for arch, family in expect.items():
        monkeypatch.setattr(_common, "ARCH_OVERRIDE", arch)
        assert (_common.device_arch(z), _common.arch_family(z)) == (arch, family)
