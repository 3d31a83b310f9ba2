"""docs/spec.md §5 under real processes (gloo, CPU): DDP gradients equal the single-process gradient on the
concatenated global batch, and the mean of the ranks' losses equals that process's loss.

These fail if a collective's backward averages instead of summing (the gradients would be 1/W of
the truth for every global term), and if a rank repeats another's anchors (the loss values would
differ)."""

import datetime
import os
import pathlib
import tempfile
import time

import pytest
import torch
import torch.distributed as dist

import duality_kernels as dk

from .dist_util import assert_matches_global, mlp, save_rank, spawn

pytestmark = pytest.mark.distributed

N_LOCAL, D_IN, D = 4, 5, 6


def _cases():
    """(name, strategy or None, fn(z1, z2, gather) -> loss with reduction "mean")."""
    c = []
    for strat in ("gather", "allreduce"):
        c.append((f"vicreg-{strat}", strat, lambda a, b, g: dk.vicreg_loss(a, b, 2.0, 3.0, 5.0, gamma=1.5,
                                                                           gather_distributed=g)))
        c.append((f"barlow-{strat}", strat, lambda a, b, g: dk.barlow_twins_loss(a, b, 0.3, gather_distributed=g)))
        c.append((f"vicreg_exp-{strat}", strat,
                  lambda a, b, g: dk.vicreg_exp_loss(a, b, 2.0, 3.0, 5.0, gamma=1.5, temperature=0.5,
                                                     gather_distributed=g)))
    c.append(("vicreg_ctr", None, lambda a, b, g: dk.vicreg_ctr_loss(a, b, 2.0, 3.0, 5.0, gamma=1.5, temperature=0.5,
                                                                     gather_distributed=g)))
    for sim, norm in (("dot", "l2"), ("abs", "center_l2"), ("square", "dim_std")):
        c.append((f"ntxent-{sim}-{norm}", None, lambda a, b, g, s=sim, n=norm: dk.ntxent_loss(a, b, 0.5, s, n,
                                                                                              gather_distributed=g)))
    c.append(("dcl-dot", None, lambda a, b, g: dk.dcl_loss(a, b, 0.5, gather_distributed=g)))
    c.append(("dcl-square", None, lambda a, b, g: dk.dcl_loss(a, b, 0.5, "square", gather_distributed=g)))
    c.append(("infonce", None, lambda a, b, g: dk.infonce_loss(a, b, 0.5, gather_distributed=g)))
    c.append(("spectral", None, lambda a, b, g: dk.spectral_contrastive_loss(a, b, mu=0.5, gather_distributed=g)))
    c.append(("spectral-sample", None, lambda a, b, g: dk.spectral_contrastive_loss(a, b, mu=0.5, side="sample",
                                                                                    gather_distributed=g)))
    if os.environ.get("TRITON_INTERPRET") == "1":  # the Triton kernels on CPU tensors (tests/conftest.py)
        c.append(("triton-ntxent-square-center_l2", None, lambda a, b, g: dk.ntxent_loss(
            a, b, 0.5, "square", "center_l2", gather_distributed=g, backend="triton")))
        c.append(("triton-dcl-abs", None, lambda a, b, g: dk.dcl_loss(a, b, 0.5, "abs", gather_distributed=g,
                                                                      backend="triton")))
        c.append(("triton-infonce", None, lambda a, b, g: dk.infonce_loss(a, b, 0.5, gather_distributed=g,
                                                                          backend="triton")))
    return c


SUM_CASES = {
    "ntxent-sum": lambda a, b, g: dk.ntxent_loss(a, b, 0.5, reduction="sum", gather_distributed=g),
    "dcl-sum": lambda a, b, g: dk.dcl_loss(a, b, 0.5, reduction="sum", gather_distributed=g),
    "infonce-sum": lambda a, b, g: dk.infonce_loss(a, b, 0.5, reduction="sum", gather_distributed=g),
}


def _model(seed=0):
    return mlp(D_IN, D, seed)


