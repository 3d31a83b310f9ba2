"""Compile every Triton kernel variant our launchers use for an sm_90 GPU, without a GPU.

DESIGN convention 10: kernels must compile for the GPU, not only pass the interpreter. Triton can
compile ahead of time for a target it cannot run (``triton.compile(ASTSource, target=GPUTarget)``,
its own ptxas included). This script runs the public losses on small CPU tensors with every
kernel's launch replaced by a recorder, then compiles each distinct launch (argument types,
constexprs, num_warps) to a cubin for the H200's architecture. The results of the recorded runs
are garbage (nothing is launched): only the launches matter.

Run it WITHOUT ``TRITON_INTERPRET=1`` (the interpreter replaces the kernels by Python functions):
``python tests/triton_aot.py`` (tests/test_triton_compile.py does so in a subprocess).
Exit status 0 when every variant compiled; 1 otherwise, with the errors printed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run tests/triton_aot.py without TRITON_INTERPRET=1")
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".triton", "cache"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import duality_kernels as dk  # noqa: E402
from duality_kernels.ops.triton import _common  # noqa: E402
from duality_kernels.ops.triton import gram, lse  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)  # H200 (sm_90), warp size 32
TRITON_DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, module, name, launches, fn):
        self.module, self.name, self.launches, self.fn = module, name, launches, fn

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, num_stages=None, **constexprs):
            params = [p for p in self.fn.params if p.name not in constexprs]
            types = []
            for p, a in zip(params, args):
                if p.annotation and p.annotation != "constexpr":  # e.g. "fp64" (tl.float64)
                    types.append(p.annotation)
                    continue
                if isinstance(a, torch.Tensor):
                    types.append("*" + TRITON_DTYPES[a.dtype])
                elif isinstance(a, bool):
                    types.append("i1")
                elif isinstance(a, int):
                    types.append("i64" if abs(a) >= 2**31 else "i32")
                elif isinstance(a, float):
                    types.append("fp32")
                else:
                    raise TypeError(f"{self.name}: cannot type argument {a!r}")
            key = (self.module, self.name, tuple(types),
                   tuple(sorted((k, repr(v)) for k, v in constexprs.items())), num_warps, num_stages)
            self.launches.setdefault(key, (self.module, self.name, types, constexprs, num_warps, num_stages))
        return launch


def record(modules, scenarios):
    """{key: launch} of every distinct launch the scenarios make."""
    launches: dict = {}
    originals = []
    for mod in modules:
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                originals.append((mod, name, obj))
                setattr(mod, name, Recorder(mod.__name__, name, launches, obj))
    device_problem = _common.device_problem
    _common.device_problem = lambda z: ""  # accept CPU tensors; block sizes stay the GPU's
    try:
        for fn in scenarios:
            fn()
    finally:
        _common.device_problem = device_problem
        for mod, name, obj in originals:
            setattr(mod, name, obj)
    return launches


def compile_launch(launch):
    """Compile one recorded launch for TARGET; returns a one-line report (raises on failure)."""
    module, name, types, constexprs, num_warps, num_stages = launch
    fn = getattr(importlib.import_module(module), name)
    names = fn.arg_names
    params = [n for n in names if n not in constexprs]
    if len(params) != len(types):
        raise TypeError(f"{name}: {len(types)} positional arguments for parameters {params}")
    signature = dict(zip(params, types))
    signature.update({n: "constexpr" for n in constexprs})
    src = ASTSource(fn=fn, signature={n: signature[n] for n in names},
                    constexprs={(names.index(n),): v for n, v in constexprs.items()})
    options = {"num_warps": num_warps}
    if num_stages is not None:
        options["num_stages"] = num_stages
    t = time.time()
    compiled = triton.compile(src, target=TARGET, options=options)
    return (f"{time.time() - t:5.1f}s {name} {' '.join(types)} {constexprs} warps={num_warps} "
            f"smem={compiled.metadata.shared}")


def _compile_or_report(launch):
    try:
        return True, compile_launch(launch)
    except Exception:
        return False, f"{launch[1]} {' '.join(launch[2])} {launch[3]}\n{traceback.format_exc()}"


def _backward(fn, dtype, shape=(300, 96)):
    def run():
        z1, z2 = (torch.randn(*shape).to(dtype).requires_grad_() for _ in range(2))
        out = fn(z1, z2)
        loss = out[0] if isinstance(out, tuple) else out
        loss.float().sum().backward()
    return run


def lse_scenarios(everything: bool):
    """The log-sum-exp losses. Default: one launch per kernel feature (each transform, mask,
    positive mode, row scaling, dtype and dot precision, a K below one block and a D needing
    several column chunks); ``everything``: every loss mode in bf16 too."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    modes = ([(s, n) for s in ("dot", "abs", "square") for n in ("l2", "center_l2", "dim_std")] if everything
             else [("dot", "l2"), ("abs", "center_l2"), ("square", "dim_std")])
    out = [_backward(lambda a, b, s=s, n=n: dk.ntxent_loss(a, b, 0.1, s, n, backend="triton"), bf16)
           for s, n in modes]
    for sim in (("dot", "abs", "square") if everything else ("square",)):
        out.append(_backward(lambda a, b, s=sim: dk.dcl_loss(a, b, 0.1, s, backend="triton"), bf16))
    out += [
        _backward(lambda a, b: dk.infonce_loss(a, b, backend="triton"), bf16),
        _backward(lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton"), bf16),
        _backward(lambda a, b: dk.vicreg_ctr_loss(a, b, backend="triton"), bf16),
        _backward(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), fp16),
        _backward(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), bf16, (40, 3)),
        _backward(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), bf16, (40, 1030)),
    ]
    out += [_backward(lambda a, b: lse.ntxent_terms(a, b, 0.1, "dot", "l2", _TwoRanks(a, b)).mean(), bf16),
            _backward(lambda a, b: lse.infonce_terms(a, b, 0.1, _TwoRanks(a, b)).mean(), bf16)]
    fp32_runs = [_backward(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), fp32)]
    return out, fp32_runs


