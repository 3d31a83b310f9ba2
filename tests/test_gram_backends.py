"""The compiled backends of the covariance family, one suite parametrized by backend: Triton
(duality_kernels/ops/triton/gram/) and CUDA C++ (duality_kernels/ops/cuda.py over csrc/), each
against duality_kernels/reference under docs/design.md convention 5's accuracy rule.

Without a GPU, Triton runs under its interpreter and the CUDA backend in the CPU simulator of its C++
source (duality_kernels/testing/csim.py), both on CPU tensors; with one, both on CUDA tensors. What
only one backend has lives beside it: tests/test_triton_gram.py (the half types' plan, fp16 under
the interpreter, the GPU-only checks) and tests/test_cuda_gram.py (the bindings' own checks, launch
counts, the C++ autograd path, bf16/fp16 and TF32 on the GPU).
"""

import os
import sys
from types import SimpleNamespace

import pytest
import torch

# triton builds triton.language under the interpreter only when TRITON_INTERPRET=1 at its first
# import (conftest.py normally sets it first; setdefault leaves an explicit setting alone)
if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import duality_kernels as dk  # noqa: E402
from duality_kernels import reference as ref  # noqa: E402
from duality_kernels.ops import cuda as cuda_ops  # noqa: E402
from duality_kernels.ops.triton import _common  # noqa: E402
from duality_kernels.testing import csim  # noqa: E402

from .accuracy import (  # noqa: E402
    _check, _check_compiled, _check_deterministic, _check_fakes_on_meta, _check_opcheck, _check_relative,
    _check_same_bits, _flat, _spectral_mu, views,
)
from .gram_cases import BT, PREFIX, SIDES, V, check_named, compile_check, loss_cases, matrix_cases, op_cases  # noqa: E402
from .entry_points import check_entry_points  # noqa: E402

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]


def _triton():
    if not _common.is_available():
        pytest.skip(f"triton unavailable: {_common.unavailable_reason()}")
    if not _common.interpreting() and not ON_GPU:
        pytest.skip("no GPU and TRITON_INTERPRET is not 1: the Triton kernels cannot run here")
    from duality_kernels.ops.triton import gram
    return gram


def _cuda():
    if ON_GPU and not cuda_ops.is_available():  # pragma: no cover
        pytest.skip(f"no CUDA extension: {cuda_ops.unavailable_reason()}")
    return cuda_ops


# Per backend: how to reach its ops, its custom-op prefix and its shapes. Both: N = 2, primes,
# 31/33 straddling the interpreter's 32-wide tiles and 16-deep reductions, N > D and N < D (small:
# docs/design.md convention 10). The simulator also takes 130 rows (three row chunks of 64 in the
# column reductions) and D = 300 (the 256-thread row kernels go round their loop twice).
BACKENDS = {
    "triton": SimpleNamespace(load=_triton, prefix=PREFIX["triton"], marks=[],
                              shapes=[(2, 5), (7, 3), (31, 17), (17, 33), (33, 48)]),
    "cuda": SimpleNamespace(load=_cuda, prefix=PREFIX["cuda"], marks=[pytest.mark.cuda] if ON_GPU else [],
                            shapes=[(2, 5), (7, 3), (31, 17), (17, 33), (33, 48), (130, 9), (9, 300)]),
}
DEVICE = "cuda" if ON_GPU else "cpu"

# without a GPU, backend="cuda" runs this module's CPU tensors in the simulator
_simulator = csim.module_fixture()


def _backends():
    return [pytest.param(b, id=b, marks=BACKENDS[b].marks) for b in BACKENDS]


def _backend_shapes():
    return [pytest.param(b, s, id=f"{b}-{s[0]}x{s[1]}", marks=BACKENDS[b].marks)
            for b in BACKENDS for s in BACKENDS[b].shapes]


def _views(n, d, dtype, seed, device=DEVICE):
    return views(n, d, dtype, seed, device)


