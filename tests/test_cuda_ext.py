"""The compiled extension duality_kernels._C and its custom ops (duality_kernels/ops/cuda.py).

Two groups:
- tests that run on any machine (no GPU needed): the extension was built and imports when torch
  is a CUDA build, the fake implementations give the right shapes/dtypes, a missing _C never
  breaks import, and the torch.library layer (schemas, fakes, autograd wiring) passes opcheck
  with a pure-torch stand-in for _C on CPU;
- @pytest.mark.cuda tests that run the kernels on a GPU against float64 ground truth
  (DESIGN convention 5) and opcheck the real ops.
"""

import subprocess
import sys
import textwrap

import pytest
import torch

import duality_kernels.ops.cuda as cuda_ops
import duality_kernels.ops._cuda_ext as cuda_ext

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "fp64", "bf16", "fp16"]

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reference(z):
    """SPEC: per-column mean and centered sum of squares, accumulated in float32 (float64 for
    float64). Differentiable; gradients come back in z's dtype."""
    x = z.to(_acc(z.dtype))
    mean = x.mean(0)
    m2 = (x - mean).pow(2).sum(0)
    return mean, m2


# ------------------------------------------------------------------------------------------------
# No GPU needed
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    torch.version.cuda is None,
    reason=f"torch {torch.__version__} is a CPU build: the CUDA extension is not built with it",
)
def test_extension_is_built_and_imports():
    assert cuda_ops.is_available(), (
        "torch is a CUDA build but duality_kernels._C is unavailable: " + cuda_ops.unavailable_reason()
    )
    assert cuda_ops.unavailable_reason() == ""
    import duality_kernels._C as C

    assert callable(C.column_stats_fwd) and callable(C.column_stats_bwd)
    # The bindings validate before touching the GPU, so this runs on a CPU-only machine too.
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        C.column_stats_fwd(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        C.column_stats_bwd(torch.zeros(3, 4), torch.zeros(4), torch.zeros(4), torch.zeros(4))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (0, 3), (4099, 37)])
def test_fake_impl_on_meta(shape, dtype):
    z = torch.empty(shape, device="meta", dtype=dtype)
    mean, m2 = torch.ops.duality_kernels.column_stats_fwd(z)
    for t in (mean, m2):
        assert t.device.type == "meta"
        assert t.shape == (shape[1],)
        assert t.dtype == _acc(dtype)
    dz = torch.ops.duality_kernels.column_stats_bwd(z, mean, mean, m2)
    assert dz.device.type == "meta" and dz.shape == shape and dz.dtype == dtype
    assert dz.is_contiguous()


def test_fake_impl_under_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = torch.empty(33, 9, dtype=torch.bfloat16)
        mean, m2 = cuda_ops.column_stats(z.t().contiguous().t())  # non-contiguous input
        assert mean.shape == (9,) and m2.shape == (9,)
        assert mean.dtype == m2.dtype == torch.float32
        dz = torch.ops.duality_kernels.column_stats_bwd(z, mean, mean, m2)
        assert dz.shape == (33, 9) and dz.dtype == torch.bfloat16


def test_missing_extension_never_breaks_import():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["duality_kernels._C"] = None  # as if the extension were not built
        import torch
        import duality_kernels
        import duality_kernels.ops.cuda as c
        assert not c.is_available()
        reason = c.unavailable_reason()
        assert "pip install --no-build-isolation -e ." in reason, reason
        assert "DUALITY_KERNELS_BUILD_CUDA=1" in reason, reason
        # fakes still work: shapes propagate without the extension
        mean, m2 = torch.ops.duality_kernels.column_stats_fwd(torch.empty(5, 7, device="meta"))
        assert mean.shape == (7,)
        try:
            c.column_stats(torch.zeros(3, 4))
        except RuntimeError as e:
            assert "pip install --no-build-isolation -e ." in str(e), str(e)
        else:
            raise AssertionError("the real op ran without the extension")
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


