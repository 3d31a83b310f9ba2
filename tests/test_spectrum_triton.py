"""The Triton backend of coding_rate_loss, mcr2_loss, singular_values and rankme (docs/spec.md §7.6-7.7,
ops/triton/spectral.py),
under the Triton interpreter on CPU tensors: values and gradients against the torch reference and
the official transcriptions (duality_kernels/testing/official_spectrum.py) in float64 on both
sides and odd shapes, float32 by docs/design.md convention 5, half inputs, the custom ops
(opcheck, torch.compile), the drop-in Functions, errors, and the gathered form under gloo.
"""


import pytest
import torch

import duality_kernels as dk
from duality_kernels import BackendUnavailableError, _backend, _cost
from duality_kernels.ops import registry
from duality_kernels.testing import official_spectrum as O

from . import accuracy as A
from .dist_util import assert_cases_match_global, init_gloo, mlp, rank_results, save_rank
from .test_spectrum import _labels, _z

T = pytest.importorskip("duality_kernels.ops.triton.spectral")

SIDES = ("sample", "dimension")
SHAPES = [(5, 9), (9, 5), (7, 7), (1, 6), (6, 1)]


def _close(a, b, rtol, msg):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = max(b.abs().max().item() if b.numel() else 0.0, 1.0)
    assert err <= rtol * scale, f"{msg}: max error {err:.3e}, scale {scale:.3e}"


def _run(fn, z):
    """(outputs, d(Σ w·outputs)/dz) for fixed weights w per output."""
    x = z.detach().clone().requires_grad_()
    outs = fn(x)
    outs = outs if isinstance(outs, (tuple, list)) else [outs]
    total = sum((o * (1.0 + 0.37 * i)).sum() for i, o in enumerate(outs))
    return [o.detach() for o in outs], torch.autograd.grad(total, x)[0]


def _agree(fn, ref, z, rtol, msg):
    (outs, g), (routs, rg) = _run(fn, z), _run(ref, z)
    for i, (o, r) in enumerate(zip(outs, routs)):
        _close(o, r, rtol, f"{msg}: output {i}")
    _close(g, rg, rtol, f"{msg}: gradient")


def _mcr2_terms(**kw):
    def fn(z, labels, backend):
        loss, terms = dk.mcr2_loss(z, labels, return_terms=True, backend=backend, **kw)
        return loss, terms["R"], terms["Rc"]
    return fn


@pytest.mark.parametrize("n,d", SHAPES)
def test_float64_equals_reference_and_official(n, d):
    z = _z(n, d, seed=n * 10 + d)
    lab = _labels(n, 3, seed=n)
    for side in SIDES + ("auto",):
        for eps in (0.2, 0.05):
            tcr = [lambda a, b=b: dk.coding_rate_loss(a, eps, side=side, backend=b) for b in ("triton", "torch")]
            _agree(tcr[0], tcr[1], z, 1e-12, f"tcr {side} eps={eps}")
            _agree(tcr[0], lambda a: O.tcr_official(a, eps), z, 1e-10, f"tcr official {side}")
        # an empty class (num_classes above the labels present) and classes of one row at small N
        for kw in ({}, {"num_classes": 5, "gamma": 0.7, "eps": 0.35}):
            ours = _mcr2_terms(side=side, **kw)
            _agree(lambda a: ours(a, lab, "triton"), lambda a: ours(a, lab, "torch"), z, 1e-12, f"mcr2 {side} {kw}")
            official = [kw.get(k, v) for k, v in (("eps", 0.5), ("gamma", 1.0), ("num_classes", None))]
            _agree(lambda a: ours(a, lab, "triton"), lambda a: O.mcr2_official(a, lab, *official), z, 1e-10,
                   f"mcr2 official {side} {kw}")