# ------------------------------------------------------------------------------------------------
# every function, values and gradients (docs/spec.md §1-4), under the accuracy rule


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend,shape", _backend_shapes())
def test_losses(backend, shape, dtype, side):
    ops = BACKENDS[backend].load()
    z1, z2 = _views(*shape, dtype, seed=1)
    for name, kernel_fn, ref_fn in loss_cases(ops, side, _spectral_mu(z1)):
        check_named(backend, name, kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend,shape", _backend_shapes())
def test_matrices(backend, shape, dtype):
    ops = BACKENDS[backend].load()
    z1, z2 = _views(*shape, dtype, seed=2)
    for name, kernel_fn, ref_fn in matrix_cases(ops):
        check_named(backend, name, kernel_fn, ref_fn, [z1, z2])


# ------------------------------------------------------------------------------------------------
# gradients through single outputs, edge cases, layouts, determinism


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", _backends())
def test_single_term_gradients(backend, dtype):
    """Backprop through one term only: the other outputs' gradients arrive as None."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(19, 23, dtype, seed=4)
    picks = [("vicreg", "sample", "covariance"), ("vicreg", "dimension", "variance"),
             ("vicreg", "dimension", "invariance"), ("barlow", "sample", "off_diagonal"),
             ("barlow", "dimension", "on_diagonal"), ("spectral", "dimension", "negative"),
             ("spectral", "sample", "positive"), ("duality", "sample", 1), ("duality", "dimension", 2)]
    for name, side, term in picks:
        kernel_fn, ref_fn = next((k, r) for n, k, r in loss_cases(ops, side, 20.0) if n == name)
        pick = (lambda out, t=term: out[t]) if isinstance(term, int) else (lambda out, t=term: out[1][t])
        check_named(backend, f"{name} {side} {term}", lambda a, b, f=kernel_fn, p=pick: p(f(a, b)),
                     lambda a, b, f=ref_fn, p=pick: p(f(a, b)), [z1, z2])


@pytest.mark.parametrize("backend", _backends())
def test_expanded_matrix_gradient(backend):
    """matrix.sum() hands the backward an expanded (stride-0) gradient."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(21, 13, torch.float64, seed=5)
    for name, kernel_fn, ref_fn in matrix_cases(ops)[1:]:
        check_named(backend, name, lambda a, b, f=kernel_fn: f(a, b).sum(), lambda a, b, f=ref_fn: f(a, b).sum(),
                     [z1, z2])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", _backends())
def test_constant_columns(backend, dtype, side):
    """Zero-variance columns: VICReg's sqrt(var + eps) and BatchNorm's 1/sqrt(var + eps) paths."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(17, 9, dtype, seed=6)
    z1[:, 0] = 3.0
    z1[:, 4] = 0.0
    z2[:, 4] = -1.5
    for name, kernel_fn, ref_fn in loss_cases(ops, side, 2.0)[:2]:
        check_named(backend, name, kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", _backends())
def test_zero_rows(backend, dtype):
    """A zero row: l2n's eps branch (normalized_gram; its gradient is dn/1e-12, so the absolute
    slack of the accuracy rule means nothing there: relative check) and a kept zero row in the
    spectral clamp (accuracy rule)."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(12, 7, dtype, seed=7)
    z1[3] = 0.0
    z2[5] = 0.0
    for kernel_fn, ref_fn, inputs in [(ops.normalized_gram, ref.normalized_gram, [z1, z2]),
                                      (lambda a: ops.normalized_gram(a), lambda a: ref.normalized_gram(a), [z1])]:
        _check_relative(kernel_fn, ref_fn, inputs, 1e-12 if dtype == torch.float64 else 1e-5)
    _check(lambda a, b: ops.spectral(a, b, 4.0, "sample"), lambda a, b: ref.spectral(a, b, 4.0, "sample"),
           [z1, z2])