class _TorchStandIn:
    """The _C interface implemented in torch: lets the torch.library layer be tested on CPU."""

    @staticmethod
    def column_stats_fwd(z):
        x = z.to(_acc(z.dtype))
        mean = x.mean(0)
        return mean, (x - mean).pow(2).sum(0)

    @staticmethod
    def column_stats_bwd(z, mean, grad_mean, grad_m2):
        dz = grad_mean / z.shape[0] + 2.0 * (z.to(mean.dtype) - mean) * grad_m2
        return dz.to(z.dtype).contiguous()


def test_op_registration_with_stand_in(monkeypatch):
    monkeypatch.setattr(cuda_ext, "_C", _TorchStandIn())
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(11, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.library.opcheck(torch.ops.duality_kernels.column_stats_fwd.default, (z,))
    mean, m2 = cuda_ops.column_stats(z.detach())
    g1 = torch.randn(6, dtype=torch.float64, generator=gen)
    g2 = torch.randn(6, dtype=torch.float64, generator=gen)
    torch.library.opcheck(torch.ops.duality_kernels.column_stats_bwd.default, (z.detach(), mean, g1, g2))
    # autograd wiring: both outputs, one output (the other's grad is None), expanded grads
    torch.autograd.gradcheck(lambda t: cuda_ops.column_stats(t), (z,))
    (gz,) = torch.autograd.grad(cuda_ops.column_stats(z)[0].sum(), z)
    torch.testing.assert_close(gz, torch.full_like(z, 1.0 / z.shape[0]))
    (gz,) = torch.autograd.grad(cuda_ops.column_stats(z)[1].sum(), z)
    torch.testing.assert_close(gz, 2.0 * (z - z.mean(0)).detach())
    # non-contiguous input goes through column_stats
    zt = torch.randn(6, 11, dtype=torch.float64, generator=gen).t().requires_grad_()
    torch.autograd.gradcheck(lambda t: cuda_ops.column_stats(t), (zt,))
    # DESIGN convention 2: the ops trace without graph breaks, forward and backward
    def loss(t):
        mean, m2 = cuda_ops.column_stats(t)
        return mean.square().sum() + m2.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(z), z)
    (g_eager,) = torch.autograd.grad(loss(z), z)
    torch.testing.assert_close(g_compiled, g_eager)


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------

SHAPES = [
    (1, 7),  # N = 1: m2 = 0
    (2, 3),
    (2, 1),
    (31, 17),  # primes, one chunk
    (127, 257),
    (1000, 1),  # D = 1, 16 chunks
    (129, 2049),  # many column tiles and a few chunks
    (4099, 37),  # 65 chunks, a 3-row tail chunk, a 5-column tail tile
    (3, 5000),  # N << D
    (70000, 33),  # large N: stage 2 merges 511 partials
]


def _assert_close_to_truth(name, got, eager, truth, factor, dtype):
    """DESIGN convention 5: max|got - truth| <= factor * max|eager - truth| + atol, with the
    1e-6 floor made relative to the magnitude (m2 grows like N)."""
    got, eager = got.double(), eager.double()
    err = (got - truth).abs().max().item() if truth.numel() else 0.0
    eager_err = (eager - truth).abs().max().item() if truth.numel() else 0.0
    scale = max(1.0, truth.abs().max().item()) if truth.numel() else 1.0
    atol = (1e-12 if dtype == torch.float64 else 1e-6) * scale
    assert got.shape == truth.shape, f"{name}: shape {tuple(got.shape)} != {tuple(truth.shape)}"
    assert err <= factor * eager_err + atol, (
        f"{name}: kernel error {err:.3e} > {factor} x eager error {eager_err:.3e} + {atol:.1e}"
    )