@pytest.mark.parametrize("n,d", SHAPES)
def test_spectrum_float64_equals_reference_and_official(n, d):
    z = _z(n, d, seed=n * 7 + d)
    weights = torch.linspace(1.0, 2.0, min(n, d), dtype=torch.float64)
    for side in SIDES + ("auto",):
        sv = [lambda a, b=b: dk.singular_values(a, side=side, backend=b) * weights for b in ("triton", "torch")]
        _agree(sv[0], sv[1], z, 1e-12, f"singular values {side}")
        _agree(sv[0], lambda a: torch.linalg.svdvals(a) * weights, z, 1e-10, f"svdvals {side}")
        for eps in (1e-7, 1e-2):
            rk = [lambda a, b=b: dk.rankme(a, eps, side=side, backend=b) for b in ("triton", "torch")]
            _agree(rk[0], rk[1], z, 1e-12, f"rankme {side} eps={eps}")
            _agree(rk[0], lambda a: O.rankme_official(a, eps), z, 1e-10, f"rankme official {side}")
    with torch.no_grad():  # no eigenvectors kept: the same values
        _close(dk.rankme(z, backend="triton"), O.rankme_official(z), 1e-10, "rankme without grad")


def test_spectrum_float32_ill_conditioned_and_nan():
    """float32 against float64 (the reference's float64 retry for a spread spectrum), a zero singular
    value's gradient, and NaN reaching the output (docs/spec.md §6)."""
    z, _ = A.views(40, 12, torch.float32, seed=3, device="cpu")
    A._check(lambda a: dk.rankme(a, backend="triton"), O.rankme_official, [z])
    low = _z(9, 6, seed=4, dtype=torch.float32)
    low[:, 3] = low[:, 0] * 1e-3  # σ_min/σ_max far below SQRT_EIG_MIN_RATIO: float64 retry
    _agree(lambda a: dk.singular_values(a, backend="triton"), lambda a: dk.singular_values(a, backend="torch"), low,
           1e-6, "float64 retry")
    _agree(lambda a: dk.rankme(a, backend="triton"), lambda a: dk.rankme(a, backend="torch"), low, 1e-6, "rankme")
    rank1 = torch.ones(5, 3, dtype=torch.float64)  # σ = (√15, 0, 0)
    _agree(lambda a: dk.singular_values(a, backend="triton"), lambda a: dk.singular_values(a, backend="torch"),
           rank1, 1e-12, "zero singular values")
    bad = _z(5, 3)
    bad[1, 2] = float("nan")
    assert torch.isnan(dk.singular_values(bad, backend="triton")).all()
    assert torch.isnan(dk.rankme(bad, backend="triton"))


def test_mcr2_singleton_and_empty_classes_on_every_class_side():
    z = _z(11, 6, seed=3)
    lab = torch.tensor([0, 0, 0, 0, 0, 0, 0, 2, 4, 4, 6])  # sizes 7, 1, 2, 1; classes 1, 3, 5 empty
    for side in SIDES + ("auto",):
        ours = _mcr2_terms(side=side, num_classes=8, gamma=1.3)
        _agree(lambda a: ours(a, lab, "triton"), lambda a: O.mcr2_official(a, lab, 0.5, 1.3, 8), z, 1e-10,
               f"mcr2 {side}")
    one = _z(1, 4, seed=5)  # N = 1: one class of one row
    _agree(lambda a: dk.mcr2_loss(a, torch.tensor([0]), backend="triton"),
           lambda a: O.mcr2_official(a, torch.tensor([0]))[0], one, 1e-10, "mcr2 N=1")


