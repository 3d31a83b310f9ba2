"""Compile every Triton kernel variant our launchers use for a GPU target, without a GPU.

Kernels must compile for the GPU, not only pass the interpreter (docs/design.md §10). This runs the
public losses on meta tensors with a stand-in GPU driver, so every ``kernel[grid](...)`` goes
through Triton's own launch path up to the compile, records the variant there, and compiles each
distinct record to a cubin with the signature, constexprs and options Triton's JIT would use on
the GPU. Kernels are discovered (every ``*_kernel`` of ``duality_kernels.ops.triton``); every
autotune config counts as a variant. benchmarks/kernel_report.py and benchmarks/host_overhead.py
build on it. How it works and which Triton internals it relies on: docs/design.md, "Compiling
without a GPU". Run without TRITON_INTERPRET=1: ``python -m duality_kernels.testing.triton_aot
[--arch 90]``; exit status 0 when every variant compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import pkgutil
import sys
import time
import traceback
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace
from typing import Callable, Dict, List, NamedTuple, Optional

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run duality_kernels/testing/triton_aot.py without TRITON_INTERPRET=1")
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".triton", "cache"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver as _driver  # noqa: E402
from triton.runtime.jit import JITFunction, KernelInterface  # noqa: E402

import duality_kernels as dk  # noqa: E402

KERNEL_PACKAGE = "duality_kernels.ops.triton"
DEFAULT_ARCH = 90  # H200 (sm_90)


def target(arch: int = DEFAULT_ARCH) -> GPUTarget:
    return GPUTarget("cuda", arch, 32)


# --------------------------------------------------------------------------------------------
# Kernel discovery


def kernel_modules() -> list:
    """Every module of the Triton kernel package, imported."""
    pkg = importlib.import_module(KERNEL_PACKAGE)
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(pkg.__path__, KERNEL_PACKAGE + ".")]


def base_jit(obj) -> Optional[JITFunction]:
    """The ``@triton.jit`` function under any autotune / heuristics wrappers, else None."""
    while isinstance(obj, KernelInterface) and not isinstance(obj, JITFunction):
        obj = getattr(obj, "fn", None)
    return obj if isinstance(obj, JITFunction) else None


def _kernel_attributes(modules=None):
    """(module, attribute, object) of every launched kernel: the module attributes named
    ``*_kernel`` (docs/design.md convention 1) that wrap a ``@triton.jit`` function."""
    for mod in modules if modules is not None else kernel_modules():
        for attr, obj in list(vars(mod).items()):
            if attr.endswith("_kernel") and base_jit(obj) is not None:
                yield mod, attr, obj


def launchable(modules=None) -> Dict[str, object]:
    """{kernel name: the launched object (JITFunction, Autotuner or Heuristics)}."""
    out, where = {}, {}
    for mod, attr, obj in _kernel_attributes(modules):
        name = base_jit(obj).fn.__name__
        if name in out and base_jit(out[name]) is not base_jit(obj):
            # the report and the compile check key variants by name: two kernels sharing one would
            # be silently merged (lse.py's and gram.py's _prep_kernel once were)
            raise ValueError(f"two different Triton kernels named {name!r}: {where[name]} and "
                             f"{mod.__name__}.{attr}")
        out.setdefault(name, obj)
        where.setdefault(name, f"{mod.__name__}.{attr}")
    return out


# --------------------------------------------------------------------------------------------
# A stand-in GPU driver


class _Driver:
    """Just enough of Triton's active-driver interface for ``JITFunction.run`` to bind and
    specialize its arguments for ``target`` (device 0, stream 0) without a GPU. With ``launcher``
    (a callable taking the kernel's metadata), a compiled kernel also "loads" and launches: its
    launch calls ``launcher(metadata)``'s result instead of the CUDA driver (host_overhead.py)."""

    def __init__(self, tgt: GPUTarget, launcher: Optional[Callable] = None):
        self._target = tgt
        self.launcher_cls = (lambda src, metadata: launcher(metadata)) if launcher else None
        # load_binary -> (module, function, n_regs, n_spills, n_max_threads); shared memory is
        # not checked against a device here (kernel_report.py reports it).
        self.utils = SimpleNamespace(
            load_binary=lambda name, kernel, shared, device: (None, 0, 0, 0, 1024),
            get_device_properties=lambda device: {"max_shared_mem": 1 << 30, "multiprocessor_count": 132},
        )

    def is_active(self):
        return True

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self._target

    def get_active_torch_device(self):
        return torch.device("meta")


@contextlib.contextmanager
def fake_gpu(arch: int = DEFAULT_ARCH, launcher: Optional[Callable] = None, modules=None):
    """Make Triton believe a GPU of ``arch`` is current (see ``_Driver``). The kernels' per-device
    binder caches are emptied for the duration and restored afterwards, so nothing bound for the
    stand-in target outlives it."""
    from duality_kernels.ops.triton import _common

    fns = [base_jit(k) for k in launchable(modules).values()]
    saved_caches = {fn: fn.device_caches for fn in fns}
    saved_driver = getattr(_driver, "_active", None)
    saved_arch = _common.ARCH_OVERRIDE
    _driver.set_active(_Driver(target(arch), launcher))
    _common.ARCH_OVERRIDE = arch  # the launch tables of the target's family (tensors are on "meta")
    for fn in fns:
        fn.device_caches = defaultdict(fn.create_binder)
    try:
        yield
    finally:
        for fn, caches in saved_caches.items():
            fn.device_caches = caches
        _common.ARCH_OVERRIDE = saved_arch
        _driver.set_active(saved_driver)


@contextlib.contextmanager
def kernels_replaced(replacement: Callable[[str, object], object], modules=None):
    """Every launched kernel (each ``*_kernel`` module attribute of the kernel modules) replaced
    by ``replacement(kernel name, kernel object)`` for the duration: the launchers then call the
    replacement's ``[grid](...)`` (host_overhead.py's no-op kernels)."""
    saved = list(_kernel_attributes(modules))
    for mod, attr, obj in saved:
        setattr(mod, attr, replacement(base_jit(obj).fn.__name__, obj))
    try:
        yield
    finally:
        for mod, attr, obj in saved:
            setattr(mod, attr, obj)


@contextlib.contextmanager
def any_device():
    """Let backend="triton" accept CPU and meta tensors (block sizes stay the GPU's: not
    interpreting)."""
    from duality_kernels.ops.triton import _common

    device_problem = _common.device_problem
    _common.device_problem = lambda z: ""
    try:
        yield
    finally:
        _common.device_problem = device_problem


# --------------------------------------------------------------------------------------------
# Recording


class Launch(NamedTuple):
    """One compile Triton's JIT would do: exactly the arguments of its ``_do_compile``."""

    module: str           # the @triton.jit function's module
    name: str             # and name
    signature: dict       # parameter name -> Triton type ("*bf16", "i32", "constexpr", ...)
    constexprs: dict      # (argument index,) -> value
    attrs: dict           # (argument index,) -> specialization attributes (e.g. tt.divisibility)
    options: dict         # the backend options (num_warps, num_stages, ...)
    config: Optional[str]  # the autotune config this candidate comes from, else None

    def constexpr_values(self) -> Dict[str, object]:
        """{parameter name: value} of the constexpr arguments (specialized integers included)."""
        names = list(self.signature)
        return {names[path[0]] if len(path) == 1 else str(path): v for path, v in self.constexprs.items()}


@dataclasses.dataclass
class Variant:
    launch: Launch
    cases: List[str]  # the names of the cases that launch it


class Case(NamedTuple):
    name: str
    run: Callable[[], None]
    precision: str = "highest"  # torch.set_float32_matmul_precision during the run


def record(cases: List[Case], arch: int = DEFAULT_ARCH) -> Dict[tuple, Variant]:
    """{key: Variant} of every distinct compile that the cases' launches ask for, in first-seen
    order, with the cases and grids that launch each. Nothing is compiled or launched."""
    modules = kernel_modules()
    kernels = launchable(modules)
    found: Dict[tuple, Variant] = {}
    state = {"case": None, "config": None}

    def capture(fn):
        def _do_compile(key, signature, device, constexprs, options, attrs, warmup):
            k = (fn.module, fn.fn.__name__, repr(key), state["config"])
            v = found.get(k)
            if v is None:
                launch = Launch(fn.module, fn.fn.__name__, dict(signature), dict(constexprs), dict(attrs),
                                dict(options.__dict__), state["config"])
                v = found[k] = Variant(launch, [])
            if state["case"] not in v.cases:
                v.cases.append(state["case"])
            return None  # JITFunction.run returns before launching
        return _do_compile

    def candidates(tuner):
        def run(*args, **kwargs):
            # Autotuner.run's own pruning, without its benchmarking: every surviving config is
            # a variant the GPU would compile and time.
            tuner.nargs = dict(zip(tuner.arg_names, args))
            try:
                configs = tuner.prune_configs(kwargs)
            finally:
                tuner.nargs = None
            for cfg in configs:
                state["config"] = str(cfg)
                try:
                    tuner.fn.run(*args, **kwargs, **cfg.all_kwargs())
                finally:
                    state["config"] = None
        return run

    patched = []
    for obj in kernels.values():
        fn = base_jit(obj)
        fn._do_compile = capture(fn)  # instance attribute: shadows the method until deleted
        patched.append((fn, "_do_compile"))
        wrapper = obj
        while wrapper is not fn:
            if isinstance(wrapper, Autotuner):
                wrapper.run = candidates(wrapper)
                patched.append((wrapper, "run"))
            wrapper = wrapper.fn
    precision = torch.get_float32_matmul_precision()
    try:
        with fake_gpu(arch, modules=modules), any_device():
            for case in cases:
                state["case"] = case.name
                torch.set_float32_matmul_precision(case.precision)
                try:
                    case.run()
                except Exception as e:
                    raise RuntimeError(f"recording case {case.name!r} failed: {type(e).__name__}: {e}") from e
    finally:
        torch.set_float32_matmul_precision(precision)
        for obj, attr in patched:
            obj.__dict__.pop(attr, None)
    return found


def compile_launch(launch: Launch, arch: int = DEFAULT_ARCH):
    """The CompiledKernel of one recorded launch for sm_<arch> (from Triton's cache when there)."""
    fn = base_jit(getattr(importlib.import_module(launch.module), launch.name))
    src = ASTSource(fn, launch.signature, launch.constexprs, launch.attrs)
    return triton.compile(src, target=target(arch), options=launch.options)


def describe(launch: Launch) -> str:
    """One line: kernel, argument types, constexprs, warps/stages (and autotune config)."""
    types = " ".join(t for t in launch.signature.values() if t != "constexpr")
    cfg = f" config[{launch.config}]" if launch.config else ""
    return (f"{launch.name} {types} {launch.constexpr_values()} warps={launch.options.get('num_warps')} "
            f"stages={launch.options.get('num_stages')}{cfg}")


# --------------------------------------------------------------------------------------------
# The feature scenarios of the compile check (test_triton_compile.py): one launch per kernel
# feature, on small meta tensors (odd sizes, so unaligned integer arguments are covered too)


def fwd_bwd(fn, dtype, shape=(300, 96)):
    """A run of ``fn(z1, z2)`` forward and backward on meta tensors of ``shape``."""
    def run():
        z1, z2 = (torch.empty(*shape, device="meta", dtype=dtype).requires_grad_() for _ in range(2))
        out = fn(z1, z2)
        loss = out[0] if isinstance(out, tuple) else out
        loss.float().sum().backward()
    return run


class _TwoRanks:
    """Rank 1 of 2 for the gathered (anchor_lse) kernels: the "other rank" rows are a copy."""

    active, rank, world = True, 1, 2

    def __init__(self, a, b):
        self._g = {id(a): torch.cat([a.detach(), a]), id(b): torch.cat([b.detach(), b])}

    def gather(self, x):
        return self._g[id(x)]


class _TwoRanksAny:
    """Rank 1 of 2 for ops/gathered.py (any tensor): gathers append a copy, all-reduces double."""

    active, rank, world = True, 1, 2

    def gather(self, x):
        return torch.cat([x.detach(), x])

    def all_reduce(self, x):
        return x + x.detach()


def _gathered_ops(z1, z2):
    """docs/spec.md §5's compiled forms on Triton (ops/gathered.py): both strategies, the spectral loss on
    both sides and VICReg-ctr's anchors against the gathered rows (the moments and clamped-rows
    ops, their epilogues, and anchor_lse without a positive)."""
    from duality_kernels.ops import gathered
    from duality_kernels.ops.triton import gram

    ctx = _TwoRanksAny()
    w = (25.0, 25.0, 1.0, 1.0, 1e-4)
    outs = [gathered.vicreg(gram, ctx, s, z1, z2, *w, "dimension")[0] for s in ("gather", "allreduce")]
    outs += [gathered.barlow_twins(gram, ctx, "allreduce", z1, z2, 0.0051, 1e-5, "dimension")[0]]
    outs += [gathered.spectral(gram, ctx, z1, z2, 1.0, side)[0] for side in ("sample", "dimension")]
    outs += [gathered.vicreg_ctr_triton(ctx, z1, z2, *w, 0.1)[0]]
    return sum(o.float() for o in outs)


def lse_scenarios(everything: bool) -> List[Case]:
    """The log-sum-exp losses. Default: one launch per kernel feature (each transform, mask,
    positive mode, row scaling, dtype and dot precision, a K below one block and a D needing
    several column chunks); ``everything``: every loss mode in bf16 too."""
    from duality_kernels.ops import gathered

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    modes = ([(s, n) for s in ("dot", "abs", "square") for n in ("l2", "center_l2", "dim_std")] if everything
             else [("dot", "l2"), ("abs", "center_l2"), ("square", "dim_std")])
    out = [Case(f"ntxent {s} {n}", fwd_bwd(lambda a, b, s=s, n=n: dk.ntxent_loss(a, b, 0.1, s, n, backend="triton"),
                                           bf16))
           for s, n in modes]
    for sim in (("dot", "abs", "square") if everything else ("square",)):
        out.append(Case(f"dcl {sim}", fwd_bwd(lambda a, b, s=sim: dk.dcl_loss(a, b, 0.1, s, backend="triton"), bf16)))
    out += [
        Case("infonce", fwd_bwd(lambda a, b: dk.infonce_loss(a, b, backend="triton"), bf16)),
        Case("vicreg_exp", fwd_bwd(lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton"), bf16)),
        Case("vicreg_ctr", fwd_bwd(lambda a, b: dk.vicreg_ctr_loss(a, b, backend="triton"), bf16)),
        Case("ntxent fp16", fwd_bwd(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), fp16)),
        Case("ntxent 40x3", fwd_bwd(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), bf16, (40, 3))),
        Case("ntxent 40x1030", fwd_bwd(lambda a, b: dk.ntxent_loss(a, b, backend="triton"), bf16, (40, 1030))),
        Case("ntxent gathered", fwd_bwd(
            lambda a, b: gathered.pair_terms_triton(_TwoRanks(a, b), a, b, 0.1, "dot", "l2", False).mean(), bf16)),
        Case("infonce gathered", fwd_bwd(
            lambda a, b: gathered.infonce_terms_triton(_TwoRanks(a, b), a, b, 0.1).mean(), bf16)),
        Case("clip", fwd_bwd(lambda a, b: dk.clip_loss(a, b, 14.3, backend="triton"), bf16)),
        Case("siglip 40x512", fwd_bwd(lambda a, b: dk.siglip_loss(a, b, 10.0, -10.0, backend="triton"), bf16,
                                      (40, 512))),
    ]
    # fp32 under both precisions: IEEE dots, and TF32 with the operands rounded (round_tf32)
    fp32_losses = [("ntxent", lambda a, b: dk.ntxent_loss(a, b, backend="triton")),
                   ("ntxent square dim_std", lambda a, b: dk.ntxent_loss(a, b, 0.1, "square", "dim_std",
                                                                         backend="triton")),
                   ("infonce", lambda a, b: dk.infonce_loss(a, b, backend="triton")),
                   ("vicreg_exp", lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton")),
                   ("vicreg_ctr", lambda a, b: dk.vicreg_ctr_loss(a, b, backend="triton")),
                   ("clip", lambda a, b: dk.clip_loss(a, b, 14.3, backend="triton"))]
    out += [Case(f"{name} fp32 {p}", fwd_bwd(fn, fp32), p) for name, fn in fp32_losses for p in ("highest", "high")]
    return out


def _all_gram_ops(z1, z2):
    """Every Gram-family function on both sides: a sum that backward() differentiates."""
    outs = []
    for side in ("sample", "dimension"):
        outs += [dk.vicreg_loss(z1, z2, side=side, backend="triton"),
                 dk.barlow_twins_loss(z1, z2, side=side, backend="triton"),
                 dk.spectral_contrastive_loss(z1, z2, side=side, backend="triton"),
                 *dk.duality_terms(z1, side=side, backend="triton")]
    outs += [dk.covariance(z1, backend="triton").sum(), dk.cross_correlation(z1, z2, backend="triton").sum(),
             dk.normalized_gram(z1, backend="triton").sum(), dk.normalized_gram(z1, z2, backend="triton").sum()]
    return sum(o.float() for o in outs)


def gram_scenarios(everything: bool) -> List[Case]:
    """The Gram family through the public functions: both sides, every primitive, bf16 and fp16
    (and float64, which the GPU runs with its own tiles), fp32 under both precisions."""
    bf16, fp16, fp32, fp64 = torch.bfloat16, torch.float16, torch.float32, torch.float64

    # fp16 adds the power-of-two scaled operands to every op; N·D > 2^20 with few column stripes
    # takes the chunked (stats, merge, apply) column passes and BatchNorm backward
    big = (1200, 1000)
    runs = [Case("gram ops bf16", fwd_bwd(_all_gram_ops, bf16, (40, 70))),
            Case("gram ops fp16", fwd_bwd(_all_gram_ops, fp16, (40, 70))),
            Case("gram ops fp64", fwd_bwd(_all_gram_ops, fp64, (40, 70))),
            Case("gram ops bf16 1200x1000", fwd_bwd(_all_gram_ops, bf16, big)),
            Case("gathered ops bf16", fwd_bwd(_gathered_ops, bf16, (40, 70))),
            Case("gathered ops fp16", fwd_bwd(_gathered_ops, fp16, (40, 70))),
            Case("gathered ops fp64", fwd_bwd(_gathered_ops, fp64, (40, 70))),
            Case("gathered ops fp32", fwd_bwd(_gathered_ops, fp32, (40, 70)), "highest")]
    runs += [Case(f"gram ops fp32 {p}{' ' + 'x'.join(map(str, s)) if s != (40, 70) else ''}",
                  fwd_bwd(_all_gram_ops, fp32, s), p)
             for p in ("highest", "high") for s in ((40, 70), big)]
    if everything:
        runs += [Case("gram ops bf16 300x1030", fwd_bwd(_all_gram_ops, bf16, (300, 1030)))]
    return runs


def spectral_scenarios() -> List[Case]:
    """The spectral functions on Triton (ops/triton/spectral.py): the loss-from-factors kernel of
    coding_rate_loss and of MCR² (class batches), and the singular-value kernel with RankMe."""
    labels = torch.arange(40) % 3  # values: the class sizes are read on the host
    fp32, bf16 = torch.float32, torch.bfloat16
    return [Case("coding_rate bf16", fwd_bwd(lambda a, b: dk.coding_rate_loss(a, backend="triton"), bf16, (40, 70))),
            Case("mcr2 fp32", fwd_bwd(lambda a, b: dk.mcr2_loss(a, labels, backend="triton"), fp32, (40, 70))),
            Case("rankme fp32", fwd_bwd(lambda a, b: dk.rankme(a, backend="triton"), fp32, (40, 70)))]


# --------------------------------------------------------------------------------------------
# CLI


def _compile_or_report(job):
    launch, arch = job
    try:
        t = time.time()
        compiled = compile_launch(launch, arch)
        return True, f"{time.time() - t:5.1f}s {describe(launch)} smem={compiled.metadata.shared}"
    except Exception:
        return False, f"{describe(launch)}\n{traceback.format_exc()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every loss mode, not one launch per kernel feature")
    ap.add_argument("--arch", type=int, default=DEFAULT_ARCH, help="compute capability, e.g. 90 (default)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    variants = record(lse_scenarios(args.all) + gram_scenarios(args.all) + spectral_scenarios(), args.arch)
    print(f"{len(variants)} kernel variants to compile for {target(args.arch)}, {args.jobs} processes")
    t0 = time.time()
    failures = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for ok, report in pool.map(_compile_or_report, [(v.launch, args.arch) for v in variants.values()]):
            failures += not ok
            print(("ok   " if ok else "FAIL ") + report, flush=True)
    print(f"{len(variants) - failures}/{len(variants)} compiled in {time.time() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
