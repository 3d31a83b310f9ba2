"""backend="auto" on CUDA tensors (duality_kernels/_backend.py, the table in _cost.py) and the
torch reference's tensor-core products, checked without a GPU on fake CUDA tensors.

The expected choices are written out here from the H200 measurement the table was read from
(benchmarks/results/h200_2026-11-30_headline.csv), not computed with _cost.auto_order, so a change
to the table has to change this file too.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import duality_kernels as dk
from duality_kernels import _backend

GRAM = ["normalized_gram", "covariance", "cross_correlation", "sample_contrastive_criterion",
        "dimension_contrastive_criterion", "duality_terms", "vicreg_loss", "barlow_twins_loss",
        "spectral_contrastive_loss"]
LSE = ["ntxent_loss", "dcl_loss", "infonce_loss", "vicreg_exp_loss", "vicreg_ctr_loss"]
# the Gram-family losses whose compiled forms implement gather_distributed (ops/gathered.py): inside
# a group "auto" picks them as it does in one process
GATHERED = ["vicreg_loss", "barlow_twins_loss", "spectral_contrastive_loss"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


def expected(op, n, d, dtype, have, distributed):
    """The choice the measurements call for (_cost.py's comment), written independently."""
    if op in GRAM:
        if distributed and op not in GATHERED:
            return "torch"  # no gather_distributed form (the primitives and criteria take none)
        return "cuda" if "cuda" in have else ("triton" if "triton" in have else "torch")
    fast = (op in ("ntxent_loss", "dcl_loss") and dtype in (torch.bfloat16, torch.float16)
            and n % 16 == 0 and d % 16 == 0 and d <= 256)
    return "triton" if fast and "triton" in have else "torch"


@pytest.fixture
def availability(monkeypatch):
    """Set which compiled backends import: availability({"cuda", "triton"})."""
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)

    def set_have(have):
        monkeypatch.setattr(_backend, "available", lambda be: be in have)
    return set_have


def fake_cuda(n, d, dtype):
    with FakeTensorMode():
        return torch.empty(n, d, dtype=dtype, device="cuda")


@pytest.mark.parametrize("have", [{"cuda", "triton"}, {"triton"}, {"cuda"}, set()],
                         ids=["both", "triton-only", "cuda-only", "none"])
@pytest.mark.parametrize("distributed", [False, True], ids=["one-process", "group"])
def test_decision_table(availability, have, distributed):
    availability(have)
    shapes = [(2048, 8192), (2048, 256), (16384, 256), (2049, 256), (2048, 257), (4096, 1024), (2, 3)]
    for op in GRAM + LSE:
        for n, d in shapes:
            for dtype in DTYPES:
                z = fake_cuda(n, d, dtype)
                got = _backend.resolve("auto", op, z, distributed)
                assert got == expected(op, n, d, dtype, have, distributed), (op, n, d, dtype)


def test_cpu_tensors_stay_on_the_reference(availability):
    availability({"cuda", "triton"})
    for op in GRAM + LSE:
        assert _backend.resolve("auto", op, torch.empty(2048, 256, dtype=torch.bfloat16)) == "torch"


def test_environment_overrides_auto(availability, monkeypatch):
    availability({"cuda", "triton"})
    z = fake_cuda(2048, 256, torch.bfloat16)
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert _backend.resolve("auto", "vicreg_loss", z) == "torch"
    monkeypatch.setenv(_backend.ENV_VAR, "triton")
    assert _backend.resolve("auto", "vicreg_loss", z) == "triton"
    # a forced backend that lacks the op raises, as an explicit argument does ("auto" never does)
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    with pytest.raises(dk.BackendUnavailableError, match="does not implement ntxent_loss"):
        _backend.resolve("auto", "ntxent_loss", z)


