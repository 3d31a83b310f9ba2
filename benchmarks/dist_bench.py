"""gather_distributed strategies for the covariance family: gather the rows vs merge the D×D moments.

    python benchmarks/dist_bench.py                       # 2 gloo processes on the CPU
    python benchmarks/dist_bench.py --world 4 --backend nccl --device cuda

Spawns W processes, times forward+backward of each covariance-family loss with gather_distributed
=True under DUALITY_KERNELS_DIST_STRATEGY=gather and =allreduce (and what "auto" picks), and
appends rows to benchmarks/results/dist_bench.csv with the device, versions and git sha. The time
is the slowest rank's median over --reps calls, each call between two barriers.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOSSES = ("vicreg", "barlow", "vicreg_exp")


def _loss_fn(name):
    import duality_kernels as dk

    return {
        "vicreg": lambda a, b: dk.vicreg_loss(a, b, gather_distributed=True),
        "barlow": lambda a, b: dk.barlow_twins_loss(a, b, gather_distributed=True),
        "vicreg_exp": lambda a, b: dk.vicreg_exp_loss(a, b, gather_distributed=True),
    }[name]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _worker(rank, world, args, init_file, out_file):
    from duality_kernels import distributed as ddist

    device = args.device
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(args.backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    dtype = getattr(torch, args.dtype)
    rows = []
    for n in args.N:
        for d in args.D:
            g = torch.Generator().manual_seed(rank)
            z1 = torch.randn(n, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
            z2 = torch.randn(n, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
            ctx = ddist.Context(rank=rank, world=world)
            auto = ddist.strategy(ctx, n, d) if not os.environ.get(ddist.STRATEGY_ENV) else "?"
            for loss_name in args.loss:
                fn = _loss_fn(loss_name)
                for strat in ("gather", "allreduce"):
                    os.environ[ddist.STRATEGY_ENV] = strat
                    times = []
                    for i in range(args.warmup + args.reps):
                        dist.barrier()
                        _sync(device)
                        t0 = time.perf_counter()
                        loss = fn(z1, z2)
                        torch.autograd.grad(loss, (z1, z2))
                        _sync(device)
                        t1 = time.perf_counter()
                        if i >= args.warmup:
                            times.append((t1 - t0) * 1e3)
                    med = torch.tensor([statistics.median(times)], dtype=torch.float64)
                    everyone = [torch.zeros_like(med) for _ in range(world)]
                    dist.all_gather(everyone, med)
                    rows.append((loss_name, n, d, strat, max(float(t) for t in everyone), auto, float(loss.detach())))
                os.environ.pop(ddist.STRATEGY_ENV, None)
    if rank == 0:
        torch.save(rows, out_file)
    dist.destroy_process_group()


def _git_sha():
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=ROOT) != 0
        return sha + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--N", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--D", type=int, nargs="+", default=[64, 512, 2048])
    p.add_argument("--loss", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "results", "dist_bench.csv"))
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.world))
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "rows.pt")
        mp.spawn(_worker, args=(args.world, args, os.path.join(tmp, "init"), out_file), nprocs=args.world)
        rows = torch.load(out_file)
    meta = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(), "device": _device_name(args.device), "torch": torch.__version__,
        "backend": args.backend, "world": args.world, "dtype": args.dtype,
    }
    new = not os.path.exists(args.csv)
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    with open(args.csv, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(list(meta) + ["loss", "N_per_rank", "D", "strategy", "median_ms", "auto_picks", "loss_value"])
        for r in rows:
            w.writerow(list(meta.values()) + list(r))
    print(f"{'loss':<11}{'N/rank':>7}{'D':>6}  {'gather ms':>10}{'allreduce ms':>13}  auto")
    by_key = {}
    for loss_name, n, d, strat, ms, auto, value in rows:
        by_key.setdefault((loss_name, n, d, auto), {})[strat] = (ms, value)
    for (loss_name, n, d, auto), v in by_key.items():
        g, a = v["gather"], v["allreduce"]
        agree = abs(g[1] - a[1]) <= 1e-3 * max(1.0, abs(g[1]))
        print(f"{loss_name:<11}{n:>7}{d:>6}  {g[0]:>10.2f}{a[0]:>13.2f}  {auto}{'' if agree else '  VALUES DIFFER'}")
    print(f"rows appended to {args.csv}")


if __name__ == "__main__":
    main()
