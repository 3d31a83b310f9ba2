"""The torch reference: float64 gradcheck of every loss and primitive, the duality identity of
docs/spec.md §2, side="sample" == side="dimension", dtypes, return_terms and the modules.

Comparisons with independent transcriptions of the official formulas are in test_official.py.
"""

import itertools

import pytest
import torch

import duality_kernels as dk

F64 = torch.float64


def _pair(n, d, seed=0, dtype=F64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z1 = (torch.randn(n, d, generator=g, dtype=F64) * scale).to(dtype)
    z2 = (z1.double() * 0.7 + 0.5 * torch.randn(n, d, generator=g, dtype=F64) * scale).to(dtype)
    return z1.requires_grad_(), z2.requires_grad_()


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, check_undefined_grad=False)


SMALL = [(2, 3), (5, 3), (3, 7), (7, 7)]


# ------------------------------------------------------------------------------------------
# gradcheck (float64) of every loss and primitive


@pytest.mark.parametrize("n,d", SMALL)
@pytest.mark.parametrize("side", ["sample", "dimension"])
def test_gradcheck_covariance_family(n, d, side):
    z1, z2 = _pair(n, d, seed=n * 31 + d, scale=0.8)
    _gradcheck(lambda a, b: dk.vicreg_loss(a, b, 2.0, 3.0, 5.0, gamma=1.2, side=side), z1, z2)
    _gradcheck(lambda a, b: dk.barlow_twins_loss(a, b, lambda_param=0.3, side=side), z1, z2)
    _gradcheck(lambda a, b: dk.spectral_contrastive_loss(a, b, mu=1.5, side=side), z1, z2)
    _gradcheck(lambda a: dk.sample_contrastive_criterion(a, side=side), z1)
    _gradcheck(lambda a: dk.dimension_contrastive_criterion(a, side=side), z1)
    _gradcheck(lambda a: torch.stack(dk.duality_terms(a, side=side)), z1)


@pytest.mark.parametrize("n,d", SMALL)
def test_gradcheck_exp_ctr(n, d):
    z1, z2 = _pair(n, d, seed=7 * n + d)
    _gradcheck(lambda a, b: dk.vicreg_exp_loss(a, b, 1.0, 2.0, 3.0, temperature=0.7), z1, z2)
    _gradcheck(lambda a, b: dk.vicreg_ctr_loss(a, b, 1.0, 2.0, 3.0, temperature=0.7), z1, z2)


@pytest.mark.parametrize("n,d", SMALL)
def test_gradcheck_primitives(n, d):
    z1, z2 = _pair(n, d, seed=3 * n + d)
    _gradcheck(lambda a: dk.normalized_gram(a), z1)
    _gradcheck(lambda a, b: dk.normalized_gram(a, b), z1, z2)
    _gradcheck(lambda a: dk.covariance(a), z1)
    _gradcheck(lambda a: dk.covariance(a, correction=0), z1)
    _gradcheck(lambda a, b: dk.cross_correlation(a, b), z1, z2)


@pytest.mark.parametrize("similarity,normalization,reduction",
                         list(itertools.product(["dot", "abs", "square"], ["l2", "center_l2", "dim_std"],
                                                 ["mean", "sum", "none"])))
def test_gradcheck_ntxent(similarity, normalization, reduction):
    z1, z2 = _pair(4, 5, seed=11)
    _gradcheck(lambda a, b: dk.ntxent_loss(a, b, 0.5, similarity, normalization, reduction), z1, z2)


@pytest.mark.parametrize("similarity,reduction",
                         list(itertools.product(["dot", "abs", "square"], ["mean", "sum", "none"])))
def test_gradcheck_dcl_infonce(similarity, reduction):
    z1, z2 = _pair(4, 5, seed=12)
    _gradcheck(lambda a, b: dk.dcl_loss(a, b, 0.5, similarity, reduction), z1, z2)
    _gradcheck(lambda a, b: dk.infonce_loss(a, b, 0.5, reduction), z1, z2)


# ------------------------------------------------------------------------------------------
# docs/spec.md §2: the identity and the two sides


