#!/usr/bin/env python
"""Sweep batch size N x embedding dimension D for one loss over every provider on this machine.

    python benchmarks/sweep.py                                   # VICReg, default grid (bf16 on a GPU, fp32 on CPU)
    python benchmarks/sweep.py --loss ntxent --dtype bfloat16 --N 2048 16384 --D 256
    python benchmarks/sweep.py --loss vicreg --shapes 2048x8192 16384x2048 --dtype bfloat16
    python benchmarks/sweep.py --summarize benchmarks/results/sweep.csv    # print a CSV's rows
    python benchmarks/sweep.py --replot benchmarks/results/sweep.csv       # heatmap of its last run

Providers (those that cannot run here are skipped with a note):
  eager    the official formula (duality_kernels/testing/official.py) in plain eager PyTorch: the baseline
  compile  torch.compile of the eager formula (default on CUDA; on CPU only when asked for)
  torch / triton / cuda   duality_kernels with backend=... (triton and cuda on CUDA only)
  lightly  lightly.loss (VICReg, Barlow Twins, NT-Xent, DCL) when importable
  infcl    inf-cl's cal_inf_loss for InfoNCE on CUDA (D a multiple of 256; rows pre-normalized)

For every grid point and provider: one checked call (loss value, and gradients unless --mode fwd,
compared with eager's; the check column flags a relative difference above the dtype's tolerance),
one call measuring peak extra memory (on CPU in fwdbwd mode the checked call itself), then the
timed calls (do_bench on CUDA, perf_counter on CPU; a CPU call slower than --single-shot-s is
timed by its checked call alone, reps=1). Rows go to the CSV as each grid point finishes; the table is printed at the end (also on
Ctrl-C / SIGTERM, e.g. under `timeout`). benchmarks/results/README.md describes the columns.

Exit status: 0; 3 when one of our providers (torch/triton/cuda) disagreed with eager or failed
with an error other than "unavailable" or out-of-memory; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (HERE, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import _bench as B  # noqa: E402

OURS = ("torch", "triton", "cuda")
ALL_PROVIDERS = ("eager", "compile", "torch", "triton", "cuda", "lightly", "infcl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}

DEFAULT_GRID = {
    # CPU: the whole default run stays under 3 minutes on 2 cores; N=256, D=8192 is the shape
    # where computing the covariance term on the N x N side (SPEC §2) matters most.
    "cpu": ([64, 256, 1024], [64, 512, 8192]),
    "cuda": ([256, 1024, 2048, 4096, 16384], [256, 1024, 2048, 8192]),
}


# --------------------------------------------------------------------------------------------
# Losses: official formula, our function, third-party equivalents, cost model
# --------------------------------------------------------------------------------------------

@dataclass
class LossSpec:
    official: str            # function name in duality_kernels/testing/official.py (SPEC defaults)
    ours: str                # function name in duality_kernels
    family: str              # "cov": native D x D, "gram": native N x N (or 2N x 2N)
    # fwd+bwd flops of the eager formula as a function of (N, D): ~3x the forward GEMM flops.
    eager_flops: Callable[[int, int], float]
    # fwd+bwd flops when the sum of squares goes on the cheaper side (None: no duality shortcut).
    dual_flops: Callable[[int, int], float] | None = None
    lightly: Callable[[], object] | None = None
    extra: dict = field(default_factory=dict)


def _lightly(name, **kw):
    def make():
        import lightly.loss as L

        return getattr(L, name)(**kw)
    return make


LOSSES = {
    "vicreg": LossSpec(
        "vicreg_official", "vicreg_loss", "cov",
        eager_flops=lambda n, d: 12.0 * n * d * d,
        dual_flops=lambda n, d: 12.0 * n * d * min(n, d),
        lightly=_lightly("VICRegLoss", lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4),
    ),
    "vicreg_exp": LossSpec("vicreg_exp_official", "vicreg_exp_loss", "cov",
                           eager_flops=lambda n, d: 12.0 * n * d * d),
    "vicreg_ctr": LossSpec("vicreg_ctr_official", "vicreg_ctr_loss", "gram",
                           eager_flops=lambda n, d: 12.0 * n * n * d),
    "barlow": LossSpec(
        "barlow_twins_official", "barlow_twins_loss", "cov",
        eager_flops=lambda n, d: 6.0 * n * d * d,
        dual_flops=lambda n, d: 12.0 * n * d * min(n, d) if n < d else 6.0 * n * d * d,
        lightly=_lightly("BarlowTwinsLoss", lambda_param=0.0051),
    ),
    "ntxent": LossSpec("ntxent_official", "ntxent_loss", "gram",
                       eager_flops=lambda n, d: 24.0 * n * n * d,
                       lightly=_lightly("NTXentLoss", temperature=0.1)),
    "dcl": LossSpec("dcl_official", "dcl_loss", "gram",
                    eager_flops=lambda n, d: 24.0 * n * n * d,
                    lightly=_lightly("DCLLoss", temperature=0.1)),
    "infonce": LossSpec("infonce_official", "infonce_loss", "gram",
                        eager_flops=lambda n, d: 6.0 * n * n * d, extra={"temperature": 0.1}),
    "spectral": LossSpec(
        "spectral_official", "spectral_contrastive_loss", "gram",
        eager_flops=lambda n, d: 6.0 * n * n * d,
        dual_flops=lambda n, d: 12.0 * n * d * min(n, d),
    ),
}


def est_seconds(flops: float, device: torch.device, dtype: torch.dtype, precision: str) -> float:
    """Rough time of fwd+bwd from flops at an optimistic sustained rate (for skipping only)."""
    if device.type == "cuda":   # H200-class: measured ceilings in ENVIRONMENT.md, de-rated
        rate = {torch.float64: 3e13, torch.bfloat16: 4e14, torch.float16: 4e14}.get(
            dtype, 3e13 if precision == "highest" else 2e14)
    else:
        # The 2-core dev machine: 50-90 GFLOP/s fp32 GEMM, but the eager covariance formulas spend
        # most of their time in passes over D x D temporaries: VICReg N=256 D=8192 fwd+bwd took
        # 10-25 s (2026-11-29, other jobs running), i.e. ~2e10 "flop/s" in this model.
        rate = {torch.float64: 1e10, torch.bfloat16: 5e9, torch.float16: 2.5e9}.get(dtype, 2e10)
    return flops / rate


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------

class Unavailable(Exception):
    """This provider does not apply here (not installed, wrong device, shape limits)."""


class Skipped(Exception):
    """This provider would take unreasonably long here (see --max-est-s)."""


_compiled: dict = {}


def _official():
    from duality_kernels.testing import official

    return official


def make_provider(name: str, loss: str, device: torch.device, N: int, D: int) -> Callable:
    """Return f(z1, z2) -> loss tensor, or raise Unavailable."""
    spec = LOSSES[loss]
    if name == "eager":
        return getattr(_official(), spec.official)
    if name == "compile":
        if loss not in _compiled:
            import torch._dynamo as dynamo

            for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                         "accumulated_recompile_limit"):
                if hasattr(dynamo.config, knob):
                    setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 256))
            # One static graph per shape: the best compile can do, as a user with fixed shapes gets.
            _compiled[loss] = torch.compile(getattr(_official(), spec.official), dynamic=False)
        return _compiled[loss]
    if name in OURS:
        if name != "torch" and device.type != "cuda":
            raise Unavailable(f"backend={name!r} needs a CUDA device")
        import duality_kernels as dk

        fn = getattr(dk, spec.ours, None)
        if fn is None:
            raise Unavailable(f"duality_kernels has no {spec.ours}")
        return lambda z1, z2: fn(z1, z2, backend=name)
    if name == "lightly":
        if spec.lightly is None:
            raise Unavailable(f"lightly has no {loss} loss")
        try:
            module = spec.lightly()
        except ImportError as e:
            raise Unavailable(f"lightly not importable ({e})") from None
        return module
    if name == "infcl":
        if loss != "infonce":
            raise Unavailable("inf-cl computes InfoNCE only")
        if device.type != "cuda":
            raise Unavailable("inf-cl needs a CUDA device")
        if D % 256:
            raise Unavailable(f"inf-cl needs D a multiple of 256 (head_dim), got D={D}")
        try:
            from inf_cl import cal_inf_loss
        except Exception as e:  # noqa: BLE001 - any import failure means "not here"
            raise Unavailable(f"inf_cl not importable ({type(e).__name__}: {e})") from None
        inv_t = 1.0 / spec.extra["temperature"]
        F = torch.nn.functional

        def infcl(z1, z2):
            # CLIP form (SPEC §4): both directions, rows L2-normalized first (inf-cl expects it),
            # the 1/temperature scale folded into the query exactly as cal_inf_loss(scale=) does.
            q, k = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
            return 0.5 * (cal_inf_loss(q * inv_t, k) + cal_inf_loss(k * inv_t, q))
        return infcl
    raise ValueError(f"unknown provider {name!r}")


def provider_flops(name: str, loss: str, N: int, D: int) -> float:
    spec = LOSSES[loss]
    if name in OURS and spec.dual_flops is not None:
        return spec.dual_flops(N, D)
    return spec.eager_flops(N, D)


def tolerance(dtype: torch.dtype, precision: str) -> float:
    """Relative difference from eager above which the check column says FLAG."""
    if dtype == torch.float64:
        return 1e-6
    if dtype == torch.float32:
        return 1e-3 if precision == "highest" else 1e-2
    if dtype == torch.float16:
        return 2e-2
    return 5e-2  # bfloat16: 8 mantissa bits; eager itself rounds intermediates to bf16


def classify_error(e: BaseException) -> tuple[str, str]:
    """(kind, message): kind is "oom", "unavailable", "skipped" or "error"."""
    msg = f"{type(e).__name__}: {e}".replace("\n", " ").strip()
    if len(msg) > 300:
        msg = msg[:297] + "..."
    oom_types = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None),
                                  getattr(torch, "OutOfMemoryError", None)) if t)
    if isinstance(e, oom_types) or "out of memory" in str(e).lower() or isinstance(e, MemoryError):
        return "oom", "OOM: " + msg
    if isinstance(e, Skipped):
        return "skipped", f"skipped: {e}"
    if isinstance(e, (Unavailable, NotImplementedError)) or type(e).__name__ == "BackendUnavailableError":
        return "unavailable", "unavailable: " + (str(e) if isinstance(e, Unavailable) else msg)
    return "error", msg


# --------------------------------------------------------------------------------------------
# One grid point
# --------------------------------------------------------------------------------------------

def make_inputs(N, D, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed + 1000003 * N + D)
    a = torch.randn(N, D, generator=g, dtype=torch.float32)
    b = 0.8 * a + 0.6 * torch.randn(N, D, generator=g, dtype=torch.float32)  # correlated views
    z1 = a.to(device=device, dtype=dtype).requires_grad_(True)
    z2 = b.to(device=device, dtype=dtype).requires_grad_(True)
    return z1, z2


def rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    den = ref.abs().max().item()
    return (x - ref).abs().max().item() / max(den, 1e-30)


def free_device_memory(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_point(args, loss, N, D, dtype, device, providers, base_row, notes, on_task_done):
    """Benchmark every provider at one (N, D). Returns the CSV rows (dicts)."""
    rows = []
    z1, z2 = make_inputs(N, D, dtype, device, args.seed)
    ref = None            # (loss value, grad z1, grad z2) from eager
    eager_median = None
    tol = tolerance(dtype, args.precision)

    for prov in providers:
        row = dict(base_row, N=N, D=D, provider=prov, timestamp=B.utc_now())
        try:
            fn = make_provider(prov, loss, device, N, D)
            est = est_seconds(provider_flops(prov, loss, N, D), device, dtype, args.precision)
            if args.max_est_s > 0 and est > args.max_est_s:
                raise Skipped(f"estimated {est:.1f} s per fwd+bwd call > --max-est-s {args.max_est_s:g}")

            # 1) checked call (also the first warm-up; compiles what needs compiling). On CPU in
            #    fwdbwd mode it is exactly the timed call plus the comparison afterwards, so it
            #    also measures peak memory (the profiler's cost is per op, small against a call).
            cpu_fused = (device.type == "cpu" and args.mode == "fwdbwd" and not args.no_memory
                         and prov != "compile")  # compile's first call includes compiling
            holder = {}

            def checked():
                B.synchronize(device)
                t0 = time.perf_counter()
                out = fn(z1, z2)
                grads = torch.autograd.grad(out, (z1, z2)) if args.mode != "fwd" else None
                B.synchronize(device)
                holder["ms"] = (time.perf_counter() - t0) * 1e3
                holder["val"], holder["grads"] = out.detach().double(), grads

            if cpu_fused:
                row["peak_extra_mb"] = B.peak_extra_mb_cpu(checked)
            else:
                checked()
            check_ms, val, grads = holder.pop("ms"), holder.pop("val"), holder.pop("grads")
            row["loss_value"] = val.item()
            if prov == "eager":
                ref = (val, grads)
                row["check"] = "ref"
            elif ref is None:
                row["check"] = "n/a"
            else:
                lr = rel_diff(val, ref[0])
                row["loss_rel_diff"] = lr
                worst = lr
                if grads is not None and ref[1] is not None:
                    gr = max(rel_diff(grads[0], ref[1][0]), rel_diff(grads[1], ref[1][1]))
                    row["grad_rel_diff"] = gr
                    worst = max(worst, gr)
                row["check"] = "ok" if worst <= tol else "FLAG"
            del grads

            # 2) the timed callable for the mode
            if args.mode == "fwd":
                def call():
                    return fn(z1, z2)
            elif args.mode == "fwdbwd":
                def call():
                    return torch.autograd.grad(fn(z1, z2), (z1, z2))
            else:  # bwd: one forward kept alive, backward through it repeatedly
                kept = fn(z1, z2)

                def call():
                    return torch.autograd.grad(kept, (z1, z2), retain_graph=True)

            # 3) peak extra memory of one call; its time (a warm call) plans the timing
            call_ms = check_ms
            if not cpu_fused:
                t0 = time.perf_counter()
                if args.no_memory:
                    call_ms = B.time_once_ms(call, device)
                    row["peak_extra_mb"] = float("nan")
                else:
                    row["peak_extra_mb"] = B.peak_extra_mb(call, device)
                    call_ms = (time.perf_counter() - t0) * 1e3

            # 4) timing
            if device.type == "cuda":
                # do_bench takes times, not counts: at least ~5 timed calls (100 ms for fast
                # ones, capped at 3 s), or --reps / --warmup calls' worth of time.
                rep_ms = (args.reps * call_ms if args.reps
                          else min(max(100.0, 5 * call_ms), max(3000.0, call_ms)))
                warm_ms = (max(1.0, args.warmup * call_ms) if args.warmup is not None
                           else min(max(25.0, call_ms), 1000.0))
                p20, p50, p80, n = B.bench_cuda(call, warm_ms, rep_ms, grad_to_none=(z1, z2))
            elif args.reps is None and call_ms >= 1e3 * args.single_shot_s:
                # A multi-second CPU call: the warm call above is the one sample (reps=1 in the
                # CSV); more calls would blow the run's budget for little gain in precision.
                p20 = p50 = p80 = call_ms
                n = 1
            else:
                reps = args.reps or B.auto_cpu_reps(call_ms)
                warm = args.warmup if args.warmup is not None else (1 if call_ms < 1000 else 0)
                p20, p50, p80, n = B.bench_cpu(call, warm, reps)
            row.update(p20_ms=p20, median_ms=p50, p80_ms=p80, reps=n)
            if args.profile:
                row["_profile"] = profile_point(call, device, args.profile_steps)
            if prov == "eager":
                eager_median = p50
            if args.mode == "bwd":
                del kept
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - one provider's failure must not stop the sweep
            kind, msg = classify_error(e)
            row["error"] = msg
            row.setdefault("check", "")
            if kind == "error" and args.verbose:
                traceback.print_exc()
            if kind in ("unavailable", "skipped"):
                notes.setdefault((prov, msg), []).append((N, D))
            e = None  # drop the traceback's frames (and the tensors they hold) before freeing
            free_device_memory(device)
        rows.append(row)
        on_task_done(prov)

    for r in rows:
        m = r.get("median_ms")
        if eager_median and m and not r.get("error"):
            r["speedup_vs_eager"] = eager_median / m
    del z1, z2, ref
    free_device_memory(device)
    return rows


# --------------------------------------------------------------------------------------------
# --profile: where one step's time goes
# --------------------------------------------------------------------------------------------

PROFILE_COLUMNS = [
    "run_id", "timestamp", "git_sha", "device", "torch", "triton", "loss", "N", "D", "dtype",
    "precision", "provider", "mode", "steps", "host_ms", "loop_ms", "launches_per_step",
    "gpu_us_per_step", "ops_per_step", "name", "calls_per_step", "us_per_step", "time_kind",
]


def _us(avg, attr):
    """A FunctionEventAvg time total in µs (``*_device_*`` names since torch 2.4, ``*_cuda_*`` before)."""
    v = getattr(avg, attr, None)
    if v is None:
        v = getattr(avg, attr.replace("device", "cuda"), 0.0)
    return float(v)


def profile_point(call, device, steps: int) -> dict:
    """One step's profile. ``host_ms``: wall time per step of a loop of max(10, steps) calls with
    no synchronization inside (timer stopped before the final synchronize: what the host spends
    issuing a step); ``loop_ms``: the same loop including the final synchronize. Then ``steps``
    calls under torch.profiler (synchronized after each): on CUDA every GPU activity (kernels,
    memcpy, memset) by name with its device time per step, and the launches per step; on CPU
    every ``aten::`` operator by name with its self CPU time and calls per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    loop = max(10, steps)
    B.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(loop):
        out = call()
    t1 = time.perf_counter()
    B.synchronize(device)
    t2 = time.perf_counter()
    del out
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=acts)
    with B._quiet_fd2():
        prof.start()
    try:
        for _ in range(steps):
            out = call()
            del out
            B.synchronize(device)
    finally:
        with B._quiet_fd2():
            prof.stop()
    items = []
    for avg in prof.key_averages():
        if cuda and avg.device_type == DeviceType.CUDA:
            items.append((avg.key, avg.count / steps, _us(avg, "self_device_time_total") / steps))
        elif not cuda and avg.key.startswith("aten::"):
            items.append((avg.key, avg.count / steps, float(avg.self_cpu_time_total) / steps))
    items.sort(key=lambda t: -t[2])
    calls = sum(c for _, c, _ in items)
    return {
        "steps": steps, "host_ms": (t1 - t0) * 1e3 / loop, "loop_ms": (t2 - t0) * 1e3 / loop,
        "launches_per_step": calls if cuda else None, "ops_per_step": None if cuda else calls,
        "gpu_us_per_step": sum(us for _, _, us in items) if cuda else None,
        "time_kind": "device" if cuda else "self_cpu", "items": items,
    }


