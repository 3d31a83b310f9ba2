"""Shared benchmark utilities: timing, peak-memory measurement, environment facts, CSV, tables.

Used by ``benchmarks/sweep.py``. Scripts, not tests (docs/design.md convention 12). Kept free of
``duality_kernels`` imports so it works before the package does.

Timing
  * CUDA: ``triton.testing.do_bench`` with ``quantiles=[0.2, 0.5, 0.8]`` (only keyword arguments
    present in both triton 3.6 and 3.8 are used: warmup, rep, grad_to_none, quantiles).
  * CPU: ``time.perf_counter`` around each call, after untimed warm-up calls; p20/p50/p80 use
    linear interpolation (the same rule as ``torch.quantile``, which do_bench uses).

Peak extra memory (MB = 1e6 bytes) of one call, over what was allocated just before it
  * CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated() - memory_allocated()``
    measured around one synchronized call (caching-allocator bytes handed to tensors).
  * CPU: torch keeps no CPU allocator statistics, so the call runs once under
    ``torch.profiler.profile(profile_memory=True)``: c10's CPU allocator reports every allocation
    (+bytes) and free (-bytes) to the profiler; the running sum of those events in time order,
    starting at 0, peaks at the value reported. Checked on known cases (see ``selfcheck_cpu_memory``):
    ``x @ x.T`` of a 1000x1000 fp32 reports 4.0 MB. Memory that does not go through torch's
    allocator (oneDNN/MKL private scratch, Python objects) is not seen.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import math
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence

import torch

MB = 1e6
QUANTILES = (0.2, 0.5, 0.8)

# Columns of the CSV, in order. benchmarks/results/README.md explains each one.
CSV_COLUMNS = [
    "run_id",
    "timestamp",
    "git_sha",
    "device",
    "cpu_threads",
    "torch",
    "triton",
    "python",
    "loss",
    "N",
    "D",
    "dtype",
    "precision",
    "provider",
    "mode",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "peak_extra_mb",
    "speedup_vs_eager",
    "loss_value",
    "loss_rel_diff",
    "grad_rel_diff",
    "check",
    "reps",
    "error",
]


# --------------------------------------------------------------------------------------------
# Environment facts
# --------------------------------------------------------------------------------------------

def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_sha(root: str | None = None) -> str:
    """Short HEAD sha, with "-dirty" when the tree differs from HEAD (modified, staged or
    untracked-not-ignored files).

    ``DK_GIT_SHA`` in the environment wins (the GPU machine gets a copy of the working tree that
    may lack ``.git``: the caller can pass the sha along). "unknown" when neither is available.
    """
    env = os.environ.get("DK_GIT_SHA")
    if env:
        return env
    root = root or repo_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "n/a"


def env_info(device: torch.device) -> dict:
    return {
        "git_sha": git_sha(),
        "device": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": platform.python_version(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


# --------------------------------------------------------------------------------------------
# Statistics and timing
# --------------------------------------------------------------------------------------------

def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, torch.quantile's rule)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one synchronized call, in ms (used for the check call and for planning)."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    dt = (time.perf_counter() - t0) * 1e3
    del out
    return dt


def bench_cuda(fn: Callable[[], object], warmup_ms: float, rep_ms: float,
               grad_to_none: Iterable[torch.Tensor] | None = None) -> tuple[float, float, float, int]:
    """(p20, median, p80) in ms from triton.testing.do_bench, and an estimate of the rep count."""
    from triton.testing import do_bench

    res = do_bench(fn, warmup=int(max(1, warmup_ms)), rep=int(max(1, rep_ms)),
                   grad_to_none=list(grad_to_none) if grad_to_none is not None else None,
                   quantiles=list(QUANTILES))
    if isinstance(res, (int, float)):  # very old triton returned a float for one statistic
        res = [float(res)] * 3
    p20, p50, p80 = (float(r) for r in res)
    reps = max(1, int(rep_ms / max(p50, 1e-6)))
    return p20, p50, p80, reps


def bench_cpu(fn: Callable[[], object], warmup: int, reps: int) -> tuple[float, float, float, int]:
    """(p20, median, p80) in ms over ``reps`` timed calls after ``warmup`` untimed calls."""
    for _ in range(max(0, warmup)):
        out = fn()
        del out
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
        del out
    return quantile(times, 0.2), quantile(times, 0.5), quantile(times, 0.8), len(times)


def auto_cpu_reps(call_ms: float, budget_ms: float = 1500.0, lo: int = 3, hi: int = 15) -> int:
    """Enough reps for a stable median, within a time budget per (grid point, provider)."""
    return int(min(hi, max(lo, budget_ms / max(call_ms, 1e-3))))


# --------------------------------------------------------------------------------------------
# Peak extra memory
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_fd2():
    """Silence C++ writes to stderr (kineto prints 'profiler_start/stop' lines on every use)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_mb_cuda(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - base) / MB


