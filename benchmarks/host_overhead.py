#!/usr/bin/env python
"""Host time of one forward+backward per loss and backend, with the GPU work taken out. No GPU needed.

    python benchmarks/host_overhead.py                       # every loss at 2048x256 bf16, all backends
    python benchmarks/host_overhead.py --losses vicreg ntxent --reps 500
    python benchmarks/host_overhead.py --cprofile vicreg:cuda   # where the host time goes (cProfile)

What is timed: ``torch.autograd.grad(loss_fn(z1, z2, backend=B), (z1, z2))``, i.e. validation,
backend and side selection, the autograd graph, our op wrappers (custom op or direct path), the
``_C`` boundary, allocations and the launches, in a plain loop (median, p20, p80 over --reps calls
after warm-up; the garbage collector paused while timing). How the GPU work is removed, per
backend:

- ``triton`` (mode ``noop``): every ``@triton.jit`` kernel of duality_kernels.ops.triton is replaced
  by a no-op ``kernel[grid](...)`` that counts (duality_kernels/testing/triton_aot.py ``kernels_replaced``). This
  leaves out Triton's own launcher, so a second mode measures it:
- ``triton`` (mode ``triton-launcher``): the real kernels, launched through Triton's own launch
  path (argument binding, specialization key, kernel cache lookup, launch metadata) under a
  stand-in sm_90 driver (duality_kernels/testing/triton_aot.py ``fake_gpu``) whose launcher is a no-op: only the C
  launcher's argument packing and the driver call (cuLaunchKernel, a few µs) are missing. The
  difference between the two modes divided by the launches is Triton's launch cost per kernel.
  The first call compiles the variants these (small CPU) shapes specialize to, or finds them in
  Triton's cache.
- ``cuda``: the extension's own C++ (csrc/bindings/ and the host side of csrc/kernels) built
  as the test suite's CPU simulator (duality_kernels/testing/csim.py) with one change: the launch macro counts
  instead of running the kernel (benchmarks/host_overhead_sim.cpp). Chosen over stubbing the
  ``_C`` entry points in Python because it runs the real binding code: argument conversion, tensor
  checks, output and workspace allocation, the ATen GEMMs and the launch bookkeeping. Built once
  (about 1.5 minutes) into build/host_overhead_sim/.
- ``torch``: the reference path as is (for comparison: its "launches" are its ATen ops).

Shapes: tensors are CPU tensors at a small "host shape" with the orientation of the nominal case
(N > D stays N > D, so ``side="auto"`` takes the same branch; nothing else on the host path
depends on the shape), because the ops that do run (the torch ops between our kernels, the
reference, the GEMMs inside ``_C``) must cost next to nothing on a CPU. On a GPU each of those ATen
ops costs its dispatch plus a kernel launch instead; the ``aten launches`` column counts them.

Counts per step (from one extra, untimed step): ``kernels`` = our kernel launches (Triton kernels,
or csrc kernels through the launch macro); ``aten`` = ATen ops that would launch a GPU kernel
(every op seen by a TorchDispatchMode that is not a view, an ``empty*`` allocation or a metadata
op; GEMMs included); ``syncs`` = ``.item()``-style host-device synchronizations (must be 0).

Output: a table, and one CSV row per (loss, backend, mode) appended to
benchmarks/results/host_overhead.csv (columns in benchmarks/results/README.md; CPU model, versions
and git sha as in sweep.py). Numbers depend on the CPU and its load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import glob
import logging
import os
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (HERE, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run benchmarks/host_overhead.py without TRITON_INTERPRET=1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import _bench as B  # noqa: E402
import duality_kernels as dk  # noqa: E402
from duality_kernels import _cost  # noqa: E402
from duality_kernels.ops import registry  # noqa: E402
from sweep import DTYPES, LOSSES  # noqa: E402

CSV_COLUMNS = [
    "run_id", "timestamp", "git_sha", "device", "cpu_threads", "torch", "triton", "python",
    "loss", "N", "D", "host_N", "host_D", "dtype", "backend", "mode",
    "median_us", "p20_us", "p80_us", "reps", "kernel_launches", "aten_launches", "launches",
    "syncs", "error",
]
DEFAULT_LOSSES = ["vicreg", "barlow", "spectral", "ntxent", "dcl", "infonce", "vicreg_exp", "vicreg_ctr"]


# --------------------------------------------------------------------------------------------
# Counting what a step launches


_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh",
              "detach", "alias", "_unsafe_view", "set_", "resize_", "sym_size", "sym_stride", "is_same_size"}
_SYNC = {"_local_scalar_dense", "item", "is_nonzero"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops of a region that would launch a GPU kernel, and the syncs."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        view = bool(func._schema.returns) and all(
            r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        if name in _SYNC:
            self.syncs += 1
        elif not view and name not in _NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


# --------------------------------------------------------------------------------------------
# Backends with their GPU work removed


class _NoopKernel:
    """``kernel[grid](*args, **kwargs)`` that only counts."""

    def __init__(self, counter):
        self._counter = counter

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs):
        self._counter[0] += 1


# Each mode is a context manager that yields a function returning the launches counted so far.


@contextlib.contextmanager
def torch_eager():
    yield lambda: 0


@contextlib.contextmanager
def triton_noop():
    from duality_kernels.testing import triton_aot as aot

    counter = [0]
    with aot.kernels_replaced(lambda name, obj: _NoopKernel(counter)), aot.any_device():
        yield lambda: counter[0]


@contextlib.contextmanager
def triton_launcher():
    from duality_kernels.testing import triton_aot as aot

    counter = [0]

    def launcher(metadata):
        def launch(*args):
            counter[0] += 1
        return launch

    with aot.fake_gpu(launcher=launcher), aot.any_device():
        yield lambda: counter[0]


_SIM = None


def cuda_noop_module():
    """The extension's host code with counting launches (host_overhead_sim.cpp), built once."""
    global _SIM
    if _SIM is None:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime": known
        from torch.utils import cpp_extension

        build_dir = os.path.join(ROOT, "build", "host_overhead_sim")
        os.makedirs(build_dir, exist_ok=True)
        _SIM = cpp_extension.load(
            name="duality_kernels_host_overhead_sim",
            sources=[*sorted(glob.glob(os.path.join(ROOT, "csrc", "bindings", "*.cpp"))),
                     os.path.join(HERE, "host_overhead_sim.cpp")],
            extra_cflags=["-O2", "-DDK_HOST_SIM"], extra_include_paths=[os.path.join(ROOT, "csrc")],
            build_directory=build_dir, verbose=bool(os.environ.get("DK_CSIM_VERBOSE")),
        )
    return _SIM


