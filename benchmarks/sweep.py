#!/usr/bin/env python
"""Sweep batch size N x embedding dimension D for one loss over every provider on this machine.

    python benchmarks/sweep.py                                   # VICReg, default grid (bf16 on a GPU, fp32 on CPU)
    python benchmarks/sweep.py --loss ntxent --dtype bfloat16 --N 2048 16384 --D 256
    python benchmarks/sweep.py --loss moco --queue 65536 --shapes 256x128 --dtype bfloat16
    python benchmarks/sweep.py --summarize benchmarks/results/sweep.csv    # print a CSV's rows
    python benchmarks/sweep.py --replot benchmarks/results/sweep.csv       # heatmap of its last run

Providers (those that cannot run here are skipped with a note): eager (the official formula from
duality_kernels/testing, the baseline), compile (torch.compile of it; on CPU only when asked for),
torch / triton / cuda (duality_kernels with that backend=), lightly, infcl, siglip_kernel. Each provider is checked
against eager, its peak extra memory measured, then timed; rows go to the CSV as each grid point
finishes and the table is printed at the end (also on Ctrl-C / SIGTERM). The modules beside this one:
sweep_cases (losses, inputs, providers), sweep_measure, sweep_profile, sweep_report;
benchmarks/results/README.md describes the columns and the method.

Exit status: 0; 3 when one of our providers (torch/triton/cuda) disagreed with eager or failed
with an error other than "unavailable" or out-of-memory; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (HERE, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import _bench as B  # noqa: E402
from sweep_cases import (  # noqa: E402
    ALL_PROVIDERS, DEFAULT_GRID, DEFAULT_QUEUE, DTYPES, LOSSES, OURS, THIRD_PARTY, loss_label,
)
from sweep_measure import run_point, tolerance  # noqa: E402
from sweep_profile import PROFILE_COLUMNS, print_profile, profile_rows  # noqa: E402
from sweep_report import default_png, plot_heatmap, print_table, summarize  # noqa: E402


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
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE, metavar="K",
                   help=f"MoCo's queue length K (rows of negatives; default {DEFAULT_QUEUE})")
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
        label = loss_label(args.loss, args.queue)
        rows = [r for r in B.read_csv(args.replot) if r["loss"] == label]
        if not rows:
            print(f"no {label} rows in {args.replot}")
            return 1
        r = rows[-1]
        png = args.plot or default_png(label, r["device"], r["dtype"], r["precision"], r["mode"])
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
        elif p in THIRD_PARTY and (args.loss not in THIRD_PARTY[p][0] or device.type != "cuda"):
            why = f"{p}: {' and '.join(THIRD_PARTY[p][0])} on CUDA only"
        if why is None:
            keep.append(p)
        elif args.providers and p in args.providers:
            notes.setdefault((p, "unavailable: " + why), []).append(points[0])
    providers = keep

    info = B.env_info(device)
    run_id = B.new_run_id()
    label = loss_label(args.loss, args.queue)
    base_row = dict(run_id=run_id, loss=label, dtype=args.dtype, precision=args.precision,
                    mode=args.mode, **info)
    print(f"sweep {label} {args.mode} {args.dtype} precision={args.precision} on {info['device']} "
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
    bar = tqdm(total=len(points) * len(providers), desc=label, unit="run", disable=not tty,
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
        print(f"FLAG: {len(flagged)} row(s) differ from the reference by more than {tol:g} (relative): "
              + ", ".join(sorted({r['provider'] for r in flagged})))
    if bad and status == 0:
        status = 3

    if not args.no_plot and all_rows:
        try:
            png = args.plot or default_png(label, info["device"], args.dtype, args.precision, args.mode)
            path, why = plot_heatmap(args.csv, run_id, png)
            print(f"heatmap: {path}" if path else f"no heatmap: {why}")
        except Exception as e:  # noqa: BLE001 - a plotting problem must not lose the numbers
            print(f"no heatmap: {type(e).__name__}: {e}")
    return status


if __name__ == "__main__":
    sys.exit(main())
