"""duality_kernels against lightly's loss classes, where lightly is importable.

lightly is an optional test dependency. It imports cheaply without its heavy requirements:

    pip install --no-deps "lightly==1.6.0" "torchvision==0.29.1"

(``lightly.loss`` needs ``torchvision.ops`` and nothing else beyond torch/numpy; ``--no-deps``
keeps pip from pulling hydra-core, pytorch-lightning and a different torch). Without it every
test here is skipped.

All comparisons run in float64 on the CPU. The lightly classes compared here (VICRegLoss,
NTXentLoss, DCLLoss, BarlowTwinsLoss) compute entirely in the input dtype (einsum / matmul /
F.mse_loss / F.cross_entropy / F.batch_norm, no float32 casts or float32 constants), so the
float64 results agree with ours to float64 rounding and the tolerance is the same ~1e-10
relative as tests/test_official.py.
"""

from __future__ import annotations

import inspect
import zlib

import pytest
import torch

try:
    import lightly.loss as lightly_loss
except ImportError as exc:  # lightly absent, or installed without torchvision
    pytest.skip(f"lightly.loss is not importable (optional test dependency): {exc}", allow_module_level=True)

import duality_kernels as dk  # noqa: E402

SHAPES = [(2, 3), (7, 5), (13, 64), (64, 13), (31, 97), (128, 130)]
RTOL = 1e-10
ATOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


def make_pair(n, d, *key):
    g = torch.Generator()
    g.manual_seed(zlib.crc32(repr(("lightly", n, d) + key).encode()))
    col = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * col
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64) * col
    return z1, z2


def assert_close(actual, expected, what, rtol=RTOL, atol=ATOL):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.detach() - expected.detach()).abs().max().item()
    scale = expected.detach().abs().max().item()
    assert err <= rtol * scale + atol, f"{what}: max|dk - lightly| = {err:.3e}, max|lightly| = {scale:.3e}"


def compare(ours, theirs, z1, z2, what):
    """Values and gradients w.r.t. both inputs, float64."""
    a = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    b = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    out = ours(*a)
    ref = theirs(*b)
    assert out.dtype == torch.float64 and out.dim() == 0
    assert_close(out, ref, f"{what} value")
    for i, (x, y) in enumerate(zip(torch.autograd.grad(out, a), torch.autograd.grad(ref, b))):
        assert_close(x, y, f"{what} grad[z{i + 1}]")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "params",
    [
        dict(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4),
        dict(lambda_param=3.0, mu_param=7.5, nu_param=0.3, eps=1e-3),
    ],
)
def test_vicreg_vs_lightly(shape, params):
    z1, z2 = make_pair(*shape, "vicreg")
    theirs = lightly_loss.VICRegLoss(**params)
    # lightly's hinge is relu(1 - std): gamma = 1.

    def ours(a, b):
        return dk.vicreg_loss(
            a,
            b,
            inv_weight=params["lambda_param"],
            var_weight=params["mu_param"],
            cov_weight=params["nu_param"],
            gamma=1.0,
            eps=params["eps"],
        )

    compare(ours, theirs, z1, z2, f"vicreg{shape}{params}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [0.1, 0.5, 0.07])
def test_ntxent_vs_lightly(shape, temperature):
    z1, z2 = make_pair(*shape, "ntxent")
    # lightly's default temperature is 0.5 and ours is 0.1: always pass it explicitly.
    theirs = lightly_loss.NTXentLoss(temperature=temperature)
    compare(lambda a, b: dk.ntxent_loss(a, b, temperature=temperature), theirs, z1, z2,
            f"ntxent{shape},t={temperature}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [0.1, 0.5, 0.07])
def test_dcl_vs_lightly(shape, temperature):
    z1, z2 = make_pair(*shape, "dcl")
    theirs = lightly_loss.DCLLoss(temperature=temperature)  # weight_fn=None
    compare(lambda a, b: dk.dcl_loss(a, b, temperature=temperature), theirs, z1, z2, f"dcl{shape},t={temperature}")


def _lightly_barlow_uses_batch_norm() -> bool:
    """Which standardization lightly's BarlowTwinsLoss applies along the batch.

    lightly >= 1.5 standardizes with ``F.batch_norm(..., training=True)``: biased variance plus
    eps = 1e-5, exactly the official nn.BatchNorm1d(affine=False) of docs/spec.md §3. Older releases used
    ``(z - z.mean(0)) / z.std(0)``: unbiased std and no eps, which is NOT the official formula.
    """
    from lightly.loss import barlow_twins_loss as module

    normalize = getattr(module, "_normalize", None)
    source = inspect.getsource(normalize if normalize is not None else module.BarlowTwinsLoss.forward)
    return "batch_norm" in source


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lambda_param", [5e-3, 0.02])
def test_barlow_twins_vs_lightly(shape, lambda_param):
    z1, z2 = make_pair(*shape, "barlow")
    theirs = lightly_loss.BarlowTwinsLoss(lambda_param=lambda_param)
    n, d = shape
    eye = torch.eye(d, dtype=torch.bool)

    if _lightly_barlow_uses_batch_norm():
        # Same normalization as the official code: the losses are equal (F.batch_norm's eps=1e-5).
        def ours(a, b):
            return dk.barlow_twins_loss(a, b, lambda_param=lambda_param, eps=1e-5)

        compare(ours, theirs, z1, z2, f"barlow{shape},l={lambda_param}")

        # And equal to the loss written from our primitive, cross_correlation (docs/spec.md §1).
        def from_primitive(a, b):
            c = dk.cross_correlation(a, b, eps=1e-5)
            return ((c.diagonal() - 1) ** 2).sum() + lambda_param * c[~eye].pow(2).sum()

        compare(from_primitive, theirs, z1, z2, f"barlow-from-xcorr{shape},l={lambda_param}")
    else:
        # Older lightly: z_hat = (z - mean) / std_unbiased, no eps. std_unbiased = std_biased *
        # sqrt(N / (N - 1)), so z_hat = s0(z) * sqrt((N - 1) / N) with s0 the eps-free batch
        # norm, and lightly's matrix is c = C0 * (N - 1) / N with C0 = cross_correlation(eps=0).
        # Its loss is therefore NOT barlow_twins_loss; it is exactly this relation:
        f = (n - 1) / n

        def lightly_relation(a, b):
            c = dk.cross_correlation(a, b, eps=0.0) * f
            return ((c.diagonal() - 1) ** 2).sum() + lambda_param * c[~eye].pow(2).sum()

        compare(lightly_relation, theirs, z1, z2, f"barlow-unbiased-std{shape},l={lambda_param}")


# ------------------------------------------------------------------------------------------
# drop-in completeness: the memory bank, weighted DCL, VICReg on (batch, ..., dim) inputs


@pytest.mark.parametrize("size,n", [((16, 6), 4), ((7, 6), 3), ((3, 6), 8), ((1, 6), 2)])
@pytest.mark.parametrize("gather_distributed", [False, True])
def test_memory_bank_ntxent_vs_lightly(size, n, gather_distributed):
    """Same seed, same initial bank (lightly's draw from the global generator); then the same losses,
    gradients, bank contents and pointer step after step. float32: lightly's bank is float32 and
    its einsum refuses other input dtypes."""
    torch.manual_seed(size[0] * 100 + n)
    ours = dk.NTXentLoss(0.3, memory_bank_size=size, gather_distributed=gather_distributed)
    torch.manual_seed(size[0] * 100 + n)
    theirs = lightly_loss.NTXentLoss(0.3, memory_bank_size=size, gather_distributed=gather_distributed)
    assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)
    for step in range(6):
        z1, z2 = (z.float() for z in make_pair(n, size[1], "bank", step))
        grad = step != 3  # lightly updates the bank only when out0 requires grad
        a = [z1.clone().requires_grad_(grad), z2.clone().requires_grad_(True)]
        b = [z1.clone().requires_grad_(grad), z2.clone().requires_grad_(True)]
        out, ref = ours(*a), theirs(*b)
        assert_close(out, ref, f"step {step} value", rtol=1e-5, atol=1e-6)
        wrt = slice(0, 2) if grad else slice(1, 2)
        for x, y in zip(torch.autograd.grad(out, a[wrt]), torch.autograd.grad(ref, b[wrt])):
            assert_close(x, y, f"step {step} grad", rtol=1e-5, atol=1e-6)
        assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank), f"step {step}: bank"
        assert torch.equal(ours.memory_bank.bank_ptr, theirs.memory_bank.bank_ptr), f"step {step}: pointer"


