"""Triton log-sum-exp kernels (duality_kernels/ops/triton/lse.py) against the reference.

On a machine without a GPU they run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on CPU tensors in float32 and float64; the tests marked ``cuda`` repeat the
comparisons on the GPU in fp32 (both matmul precisions), bf16 and fp16.

Accuracy rule (DESIGN convention 5): truth = the reference in float64, eager = the reference in
the test dtype; max|kernel − truth| ≤ 2·max|eager − truth| + 1e-6 for values, 3× for gradients.
The 1e-6 is relative to max(1, max|truth|): a sum over many anchors is far above 1, and one
rounding of it exceeds 1e-6 while the eager run can happen to round exactly.
"""

import math

import pytest
import torch

import duality_kernels as dk
from duality_kernels import reference as R

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# N = 2; 2N just above (17 → 34 rows) and just below (31 → 62) the interpreter's 32-row blocks;
# D just off a block multiple (33), N < D and N > D, primes.
SHAPES = [(2, 3), (17, 33), (31, 70), (37, 20)]
DTYPES = [torch.float32, torch.float64]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_against_reference(fn, ref, shape, dtype, device="cpu", seed=0, grad_factor=3.0, slack=1e-6,
                            value_factor=2.0):
    """Values and gradients of ``fn(z1, z2)`` (our kernel, in ``dtype``) against ``ref(z1, z2)``."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2)]
    truth_in = [b.to(device).requires_grad_() for b in base]
    eager_in = [b.to(device, dtype).requires_grad_() for b in base]
    ours_in = [b.to(device, dtype).requires_grad_() for b in base]
    truth, eager, ours = ref(*truth_in), ref(*eager_in), fn(*ours_in)
    assert ours.shape == truth.shape and ours.dtype == R.compute_dtype(dtype)
    e_ours, e_eager = _err(ours, truth), _err(eager, truth)
    assert e_ours <= value_factor * e_eager + slack * max(1.0, truth.abs().max().item()), f"value: kernel err {e_ours:.3g}, eager err {e_eager:.3g}"
    w = torch.randn(truth.shape, generator=g, dtype=torch.float64).to(device)
    gt = torch.autograd.grad((truth * w).sum(), truth_in)
    ge = torch.autograd.grad((eager * w.to(eager.dtype)).sum(), eager_in)
    go = torch.autograd.grad((ours * w.to(ours.dtype)).sum(), ours_in)
    for i, (a, b, t) in enumerate(zip(go, ge, gt)):
        assert a.dtype == dtype
        e_ours, e_eager = _err(a, t), _err(b, t)
        assert e_ours <= grad_factor * e_eager + slack * max(1.0, t.abs().max().item()), (
            f"grad z{i + 1}: kernel err {e_ours:.3g}, eager err {e_eager:.3g}")


def _ntxent(t, sim, norm, red, backend):
    return lambda a, b: dk.ntxent_loss(a, b, t, sim, norm, red, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalization", ["l2", "center_l2", "dim_std"])
@pytest.mark.parametrize("similarity", ["dot", "abs", "square"])
def test_ntxent_terms(similarity, normalization, shape, dtype):
    """reduction="none": every anchor's term and its gradient, every mode (SPEC §4)."""
    check_against_reference(_ntxent(0.3, similarity, normalization, "none", "triton"),
                            _ntxent(0.3, similarity, normalization, "none", "torch"), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("similarity", ["dot", "abs", "square"])
def test_dcl_terms(similarity, shape, dtype):
    check_against_reference(lambda a, b: dk.dcl_loss(a, b, 0.2, similarity, "none", backend="triton"),
                            lambda a, b: dk.dcl_loss(a, b, 0.2, similarity, "none", backend="torch"),
                            shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_infonce_terms(shape, dtype):
    check_against_reference(lambda a, b: dk.infonce_loss(a, b, 0.2, "none", backend="triton"),
                            lambda a, b: dk.infonce_loss(a, b, 0.2, "none", backend="torch"), shape, dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ntxent", "dcl", "infonce"])
def test_reductions(loss, reduction):
    fns = {
        "ntxent": lambda be: lambda a, b: dk.ntxent_loss(a, b, 0.5, "square", "center_l2", reduction, backend=be),
        "dcl": lambda be: lambda a, b: dk.dcl_loss(a, b, 0.5, "dot", reduction, backend=be),
        "infonce": lambda be: lambda a, b: dk.infonce_loss(a, b, 0.5, reduction, backend=be),
    }[loss]
    check_against_reference(fns("triton"), fns("torch"), (19, 40), torch.float32)


def _vicreg_lse(name, backend, term=None, temperature=0.1):
    fn = getattr(dk, name)

    def run(a, b):
        loss, terms = fn(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, temperature, return_terms=True, backend=backend)
        return loss if term is None else terms[term]

    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["vicreg_exp_loss", "vicreg_ctr_loss"])
def test_vicreg_lse(name, shape, dtype):
    check_against_reference(_vicreg_lse(name, "triton"), _vicreg_lse(name, "torch"), shape, dtype)


@pytest.mark.parametrize("name", ["vicreg_exp_loss", "vicreg_ctr_loss"])
def test_vicreg_lse_covariance_term_alone(name):
    """return_terms: the log-sum-exp term itself is differentiable through the kernel."""
    check_against_reference(_vicreg_lse(name, "triton", "covariance", 0.05),
                            _vicreg_lse(name, "torch", "covariance", 0.05), (23, 29), torch.float32)


def test_low_temperature_is_stable():
    """Temperature 0.01: logits up to 100 (l2 rows); the online max keeps exp() finite."""
    for sim in ("dot", "square"):
        check_against_reference(_ntxent(0.01, sim, "l2", "none", "triton"),
                                _ntxent(0.01, sim, "l2", "none", "torch"), (33, 16), torch.float32)
    check_against_reference(lambda a, b: dk.infonce_loss(a, b, 0.01, "none", backend="triton"),
                            lambda a, b: dk.infonce_loss(a, b, 0.01, "none", backend="torch"),
                            (33, 16), torch.float32)


def test_zero_row_and_nan_propagate_like_the_reference():
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    z1[2] = 0.0  # l2n of a zero row is zero (eps in the denominator): no NaN, its Jacobian is 1/eps·I
    for fn in (dk.ntxent_loss, dk.infonce_loss):
        z = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
        ours = fn(*z, 0.5, reduction="none", backend="triton")
        ref = fn(z1, z2, 0.5, reduction="none", backend="torch")
        torch.testing.assert_close(ours, ref)
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(ours.sum(), z))
    z1[0, 0] = float("nan")
    for fn in (dk.ntxent_loss, dk.infonce_loss):
        ours = fn(z1, z2, 0.5, reduction="none", backend="triton")
        ref = fn(z1, z2, 0.5, reduction="none", backend="torch")
        assert torch.equal(torch.isnan(ours), torch.isnan(ref)), (ours, ref)


def test_scales_on_the_dot_tile(monkeypatch):
    """The bf16/fp16 placement of the l2 scales (on the fp32 dot tile, SCALE_ROWS=2), run here in
    float32/float64 because the interpreter cannot run bf16."""
    from duality_kernels.ops.triton import lse

    monkeypatch.setattr(lse, "_LOAD_SCALE_DTYPES", ())
    for dtype in DTYPES:
        check_against_reference(_ntxent(0.3, "square", "center_l2", "none", "triton"),
                                _ntxent(0.3, "square", "center_l2", "none", "torch"), (17, 33), dtype)
        check_against_reference(lambda a, b: dk.infonce_loss(a, b, 0.3, "none", backend="triton"),
                                lambda a, b: dk.infonce_loss(a, b, 0.3, "none", backend="torch"), (31, 70), dtype)


def test_noncontiguous_inputs():
    z1 = torch.randn(40, 18)[:, ::2]
    z2 = torch.randn(9, 40).t()
    for fn in (dk.ntxent_loss, dk.infonce_loss, dk.vicreg_exp_loss):
        torch.testing.assert_close(fn(z1, z2, backend="triton"), fn(z1, z2, backend="torch"))


def test_opcheck():
    from duality_kernels.ops.triton import lse

    u = torch.randn(10, 7, dtype=torch.float64, requires_grad=True)
    for args in ((0.5, True, 5, True, False, 2), (0.5, False, 0, True, False, 0), (0.3, True, 5, True, True, 1)):
        torch.library.opcheck(lse.gram_lse_fwd, (u, *args))
        terms, lse_, rinv, keep = lse.gram_lse_fwd(u.detach(), *args)
        torch.library.opcheck(lse.gram_lse_bwd, (u.detach(), rinv, keep, lse_, torch.randn_like(terms), *args))
    u1, u2 = (torch.randn(6, 9, dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.library.opcheck(lse.cross_lse_fwd, (u1, u2, 0.2))
    terms, lse_, rinv, keep = lse.cross_lse_fwd(u1.detach(), u2.detach(), 0.2)
    torch.library.opcheck(lse.cross_lse_bwd, (u1.detach(), u2.detach(), rinv, keep, lse_,
                                              torch.randn_like(terms), 0.2))


def _compile_equal(fn, z1, z2, backend):
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    out_c, out_e = compiled(a1, a2), fn(b1, b2)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(torch.autograd.grad(out_c, (a1, a2)), torch.autograd.grad(out_e, (b1, b2)))


COMPILE_FNS = {
    "ntxent": lambda a, b: dk.ntxent_loss(a, b, 0.2, "abs", "center_l2", backend="triton"),
    "dcl": lambda a, b: dk.dcl_loss(a, b, 0.2, backend="triton"),
    "infonce": lambda a, b: dk.infonce_loss(a, b, 0.2, backend="triton"),
    "vicreg_exp": lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton"),
    "vicreg_ctr": lambda a, b: dk.vicreg_ctr_loss(a, b, backend="triton"),
}


@pytest.mark.parametrize("name", ["ntxent", "infonce", "vicreg_exp"])
def test_compile_fullgraph(name):
    """torch.compile(fullgraph=True) traces the loss (custom ops only, no graph break)."""
    torch._dynamo.reset()
    _compile_equal(COMPILE_FNS[name], torch.randn(12, 20), torch.randn(12, 20), "aot_eager")


# ------------------------------------------------------------------------------------------
# GPU (run by benchmarks/gpu_check.sh)

GPU_SHAPES = [(2, 3), (127, 257), (1000, 96), (300, 1030)]


def _bf16_check(fn, ref, shape, dtype):
    # bf16/fp16: the backward's probabilities enter the tensor-core dot in the input dtype (as in
    # flash-attention), so allow rounding of the input dtype on top of the eager error.
    check_against_reference(fn, ref, shape, dtype, device="cuda", slack=2e-2, grad_factor=4.0)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["highest", "high"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_fp32(shape, precision):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        slack = 1e-6 if precision == "highest" else 2e-3  # TF32: 10-bit mantissa products
        # every mode on one shape, two on the others (each mode is a kernel compile on the GPU)
        modes = [(s, n) for s in ("dot", "abs", "square") for n in ("l2", "center_l2", "dim_std")]
        if shape != GPU_SHAPES[1]:
            modes = [("dot", "l2"), ("square", "center_l2")]
        for sim, norm in modes:
            check_against_reference(_ntxent(0.1, sim, norm, "none", "triton"),
                                    _ntxent(0.1, sim, norm, "none", "torch"), shape, torch.float32,
                                    device="cuda", slack=slack)
        check_against_reference(lambda a, b: dk.dcl_loss(a, b, 0.1, "dot", "none", backend="triton"),
                                lambda a, b: dk.dcl_loss(a, b, 0.1, "dot", "none", backend="torch"),
                                shape, torch.float32, device="cuda", slack=slack)
        check_against_reference(lambda a, b: dk.infonce_loss(a, b, 0.1, "none", backend="triton"),
                                lambda a, b: dk.infonce_loss(a, b, 0.1, "none", backend="torch"),
                                shape, torch.float32, device="cuda", slack=slack)
        for name in ("vicreg_exp_loss", "vicreg_ctr_loss"):
            check_against_reference(_vicreg_lse(name, "triton"), _vicreg_lse(name, "torch"), shape,
                                    torch.float32, device="cuda", slack=slack)
    finally:
        torch.set_float32_matmul_precision(previous)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_half(shape, dtype):
    for sim in ("dot", "square"):
        _bf16_check(_ntxent(0.1, sim, "l2", "none", "triton"), _ntxent(0.1, sim, "l2", "none", "torch"),
                    shape, dtype)
    _bf16_check(lambda a, b: dk.dcl_loss(a, b, 0.1, "dot", "none", backend="triton"),
                lambda a, b: dk.dcl_loss(a, b, 0.1, "dot", "none", backend="torch"), shape, dtype)
    _bf16_check(lambda a, b: dk.infonce_loss(a, b, 0.1, "none", backend="triton"),
                lambda a, b: dk.infonce_loss(a, b, 0.1, "none", backend="torch"), shape, dtype)


@cuda
@pytest.mark.cuda
def test_gpu_bf16_temperature_001_is_finite():
    z1, z2 = (torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    for fn in (lambda: dk.ntxent_loss(z1, z2, 0.01, backend="triton"),
               lambda: dk.infonce_loss(z1, z2, 0.01, backend="triton")):
        loss = fn()
        g1, g2 = torch.autograd.grad(loss, (z1, z2))
        assert torch.isfinite(loss) and torch.isfinite(g1).all() and torch.isfinite(g2).all()


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(COMPILE_FNS))
def test_gpu_compile_fullgraph(name):
    torch._dynamo.reset()
    z1, z2 = torch.randn(256, 128, device="cuda"), torch.randn(256, 128, device="cuda")
    _compile_equal(COMPILE_FNS[name], z1, z2, "inductor")


@cuda
@pytest.mark.cuda
def test_gpu_ntxent_memory_is_linear_in_n():
    """NT-Xent at N=16384, D=256 bf16: no 2N×2N buffer (that would be 2 GB in bf16, 4 GB in fp32)."""
    n, d = 16384, 256
    z1, z2 = (torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = dk.ntxent_loss(z1, z2, 0.1, backend="triton")
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 64 * 2**20, f"peak extra memory {extra / 2**20:.1f} MB > 64 MB"
    assert math.isfinite(loss.item())


# ------------------------------------------------------------------------------------------
# gather_distributed=True (SPEC §5): this rank's anchors against every rank's keys


class FakeRanks:
    """A Context stand-in for rank ``rank`` of ``world``: gather returns the global batch, whose
    slice the rank's own input is (so gradients reach the global leaves either way)."""

    active = True

    def __init__(self, rank, world, pairs):
        self.rank, self.world, self._global = rank, world, {id(local): g for local, g in pairs}

    def gather(self, x):
        return self._global[id(x)]


DIST_CASES = [("ntxent", "dot", "l2"), ("ntxent", "abs", "center_l2"), ("ntxent", "square", "dim_std"),
              ("dcl", "dot", "l2"), ("dcl", "square", "l2"), ("infonce", "dot", "l2")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DIST_CASES, ids=["-".join(c) for c in DIST_CASES])
def test_gathered_anchor_terms(case, dtype):
    """Every rank's terms and their gradients w.r.t. the global batch equal the reference's."""
    from duality_kernels.ops.triton import lse

    loss, sim, norm = case
    world, n, d = 3, 5, 17
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(world * n, d, generator=g, dtype=torch.float64) for _ in range(2)]

    def run(fn, dt, rank):
        G = [b.to(dt).requires_grad_() for b in base]
        z1, z2 = G[0][rank * n:(rank + 1) * n], G[1][rank * n:(rank + 1) * n]
        ctx = FakeRanks(rank, world, [(z1, G[0]), (z2, G[1])])
        terms = fn(z1, z2, ctx)
        w = torch.linspace(-1.0, 2.0, terms.numel(), dtype=torch.float64).to(terms.dtype)
        return terms, torch.autograd.grad((terms * w).sum(), G)

    ref = {"ntxent": lambda a, b, c: R.ntxent(a, b, 0.3, sim, norm, "none", ctx=c),
           "dcl": lambda a, b, c: R.dcl(a, b, 0.3, sim, "none", ctx=c),
           "infonce": lambda a, b, c: R.infonce(a, b, 0.3, "none", ctx=c)}[loss]
    ours = {"ntxent": lambda a, b, c: lse.ntxent_terms(a, b, 0.3, sim, norm, c),
            "dcl": lambda a, b, c: lse.dcl_terms(a, b, 0.3, sim, c),
            "infonce": lambda a, b, c: lse.infonce_terms(a, b, 0.3, c)}[loss]
    for rank in range(world):
        t_truth, g_truth = run(ref, torch.float64, rank)
        t_eager, g_eager = run(ref, dtype, rank)
        t_ours, g_ours = run(ours, dtype, rank)
        assert _err(t_ours, t_truth) <= 2 * _err(t_eager, t_truth) + 1e-6, (rank, _err(t_ours, t_truth))
        for a, b, t in zip(g_ours, g_eager, g_truth):
            assert _err(a, t) <= 3 * _err(b, t) + 1e-6, (rank, _err(a, t), _err(b, t))


def test_gathered_opcheck():
    from duality_kernels.ops.triton import lse

    anchors = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    for args in ((0.5, True, 3, 6, 3, True, 1, False, 2), (0.5, True, 6, 6, 6, False, 2, False, 0)):
        torch.library.opcheck(lse.anchor_lse_fwd, (anchors, keys, *args))
