"""What only the Triton backend of the covariance family (duality_kernels/ops/triton/gram/) has; the
tests both compiled backends share are tests/test_gram_backends.py.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (float16/float32/float64;
bf16 is broken in the interpreter) with interpreter block sizes (8-row, 16-column tiles, two row
chunks from 16 rows on), so the shapes below straddle block edges: 2, primes, 17/31/33, N < D and
N > D. The GEMMs are torch's (cuBLAS on the GPU, MKL here). bf16/fp16 take a different backward
plan (products on the raw input with centering corrections, operands in the input dtype, fp16 row
scales): ``gram._OVERRIDES`` runs that plan in fp32/fp64 under the accuracy rule, and fp16 runs it
for real. With a GPU the same tests run on CUDA tensors, and the ``cuda`` tests add TF32,
bf16/fp16, inductor and the peak-memory bound.

Accuracy rule (docs/design.md convention 5): truth = reference in float64, eager = reference in the test
dtype; max|kernel − truth| ≤ 2·max|eager − truth| + 1e-6 for values, 3× for gradients; float64 within
1e-12 of max|truth| (accuracy.F64_RTOL).
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
    _check, _check_deterministic, _check_opcheck,
    _flat, _run, _weights,
    _spectral_mu, views,
)
from duality_kernels.ops.triton import _common  # noqa: E402

if not _common.is_available():  # pragma: no cover
    pytest.skip(f"triton unavailable: {_common.unavailable_reason()}", allow_module_level=True)

from duality_kernels.ops.triton import gram  # noqa: E402

from .gram_cases import compile_check, op_cases  # noqa: E402


INTERPRETING = _common.interpreting()
if not INTERPRETING and not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run here",
                allow_module_level=True)

# CPU tensors under the interpreter, CUDA tensors otherwise (the kernels never run on plain CPU).
DEVICE = "cpu" if INTERPRETING else "cuda"
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]
# N=2; primes; 31/33 straddle the interpreter's 32-wide tiles and 16-deep reductions;
# N > D and N < D. Small enough for the interpreter (docs/design.md convention 10).
SHAPES = [(2, 5), (7, 3), (31, 17), (17, 33), (33, 48)]
SHAPE_IDS = [f"{n}x{d}" for n, d in SHAPES]
SIDES = ["sample", "dimension"]

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ------------------------------------------------------------------------------------------------
# helpers


def _views(n, d, dtype, seed, device=DEVICE):
    return views(n, d, dtype, seed, device)


def _cases(side, mu):
    """(name, kernel, reference) of every function of the family on ``side``."""
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
        ("normalized_gram_single", lambda a, b: gram.normalized_gram(a), lambda a, b: ref.normalized_gram(a)),
    ]


_BATCHNORM = ("barlow", "cross_correlation")


def _check_saturating(kernel_fn, ref_fn, inputs, rtol):
    """bf16/fp16 (no eager oracle there: the reference computes in fp32): every output and gradient
    within rtol·max|truth| of the float64 truth on the same rounded inputs, both sides clamped to
    the result dtype's finite range first. A gradient entry whose true value exceeds fp16's 65504
    rounds to ±inf, which is then the right answer, not an error (the GPU's "duality: item 4:
    error inf, scale 1.1e5" was such a case). Losses and terms must come back in fp32."""
    truth_inputs = [x.double() for x in inputs]
    weights = _weights(_flat(ref_fn(*truth_inputs)), 0)
    k_outs, k_grads = _run(kernel_fn, inputs, weights)
    t_outs, t_grads = _run(ref_fn, truth_inputs, weights)
    for k in k_outs:
        assert k.dtype == torch.float32, f"output dtype {k.dtype}"
    for x, g in zip(inputs, k_grads):
        assert g.dtype == x.dtype
    for i, (k, t) in enumerate(zip(k_outs + k_grads, t_outs + t_grads)):
        assert not torch.isnan(k).any(), f"item {i} has NaN"
        big = torch.finfo(k.dtype).max
        kc, tc = k.double().clamp(-big, big), t.clamp(-big, big)
        err, scale = (kc - tc).abs().max().item(), tc.abs().max().item()
        assert err <= rtol * scale + 1e-6, f"item {i}: error {err:.3e}, scale {scale:.3e}"


@pytest.fixture
def overrides(request, monkeypatch):
    """Runs the test under gram._OVERRIDES (the bf16/fp16 plan in fp32/fp64, fp16's scales, forced
    chunking, one backward epilogue per view, the finalize as its own launch)."""
    # the dict itself stays: the plan (gram/plan.py) and the launchers (gram/reduce.py) hold it
    for key, value in dict(request.param).items():
        monkeypatch.setitem(gram._OVERRIDES, key, value)
    return request.param


# ------------------------------------------------------------------------------------------------
# losses (docs/spec.md §3, §4), values and gradients through the loss and every term


# ------------------------------------------------------------------------------------------------
# primitives (docs/spec.md §1) and the duality terms (docs/spec.md §2)


# ------------------------------------------------------------------------------------------------
# gradients through single outputs, edge cases, layouts, determinism


# ------------------------------------------------------------------------------------------------
# torch.library: opcheck of every op (fwd and bwd), torch.compile


def test_functions_validate_their_arguments():
    """The drop-in Functions raise the public functions' ValueError/TypeError, naming the argument,
    before any kernel runs (docs/spec.md §6; issue 15: unvalidated calls reached native code)."""
    z1, z2 = _views(6, 4, torch.float32, seed=19)
    v = (25.0, 25.0, 1.0, 1.0, 1e-4)
    bad = [
        (TypeError, "z1", lambda: gram.VICRegFunction.apply(z1.int(), z2.int(), *v, "sample")),
        (ValueError, "same shape", lambda: gram.VICRegFunction.apply(z1, z2[:5], *v, "sample")),
        (ValueError, "two rows", lambda: gram.VICRegFunction.apply(z1[:1], z2[:1], *v, "sample")),
        (ValueError, "side", lambda: gram.VICRegFunction.apply(z1, z2, *v, "auto")),
        (ValueError, "inv_weight", lambda: gram.VICRegFunction.apply(z1, z2, float("nan"), *v[1:], "sample")),
        (ValueError, "dtype", lambda: gram.BarlowTwinsFunction.apply(z1, z2.double(), 0.0051, 1e-5, "sample")),
        (ValueError, "eps", lambda: gram.BarlowTwinsFunction.apply(z1, z2, 0.0051, -1.0, "dimension")),
        (ValueError, "mu", lambda: gram.SpectralContrastiveFunction.apply(z1, z2, 0.0, "sample")),
        (ValueError, "2-D", lambda: gram.SpectralContrastiveFunction.apply(z1[0], z2[0], 1.0, "sample")),
        (TypeError, "correction", lambda: gram.CovarianceFunction.apply(z1, 1.5)),
        (ValueError, "correction", lambda: gram.CovarianceFunction.apply(z1, 6)),
        (ValueError, "same shape", lambda: gram.CrossCorrelationFunction.apply(z1, z2.t(), 1e-5)),
        (TypeError, "z1", lambda: gram.NormalizedGramFunction.apply(z1.bool(), None)),
        (ValueError, "same shape", lambda: gram.NormalizedGramFunction.apply(z1, z2[:, :3])),
        (ValueError, "side", lambda: gram.DualityTermsFunction.apply(z1, "both")),
        (TypeError, "torch.Tensor", lambda: gram.DualityTermsFunction.apply([[1.0]], "sample")),
        (ValueError, "meta", lambda: gram.DualityTermsFunction.apply(z1.to("meta"), "sample")),
    ]
    for exc, words, call in bad:
        with pytest.raises(exc, match=words):
            call()


# ------------------------------------------------------------------------------------------------
# the bf16/fp16 plan (module docstring "Backward operands") in fp32/fp64, and fp16 for real

_PLANS = [{"ident": True}, {"ident": True, "scale": True, "split": True, "chunks": 3, "unfused": True}]
_PLAN_IDS = ["ident", "ident-scale-split-chunks-unfused"]
_ONE_SIDED = ("covariance", "cross_correlation", "normalized_gram", "normalized_gram_single")


def _plan_cases(side, z1):
    """The functions the half types' plan serves on ``side`` (the one-sided ones on the sample side).

    N = 2 leaves out BatchNorm's (Barlow Twins, cross_correlation): its gradient is then a residual
    of O(eps/var) left after the projection on (1, a) cancels the rest, and a product on the raw z
    (|z| ≫ |z − mean| when the two rows are close) rounds on |z|'s scale, which the residual
    amplifies: 20x eager's fp32 error with this plan in fp32, 5% of max|truth| in fp16 (2^-11
    operands). Real bf16/fp16 inputs round far more coarsely anyway; tests/test_gram_backends.py
    checks the default plan at N = 2."""
    for name, kernel_fn, ref_fn in _cases(side, _spectral_mu(z1)):
        if (side == "dimension" and name in _ONE_SIDED) or (z1.shape[0] == 2 and name in _BATCHNORM):
            continue
        yield name, kernel_fn, ref_fn


PLAN_SHAPES = [(2, 5), (7, 3), (17, 33), (33, 48)]


@pytest.mark.parametrize("dtype,overrides", [(torch.float32, _PLANS[0]), (torch.float64, _PLANS[1])],
                         ids=["fp32-" + _PLAN_IDS[0], "fp64-" + _PLAN_IDS[1]], indirect=["overrides"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", PLAN_SHAPES, ids=[f"{n}x{d}" for n, d in PLAN_SHAPES])
def test_low_precision_plan(shape, side, dtype, overrides):
    """bf16/fp16's backward (GEMMs on the raw input, the centering undone by rank-one corrections
    computed from the rounded operand, power-of-two row scales, per-view epilogues, chunked column
    passes) is exact algebra: in fp32/fp64 it meets the accuracy rule like the default plan."""
    z1, z2 = _views(*shape, dtype, seed=18)
    for name, kernel_fn, ref_fn in _plan_cases(side, z1):
        try:
            # this plan keeps its row scales and rank-one corrections in float32 and its products
            # float32 (the precision of the half types it serves, whose reference products are
            # float32 too): float64 runs are held to float32-level relative error, and float32 runs
            # to 1e-6 relative where the float32 reference widens a cancelling side to float64
            slack = 1e-7 if dtype == torch.float64 else (1e-6 if name == "duality" else 0.0)
            _check(kernel_fn, ref_fn, [z1, z2], rel_slack=slack)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@pytest.mark.parametrize("overrides", _PLANS[1:], ids=_PLAN_IDS[1:], indirect=True)
def test_low_precision_plan_deterministic_and_opcheck(overrides):
    z1, z2 = _views(33, 40, torch.float32, seed=13)
    _check_deterministic((lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "dimension"),
                          lambda a, b: gram.barlow_twins(a, b, 0.0051, 1e-5, "sample"),
                          lambda a, b: gram.spectral(a, b, 9.0, "sample")), [z1, z2])
    _check_opcheck(op_cases("triton", 5, 3, torch.float32, DEVICE))


FP16_SHAPES = [(2, 5), (7, 3), (31, 17), (17, 33)]


# ×300: true gradients past 65504 are cast to fp16 as inf, on purpose; numpy warns about it
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.skipif(not INTERPRETING, reason="on the GPU fp16 runs in test_cuda_low_precision")
@pytest.mark.parametrize("scale", [1.0, 300.0], ids=["unit", "x300"])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", FP16_SHAPES, ids=[f"{n}x{d}" for n, d in FP16_SHAPES])
def test_fp16(shape, side, scale):
    """fp16 through the interpreter (its fp16 is numpy's): outputs in fp32, gradients within 2% of the
    float64 truth on the same fp16 inputs, entries beyond 65504 as ±inf (``_check_saturating``).
    Values ×300 make Gram entries of 1e5–1e7 and true gradients past fp16's range."""
    g1, g2 = views(*shape, torch.float64, 20, DEVICE)
    z1, z2 = (scale * g1).half(), (scale * g2).half()
    for name, kernel_fn, ref_fn in _plan_cases(side, z1):
        try:
            _check_saturating(kernel_fn, ref_fn, [z1, z2], rtol=2e-2)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@pytest.mark.skipif(not INTERPRETING, reason="on the GPU fp16 runs in test_cuda_fp16_gram_beyond_range")
def test_fp16_gram_beyond_fp16_range():
    _fp16_gram_beyond_range()


def _fp16_gram_beyond_range():
    """|z| ≈ 300: Gram entries of 1e6–1e7, far beyond fp16's 65504, while the gradients of these
    small-weighted losses are O(10–100). The fp16 operands of the backward products are
    row-scaled by powers of two (undone in the epilogue), so nothing overflows and the gradient
    is accurate; without the scales the operands would hold inf."""
    g1, g2 = views(24, 40, torch.float64, 3, DEVICE)
    z1, z2 = (300 * g1).half(), (300 * g2).half()
    for side in SIDES:
        args = (1e-3, 1e-3, 1e-4, 300.0, 1e-4, side)
        _check_saturating(lambda a, b: gram.vicreg(a, b, *args)[0], lambda a, b: ref.vicreg(a, b, *args)[0],
                          [z1, z2], rtol=2e-2)
        _check_saturating(lambda a, b: gram.duality_terms(a, side)[1] * 1e-9,
                          lambda a, b: ref.duality_terms(a, side)[1] * 1e-9, [z1, z2], rtol=2e-2)
    _check_saturating(lambda a, b: gram.covariance(a).sum() * 1e-6, lambda a, b: ref.covariance(a).sum() * 1e-6,
                      [z1, z2], rtol=2e-2)


@pytest.mark.skipif(not INTERPRETING, reason="the GPU runs test_cuda_opcheck")
def test_opcheck_fp16():
    _check_opcheck(op_cases("triton", 5, 3, torch.float16, DEVICE))


# ------------------------------------------------------------------------------------------------
# GPU only (benchmarks/gpu_check.sh): TF32, bf16/fp16, inductor


@pytest.fixture
def matmul_precision(request):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(request.param)
    yield request.param
    torch.set_float32_matmul_precision(previous)


def _gpu_cases(side, mu):
    return _cases(side, mu)


# 129 × 65: one past the GPU tiles (16 rows, 64/128 columns); 1031 × 257 the same with chunks
GPU_SHAPES = [(2, 5), (127, 33), (129, 65), (300, 1000), (1031, 257)]


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
            _check_saturating(kernel_fn, ref_fn, [z1, z2], rtol=2e-2)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@pytest.mark.cuda
@requires_gpu
def test_cuda_fp16_gram_beyond_range():
    _fp16_gram_beyond_range()


@pytest.mark.cuda
@requires_gpu
def test_cuda_compile_fullgraph_inductor():
    compile_check(gram, "inductor", "cuda")


@pytest.mark.cuda
@requires_gpu
def test_cuda_opcheck():
    for shape in [(5, 3), (130, 70)]:
        for dtype in (torch.float32, torch.bfloat16):
            for name, args in op_cases("triton", *shape, dtype, "cuda"):
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
    gen = torch.Generator(device="cuda").manual_seed(2514)
    z1, z2 = (
        torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True, generator=gen)
        for _ in range(2))
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