@pytest.mark.parametrize("backend", _backends())
def test_nan_propagates(backend):
    """docs/spec.md §6: NaN in the input reaches every output (no crash, no silent finite answer)."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(9, 6, torch.float32, seed=8)
    z1[2, 3] = float("nan")
    for name, fn, _ in loss_cases(ops, "sample", 2.0) + loss_cases(ops, "dimension", 2.0):
        assert torch.isnan(_flat(fn(z1, z2))[0]).all(), name


@pytest.mark.parametrize("backend", _backends())
def test_non_contiguous_inputs(backend):
    ops = BACKENDS[backend].load()
    z1, z2 = _views(13, 18, torch.float64, seed=9)
    t1 = z1.t().contiguous().t()  # column-major
    t2 = z2.t().contiguous().t()
    assert not t1.is_contiguous()
    torch.testing.assert_close(ops.vicreg(t1, t2, *V, "sample")[0], ref.vicreg(z1, z2, *V, "sample")[0],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ops.normalized_gram(t1[::2], t2[::2]), ref.normalized_gram(z1[::2], z2[::2]),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", _backends())
def test_deterministic(backend):
    """No atomics: two runs agree bit for bit (docs/design.md convention 7); 140 rows take several
    row chunks in the simulator."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(140 if backend == "cuda" else 33, 40, torch.float32, seed=10)
    _check_deterministic((lambda a, b: ops.vicreg(a, b, *V, "dimension"),
                          lambda a, b: ops.barlow_twins(a, b, *BT, "sample"),
                          lambda a, b: ops.spectral(a, b, 9.0, "sample")), [z1, z2])


# ------------------------------------------------------------------------------------------------
# torch.library: opcheck of every op (fwd and bwd), fakes, the eager path, the drop-in Functions,
# torch.compile


@pytest.mark.parametrize("shape", [(5, 3), (18, 33)], ids=["5x3", "18x33"])
@pytest.mark.parametrize("backend", _backends())
def test_opcheck(backend, shape):
    BACKENDS[backend].load()
    _check_opcheck(op_cases(backend, *shape, torch.float32, DEVICE), BACKENDS[backend].prefix)


@pytest.mark.parametrize("backend", _backends())
def test_fake_shapes_on_meta(backend):
    BACKENDS[backend].load()
    _check_fakes_on_meta(op_cases(backend, 6, 10, torch.float64, DEVICE))


@pytest.mark.parametrize("backend", _backends())
def test_compile_fullgraph_aot_eager(backend):
    compile_check(BACKENDS[backend].load(), "aot_eager", DEVICE)


@pytest.mark.parametrize("backend", _backends())
def test_eager_path_matches_the_custom_ops(backend):
    """Eager calls run the ops as one torch.autograd.Function over the same implementation
    (skipping torch.library's Python dispatch); the registered custom ops with their autograd must
    give the same bits, values and gradients."""
    ops, p = BACKENDS[backend].load(), BACKENDS[backend].prefix
    lib = torch.ops.duality_kernels
    fwd = lambda name: getattr(lib, f"{p}{name}_fwd")  # noqa: E731
    z1, z2 = _views(23, 12, torch.float32, seed=16)
    _check_same_bits([
        (lambda a, b: ops.vicreg(a, b, *V, "sample")[0], lambda a, b: fwd("vicreg")(a, b, *V, "sample")[0]),
        (lambda a, b: ops.barlow_twins(a, b, *BT, "dimension")[1]["off_diagonal"],
         lambda a, b: fwd("barlow_twins")(a, b, *BT, "dimension")[2]),
        (lambda a, b: ops.spectral(a, b, 2.0, "sample")[0], lambda a, b: fwd("spectral")(a, b, 2.0, "sample")[0]),
        (lambda a, b: ops.covariance(a, 1), lambda a, b: fwd("covariance")(a, 1)[0]),
        (lambda a, b: ops.cross_correlation(a, b, 1e-5), lambda a, b: fwd("cross_correlation")(a, b, 1e-5)[0]),
        (lambda a, b: ops.normalized_gram(a), lambda a, b: fwd("normalized_gram")(a, None)[0]),
        (lambda a, b: ops.normalized_gram(a, b), lambda a, b: fwd("normalized_gram")(a, b)[0]),
        (lambda a, b: ops.duality_terms(a, "dimension")[1], lambda a, b: fwd("duality_terms")(a, "dimension")[1]),
    ], z1, z2)