def _data(world):
    g = torch.Generator().manual_seed(1234 + world)
    x1 = torch.randn(world * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(world * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    return x1, x2


def _init(rank, world, init_file, timeout_s):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _worker_equivalence(rank, world, init_file, out_dir):
    _init(rank, world, init_file, 60)
    x1, x2 = _data(world)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    results = {}
    for name, strat, fn in _cases():
        if strat:
            os.environ["DUALITY_KERNELS_DIST_STRATEGY"] = strat
        model = torch.nn.parallel.DistributedDataParallel(_model())
        loss = fn(model(x1[sl]), model(x2[sl]), True)
        loss.backward()
        results[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
        os.environ.pop("DUALITY_KERNELS_DIST_STRATEGY", None)
    for name, fn in SUM_CASES.items():
        model = _model()
        results[name] = (fn(model(x1[sl]), model(x2[sl]), True).detach(), [])
        # "none" returns this rank's own anchors' terms
    results["ntxent-none"] = (dk.ntxent_loss(_model()(x1[sl]), _model()(x2[sl]), 0.5, reduction="none",
                                             gather_distributed=True).detach(), [])
    save_rank(out_dir, rank, results)


def _worker_mismatch(rank, world, init_file, out_dir, kind):
    # a short group timeout only where the test waits for it; the others must not hit it under load
    _init(rank, world, init_file, 4 if kind == "one-rank" else 60)
    if kind == "dtype":
        gen = torch.Generator().manual_seed(8618)
        z = torch.randn(N_LOCAL, D, dtype=torch.float64 if rank == 0 else torch.float32, generator=gen)
    elif kind == "shape":
        gen = torch.Generator().manual_seed(8029)
        z = torch.randn(N_LOCAL + rank, D, generator=gen)
    else:  # "one-rank": only rank 0 calls the loss
        gen = torch.Generator().manual_seed(6401)
        z = torch.randn(N_LOCAL, D, generator=gen)
        if rank != 0:
            time.sleep(8)
            with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
                f.write("did not call")
            dist.destroy_process_group()
            return
    try:
        dk.vicreg_loss(z, z.clone(), gather_distributed=True)
        msg = "no error"
    except Exception as err:  # noqa: BLE001 - the test inspects the type and message
        msg = f"{type(err).__name__}: {err}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(msg)
    # without it gloo's threads are torn down at interpreter exit, which aborted a worker once
    # ("terminate called without an active exception", SIGABRT) under load
    dist.destroy_process_group()


_spawn = spawn


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gradients_equal_global_batch(world):
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_worker_equivalence, world, (os.path.join(tmp, "init"), tmp))
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    x1, x2 = _data(world)
    for name, _, fn in _cases():
        model = _model()
        loss = fn(model(x1), model(x2), False)
        loss.backward()
        assert_matches_global(name, [r[name][0] for r in ranks], [r[name][1] for r in ranks], loss, model)
    for name, fn in SUM_CASES.items():
        model = _model()
        total = fn(model(x1), model(x2), False).detach()
        torch.testing.assert_close(sum(r[name][0] for r in ranks), total, rtol=1e-10, atol=1e-10, msg=name)
    model = _model()
    full = dk.ntxent_loss(model(x1), model(x2), 0.5, reduction="none").detach()
    n_all = world * N_LOCAL
    for r in range(world):
        own = torch.cat([full[r * N_LOCAL:(r + 1) * N_LOCAL], full[n_all + r * N_LOCAL:n_all + (r + 1) * N_LOCAL]])
        torch.testing.assert_close(ranks[r]["ntxent-none"][0], own, rtol=1e-10, atol=1e-10)


# what each bad use raises on every rank (tests/test_distributed_compiled.py reuses them)
MISMATCH = {
    "dtype": r"ValueError: .*same input shape, dtype and device type on every rank.*float64.*float32",
    "shape": r"ValueError: .*same input shape.*\(4, 6\).*\(5, 6\)",
    "one-rank": r"RuntimeError: vicreg_loss\(gather_distributed=True\): the input check across 2 ranks failed",
}


@pytest.mark.parametrize("kind,pattern", list(MISMATCH.items()))
def test_mismatch_raises_instead_of_hanging(kind, pattern):
    import re

    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_worker_mismatch, 2, (os.path.join(tmp, "init"), tmp, kind), limit_s=60)
        msg0 = pathlib.Path(tmp, "rank0.txt").read_text()
        msg1 = pathlib.Path(tmp, "rank1.txt").read_text()
    assert re.search(pattern, msg0, flags=re.S), msg0
    if kind != "one-rank":
        assert re.search(pattern, msg1, flags=re.S), msg1
