"""Triton kernels of the Gram family (duality_kernels/ops/triton/gram.py) against reference.py.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (float32/float64 only;
bf16 is broken in the interpreter), with interpreter block sizes (32-wide tiles, 16-deep
reductions), so the shapes below straddle block edges: 2, primes, 31/33, N < D and N > D.
With a GPU the same tests run on CUDA tensors, and the ``cuda`` tests add TF32, bf16/fp16 and
inductor.

Accuracy rule (DESIGN convention 5): truth = reference in float64, eager = reference in the test
dtype; max|kernel − truth| ≤ 2·max|eager − truth| + 1e-6 for values, 3× for gradients.
"""

import os
import sys

import pytest
import torch

# Must happen before triton is first imported (by this module or another test module): triton
# builds triton.language under the interpreter only when TRITON_INTERPRET=1 at its import.
# setdefault leaves an explicit setting alone (conftest.py normally sets it first).
if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set, so its interpreter "
                    "cannot run here; set it in the environment or conftest.py",
                    allow_module_level=True)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from duality_kernels import reference as ref  # noqa: E402

from .accuracy import (  # noqa: E402
    _check, _check_compiled, _check_deterministic, _check_fakes_on_meta, _check_low_precision, _check_opcheck,
    _check_relative,
    _spectral_mu, views,
)
from duality_kernels.ops.triton import _common  # noqa: E402

if not _common.is_available():  # pragma: no cover
    pytest.skip(f"triton unavailable: {_common.unavailable_reason()}", allow_module_level=True)

from duality_kernels.ops.triton import gram  # noqa: E402

INTERPRETING = _common.interpreting()
if not INTERPRETING and not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run here",
                allow_module_level=True)

# CPU tensors under the interpreter, CUDA tensors otherwise (the kernels never run on plain CPU).
DEVICE = "cpu" if INTERPRETING else "cuda"
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]
# N=2; primes; 31/33 straddle the interpreter's 32-wide tiles and 16-deep reductions;
# N > D and N < D. Small enough for the interpreter (DESIGN convention 10).
SHAPES = [(2, 5), (7, 3), (31, 17), (17, 33), (33, 48)]
SHAPE_IDS = [f"{n}x{d}" for n, d in SHAPES]
SIDES = ["sample", "dimension"]

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ------------------------------------------------------------------------------------------------
# helpers


def _views(n, d, dtype, seed, device=DEVICE):
    return views(n, d, dtype, seed, device)


# ------------------------------------------------------------------------------------------------
# losses (SPEC §3, §4), values and gradients through the loss and every term


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_vicreg(dtype, shape, side):
    z1, z2 = _views(*shape, dtype, seed=1)
    args = (25.0, 25.0, 1.0, 1.0, 1e-4, side)
    _check(lambda a, b: gram.vicreg(a, b, *args), lambda a, b: ref.vicreg(a, b, *args), [z1, z2])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_barlow_twins(dtype, shape, side):
    z1, z2 = _views(*shape, dtype, seed=2)
    args = (0.0051, 1e-5, side)
    _check(lambda a, b: gram.barlow_twins(a, b, *args), lambda a, b: ref.barlow_twins(a, b, *args),
           [z1, z2])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_spectral(dtype, shape, side):
    z1, z2 = _views(*shape, dtype, seed=3)
    mu = _spectral_mu(z1)
    _check(lambda a, b: gram.spectral(a, b, mu, side), lambda a, b: ref.spectral(a, b, mu, side),
           [z1, z2])


# ------------------------------------------------------------------------------------------------
# primitives (SPEC §1) and the duality terms (SPEC §2)


@pytest.mark.parametrize("correction", [1, 0])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_covariance(dtype, shape, correction):
    z1, _ = _views(*shape, dtype, seed=4)
    _check(lambda a: gram.covariance(a, correction), lambda a: ref.covariance(a, correction), [z1])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_correlation(dtype, shape):
    z1, z2 = _views(*shape, dtype, seed=5)
    _check(lambda a, b: gram.cross_correlation(a, b, 1e-5),
           lambda a, b: ref.cross_correlation(a, b, 1e-5), [z1, z2])