@pytest.mark.parametrize("n,d", [(16, 24), (40, 12)])
def test_float32_accuracy_rule(n, d):
    """docs/design.md convention 5 against the official code's own fp32 error (truth: float64), on
    the cheaper side ("auto"): the other one adds rounding noise to its max(N, D) − min(N, D) null
    directions, as the torch reference's does (tested in float64 above)."""
    z, _ = A.views(n, d, torch.float32, seed=n + d, device="cpu")
    lab = _labels(n, 4, seed=d)
    A._check(lambda a: dk.coding_rate_loss(a, backend="triton"), O.tcr_official, [z])
    A._check(lambda a: dk.coding_rate_loss(a, 0.05, backend="triton"), lambda a: O.tcr_official(a, 0.05), [z])
    A._check(lambda a: dk.mcr2_loss(a, lab, backend="triton"), lambda a: O.mcr2_official(a, lab)[0], [z])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    """float32 results, gradients in the input dtype, against float64 on the same rounded values."""
    z = _z(12, 7, 11, dtype=dtype)
    lab = _labels(12, 3)
    rtol = 8e-3 if dtype == torch.bfloat16 else 1e-3
    for fn, ref in ((lambda a: dk.coding_rate_loss(a, backend="triton"), O.tcr_official),
                    (lambda a: dk.mcr2_loss(a, lab, backend="triton"), lambda a: O.mcr2_official(a, lab)[0])):
        x = z.clone().requires_grad_()
        out = fn(x)
        out.backward()
        assert out.dtype == torch.float32 and x.grad.dtype == dtype
        A._check_low_precision(fn, ref, [z], rtol)


def test_custom_ops_opcheck():
    z = _z(6, 9, seed=1).requires_grad_()
    for side in SIDES:
        torch.library.opcheck(T.coding_rate_fwd, (z, 0.3, side))
        loss, chol = T.coding_rate_fwd(z.detach(), 0.3, side)
        torch.library.opcheck(T.coding_rate_bwd, (z.detach(), chol, torch.ones((), dtype=z.dtype), 0.3, side))
    for side in SIDES:
        for args in ((side, 0.0, False, True), (side, 1e-3, True, True), (side, 1e-3, True, False)):
            torch.library.opcheck(T.rankme_fwd, (z, *args))
        vec, coef, sigma = T.rankme_fwd(z.detach(), side, 1e-3, True, True)[1:]
        torch.library.opcheck(T.rankme_bwd, (z.detach(), vec, coef, sigma, torch.ones((), dtype=z.dtype), side, True))
    index, *plan = T.class_plan(torch.tensor([0, 1, 1, 0, 2, 1]), 4, 9, "auto", z.device)
    args = (*plan, 0.4, 1.2, "sample")
    torch.library.opcheck(T.mcr2_fwd, (z, index, *args))
    flat = T.mcr2_fwd(z.detach(), index, *args)[3]
    g = [torch.tensor(v, dtype=z.dtype) for v in (1.0, 0.5, -0.25)]
    torch.library.opcheck(T.mcr2_bwd, (z.detach(), index, flat, *g, *args))


def test_compile_fullgraph_and_drop_in_functions():
    z = _z(7, 5, seed=2)
    lab = torch.tensor([0, 1, 1, 2, 0, 0, 1])
    plan = T.class_plan(lab, 3, 5, "auto", z.device)

    def both(a):
        loss, r, rc = T.MCR2Function.apply(a, *plan, 0.5, 0.9, "dimension")
        sv = T.SingularValuesFunction.apply(a, "sample", 0.0, False, True)[0]
        rk = T.RankMeFunction.apply(a, "dimension", 1e-3, True, True)[0]
        return T.CodingRateFunction.apply(a, 0.2, "sample")[0] + loss + 0.3 * r - 0.2 * rc + sv[0] - sv[-1] + rk

    def public(a):
        loss, terms = dk.mcr2_loss(a, lab, gamma=0.9, side="dimension", return_terms=True, backend="torch")
        sv = dk.singular_values(a, side="sample", backend="torch")
        return (dk.coding_rate_loss(a, side="sample", backend="torch") + loss + 0.3 * terms["R"] - 0.2 * terms["Rc"]
                + sv[0] - sv[-1] + dk.rankme(a, 1e-3, side="dimension", backend="torch"))

    _agree(both, public, z, 1e-12, "drop-in Functions")
    zt = _z(5, 7, seed=6).T  # a non-contiguous input, through the modules
    _agree(lambda a: dk.CodingRateLoss(0.3, backend="triton")(a) + dk.MCR2Loss(backend="triton")(a, lab),
           lambda a: dk.coding_rate_loss(a, 0.3) + dk.mcr2_loss(a, lab), zt, 1e-12, "modules, transposed input")
    for dynamic in (False, True):
        compiled = torch.compile(lambda a: dk.coding_rate_loss(a, side="dimension", backend="triton"), fullgraph=True,
                                 dynamic=dynamic, backend="aot_eager")
        _agree(compiled, lambda a: dk.coding_rate_loss(a, side="dimension", backend="torch"), z, 1e-12,
               f"compiled tcr, dynamic={dynamic}")
    _agree(torch.compile(both, fullgraph=True, backend="aot_eager"), public, z, 1e-12, "compiled drop-ins")


