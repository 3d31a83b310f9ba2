"""docs/design.md convention 15, checked without a GPU for every architecture we support (sm_80, 86, 89,
90, 100, 120): no compiled kernel variant spills registers or needs more shared memory per block
than the architecture allows, and every dot that a bf16, fp16 or TF32 call launches compiles to
tensor-core instructions (mma.sync on sm_8x and sm_120, wgmma on sm_90, tcgen05.mma or mma.sync on
sm_100).

The evidence is benchmarks/kernel_report.py (run once per architecture, in a subprocess without
TRITON_INTERPRET): every Triton variant the cases launch, compiled ahead of time for sm_<arch> with
Triton's own specialization and the launch tables of that architecture's family, and the csrc
kernels compiled for it with nvcc -Xptxas -v. sm_90 runs the full headline report; the other five run
a subset of its Triton part (ARCH_CASES: one shape per kernel family, every kernel launched, all five
dtype settings) to keep the suite's time (a full report per architecture is several minutes cold on the
2-core development machine; the full reports are run by hand, docs/triton_lse.md).

Kernels are parametrized one by one (discovered from the source: every ``@triton.jit`` function
named ``*_kernel`` under duality_kernels/ops/triton, every ``__global__`` function in
csrc/kernels), so each can carry its own mark. Kernels that an open issue rewrites and that the
report shows failing today are marked ``xfail(strict=True)`` with that issue: the test turns red
the day they are fixed, so that the mark goes too. The marks reflect triton 3.8 / nvcc 13.0 on the
development machine; other Triton versions allocate registers differently.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _triton_kernels():
    names = []
    for path in sorted((ROOT / "duality_kernels" / "ops" / "triton").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and any(
                    "jit" in ast.unparse(d) for d in node.decorator_list):
                names.append(node.name)
    return names


def _csrc_kernels():
    names = set()
    for path in sorted((ROOT / "csrc" / "kernels").glob("*.cu")):
        names.update(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", path.read_text()))
    return sorted(names)


# {kernel: the open issue that fixes it} for kernels known to fail a check (none today)
SPILLS: dict = {}
NO_WGMMA: dict = {}
CSRC_SPILLS: dict = {}


def _params(names, marks):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=marks[n])) if n in marks else n
            for n in names]


ARCHS = (80, 86, 89, 90, 100, 120)
FULL_ARCH = 90
# Every kernel of both families, at the headline shapes whose tiles are the largest per family
ARCH_CASES = ["ntxent:2048x256", "ntxent:16384x256", "infonce:32768x256", "vicreg_exp:2048x1024",
              "vicreg:2048x8192", "barlow:2048x8192", "spectral:16384x256", "supcon:8192x128", "moco:256x128",
              "hard_negative:16384x256", "clip:65536x512", "siglip:65536x512", "coding_rate:100x1024",
              "mcr2:1000x128", "rankme:25600x2048"]
_REPORTS: dict = {}


def _report(arch):
    if arch not in _REPORTS:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), "--json", "--arch", str(arch)]
        if arch != FULL_ARCH:
            cmd += ["--cases", *ARCH_CASES]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        _REPORTS[arch] = json.loads(proc.stdout)
    return _REPORTS[arch]


def _variants(report, kernel, source):
    return [v for v in report["variants"] if v["kernel"] == kernel and v["source"] == source]


def _compiled(report, kernel):
    """The kernel's Triton variants that compiled (test_report_compiles_every_variant lists the others)."""
    return [v for v in _variants(report, kernel, "triton") if not v.get("error")]


def _where(v):
    return (f"{v['kernel']} {v['constexprs']} warps={v['num_warps']} stages={v['num_stages']}: regs "
            f"{v['registers']}, spill {v['spill_stores']}+{v['spill_loads']} B, smem {v['shared_bytes']} B, "
            f"wgmma {v['wgmma']}, mma.sync {v['mma_sync']}, tcgen05 {v['tcgen05']}, dots {v['dots']}; "
            f"cases {v['cases']}")