def profile_rows(rows) -> list:
    """The companion CSV's rows: one per (grid point, provider, kernel or operator)."""
    out = []
    keep = ("run_id", "timestamp", "git_sha", "device", "torch", "triton", "loss", "N", "D", "dtype",
            "precision", "provider", "mode")
    for r in rows:
        prof = r.get("_profile")
        if not prof:
            continue
        step = {k: prof[k] for k in ("steps", "host_ms", "loop_ms", "launches_per_step", "gpu_us_per_step",
                                    "ops_per_step", "time_kind")}
        for name, calls, us in prof["items"]:
            out.append({**{k: r.get(k) for k in keep}, **step, "name": name, "calls_per_step": calls,
                        "us_per_step": us})
    return out


def print_profile(rows, top: int = 4, file=sys.stdout):
    profiled = [r for r in rows if r.get("_profile")]
    if not profiled:
        return
    cuda = profiled[0]["_profile"]["time_kind"] == "device"
    print("\nprofile per step (" + ("GPU kernel time from torch.profiler" if cuda else
          "CPU: aten operators, self CPU time") + "; host = loop without synchronization):", file=file)
    headers = ["N", "D", "provider", "host ms", "loop ms", "launches" if cuda else "aten ops",
               "GPU us" if cuda else "CPU us", f"top {top} (us per step, calls)"]
    body = []
    for r in profiled:
        p = r["_profile"]
        tops = ", ".join(f"{n.replace('aten::', '')[:40]} {us:.0f} ({c:g})" for n, c, us in p["items"][:top])
        body.append([r["N"], r["D"], r["provider"], f"{p['host_ms']:.3f}", f"{p['loop_ms']:.3f}",
                     f"{p['launches_per_step'] if cuda else p['ops_per_step']:g}",
                     f"{p['gpu_us_per_step'] if cuda else sum(us for _, _, us in p['items']):.0f}", tops])
    print(B.format_table(headers, body, align="rrlrrrrl"), file=file)