@contextlib.contextmanager
def cuda_noop():
    from duality_kernels.ops import cuda as cuda_ops

    module = cuda_noop_module()
    launches = ctypes.CDLL(module.__file__).dk_host_launches  # the loaded library's own counter
    launches.restype = ctypes.c_longlong
    cuda_ops._set_simulator(module)
    try:
        yield launches
    finally:
        cuda_ops._set_simulator(None)


MODES = {  # (backend, mode) -> context manager yielding the launch count so far
    ("torch", "eager"): torch_eager,
    ("triton", "noop"): triton_noop,
    ("triton", "triton-launcher"): triton_launcher,
    ("cuda", "noop"): cuda_noop,
}


def available(loss: str, backend: str) -> str:
    """"" when ``backend`` implements ``loss`` here, else why not."""
    if backend == "torch":
        return ""
    op = LOSSES[loss].ours
    if registry.capability(backend, op) is None:
        return f"backend={backend!r} does not implement {op}"
    if backend == "triton":
        from duality_kernels.ops.triton import _common

        return _common.unavailable_reason()
    from duality_kernels.ops import cuda as cuda_ops

    if not cuda_ops.is_available():
        return "the extension duality_kernels._C is not built"
    return ""


# --------------------------------------------------------------------------------------------
# Measuring