class _TwoRanks:
    """Rank 1 of 2 for the gathered (anchor_lse) kernels: the "other rank" rows are a copy."""

    active, rank, world = True, 1, 2

    def __init__(self, a, b):
        self._g = {id(a): torch.cat([a.detach(), a]), id(b): torch.cat([b.detach(), b])}

    def gather(self, x):
        return self._g[id(x)]


def gram_scenarios(everything: bool):
    """The Gram family through the public functions: both sides, every primitive, bf16 and fp16
    (and float64, which the GPU runs with its own 32-wide tiles); fp32 runs come separately."""
    def all_of(dtype, shape=(40, 70)):
        def run():
            z1, z2 = (torch.randn(*shape).to(dtype).requires_grad_() for _ in range(2))
            outs = []
            for side in ("sample", "dimension"):
                outs += [dk.vicreg_loss(z1, z2, side=side, backend="triton"),
                         dk.barlow_twins_loss(z1, z2, side=side, backend="triton"),
                         dk.spectral_contrastive_loss(z1, z2, side=side, backend="triton"),
                         *dk.duality_terms(z1, side=side, backend="triton")]
            outs += [dk.covariance(z1, backend="triton").sum(), dk.cross_correlation(z1, z2, backend="triton").sum(),
                     dk.normalized_gram(z1, backend="triton").sum(), dk.normalized_gram(z1, z2, backend="triton").sum()]
            sum(o.float() for o in outs).backward()
        return run

    # fp16 adds the power-of-two scaled operands to every op; N·D > 2^20 with few column stripes
    # takes the chunked (stats, merge, apply) column passes and BatchNorm backward
    big = (1200, 1000)
    runs = [all_of(torch.bfloat16), all_of(torch.float16), all_of(torch.float64), all_of(torch.bfloat16, big)]
    if everything:
        runs.append(all_of(torch.bfloat16, (300, 1030)))
    return runs, [all_of(torch.float32), all_of(torch.float32, big)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every loss mode, not one launch per kernel feature")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    launches = {}
    runs, fp32_runs = lse_scenarios(args.all)
    g_runs, g_fp32_runs = gram_scenarios(args.all)
    runs, fp32_runs = runs + g_runs, fp32_runs + g_fp32_runs
    for precision in ("highest", "high"):  # fp32: IEEE and TF32 dots
        torch.set_float32_matmul_precision(precision)
        launches.update(record([lse, gram], (runs if precision == "highest" else []) + fp32_runs))
    print(f"{len(launches)} kernel variants to compile for {TARGET}, {args.jobs} processes")
    t0 = time.time()
    failures = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for ok, report in pool.map(_compile_or_report, launches.values()):
            failures += not ok
            print(("ok   " if ok else "FAIL ") + report, flush=True)
    print(f"{len(launches) - failures}/{len(launches)} compiled in {time.time() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    assert _common.triton is not None
    sys.exit(main())