# --------------------------------------------------------------------------------------------
# Output: table, summary, heatmap
# --------------------------------------------------------------------------------------------

def _f(v, fmt):
    if v in (None, ""):
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(v):
        return "n/a"
    return format(v, fmt)


def print_table(rows, notes=None, file=sys.stdout):
    headers = ["N", "D", "dtype", "prec", "mode", "provider", "median ms", "p20-p80 ms",
               "peak MB", "speedup", "loss rel", "grad rel", "check", "note"]
    body = []
    for r in rows:
        err = r.get("error") or ""
        if err.startswith(("unavailable", "skipped")) and notes is not None:
            continue  # listed once below instead of once per grid point
        body.append([
            r["N"], r["D"], r["dtype"], r["precision"], r["mode"], r["provider"],
            _f(r.get("median_ms"), ".3f"),
            "-" if r.get("p20_ms") in (None, "") else f"{_f(r['p20_ms'], '.3f')}-{_f(r['p80_ms'], '.3f')}",
            _f(r.get("peak_extra_mb"), ".1f"), _f(r.get("speedup_vs_eager"), ".2f"),
            _f(r.get("loss_rel_diff"), ".1e"), _f(r.get("grad_rel_diff"), ".1e"),
            r.get("check") or "-", (err[:70] + "...") if len(err) > 73 else err,
        ])
    print(B.format_table(headers, body, align="rrllllrrrrrrll"), file=file)
    if notes:
        print("\nnot run:", file=file)
        for (prov, msg), pts in notes.items():
            where = f"{len(pts)} grid point(s)" if len(pts) > 1 else f"N={pts[0][0]} D={pts[0][1]}"
            print(f"  {prov:8s} {msg}  [{where}]", file=file)