@pytest.mark.parametrize("pair", [False, True], ids=["z1", "z1z2"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_normalized_gram(dtype, shape, pair):
    z1, z2 = _views(*shape, dtype, seed=6)
    if pair:
        _check(gram.normalized_gram, ref.normalized_gram, [z1, z2])
    else:
        _check(lambda a: gram.normalized_gram(a), lambda a: ref.normalized_gram(a), [z1])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_duality_terms(dtype, shape, side):
    z1, _ = _views(*shape, dtype, seed=7)
    _check(lambda a: gram.duality_terms(a, side), lambda a: ref.duality_terms(a, side), [z1])


# ------------------------------------------------------------------------------------------------
# gradients through single outputs, edge cases, layouts, determinism


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_single_term_gradients(dtype):
    """Backprop through one term only: the other outputs' gradients arrive as None."""
    z1, z2 = _views(19, 23, dtype, seed=8)
    cases = [
        (lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")[1]["covariance"],
         lambda a, b: ref.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")[1]["covariance"]),
        (lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "dimension")[1]["variance"],
         lambda a, b: ref.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "dimension")[1]["variance"]),
        (lambda a, b: gram.barlow_twins(a, b, 0.0051, 1e-5, "sample")[1]["off_diagonal"],
         lambda a, b: ref.barlow_twins(a, b, 0.0051, 1e-5, "sample")[1]["off_diagonal"]),
        (lambda a, b: gram.spectral(a, b, 20.0, "dimension")[1]["negative"],
         lambda a, b: ref.spectral(a, b, 20.0, "dimension")[1]["negative"]),
        (lambda a, b: gram.duality_terms(a, "sample")[1], lambda a, b: ref.duality_terms(a, "sample")[1]),
    ]
    for kernel_fn, ref_fn in cases:
        _check(kernel_fn, ref_fn, [z1, z2])


def test_expanded_matrix_gradient():
    """matrix.sum() hands the backward an expanded (stride-0) gradient."""
    z1, z2 = _views(21, 13, torch.float64, seed=9)
    for kernel_fn, ref_fn in [
        (lambda a, b: gram.covariance(a).sum(), lambda a, b: ref.covariance(a).sum()),
        (lambda a, b: gram.cross_correlation(a, b).sum(), lambda a, b: ref.cross_correlation(a, b).sum()),
        (lambda a, b: gram.normalized_gram(a, b).sum(), lambda a, b: ref.normalized_gram(a, b).sum()),
        (lambda a, b: gram.normalized_gram(a).sum(), lambda a, b: ref.normalized_gram(a).sum()),
    ]:
        _check(kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_vicreg_constant_columns(dtype, side):
    """Zero-variance columns take the sqrt(var + eps) path: finite, and equal to the reference."""
    z1, z2 = _views(17, 9, dtype, seed=10)
    z1[:, 0] = 3.0
    z1[:, 4] = 0.0
    z2[:, 4] = -1.5
    args = (25.0, 25.0, 1.0, 1.0, 1e-4, side)
    _check(lambda a, b: gram.vicreg(a, b, *args), lambda a, b: ref.vicreg(a, b, *args), [z1, z2])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_rows(dtype):
    """A zero row: l2n's eps branch (normalized_gram; its gradient is dn/1e-12, ~1e12, so the
    absolute 1e-6 slack of the accuracy rule means nothing there: relative check) and a kept zero
    row in spectral's clamp (accuracy rule)."""
    z1, z2 = _views(12, 7, dtype, seed=11)
    z1[3] = 0.0
    z2[5] = 0.0
    cases = [(gram.normalized_gram, ref.normalized_gram, [z1, z2]),
             (lambda a: gram.normalized_gram(a), lambda a: ref.normalized_gram(a), [z1])]
    for kernel_fn, ref_fn, inputs in cases:
        _check_relative(kernel_fn, ref_fn, inputs, 1e-12 if dtype == torch.float64 else 1e-5)
    _check(lambda a, b: gram.spectral(a, b, 4.0, "sample"), lambda a, b: ref.spectral(a, b, 4.0, "sample"),
           [z1, z2])


def test_non_contiguous_inputs():
    z1, z2 = _views(13, 18, torch.float64, seed=12)
    t1 = z1.t().contiguous().t()  # column-major
    t2 = z2.t().contiguous().t()
    assert not t1.is_contiguous()
    lk, tk = gram.vicreg(t1, t2, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")
    lr, tr = ref.vicreg(z1, z2, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")
    torch.testing.assert_close(lk, lr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gram.normalized_gram(t1[::2], t2[::2]),
                               ref.normalized_gram(z1[::2], z2[::2]), rtol=1e-12, atol=1e-12)


def test_deterministic():
    """No atomics: two runs agree bit for bit (DESIGN convention 7)."""
    z1, z2 = _views(33, 40, torch.float32, seed=13)
    _check_deterministic((lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "dimension"),
               lambda a, b: gram.barlow_twins(a, b, 0.0051, 1e-5, "sample")), [z1, z2])


# ------------------------------------------------------------------------------------------------
# torch.library: opcheck of every op (fwd and bwd), torch.compile


def _op_cases(n, d, dtype):
    """(op name, args) for every custom op, the backward ops fed from a real forward."""
    ops = torch.ops.duality_kernels
    z1, z2 = _views(n, d, dtype, seed=14)
    r1, r2 = z1.requires_grad_(), z2.requires_grad_()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g0 = [torch.tensor(v, dtype=acc, device=z1.device) for v in (1.0, 0.5, -0.25, 2.0)]
    gm = torch.randn(n, n, dtype=acc, device=z1.device)
    gd = torch.randn(d, d, dtype=acc, device=z1.device)
    x1, x2 = z1.detach(), z2.detach()
    cases = []
    for side in SIDES:
        v = (25.0, 25.0, 1.0, 1.0, 1e-4)
        cases.append(("vicreg_fwd", (r1, r2, *v, side)))
        out = ops.vicreg_fwd(x1, x2, *v, side)
        cases.append(("vicreg_bwd", (x1, x2, *out[4:7], *g0, *v, side)))
        cases.append(("barlow_twins_fwd", (r1, r2, 0.0051, 1e-5, side)))
        out = ops.barlow_twins_fwd(x1, x2, 0.0051, 1e-5, side)
        cases.append(("barlow_twins_bwd", (x1, x2, *out[3:7], *g0[:3], 0.0051, side)))
        cases.append(("spectral_fwd", (r1, r2, 2.0, side)))
        out = ops.spectral_fwd(x1, x2, 2.0, side)
        cases.append(("spectral_bwd", (x1, x2, *out[3:6], *g0[:3], 2.0, side)))
        cases.append(("duality_terms_fwd", (r1, side)))
        out = ops.duality_terms_fwd(x1, side)
        cases.append(("duality_terms_bwd", (x1, *out[4:7], *g0, side)))
    cases.append(("covariance_fwd", (r1, 1)))
    cases.append(("covariance_bwd", (x1, ops.covariance_fwd(x1, 1)[1], gd, 1)))
    cases.append(("cross_correlation_fwd", (r1, r2, 1e-5)))
    _, mean, cs = ops.cross_correlation_fwd(x1, x2, 1e-5)
    cases.append(("cross_correlation_bwd", (x1, x2, mean, cs, gd)))
    for other in (None, r2):
        cases.append(("normalized_gram_fwd", (r1, other)))
        k, info = ops.normalized_gram_fwd(x1, None if other is None else x2)
        cases.append(("normalized_gram_bwd", (x1, None if other is None else x2, k, info, gm)))
    return cases


@pytest.mark.parametrize("shape", [(5, 3), (18, 33)], ids=["5x3", "18x33"])
def test_opcheck(shape):
    _check_opcheck(_op_cases(*shape, torch.float32))


def test_fake_shapes_on_meta():
    _check_fakes_on_meta(_op_cases(6, 10, torch.float64))


def _compile_check(backend, device, dtype=torch.float32):
    z1, z2 = _views(21, 35, dtype, seed=15, device=device)

    def loss_fn(a, b):
        loss, terms = gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")
        return loss + 0.5 * terms["covariance"]

    _check_compiled(loss_fn, z1, z2, backend)


def test_compile_fullgraph_aot_eager():
    _compile_check("aot_eager", DEVICE)


# ------------------------------------------------------------------------------------------------
# GPU only (benchmarks/gpu_check.sh): TF32, bf16/fp16, inductor


@pytest.fixture
def matmul_precision(request):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(previous)


def _gpu_cases(side, mu):
    return [
        ("vicreg", lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, side),
         lambda a, b: ref.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, side)),
        ("barlow", lambda a, b: gram.barlow_twins(a, b, 0.0051, 1e-5, side),
         lambda a, b: ref.barlow_twins(a, b, 0.0051, 1e-5, side)),
        ("spectral", lambda a, b: gram.spectral(a, b, mu, side),
         lambda a, b: ref.spectral(a, b, mu, side)),
        ("duality", lambda a, b: gram.duality_terms(a, side), lambda a, b: ref.duality_terms(a, side)),
        ("covariance", lambda a, b: gram.covariance(a), lambda a, b: ref.covariance(a)),
        ("cross_correlation", lambda a, b: gram.cross_correlation(a, b),
         lambda a, b: ref.cross_correlation(a, b)),
        ("normalized_gram", gram.normalized_gram, ref.normalized_gram),
    ]


GPU_SHAPES = [(2, 5), (127, 33), (300, 1000), (1031, 257)]


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("matmul_precision", ["highest", "high"], indirect=True)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[f"{n}x{d}" for n, d in GPU_SHAPES])
def test_cuda_fp32_matches_reference(shape, side, matmul_precision):
    """fp32 on the GPU: "highest" = IEEE dots, "high" = TF32 in both the kernels and eager torch."""
    z1, z2 = _views(*shape, torch.float32, seed=16, device="cuda")
    for name, kernel_fn, ref_fn in _gpu_cases(side, _spectral_mu(z1)):
        try:
            _check(kernel_fn, ref_fn, [z1, z2])
        except AssertionError as exc:
            raise AssertionError(f"{name} ({matmul_precision}): {exc}") from exc


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", [(64, 48), (300, 1000), (1031, 257)],
                         ids=["64x48", "300x1000", "1031x257"])
