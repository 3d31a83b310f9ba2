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


def init_gloo(rank, world, init_file, timeout_s=60):
    """A worker's first step: its gloo process group of ``world`` ranks, met through ``init_file``."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def rank_results(worker, world):
    """Runs ``worker(rank, world, init_file, out_dir)`` on ``world`` ranks; each saves its results to
    ``out_dir/rank<r>.pt``. Returns them in rank order."""
    import os
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        spawn(worker, world, (os.path.join(tmp, "init"), tmp))
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


def mlp(d_in, d_out, seed=0):
    """The small float64 model whose DDP gradients the distributed tests compare."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, 7), torch.nn.Tanh(), torch.nn.Linear(7, d_out)).double()


def assert_matches_global(name, rank_losses, rank_grads, loss, model, rtol_grad=1e-10, atol=1e-10):
    """docs/spec.md §5: the mean over ranks of the returned losses equals the global batch's loss
    ``loss`` (already backpropagated into ``model``), and DDP leaves every rank the global batch's
    gradients. ``rank_grads``: per rank, the parameters' gradients in ``model.parameters()`` order."""
    import torch

    mean_loss = torch.stack(list(rank_losses)).mean()
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-10, atol=atol, msg=f"{name}: loss")
    for p, *per_rank in zip(model.parameters(), *rank_grads):
        for g in per_rank:
            torch.testing.assert_close(g, p.grad, rtol=rtol_grad, atol=atol, msg=f"{name}: gradient")


def assert_cases_match_global(ranks, cases, global_loss, **tol):
    """``assert_matches_global`` for every case ``name -> spec`` of the ranks' saved results:
    ``global_loss(spec) -> (loss, model)`` is the global batch's loss in one process, not yet
    backpropagated."""
    for name, spec in cases.items():
        loss, model = global_loss(spec)
        loss.backward()
        assert_matches_global(name, [r[name][0] for r in ranks], [r[name][1] for r in ranks], loss, model, **tol)


def save_rank(out_dir, rank, results):
    """A worker's last step: its results to ``out_dir/rank<r>.pt`` (``rank_results`` loads them),
    then the process group's end."""
    import os

    import torch
    import torch.distributed as dist

    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def ddp_results(cases, make_model, forward):
    """Per case ``name -> fn``: the loss ``fn(forward(ddp_model))`` of a DistributedDataParallel copy
    of ``make_model()`` and, after its backward, the parameters' gradients: ``name -> (loss, grads)``."""
    import torch

    results = {}
    for name, fn in cases.items():
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        loss = fn(*forward(model))
        loss.backward()
        results[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    return results