def test_gradcheck_and_no_double_backward():
    """The closed-form backward against finite differences on both sides (float64); differentiating
    it again raises naming backend="torch" (docs/spec.md §8.5)."""
    z = _z(4, 6, seed=4).requires_grad_()
    lab = torch.tensor([0, 1, 1, 0])
    for side in SIDES:
        torch.autograd.gradcheck(lambda a: dk.coding_rate_loss(a, 0.3, side=side, backend="triton"), (z,))
        torch.autograd.gradcheck(lambda a: dk.mcr2_loss(a, lab, 0.4, 0.8, side=side, return_terms=True,
                                                        backend="triton")[1]["Rc"], (z,))
    (g,) = torch.autograd.grad(dk.coding_rate_loss(z, backend="triton"), z, create_graph=True)
    with pytest.raises(RuntimeError, match="backend='torch'"):
        g.sum().backward()


def test_factorization_failures_are_errors_not_nan():
    z = _z(6, 4)
    z[2, 1] = float("inf")
    for call in (lambda: dk.coding_rate_loss(z, backend="triton"),
                 lambda: dk.mcr2_loss(z, _labels(6, 2), backend="triton"),
                 lambda: T.CodingRateFunction.apply(z, 0.2, "dimension")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()
    big = _z(40, 2, 3, dtype=torch.float32, scale=1e4)  # the reference test's case: finite, beyond float32
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite in torch.float32"):
        dk.coding_rate_loss(big, 1e-6, side="sample", backend="triton")
    assert torch.isfinite(dk.coding_rate_loss(big.double(), 1e-6, side="sample", backend="triton"))


class _NoKernel:
    def __getitem__(self, grid):
        raise AssertionError("a kernel was launched before the arguments were checked")


def test_bad_input_raises_before_any_kernel(monkeypatch):
    monkeypatch.setattr(T, "_logdet_loss_kernel", _NoKernel())
    z = _z(6, 4)
    lab = torch.tensor([0, 1, 2, 0, 1, 1])
    index, shapes, counts, dims = T.class_plan(lab, 3, 4, "auto", z.device)
    cases = [
        (ValueError, "eps must be a finite number > 0, got 0", lambda: dk.coding_rate_loss(z, 0.0, backend="triton")),
        (TypeError, "must be a floating-point", lambda: dk.coding_rate_loss(z > 0, backend="triton")),
        (ValueError, "labels must have shape", lambda: dk.mcr2_loss(z, lab[:4], backend="triton")),
        (ValueError, "labels must be >= 0", lambda: dk.mcr2_loss(z, lab - 1, backend="triton")),
        (ValueError, "gamma must be finite", lambda: dk.mcr2_loss(z, lab, gamma=float("inf"), backend="triton")),
        (ValueError, "side must be one of 'sample', 'dimension'", lambda: T.CodingRateFunction.apply(z, 0.2, "auto")),
        (ValueError, "eps must be a finite number > 0, got -1", lambda: T.coding_rate_fwd(z, -1.0, "sample")),
        (TypeError, "counts must be a list of", lambda: T.MCR2Function.apply(z, index, shapes, counts[:-1], dims, 0.5,
                                                                              1.0, "sample")),
        (ValueError, "counts must hold ints in", lambda: T.MCR2Function.apply(z, index, shapes, [0] * len(counts),
                                                                               dims, 0.5, 1.0, "sample")),
        (ValueError, "index must be a 1-D int64", lambda: T.mcr2_fwd(z, index.int(), shapes, counts, dims, 0.5, 1.0,
                                                                     "sample")),
        (TypeError, "dims must be a list of", lambda: T.mcr2_fwd(z, index, shapes, counts, dims + [True], 0.5, 1.0,
                                                                 "sample")),
        (BackendUnavailableError, "does not implement mec_loss", lambda: dk.mec_loss(z, z, backend="triton")),
        (ValueError, "eps must be a finite number > 0", lambda: dk.rankme(z, 0.0, backend="triton")),
        (TypeError, "vectors must be a bool", lambda: T.RankMeFunction.apply(z, "sample", 1e-7, True, 1)),
        (ValueError, "eps must be a finite number > 0", lambda: T.rankme_fwd(z, "sample", -1.0, True, False)),
    ]
    for exc, pattern, call in cases:
        with pytest.raises(exc, match=pattern):
            call()


def test_auto_keeps_torch_for_the_spectral_family():
    """Family "spectral" is no "auto" row (_cost.auto_order): torch until measured on a GPU."""
    assert {registry.FAMILY[f] for f in ("coding_rate_loss", "mcr2_loss", "singular_values", "rankme")} == {"spectral"}
    assert _cost.auto_order("spectral", "coding_rate_loss", 100, 1024, torch.bfloat16) == ("torch",)
    assert _backend.resolve("auto", "coding_rate_loss", _z(4, 3)) == "torch"
    cap = registry.capability("triton", "mcr2_loss")
    assert cap is not None and cap.gathers and cap.op == "mcr2"


# --------------------------------------------------------------------------------------------
# docs/spec.md §5: the gathered form (rows all-gathered with their gradient, then the op)

N_LOCAL, D_IN = 4, 5


def _dist_cases():
    return {f"{name}-{d}": (d, fn) for d in (6, 20) for name, fn in (
        ("tcr", lambda a, y, g: dk.coding_rate_loss(a, 0.3, gather_distributed=g, backend="triton")),
        ("rankme", lambda a, y, g: dk.rankme(a, gather_distributed=g, backend="triton")),
        ("mcr2", lambda a, y, g: dk.mcr2_loss(a, y, 0.4, 0.8, gather_distributed=g, backend="triton")))}


def _data(world):
    g = torch.Generator().manual_seed(99 + world)
    return (torch.randn(world * N_LOCAL, D_IN, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (world * N_LOCAL,), generator=g))


def _worker(rank, world, init_file, out_dir):
    init_gloo(rank, world, init_file)
    x, y = _data(world)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    results = {}
    for name, (d, fn) in _dist_cases().items():
        model = torch.nn.parallel.DistributedDataParallel(mlp(D_IN, d))
        loss = fn(model(x[sl]), y[sl], True)
        loss.backward()
        results[name] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    save_rank(out_dir, rank, results)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_equals_global_batch(world):
    ranks = rank_results(_worker, world)
    x, y = _data(world)

    def global_loss(case):
        d, fn = case
        model = mlp(D_IN, d)
        return fn(model(x), y, False), model
    assert_cases_match_global(ranks, _dist_cases(), global_loss, rtol_grad=1e-9)


# --------------------------------------------------------------------------------------------
# the GPU half (cuBLAS's half-operand GEMM with a float32 result, cuSOLVER; benchmarks/gpu_check.sh)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_emp_ssl_chunk(dtype):
    """EMP-SSL's chunk (N = 100, D = 1024) and MCR² with ten classes: the Triton backend against the
    torch reference on the same GPU (same accumulation), values and gradients."""
    z = _z(100, 1024, seed=8, dtype=dtype).cuda()
    lab = (torch.arange(100) % 10).cuda()
    for fn in (lambda a, be: dk.coding_rate_loss(a, backend=be),
               lambda a, be: dk.mcr2_loss(a, lab, backend=be)):
        (out, g), (rout, rg) = (_run(lambda a: fn(a, be), z) for be in ("triton", "torch"))
        _close(out[0], rout[0], 1e-5, f"{dtype} value")
        _close(g.float(), rg.float(), 1e-3 if dtype == torch.bfloat16 else 1e-5, f"{dtype} gradient")