def test_cuda_low_precision(dtype, side, shape):
    z1, z2 = _views(*shape, dtype, seed=17, device="cuda")
    for name, kernel_fn, ref_fn in _gpu_cases(side, _spectral_mu(z1)):
        try:
            _check_low_precision(kernel_fn, ref_fn, [z1, z2], rtol=2e-2)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@pytest.mark.cuda
@requires_gpu
def test_cuda_compile_fullgraph_inductor():
    _compile_check("inductor", "cuda")


@pytest.mark.cuda
@requires_gpu
def test_cuda_opcheck():
    for shape in [(5, 3), (130, 70)]:
        for dtype in (torch.float32, torch.bfloat16):
            for name, args in _op_cases(*shape, dtype):
                torch.library.opcheck(getattr(torch.ops.duality_kernels, name).default, args)


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("loss,n,d", [("vicreg", 2048, 8192), ("vicreg", 16384, 2048),
                                      ("barlow", 2048, 8192), ("spectral", 16384, 256)])
def test_cuda_peak_memory_bound(loss, n, d):
    """Issue 3's memory bound, forward + backward in bf16: peak extra memory at most
    2·(smaller side)²·4 bytes (the small-side Grams) plus 2× the inputs' size (the gradients and
    one working copy); the eager formula materializes the D×D (or N×N) matrices several times."""
    fns = {"vicreg": lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample" if n < d else "dimension"),
           "barlow": lambda a, b: gram.barlow_twins(a, b, 0.0051, 1e-5, "sample" if n < d else "dimension"),
           "spectral": lambda a, b: gram.spectral(a, b, 1.0, "dimension" if d < n else "sample")}
    z1, z2 = (torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    loss_value, _ = fns[loss](z1, z2)  # warm-up: compiles the kernels outside the measurement
    torch.autograd.grad(loss_value, (z1, z2))
    del loss_value
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss_value, _ = fns[loss](z1, z2)
    grads = torch.autograd.grad(loss_value, (z1, z2))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    inputs = 2 * z1.numel() * z1.element_size()
    bound = 2 * min(n, d) ** 2 * 4 + 2 * inputs
    assert extra <= bound, f"{loss} {n}x{d}: peak extra {extra / 1e6:.1f} MB > bound {bound / 1e6:.1f} MB"
    assert all(torch.isfinite(g).all() for g in grads)
