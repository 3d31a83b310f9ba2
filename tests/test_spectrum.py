"""Spectral functions (docs/spec.md §7): singular values, RankMe, TCR, MCR², MEC.

Checked against the float64 transcriptions of the official code (duality_kernels/testing/official_spectrum.py),
both sides against each other, gradcheck on both sides, fp32 against the official code's own
fp32 error (tests/accuracy.py), errors, modules, and the distributed contract under gloo.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist

import duality_kernels as dk
from duality_kernels import BackendUnavailableError
from duality_kernels.reference import spectrum as RS
from duality_kernels.testing import official_spectrum as O

from . import accuracy as A
from .dist_util import assert_matches_global, mlp, rank_results, save_rank

SIDES = ("sample", "dimension")
SHAPES = [(5, 9), (9, 5), (7, 7), (1, 6), (6, 1), (13, 4)]


def _z(n, d, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale + 0.2).to(dtype)


def _labels(n, k, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randint(0, k, (n,), generator=g)


def _close(a, b, rtol=1e-12, msg=""):
    a, b = a.detach().double(), b.detach().double()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    assert a.shape == b.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert err <= rtol * max(scale, 1.0), f"{msg}: max error {err:.3e}, scale {scale:.3e}"


def _value_and_grads(fn, *inputs):
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*xs)
    w = torch.linspace(-1.0, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * w).sum(), xs)
    return out.detach(), grads


# (name, ours(side) -> fn(*inputs), official fn(*inputs) or None, number of inputs)
def _cases():
    lab = _labels(13, 4)
    return [
        ("singular_values", lambda s: lambda z: dk.singular_values(z, side=s),
         lambda z: torch.linalg.svdvals(z), 1),
        ("rankme", lambda s: lambda z: dk.rankme(z, side=s), O.rankme_official, 1),
        ("rankme_eps", lambda s: lambda z: dk.rankme(z, 1e-3, side=s), lambda z: O.rankme_official(z, 1e-3), 1),
        ("tcr", lambda s: lambda z: dk.coding_rate_loss(z, side=s), O.tcr_official, 1),
        ("tcr_eps", lambda s: lambda z: dk.coding_rate_loss(z, 0.05, side=s), lambda z: O.tcr_official(z, 0.05), 1),
        ("mec", lambda s: lambda a, b: dk.mec_loss(a, b, side=s), O.mec_official, 2),
        ("mec_order3", lambda s: lambda a, b: dk.mec_loss(a, b, 2.0, 3, side=s),
         lambda a, b: O.mec_official(a, b, 2.0, 3), 2),
        ("mec_lamda", lambda s: lambda a, b: dk.mec_loss(a, b, order=5, lamda_inv=0.7, side=s),
         lambda a, b: O.mec_official(a, b, order=5, lamda_inv=0.7), 2),
        ("mcr2", lambda s: lambda z: dk.mcr2_loss(z, lab[:z.shape[0]], side=s),
         lambda z: O.mcr2_official(z, lab[:z.shape[0]])[0], 1),
    ]


def _inputs(n_inputs, n, d, seed=0):
    return [_z(n, d, seed + i) for i in range(n_inputs)]


@pytest.mark.parametrize("n,d", SHAPES)
def test_float64_matches_official_on_both_sides(n, d):
    for name, ours, official, k in _cases():
        if name.startswith("mcr2") and n > 13:
            continue
        inputs = _inputs(k, n, d)
        ref_v, ref_g = _value_and_grads(official, *inputs)
        if name == "singular_values" and min(n, d) > 1:
            # the derivative of a singular value needs it to be simple; these are (seeded inputs)
            assert (ref_v[:-1] - ref_v[1:]).min() > 1e-3
        for s in SIDES + ("auto",):
            v, g = _value_and_grads(ours(s), *inputs)
            _close(v, ref_v, 1e-10, f"{name} {s} {n}x{d} value")
            for gi, ri in zip(g, ref_g):
                _close(gi, ri, 1e-9, f"{name} {s} {n}x{d} grad")


@pytest.mark.parametrize("n,d", SHAPES)
def test_sides_agree_in_float64(n, d):
    """The two sides are two computations of the same number: ~1e-12 relative."""
    for name, ours, _, k in _cases():
        if name.startswith("mcr2") and n > 13:
            continue
        inputs = _inputs(k, n, d, seed=3)
        v1, g1 = _value_and_grads(ours("sample"), *inputs)
        v2, g2 = _value_and_grads(ours("dimension"), *inputs)
        _close(v1, v2, 1e-12, f"{name} {n}x{d} value")
        for a, b in zip(g1, g2):
            _close(a, b, 1e-11, f"{name} {n}x{d} grad")


def test_auto_side_is_the_cost_model_choice(monkeypatch):
    seen = []
    real = RS.gram
    monkeypatch.setattr(RS, "gram", lambda z, side, *a, **k: seen.append(side) or real(z, side, *a, **k))
    dk.coding_rate_loss(_z(4, 9))
    dk.coding_rate_loss(_z(9, 4))
    dk.rankme(_z(5, 5))
    assert seen == ["sample", "dimension", "dimension"]


@pytest.mark.parametrize("side", ["sample", "dimension"])
def test_lower_panel_gram_is_the_grams_lower_triangle(side):
    """The singular values' CPU Gram, in row panels of its lower triangle (the part eigh reads):
    those entries equal the full product's, at a size (130) the panels do not divide."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(130, 131, generator=g) if side == "sample" else torch.randn(131, 130, generator=g)
    full = RS._gram_of(x, side, torch.float32)
    low = RS._gram_of(x, side, torch.float32, lower=True)
    assert RS._PANEL_MIN <= 130
    # each entry the same dot product (equal on this machine's BLAS; another may sum in another order)
    torch.testing.assert_close(torch.tril(low), torch.tril(full), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(torch.linalg.eigvalsh(low), torch.linalg.eigvalsh(full), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("side", SIDES)
def test_gradcheck(side):
    z = _z(4, 6, 1).requires_grad_()
    w = _z(4, 6, 2).requires_grad_()
    zt = _z(7, 3, 3).requires_grad_()
    lab = torch.tensor([0, 2, 2, 0, 2, 2, 3])
    checks = [
        (lambda x: dk.singular_values(x, side=side), (z,)),
        (lambda x: dk.singular_values(x, side=side), (zt,)),
        (lambda x: dk.rankme(x, side=side), (z,)),
        (lambda x: dk.coding_rate_loss(x, 0.3, side=side), (z,)),
        (lambda x: dk.coding_rate_loss(x, 0.3, side=side), (zt,)),
        (lambda x: dk.mcr2_loss(x, lab, 0.4, 0.7, num_classes=5, side=side), (zt,)),
        (lambda x, y: dk.mec_loss(x, y, 3.0, 4, side=side), (z, w)),
        (lambda x, y: dk.mec_loss(x, y, 3.0, 3, side=side), (zt, (zt * 0.5 + 1).detach().requires_grad_())),
    ]
    for fn, args in checks:
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_mcr2_terms_singletons_and_empty_classes():
    z = _z(9, 5, 4)
    lab = torch.tensor([0, 3, 3, 5, 0, 3, 3, 3, 3])  # classes 1, 2, 4, 6 empty; 5 a singleton
    for num_classes in (None, 7, 10):
        ref, r, rc = O.mcr2_official(z, lab, 0.5, 0.8, num_classes)
        for side in ("auto",) + SIDES:
            loss, terms = dk.mcr2_loss(z, lab, 0.5, 0.8, num_classes, return_terms=True, side=side)
            _close(loss, ref, 1e-12, f"loss {side} {num_classes}")
            _close(terms["R"], r, 1e-12, "R")
            _close(terms["Rc"], rc, 1e-12, "Rc")
    # every sample its own class; and a single class (Rc = R with the 1e-8)
    for lab in (torch.arange(9), torch.zeros(9, dtype=torch.int64)):
        _close(dk.mcr2_loss(z, lab), O.mcr2_official(z, lab)[0], 1e-12, "extreme labels")
    # mixed class sizes around D: a class on each side under "auto"
    z = _z(40, 6, 5)
    lab = torch.cat([torch.zeros(20, dtype=torch.int64), torch.ones(3, dtype=torch.int64), torch.full((17,), 2)])
    lab = lab[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    buckets = RS._class_buckets(torch.bincount(lab).tolist(), 6, "auto")
    assert {s for s, _ in buckets} == {"sample", "dimension"}
    v, g = _value_and_grads(lambda x: dk.mcr2_loss(x, lab, 0.3, 1.3), z)
    rv, rg = _value_and_grads(lambda x: O.mcr2_official(x, lab, 0.3, 1.3)[0], z)
    _close(v, rv, 1e-12, "mixed value")
    _close(g[0], rg[0], 1e-11, "mixed grad")
    # labels on another integer dtype
    _close(dk.mcr2_loss(z, lab.to(torch.int32), 0.3, 1.3), rv, 1e-12, "int32 labels")


def test_rankme_and_singular_values_edge_cases():
    z = _z(6, 4, 7)
    assert dk.singular_values(z).shape == (4,) and dk.singular_values(z.T).shape == (4,)
    s = dk.singular_values(z)
    assert (s[:-1] >= s[1:]).all()
    # a rank-1 matrix: the zero values are clamped, their gradient is finite; the top one's is u vᵀ
    r1 = (_z(6, 1, 8) @ _z(1, 4, 9)).requires_grad_()
    s = dk.singular_values(r1)
    assert (s[1:] < 1e-6 * s[0]).all()
    assert torch.isfinite(torch.autograd.grad(s.sum(), r1, retain_graph=True)[0]).all()
    u, _, vh = torch.linalg.svd(r1.detach())
    _close(torch.autograd.grad(s[0], r1)[0], u[:, :1] @ vh[:1], 1e-10, "rank-1")
    # RankMe of an orthonormal frame is the full rank (up to eps); of a rank-1 matrix about 1
    q = torch.linalg.qr(_z(8, 5, 10))[0]
    assert abs(dk.rankme(q).item() - 5) < 1e-5
    assert abs(dk.rankme(r1.detach()).item() - 1) < 1e-5
    # NaN reaches the output (docs/spec.md §6), it is not turned into finite eigenvalues
    bad = _z(5, 3)
    bad[1, 2] = float("nan")
    assert torch.isnan(dk.singular_values(bad)).all() and torch.isnan(dk.rankme(bad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    z = _z(12, 7, 11, dtype=dtype)
    w = _z(12, 7, 12, dtype=dtype)
    lab = _labels(12, 3)
    acc = torch.float32
    for fn, args in [(dk.singular_values, (z,)), (dk.rankme, (z,)), (dk.coding_rate_loss, (z,)),
                     (lambda a: dk.mcr2_loss(a, lab), (z,)), (dk.mec_loss, (z, w))]:
        xs = [a.clone().requires_grad_() for a in args]
        out = fn(*xs)
        assert out.dtype == acc
        out.sum().backward()
        assert all(x.grad.dtype == dtype and torch.isfinite(x.grad).all() for x in xs)
    if dtype != torch.float32:  # half inputs: against float64 on the same rounded values; the
        # gradients come back rounded to the input dtype (2⁻⁹ / 2⁻¹² relative)
        rtol = 8e-3 if dtype == torch.bfloat16 else 1e-3
        A._check_low_precision(lambda a: dk.coding_rate_loss(a), O.tcr_official, [z], rtol)
        A._check_low_precision(lambda a: dk.mcr2_loss(a, lab), lambda a: O.mcr2_official(a, lab)[0], [z], rtol)
        A._check_low_precision(dk.mec_loss, O.mec_official, [z, w], rtol)
        A._check_low_precision(dk.rankme, O.rankme_official, [z], rtol)


@pytest.mark.parametrize("n,d", [(16, 96), (96, 16), (33, 33), (100, 257)])
def test_float32_accuracy_against_official_error(n, d):
    """docs/design.md convention 5: |ours − truth| ≤ 2× (values) / 3× (gradients) the official fp32
    code's own error, truth = the official code in float64."""
    z, w = A.views(n, d, torch.float32, seed=n + d, device="cpu")
    lab = _labels(n, 5, seed=d)
    A._check(lambda a: dk.coding_rate_loss(a), O.tcr_official, [z])
    A._check(lambda a: dk.coding_rate_loss(a, 0.05), lambda a: O.tcr_official(a, 0.05), [z])
    A._check(lambda a: dk.mcr2_loss(a, lab), lambda a: O.mcr2_official(a, lab)[0], [z])
    A._check(dk.mec_loss, O.mec_official, [z, w])
    A._check(lambda a: dk.rankme(a), O.rankme_official, [z])


def test_errors():
    z = _z(6, 4)
    lab = _labels(6, 3)
    cases = [
        (TypeError, "must be a floating-point", lambda: dk.rankme(z.to(torch.int64))),
        (TypeError, "must be a floating-point", lambda: dk.coding_rate_loss(z > 0)),
        (ValueError, "must be 2-D", lambda: dk.singular_values(z[0])),
        (ValueError, "eps must be a finite number > 0, got 0", lambda: dk.coding_rate_loss(z, 0.0)),
        (ValueError, "eps must be a finite number > 0, got -1", lambda: dk.mcr2_loss(z, lab, -1.0)),
        (ValueError, "eps must be a finite number > 0, got nan", lambda: dk.rankme(z, float("nan"))),
        (ValueError, "eps_sq must be a finite number > 0, got inf", lambda: dk.mec_loss(z, z, float("inf"))),
        (ValueError, "lamda_inv must be a finite number > 0", lambda: dk.mec_loss(z, z, lamda_inv=0.0)),
        (ValueError, "gamma must be finite, got nan", lambda: dk.mcr2_loss(z, lab, gamma=float("nan"))),
        (ValueError, "order must be >= 1", lambda: dk.mec_loss(z, z, order=0)),
        (TypeError, "order must be an int, got 2.0", lambda: dk.mec_loss(z, z, order=2.0)),
        (ValueError, "same shape", lambda: dk.mec_loss(z, z[:5])),
        (ValueError, r"labels must have shape \(6,\)", lambda: dk.mcr2_loss(z, lab[:5])),
        (ValueError, r"labels must have shape \(6,\)", lambda: dk.mcr2_loss(z, lab[:, None])),
        (TypeError, "integer tensor of class indices, got dtype torch.float32", lambda: dk.mcr2_loss(z, lab.float())),
        (TypeError, "integer tensor of class indices, got dtype torch.bool", lambda: dk.mcr2_loss(z, lab > 0)),
        (TypeError, "labels must be a torch.Tensor", lambda: dk.mcr2_loss(z, lab.tolist())),
        (ValueError, "labels must be >= 0.*got a label -1", lambda: dk.mcr2_loss(z, torch.arange(6) - 1)),
        (ValueError, "labels must be < num_classes=2, got a label 2", lambda: dk.mcr2_loss(z, lab, num_classes=2)),
        (ValueError, "num_classes must be >= 1", lambda: dk.mcr2_loss(z, lab, num_classes=0)),
        (TypeError, "num_classes must be an int", lambda: dk.mcr2_loss(z, lab, num_classes=3.0)),
        (TypeError, "return_terms must be a bool", lambda: dk.mcr2_loss(z, lab, return_terms=1)),
        (ValueError, "side must be one of", lambda: dk.rankme(z, side="rows")),
        (ValueError, "backend must be one of", lambda: dk.coding_rate_loss(z, backend="numpy")),
        (TypeError, "gather_distributed must be a bool", lambda: dk.coding_rate_loss(z, gather_distributed=1)),
        (BackendUnavailableError, "does not implement coding_rate_loss",
         lambda: dk.coding_rate_loss(z, backend="cuda")),
        (BackendUnavailableError, "does not implement mec_loss", lambda: dk.mec_loss(z, z, backend="triton")),
        (BackendUnavailableError, "does not implement mec_loss", lambda: dk.mec_loss(z, z, backend="cuda")),
        (BackendUnavailableError, "does not implement rankme", lambda: dk.rankme(z, backend="cuda")),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()


def test_factorization_failures_are_errors_not_nan():
    z = _z(6, 4)
    z[2, 1] = float("nan")
    for call in (lambda: dk.coding_rate_loss(z), lambda: dk.mcr2_loss(z, _labels(6, 2)),
                 lambda: dk.coding_rate_loss(z, side="dimension")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()
    # finite but far beyond float32's range for I + αG: rank 2 of 40 sample-side directions, so 38
    # eigenvalues of αG are 0 in exact arithmetic and ±u·α‖G‖ ~ ±1e5 after rounding
    big = _z(40, 2, 3, dtype=torch.float32, scale=1e4)
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite in torch.float32"):
        dk.coding_rate_loss(big, 1e-6, side="sample")
    assert torch.isfinite(dk.coding_rate_loss(big.double(), 1e-6, side="sample"))  # fine in float64


def test_modules_match_functions():
    z, w = _z(6, 9, 1), _z(6, 9, 2)
    lab = _labels(6, 3)
    _close(dk.CodingRateLoss(0.3, side="sample")(z), dk.coding_rate_loss(z, 0.3), 0, "tcr")
    _close(dk.MCR2Loss(0.4, 2.0, 5)(z, lab), dk.mcr2_loss(z, lab, 0.4, 2.0, 5), 0, "mcr2")
    loss, terms = dk.MCR2Loss(return_terms=True)(z, lab)
    assert set(terms) == {"R", "Rc"}
    _close(dk.MECLoss(3.0, 2, lamda_inv=0.5)(z, w), dk.mec_loss(z, w, 3.0, 2, lamda_inv=0.5), 0, "mec")
    for exc, call in [(ValueError, lambda: dk.CodingRateLoss(0)), (ValueError, lambda: dk.MCR2Loss(gamma=float("inf"))),
                      (ValueError, lambda: dk.MCR2Loss(num_classes=0)), (ValueError, lambda: dk.MECLoss(order=0)),
                      (ValueError, lambda: dk.MECLoss(side="x")), (ValueError, lambda: dk.MECLoss(backend="x")),
                      (TypeError, lambda: dk.MECLoss(order=1.5)), (ValueError, lambda: dk.RankMeMonitor(0)),
                      (ValueError, lambda: dk.RankMeMonitor(eps=-1.0)), (TypeError, lambda: dk.RankMeMonitor(10.0))]:
        with pytest.raises(exc):
            call()


def test_rankme_monitor_keeps_the_most_recent_rows():
    mon = dk.RankMeMonitor(max_samples=20)
    with pytest.raises(RuntimeError, match="before any update"):
        mon.compute()
    batches = [_z(n, 6, seed=i) for i, n in enumerate((8, 8, 8, 3, 30, 5))]
    seen = []
    for b in batches:
        x = b.clone().requires_grad_()
        mon.update(x)
        seen.append(b)
        rows = torch.cat(seen)[-20:]
        assert mon.num_samples == rows.shape[0]
        _close(mon.compute(), O.rankme_official(rows), 1e-10, "monitor")
    assert not mon.compute().requires_grad
    with pytest.raises(ValueError, match="width and dtype"):
        mon.update(_z(4, 5))
    mon.reset()
    assert mon.num_samples == 0
    mon.update(batches[0])
    _close(mon.compute(), O.rankme_official(batches[0]), 1e-10, "after reset")


def test_autocast_stays_outside():
    """Under bf16 autocast the functions compute as for their float32 inputs (convention 18)."""
    z, w = _z(12, 7, 1, dtype=torch.float32), _z(12, 7, 2, dtype=torch.float32)
    lab = _labels(12, 3)
    calls = [lambda: dk.coding_rate_loss(z), lambda: dk.rankme(z), lambda: dk.singular_values(z),
             lambda: dk.mcr2_loss(z, lab), lambda: dk.mec_loss(z, w)]
    plain = [c() for c in calls]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = [c() for c in calls]
    for a, b in zip(auto, plain):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_no_tf32_gram(monkeypatch):
    """A float32 CUDA Gram is accumulated in float64 while TF32 is enabled (never TF32); the flag
    itself is only read. CUDA tensors are stood in for by their dtype and device."""
    import types

    cuda32 = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    for precision, expected in (("tf32", torch.float64), ("ieee", torch.float32), ("none", torch.float32)):
        monkeypatch.setattr(torch.backends.cuda, "matmul", types.SimpleNamespace(fp32_precision=precision))
        assert RS.accumulation_dtype(cuda32) == expected, precision
    assert RS.accumulation_dtype(_z(2, 2, dtype=torch.float32)) == torch.float32  # CPU: no TF32
    bf16 = types.SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda"))
    assert RS.accumulation_dtype(bf16) == torch.float32  # tensor cores, float32 accumulation


# --------------------------------------------------------------------------------------------
# docs/spec.md §5 under real processes (gloo, CPU); the pattern of tests/test_distributed.py

N_LOCAL, D_IN = 4, 5


def _dist_cases():
    """(name, strategy or None, embedding width D, fn(z1, z2, labels, gather) -> 0-dim)."""
    c = []
    for strat in ("gather", "allreduce"):
        for d in (6, 20):  # D < W·N (dimension side by "auto") and D > W·N (sample side)
            c += [
                (f"tcr-{d}-{strat}", strat, d, lambda a, b, y, g: dk.coding_rate_loss(a, 0.3, gather_distributed=g)),
                (f"rankme-{d}-{strat}", strat, d, lambda a, b, y, g: dk.rankme(a, gather_distributed=g)),
                (f"sv-{d}-{strat}", strat, d,
                 lambda a, b, y, g: _weighted(dk.singular_values(a, gather_distributed=g))),
                (f"mec-{d}-{strat}", strat, d, lambda a, b, y, g: dk.mec_loss(a, b, 2.0, 4, gather_distributed=g)),
                (f"mcr2-{d}-{strat}", strat, d, lambda a, b, y, g: dk.mcr2_loss(a, y, 0.4, 0.8, gather_distributed=g)),
            ]
        c.append((f"tcr-sample-forced-{strat}", strat, 6,
                  lambda a, b, y, g: dk.coding_rate_loss(a, 0.3, side="sample", gather_distributed=g)))
        c.append((f"mec-dimension-forced-{strat}", strat, 20,
                  lambda a, b, y, g: dk.mec_loss(a, b, 2.0, 3, side="dimension", gather_distributed=g)))
    return c


def _weighted(s):
    return (s * torch.linspace(1, 2, s.numel(), dtype=s.dtype)).sum()


def _model(d, seed=0):
    return mlp(D_IN, d, seed)


def _data(world):
    g = torch.Generator().manual_seed(4321 + world)
    x1 = torch.randn(world * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(world * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (world * N_LOCAL,), generator=g)
    return x1, x2, y


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    x1, x2, y = _data(world)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    results = {}
    for name, strat, d, fn in _dist_cases():
        os.environ["DUALITY_KERNELS_DIST_STRATEGY"] = strat
        model = torch.nn.parallel.DistributedDataParallel(_model(d))
        loss = fn(model(x1[sl]), model(x2[sl]), y[sl], True)
        loss.backward()
        results[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
        os.environ.pop("DUALITY_KERNELS_DIST_STRATEGY", None)
    mon = dk.RankMeMonitor(max_samples=3 * world, gather_distributed=True)
    for step in range(3):
        mon.update(_model(6)(x1[sl] + step).detach())
    results["monitor"] = (mon.compute(), [])
    save_rank(out_dir, rank, results)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_equals_global_batch(world):
    ranks = rank_results(_worker, world)
    x1, x2, y = _data(world)
    for name, _, d, fn in _dist_cases():
        model = _model(d)
        loss = fn(model(x1), model(x2), y, False)
        loss.backward()
        assert_matches_global(name, [r[name][0] for r in ranks], [r[name][1] for r in ranks], loss, model,
                              rtol_grad=1e-9)
    # the monitor holds the last 3·W rows of the global batches: the last step's, all ranks
    m = _model(6)
    last = torch.cat([m(x1[r * N_LOCAL:(r + 1) * N_LOCAL] + 2) for r in range(world)])[-3 * world:].detach()
    for r in range(world):
        torch.testing.assert_close(ranks[r]["monitor"][0], O.rankme_official(last), rtol=1e-10, atol=1e-10)
