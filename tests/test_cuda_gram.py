"""The CUDA C++ backend of the covariance family (duality_kernels/ops/cuda.py over csrc/bindings/
and csrc/kernels/gram_ops.cu) against reference.py.

With a GPU the ops run on CUDA tensors. Without one they run on CPU tensors in the CPU simulator of
the same C++ source (duality_kernels/testing/csim.py: the kernels' arithmetic, indexing and launch bookkeeping; the
GEMMs go through ATen on the CPU). The simulator is built once per checkout (~1.5 min on 2 cores,
cached under build/csim). float32/float64 follow docs/design.md convention 5's accuracy rule; the ``cuda``
tests add TF32, bf16/fp16, inductor and opcheck on the GPU.
"""

import pytest
import torch

import duality_kernels as dk
from duality_kernels import reference as ref
from duality_kernels.ops import cuda as cuda_ops

from duality_kernels.testing import csim
from .entry_points import check_entry_points
from .accuracy import (
    _check, _check_compiled, _check_deterministic, _check_fakes_on_meta, _check_low_precision, _check_opcheck,
    _check_same_bits,
    _check_relative,
    _flat, _spectral_mu, views,
)

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
if ON_GPU and not cuda_ops.is_available():  # pragma: no cover
    pytest.skip(f"no CUDA extension: {cuda_ops.unavailable_reason()}", allow_module_level=True)

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]
# N=2; primes; 31/33 straddle the 32-wide column tiles; 130 rows give three row chunks of 64 in
# the column reductions (and a 130² Gram several sum blocks); D = 300 takes the 256-thread row
# kernels round their loop twice; N > D and N < D.
SHAPES = [(2, 5), (7, 3), (31, 17), (17, 33), (33, 48), (130, 9), (9, 300)]
SHAPE_IDS = [f"{n}x{d}" for n, d in SHAPES]
SIDES = ["sample", "dimension"]

requires_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
# On a GPU every test here is a GPU test (benchmarks/gpu_check.sh runs `pytest -m cuda`).
pytestmark = [pytest.mark.cuda] if ON_GPU else []


# without a GPU, the CUDA backend runs this module's CPU tensors in its simulator (duality_kernels/testing/csim.py)
_simulator = csim.module_fixture()


def _views(n, d, dtype, seed, device=DEVICE):
    return views(n, d, dtype, seed, device)


V = (25.0, 25.0, 1.0, 1.0, 1e-4)  # VICReg's default weights, gamma, eps


def _loss_cases(side, mu):
    """(name, our function, reference) of every two-view function with a side argument."""
    return [
        ("vicreg", lambda a, b: cuda_ops.vicreg(a, b, *V, side), lambda a, b: ref.vicreg(a, b, *V, side)),
        ("barlow", lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, side),
         lambda a, b: ref.barlow_twins(a, b, 0.0051, 1e-5, side)),
        ("spectral", lambda a, b: cuda_ops.spectral(a, b, mu, side), lambda a, b: ref.spectral(a, b, mu, side)),
        ("duality", lambda a, b: cuda_ops.duality_terms(a, side), lambda a, b: ref.duality_terms(a, side)),
    ]


def _matrix_cases():
    return [
        ("covariance1", lambda a, b: cuda_ops.covariance(a, 1), lambda a, b: ref.covariance(a, 1)),
        ("covariance0", lambda a, b: cuda_ops.covariance(a, 0), lambda a, b: ref.covariance(a, 0)),
        ("cross_correlation", lambda a, b: cuda_ops.cross_correlation(a, b, 1e-5),
         lambda a, b: ref.cross_correlation(a, b, 1e-5)),
        ("normalized_gram_pair", cuda_ops.normalized_gram, ref.normalized_gram),
        ("normalized_gram", lambda a, b: cuda_ops.normalized_gram(a), lambda a, b: ref.normalized_gram(a)),
    ]


def _check_named(name, kernel_fn, ref_fn, inputs):
    # csrc's duality_terms backward takes float32 products on the side where L_c or L_nc cancels,
    # where the reference widens to float64 (docs/spec.md §8.2, status): 1e-5 relative until then
    slack = 1e-5 if name == "duality" and inputs[0].dtype == torch.float32 else 0.0
    try:
        _check(kernel_fn, ref_fn, inputs, rel_slack=slack)
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from exc