def host_shape(n: int, d: int, scale: int) -> tuple:
    """A small shape with the nominal one's orientation (so side="auto" takes the same branch)."""
    hn, hd = max(4, n // scale), max(4, d // scale)
    if _cost.cheaper_side(hn, hd) != _cost.cheaper_side(n, d):
        hn, hd = (hd, hn)
    return hn, hd


def time_steps(step, reps: int, warmup: int) -> tuple:
    """(p20, median, p80) in µs of ``step()`` over ``reps`` calls, the GC paused while timing."""
    for _ in range(warmup):
        step()
    gc.collect()
    gc.disable()
    try:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            step()
            ts.append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        gc.enable()
    return B.quantile(ts, 0.2), B.quantile(ts, 0.5), B.quantile(ts, 0.8)


def measure(loss: str, backend: str, mode: str, n: int, d: int, dtype, reps: int, warmup: int) -> dict:
    fn = getattr(dk, LOSSES[loss].ours)
    z1, z2 = (torch.randn(n, d).to(dtype).requires_grad_() for _ in range(2))

    def step():
        return torch.autograd.grad(fn(z1, z2, backend=backend), (z1, z2))

    with MODES[(backend, mode)]() as launched:
        step()  # the first call compiles/loads what it needs (Triton launcher mode)
        before = launched()
        with OpCounter() as ops:
            step()
        launches = launched() - before
        p20, p50, p80 = time_steps(step, reps, warmup)
    aten = sum(ops.ops.values())
    return {"median_us": p50, "p20_us": p20, "p80_us": p80, "reps": reps, "kernel_launches": launches,
            "aten_launches": aten, "launches": launches + aten, "syncs": ops.syncs, "top_ops": ops.ops}


def cprofile(loss: str, backend: str, n: int, d: int, dtype, reps: int) -> None:
    import cProfile
    import pstats

    mode = {"torch": "eager", "triton": "noop", "cuda": "noop"}[backend]
    fn = getattr(dk, LOSSES[loss].ours)
    z1, z2 = (torch.randn(n, d).to(dtype).requires_grad_() for _ in range(2))
    with MODES[(backend, mode)]():
        for _ in range(20):
            torch.autograd.grad(fn(z1, z2, backend=backend), (z1, z2))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(reps):
            torch.autograd.grad(fn(z1, z2, backend=backend), (z1, z2))
        prof.disable()
    print(f"cProfile of {reps} fwd+bwd steps, {loss} {backend} ({mode}) at {n}x{d}:")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", nargs="+", choices=sorted(LOSSES), default=DEFAULT_LOSSES)
    ap.add_argument("--N", type=int, default=2048, help="nominal batch size (default 2048)")
    ap.add_argument("--D", type=int, default=256, help="nominal embedding dimension (default 256)")
    ap.add_argument("--scale", type=int, default=32, help="host shape = nominal / scale, orientation kept")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--backends", nargs="+", default=["torch", "triton", "cuda"], choices=["torch", "triton", "cuda"])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: steadier)")
    ap.add_argument("--csv", default=os.path.join(HERE, "results", "host_overhead.csv"))
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--cprofile", metavar="LOSS:BACKEND", help="print a cProfile of one loss/backend and exit")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    hn, hd = host_shape(args.N, args.D, args.scale)
    if args.cprofile:
        loss, _, backend = args.cprofile.partition(":")
        cprofile(loss, backend, hn, hd, dtype, args.reps)
        return 0

    info = B.env_info(torch.device("cpu"))
    base = dict(run_id=B.new_run_id(), **info, N=args.N, D=args.D, host_N=hn, host_D=hd, dtype=args.dtype)
    print(f"host overhead per fwd+bwd: nominal {args.N}x{args.D} {args.dtype} (host shape {hn}x{hd}) on "
          f"{info['device']}, {args.threads} thread(s); torch {info['torch']}, triton {info['triton']}, "
          f"git {info['git_sha']}", flush=True)
    rows = []
    for loss in args.losses:
        for backend in args.backends:
            modes = [m for (b, m) in MODES if b == backend]
            for mode in modes:
                row = dict(base, loss=loss, backend=backend, mode=mode, timestamp=B.utc_now())
                why = available(loss, backend)
                if why:
                    row["error"] = f"unavailable: {why}"
                else:
                    try:
                        res = measure(loss, backend, mode, hn, hd, dtype, args.reps, args.warmup)
                        res.pop("top_ops")
                        row.update(res)
                    except Exception as e:  # one backend's failure must not stop the others
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                if not row.get("error"):
                    print(f"  {loss:11s} {backend:7s} {mode:16s} {row['median_us']:8.1f} us  "
                          f"({row['kernel_launches']} kernels + {row['aten_launches']} aten launches)", flush=True)
    print()
    print_table(rows)
    if not args.no_csv:
        B.append_csv(args.csv, rows, CSV_COLUMNS)
        print(f"\n{len(rows)} row(s) appended to {args.csv}")
    return 0


def print_table(rows) -> None:
    headers = ["loss", "backend", "mode", "median us", "p20-p80 us", "kernels", "aten", "launches", "syncs",
               "Triton launch us/kernel", "note"]
    noop = {(r["loss"]): r for r in rows if r["backend"] == "triton" and r["mode"] == "noop" and not r.get("error")}
    body = []
    for r in rows:
        if r.get("error"):
            if not r["error"].startswith("unavailable"):
                body.append([r["loss"], r["backend"], r["mode"], "-", "-", "-", "-", "-", "-", "-", r["error"][:70]])
            continue
        per_launch = "-"
        base = noop.get(r["loss"])
        if r["mode"] == "triton-launcher" and base and r["kernel_launches"]:
            per_launch = f"{(r['median_us'] - base['median_us']) / r['kernel_launches']:.1f}"
        body.append([r["loss"], r["backend"], r["mode"], f"{r['median_us']:.1f}",
                     f"{r['p20_us']:.1f}-{r['p80_us']:.1f}", r["kernel_launches"], r["aten_launches"],
                     r["launches"], r["syncs"], per_launch, ""])
    print(B.format_table(headers, body, align="lllrrrrrrrl"))


if __name__ == "__main__":
    sys.exit(main())