@pytest.mark.parametrize("n,d", [(2, 2), (2, 17), (17, 2), (13, 64), (64, 13), (97, 31)])
def test_duality_identity(n, d):
    """L_nc + Σ_k ‖z_k‖⁴ = L_c + Σ_i ‖z_i‖⁴, with every term computed independently."""
    z = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(n * d))
    gram_n, gram_d = z @ z.T, z.T @ z
    l_c = (gram_n ** 2).sum() - (torch.diagonal(gram_n) ** 2).sum()
    l_nc = (gram_d ** 2).sum() - (torch.diagonal(gram_d) ** 2).sum()
    rows4 = (z.norm(dim=1) ** 4).sum()
    cols4 = (z.norm(dim=0) ** 4).sum()
    torch.testing.assert_close(l_nc + cols4, l_c + rows4, rtol=1e-12, atol=0)
    for side in ("auto", "sample", "dimension"):
        got = dk.duality_terms(z, side=side)
        for g, want in zip(got, (l_c, l_nc, rows4, cols4)):
            torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dk.sample_contrastive_criterion(z, side=side), l_c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dk.dimension_contrastive_criterion(z, side=side), l_nc, rtol=1e-10, atol=1e-10)


SIDE_LOSSES = {
    "vicreg": lambda a, b, s: dk.vicreg_loss(a, b, side=s),
    "barlow": lambda a, b, s: dk.barlow_twins_loss(a, b, side=s),
    "spectral": lambda a, b, s: dk.spectral_contrastive_loss(a, b, mu=2.0, side=s),
    "l_c": lambda a, b, s: dk.sample_contrastive_criterion(a, side=s),
    "l_nc": lambda a, b, s: dk.dimension_contrastive_criterion(a, side=s),
}