# ------------------------------------------------------------------------------------------------
# every function, values and gradients (docs/spec.md §1–4), under the accuracy rule


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_losses(dtype, shape, side):
    z1, z2 = _views(*shape, dtype, seed=1)
    for name, kernel_fn, ref_fn in _loss_cases(side, _spectral_mu(z1)):
        _check_named(name, kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matrices(dtype, shape):
    z1, z2 = _views(*shape, dtype, seed=2)
    for name, kernel_fn, ref_fn in _matrix_cases():
        _check_named(name, kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_public_functions_dispatch_here(dtype):
    """backend="cuda" of every public function runs these ops (same values as calling them)."""
    z1, z2 = _views(19, 11, dtype, seed=3)
    pairs = [
        (dk.vicreg_loss(z1, z2, side="sample", backend="cuda"), cuda_ops.vicreg(z1, z2, *V, "sample")[0]),
        (dk.barlow_twins_loss(z1, z2, side="dimension", backend="cuda"),
         cuda_ops.barlow_twins(z1, z2, 0.0051, 1e-5, "dimension")[0]),
        (dk.spectral_contrastive_loss(z1, z2, mu=2.0, side="sample", backend="cuda"),
         cuda_ops.spectral(z1, z2, 2.0, "sample")[0]),
        (dk.covariance(z1, backend="cuda"), cuda_ops.covariance(z1)),
        (dk.cross_correlation(z1, z2, backend="cuda"), cuda_ops.cross_correlation(z1, z2)),
        (dk.normalized_gram(z1, z2, backend="cuda"), cuda_ops.normalized_gram(z1, z2)),
        (dk.sample_contrastive_criterion(z1, side="dimension", backend="cuda"),
         cuda_ops.duality_terms(z1, "dimension")[0]),
        (dk.dimension_contrastive_criterion(z1, side="sample", backend="cuda"),
         cuda_ops.duality_terms(z1, "sample")[1]),
        (dk.duality_terms(z1, backend="cuda")[3], cuda_ops.duality_terms(z1, "dimension")[3]),
    ]
    for got, want in pairs:
        assert torch.equal(got, want)
    # and they match the reference (the accuracy tests above check the rule in detail)
    torch.testing.assert_close(dk.vicreg_loss(z1, z2, backend="cuda"), dk.vicreg_loss(z1, z2, backend="torch"))


# ------------------------------------------------------------------------------------------------
# gradients through single outputs, edge cases, layouts, determinism


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_single_term_gradients(dtype):
    """Backprop through one term only: the other outputs' gradients arrive as None."""
    z1, z2 = _views(19, 23, dtype, seed=4)
    cases = [
        (lambda a, b: cuda_ops.vicreg(a, b, *V, "sample")[1]["covariance"],
         lambda a, b: ref.vicreg(a, b, *V, "sample")[1]["covariance"]),
        (lambda a, b: cuda_ops.vicreg(a, b, *V, "dimension")[1]["variance"],
         lambda a, b: ref.vicreg(a, b, *V, "dimension")[1]["variance"]),
        (lambda a, b: cuda_ops.vicreg(a, b, *V, "dimension")[1]["invariance"],
         lambda a, b: ref.vicreg(a, b, *V, "dimension")[1]["invariance"]),
        (lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, "sample")[1]["off_diagonal"],
         lambda a, b: ref.barlow_twins(a, b, 0.0051, 1e-5, "sample")[1]["off_diagonal"]),
        (lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, "dimension")[1]["on_diagonal"],
         lambda a, b: ref.barlow_twins(a, b, 0.0051, 1e-5, "dimension")[1]["on_diagonal"]),
        (lambda a, b: cuda_ops.spectral(a, b, 20.0, "dimension")[1]["negative"],
         lambda a, b: ref.spectral(a, b, 20.0, "dimension")[1]["negative"]),
        (lambda a, b: cuda_ops.spectral(a, b, 20.0, "sample")[1]["positive"],
         lambda a, b: ref.spectral(a, b, 20.0, "sample")[1]["positive"]),
        (lambda a, b: cuda_ops.duality_terms(a, "sample")[1], lambda a, b: ref.duality_terms(a, "sample")[1]),
        (lambda a, b: cuda_ops.duality_terms(a, "dimension")[2],
         lambda a, b: ref.duality_terms(a, "dimension")[2]),
    ]
    for i, (kernel_fn, ref_fn) in enumerate(cases):
        _check_named(f"case {i}", kernel_fn, ref_fn, [z1, z2])


