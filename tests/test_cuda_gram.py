"""What only the CUDA C++ backend of the covariance family (duality_kernels/ops/cuda.py over
csrc/bindings/ and csrc/kernels/*.cu) has: the bindings' own checks, launch counts, the C++
autograd path, layouts past the small shapes, reduced precision. The tests both compiled backends
share are tests/test_gram_backends.py.

With a GPU the ops run on CUDA tensors. Without one they run on CPU tensors in the CPU simulator of
the same C++ source (duality_kernels/testing/csim.py: the kernels' arithmetic, indexing and launch bookkeeping; the
GEMMs go through ATen on the CPU). The simulator is built once per checkout (~1.5 min on 2 cores,
cached under build/csim). float32/float64 follow docs/design.md convention 5's accuracy rule; the ``cuda``
tests add TF32, bf16/fp16, inductor and opcheck on the GPU.
"""

import pytest
import torch

import duality_kernels as dk
from duality_kernels.ops import cuda as cuda_ops

from duality_kernels.testing import csim
from .gram_cases import check_named, compile_check, loss_cases, matrix_cases, op_cases
from .accuracy import (
    _check_low_precision, _flat, _spectral_mu, views,
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


# ------------------------------------------------------------------------------------------------
# every function, values and gradients (docs/spec.md §1–4), under the accuracy rule


# ------------------------------------------------------------------------------------------------
# gradients through single outputs, edge cases, layouts, determinism


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
    for name, kernel_fn, ref_fn in loss_cases(cuda_ops, side, _spectral_mu(z1)):
        check_named("cuda", name, kernel_fn, ref_fn, [z1, z2])
    for name, kernel_fn, ref_fn in matrix_cases(cuda_ops)[:3]:
        check_named("cuda", name, kernel_fn, ref_fn, [z1, z2])


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


# ------------------------------------------------------------------------------------------------
# torch.library: opcheck of every op (fwd and bwd), fakes, torch.compile


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
        for name, kernel_fn, ref_fn in loss_cases(cuda_ops, side, _spectral_mu(z1)) + matrix_cases(cuda_ops):
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
    compile_check(cuda_ops, "inductor", "cuda")


@pytest.mark.cuda
@requires_gpu
def test_cuda_opcheck_low_precision():
    for name, args in op_cases("cuda", 130, 70, torch.bfloat16, "cuda"):
        torch.library.opcheck(getattr(torch.ops.duality_kernels, name).default, args)


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


