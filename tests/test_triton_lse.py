"""Triton log-sum-exp kernels (duality_kernels/ops/triton/lse.py) against the reference.

On a machine without a GPU they run under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1) on CPU tensors in float32 and float64; the tests marked ``cuda`` repeat the
comparisons on the GPU in fp32 (both matmul precisions), bf16 and fp16. Under the interpreter the
fused backward handles K ≤ 32 and the stripe backward (coefficient tiles + torch.mm) larger K, so
the shapes below take both paths (D = 3, 20 fused; 33, 70 stripes).

Accuracy rule (docs/design.md convention 5): truth = the reference in float64, eager = the reference in
the test dtype; max|kernel − truth| ≤ 2·max|eager − truth| + 1e-6 for values, 3× for gradients.
The 1e-6 is relative to max(1, max|truth|): a sum over many anchors is far above 1, and one
rounding of it exceeds 1e-6 while the eager run can happen to round exactly. float64 takes 1e-12
(accuracy.F64_RTOL) in its place.
"""

import math

import pytest
import torch

import duality_kernels as dk
from duality_kernels import reference as R
from .accuracy import F64_RTOL

CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# numpy warns on the padded lanes of the interpreted kernels (log(0), exp overflow of masked
# logits that are then discarded); the results are checked below
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

triton = pytest.importorskip("triton")
tl = triton.language
from duality_kernels.ops.triton._common import round_tf32  # noqa: E402


@triton.jit
def _round(x_ptr, y_ptr, n, B: tl.constexpr):
    i = tl.program_id(0) * B + tl.arange(0, B)
    tl.store(y_ptr + i, round_tf32(tl.load(x_ptr + i, mask=i < n), 2), mask=i < n)