def test_expanded_matrix_gradient():
    """matrix.sum() hands the backward an expanded (stride-0) gradient."""
    z1, z2 = _views(21, 13, torch.float64, seed=5)
    for i, (kernel_fn, ref_fn) in enumerate([
        (lambda a, b: cuda_ops.covariance(a).sum(), lambda a, b: ref.covariance(a).sum()),
        (lambda a, b: cuda_ops.cross_correlation(a, b).sum(), lambda a, b: ref.cross_correlation(a, b).sum()),
        (lambda a, b: cuda_ops.normalized_gram(a, b).sum(), lambda a, b: ref.normalized_gram(a, b).sum()),
        (lambda a, b: cuda_ops.normalized_gram(a).sum(), lambda a, b: ref.normalized_gram(a).sum()),
    ]):
        _check_named(f"case {i}", kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_constant_columns(dtype, side):
    """Zero-variance columns: VICReg's sqrt(var + eps) and BatchNorm's 1/sqrt(var + eps) paths."""
    z1, z2 = _views(17, 9, dtype, seed=6)
    z1[:, 0] = 3.0
    z1[:, 4] = 0.0
    z2[:, 4] = -1.5
    _check(lambda a, b: cuda_ops.vicreg(a, b, *V, side), lambda a, b: ref.vicreg(a, b, *V, side), [z1, z2])
    _check(lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, side),
           lambda a, b: ref.barlow_twins(a, b, 0.0051, 1e-5, side), [z1, z2])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_rows(dtype):
    """A zero row: l2n's eps branch (normalized_gram; its gradient is dn/1e-12, so the absolute
    slack of the accuracy rule means nothing there: relative check) and a kept zero row in the
    spectral clamp (accuracy rule)."""
    z1, z2 = _views(12, 7, dtype, seed=7)
    z1[3] = 0.0
    z2[5] = 0.0
    for kernel_fn, ref_fn, inputs in [(cuda_ops.normalized_gram, ref.normalized_gram, [z1, z2]),
                                      (lambda a: cuda_ops.normalized_gram(a), lambda a: ref.normalized_gram(a), [z1])]:
        _check_relative(kernel_fn, ref_fn, inputs, 1e-12 if dtype == torch.float64 else 1e-5)
    _check(lambda a, b: cuda_ops.spectral(a, b, 4.0, "sample"), lambda a, b: ref.spectral(a, b, 4.0, "sample"),
           [z1, z2])


# Shapes past the small SHAPES above, for the kernels' layouts (gram_ops.cu): several row chunks
# (more than 128 rows; fp16/bf16: more than 256) and column tiles (tiles of 32 x 16 bytes: 64
# columns of fp64, 128 of fp32, 256 of bf16), with rows that are 16-byte aligned (D a multiple
# of 2 / 4 / 8: vector accesses) and rows that are not (scalar accesses), and N a multiple of 8
# (the Gram rows' vector accesses on the N×N side).
PLAN_SHAPES = [(300, 260), (291, 131), (64, 40)]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", PLAN_SHAPES, ids=[f"{n}x{d}" for n, d in PLAN_SHAPES])
def test_chunks_tiles_and_alignment(shape, side):
    z1, z2 = _views(*shape, torch.float32, seed=21)
    for name, kernel_fn, ref_fn in _loss_cases(side, _spectral_mu(z1)):
        _check_named(name, kernel_fn, ref_fn, [z1, z2])
    for name, kernel_fn, ref_fn in _matrix_cases()[:3]:
        _check_named(name, kernel_fn, ref_fn, [z1, z2])


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", [(600, 72), (520, 37)], ids=["600x72", "520x37"])
def test_bf16_chunks(shape, side):
    """bf16 sums run in float32 over at most 32 rows per thread (gram_ops.h ColStatsArgs): more
    than 256 rows take several chunks, merged in float64."""
    _check_reduced_precision(torch.bfloat16, "highest", 2e-2, side, shape)


def test_eager_path_is_a_cpp_autograd_function():
    """Plain eager calls build no Python autograd node: the graph holds the extension's C++
    Function (csrc/bindings/autograd.cpp), whose backward runs without Python."""
    z1, z2 = (t.requires_grad_() for t in _views(9, 6, torch.float32, seed=22))
    outs = [cuda_ops.vicreg(z1, z2, *V, "sample")[0], cuda_ops.barlow_twins(z1, z2, 0.0051, 1e-5, "dimension")[0],
            cuda_ops.spectral(z1, z2, 2.0, "sample")[0], cuda_ops.duality_terms(z1, "dimension")[0],
            cuda_ops.covariance(z1), cuda_ops.cross_correlation(z1, z2), cuda_ops.normalized_gram(z1, z2),
            cuda_ops.normalized_gram(z1)]
    for out in outs:
        assert "CppNode" in type(out.grad_fn).__name__ or "Fn>" in out.grad_fn.name(), out.grad_fn.name()


def _sim_launches() -> int:
    import ctypes

    f = ctypes.CDLL(csim.build().__file__).dk_sim_launches
    f.restype = ctypes.c_longlong
    return f()