def peak_extra_mb_cpu(fn: Callable[[], object]) -> float:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator during one call of fn.

    Whatever fn returns is released inside the profiled region, as in the timed calls.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
    with _quiet_fd2():
        prof.start()
    try:
        out = fn()
        del out
    finally:
        with _quiet_fd2():
            prof.stop()
    events = []
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]" and str(e.device_type()).upper().endswith("CPU"):
            events.append((e.start_ns(), e.nbytes()))
    events.sort(key=lambda t: t[0])
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak / MB


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        return peak_extra_mb_cuda(fn, device)
    return peak_extra_mb_cpu(fn)


def selfcheck_cpu_memory() -> list[tuple[str, float, float]]:
    """(case, measured MB, expected MB) on cases whose answer is known by hand."""
    x = torch.randn(1000, 1000)

    def chain():
        a = x @ x          # +4 MB
        b = a * 2          # +4 MB (peak 8)
        del a              # -4 MB
        c = b + 1          # +4 MB (peak stays 8)
        return c.sum()

    z = torch.randn(256, 512, requires_grad=True)

    def grad():
        # forward: z.T@z (1 MB) + pow (1 MB, saved input kept) ; backward: 2*C*g (1 MB twice) + dz
        return torch.autograd.grad((z.T @ z).pow(2).sum(), z)

    return [
        ("x @ x.T, x 1000x1000 fp32", peak_extra_mb_cpu(lambda: x @ x.T), 4.0),
        ("three 1000x1000 temporaries, two live at once", peak_extra_mb_cpu(chain), 8.0),
        ("grad of ||z^T z||^2, z 256x512", peak_extra_mb_cpu(grad), None),
    ]


# --------------------------------------------------------------------------------------------
# CSV and tables
# --------------------------------------------------------------------------------------------

def append_csv(path: str, rows: list[dict], columns: list[str] | None = None) -> None:
    """Append rows; write the header (``columns``, default the sweep's CSV_COLUMNS) when the file
    is new. An existing file's header is kept (columns it lacks are dropped from the new rows,
    with a warning once)."""
    if not rows:
        return
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    exists = os.path.exists(path) and os.path.getsize(path) > 0
    columns = columns or CSV_COLUMNS
    fieldnames = columns
    if exists:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header and header != columns:
            missing = [c for c in columns if c not in header]
            if missing:
                print(f"[bench] warning: {path} has an older header; dropping columns {missing}",
                      file=sys.stderr)
            fieldnames = header
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore", restval="")
        if not exists:
            w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_csv(v) for k, v in r.items()})


def _fmt_csv(v):
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}"
    return "" if v is None else v


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def format_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Plain fixed-width table. ``align``: one char per column, 'l' or 'r' (default: right)."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(str(c)))
    align = align or "r" * len(headers)

    def fmt(cells):
        out = []
        for i, c in enumerate(cells):
            c = str(c)
            out.append(c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    # python benchmarks/_bench.py : prints the environment and the CPU memory tracker self-check.
    print(env_info(torch.device("cpu")))
    for case, got, want in selfcheck_cpu_memory():
        print(f"{case:50s} measured {got:8.3f} MB   expected {want if want is not None else '-'}")