@pytest.mark.parametrize("arch", ARCHS)
def test_report_compiles_every_variant(arch):
    report = _report(arch)
    assert report["arch"] == arch
    errors = [f"{v['kernel']} {v['constexprs']}: {v['error']}" for v in report["variants"] if v.get("error")]
    assert not errors, "\n".join(errors)
    if arch == FULL_ARCH:
        assert len(report["cases"]) >= 16 * 5  # the headline shapes x five dtype settings
    else:
        assert len(report["cases"]) == len(ARCH_CASES) * 5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", _triton_kernels())
def test_every_triton_kernel_is_reported(arch, kernel):
    """The cases launch every kernel (the full headline set on sm_90, ARCH_CASES elsewhere), so the
    checks below cover all of them on every architecture."""
    assert _variants(_report(arch), kernel, "triton"), f"no case launches {kernel} for sm_{arch}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", _params(_triton_kernels(), SPILLS))
def test_no_spills(arch, kernel):
    spilling = [_where(v) for v in _variants(_report(arch), kernel, "triton") if v["spill_bytes"]]
    assert not spilling, f"sm_{arch}: {len(spilling)} variant(s) spill:\n" + "\n".join(spilling)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", _triton_kernels())
def test_shared_memory_within_the_block_limit(arch, kernel):
    """sm_86/89/120 allow 99 KB per block, sm_80 163 KB, sm_90/100 227 KB: a variant above its
    architecture's limit would not launch there."""
    report = _report(arch)
    limit = report["gpu_model"]["max_smem_per_block"]
    assert limit == {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}[arch]
    over = [_where(v) for v in _compiled(report, kernel) if v["shared_bytes"] > limit]
    assert not over, f"sm_{arch}: {len(over)} variant(s) above {limit} B of shared memory:\n" + "\n".join(over)


# The instructions that run a tensor-core dot on each architecture (Triton emits tcgen05.mma for the
# 5th-generation tensor cores of sm_100 where it can, mma.sync otherwise; sm_120 has no tcgen05)
TC_INSTRUCTIONS = {80: ("mma_sync",), 86: ("mma_sync",), 89: ("mma_sync",), 90: ("wgmma",),
                   100: ("tcgen05", "mma_sync"), 120: ("mma_sync",)}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", _params(_triton_kernels(), NO_WGMMA))
def test_tensor_core_dots_use_tensor_cores(arch, kernel):
    variants = _compiled(_report(arch), kernel)
    missing = [_where(v) for v in variants
               if v["tc_expected"] and not any(v[k] for k in TC_INSTRUCTIONS[arch])]
    assert not missing, (f"sm_{arch}: {len(missing)} variant(s) without {'/'.join(TC_INSTRUCTIONS[arch])}:\n"
                         + "\n".join(missing))
    assert all(v["tc_ops"] == sum(v[k] for k in TC_INSTRUCTIONS[arch]) for v in variants)


def _csrc(report, kernel):
    if report["csrc_error"] and report["csrc_error"].startswith("ToolkitMissing"):
        pytest.skip(f"no CUDA toolkit here: {report['csrc_error']}")
    assert report["csrc_error"] is None, report["csrc_error"]
    variants = _variants(report, kernel, "csrc")
    assert variants, f"nvcc -Xptxas -v reported no {kernel}"
    return variants


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kernel", _params(_csrc_kernels(), CSRC_SPILLS))
def test_csrc_no_spills(arch, kernel):
    """Every instantiation of every csrc kernel, compiled for each architecture (nvcc's register
    allocation differs per architecture: the float64 and 16-bit variants of row_bwd, row_scale,
    moments_bwd and center spilled 8-48 bytes on sm_80-sm_120 but not on sm_90)."""
    spilling = [f"sm_{arch} {v['kernel']}<{v['constexprs'].get('template', '')}>: {v['spill_stores']}+"
                f"{v['spill_loads']} B, regs {v['registers']}"
                for v in _csrc(_report(arch), kernel) if v["spill_bytes"]]
    assert not spilling, "\n".join(spilling)
