#!/usr/bin/env python
"""What the compilers say about every kernel the headline benchmarks launch, without a GPU.

    python benchmarks/kernel_report.py                   # table: every variant, then one line per kernel
    python benchmarks/kernel_report.py --json            # the same as one JSON object on stdout
    python benchmarks/kernel_report.py --summary         # only the per-kernel lines
    python benchmarks/kernel_report.py --cases ntxent:16384x256 --dtypes bf16 fp32-high --no-csrc
    python benchmarks/kernel_report.py --arch 100        # another target (Triton's ptxas-blackwell)

Triton: every case (a loss at N x D in a dtype setting, forward + backward) runs through the public
function on meta tensors with a stand-in GPU driver; each launch is recorded at the point where
Triton's JIT would compile it, with the JIT's own specialization (duality_kernels/testing/triton_aot.py, shared
with the compile check), then compiled ahead of time for sm_<arch>. Autotuned kernels contribute
every config their autotuner would benchmark (column ``config``). Per variant:

- registers per thread, stack frame and spill bytes (stores + loads): from ptxas -v, run by
  Triton's own backend with Triton's own flags (the log of its compile, or the same ptxas command
  rerun on the cached PTX);
- shared memory per block: Triton's dynamic allocation plus the cubin's static shared memory
  (cuobjdump --dump-resource-usage);
- ``wgmma.mma_async``, ``mma.sync`` and ``tcgen05.mma`` instructions in the PTX, and the kernel's
  ``tt.dot`` operations from the TTIR (``dots``): ``tc_dots`` counts those typed for tensor cores
  (bf16/fp16 operands, or fp32 with a TF32 input precision), the others being IEEE fp32 or fp64
  dots; ``tc_expected`` marks a variant with dots that a bf16, fp16 or fp32-"high" case launches,
  whose dots should therefore run on tensor cores whatever dtype reached them; ``tc_ops`` counts
  the instructions that do so on the target (GPUS[arch]["tc_ops"]: wgmma on sm_90, mma.sync on
  sm_8x and sm_120, tcgen05.mma or mma.sync on sm_100);
- shared memory per block against the target's limit (``smem_limit``, ``smem_ok``) and the
  occupancy bound (below) with the resource that sets it.

The launch tables follow the target: the stand-in driver's arch selects the family's tables
(duality_kernels/ops/triton/_common.py ``ARCH_OVERRIDE``), as the device's capability does at run time.

csrc: ``nvcc -cubin -arch=sm_<arch> -Xptxas -v`` over csrc/kernels/*.cu with setup.py's nvcc flags
(-O3 -lineinfo) and torch's common nvcc flags; CUDA_HOME as setup.py finds it (its own
``_find_cuda_home``: CUDA_HOME/CUDA_PATH, else the ``TOP=`` line of ``nvcc --dryrun``). Block
sizes for the occupancy come from each kernel's ``__launch_bounds__`` (``.maxntid`` in the PTX).

Occupancy model (CUDA occupancy calculator rules, per compute capability in ``GPUS``: SM count of
one GPU, 65536 registers per SM allocated per warp in units of 256, shared memory per SM of which
every block also holds 1 KiB reserved by the runtime, the per-block limit, threads and blocks per
SM). ``occupancy_blocks`` = resident blocks per SM, ``occupancy_warps`` = resident warps per SM;
``limiter`` names the resource(s) that set the bound (registers, shared, threads, blocks).

Speed: results are cached per compiled kernel (its Triton hash; csrc: a hash of the sources,
flags and nvcc) in <TRITON_CACHE_DIR>/duality_kernels_report/, so with a warm cache the whole
default report (--json included) takes about 3 s on the 2-core development machine; a cold cache
compiles every variant (~240: 40 s there when idle, 2-3 minutes when other jobs load it; --jobs
processes); ``--json`` is fast when warm.

JSON (``--json``): {"arch", "triton", "torch", "git_sha", "gpu_model", "cases": [names],
"variants": [...], "csrc_error": null or why the csrc part is missing}. Each variant: kernel,
source ("triton"/"csrc"), file, constexprs, num_warps, num_stages, config, registers,
stack_bytes, spill_stores, spill_loads, spill_bytes, shared_bytes, smem_limit, smem_ok, wgmma,
mma_sync, tcgen05, tc_ops, dots, tc_dots, tc_expected, occupancy_blocks, occupancy_warps, limiter,
cases, hash; and "summary": the per-architecture totals of the Triton variants (``summary()``).

Run WITHOUT TRITON_INTERPRET=1. Exit status 0 (the report states problems, it does not judge them;
tests/test_kernel_report.py does); 1 when a variant failed to compile.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (HERE, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

from duality_kernels.testing import triton_aot as aot  # noqa: E402  (exits under TRITON_INTERPRET=1)

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402

import _bench as B  # noqa: E402
import duality_kernels as dk  # noqa: E402

CACHE_VERSION = 2  # bump when what is cached per kernel changes

# Per compute capability: the CUDA occupancy calculator's constants and one GPU's SM count (the
# programming guide's per-capability limits; per-block shared memory as CUTLASS's cutlass/arch/arch.h
# records it: 163 KB on sm_80, 99 KB on sm_86/89/120, 227 KB on sm_90/100). ``tc_ops``: the PTX
# tensor-core instructions that count for the architecture (Triton emits wgmma on sm_90, mma.sync
# on sm_8x and sm_120, tcgen05.mma on sm_100).
_COMMON = {"regs_per_sm": 65536, "reg_alloc_unit": 256, "max_regs_per_thread": 255, "smem_reserved_per_block": 1024,
           "smem_alloc_unit": 128, "warp_size": 32}
GPUS = {
    80: {"name": "A100 (sm_80)", "sms": 108, "smem_per_sm": 167936, "max_smem_per_block": 166912,
         "threads_per_sm": 2048, "blocks_per_sm": 32, "tc_ops": ("mma_sync",)},
    86: {"name": "RTX A6000 (sm_86)", "sms": 84, "smem_per_sm": 102400, "max_smem_per_block": 101376,
         "threads_per_sm": 1536, "blocks_per_sm": 16, "tc_ops": ("mma_sync",)},
    89: {"name": "L40S (sm_89)", "sms": 142, "smem_per_sm": 102400, "max_smem_per_block": 101376,
         "threads_per_sm": 1536, "blocks_per_sm": 24, "tc_ops": ("mma_sync",)},
    90: {"name": "H200 (sm_90)", "sms": 132, "smem_per_sm": 233472, "max_smem_per_block": 232448,
         "threads_per_sm": 2048, "blocks_per_sm": 32, "tc_ops": ("wgmma",)},
    100: {"name": "B200 (sm_100)", "sms": 148, "smem_per_sm": 233472, "max_smem_per_block": 232448,
          "threads_per_sm": 2048, "blocks_per_sm": 32, "tc_ops": ("tcgen05", "mma_sync")},
    120: {"name": "RTX 5090 (sm_120)", "sms": 170, "smem_per_sm": 102400, "max_smem_per_block": 101376,
          "threads_per_sm": 1536, "blocks_per_sm": 32, "tc_ops": ("mma_sync",)},
}
for _g in GPUS.values():
    _g.update(_COMMON)
GPU = GPUS[90]


def gpu_model(arch: int) -> dict:
    """The occupancy constants of sm_<arch> (the nearest listed capability of its major version)."""
    if arch in GPUS:
        return GPUS[arch]
    same = [a for a in GPUS if a // 10 == arch // 10 and a <= arch]
    if not same:
        raise ValueError(f"--arch {arch}: no occupancy model (known: {sorted(GPUS)})")
    return GPUS[max(same)]


# dtype settings: (input dtype, torch.set_float32_matmul_precision)
SETTINGS = {
    "bf16": (torch.bfloat16, "highest"),
    "fp16": (torch.float16, "highest"),
    "fp32-highest": (torch.float32, "highest"),
    "fp32-high": (torch.float32, "high"),
    "fp64": (torch.float64, "highest"),
}


def _primitive_sum(*outs):
    return sum(o.float().sum() for o in outs)


LOSSES: Dict[str, Callable] = {
    "vicreg": lambda a, b: dk.vicreg_loss(a, b, backend="triton"),
    "barlow": lambda a, b: dk.barlow_twins_loss(a, b, backend="triton"),
    "spectral": lambda a, b: dk.spectral_contrastive_loss(a, b, backend="triton"),
    "ntxent": lambda a, b: dk.ntxent_loss(a, b, backend="triton"),
    "dcl": lambda a, b: dk.dcl_loss(a, b, backend="triton"),
    "infonce": lambda a, b: dk.infonce_loss(a, b, backend="triton"),
    "vicreg_exp": lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton"),
    "vicreg_ctr": lambda a, b: dk.vicreg_ctr_loss(a, b, backend="triton"),
    "covariance": lambda a, b: _primitive_sum(dk.covariance(a, backend="triton")),
    "cross_correlation": lambda a, b: _primitive_sum(dk.cross_correlation(a, b, backend="triton")),
    "normalized_gram": lambda a, b: _primitive_sum(dk.normalized_gram(a, backend="triton"),
                                                   dk.normalized_gram(a, b, backend="triton")),
    "duality_terms": lambda a, b: _primitive_sum(*dk.duality_terms(a, backend="triton")),
    # gather_distributed=True (ops/gathered.py) as rank 1 of 2 (duality_kernels/testing/triton_aot.py's stand-in
    # collectives): the local moments and clamped-rows ops and their backward epilogues
    # wave 3 (docs/spec.md §7); SupCon's B x 2 views from the (B, D) pair, 100 classes; MoCo's queue of 65536
    "supcon": lambda a, b: dk.supcon_loss(torch.stack([a, b], 1), _labels(a, 100), backend="triton"),
    "moco": lambda a, b: dk.moco_loss(a, b, torch.empty(65536, a.shape[1], device=a.device, dtype=a.dtype),
                                      backend="triton"),
    "hard_negative": lambda a, b: dk.hard_negative_ntxent_loss(a, b, backend="triton"),
    "clip": lambda a, b: dk.clip_loss(a, b, 14.3, backend="triton"),
    "siglip": lambda a, b: dk.siglip_loss(a, b, 10.0, -10.0, backend="triton"),
    # the spectral functions (ops/triton/spectral.py): their kernels read the factors' diagonals or
    # the eigenvalues; MCR² with 10 classes (its labels on the host: the class sizes are read there)
    "coding_rate": lambda a, b: dk.coding_rate_loss(a, backend="triton"),
    "mcr2": lambda a, b: dk.mcr2_loss(a, torch.arange(a.shape[0]) % 10, backend="triton"),
    "rankme": lambda a, b: dk.rankme(a, backend="triton"),
    "vicreg_gathered": lambda a, b: _gathered("vicreg", a, b),
    "barlow_gathered": lambda a, b: _gathered("barlow", a, b),
    "spectral_gathered": lambda a, b: _gathered("spectral", a, b),
}


def _labels(a, classes: int):
    return torch.arange(a.shape[0], device=a.device) % classes


def _gathered(loss: str, a, b):
    from duality_kernels.ops import gathered
    from duality_kernels.ops.triton import gram

    ctx = aot._TwoRanksAny()
    if loss == "vicreg":  # both strategies: moments with the Grams, and without (the invariance)
        return sum(gathered.vicreg(gram, ctx, s, a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "dimension")[0]
                   for s in ("allreduce", "gather"))
    if loss == "barlow":
        return gathered.barlow_twins(gram, ctx, "allreduce", a, b, 0.0051, 1e-5, "dimension")[0]
    return sum(gathered.spectral(gram, ctx, a, b, 1.0, side)[0] for side in ("dimension", "sample"))

# The headline benchmark shapes (docs/measurements.md), and the primitives at one of them.
HEADLINE = [
    ("vicreg", 2048, 8192), ("vicreg", 2048, 256), ("vicreg", 16384, 2048),
    ("barlow", 2048, 8192), ("spectral", 16384, 256),
    ("ntxent", 2048, 256), ("ntxent", 16384, 256), ("ntxent", 65536, 256),
    ("dcl", 16384, 256), ("infonce", 32768, 256),
    ("vicreg_exp", 2048, 1024), ("vicreg_ctr", 4096, 1024),
    ("covariance", 2048, 8192), ("cross_correlation", 2048, 8192),
    ("normalized_gram", 2048, 8192), ("duality_terms", 2048, 8192),
    # the wave-3 losses at their target shapes
    ("supcon", 8192, 128), ("moco", 256, 128), ("hard_negative", 16384, 256),
    ("clip", 65536, 512), ("clip", 4096, 512), ("siglip", 65536, 512), ("siglip", 4096, 512),
    ("coding_rate", 100, 1024), ("mcr2", 1000, 128), ("rankme", 25600, 2048),
    # per-rank shapes of the gathered forms (the strategy the cost model picks at W = 8)
    ("vicreg_gathered", 2048, 8192), ("barlow_gathered", 2048, 8192), ("spectral_gathered", 16384, 256),
]


# Settings whose dots are meant for tensor cores (docs/design.md convention 4 and 15)
TENSOR_CORE_SETTINGS = ("bf16", "fp16", "fp32-high")


def case_name(loss: str, n: int, d: int, setting: str) -> str:
    return f"{loss} {n}x{d} {setting}"


def case_setting(name: str) -> str:
    return name.rsplit(" ", 1)[-1]


def make_cases(shapes, settings) -> List[aot.Case]:
    cases = []
    for loss, n, d in shapes:
        for s in settings:
            dtype, precision = SETTINGS[s]
            cases.append(aot.Case(case_name(loss, n, d, s), aot.fwd_bwd(LOSSES[loss], dtype, (n, d)), precision))
    return cases


# --------------------------------------------------------------------------------------------
# Occupancy


def occupancy(regs: int, shared: int, threads: Optional[int], gpu=GPU) -> dict:
    """Resident blocks and warps per SM and the limiting resource(s), CUDA occupancy calculator
    rules: registers per warp rounded up to the allocation unit, shared memory per block plus the
    runtime's reserved KiB rounded up to its unit."""
    if not threads:
        return {"occupancy_blocks": None, "occupancy_warps": None, "limiter": "unknown block size"}
    warps = -(-threads // gpu["warp_size"])
    limits = {"threads": gpu["threads_per_sm"] // gpu["warp_size"] // warps, "blocks": gpu["blocks_per_sm"]}
    if regs:
        per_warp = -(-regs * gpu["warp_size"] // gpu["reg_alloc_unit"]) * gpu["reg_alloc_unit"]
        limits["registers"] = (gpu["regs_per_sm"] // per_warp) // warps
    per_block = shared + gpu["smem_reserved_per_block"]
    per_block = -(-per_block // gpu["smem_alloc_unit"]) * gpu["smem_alloc_unit"]
    limits["shared"] = gpu["smem_per_sm"] // per_block if shared <= gpu["max_smem_per_block"] else 0
    blocks = min(limits.values())
    limiter = "+".join(k for k in ("registers", "shared", "threads", "blocks") if limits.get(k) == blocks)
    return {"occupancy_blocks": blocks, "occupancy_warps": blocks * warps, "limiter": limiter}


# --------------------------------------------------------------------------------------------
# Compiler output parsing


_PTXAS_FUNC = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> Dict[str, dict]:
    """{entry function: {registers, stack_bytes, spill_stores, spill_loads, static_smem}} from a
    ptxas -v log (the "Function properties" of non-entry functions are skipped)."""
    out: Dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        m = _PTXAS_FUNC.search(line)
        if m:
            current = out.setdefault(m.group(1), {"registers": 0, "stack_bytes": 0, "spill_stores": 0,
                                                   "spill_loads": 0, "static_smem": 0})
            continue
        if "Function properties for" in line and current is not None:
            name = line.split("Function properties for", 1)[1].strip()
            if name not in out:
                current = None  # a device function's properties, not an entry's
            continue
        if current is None:
            continue
        m = _PTXAS_STACK.search(line)
        if m:
            current["stack_bytes"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _PTXAS_USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            current["static_smem"] = int(m.group(2) or 0)
    return out


_DOT = re.compile(r"tt\.dot [^:]*?(?:inputPrecision = (\w+))?\s*: tensor<([0-9x]+)x(\w+)> \* tensor<([0-9x]+)x\w+>")


def parse_dots(ttir: str) -> List[dict]:
    """The kernel's tt.dot operations: operand type, input precision, M x K x N, and whether they
    are meant for tensor cores (bf16/fp16, or fp32 with a TF32-family precision)."""
    dots = []
    for m in _DOT.finditer(ttir):
        prec, a_shape, elt, b_shape = m.group(1) or "ieee", m.group(2), m.group(3), m.group(4)
        mm, kk = a_shape.split("x")[-2:]
        nn = b_shape.split("x")[-1]
        tc = elt in ("bf16", "f16") or (elt == "f32" and prec != "ieee")
        dots.append({"operands": elt, "precision": prec if elt == "f32" else "-", "mkn": f"{mm}x{kk}x{nn}", "tc": tc})
    return dots


def count_mma(ptx: str) -> dict:
    return {"wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
            "tcgen05": ptx.count("tcgen05.mma")}


def _cuobjdump_static_smem(cubin: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"SHARED:(\d+)", out)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------------------------
# Per-variant analysis (runs in worker processes), cached by the compiled kernel's hash


def cache_dir() -> str:
    return os.path.join(os.environ["TRITON_CACHE_DIR"], "duality_kernels_report")


def _cache_path(key: str) -> str:
    return os.path.join(cache_dir(), f"v{CACHE_VERSION}-{key}.json")


def _cache_get(key: str) -> Optional[dict]:
    try:
        with open(_cache_path(key)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _cache_put(key: str, value: dict) -> None:
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = _cache_path(key) + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, _cache_path(key))


def _ptxas_log(compiled, launch: aot.Launch, arch: int) -> str:
    """The ptxas -v log of this kernel: Triton's backend reruns its own ptxas command on the PTX."""
    from triton.compiler import make_backend

    backend = make_backend(aot.target(arch))
    opt = backend.parse_options(launch.options)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        backend.make_cubin(compiled.asm["ptx"], {}, opt, arch)
    return buf.getvalue()


def analyze(job) -> dict:
    """Compile one launch (Triton's cache first) and return its facts, or {"error": ...}."""
    launch, arch = job
    knobs.nvidia.dump_ptxas_log = True  # a real compile then prints its ptxas -v log
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            compiled = aot.compile_launch(launch, arch)
        key = f"sm{arch}-{compiled.metadata.hash}"
        facts = _cache_get(key)
        if facts is not None and "tcgen05" not in facts:  # cached before tcgen05 was counted
            facts["tcgen05"] = count_mma(compiled.asm["ptx"])["tcgen05"]
            _cache_put(key, facts)
        if facts is None:
            log = buf.getvalue()
            if "Compiling entry function" not in log:  # Triton's cache had it: rerun its ptxas
                log = _ptxas_log(compiled, launch, arch)
            (res,) = parse_ptxas(log).values()
            ptx = compiled.asm["ptx"]
            facts = {
                "hash": compiled.metadata.hash,
                "registers": res["registers"], "stack_bytes": res["stack_bytes"],
                "spill_stores": res["spill_stores"], "spill_loads": res["spill_loads"],
                "shared_bytes": int(compiled.metadata.shared) + _cuobjdump_static_smem(compiled.asm["cubin"]),
                **count_mma(ptx),
                "dots": parse_dots(compiled.asm["ttir"]),
            }
            _cache_put(key, facts)
        return facts
    except Exception as e:  # reported per variant; the others still compile
        return {"error": f"{type(e).__name__}: {e}"}


def _short(v) -> str:
    if isinstance(v, triton.language.dtype):
        return str(v).replace("triton.language.", "").replace("float", "fp").replace("bfp", "bf")
    if isinstance(v, bool):
        return str(int(v))
    return str(v).strip("'")


def triton_variants(cases: List[aot.Case], arch: int, jobs: int) -> List[dict]:
    recorded = list(aot.record(cases, arch).values())
    jobs_list = [(v.launch, arch) for v in recorded]
    if jobs > 1 and len(jobs_list) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            facts = list(pool.map(analyze, jobs_list, chunksize=4))
    else:
        facts = [analyze(j) for j in jobs_list]
    rows = []
    for v, f in zip(recorded, facts):
        launch = v.launch
        constexprs = {k: _short(x) for k, x in launch.constexpr_values().items()}
        row = {
            "kernel": launch.name, "source": "triton", "file": launch.module.replace(".", "/") + ".py",
            "constexprs": constexprs, "num_warps": launch.options.get("num_warps"),
            "num_stages": launch.options.get("num_stages"), "config": launch.config, "cases": v.cases,
        }
        if "error" in f:
            row.update(error=f["error"], spill_bytes=None)
        else:
            row.update(f)
            row["spill_bytes"] = f["spill_stores"] + f["spill_loads"]
            row["tc_dots"] = sum(d["tc"] for d in f["dots"])
            # A dot launched for a bf16/fp16/TF32 call must run on tensor cores whatever dtype
            # the launcher handed it (an operand upcast to fp32 IEEE is a finding, not an excuse).
            row["tc_expected"] = bool(f["dots"]) and any(case_setting(c) in TENSOR_CORE_SETTINGS for c in v.cases)
            _limits(row, arch)
        rows.append(row)
    return rows


def _limits(row: dict, arch: int) -> None:
    """Adds the architecture's checks to a variant: shared memory against the per-block limit,
    the tensor-core instructions that count there (``tc_ops``) and the occupancy bound."""
    gpu = gpu_model(arch)
    row["smem_limit"] = gpu["max_smem_per_block"]
    row["smem_ok"] = row["shared_bytes"] <= gpu["max_smem_per_block"]
    row["tc_ops"] = sum(row.get(k, 0) for k in gpu["tc_ops"])
    threads = row["num_warps"] * gpu["warp_size"] if row["num_warps"] else None
    row.update(occupancy(row["registers"], row["shared_bytes"], threads, gpu))


# --------------------------------------------------------------------------------------------
# csrc


def _setup_helpers() -> dict:
    """setup.py's own helper functions (its imports, constants and defs; not its setup() call),
    so the toolkit is found exactly as the build finds it."""
    path = os.path.join(ROOT, "setup.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))
            or (isinstance(n, ast.Assign) and not isinstance(n.value, ast.Call))]
    ns = {"__file__": path, "__name__": "duality_kernels_setup_helpers"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    return ns


def _demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=60).stdout
    return dict(zip(names, out.splitlines())) if out else {n: n for n in names}


def _split_kernel_name(pretty: str):
    """('name', 'template args') of a demangled 'void ns::(anonymous namespace)::k<T>(args)'."""
    depth, cut = 0, len(pretty)
    for i in range(len(pretty) - 1, -1, -1):  # the parameter list: the last top-level (...)
        c = pretty[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                cut = i
                break
    head = pretty[:cut]
    head = head[5:] if head.startswith("void ") else head
    head = head.replace("(anonymous namespace)::", "")
    depth, start = 0, 0
    for i, c in enumerate(head):
        depth += c == "<"
        depth -= c == ">"
        if depth == 0 and head.startswith("::", i):
            start = i + 2
    name = head[start:]
    if "<" in name:
        base, tmpl = name.split("<", 1)
        return base, tmpl[:-1]
    return name, ""


def _ptx_entries(ptx: str) -> Dict[str, dict]:
    """{entry: {threads (from .maxntid, else None), wgmma, mma_sync}} of a PTX module."""
    out = {}
    parts = re.split(r"^[ \t]*(?:\.(?:visible|weak)\s+)*\.entry\s+", ptx, flags=re.MULTILINE)
    for part in parts[1:]:
        name = re.match(r"([\w$.]+)", part).group(1)
        header = part.split("{", 1)[0]
        m = re.search(r"\.maxntid\s+(\d+)(?:,\s*(\d+))?(?:,\s*(\d+))?", header)
        threads = math.prod(int(x) for x in m.groups() if x) if m else None
        body = re.split(r"^[ \t]*(?:\.(?:visible|weak|extern)\s+)*\.func\s+", part, maxsplit=1, flags=re.MULTILINE)[0]
        out[name] = {"threads": threads, **count_mma(body)}
    return out


class ToolkitMissing(RuntimeError):
    """No CUDA toolkit here (nothing to report for csrc, as opposed to a failed compile)."""


def csrc_variants(arch: int) -> List[dict]:
    """One row per kernel instantiation in csrc/kernels/*.cu (raises ToolkitMissing with setup.py's
    reason when nvcc or the toolkit is missing)."""
    helpers = _setup_helpers()
    home, why = helpers["_find_cuda_home"]()
    if home is None:
        raise ToolkitMissing(why)
    os.environ.setdefault("CUDA_HOME", home)  # torch.utils.cpp_extension reads it on import
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime": known
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    nvcc = os.path.join(home, "bin", "nvcc")
    flags = [f"-arch=sm_{arch}", "-O3", "-lineinfo", "-std=c++17", *COMMON_NVCC_FLAGS,
             f"-I{os.path.join(ROOT, 'csrc')}", "-Xptxas", "-v"]
    kdir = os.path.join(ROOT, "csrc", "kernels")
    sources = sorted(f for f in os.listdir(kdir) if f.endswith(".cu"))
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256(("\0".join(flags) + version).encode())
    for f in sorted(os.listdir(kdir)):  # every file there: the .cu files include the headers
        with open(os.path.join(kdir, f), "rb") as fh:
            h.update(f.encode() + b"\0" + fh.read())
    key = f"csrc-sm{arch}-{h.hexdigest()[:32]}"
    rows = _cache_get(key)
    if rows is not None:
        return rows
    rows = []
    for src in sources:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([nvcc, "-cubin", *flags, "--keep", "--keep-dir", tmp,
                                   os.path.join(kdir, src), "-o", os.path.join(tmp, "out.cubin")],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"nvcc failed on {src}:\n{proc.stderr[-3000:]}")
            ptx = "".join(open(os.path.join(tmp, p)).read() for p in os.listdir(tmp) if p.endswith(".ptx"))
        resources = parse_ptxas(proc.stdout + proc.stderr)
        entries = _ptx_entries(ptx)
        pretty = _demangle(list(resources))
        for mangled, res in resources.items():
            name, tmpl = _split_kernel_name(pretty[mangled])
            ent = entries.get(mangled, {"threads": None, "wgmma": 0, "mma_sync": 0, "tcgen05": 0})
            threads = ent["threads"]
            row = {
                "kernel": name, "source": "csrc", "file": f"csrc/kernels/{src}",
                "constexprs": {"template": tmpl} if tmpl else {},
                "num_warps": -(-threads // 32) if threads else None, "num_stages": None, "config": None,
                "cases": [], "hash": mangled,
                "registers": res["registers"], "stack_bytes": res["stack_bytes"],
                "spill_stores": res["spill_stores"], "spill_loads": res["spill_loads"],
                "spill_bytes": res["spill_stores"] + res["spill_loads"],
                "shared_bytes": res["static_smem"], "wgmma": ent["wgmma"], "mma_sync": ent["mma_sync"],
                "tcgen05": ent["tcgen05"], "dots": [], "tc_dots": 0, "tc_expected": False,
            }
            _limits(row, arch)
            rows.append(row)
    _cache_put(key, rows)
    return rows


# --------------------------------------------------------------------------------------------
# Output


def _cases_label(cases: List[str]) -> str:
    if not cases:
        return "-"
    if len(cases) == 1:
        return cases[0]
    return f"{cases[0]} (+{len(cases) - 1})"


def _constexpr_label(row: dict) -> str:
    parts = [f"{k}={v}" for k, v in row["constexprs"].items()]
    if row.get("config"):
        parts.append(f"[{row['config']}]")
    return " ".join(parts)


def print_table(rows: List[dict], summary_only: bool, arch: int = aot.DEFAULT_ARCH, file=sys.stdout) -> None:
    gpu = gpu_model(arch)
    limit_kb = gpu["max_smem_per_block"] / 1024
    if not summary_only:
        headers = ["kernel", "src", "warps", "stages", "regs", "spill B", "stack B", "smem KB/limit", "wgmma",
                   "mma", "tcgen05", "dots tc/all", "blocks/SM", "warps/SM", "limiter", "cases", "constexprs"]
        body = []
        for r in rows:
            if r.get("error"):
                body.append([r["kernel"], r["source"], r["num_warps"], r["num_stages"] or "-", "ERROR",
                             "", "", "", "", "", "", "", "", "", r["error"][:60], _cases_label(r["cases"]),
                             _constexpr_label(r)])
                continue
            over = "" if r["smem_ok"] else " OVER"
            body.append([r["kernel"], r["source"], r["num_warps"] or "-", r["num_stages"] or "-", r["registers"],
                         r["spill_bytes"], r["stack_bytes"], f"{r['shared_bytes'] / 1024:.1f}/{limit_kb:.0f}{over}",
                         r["wgmma"], r["mma_sync"], r.get("tcgen05", 0), f"{r['tc_dots']}/{len(r['dots'])}",
                         r["occupancy_blocks"] if r["occupancy_blocks"] is not None else "?",
                         r["occupancy_warps"] if r["occupancy_warps"] is not None else "?",
                         r["limiter"], _cases_label(r["cases"]), _constexpr_label(r)])
        print(B.format_table(headers, body, align="lllrrrrrrrrrrrlll"), file=file)
        print(file=file)
    ops = "/".join(gpu["tc_ops"]).replace("_", ".")
    print(f"Per kernel (worst variant; shared memory per block vs the {limit_kb:.0f} KB limit; tensor-core "
          f"instructions: {ops}; occupancy bound on an {gpu['name']}, {gpu['sms']} SMs):", file=file)
    headers = ["kernel", "src", "variants", "max regs", "max spill B", "spilling", "max smem KB", "over limit",
               "tc variants", "tc instr in tc", "min warps/SM", "limiter"]
    body = []
    for (kernel, src), rs in _by_kernel(rows).items():
        ok = [r for r in rs if not r.get("error")]
        tc = [r for r in ok if r["tc_expected"]]
        worst_occ = min(ok, key=lambda r: r["occupancy_warps"] or 0, default=None)
        body.append([
            kernel, src, len(rs), max((r["registers"] for r in ok), default="-"),
            max((r["spill_bytes"] for r in ok), default="-"), sum(r["spill_bytes"] > 0 for r in ok),
            f"{max((r['shared_bytes'] for r in ok), default=0) / 1024:.1f}", sum(not r["smem_ok"] for r in ok),
            len(tc), (f"{sum(r['tc_ops'] > 0 for r in tc)}/{len(tc)}" if tc else "-"),
            worst_occ["occupancy_warps"] if worst_occ else "-", worst_occ["limiter"] if worst_occ else "-",
        ])
    print(B.format_table(headers, body, align="llrrrrrrrrrl"), file=file)


def summary(report: dict) -> dict:
    """The per-architecture totals over the Triton variants: variants, max registers, spilling
    variants, max shared memory per block against the limit, tensor-core coverage."""
    rows = [r for r in report["variants"] if r["source"] == "triton" and not r.get("error")]
    tc = [r for r in rows if r["tc_expected"]]
    return {
        "arch": report["arch"], "variants": sum(r["source"] == "triton" for r in report["variants"]),
        "errors": sum(bool(r.get("error")) for r in report["variants"] if r["source"] == "triton"),
        "max_registers": max((r["registers"] for r in rows), default=0),
        "spilling": sum(r["spill_bytes"] > 0 for r in rows),
        "max_shared_bytes": max((r["shared_bytes"] for r in rows), default=0),
        "smem_limit": report["gpu_model"]["max_smem_per_block"], "over_smem": sum(not r["smem_ok"] for r in rows),
        "tc_variants": len(tc), "tc_covered": sum(r["tc_ops"] > 0 for r in tc),
    }


def _by_kernel(rows):
    out: Dict[tuple, list] = {}
    for r in rows:
        out.setdefault((r["kernel"], r["source"]), []).append(r)
    return out


def build_report(shapes, settings, arch: int, jobs: int, with_csrc: bool) -> dict:
    cases = make_cases(shapes, settings)
    rows = triton_variants(cases, arch, jobs)
    csrc_error = None
    if with_csrc:
        try:
            rows += csrc_variants(arch)
        except Exception as e:  # the Triton part stands on its own
            csrc_error = f"{type(e).__name__}: {e}"
    report = {
        "arch": arch, "triton": triton.__version__, "torch": torch.__version__, "git_sha": B.git_sha(),
        "gpu_model": gpu_model(arch), "cases": [c.name for c in cases], "variants": rows, "csrc_error": csrc_error,
    }
    report["summary"] = summary(report)
    return report


def _parse_case(text: str):
    loss, _, shape = text.partition(":")
    if loss not in LOSSES or "x" not in shape:
        raise argparse.ArgumentTypeError(f"--cases wants LOSS:NxD with LOSS in {sorted(LOSSES)}, got {text!r}")
    n, d = (int(v) for v in shape.lower().split("x"))
    return loss, n, d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", type=_parse_case, metavar="LOSS:NxD",
                    help="instead of the headline shapes, e.g. vicreg:2048x8192 ntxent:16384x256")
    ap.add_argument("--dtypes", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                    help="dtype settings (default: all; fp32-high = fp32 under TF32)")
    ap.add_argument("--arch", type=int, default=aot.DEFAULT_ARCH, help="compute capability (default 90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    ap.add_argument("--no-csrc", action="store_true", help="skip the csrc (nvcc) part")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    ap.add_argument("--summary", action="store_true", help="only the per-kernel table")
    args = ap.parse_args(argv)
    t0 = time.time()
    report = build_report(args.cases or HEADLINE, args.dtypes, args.arch, args.jobs, not args.no_csrc)
    if args.json:
        json.dump(report, sys.stdout, indent=1, default=str)
        print()
    else:
        print(f"kernel report for sm_{report['arch']}: triton {report['triton']}, torch {report['torch']}, "
              f"git {report['git_sha']}; {len(report['cases'])} cases, {len(report['variants'])} variants "
              f"({time.time() - t0:.0f} s)\n")
        print_table(report["variants"], args.summary, report["arch"])
        t = report["summary"]
        print(f"\nsm_{t['arch']} Triton: {t['variants']} variants, {t['errors']} errors, max {t['max_registers']} "
              f"registers, {t['spilling']} spilling, max shared memory {t['max_shared_bytes']} B of "
              f"{t['smem_limit']} B per block ({t['over_smem']} over), tensor-core instructions in "
              f"{t['tc_covered']}/{t['tc_variants']} tensor-core variants")
        if report["csrc_error"]:
            print(f"\ncsrc part missing: {report['csrc_error']}")
    return 1 if any(r.get("error") for r in report["variants"]) else 0


if __name__ == "__main__":
    sys.exit(main())