def plot_heatmap(csv_path, run_id, out_png):
    """Speedup of our best provider over eager on the N x D grid, from the CSV rows of one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    rows = [r for r in B.read_csv(csv_path) if r.get("run_id") == run_id]
    if not rows:
        return None, "no rows for this run"
    Ns = sorted({int(r["N"]) for r in rows})
    Ds = sorted({int(r["D"]) for r in rows})
    eager, best = {}, {}
    for r in rows:
        if r.get("error") or not r.get("median_ms"):
            continue
        key, ms = (int(r["N"]), int(r["D"])), float(r["median_ms"])
        if r["provider"] == "eager":
            eager[key] = ms
        elif r["provider"] in OURS and (key not in best or ms < best[key][0]):
            best[key] = (ms, r["provider"])
    if not best:
        return None, "no successful rows of our providers"
    grid = [[float("nan")] * len(Ds) for _ in Ns]
    labels = [[""] * len(Ds) for _ in Ns]
    for i, n in enumerate(Ns):
        for j, d in enumerate(Ds):
            if (n, d) in best and (n, d) in eager:
                s = eager[(n, d)] / best[(n, d)][0]
                grid[i][j] = math.log2(s)
                labels[i][j] = f"{s:.2f}x\n{best[(n, d)][1]}"
            elif (n, d) in best:
                labels[i][j] = f"{best[(n, d)][1]}\n{best[(n, d)][0]:.3g} ms\n(no eager)"
            else:
                labels[i][j] = "n/a"
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)] or [1.0]
    lim = max(1.0, max(finite))
    fig, ax = plt.subplots(figsize=(1.6 * len(Ds) + 2.5, 1.0 * len(Ns) + 2.0))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#dddddd")
    import numpy as np

    im = ax.imshow(np.ma.masked_invalid(np.array(grid, dtype=float)), cmap=cmap,
                   norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim), aspect="auto",
                   origin="lower")
    for i in range(len(Ns)):
        for j in range(len(Ds)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(Ds)), [str(d) for d in Ds])
    ax.set_yticks(range(len(Ns)), [str(n) for n in Ns])
    ax.set_xlabel("D (embedding dimension)")
    ax.set_ylabel("N (batch size)")
    r0 = rows[0]
    ax.set_title(f"{r0['loss']} {r0['mode']}: eager / best of ours  ({r0['dtype']}, "
                 f"{r0['precision']})\n{r0['device']}, torch {r0['torch']}, {r0['git_sha']}",
                 fontsize=9)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("log2 speedup (green: ours faster)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png, None


def default_png(loss, device_label, dtype_name, precision, mode):
    suffix = ""
    if dtype_name != "float32" or precision != "highest":
        suffix += f"_{dtype_name}" + ("_tf32" if dtype_name == "float32" and precision != "highest" else "")
    if mode != "fwdbwd":
        suffix += f"_{mode}"
    return os.path.join(HERE, "results", f"{loss}_{B.slug(device_label)}{suffix}_speedup.png")


def summarize(csv_path):
    rows = B.read_csv(csv_path)
    latest = {}
    for r in rows:  # the last row wins for each configuration
        key = (r["device"], r["loss"], r["N"], r["D"], r["dtype"], r["precision"], r["mode"],
               r["provider"])
        latest[key] = r
    hidden = [r for r in latest.values() if (r.get("error") or "").startswith(("unavailable", "skipped"))]
    out = sorted((r for r in latest.values() if r not in hidden), key=lambda r: (r["device"], r["loss"], r["dtype"],
                                                 r["precision"], r["mode"], int(r["N"]),
                                                 int(r["D"]), ALL_PROVIDERS.index(r["provider"])
                                                 if r["provider"] in ALL_PROVIDERS else 99))
    print(f"{csv_path}: {len(rows)} rows, latest per configuration:")
    headers = ["loss", "N", "D", "dtype", "prec", "mode", "provider", "median ms", "peak MB",
               "speedup", "check", "error"]
    body = [[r["loss"], r["N"], r["D"], r["dtype"], r["precision"], r["mode"], r["provider"],
             _f(r.get("median_ms"), ".3f"), _f(r.get("peak_extra_mb"), ".1f"),
             _f(r.get("speedup_vs_eager"), ".2f"), r.get("check") or "-",
             (r.get("error") or "")[:60]] for r in out]
    print(B.format_table(headers, body, align="lrrllllrrrll"))
    if hidden:
        print(f"({len(hidden)} unavailable/skipped row(s) not shown: "
              + ", ".join(sorted({r['provider'] for r in hidden})) + ")")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

class _NoBar:
    """Stands in for tqdm when it is not installed."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def write(self, msg, *args, **kwargs):
        print(msg, flush=True)

    def close(self):
        pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", default="vicreg", choices=sorted(LOSSES))
    p.add_argument("--N", type=int, nargs="+", help="batch sizes (default: per device)")
    p.add_argument("--D", type=int, nargs="+", help="embedding dimensions (default: per device)")
    p.add_argument("--shapes", nargs="+", metavar="NxD",
                   help="explicit (N, D) points instead of the --N x --D grid, e.g. 2048x8192")
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="default: bfloat16 on a GPU (the dtype SSL training runs in), float32 on CPU")
    p.add_argument("--precision", default="highest", choices=["highest", "high"],
                   help="torch.set_float32_matmul_precision for every provider (default highest)")
    p.add_argument("--providers", nargs="+", choices=ALL_PROVIDERS,
                   help="subset to run (eager is always added: it is the reference); default: "
                        "all that apply on CUDA, eager and torch on CPU")
    p.add_argument("--mode", default="fwdbwd", choices=["fwd", "bwd", "fwdbwd"])
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions (CPU default: as many as fit ~1.5 s, 3..15, or the checked "
                        "call alone when it took over --single-shot-s; CUDA default: do_bench "
                        "over max(100 ms, 5 calls))")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before timing (default CPU: 1, or 0 for calls over 1 s; "
                        "CUDA: do_bench warm-up of max(25 ms, 1 call))")
    p.add_argument("--max-est-s", type=float, default=None,
                   help="skip a provider whose estimated fwd+bwd call exceeds this many seconds "
                        "(default 30 on CPU, 2 on CUDA; 0 = never skip)")
    p.add_argument("--single-shot-s", type=float, default=2.0,
                   help="CPU, --reps not given: a provider whose warm call (the checked call, or for "
                        "compile and modes fwd/bwd the memory call) took longer than this is "
                        "timed by that call alone (reps=1)")
    p.add_argument("--csv", default=os.path.join(HERE, "results", "sweep.csv"),
                   help="CSV file the rows are appended to")
    p.add_argument("--plot", default=None, help="heatmap PNG path (default: benchmarks/results/"
                   "<loss>_<device>_speedup.png, suffixed with dtype/mode when not fp32/fwdbwd)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for CPU runs (default: torch's; 1 gives steadier "
                        "numbers when other jobs share the cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print tracebacks of provider errors")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step per grid point and provider: per-kernel GPU time "
                        "(torch.profiler), launches per step, host time of a loop without "
                        "synchronization (on CPU: aten operator counts and host time); printed "
                        "after the table and appended to --profile-csv")
    p.add_argument("--profile-steps", type=int, default=5, help="steps averaged by --profile (default 5)")
    p.add_argument("--profile-csv", default=os.path.join(HERE, "results", "sweep_profile.csv"),
                   help="companion CSV of --profile (one row per kernel or operator)")
    p.add_argument("--summarize", metavar="CSV", help="print the latest row per configuration of a CSV and exit")
    p.add_argument("--replot", metavar="CSV", help="heatmap of the last run of --loss in a CSV, then exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return 0
    if args.replot:
        rows = [r for r in B.read_csv(args.replot) if r["loss"] == args.loss]
        if not rows:
            print(f"no {args.loss} rows in {args.replot}")
            return 1
        r = rows[-1]
        png = args.plot or default_png(args.loss, r["device"], r["dtype"], r["precision"], r["mode"])
        path, why = plot_heatmap(args.replot, r["run_id"], png)
        print(f"heatmap: {path}" if path else f"no heatmap: {why}")
        return 0

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.dtype is None:
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.precision)
    if args.max_est_s is None:
        args.max_est_s = 2.0 if device.type == "cuda" else 30.0

    if args.shapes:
        try:
            points = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
            assert all(len(pt) == 2 for pt in points)
        except (ValueError, AssertionError):
            print(f"--shapes wants NxD items, got {args.shapes}", file=sys.stderr)
            return 2
    else:
        Ns = args.N or DEFAULT_GRID[device.type][0]
        Ds = args.D or DEFAULT_GRID[device.type][1]
        points = [(n, d) for n in Ns for d in Ds]

    if args.providers:
        providers = [p for p in ALL_PROVIDERS if p in set(args.providers) | {"eager"}]
    elif device.type == "cuda":
        providers = list(ALL_PROVIDERS)
    else:
        # CPU: compile (a slow compile per shape) and lightly (VICReg N=256 D=8192 fwd+bwd took
        # 34 s here) only when asked for, to keep the default run under 3 minutes.
        providers = ["eager", "torch"]
    # Providers that cannot apply to this loss/device at all are dropped up front with a note.
    notes = {}
    spec = LOSSES[args.loss]
    keep = []
    for p in providers:
        why = None
        if p in ("triton", "cuda") and device.type != "cuda":
            why = f"backend={p!r} needs a CUDA device"
        elif p == "lightly":
            if spec.lightly is None:
                why = f"lightly has no {args.loss} loss"
            else:
                try:
                    import lightly.loss  # noqa: F401
                except Exception as e:  # noqa: BLE001
                    why = f"lightly not importable ({type(e).__name__})"
        elif p == "infcl" and (args.loss != "infonce" or device.type != "cuda"):
            why = "inf-cl: InfoNCE on CUDA only"
        if why is None:
            keep.append(p)
        elif args.providers and p in args.providers:
            notes.setdefault((p, "unavailable: " + why), []).append(points[0])
    providers = keep

    info = B.env_info(device)
    run_id = B.new_run_id()
    base_row = dict(run_id=run_id, loss=args.loss, dtype=args.dtype, precision=args.precision,
                    mode=args.mode, **info)
    print(f"sweep {args.loss} {args.mode} {args.dtype} precision={args.precision} on {info['device']} "
          f"({device.type}, {info['cpu_threads']} threads) torch {info['torch']} triton {info['triton']} "
          f"git {info['git_sha']}\nproviders: {', '.join(providers)}; {len(points)} grid point(s); "
          f"csv: {args.csv}", flush=True)

    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > 0.5 * cores:
            print(f"note: load average {load:.1f} on {cores} cores: other jobs share the CPU, so "
                  "CPU timings will be noisy (--threads 1 steadies them)", flush=True)

    # SIGTERM (e.g. from `timeout`) behaves like Ctrl-C: finish with the table of what was done.
    def _term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _term)

    try:
        from tqdm import tqdm
    except ImportError:  # the "bench" extra's progress bar is optional
        tqdm = _NoBar

    tty = sys.stderr.isatty()
    bar = tqdm(total=len(points) * len(providers), desc=args.loss, unit="run", disable=not tty,
               dynamic_ncols=True)
    all_rows = []
    status = 0
    t_start = time.perf_counter()
    try:
        for i, (N, D) in enumerate(points):
            t0 = time.perf_counter()

            def done(prov, N=N, D=D):
                bar.set_postfix_str(f"N={N} D={D} {prov}")
                bar.update(1)
            bar.set_postfix_str(f"N={N} D={D}")
            rows = run_point(args, args.loss, N, D, dtype, device, providers, base_row, notes, done)
            B.append_csv(args.csv, rows)
            if args.profile:
                B.append_csv(args.profile_csv, profile_rows(rows), PROFILE_COLUMNS)
            all_rows.extend(rows)
            if not tty:
                print(f"[{i + 1}/{len(points)}] N={N} D={D}: {time.perf_counter() - t0:.1f} s",
                      flush=True)
    except KeyboardInterrupt:
        status = 130
        print("\ninterrupted: the table below holds the finished grid points", file=sys.stderr)
    finally:
        bar.close()

    print()
    print_table(all_rows, notes)
    print_profile(all_rows)
    elapsed = time.perf_counter() - t_start
    print(f"\n{len(all_rows)} row(s) appended to {args.csv} in {elapsed:.1f} s")
    bad = [r for r in all_rows if r["provider"] in OURS and (
        r.get("check") == "FLAG" or (r.get("error") and not r["error"].startswith(("unavailable", "skipped", "OOM"))))]
    flagged = [r for r in all_rows if r.get("check") == "FLAG"]
    if flagged:
        tol = tolerance(dtype, args.precision)
        print(f"FLAG: {len(flagged)} row(s) differ from eager by more than {tol:g} (relative): "
              + ", ".join(sorted({r['provider'] for r in flagged})))
    if bad and status == 0:
        status = 3

    if not args.no_plot and all_rows:
        try:
            png = args.plot or default_png(args.loss, info["device"], args.dtype, args.precision, args.mode)
            path, why = plot_heatmap(args.csv, run_id, png)
            print(f"heatmap: {path}" if path else f"no heatmap: {why}")
        except Exception as e:  # noqa: BLE001 - a plotting problem must not lose the numbers
            print(f"no heatmap: {type(e).__name__}: {e}")
    return status


if __name__ == "__main__":
    sys.exit(main())
