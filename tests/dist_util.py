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