def _check_values_and_grads(z, gen):
    n, d = z.shape
    acc = _acc(z.dtype)
    z = z.detach().requires_grad_()
    z64 = z.detach().double().requires_grad_()
    zref = z.detach().clone().requires_grad_()

    mean, m2 = cuda_ops.column_stats(z)
    assert mean.dtype == m2.dtype == acc and mean.shape == m2.shape == (d,)
    eager_mean, eager_m2 = _reference(zref)
    true_mean, true_m2 = _reference(z64)
    _assert_close_to_truth("mean", mean, eager_mean, true_mean, 2, z.dtype)
    _assert_close_to_truth("m2", m2, eager_m2, true_m2, 2, z.dtype)

    g_mean = torch.randn(d, device=z.device, dtype=acc, generator=gen)
    g_m2 = torch.randn(d, device=z.device, dtype=acc, generator=gen)
    (dz,) = torch.autograd.grad((mean, m2), z, (g_mean, g_m2))
    (eager_dz,) = torch.autograd.grad((eager_mean, eager_m2), zref, (g_mean, g_m2))
    (true_dz,) = torch.autograd.grad((true_mean, true_m2), z64, (g_mean.double(), g_m2.double()))
    assert dz.dtype == z.dtype
    _assert_close_to_truth("dz", dz, eager_dz, true_dz, 3, z.dtype)


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
def test_column_stats_matches_float64(shape, dtype):
    gen = torch.Generator(device="cuda").manual_seed(1234)
    z = torch.randn(shape, device="cuda", dtype=torch.float32, generator=gen).to(dtype)
    _check_values_and_grads(z, gen)


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_column_stats_offset_data(dtype):
    # Large mean, small spread: a sum-of-squares formula would cancel catastrophically.
    gen = torch.Generator(device="cuda").manual_seed(7)
    z = (100.0 + 0.5 * torch.randn(5003, 41, device="cuda", generator=gen)).to(dtype)
    _check_values_and_grads(z, gen)


@pytest.mark.cuda
@requires_gpu
def test_column_stats_single_output_grads_and_non_contiguous():
    gen = torch.Generator(device="cuda").manual_seed(3)
    base = torch.randn(45, 4099, device="cuda", generator=gen)
    z = base.t().requires_grad_()  # (4099, 45), non-contiguous
    mean, m2 = cuda_ops.column_stats(z)
    true_mean, true_m2 = _reference(z.detach().double())
    torch.testing.assert_close(mean.double(), true_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m2.double(), true_m2, rtol=1e-5, atol=1e-5)
    # m2 unused: its gradient arrives as None; mean.sum()'s gradient is an expanded (stride 0) tensor
    (dz,) = torch.autograd.grad(mean.sum(), z)
    torch.testing.assert_close(dz, torch.full_like(dz, 1.0 / z.shape[0]))
    (dz,) = torch.autograd.grad(cuda_ops.column_stats(z)[1].sum(), z)
    torch.testing.assert_close(dz.double(), 2.0 * (z.detach().double() - true_mean), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@requires_gpu
def test_column_stats_deterministic():
    gen = torch.Generator(device="cuda").manual_seed(5)
    z = torch.randn(70000, 33, device="cuda", generator=gen)
    first = cuda_ops.column_stats(z)
    for _ in range(3):
        again = cuda_ops.column_stats(z)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_column_stats_empty(dtype):
    z = torch.empty(0, 5, device="cuda", dtype=dtype, requires_grad=True)
    mean, m2 = cuda_ops.column_stats(z)
    assert mean.shape == m2.shape == (5,) and mean.dtype == _acc(dtype)
    assert torch.count_nonzero(mean) == 0 and torch.count_nonzero(m2) == 0
    (dz,) = torch.autograd.grad((mean, m2), z, (torch.ones_like(mean), torch.ones_like(m2)))
    assert dz.shape == (0, 5) and dz.dtype == dtype
    mean, m2 = cuda_ops.column_stats(torch.empty(4, 0, device="cuda", dtype=dtype))
    assert mean.shape == m2.shape == (0,)


@pytest.mark.cuda
@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 3), (4099, 37)], ids=["2x3", "4099x37"])
def test_opcheck_on_gpu(shape, dtype):
    gen = torch.Generator(device="cuda").manual_seed(11)
    z = torch.randn(shape, device="cuda", generator=gen).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.duality_kernels.column_stats_fwd.default, (z,))
    mean, m2 = cuda_ops.column_stats(z.detach())
    g1 = torch.randn(shape[1], device="cuda", dtype=_acc(dtype), generator=gen)
    g2 = torch.randn(shape[1], device="cuda", dtype=_acc(dtype), generator=gen)
    torch.library.opcheck(torch.ops.duality_kernels.column_stats_bwd.default, (z.detach(), mean, g1, g2))