class _OpLog(TorchDispatchMode):
    """Records every aten/custom op that reaches dispatch, with its tensor arguments' dtypes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
        out_dtype = (kwargs or {}).get("out_dtype")
        out_dtype = out_dtype or next((a for a in args if isinstance(a, torch.dtype)), None)
        self.calls.append((str(func), dtypes, out_dtype))
        return func(*args, **(kwargs or {}))


def _run_logged(fn, n, d, dtype):
    """The ops of a forward on fake CUDA tensors (autograd's engine needs a real device for the
    backward; the backward's products are checked on the CPU below)."""
    with FakeTensorMode():  # fake tensors hold no values: no generator (a CUDA one would need a driver)
        z1 = torch.randn(n, d, dtype=dtype, device="cuda", requires_grad=True)
        z2 = torch.randn(n, d, dtype=dtype, device="cuda", requires_grad=True)
        with _OpLog() as log:
            fn(z1, z2)
    return log.calls


def test_auto_runs_the_compiled_op_on_cuda(availability):
    """End to end through the public function: "auto" on CUDA bf16 tensors reaches the CUDA
    extension's custom op (its fake runs here), where it used to run the reference."""
    from duality_kernels.ops import cuda as cuda_ops

    if not cuda_ops.is_available():
        pytest.skip("the CUDA extension is not built in this install")
    availability({"cuda", "triton"})
    calls = _run_logged(lambda a, b: dk.vicreg_loss(a, b), 2048, 256, torch.bfloat16)
    names = [c[0] for c in calls]
    assert "duality_kernels.cuda_vicreg_fwd.default" in names
    assert not any("aten.mm" in c for c in names)


PRODUCTS = ("aten.mm", "aten.bmm", "aten.addmm", "aten.matmul", "aten.baddbmm")

REFERENCE_CASES = [
    ("vicreg_sample", lambda a, b: dk.vicreg_loss(a, b, side="sample", backend="torch")),
    ("vicreg_dimension", lambda a, b: dk.vicreg_loss(a, b, side="dimension", backend="torch")),
    ("barlow_sample", lambda a, b: dk.barlow_twins_loss(a, b, side="sample", backend="torch")),
    ("barlow_dimension", lambda a, b: dk.barlow_twins_loss(a, b, side="dimension", backend="torch")),
    ("spectral", lambda a, b: dk.spectral_contrastive_loss(a, b, backend="torch")),
    ("ntxent", lambda a, b: dk.ntxent_loss(a, b, backend="torch")),
    ("dcl", lambda a, b: dk.dcl_loss(a, b, backend="torch")),
    ("infonce", lambda a, b: dk.infonce_loss(a, b, backend="torch")),
    ("vicreg_exp", lambda a, b: dk.vicreg_exp_loss(a, b, backend="torch")),
    ("vicreg_ctr", lambda a, b: dk.vicreg_ctr_loss(a, b, backend="torch")),
    ("covariance", lambda a, b: dk.covariance(a, backend="torch").sum()),
    ("cross_correlation", lambda a, b: dk.cross_correlation(a, b, backend="torch").sum()),
    ("normalized_gram", lambda a, b: dk.normalized_gram(a, b, backend="torch").sum()),
    ("duality", lambda a, b: sum(dk.duality_terms(a, backend="torch"))),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name,fn", REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES])
def test_reference_products_on_tensor_cores(name, fn, dtype):
    """docs/spec.md's fp32 accumulation with half-precision operands: every product of the torch
    reference takes half operands and returns fp32 (tensor cores), never the fp32 upcast that
    ran on SIMT units (the H200 profile, docs/measurements.md). Every such product is reference.mm, whose backward
    (test_half_mm_backward) takes the same route."""
    calls = _run_logged(fn, 64, 48, dtype)
    products = [c for c in calls if c[0].split(".default")[0].split(".dtype")[0] in PRODUCTS]
    assert products, name
    for op, dtypes, out_dtype in products:
        assert all(t == dtype for t in dtypes), (name, op, dtypes)
        assert out_dtype == torch.float32, (name, op, out_dtype)


def test_reference_fp32_products_stay_fp32():
    """float32 inputs never take half-precision products in the reference; the sums of squared Gram
    entries take float64 ones (docs/spec.md §8.2: the float32 cancellation rule)."""
    calls = _run_logged(lambda a, b: dk.vicreg_loss(a, b, backend="torch"), 64, 48, torch.float32)
    products = [c for c in calls if c[0].startswith(PRODUCTS)]
    wide = ([torch.float32, torch.float32], [torch.float64, torch.float64])
    assert products and all(d in wide for _, d, _ in products), products


def test_half_mm_backward(monkeypatch):
    """reference.mm with a half ``op``: the forward and both backward products take operands
    rounded to ``op`` and accumulate in fp32 (the CPU emulation of the CUDA path, whose
    _mm_fp32 is the one place that differs); checked against an independent fp64 computation."""
    from duality_kernels import reference as R

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=gen, requires_grad=True)
    b = torch.randn(5, 3, generator=gen, requires_grad=True)
    g = torch.randn(7, 3, generator=gen)
    calls = []
    real = R._mm_fp32

    def spy(x, y):
        calls.append((x.dtype, y.dtype))
        return real(x, y)

    monkeypatch.setattr(R, "_mm_fp32", spy)
    out = R.mm(a, b, torch.bfloat16)
    da, db = torch.autograd.grad(out, (a, b), g)
    assert out.dtype == da.dtype == db.dtype == torch.float32
    assert calls == [(torch.bfloat16, torch.bfloat16)] * 3
    a16, b16, g16 = (t.detach().to(torch.bfloat16).double() for t in (a, b, g))
    torch.testing.assert_close(out.double(), a16 @ b16, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(da.double(), g16 @ b16.T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(db.double(), a16.T @ g16, rtol=1e-6, atol=1e-6)
