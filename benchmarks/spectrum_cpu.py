"""CPU figures for the spectral functions (docs/spec.md §7), against the official-style code.

1. EMP-SSL's shape: 100 patch chunks of N = 100, D = 1024, float32. ``coding_rate_loss`` of each
   chunk, forward + backward, against the official ``TotalCodingRate`` (a 1024×1024 ``logdet``
   per chunk). The official code takes ~0.3 s per chunk here, so it is timed on ``--official-chunks``
   chunks and scaled to 100 (the column ``chunks_timed`` says how many were run).
2. RankMe of 25,600 × 256 float32 embeddings: ``rankme`` against ``torch.linalg.svdvals`` of the
   same matrix (the paper's definition computes it that way), forward only.

Rows go to ``benchmarks/results/spectrum_cpu.csv``. The ratio is measured in the same run,
providers interleaved rep by rep (the machine is shared: interleaving exposes both to the same
load), on one intra-op thread by default (``--threads``). About a minute with the defaults.

    python benchmarks/spectrum_cpu.py [--reps 3] [--official-chunks 5] [--csv PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _bench as B  # noqa: E402

import duality_kernels as dk  # noqa: E402

COLUMNS = ["run_id", "timestamp", "git_sha", "device", "cpu_threads", "torch", "benchmark", "shape", "dtype",
           "provider", "mode", "chunks_timed", "reps", "median_ms", "min_ms", "speedup_vs_official"]


def official_tcr(x: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """EMP-SSL's TotalCodingRate: −½ logdet(I_D + D/(N·eps) XᵀX), as its loss.py writes it."""
    w = x.T
    p, m = w.shape
    eye = torch.eye(p, dtype=w.dtype, device=w.device)
    return -torch.logdet(eye + p / (m * eps) * w.matmul(w.T)) / 2.0


def _chunks_fwd_bwd(fn, z: torch.Tensor, chunks: int) -> float:
    """Seconds for forward + backward of Σ_c fn(z[c]) over the first ``chunks`` chunks."""
    xs = [z[c].clone().requires_grad_() for c in range(chunks)]  # one leaf per chunk, as the
    t0 = time.perf_counter()                                     # chunks of EMP-SSL's z_list
    total = sum(fn(x) for x in xs)
    total.backward()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--official-chunks", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: on a shared 2-core machine, 2 OpenMP threads made a "
                        "100x100 cholesky_inverse take 240 ms instead of 0.2 ms under load)")
    p.add_argument("--csv", default=os.path.join(B.repo_root(), "benchmarks", "results", "spectrum_cpu.csv"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = B.env_info(torch.device("cpu"))
    run_id = B.new_run_id()
    rows = []

    def row(bench, shape, provider, mode, chunks, times_ms, speedup=""):
        rows.append(dict(run_id=run_id, timestamp=B.utc_now(), git_sha=env["git_sha"], device=env["device"],
                         cpu_threads=env["cpu_threads"], torch=env["torch"], benchmark=bench, shape=shape,
                         dtype="float32", provider=provider, mode=mode, chunks_timed=chunks, reps=len(times_ms),
                         median_ms=round(statistics.median(times_ms), 3), min_ms=round(min(times_ms), 3),
                         speedup_vs_official=speedup))

    # 1. EMP-SSL's coding rate over 100 chunks
    chunks, n, d = 100, 100, 1024
    z = torch.randn(chunks, n, d)
    ours_fn = lambda x: dk.coding_rate_loss(x, 0.2)  # noqa: E731
    _chunks_fwd_bwd(ours_fn, z, 2), _chunks_fwd_bwd(official_tcr, z, 1)  # warm-up
    ours, official = [], []
    for _ in range(args.reps):
        ours.append(_chunks_fwd_bwd(ours_fn, z, chunks) * 1e3)
        official.append(_chunks_fwd_bwd(official_tcr, z, args.official_chunks) * 1e3 * chunks / args.official_chunks)
    speed = statistics.median(official) / statistics.median(ours)
    shape = f"{chunks}x{n}x{d}"
    row("emp_ssl_tcr", shape, "official_dxd_logdet", "fwdbwd", args.official_chunks, official)
    row("emp_ssl_tcr", shape, "dk.coding_rate_loss", "fwdbwd", chunks, ours, round(speed, 2))
    print(f"EMP-SSL TCR {shape} fwd+bwd: ours {statistics.median(ours):.1f} ms, official "
          f"{statistics.median(official):.1f} ms (scaled from {args.official_chunks} chunks): {speed:.1f}x")

    # 2. RankMe of 25,600 x 256
    x = torch.randn(25600, 256)
    dk.rankme(x), torch.linalg.svdvals(x)  # warm-up
    ours, svd = [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        dk.rankme(x)
        ours.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        torch.linalg.svdvals(x)
        svd.append((time.perf_counter() - t0) * 1e3)
    speed = statistics.median(svd) / statistics.median(ours)
    row("rankme", "25600x256", "torch.linalg.svdvals", "fwd", 1, svd)
    row("rankme", "25600x256", "dk.rankme", "fwd", 1, ours, round(speed, 2))
    print(f"RankMe 25600x256: ours {statistics.median(ours):.1f} ms, svdvals {statistics.median(svd):.1f} ms: "
          f"{speed:.1f}x")

    B.append_csv(args.csv, rows, COLUMNS)
    print(f"{len(rows)} rows -> {args.csv} ({env['device']}, {env['cpu_threads']} threads, torch {env['torch']}, "
          f"{env['git_sha']})")


if __name__ == "__main__":
    main()