@triton.jit
def _dots(a_ptr, b_ptr, ab_ptr, ba_ptr, IP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    i = tl.arange(0, BM)
    j = tl.arange(0, BN)
    k = tl.arange(0, BK)
    a = tl.load(a_ptr + i[:, None] * BK + k[None, :])
    b = tl.load(b_ptr + j[:, None] * BK + k[None, :])
    tl.store(ab_ptr + i[:, None] * BN + j[None, :], tl.dot(a, tl.trans(b), input_precision=IP))
    tl.store(ba_ptr + j[:, None] * BM + i[None, :], tl.dot(b, tl.trans(a), input_precision=IP))

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

    def bound(t):  # float64 at 1e-12: an absolute 1e-6 let a kernel computing in float32 pass
        return (F64_RTOL if dtype == torch.float64 else slack) * max(1.0, t.abs().max().item())

    assert e_ours <= value_factor * e_eager + bound(truth), f"value: kernel err {e_ours:.3g}, eager err {e_eager:.3g}"
    w = torch.randn(truth.shape, generator=g, dtype=torch.float64).to(device)
    gt = torch.autograd.grad((truth * w).sum(), truth_in)
    ge = torch.autograd.grad((eager * w.to(eager.dtype)).sum(), eager_in)
    go = torch.autograd.grad((ours * w.to(ours.dtype)).sum(), ours_in)
    for i, (a, b, t) in enumerate(zip(go, ge, gt)):
        assert a.dtype == dtype
        e_ours, e_eager = _err(a, t), _err(b, t)
        assert e_ours <= grad_factor * e_eager + bound(t), (
            f"grad z{i + 1}: kernel err {e_ours:.3g}, eager err {e_eager:.3g}")


def _ntxent(t, sim, norm, red, backend):
    return lambda a, b: dk.ntxent_loss(a, b, t, sim, norm, red, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalization", ["l2", "center_l2", "dim_std"])
@pytest.mark.parametrize("similarity", ["dot", "abs", "square"])
def test_ntxent_terms(similarity, normalization, shape, dtype):
    """reduction="none": every anchor's term and its gradient, every mode (docs/spec.md §4)."""
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
    gen = torch.Generator().manual_seed(3137)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infonce_single_pair_gradient(dtype):
    """N = 1: S is one positive and no negative in either direction, so the loss and its gradients are
    0. The column pass has no negative to take a max over; it once left the max at −inf (NaN dz2)."""
    gen = torch.Generator().manual_seed(71)
    z = [torch.randn(1, 7, generator=gen, dtype=dtype).requires_grad_() for _ in range(2)]
    for be in ("triton", "torch"):
        loss = dk.infonce_loss(*z, 0.2, backend=be)
        grads = torch.autograd.grad(loss, z)
        assert loss.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads), (be, loss, grads)


def test_scales_on_the_dot_tile(monkeypatch):
    """The bf16/fp16 placement of the l2 scales (on the fp32 dot tile, SCALE_ROWS=2), run here in
    float32/float64 because the interpreter cannot run bf16."""
    from duality_kernels.ops.triton.lse import plan

    monkeypatch.setattr(plan, "_TILE_SCALE_DTYPES", tuple(DTYPES))
    for dtype in DTYPES:
        check_against_reference(_ntxent(0.3, "square", "center_l2", "none", "triton"),
                                _ntxent(0.3, "square", "center_l2", "none", "torch"), (17, 33), dtype)
        check_against_reference(lambda a, b: dk.infonce_loss(a, b, 0.3, "none", backend="triton"),
                                lambda a, b: dk.infonce_loss(a, b, 0.3, "none", backend="torch"), (31, 70), dtype)


@pytest.mark.parametrize("staged", [True, False], ids=["staged", "in_registers"])
def test_l2_jacobian_paths(monkeypatch, staged):
    """The fused backward's l2 Jacobian both ways (lse.backward._staged_jacobian): through the fp32/fp64
    output buffer (what fp32 takes) and in registers (what bf16/fp16 take on the GPU), forced here
    in float32/float64. One column: the exact gradient is 0 and the Jacobian's two terms must
    cancel as eager's do (the l2 Jacobian's n·g taken apart from g was 10-130x eager's error)."""
    from duality_kernels.ops.triton.lse import backward

    monkeypatch.setattr(backward, "_staged_jacobian", lambda dtype: staged)
    for dtype in DTYPES:
        for shape in ((17, 20), (40, 1)):
            check_against_reference(_ntxent(0.3, "abs", "center_l2", "none", "triton"),
                                    _ntxent(0.3, "abs", "center_l2", "none", "torch"), shape, dtype)
            check_against_reference(lambda a, b: dk.dcl_loss(a, b, 0.8, "square", "sum", backend="triton"),
                                    lambda a, b: dk.dcl_loss(a, b, 0.8, "square", "sum", backend="torch"), shape, dtype)
        check_against_reference(lambda a, b: dk.infonce_loss(a, b, 0.2, "none", backend="triton"),
                                lambda a, b: dk.infonce_loss(a, b, 0.2, "none", backend="torch"), (31, 20), dtype)


def test_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(5930)
    z1 = torch.randn(40, 18, generator=gen)[:, ::2]
    gen = torch.Generator().manual_seed(9625)
    z2 = torch.randn(9, 40, generator=gen).t()
    for fn in (dk.ntxent_loss, dk.infonce_loss, dk.vicreg_exp_loss):
        torch.testing.assert_close(fn(z1, z2, backend="triton"), fn(z1, z2, backend="torch"))


def test_opcheck():
    """torch.library.opcheck of every op of the family (schema, fakes, autograd registration)."""
    from duality_kernels.ops.triton import lse

    gen = torch.Generator().manual_seed(6185)
    z1, z2 = (torch.randn(5, 7, dtype=torch.float64, requires_grad=True, generator=gen) for _ in range(2))
    for args in ((0.5, "square", "center_l2", "mean"), (0.3, "abs", "dim_std", "none"), (0.4, "dot", "l2", "sum")):
        torch.library.opcheck(lse.ntxent_fwd, (z1, z2, *args))
        out = lse.ntxent_fwd(z1.detach(), z2.detach(), *args)
        gen = torch.Generator().manual_seed(5024)
        torch.library.opcheck(lse.ntxent_bwd, (
            z1.detach(), z2.detach(), *out[1:], out[0].clone().normal_(generator=gen), *args))
    torch.library.opcheck(lse.dcl_fwd, (z1, z2, 0.5, "abs", "mean"))
    out = lse.dcl_fwd(z1.detach(), z2.detach(), 0.5, "abs", "none")
    gen = torch.Generator().manual_seed(450)
    torch.library.opcheck(lse.dcl_bwd, (
        z1.detach(), z2.detach(), *out[1:], out[0].clone().normal_(generator=gen), 0.5, "abs", "none"))
    torch.library.opcheck(lse.infonce_fwd, (z1, z2, 0.2, "mean"))
    out = lse.infonce_fwd(z1.detach(), z2.detach(), 0.2, "none")
    gen = torch.Generator().manual_seed(1976)
    torch.library.opcheck(lse.infonce_bwd, (
        z1.detach(), z2.detach(), *out[1:], out[0].clone().normal_(generator=gen), 0.2, "none"))
    for fwd, bwd in ((lse.vicreg_exp_fwd, lse.vicreg_exp_bwd), (lse.vicreg_ctr_fwd, lse.vicreg_ctr_bwd)):
        w = (25.0, 25.0, 1.0, 1.0, 1e-4, 0.1)
        torch.library.opcheck(fwd, (z1, z2, *w))
        out = fwd(z1.detach(), z2.detach(), *w)
        gen = torch.Generator().manual_seed(4848)
        gs = [torch.randn((), dtype=torch.float64, generator=gen) for _ in range(4)]
        torch.library.opcheck(bwd, (z1.detach(), z2.detach(), *out[4:], *gs, *w))


def _generic_launch(u, w, temperature, normalize, half, drop_positive, transform):
    """Rows of u against themselves through the launchers (prep, forward, backward), as no public
    loss poses it: a positive a ± half or none (half = 0), the l2 scaling or none. -> (terms,
    ∂(Σ w·terms)/∂u)."""
    from duality_kernels.ops.triton.lse import backward, forward, plan, prep

    m = u.shape[0]
    pr = prep._prep(u, u, 1, None, None, norm=normalize)
    lse = torch.empty(3, m, dtype=u.dtype)
    q, term = torch.empty(m, dtype=u.dtype), torch.empty(m, dtype=u.dtype)
    tile = normalize and plan._tile_scaled(u.dtype)
    masks = (half, half, 0, True, plan._POS_PAIR if half else plan._NO_POS, drop_positive, transform)
    r = pr.r if tile else None
    forward._forward(pr.op, pr.op, r, r, 1.0 / temperature, masks, orient=1, lse=lse, q=q, term=term)
    du = torch.empty_like(u)
    side = backward._Side(lse, q, w)
    backward._backward(pr.op, pr.op, pr.r if normalize else None, r, pr.keep if normalize else None, side, side,
                       1.0 / temperature, masks, tile_scale=tile, out=du, orient=1)
    return term, du


def _generic_truth(u, w, temperature, normalize, half, drop_positive, transform):
    """The same terms transcribed in float64 (docs/spec.md §4: the transform applies to the negatives,
    the positive's logit stays s/τ), the gradient by autograd."""
    x = u.detach().double().requires_grad_()
    n = torch.nn.functional.normalize(x, dim=1) if normalize else x
    s = n @ n.T
    t = (s, s.abs(), s * s)[transform] / temperature
    idx = torch.arange(u.shape[0])
    masked = idx[:, None] == idx[None, :]
    if half:
        pos = (idx + half) % (2 * half)
        is_pos = idx[None, :] == pos[:, None]
        logits = t.masked_fill(masked | is_pos, -math.inf)
        if not drop_positive:
            logits = torch.where(is_pos, s / temperature, logits)
        terms = torch.logsumexp(logits, dim=1) - s[idx, pos] / temperature
    else:
        terms = torch.logsumexp(t.masked_fill(masked, -math.inf), dim=1)
    return terms.detach(), torch.autograd.grad((terms * w.double()).sum(), x)[0]


@pytest.mark.parametrize("normalize", [True, False], ids=["l2", "raw"])
@pytest.mark.parametrize("half", [0, 7], ids=["no_positive", "pair"])
def test_generic_problem_through_the_launchers(normalize, half):
    """The masks the public losses do not combine (no positive with the l2 Jacobian, a positive on
    raw rows, every transform), on both backwards (K = 9: fused; K = 40 > the interpreter's 32:
    coefficient stripes), against the float64 transcription."""
    g = torch.Generator().manual_seed(5)
    for k in (9, 40):
        u = torch.randn(14, k, generator=g, dtype=torch.float64)
        w = torch.randn(14, generator=g, dtype=torch.float64)
        for transform in (0, 1, 2):
            for drop in ((False, True) if half else (False,)):
                terms, du = _generic_launch(u, w, 0.4, normalize, half, drop, transform)
                want, want_du = _generic_truth(u, w, 0.4, normalize, half, drop, transform)
                where = (k, transform, drop)
                torch.testing.assert_close(terms, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"{where}: {m}")
                torch.testing.assert_close(du, want_du, rtol=1e-9, atol=1e-9, msg=lambda m: f"{where}: {m}")


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


@pytest.mark.parametrize("name", sorted(COMPILE_FNS))
def test_compile_fullgraph(name):
    """torch.compile(fullgraph=True) traces the loss (custom ops only, no graph break)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4475)
    _compile_equal(COMPILE_FNS[name], torch.randn(12, 20, generator=gen),
                   torch.randn(12, 20, generator=gen), "aot_eager")


# ------------------------------------------------------------------------------------------
# accuracy at the temperatures of the bar (0.02, 0.07, 0.5), every loss, both backward
# paths (D = 20: fused, D = 40: stripes), aligned views (accuracy.views: the positive dominates at
# low temperature, the hard case for 1 − P(positive)) and independent ones


TEMPERATURES = [0.02, 0.07, 0.5]


def _loss_fn(name, t, backend):
    return {
        "ntxent": lambda a, b: dk.ntxent_loss(a, b, t, "dot", "l2", "none", backend=backend),
        "ntxent_abs_center_l2": lambda a, b: dk.ntxent_loss(a, b, t, "abs", "center_l2", "none", backend=backend),
        "ntxent_square_dim_std": lambda a, b: dk.ntxent_loss(a, b, t, "square", "dim_std", "none", backend=backend),
        "dcl": lambda a, b: dk.dcl_loss(a, b, t, "dot", "none", backend=backend),
        "infonce": lambda a, b: dk.infonce_loss(a, b, t, "none", backend=backend),
        "infonce_mean": lambda a, b: dk.infonce_loss(a, b, t, "mean", backend=backend),
        "vicreg_exp": _vicreg_lse("vicreg_exp_loss", backend, temperature=t),
        "vicreg_ctr": _vicreg_lse("vicreg_ctr_loss", backend, temperature=t),
    }[name]


def _check_inputs(fn, ref, z1, z2):
    """docs/design.md convention 5 (accuracy._assert_rule: max errors, 2× values, 3× gradients, slack 1e-6
    plus half an ulp for a 0-dim output), and a statistic without slack that a max over a few
    dominant entries cannot hide or fake: the mean absolute error of every non-scalar output and
    gradient within 2× eager's (interpreter, 2026-12-01: ≤ 1.33 in every case here; before this
    rewrite 27x on NT-Xent's gradient at 0.02)."""
    from .accuracy import _assert_rule

    w = None
    results = []
    for f, dt in ((ref, torch.float64), (ref, torch.float32), (fn, torch.float32)):
        xs = [z.to(dt).requires_grad_() for z in (z1, z2)]
        out = f(*xs)
        if w is None:
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float().double()
        grads = torch.autograd.grad((out.double() * w).sum(), xs)
        results.append([out.detach(), *grads])
    truth, eager, ours = results
    for i, (k, e, t) in enumerate(zip(ours, eager, truth)):
        _assert_rule(f"item {i}", k, e, t, 2 if i == 0 else 3)
        if t.dim():
            mk, me = (k.double() - t).abs().mean().item(), (e.double() - t).abs().mean().item()
            assert mk <= 2 * me + 1e-30, f"item {i}: mean error {mk:.3g} > 2 x eager's {me:.3g}"


LOSSES = ["ntxent", "ntxent_abs_center_l2", "ntxent_square_dim_std", "dcl", "infonce", "infonce_mean", "vicreg_exp",
          "vicreg_ctr"]


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("d", [20, 40])
@pytest.mark.parametrize("name", LOSSES)
def test_temperatures_aligned_views(name, d, temperature):
    """docs/design.md convention 5 at the bar's temperatures, fp32 IEEE, views whose positives dominate."""
    from .accuracy import views

    z1, z2 = views(48, d, torch.float64, 0, "cpu")
    _check_inputs(_loss_fn(name, temperature, "triton"), _loss_fn(name, temperature, "torch"), z1, z2)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("d", [20, 40])
@pytest.mark.parametrize("name", LOSSES)
def test_temperatures_random_views(name, d, temperature):
    g = torch.Generator().manual_seed(1)
    z1, z2 = (torch.randn(48, d, generator=g, dtype=torch.float64) for _ in range(2))
    _check_inputs(_loss_fn(name, temperature, "triton"), _loss_fn(name, temperature, "torch"), z1, z2)


def test_several_stripes(monkeypatch):
    """The stripe backward with several stripes of anchor rows (a 2 KB coefficient buffer)."""
    from duality_kernels.ops.triton.lse import backward

    monkeypatch.setattr(backward, "_STRIPE_BYTES", 2048)
    for name in ("ntxent", "infonce", "vicreg_ctr", "vicreg_exp"):
        check_against_reference(_loss_fn(name, 0.2, "triton"), _loss_fn(name, 0.2, "torch"), (37, 45), torch.float64)


def test_deterministic():
    """No atomics (docs/design.md convention 7): two runs give the same bits, values and gradients."""
    from .accuracy import _check_deterministic

    g = torch.Generator().manual_seed(5)
    z = [torch.randn(29, 37, generator=g) for _ in range(2)]
    _check_deterministic([_loss_fn(n, 0.1, "triton") for n in LOSSES], z)


# ------------------------------------------------------------------------------------------
# TF32 operands rounded to nearest (docs/design.md convention 16)


def _rna_tf32_bits(x):
    """Round-to-nearest-away to TF32 on the bits, in torch: an emulation independent of the
    kernel helper (int64 arithmetic on the magnitude, sign kept; NaN kept)."""
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign = bits & 0x80000000
    mag = bits & 0x7FFFFFFF
    mag = ((mag + 0x1000) >> 13) << 13
    out = (sign | mag).to(torch.int64)
    out = torch.where(out >= 2**31, out - 2**32, out).to(torch.int32).view(torch.float32)
    return torch.where(torch.isnan(x), x, out)


def test_round_tf32_helper_matches_bit_emulation():
    """_common.round_tf32 (RNA=2, the interpreter's branch of the PTX cvt.rna.tf32.f32) against a
    torch emulation on the bits, and, for normal numbers, against the value definition: the
    nearest number with an 11-bit significand, ties away from zero."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, generator=g) * torch.logspace(-30, 30, 3000).float()
    ties = (1.0 + torch.arange(1, 50).float() * 2**-10 + 2**-11) * torch.where(torch.arange(1, 50) % 2 == 0, 1.0, -1.0)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 3.4028235e38, -3.4028235e38,
                            1e-40, -1e-40, 1.17549435e-38, 2**-126 * (1 - 2**-23)])
    x = torch.cat([x, ties, special])
    y = torch.empty_like(x)
    _round[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), B=256)
    ref = _rna_tf32_bits(x)
    same = (y.view(torch.int32) == ref.view(torch.int32)) | (torch.isnan(y) & torch.isnan(ref))
    assert same.all(), (x[~same], y[~same], ref[~same])
    normal = torch.isfinite(x) & (x.abs() >= 1.17549435e-38) & (x.abs() < 3.3e38)
    m, e = torch.frexp(x[normal].double())  # |m| in [0.5, 1): 11 significant bits = m·2^11
    value = torch.ldexp(torch.sign(m) * torch.floor(m.abs() * 2**11 + 0.5), e - 11)
    assert torch.equal(y[normal].double(), value)
    assert (y[normal].view(torch.int32) & 0x1FFF == 0).all()


def test_tf32_operands_are_rounded_in_the_kernels():
    """Under "high" (TF32) the interpreter runs the kernels with their operands rounded as on the
    GPU: NT-Xent and InfoNCE then match a float64 evaluation on the TF32-rounded normalized rows
    (what cuBLAS computes) far closer than they match the unrounded loss."""
    from duality_kernels import reference as R

    g = torch.Generator().manual_seed(2)
    z1, z2 = (torch.randn(24, 20, generator=g) for _ in range(2))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        ours = [dk.ntxent_loss(z1, z2, 0.1, reduction="none", backend="triton"),
                dk.infonce_loss(z1, z2, 0.1, reduction="none", backend="triton")]
    finally:
        torch.set_float32_matmul_precision(previous)
    n1, n2 = (_rna_tf32_bits(R.l2n(z)).double() for z in (z1, z2))
    exact = [R.ntxent(z1.double(), z2.double(), 0.1, "dot", "l2", "none"),
             R.infonce(z1.double(), z2.double(), 0.1, "none")]
    s = torch.cat([n1, n2]) @ torch.cat([n1, n2]).T / 0.1
    s.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    tf32 = [torch.logsumexp(s, 1) - s[torch.arange(2 * n), pos]]
    c = n1 @ n2.T / 0.1
    tf32.append(torch.cat([torch.logsumexp(c, 1) - c.diagonal(), torch.logsumexp(c, 0) - c.diagonal()]))
    for k, t, e in zip(ours, tf32, exact):
        assert _err(k, t) < 2e-5 < _err(e, t), (_err(k, t), _err(e, t))


# ------------------------------------------------------------------------------------------
# drop-in torch.autograd.Function subclasses (docs/design.md convention 2)

FUNCTION_CASES = {
    "ntxent": (lambda L, a, b: L.NTXentFunction.apply(a, b, 0.3, "square", "center_l2", "mean")[0],
               lambda a, b: dk.ntxent_loss(a, b, 0.3, "square", "center_l2", "mean", backend="triton")),
    "ntxent_none": (lambda L, a, b: L.NTXentFunction.apply(a, b, 0.3, "dot", "l2", "none")[0],
                    lambda a, b: dk.ntxent_loss(a, b, 0.3, reduction="none", backend="triton")),
    "dcl": (lambda L, a, b: L.DCLFunction.apply(a, b, 0.2, "abs", "sum")[0],
            lambda a, b: dk.dcl_loss(a, b, 0.2, "abs", "sum", backend="triton")),
    "infonce": (lambda L, a, b: L.InfoNCEFunction.apply(a, b, 0.2, "mean")[0],
                lambda a, b: dk.infonce_loss(a, b, 0.2, backend="triton")),
    "vicreg_exp": (lambda L, a, b: L.VICRegExpFunction.apply(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, 0.1)[0],
                   lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton")),
    "vicreg_ctr": (lambda L, a, b: L.VICRegCtrFunction.apply(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, 0.1)[3],
                   lambda a, b: dk.vicreg_ctr_loss(a, b, return_terms=True, backend="triton")[1]["covariance"]),
}


def test_autograd_function_subclasses_match_the_functions():
    """NTXentFunction.apply & co. (custom ops only) give the same bits as the public functions
    (which take the eager path over the same implementations), values and gradients."""
    from duality_kernels.ops.triton import lse

    from .accuracy import _check_same_bits

    gen = torch.Generator().manual_seed(6325)
    z1, z2 = (torch.randn(10, 7, dtype=torch.float64, generator=gen) for _ in range(2))
    _check_same_bits([(lambda a, b, f=f: f(lse, a, b), g) for f, g in FUNCTION_CASES.values()], z1, z2)


@pytest.mark.parametrize("name", sorted(FUNCTION_CASES))
def test_autograd_function_subclasses_compile_fullgraph(name):
    from duality_kernels.ops.triton import lse

    from .accuracy import _check_compiled

    fn = FUNCTION_CASES[name][0]
    gen = torch.Generator().manual_seed(5696)
    z1, z2 = torch.randn(12, 9, generator=gen), torch.randn(12, 9, generator=gen)
    _check_compiled(lambda a, b: fn(lse, a, b).sum(), z1, z2, "aot_eager")


V_LSE = (25.0, 25.0, 1.0, 1.0, 1e-4, 0.1)  # VICReg-exp/-ctr's defaults: weights, gamma, eps, temperature
# (op, public function, the Function's name, default arguments after the tensors, bad scalars
# by position): the public function takes the same positional arguments
ENTRY_CASES = [
    ("ntxent", dk.ntxent_loss, "NTXentFunction", [0.1, "dot", "l2", "mean"],
     [(0, 0.0), (0, float("nan")), (1, "cosine"), (2, "batch"), (3, "avg"), (0, "0.1")]),
    ("dcl", dk.dcl_loss, "DCLFunction", [0.1, "dot", "mean"], [(0, -1.0), (1, "l2"), (2, None)]),
    ("infonce", dk.infonce_loss, "InfoNCEFunction", [0.1, "mean"], [(0, float("inf")), (1, "max")]),
    ("vicreg_exp", dk.vicreg_exp_loss, "VICRegExpFunction", list(V_LSE),
     [(0, float("nan")), (3, -1.0), (4, -1e-4), (5, 0.0), (5, True)]),
    ("vicreg_ctr", dk.vicreg_ctr_loss, "VICRegCtrFunction", list(V_LSE), [(1, float("inf")), (5, -0.1), (2, "1")]),
]


def test_functions_and_custom_ops_raise_the_public_errors():
    """The drop-in Functions and the forward custom ops raise the public function's exception and
    message for every bad argument, before any kernel runs (the ops' contracts; the same bad calls
    as tests/entry_points.py's for the Gram family, plus one column for VICReg-exp/-ctr)."""
    from duality_kernels.ops.triton import lse

    from .entry_points import _bad_calls, _raised

    gen = torch.Generator().manual_seed(1315)
    z1, z2 = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    checked = 0
    for op, public, function_name, defaults, bad in ENTRY_CASES:
        function = getattr(lse, function_name)
        custom = getattr(torch.ops.duality_kernels, f"{op}_fwd")
        calls = list(_bad_calls(z1, z2, defaults, bad, False)) + [("one column", z1[:, :1], z2[:, :1], list(defaults))]
        for what, a, b, params in calls:
            try:
                public(a, b, *params, backend="triton")
            except (ValueError, TypeError) as exc:
                expected = (type(exc), str(exc))
            else:  # e.g. one row is enough for NT-Xent and InfoNCE
                continue
            assert _raised(lambda: function.apply(a, b, *params)) == expected, (op, what, "Function")
            checked += 1
            on_meta = "meta" in (a.device.type, b.device.type)
            if not on_meta and all(type(p) is type(q) for p, q in zip(params, defaults)):
                # (a value of another Python type is the schema's RuntimeError first)
                assert _raised(lambda: custom(a, b, *params)) == expected, (op, what, "custom op")
                checked += 1
    assert checked >= 60, checked


def test_autograd_function_subclasses_are_deterministic():
    """The drop-in Functions, three calls on the same inputs: the same bits, values and gradients."""
    from duality_kernels.ops.triton import lse

    from .accuracy import _check_deterministic

    g = torch.Generator().manual_seed(6)
    z = [torch.randn(29, 37, generator=g) for _ in range(2)]
    _check_deterministic([lambda a, b, f=f: f(lse, a, b) for f, _ in FUNCTION_CASES.values()], z)


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
        slack = 1e-6  # TF32 included: operands rounded to nearest as cuBLAS does (docs/design.md convention 16)
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
    if shape[0] > 2:  # VICReg-exp/-ctr: centered operands rounded to bf16 for the tensor cores
        for name in ("vicreg_exp_loss", "vicreg_ctr_loss"):
            _bf16_check(_vicreg_lse(name, "triton"), _vicreg_lse(name, "torch"), shape, dtype)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["tf32", "ieee", "bf16"])
def test_gpu_dot_is_symmetric(precision):
    """The property the kernels rely on on the GPU (lse.plan._orient): a tile computed as A·Bᵀ has the
    bits of (B·Aᵀ)ᵀ, whatever the tile shape, so the backward's logits match the forward's."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ip = "ieee" if precision == "ieee" else "tf32"
    for bm, bn in ((64, 64), (128, 64), (64, 32)):
        gen = torch.Generator(device="cuda").manual_seed(1821)
        a = torch.randn(bm, 256, device="cuda", generator=gen).to(dtype)
        gen = torch.Generator(device="cuda").manual_seed(9912)
        b = torch.randn(bn, 256, device="cuda", generator=gen).to(dtype)
        ab = torch.empty(bm, bn, device="cuda")
        ba = torch.empty(bn, bm, device="cuda")
        _dots[(1,)](a, b, ab, ba, IP=ip, BM=bm, BN=bn, BK=256, num_warps=4)
        assert torch.equal(ab, ba.T), (precision, bm, bn, (ab - ba.T).abs().max().item())


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_large_d(dtype):
    """D = 8192 (the stripe backward: coefficient tiles + cuBLAS, no tile recomputed per K chunk)."""
    shape = (192, 8192)
    fns = [(_ntxent(0.1, "dot", "l2", "none", "triton"), _ntxent(0.1, "dot", "l2", "none", "torch")),
           (_vicreg_lse("vicreg_ctr_loss", "triton"), _vicreg_lse("vicreg_ctr_loss", "torch"))]
    for fn, ref in fns:
        if dtype == torch.float32:
            check_against_reference(fn, ref, shape, dtype, device="cuda")
        else:
            _bf16_check(fn, ref, shape, dtype)


@cuda
@pytest.mark.cuda
def test_gpu_bf16_temperature_001_is_finite():
    gen = torch.Generator(device="cuda").manual_seed(9029)
    z1, z2 = (
        torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True, generator=gen)
        for _ in range(2))
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
    gen = torch.Generator(device="cuda").manual_seed(9655)
    z1, z2 = torch.randn(256, 128, device="cuda", generator=gen), torch.randn(256, 128, device="cuda", generator=gen)
    _compile_equal(COMPILE_FNS[name], z1, z2, "inductor")


@cuda
@pytest.mark.cuda
def test_gpu_ntxent_memory_is_linear_in_n():
    """NT-Xent at N=16384, D=256 bf16: no 2N×2N buffer (that would be 2 GB in bf16, 4 GB in fp32)."""
    n, d = 16384, 256
    gen = torch.Generator(device="cuda").manual_seed(375)
    z1, z2 = (
        torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True, generator=gen)
        for _ in range(2))
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
# gather_distributed=True (docs/spec.md §5): this rank's anchors against every rank's keys


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
    from duality_kernels.ops import gathered

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
    ours = {"ntxent": lambda a, b, c: gathered.pair_terms_triton(c, a, b, 0.3, sim, norm, False),
            "dcl": lambda a, b, c: gathered.pair_terms_triton(c, a, b, 0.3, sim, "l2", True),
            "infonce": lambda a, b, c: gathered.infonce_terms_triton(c, a, b, 0.3)}[loss]
    for rank in range(world):
        t_truth, g_truth = run(ref, torch.float64, rank)
        t_eager, g_eager = run(ref, dtype, rank)
        t_ours, g_ours = run(ours, dtype, rank)
        assert _err(t_ours, t_truth) <= 2 * _err(t_eager, t_truth) + 1e-6, (rank, _err(t_ours, t_truth))
        for a, b, t in zip(g_ours, g_eager, g_truth):
            assert _err(a, t) <= 3 * _err(b, t) + 1e-6, (rank, _err(a, t), _err(b, t))


def test_gathered_opcheck():
    from duality_kernels.ops.triton import lse

    gen = torch.Generator().manual_seed(9951)
    anchors = torch.randn(6, 5, dtype=torch.float64, requires_grad=True, generator=gen)
    gen = torch.Generator().manual_seed(8894)
    keys = torch.randn(12, 5, dtype=torch.float64, requires_grad=True, generator=gen)
    for args in ((0.5, True, 3, 6, 3, True, 1, False, 2), (0.5, True, 6, 6, 6, False, 2, False, 0)):
        torch.library.opcheck(lse.anchor_lse_fwd, (anchors, keys, *args))
