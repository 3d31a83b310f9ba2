"""Spawning the gloo worker processes of the distributed tests."""

import time

import pytest
import torch.multiprocessing as mp


def spawn(fn, world, args, limit_s=240):
    """Runs ``fn(rank, world, *args)`` in ``world`` processes; fails the test if they outlive limit_s."""
    ctx = mp.spawn(fn, args=(world,) + tuple(args), nprocs=world, join=False)
    deadline = time.time() + limit_s
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish in {limit_s} s")


def rank_results(worker, world):
    """Runs ``worker(rank, world, init_file, out_dir)`` on ``world`` ranks; each saves its results to
    ``out_dir/rank<r>.pt``. Returns them in rank order."""
    import os
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        spawn(worker, world, (os.path.join(tmp, "init"), tmp))
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