class _AtenOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The ATen ops of a region that are not views, allocations or metadata (each a GPU launch)."""

    _FREE = {"empty", "empty_like", "empty_strided", "new_empty", "detach", "alias", "_unsafe_view",
             "lift_fresh", "sym_size", "sym_stride"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        view = bool(func._schema.returns) and all(
            r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        if not view and name not in self._FREE:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(ON_GPU, reason="counts the simulator's launches")
@pytest.mark.parametrize("side", SIDES)
def test_launches_per_step(side):
    """One forward + backward through the public function: our kernel launches and the ATen ops
    around them (float32 under TF32, so that the GEMMs take no float64 conversion), at a shape with
    one row chunk. Only the GEMMs remain: before issue 14 the same step also ran zeros for each
    unused output's gradient (2-3) and, on VICReg's dimension side, a fill of the Gram's diagonal,
    and Barlow's sample side and the spectral loss's dimension side ran their backward's two
    products as two GEMMs (one bmm now); kernels went VICReg 5/7 → 6/7 (dimension/sample side),
    Barlow 6/7 → 7/8 (col_merge now runs at one chunk too), spectral 5 → 4. At the headline shapes,
    several chunks: VICReg 6/10 → 6/7, Barlow 8/10 → 8/9, spectral 5 → 4 (gram_ops.cu's header)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        z1, z2 = (t.requires_grad_() for t in _views(40, 24, torch.float32, seed=23))
        expected = {  # loss: (kernel launches, GEMMs)
            "vicreg": (7 if side == "sample" else 6, ["bmm", "bmm"]),
            "barlow": (8, ["bmm", "bmm"]) if side == "sample" else (7, ["mm", "mm", "mm"]),
            "spectral": (4, ["mm", "mm", "mm"]) if side == "sample" else (4, ["bmm", "bmm"]),
        }
        calls = {
            "vicreg": lambda: dk.vicreg_loss(z1, z2, side=side, backend="cuda"),
            "barlow": lambda: dk.barlow_twins_loss(z1, z2, side=side, backend="cuda"),
            "spectral": lambda: dk.spectral_contrastive_loss(z1, z2, mu=2.0, side=side, backend="cuda"),
        }
        for name, call in calls.items():
            before = _sim_launches()
            with _AtenOps() as ops:
                loss = call()
                torch.autograd.grad(loss, (z1, z2), grad_outputs=torch.ones_like(loss))
            launches, gemms = expected[name]
            assert (_sim_launches() - before, sorted(ops.ops)) == (launches, sorted(gemms + ["ones_like"])), name
    finally:
        torch.set_float32_matmul_precision(previous)


def test_nan_propagates():
    """docs/spec.md §6: NaN in the input reaches the output (no crash, no silent finite answer)."""
    z1, z2 = _views(9, 6, torch.float32, seed=8)
    z1[2, 3] = float("nan")
    for name, fn, _ in _loss_cases("sample", 2.0) + _loss_cases("dimension", 2.0):
        assert torch.isnan(_flat(fn(z1, z2))[0]).all(), name


def test_non_contiguous_inputs():
    z1, z2 = _views(13, 18, torch.float64, seed=9)
    t1 = z1.t().contiguous().t()  # column-major
    t2 = z2.t().contiguous().t()
    assert not t1.is_contiguous()
    torch.testing.assert_close(cuda_ops.vicreg(t1, t2, *V, "sample")[0], ref.vicreg(z1, z2, *V, "sample")[0],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cuda_ops.normalized_gram(t1[::2], t2[::2]),
                               ref.normalized_gram(z1[::2], z2[::2]), rtol=1e-12, atol=1e-12)


def test_deterministic():
    """No atomics: two runs agree bit for bit (docs/design.md convention 7)."""
    z1, z2 = _views(140, 40, torch.float32, seed=10)
    _check_deterministic((lambda a, b: cuda_ops.vicreg(a, b, *V, "dimension"),
               lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, "sample")), [z1, z2])


# ------------------------------------------------------------------------------------------------
# torch.library: opcheck of every op (fwd and bwd), fakes, torch.compile


def _op_cases(n, d, dtype, device=DEVICE):
    """(op name, args) for every cuda_* custom op, the backward ops fed from a real forward."""
    ops = torch.ops.duality_kernels
    z1, z2 = views(n, d, dtype, 11, device)
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g0 = [torch.tensor(v, dtype=acc, device=device) for v in (1.0, 0.5, -0.25, 2.0)]
    gen = torch.Generator(device=device).manual_seed(6517)
    gm = torch.randn(n, n, dtype=acc, device=device, generator=gen)
    gen = torch.Generator(device=device).manual_seed(755)
    gd = torch.randn(d, d, dtype=acc, device=device, generator=gen)
    cases = []
    for side in SIDES:
        cases.append(("cuda_vicreg_fwd", (r1, r2, *V, side)))
        out = ops.cuda_vicreg_fwd(z1, z2, *V, side)
        cases.append(("cuda_vicreg_bwd", (z1, z2, *out[4:7], *g0, *V, side)))
        cases.append(("cuda_barlow_twins_fwd", (r1, r2, 0.0051, 1e-5, side)))
        out = ops.cuda_barlow_twins_fwd(z1, z2, 0.0051, 1e-5, side)
        cases.append(("cuda_barlow_twins_bwd", (*out[3:7], *g0[:3], 0.0051, 1e-5, side)))
        cases.append(("cuda_spectral_fwd", (r1, r2, 2.0, side)))
        out = ops.cuda_spectral_fwd(z1, z2, 2.0, side)
        cases.append(("cuda_spectral_bwd", (z1, z2, *out[3:6], *g0[:3], 2.0, side)))
        cases.append(("cuda_duality_terms_fwd", (r1, side)))
        out = ops.cuda_duality_terms_fwd(z1, side)
        cases.append(("cuda_duality_terms_bwd", (z1, *out[4:7], *g0, side)))
    cases.append(("cuda_covariance_fwd", (r1, 1)))
    cases.append(("cuda_covariance_bwd", (ops.cuda_covariance_fwd(z1, 1)[1], gd, 1)))
    cases.append(("cuda_cross_correlation_fwd", (r1, r2, 1e-5)))
    _, x, m2 = ops.cuda_cross_correlation_fwd(z1, z2, 1e-5)
    cases.append(("cuda_cross_correlation_bwd", (x, m2, gd, 1e-5)))
    for other in (None, r2):
        cases.append(("cuda_normalized_gram_fwd", (r1, other)))
        _, x, q = ops.cuda_normalized_gram_fwd(z1, None if other is None else z2)
        cases.append(("cuda_normalized_gram_bwd", (z1, None if other is None else z2, x, q, gm)))
    return cases