@pytest.mark.parametrize("name", sorted(SIDE_LOSSES))
@pytest.mark.parametrize("n,d", [(2, 3), (3, 2), (13, 64), (64, 13), (31, 97), (128, 130)])
def test_sides_agree_value_and_gradient(name, n, d):
    fn = SIDE_LOSSES[name]
    z1, z2 = _pair(n, d, seed=n + 1000 * d)
    out = {}
    for side in ("sample", "dimension"):
        loss = fn(z1, z2, side)
        out[side] = (loss.detach(), *torch.autograd.grad(loss, (z1, z2), allow_unused=True, materialize_grads=True))
    for a, b in zip(out["sample"], out["dimension"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    auto = fn(z1, z2, "auto").detach()
    torch.testing.assert_close(auto, out["sample"][0], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------
# dtypes: losses are float32 (float64 for float64), gradients in the input dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_output_and_gradient_dtypes(dtype):
    z1, z2 = _pair(8, 6, seed=5, dtype=dtype)
    want = F64 if dtype == F64 else torch.float32
    losses = [
        dk.vicreg_loss(z1, z2), dk.vicreg_exp_loss(z1, z2), dk.vicreg_ctr_loss(z1, z2),
        dk.barlow_twins_loss(z1, z2), dk.ntxent_loss(z1, z2), dk.dcl_loss(z1, z2),
        dk.infonce_loss(z1, z2), dk.spectral_contrastive_loss(z1, z2),
        dk.sample_contrastive_criterion(z1), dk.dimension_contrastive_criterion(z1),
    ]
    for loss in losses:
        assert loss.dtype == want and loss.dim() == 0
        g1, g2 = torch.autograd.grad(loss, (z1, z2), allow_unused=True, materialize_grads=True)
        assert g1.dtype == dtype and g2.dtype == dtype
        assert torch.isfinite(g1.float()).all()


def test_low_precision_close_to_float64():
    z1, z2 = _pair(32, 48, seed=9)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        a, b = z1.detach().to(dtype), z2.detach().to(dtype)
        for fn in (dk.vicreg_loss, dk.barlow_twins_loss, dk.ntxent_loss, dk.spectral_contrastive_loss):
            # the truth is the float64 loss of the same (rounded) inputs: only the arithmetic differs
            truth = fn(a.double(), b.double())
            torch.testing.assert_close(fn(a, b).double(), truth, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------
# return_terms, reductions, non-contiguous inputs, NaN propagation


def test_return_terms_recombine():
    z1, z2 = _pair(9, 5, seed=2)
    loss, t = dk.vicreg_loss(z1, z2, 2.0, 3.0, 4.0, return_terms=True)
    assert set(t) == {"invariance", "variance", "covariance"}
    torch.testing.assert_close(loss, 2 * t["invariance"] + 3 * t["variance"] + 4 * t["covariance"])
    torch.testing.assert_close(t["invariance"], ((z1 - z2) ** 2).mean())
    for fn in (dk.vicreg_exp_loss, dk.vicreg_ctr_loss):
        loss, t = fn(z1, z2, 2.0, 3.0, 4.0, return_terms=True)
        torch.testing.assert_close(loss, 2 * t["invariance"] + 3 * t["variance"] + 4 * t["covariance"])
    loss, t = dk.barlow_twins_loss(z1, z2, lambda_param=0.25, return_terms=True)
    torch.testing.assert_close(loss, t["on_diagonal"] + 0.25 * t["off_diagonal"])
    c = dk.cross_correlation(z1, z2)
    torch.testing.assert_close(t["on_diagonal"], ((1 - torch.diagonal(c)) ** 2).sum())
    loss, t = dk.spectral_contrastive_loss(z1, z2, return_terms=True)
    torch.testing.assert_close(loss, t["positive"] + t["negative"])


@pytest.mark.parametrize("fn", [dk.ntxent_loss, dk.dcl_loss, dk.infonce_loss])
def test_reductions_consistent(fn):
    z1, z2 = _pair(6, 4, seed=4)
    terms = fn(z1, z2, reduction="none")
    assert terms.shape == (12,)
    torch.testing.assert_close(fn(z1, z2, reduction="sum"), terms.sum())
    torch.testing.assert_close(fn(z1, z2, reduction="mean"), terms.mean())


def test_noncontiguous_inputs_accepted():
    base1, base2 = _pair(12, 10, seed=8)
    nc1, nc2 = base1.detach().T.contiguous().T, base2.detach().T.contiguous().T  # column-major
    assert not nc1.is_contiguous() and not nc2.is_contiguous()
    for fn in (dk.vicreg_loss, dk.barlow_twins_loss, dk.ntxent_loss, dk.spectral_contrastive_loss):
        torch.testing.assert_close(fn(nc1, nc2), fn(nc1.contiguous(), nc2.contiguous()))


def test_nan_propagates():
    z1, z2 = _pair(6, 5, seed=1)
    z1 = z1.detach().clone()
    z1[2, 3] = float("nan")
    for fn in (dk.vicreg_loss, dk.barlow_twins_loss, dk.ntxent_loss, dk.spectral_contrastive_loss,
               dk.infonce_loss, dk.dcl_loss, dk.vicreg_exp_loss, dk.vicreg_ctr_loss):
        assert torch.isnan(fn(z1, z2.detach())), fn.__name__


def test_constant_columns_finite():
    """A zero-variance column makes sqrt(var + eps) = sqrt(eps): finite value and gradient."""
    z1, z2 = _pair(8, 6, seed=6)
    z1 = z1.detach().clone()
    z1[:, 2] = 3.0
    z1.requires_grad_()
    for fn in (dk.vicreg_loss, dk.barlow_twins_loss):
        loss = fn(z1, z2)
        (g,) = torch.autograd.grad(loss, z1)
        assert torch.isfinite(loss) and torch.isfinite(g).all(), fn.__name__


# ------------------------------------------------------------------------------------------
# modules


def test_modules_match_functional():
    z1, z2 = _pair(10, 7, seed=13)
    torch.testing.assert_close(dk.VICRegLoss(3.0, 4.0, 5.0, eps=1e-3)(z1, z2),
                               dk.vicreg_loss(z1, z2, 3.0, 4.0, 5.0, eps=1e-3))
    torch.testing.assert_close(dk.BarlowTwinsLoss()(z1, z2), dk.barlow_twins_loss(z1, z2, lambda_param=5e-3))
    torch.testing.assert_close(dk.NTXentLoss()(z1, z2), dk.ntxent_loss(z1, z2, temperature=0.5))
    torch.testing.assert_close(dk.NTXentLoss(0.2, similarity="abs")(z1, z2),
                               dk.ntxent_loss(z1, z2, 0.2, similarity="abs"))
    torch.testing.assert_close(dk.DCLLoss()(z1, z2), dk.dcl_loss(z1, z2, 0.1))
    torch.testing.assert_close(dk.InfoNCELoss(0.3)(z1, z2), dk.infonce_loss(z1, z2, 0.3))
    torch.testing.assert_close(dk.SpectralContrastiveLoss(2.0)(z1, z2), dk.spectral_contrastive_loss(z1, z2, 2.0))
    torch.testing.assert_close(dk.VICRegExpLoss(temperature=0.3)(z1, z2), dk.vicreg_exp_loss(z1, z2, temperature=0.3))
    torch.testing.assert_close(dk.VICRegCtrLoss(temperature=0.3)(z1, z2), dk.vicreg_ctr_loss(z1, z2, temperature=0.3))
    loss, terms = dk.VICRegLoss(return_terms=True)(z1, z2)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_gather_distributed_single_process_is_world_one():
    z1, z2 = _pair(10, 7, seed=14)
    for fn in (dk.vicreg_loss, dk.barlow_twins_loss, dk.ntxent_loss, dk.dcl_loss, dk.infonce_loss,
               dk.spectral_contrastive_loss, dk.vicreg_exp_loss, dk.vicreg_ctr_loss):
        torch.testing.assert_close(fn(z1, z2, gather_distributed=True), fn(z1, z2))
