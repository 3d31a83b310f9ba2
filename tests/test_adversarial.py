"""Probes of a hostile user, over every public function and backend (docs/spec.md §8).

Each class of probe once returned a silently wrong result somewhere: dynamic compile failed,
autocast changed result dtypes and values, torch.func transforms returned zeros, double backward
dropped terms, low temperatures gave −inf, a NaN gave finite gradients. Compiled backends run
under the Triton interpreter and the CUDA simulator here.
"""

import pytest
import torch

import duality_kernels as dk
from duality_kernels.ops import registry
from duality_kernels.testing import csim
from .accuracy import _flat
from .public_cases import DEFAULTS, PUBLIC, backends, call

_simulator = csim.module_fixture()

CASES = [(name, be) for name in PUBLIC for be in backends(name)]
COMPILED = [(name, be) for name, be in CASES if be != "torch"]


def _views(dtype=torch.float64, n=7, d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z2 = 0.6 * z1 + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def _fn(name, be):
    return call(name, DEFAULTS[name], be)


def _scalar(name, be):
    """The function reduced to one number (a fixed weighted sum of every output)."""
    f = _fn(name, be)

    def g(a, b):
        outs = _flat(f(a, b))
        return sum((o * (i + 1.5)).sum() for i, o in enumerate(outs))

    return g


@pytest.mark.parametrize("name,be", CASES)
def test_dynamic_compile(name, be):
    """torch.compile(fullgraph=True, dynamic=True) traces the call and gives the eager bits."""
    z1, z2 = _views()
    f = _fn(name, be)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: f(a, b), fullgraph=True, dynamic=True, backend="aot_eager")
    for got, want in zip(_flat(compiled(z1, z2)), _flat(f(z1, z2))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,be", CASES)
def test_autocast_does_not_reach_inside(name, be):
    """Under autocast, float32 inputs compute as float32 and return float32: the same values as
    without autocast, and every backend's result dtype is the same."""
    z1, z2 = _views(torch.float32)
    f = _fn(name, be)
    want = _flat(f(z1, z2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _flat(f(z1, z2))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32, (name, be, g.dtype)
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("name,be", COMPILED)
@pytest.mark.parametrize("transform", ["jvp", "grad", "jacrev", "hessian"])
def test_compiled_backends_refuse_transforms(name, be, transform):
    """Forward-mode AD and torch.func transforms raise a clear error naming backend='torch' (jvp
    returned zeros; the others raised torch's internal setup_context error)."""
    z1, z2 = _views()
    f = _scalar(name, be)
    run = {
        "jvp": lambda: torch.func.jvp(lambda a: f(a, z2), (z1,), (torch.ones_like(z1),)),
        "grad": lambda: torch.func.grad(lambda a: f(a, z2))(z1),
        "jacrev": lambda: torch.func.jacrev(lambda a: f(a, z2))(z1),
        "hessian": lambda: torch.func.hessian(lambda a: f(a, z2))(z1),
    }[transform]
    with pytest.raises(NotImplementedError, match="backend='torch'"):
        run()


@pytest.mark.parametrize("name", PUBLIC)
def test_torch_backend_transforms(name):
    """The torch reference supports them: torch.func.grad equals autograd, and jvp equals the
    directional derivative ⟨∇f, v⟩ from autograd."""
    z1, z2 = _views()
    f = _scalar(name, "torch")
    a = z1.clone().requires_grad_()
    (want,) = torch.autograd.grad(f(a, z2), a)
    torch.testing.assert_close(torch.func.grad(lambda t: f(t, z2))(z1), want, rtol=1e-12, atol=1e-12)
    v = torch.randn(z1.shape, generator=torch.Generator().manual_seed(3), dtype=z1.dtype)
    _, tangent = torch.func.jvp(lambda t: f(t, z2), (z1,), (v,))
    torch.testing.assert_close(tangent, (want * v).sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,be", COMPILED)
def test_compiled_double_backward_raises(name, be):
    """A gradient taken with create_graph=True cannot be differentiated again through a compiled op:
    it raises, naming backend='torch' (it returned a gradient without a graph: a gradient penalty
    silently lost this op's second derivative)."""
    z1, z2 = _views()
    a = z1.clone().requires_grad_()
    f = _scalar(name, be)
    with pytest.raises(RuntimeError, match="backend='torch'"):
        (g,) = torch.autograd.grad(f(a, z2), a, create_graph=True)
        torch.autograd.grad((g * g).sum(), a)


def _nan_pattern(name, be, z1, z2):
    """Which entries of every output and of both gradients (of _scalar's weighted sum) are NaN."""
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    outs = _flat(_fn(name, be)(a, b))
    total = sum((o * (i + 1.5)).sum() for i, o in enumerate(outs))
    ga, gb = torch.autograd.grad(total, (a, b), allow_unused=True)
    return [o.detach().isnan() for o in outs] + [ga.isnan(), torch.zeros_like(b, dtype=torch.bool) if gb is None
                                                  else gb.isnan()]


@pytest.mark.parametrize("name,be", COMPILED)
def test_nan_propagates_as_on_torch(name, be):
    """docs/spec.md §8.3: one NaN entry makes the same outputs and gradient entries NaN as on the
    torch backend (the cuda normalized_gram backward gave finite ~1e11 gradients in the NaN's row,
    and the cuda VICReg variance term came out finite: its column moment clamp dropped the NaN)."""
    z1, z2 = _views(torch.float32)
    z1[2, 3] = float("nan")
    want = _nan_pattern(name, "torch", z1, z2)
    got = _nan_pattern(name, be, z1, z2)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"item {i}: NaN at {g.nonzero().tolist()}, torch at {w.nonzero().tolist()}"


@pytest.mark.parametrize("name", PUBLIC)
def test_torch_backend_double_backward(name):
    """The torch reference supports double backward: gradgradcheck in float64."""
    z1, z2 = _views(n=5, d=4)
    f = _scalar(name, "torch")
    torch.autograd.gradgradcheck(lambda a: f(a, z2), (z1.clone().requires_grad_(),))


# ---- the wave-3 functions (torch backend; the compiled backends do not implement them yet)

_LABELS = torch.tensor([0, 1, 0, 2, 1, 1, 0])
_QUEUE = torch.randn(11, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
WAVE3 = {
    "supcon_loss": lambda a, b, **kw: dk.supcon_loss(torch.stack([a, b], 1), _LABELS, **kw),
    "moco_loss": lambda a, b, **kw: dk.moco_loss(a, b, _QUEUE.to(a.dtype), **kw),
    "hard_negative_ntxent_loss": lambda a, b, **kw: dk.hard_negative_ntxent_loss(a, b, **kw),
    "clip_loss": lambda a, b, **kw: dk.clip_loss(a, b, 14.3, **kw),
    "siglip_loss": lambda a, b, **kw: dk.siglip_loss(a, b, 10.0, -10.0, **kw),
    "singular_values": lambda a, b, **kw: dk.singular_values(a, **kw),
    "rankme": lambda a, b, **kw: dk.rankme(a, **kw),
    "coding_rate_loss": lambda a, b, **kw: dk.coding_rate_loss(a, **kw),
    "mcr2_loss": lambda a, b, **kw: dk.mcr2_loss(a, _LABELS, **kw),
    "mec_loss": lambda a, b, **kw: dk.mec_loss(a, b, **kw),
}
# mcr2_loss's class terms have data-dependent shapes (the class sizes): it cannot be traced whole
TRACEABLE = [n for n in WAVE3 if n != "mcr2_loss"]


@pytest.mark.parametrize("name", TRACEABLE)
@pytest.mark.parametrize("dynamic", [False, True])
def test_wave3_compile(name, dynamic):
    z1, z2 = _views()
    f = WAVE3[name]
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: f(a, b), fullgraph=True, dynamic=dynamic, backend="aot_eager")
    torch.testing.assert_close(compiled(z1, z2), f(z1, z2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(WAVE3))
def test_wave3_autocast(name):
    z1, z2 = _views(torch.float32)
    f = WAVE3[name]
    want = f(z1, z2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = f(z1, z2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# (the ones a backend registered are probed in their own test files, e.g. tests/test_supervised_triton.py)
@pytest.mark.parametrize("name,backend", [(n, b) for b in ("triton", "cuda") for n in WAVE3
                                          if registry.capability(b, n) is None])
def test_wave3_compiled_backends_say_so(name, backend):
    z1, z2 = _views()
    with pytest.raises(dk.BackendUnavailableError, match=f"backend='{backend}' does not implement {name}"):
        WAVE3[name](z1, z2, backend=backend)


# ---- the GPU halves (benchmarks/gpu_check.sh runs the cuda-marked tests on the GPU machine)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("loss", ["dcl_loss", "ntxent_loss", "infonce_loss"])
@pytest.mark.parametrize("temperature", [0.01, 0.005])
def test_gpu_low_temperature_bf16(loss, temperature):
    """bf16 log-sum-exp kernels at low temperatures on aligned views: finite, and within the accuracy
    rule of the eager reference in bf16 (both against float64)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    z1 = torch.randn(256, 64, device="cuda", generator=gen)
    z2 = z1 + 0.05 * torch.randn(256, 64, device="cuda", generator=gen)
    f = getattr(dk, loss)
    truth = f(z1.double(), z2.double(), temperature, backend="torch")
    a, b = z1.bfloat16().requires_grad_(), z2.bfloat16().requires_grad_()
    ours = f(a, b, temperature, backend="triton")
    (g,) = torch.autograd.grad(ours, a)
    eager = f(z1.bfloat16(), z2.bfloat16(), temperature, backend="torch")
    assert torch.isfinite(ours) and torch.isfinite(g).all(), (loss, temperature, ours)
    assert (ours.double() - truth).abs() <= 2 * (eager.double() - truth).abs() + 1e-3 * truth.abs()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", [n for n in PUBLIC if "cuda" in backends(n)])
def test_gpu_cuda_ops_under_autocast(name):
    """Every CUDA-extension op under torch.autocast("cuda", bfloat16) with float32 inputs: float32
    results equal to those without autocast (autocast once turned a product inside the extension into
    bf16 and the next kernel failed)."""
    z1, z2 = (t.float().cuda() for t in _views(torch.float32, n=64, d=48))
    f = _fn(name, "cuda")
    want = _flat(f(z1, z2))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = _flat(f(z1, z2))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=0)