@pytest.mark.parametrize("backend", _backends())
def test_autograd_function_subclasses(backend):
    """docs/design.md convention 2: each op as a drop-in torch.autograd.Function (VICRegFunction.apply):
    the same bits as the functions above, and it compiles with fullgraph=True, its checks included."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(15, 8, torch.float32, seed=17)
    _check_same_bits([
        (lambda a, b: ops.VICRegFunction.apply(a, b, *V, "sample")[0], lambda a, b: ops.vicreg(a, b, *V, "sample")[0]),
        (lambda a, b: ops.BarlowTwinsFunction.apply(a, b, *BT, "dimension")[2],
         lambda a, b: ops.barlow_twins(a, b, *BT, "dimension")[1]["off_diagonal"]),
        (lambda a, b: ops.SpectralContrastiveFunction.apply(a, b, 2.0, "sample")[0],
         lambda a, b: ops.spectral(a, b, 2.0, "sample")[0]),
        (lambda a, b: ops.CovarianceFunction.apply(a, 1)[0], lambda a, b: ops.covariance(a, 1)),
        (lambda a, b: ops.CrossCorrelationFunction.apply(a, b, 1e-5)[0],
         lambda a, b: ops.cross_correlation(a, b, 1e-5)),
        (lambda a, b: ops.NormalizedGramFunction.apply(a, None)[0], lambda a, b: ops.normalized_gram(a)),
        (lambda a, b: ops.DualityTermsFunction.apply(a, "dimension")[0],
         lambda a, b: ops.duality_terms(a, "dimension")[0]),
    ], z1, z2)
    _check_compiled(lambda a, b: ops.VICRegFunction.apply(a, b, *V, "dimension")[0], z1, z2, "aot_eager")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", _backends())
def test_public_functions_dispatch_here(backend, dtype):
    """backend=<this backend> of every public function runs these ops (the same bits)."""
    ops = BACKENDS[backend].load()
    z1, z2 = _views(19, 11, dtype, seed=3)
    be = backend
    pairs = [
        (dk.vicreg_loss(z1, z2, side="sample", backend=be), ops.vicreg(z1, z2, *V, "sample")[0]),
        (dk.barlow_twins_loss(z1, z2, side="dimension", backend=be), ops.barlow_twins(z1, z2, *BT, "dimension")[0]),
        (dk.spectral_contrastive_loss(z1, z2, mu=2.0, side="sample", backend=be),
         ops.spectral(z1, z2, 2.0, "sample")[0]),
        (dk.covariance(z1, backend=be), ops.covariance(z1)),
        (dk.cross_correlation(z1, z2, backend=be), ops.cross_correlation(z1, z2)),
        (dk.normalized_gram(z1, z2, backend=be), ops.normalized_gram(z1, z2)),
        (dk.sample_contrastive_criterion(z1, side="dimension", backend=be), ops.duality_terms(z1, "dimension")[0]),
        (dk.dimension_contrastive_criterion(z1, side="sample", backend=be), ops.duality_terms(z1, "sample")[1]),
        (dk.duality_terms(z1, backend=be)[3], ops.duality_terms(z1, "dimension")[3]),
    ]
    for i, (got, want) in enumerate(pairs):
        assert torch.equal(got, want), i


@pytest.mark.parametrize("backend", _backends())
def test_functions_and_custom_ops_raise_the_public_errors(backend):
    """The drop-in Functions and the forward custom ops raise the public function's exception and
    message for every bad shape, dtype, device and scalar, before any kernel (docs/spec.md §6;
    tests/entry_points.py)."""
    assert check_entry_points(backend, BACKENDS[backend].load(), BACKENDS[backend].prefix, _views) >= 90