@pytest.mark.parametrize("size", [64, -1, (4, 3, 2), (-2, 3)])
def test_memory_bank_size_refused_like_lightly(size):
    with pytest.raises(ValueError):
        lightly_loss.NTXentLoss(memory_bank_size=size)
    with pytest.raises(ValueError, match=r"memory_bank_size"):
        dk.NTXentLoss(memory_bank_size=size)


@pytest.mark.parametrize("size", [0, (0,), (0, 5)])
def test_memory_bank_disabled_like_lightly(size):
    z1, z2 = make_pair(6, 5, "nobank")
    compare(dk.NTXentLoss(0.2, memory_bank_size=size), lightly_loss.NTXentLoss(0.2, memory_bank_size=size),
            z1, z2, f"bank {size}")


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (31, 97)])
@pytest.mark.parametrize("sigma", [0.5, 1e-7, 1e4])
def test_dclw_vs_lightly(shape, sigma):
    z1, z2 = make_pair(*shape, "dclw")
    compare(dk.DCLWLoss(0.2, sigma=sigma), lightly_loss.DCLWLoss(0.2, sigma=sigma), z1, z2, f"dclw{shape},{sigma}")


@pytest.mark.parametrize("shape", [(2, 3), (13, 64)])
def test_dcl_weight_fn_vs_lightly(shape):
    from lightly.loss.dcl_loss import negative_mises_fisher_weights

    z1, z2 = make_pair(*shape, "dclfn")

    def with_gradient(a, b):
        return ((a - b) ** 2).sum(dim=1)

    for fn in (with_gradient, negative_mises_fisher_weights):
        compare(dk.DCLLoss(0.3, weight_fn=fn), lightly_loss.DCLLoss(0.3, weight_fn=fn), z1, z2, f"dcl {fn.__name__}")


@pytest.mark.parametrize("shape", [(4, 3, 5), (5, 2, 3, 7), (2, 10, 32), (6, 1, 4)])
def test_vicreg_many_positions_vs_lightly(shape):
    g = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    z1 = torch.randn(*shape, generator=g, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(*shape, generator=g, dtype=torch.float64)
    compare(dk.VICRegLoss(3.0, 7.5, 0.3, eps=1e-3), lightly_loss.VICRegLoss(3.0, 7.5, 0.3, eps=1e-3), z1, z2,
            f"vicreg{shape}")