@pytest.mark.parametrize("shape", [(5, 3), (18, 33)], ids=["5x3", "18x33"])
def test_opcheck(shape):
    _check_opcheck(_op_cases(*shape, torch.float32), "cuda_")


def test_fake_shapes_on_meta():
    _check_fakes_on_meta(_op_cases(6, 10, torch.float64))


def _compile_check(backend, device, dtype=torch.float32):
    z1, z2 = views(21, 35, dtype, 12, device)

    def loss_fn(a, b):
        loss, terms = cuda_ops.vicreg(a, b, *V, "sample")
        return loss + 0.5 * terms["covariance"] + cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, "dimension")[0]

    _check_compiled(loss_fn, z1, z2, backend)


def test_compile_fullgraph_aot_eager():
    _compile_check("aot_eager", DEVICE)


# ------------------------------------------------------------------------------------------------
# bad arguments (docs/spec.md §6): every C++ entry point checks every argument before any work (RuntimeError
# naming it); the forward custom ops and the drop-in Functions raise the public functions' errors.


def _entry_points(dtype=torch.float32, n=6, d=4):
    """(entry point, args, argument names, main tensors) of every _C function, the saved tensors
    and upstream gradients taken from a real forward. Main tensors are the (N, D) inputs (and the
    saved views that stand for them), which may have any of the four float dtypes."""
    z1, z2 = _views(n, d, dtype, seed=13)
    ext = cuda_ops._ext(z1)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.tensor(0.5, dtype=acc, device=z1.device)
    gmat = lambda m: torch.linspace(-1, 1, m * m, dtype=acc, device=z1.device).reshape(m, m)  # noqa: E731
    w = [25.0, 25.0, 1.0, 1.0, 1e-4]
    vic, xc = ext.vicreg_fwd(z1, z2, *w, True), ext.cross_correlation_fwd(z1, z2, 1e-5)
    bt, sp = ext.barlow_twins_fwd(z1, z2, 0.0051, 1e-5, False), ext.spectral_fwd(z1, z2, 2.0, True)
    cov, ng = ext.covariance_fwd(z1, 1), ext.normalized_gram_fwd(z1, z2)
    du = ext.duality_terms_fwd(z1, False)
    mo, sr = ext.moments_fwd(z1, z2, 1), ext.spectral_rows_fwd(z1, z2, 2.0)
    gv = torch.linspace(-1, 1, 2 * d, dtype=torch.float64, device=z1.device).reshape(2, d)
    vw = ["inv_weight", "var_weight", "cov_weight", "gamma", "eps"]
    return [
        ("vicreg_fwd", [z1, z2, *w, True], ["z1", "z2", *vw, "sample"], {"z1", "z2"}),
        ("vicreg_bwd", [z1, z2, *vic[4:7], g, g, g, g, *w, True],
         ["z1", "z2", "x", "gram", "stats", "g_loss", "g_inv", "g_var", "g_cov", *vw, "sample"], {"z1", "z2"}),
        ("cross_correlation_fwd", [z1, z2, 1e-5], ["z1", "z2", "eps"], {"z1", "z2"}),
        ("cross_correlation_bwd", [xc[1], xc[2], gmat(d), 1e-5], ["x", "m2", "grad", "eps"], {"x"}),
        ("barlow_twins_fwd", [z1, z2, 0.0051, 1e-5, False], ["z1", "z2", "lambda_param", "eps", "sample"],
         {"z1", "z2"}),
        ("barlow_twins_bwd", [*bt[3:7], g, g, g, 0.0051, 1e-5, False],
         ["x", "grams", "m2", "cdiag", "g_loss", "g_on", "g_off", "lambda_param", "eps", "sample"], {"x"}),
        ("covariance_fwd", [z1, 1], ["z", "correction"], {"z"}),
        ("covariance_bwd", [cov[1], gmat(d), 1], ["x", "grad", "correction"], {"x"}),
        ("normalized_gram_fwd", [z1, z2], ["z1", "z2"], {"z1", "z2"}),
        ("normalized_gram_bwd", [z1, z2, ng[1], ng[2], gmat(n)], ["z1", "z2", "x", "q", "grad"], {"z1", "z2"}),
        ("spectral_fwd", [z1, z2, 2.0, True], ["z1", "z2", "mu", "sample"], {"z1", "z2"}),
        ("spectral_bwd", [z1, z2, *sp[3:6], g, g, g, 2.0, True],
         ["z1", "z2", "x", "grams", "q", "g_loss", "g_pos", "g_neg", "mu", "sample"], {"z1", "z2"}),
        ("moments_fwd", [z1, z2, 1], ["z1", "z2", "mode"], {"z1", "z2"}),
        ("moments_bwd", [z1, z2, mo[4], mo[1], g, gv, gv.clone(), torch.stack([gmat(d), gmat(d).T]), 1],
         ["z1", "z2", "x", "mean", "g_inv", "g_mean", "g_m2", "g_gram", "mode"], {"z1", "z2"}),
        ("spectral_rows_fwd", [z1, z2, 2.0], ["z1", "z2", "mu"], {"z1", "z2"}),
        ("spectral_rows_bwd", [z1, z2, sr[0], sr[2], sr[0].to(acc), sr[1], 2.0],
         ["z1", "z2", "x", "q", "g_x", "g_p", "mu"], {"z1", "z2"}),
        ("duality_terms_fwd", [z1, False], ["z", "sample"], {"z"}),
        ("duality_terms_bwd", [z1, *du[4:7], g, g, g, g, False],
         ["z", "gram", "q", "c", "g_lc", "g_lnc", "g_r4", "g_c4", "sample"], {"z"}),
    ]


def _non_contiguous(t):
    """t's values with the same shape in a strided (non-contiguous) layout."""
    out = torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device)[..., 0]
    out.copy_(t)
    return out


def _bad_tensors(t, main):
    """(what, bad version) of a tensor argument: another device, dtype, layout and shape."""
    other = torch.int32 if main else (torch.float32 if t.dtype == torch.float64 else torch.float64)
    bad = [("device", t.to("meta")), ("dtype", t.to(other)), ("shape", t.unsqueeze(0))]
    if t.numel() > 1:
        bad.append(("layout", _non_contiguous(t)))
    return bad


_BAD_SCALARS = {"eps": [-1e-3, float("nan")], "mu": [0.0, float("inf")], "correction": [-1, 6], "mode": [-1, 3],
                "inv_weight": [float("nan")], "var_weight": [float("inf")], "cov_weight": [float("nan")],
                "gamma": [float("-inf")], "lambda_param": [float("nan")]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bindings_check_every_argument(dtype):
    """Each _C entry point, each tensor argument on another device, of another dtype, strided, of
    another shape, and each scalar out of its domain: RuntimeError naming the entry point and the
    argument, raised before any work (the checks come first in every entry point; on the H200 the
    first of these calls killed the process instead, 2026-11-30). The valid call runs."""
    checked = 0
    for fn, args, names, main in _entry_points(dtype):
        entry = getattr(cuda_ops._ext(args[0]), fn)
        entry(*args)  # the valid call
        for i, (name, value) in enumerate(zip(names, args)):
            if isinstance(value, torch.Tensor):
                bad = _bad_tensors(value, name in main)
            else:
                bad = [(f"value {v}", v) for v in _BAD_SCALARS.get(name, [])]
            for what, b in bad:
                with pytest.raises(RuntimeError, match=rf"{fn}: .*\b{name}\b") as info:
                    entry(*args[:i], b, *args[i + 1:])
                assert type(info.value) is RuntimeError, (fn, name, what)
                checked += 1
    assert checked >= 250, checked


def test_bindings_check_agreement_and_sizes():
    """Arguments that are fine alone but not together, and sizes past the kernels' index types."""
    z1, z2 = _views(6, 4, torch.float32, seed=13)
    ext = cuda_ops._ext(z1)
    with pytest.raises(RuntimeError, match=r"vicreg_fwd: z1 and z2 must match in shape.*\[6, 4\].*\[5, 4\]"):
        ext.vicreg_fwd(z1, z2[:5].contiguous(), *V, True)  # the call that crashed the H200 run
    with pytest.raises(RuntimeError, match="z1 and z2 must match in shape, dtype"):
        ext.spectral_fwd(z1, z2.double(), 2.0, False)
    out = ext.vicreg_fwd(z1, z2, *V, True)
    g0 = torch.zeros((), device=z1.device)
    with pytest.raises(RuntimeError, match=r"gram must have shape \[2, 6, 6\], got \[2, 3, 3\]"):
        ext.vicreg_bwd(z1, z2, out[4], out[5][:, :3, :3].contiguous(), out[6], g0, g0, g0, g0, *V, True)
    with pytest.raises(RuntimeError, match=r"gram must have shape \[2, 4, 4\]"):  # the other side's Gram
        ext.vicreg_bwd(z1, z2, out[4], out[5], out[6], g0, g0, g0, g0, *V, False)
    with pytest.raises(RuntimeError, match=r"vicreg_fwd: z1 needs at least 2 rows"):
        ext.vicreg_fwd(z1[:1], z2[:1], *V, True)
    with pytest.raises(RuntimeError, match=r"duality_terms_fwd: z needs at least 1 rows and 1 columns"):
        ext.duality_terms_fwd(z1[:, :0].contiguous(), True)
    # one block per row: N must fit gridDim.x (2^31 - 1); an empty column dimension costs no memory
    huge = torch.empty(2**31, 0, device=z1.device)
    with pytest.raises(RuntimeError, match=r"covariance_fwd: z has shape \[2147483648, 0\]; the kernels take"):
        ext.covariance_fwd(huge, 1)
    with pytest.raises(RuntimeError, match=r"must be float32, float64, float16 or bfloat16"):
        ext.covariance_fwd(torch.zeros(3, 2, dtype=torch.int32, device=z1.device), 1)


def test_functions_and_custom_ops_raise_the_public_errors():
    """VICRegFunction.apply & co. and the forward custom ops, with bad shapes, dtypes, devices and
    scalars: the public function's exception type and message (docs/spec.md §6), before any kernel
    (tests/entry_points.py, shared with the Triton backend)."""
    assert check_entry_points("cuda", cuda_ops, "cuda_", _views) >= 90


# ------------------------------------------------------------------------------------------------
# GPU only (benchmarks/gpu_check.sh): TF32, bf16/fp16, inductor, opcheck on CUDA


def _check_reduced_precision(dtype, precision, rtol, side, shape, amplitude=None):
    """Every output and gradient of every function within rtol of float64 truth on the same rounded
    inputs, relative to its scale (accuracy._check_low_precision; eager bf16 is no oracle: the
    reference computes in fp32), and every loss, term and matrix of a bf16/fp16 input in float32
    (docs/spec.md). ``amplitude``: the views rescaled to that largest magnitude before rounding."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        z1, z2 = _views(*shape, torch.float64, seed=14)
        if amplitude is not None:
            s = amplitude / max(z1.abs().max().item(), z2.abs().max().item())
            z1, z2 = z1 * s, z2 * s
        z1, z2 = z1.to(dtype), z2.to(dtype)
        for name, kernel_fn, ref_fn in _loss_cases(side, _spectral_mu(z1)) + _matrix_cases():
            try:
                _check_low_precision(kernel_fn, ref_fn, [z1, z2], rtol=rtol)
                if dtype in (torch.float16, torch.bfloat16):
                    assert all(o.dtype == torch.float32 for o in _flat(kernel_fn(z1, z2))), "not float32"
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("dtype,precision,rtol", [
    pytest.param(torch.float32, "high", 2e-3, id="tf32", marks=[pytest.mark.cuda, requires_gpu]),
    pytest.param(torch.bfloat16, "highest", 2e-2, id="bf16"),
    pytest.param(torch.float16, "highest", 2e-2, id="fp16")])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", [(129, 70), (64, 512), (1000, 300)], ids=["129x70", "64x512", "1000x300"])
def test_reduced_precision(dtype, precision, rtol, side, shape):
    """TF32 GEMMs (fp32 under matmul precision "high", as eager under the same setting; GPU only)
    and bf16/fp16 (tensor cores on the GPU; in the simulator the kernels' bf16/fp16 conversions
    with GEMMs in fp32)."""
    if not ON_GPU and shape[0] * shape[1] > 40000:
        pytest.skip("the simulator runs the smaller shapes only (1000x300 takes minutes there)")
    _check_reduced_precision(dtype, precision, rtol, side, shape)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("shape", [(64, 300), (8, 4096), (512, 300)], ids=["64x300", "8x4096", "512x300"])
def test_fp16_large_values(side, shape):
    """fp16 inputs up to ±300: the Grams of such views exceed fp16's range (65504) long before the
    losses or their gradients do (N×N Gram entries up to 1.3e7 at 8x4096, 1.4e6 at 64x300), so no
    Gram or upstream gradient may enter a GEMM as an unscaled fp16 operand (csrc/bindings/common.h
    operand()). Before that, VICReg's and the spectral loss's gradients came back inf/NaN where
    the truth is below 5.3e4 (simulator, 2026-11-30). D up to 4096 in few rows; the simulator
    skips the D×D side at D=4096 (a 4096² Gram takes it ~15 s per function) and the 512-row case."""
    if not ON_GPU and (shape[0] > 256 or (side == "dimension" and shape[1] > 1024)):
        pytest.skip("the simulator runs the small cases only")
    _check_reduced_precision(torch.float16, "highest", 2e-2, side, shape, amplitude=300.0)


@pytest.mark.cuda
@requires_gpu
def test_cuda_compile_fullgraph_inductor():
    _compile_check("inductor", "cuda")


@pytest.mark.cuda
@requires_gpu
def test_cuda_opcheck_low_precision():
    for name, args in _op_cases(130, 70, torch.bfloat16, "cuda"):
        torch.library.opcheck(getattr(torch.ops.duality_kernels, name).default, args)


def test_eager_path_matches_the_custom_ops():
    """Eager calls run the ops as a torch.autograd.Function over the same _C calls (skipping
    torch.library's Python dispatch); the registered custom ops with their autograd must give
    the same bits, values and gradients."""
    z1, z2 = _views(23, 12, torch.float32, seed=16)
    ops = torch.ops.duality_kernels
    cases = [
        (lambda a, b: cuda_ops.vicreg(a, b, *V, "sample")[0], lambda a, b: ops.cuda_vicreg_fwd(a, b, *V, "sample")[0]),
        (lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, "dimension")[1]["off_diagonal"],
         lambda a, b: ops.cuda_barlow_twins_fwd(a, b, 0.0051, 1e-5, "dimension")[2]),
        (lambda a, b: cuda_ops.spectral(a, b, 2.0, "sample")[0], lambda a, b: ops.cuda_spectral_fwd(a, b, 2.0,
                                                                                                    "sample")[0]),
        (lambda a, b: cuda_ops.covariance(a, 1), lambda a, b: ops.cuda_covariance_fwd(a, 1)[0]),
        (lambda a, b: cuda_ops.cross_correlation(a, b, 1e-5), lambda a, b: ops.cuda_cross_correlation_fwd(a, b,
                                                                                                          1e-5)[0]),
        (lambda a, b: cuda_ops.normalized_gram(a), lambda a, b: ops.cuda_normalized_gram_fwd(a, None)[0]),
        (lambda a, b: cuda_ops.normalized_gram(a, b), lambda a, b: ops.cuda_normalized_gram_fwd(a, b)[0]),
        (lambda a, b: cuda_ops.duality_terms(a, "dimension")[1], lambda a, b: ops.cuda_duality_terms_fwd(a,
                                                                                                         "dimension")[1]),
    ]
    _check_same_bits(cases, z1, z2)


def test_tracing_uses_the_custom_ops():
    """Under FakeTensorMode (and other tracing) the public functions reach the custom ops and their
    fakes, not the eager torch.autograd.Function (which would call _C on fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z1 = torch.empty(9, 5, device=DEVICE)
        z2 = torch.empty(9, 5, device=DEVICE)
        loss, terms = cuda_ops.vicreg(z1, z2, *V, "dimension")
        assert loss.shape == () and terms["covariance"].shape == ()
        assert cuda_ops.normalized_gram(z1, z2).shape == (9, 9)


def test_autograd_function_subclasses():
    """docs/design.md convention 2: each op as a drop-in torch.autograd.Function (VICRegFunction.apply):
    the same bits as the functions above, and it compiles with fullgraph=True."""
    z1, z2 = _views(15, 8, torch.float32, seed=17)
    cases = [
        (lambda a, b: cuda_ops.VICRegFunction.apply(a, b, *V, "sample")[0],
         lambda a, b: cuda_ops.vicreg(a, b, *V, "sample")[0]),
        (lambda a, b: cuda_ops.BarlowTwinsFunction.apply(a, b, 0.0051, 1e-5, "dimension")[2],
         lambda a, b: cuda_ops.barlow_twins(a, b, 0.0051, 1e-5, "dimension")[1]["off_diagonal"]),
        (lambda a, b: cuda_ops.SpectralContrastiveFunction.apply(a, b, 2.0, "sample")[0],
         lambda a, b: cuda_ops.spectral(a, b, 2.0, "sample")[0]),
        (lambda a, b: cuda_ops.CovarianceFunction.apply(a, 1)[0], lambda a, b: cuda_ops.covariance(a, 1)),
        (lambda a, b: cuda_ops.CrossCorrelationFunction.apply(a, b, 1e-5)[0],
         lambda a, b: cuda_ops.cross_correlation(a, b, 1e-5)),
        (lambda a, b: cuda_ops.NormalizedGramFunction.apply(a, None)[0], lambda a, b: cuda_ops.normalized_gram(a)),
        (lambda a, b: cuda_ops.DualityTermsFunction.apply(a, "dimension")[0],
         lambda a, b: cuda_ops.duality_terms(a, "dimension")[0]),
    ]
    _check_same_bits(cases, z1, z2)
    _check_compiled(lambda a, b: cuda_ops.VICRegFunction.apply(a, b, *V, "dimension")[0], z1, z2, "aot_eager")
