"""duality_kernels against the eager official formulas of duality_kernels/testing/official.py.

Everything runs on the CPU in float64 (values and gradients must agree to ~1e-10 relative, the
library being free to compute on either side of the duality and to fuse or reorder reductions),
plus one float32 pass checked against float64 truth. The first section checks the oracle itself
(identities of docs/spec.md and naive loop transcriptions), so it means something when the library and the
oracle agree.

The backend under test defaults to the public default ("auto", which is the torch path on a CPU);
``DK_TEST_BACKEND=torch`` (or another backend name) selects another one.
"""

from __future__ import annotations

import inspect
import math
import os
import zlib

import pytest
import torch
import torch.nn.functional as F

import duality_kernels as dk
from duality_kernels.testing import official as off

BACKEND = os.environ.get("DK_TEST_BACKEND", "auto")

# N < D, N > D, N = 2, primes, sizes just off a power of two.
SHAPES = [(2, 3), (2, 17), (7, 5), (13, 64), (64, 13), (31, 97), (97, 31), (128, 130)]
SMALL_SHAPES = [(2, 3), (7, 5), (13, 64), (97, 31)]
CROSS_SHAPES = [(2, 3), (13, 64), (97, 31)]
SIDES = ["auto", "sample", "dimension"]
SIMILARITIES = ["dot", "abs", "square"]
NORMALIZATIONS = ["l2", "center_l2", "dim_std"]
REDUCTIONS = ["mean", "sum", "none"]

RTOL64 = 1e-10
ATOL64 = 1e-12


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _gen(*key) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(repr(key).encode()))
    return g


def make_pair(n: int, d: int, *key, dtype=torch.float64):
    """Two correlated views whose column and row scales straddle 1 (the VICReg hinges' gamma)."""
    g = _gen("pair", n, d, *key)
    col = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    row = 0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * col * row
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64) * col
    return z1.to(dtype), z2.to(dtype)


def make_spectral_pair(n: int, d: int, mu: float, *key, dtype=torch.float64):
    """Views whose row norms are uniform in [0.2, 3] * sqrt(mu): both branches of the clamp."""
    g = _gen("spectral", n, d, mu, *key)
    out = []
    for _ in range(2):
        z = torch.randn(n, d, generator=g, dtype=torch.float64)
        r = (0.2 + 2.8 * torch.rand(n, 1, generator=g, dtype=torch.float64)) * math.sqrt(mu)
        out.append((F.normalize(z, dim=1) * r).to(dtype))
    return out


def _max_err(actual: torch.Tensor, expected: torch.Tensor):
    err = (actual.detach().double() - expected.detach().double()).abs().max().item()
    scale = expected.detach().double().abs().max().item()
    return err, scale


def assert_close(actual, expected, what, rtol=RTOL64, atol=ATOL64):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(expected).all(), f"{what}: the oracle is not finite (bad test input)"
    err, scale = _max_err(actual, expected)
    assert err <= rtol * scale + atol, (
        f"{what}: max|dk - official| = {err:.3e} > rtol*max|official| + atol = "
        f"{rtol:.0e}*{scale:.3e} + {atol:.0e}"
    )


def check(dk_fn, off_fn, inputs, dk_kwargs=None, off_kwargs=None, what="", rtol=RTOL64, atol=ATOL64):
    """Value and input gradients (for a random cotangent) of dk_fn vs off_fn on float64 inputs."""
    dk_kwargs = dict(dk_kwargs or {})
    dk_kwargs.setdefault("backend", BACKEND)
    off_kwargs = off_kwargs if off_kwargs is not None else {k: v for k, v in dk_kwargs.items() if k not in ("backend",
                                                                                                            "side")}
    originals = [x.clone() for x in inputs]
    a = [x.detach().clone().requires_grad_(True) for x in inputs]
    b = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = dk_fn(*a, **dk_kwargs)
    ref = off_fn(*b, **off_kwargs)
    assert out.dtype == ref.dtype, f"{what}: dtype {out.dtype} != {ref.dtype}"
    assert_close(out, ref, f"{what} value", rtol, atol)
    cot = torch.randn(ref.shape, generator=_gen("cot", what), dtype=ref.dtype)
    ga = torch.autograd.grad(out, a, cot)
    gb = torch.autograd.grad(ref, b, cot)
    for i, (x, y) in enumerate(zip(ga, gb)):
        assert x.dtype == inputs[i].dtype, f"{what}: grad dtype {x.dtype}"
        assert_close(x, y, f"{what} grad[z{i + 1}]", rtol, atol)
    for x, o in zip(inputs, originals):
        assert torch.equal(x, o), f"{what}: an input was modified in place"


def has_kwarg(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# 1. the oracle itself (no duality_kernels involved)
# ----------------------------------------------------------------------------------------------


def _loop_offsq(a: torch.Tensor) -> torch.Tensor:
    total = a.new_zeros(())
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if i != j:
                total = total + a[i, j] ** 2
    return total


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (5, 7), (13, 29)])
def test_oracle_off_diagonal_and_criteria(shape):
    n, d = shape
    z, _ = make_pair(n, d)
    for a in (z @ z.T, z.T @ z):
        flat = off.off_diagonal(a)
        assert flat.numel() == a.shape[0] * (a.shape[0] - 1)
        torch.testing.assert_close(flat.pow(2).sum(), _loop_offsq(a), rtol=1e-13, atol=0)
    lc = off.sample_contrastive_official(z)
    lnc = off.dimension_contrastive_official(z)
    torch.testing.assert_close(lc, _loop_offsq(z @ z.T), rtol=1e-13, atol=0)
    torch.testing.assert_close(lnc, _loop_offsq(z.T @ z), rtol=1e-13, atol=0)
    # docs/spec.md §2 (paper Thm 3.3): L_nc + sum_k ||z_:,k||^4 = L_c + sum_i ||z_i||^4.
    l_c, l_nc, rows4, cols4 = off.duality_terms_official(z)
    torch.testing.assert_close(l_nc + cols4, l_c + rows4, rtol=1e-12, atol=0)
    torch.testing.assert_close((z @ z.T).pow(2).sum(), (z.T @ z).pow(2).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (31, 17)])
def test_oracle_primitives(shape):
    n, d = shape
    z1, z2 = make_pair(n, d)
    torch.testing.assert_close(
        off.normalized_gram_official(z1, z2),
        F.cosine_similarity(z1[:, None, :], z2[None, :, :], dim=-1),
        rtol=1e-12,
        atol=1e-14,
    )
    torch.testing.assert_close(off.normalized_gram_official(z1), off.normalized_gram_official(z1, z1))
    for correction in (0, 1):
        torch.testing.assert_close(
            off.covariance_official(z1, correction), torch.cov(z1.T, correction=correction), rtol=1e-12, atol=1e-14
        )
    for eps in (1e-5, 1e-9, 1e-2):  # torch 2.14 refuses eps=0 in train-mode batch_norm
        bn = torch.nn.BatchNorm1d(d, affine=False, eps=eps, dtype=torch.float64).train()
        expected = bn(z1).T @ bn(z2) / n
        torch.testing.assert_close(off.cross_correlation_official(z1, z2, eps), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (13, 29), (29, 13)])
def test_oracle_vicreg_family(shape):
    n, d = shape
    z1, z2 = make_pair(n, d)
    kw = dict(inv_weight=3.0, var_weight=7.5, cov_weight=0.3, gamma=1.3, eps=1e-3)
    # Term by term, with torch.var / torch.cov and the loop offsq.
    inv = ((z1 - z2) ** 2).mean()
    var = sum(F.relu(1.3 - torch.sqrt(z.var(dim=0, unbiased=True) + 1e-3)).mean() for z in (z1, z2)) / 2
    cov = sum(_loop_offsq(torch.cov(z.T)) / d for z in (z1, z2))
    torch.testing.assert_close(off.vicreg_official(z1, z2, **kw), 3.0 * inv + 7.5 * var + 0.3 * cov, rtol=1e-12, atol=0)
    # docs/spec.md §3 note: c(z) = L_nc(center(z)) / ((N - 1)^2 D), also equal to L_c side via the identity.
    for z in (z1, z2):
        x = z - z.mean(0)
        c = off.off_diagonal(torch.cov(z.T)).pow(2).sum() / d
        torch.testing.assert_close(c, off.dimension_contrastive_official(x) / ((n - 1) ** 2 * d), rtol=1e-12, atol=0)
        l_c, l_nc, rows4, cols4 = off.duality_terms_official(x)
        torch.testing.assert_close(c, (l_c + rows4 - cols4) / ((n - 1) ** 2 * d), rtol=1e-9, atol=1e-13)
    # VICReg-exp with a loop log-sum-exp over l != k.
    tau = 0.37

    def lse_loop(m):
        rows = []
        for k in range(m.shape[0]):
            rows.append(torch.log(sum(torch.exp(m[k, l] / tau) for l in range(m.shape[0]) if l != k)))
        return torch.stack(rows).mean()

    exp_expected = 3.0 * inv + 7.5 * var + 0.3 * sum(lse_loop(torch.cov(z.T)) for z in (z1, z2))
    torch.testing.assert_close(off.vicreg_exp_official(z1, z2, temperature=tau, **kw), exp_expected, rtol=1e-12, atol=0)
    # VICReg-ctr: the same on the transposed, dimension-centred matrix (rows are the "features").
    ctr_var = 0
    ctr_cov = 0
    for z in (z1, z2):
        xt = (z - z.mean(0)).T  # (D, N): columns are the samples
        ctr_var = ctr_var + F.relu(1.3 - torch.sqrt(xt.var(dim=0) + 1e-3)).mean() / 2
        ctr_cov = ctr_cov + lse_loop(torch.cov(xt.T))  # cov over the D entries of each sample
    ctr_expected = 3.0 * inv + 7.5 * ctr_var + 0.3 * ctr_cov
    torch.testing.assert_close(off.vicreg_ctr_official(z1, z2, temperature=tau, **kw), ctr_expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (13, 29)])
def test_oracle_barlow(shape):
    n, d = shape
    z1, z2 = make_pair(n, d)
    bn = torch.nn.BatchNorm1d(d, affine=False, eps=1e-3, dtype=torch.float64).train()
    c = bn(z1).T @ bn(z2) / n
    eye = torch.eye(d, dtype=torch.bool)
    expected = ((c.diagonal() - 1) ** 2).sum() + 0.02 * c[~eye].pow(2).sum()
    torch.testing.assert_close(off.barlow_twins_official(z1, z2, 0.02, 1e-3), expected, rtol=1e-12, atol=0)


def _loop_pair_terms(z1, z2, tau, similarity, decoupled, normalization="l2"):
    """Per-anchor NT-Xent / DCL terms with python loops (docs/spec.md §4, read literally)."""
    n = z1.shape[0]
    if normalization == "l2":
        u = torch.cat([z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)])
    elif normalization == "center_l2":
        x1, x2 = z1 - z1.mean(0), z2 - z2.mean(0)
        u = torch.cat([x1 / x1.norm(dim=1, keepdim=True), x2 / x2.norm(dim=1, keepdim=True)])
    else:
        d = z1.shape[1]
        x1, x2 = z1 - z1.mean(0), z2 - z2.mean(0)
        u = torch.cat([x / x.norm(dim=0, keepdim=True) * math.sqrt(n / d) for x in (x1, x2)])
    t = {"dot": lambda c: c / tau, "abs": lambda c: c.abs() / tau, "square": lambda c: c * c / tau}[similarity]
    terms = []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        pos = torch.dot(u[a], u[p]) / tau
        denom = []
        for b in range(2 * n):
            if b == a or (decoupled and b == p):
                continue
            denom.append(pos if b == p else t(torch.dot(u[a], u[b])))
        terms.append(-pos + torch.logsumexp(torch.stack(denom), dim=0))
    return torch.stack(terms)


@pytest.mark.parametrize("shape", [(2, 3), (5, 7), (9, 4)])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_oracle_ntxent_dcl_loops(shape, similarity):
    n, d = shape
    z1, z2 = make_pair(n, d)
    tau = 0.3
    for normalization in NORMALIZATIONS:
        loop = _loop_pair_terms(z1, z2, tau, similarity, False, normalization)
        got = off.ntxent_official(z1, z2, tau, similarity, normalization, "none")
        torch.testing.assert_close(got, loop, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(off.ntxent_official(z1, z2, tau, similarity, normalization, "mean"), loop.mean())
        torch.testing.assert_close(off.ntxent_official(z1, z2, tau, similarity, normalization, "sum"), loop.sum())
        # "mean" == "sum" / (2N)
        torch.testing.assert_close(
            off.ntxent_official(z1, z2, tau, similarity, normalization, "mean"),
            off.ntxent_official(z1, z2, tau, similarity, normalization, "sum") / (2 * n),
        )
    loop = _loop_pair_terms(z1, z2, tau, similarity, True)
    torch.testing.assert_close(off.dcl_official(z1, z2, tau, similarity, "none"), loop, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(off.dcl_official(z1, z2, tau, similarity, "mean"), loop.mean())
    torch.testing.assert_close(off.dcl_official(z1, z2, tau, similarity, "sum"), loop.sum())


def test_oracle_ntxent_gradient_is_finite_and_matches_loop():
    # The -inf self-mask must not leak NaN into the backward.
    z1, z2 = make_pair(6, 5)
    a = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    b = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    for sim in SIMILARITIES:
        g1 = torch.autograd.grad(off.ntxent_official(*a, 0.2, sim, "l2", "sum"), a)
        g2 = torch.autograd.grad(_loop_pair_terms(*b, 0.2, sim, False).sum(), b)
        for x, y in zip(g1, g2):
            assert torch.isfinite(x).all()
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-13)
        g1 = torch.autograd.grad(off.dcl_official(*a, 0.2, sim, "sum"), a)
        g2 = torch.autograd.grad(_loop_pair_terms(*b, 0.2, sim, True).sum(), b)
        for x, y in zip(g1, g2):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("shape", [(2, 3), (6, 11)])
def test_oracle_infonce(shape):
    n, d = shape
    z1, z2 = make_pair(n, d)
    tau = 0.25
    s = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / tau
    rows = [-s[i, i] + torch.logsumexp(s[i], 0) for i in range(n)]
    cols = [-s[i, i] + torch.logsumexp(s[:, i], 0) for i in range(n)]
    terms = torch.stack(rows + cols)
    torch.testing.assert_close(off.infonce_official(z1, z2, tau, "none"), terms, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(off.infonce_official(z1, z2, tau, "mean"), terms.mean())
    torch.testing.assert_close(off.infonce_official(z1, z2, tau, "sum"), terms.sum())


@pytest.mark.parametrize("shape", [(2, 3), (7, 5), (13, 29)])
@pytest.mark.parametrize("mu", [1.0, 0.5, 2.5])
def test_oracle_spectral(shape, mu):
    n, d = shape
    z1, z2 = make_spectral_pair(n, d, mu)
    norms = torch.cat([z1.norm(dim=1), z2.norm(dim=1)])
    # docs/spec.md §4 literally: rows longer than sqrt(mu) rescaled to sqrt(mu), then the closed form.
    def clamp(z):
        nz = z.norm(dim=1, keepdim=True)
        return torch.where(nz > math.sqrt(mu), z / nz * math.sqrt(mu), z)

    a, b = clamp(z1), clamp(z2)
    pos = (a * b).sum()
    offsq = _loop_offsq(a @ b.T)
    expected = (-(2.0 / n) * pos + offsq / (n * (n - 1))) / mu
    torch.testing.assert_close(off.spectral_official(z1, z2, mu), expected, rtol=1e-12, atol=1e-14)
    # The D x D side of docs/spec.md §4 gives the same offsq.
    torch.testing.assert_close(((a.T @ a) * (b.T @ b)).sum() - ((a * b).sum(1) ** 2).sum(), offsq, rtol=1e-11,
                               atol=1e-13)
    if n > 2:
        assert (norms < math.sqrt(mu)).any() and (norms > math.sqrt(mu)).any()


# ----------------------------------------------------------------------------------------------
# 2. duality_kernels vs the oracle, float64
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_normalized_gram(shape):
    z1, z2 = make_pair(*shape, "gram")
    check(dk.normalized_gram, off.normalized_gram_official, [z1, z2], what=f"normalized_gram{shape}")
    check(dk.normalized_gram, off.normalized_gram_official, [z1], what=f"normalized_gram(z){shape}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("correction", [1, 0])
def test_covariance(shape, correction):
    (z,) = make_pair(*shape, "cov")[:1]
    check(dk.covariance, off.covariance_official, [z], dict(correction=correction),
          what=f"covariance{shape},c={correction}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_cross_correlation(shape, eps):
    z1, z2 = make_pair(*shape, "xcorr")
    check(dk.cross_correlation, off.cross_correlation_official, [z1, z2], dict(eps=eps), what=f"xcorr{shape},eps={eps}")


def test_cross_correlation_default_eps():
    z1, z2 = make_pair(9, 6, "xcorr-default")
    check(dk.cross_correlation, off.cross_correlation_official, [z1, z2], {}, {}, what="xcorr default eps")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("side", SIDES)
def test_criteria(shape, side):
    (z,) = make_pair(*shape, "crit")[:1]
    check(dk.sample_contrastive_criterion, off.sample_contrastive_official, [z], dict(side=side),
          what=f"L_c{shape},{side}")
    check(
        dk.dimension_contrastive_criterion,
        off.dimension_contrastive_official,
        [z],
        dict(side=side),
        what=f"L_nc{shape},{side}",
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_duality_terms(shape):
    (z,) = make_pair(*shape, "terms")[:1]
    sides = SIDES if has_kwarg(dk.duality_terms, "side") else [None]
    names = ("L_c", "L_nc", "sum_i |z_i|^4", "sum_k |z_k|^4")
    for side in sides:
        kw = {"backend": BACKEND} if side is None else {"backend": BACKEND, "side": side}
        za = z.clone().requires_grad_(True)
        zb = z.clone().requires_grad_(True)
        got = dk.duality_terms(za, **kw)
        ref = off.duality_terms_official(zb)
        assert len(got) == 4
        for name, x, y in zip(names, got, ref):
            assert x.dtype == torch.float64 and x.dim() == 0
            assert_close(x, y, f"duality_terms {name} {shape} side={side}")
        # docs/spec.md §2 identity on the library's own numbers.
        l_c, l_nc, rows4, cols4 = got
        assert_close(l_nc + cols4, l_c + rows4, f"identity {shape} side={side}", rtol=1e-11)
        # Gradients of a random combination of the four.
        w = torch.randn(4, generator=_gen("terms-w", shape), dtype=torch.float64)
        ga = torch.autograd.grad(sum(wi * t for wi, t in zip(w, got)), za)[0]
        gb = torch.autograd.grad(sum(wi * t for wi, t in zip(w, ref)), zb)[0]
        assert_close(ga, gb, f"duality_terms grad {shape} side={side}")


VICREG_KWARGS = [
    {},
    dict(inv_weight=3.0, var_weight=7.5, cov_weight=0.3, gamma=1.3, eps=1e-3),
    dict(inv_weight=0.0, var_weight=1.0, cov_weight=2.0, gamma=0.8, eps=1e-5),
]


def _vicreg_off_kwargs(kw):
    # The oracle gets the same keywords; {} exercises both functions' defaults.
    return {k: v for k, v in kw.items() if k not in ("backend", "side")}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kw_idx", range(len(VICREG_KWARGS)))
def test_vicreg(shape, side, kw_idx):
    kw = VICREG_KWARGS[kw_idx]
    z1, z2 = make_pair(*shape, "vicreg", kw_idx)
    check(dk.vicreg_loss, off.vicreg_official, [z1, z2], dict(kw, side=side), _vicreg_off_kwargs(kw),
          what=f"vicreg{shape},{side},{kw}")


VICREG_TEMPERATURES = [None, 0.5, 2.0]  # paired with VICREG_KWARGS; None = the default 0.1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw_idx", range(len(VICREG_KWARGS)))
@pytest.mark.parametrize("variant", ["exp", "ctr"])
def test_vicreg_exp_ctr(shape, kw_idx, variant):
    kw = dict(VICREG_KWARGS[kw_idx])
    if VICREG_TEMPERATURES[kw_idx] is not None:
        kw["temperature"] = VICREG_TEMPERATURES[kw_idx]
    z1, z2 = make_pair(*shape, "vicreg", variant, kw_idx)
    dk_fn = dk.vicreg_exp_loss if variant == "exp" else dk.vicreg_ctr_loss
    off_fn = off.vicreg_exp_official if variant == "exp" else off.vicreg_ctr_official
    check(dk_fn, off_fn, [z1, z2], kw, _vicreg_off_kwargs(kw), what=f"vicreg_{variant}{shape},{kw}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kw", [{}, dict(lambda_param=0.02, eps=1e-3), dict(lambda_param=0.0051, eps=0.0)])
def test_barlow_twins(shape, side, kw):
    z1, z2 = make_pair(*shape, "barlow")
    check(dk.barlow_twins_loss, off.barlow_twins_official, [z1, z2], dict(kw, side=side), dict(kw),
          what=f"barlow{shape},{side},{kw}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_ntxent(shape, similarity, normalization):
    # reduction="none" with a random cotangent checks every anchor's value and gradient.
    z1, z2 = make_pair(*shape, "ntxent")
    kw = dict(temperature=0.2, similarity=similarity, normalization=normalization, reduction="none")
    check(dk.ntxent_loss, off.ntxent_official, [z1, z2], kw, dict(kw), what=f"ntxent{shape},{kw}")


@pytest.mark.parametrize("shape", CROSS_SHAPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ntxent_reductions(shape, similarity, normalization, reduction):
    z1, z2 = make_pair(*shape, "ntxent")
    kw = dict(temperature=0.2, similarity=similarity, normalization=normalization, reduction=reduction)
    check(dk.ntxent_loss, off.ntxent_official, [z1, z2], kw, dict(kw), what=f"ntxent{shape},{kw}")


@pytest.mark.parametrize("shape", SMALL_SHAPES)
@pytest.mark.parametrize("temperature", [None, 0.05, 0.5, 1.7])
@pytest.mark.parametrize("name", ["ntxent", "dcl"])
def test_temperatures(name, shape, temperature):
    z1, z2 = make_pair(*shape, f"{name}-t")
    kw = {} if temperature is None else dict(temperature=temperature)
    ours, official = getattr(dk, f"{name}_loss"), getattr(off, f"{name}_official")
    check(ours, official, [z1, z2], kw, dict(kw), what=f"{name}{shape},{kw}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dcl(shape, similarity, reduction):
    z1, z2 = make_pair(*shape, "dcl")
    kw = dict(temperature=0.2, similarity=similarity, reduction=reduction)
    check(dk.dcl_loss, off.dcl_official, [z1, z2], kw, dict(kw), what=f"dcl{shape},{kw}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [None, 0.07])
def test_infonce(shape, reduction, temperature):
    z1, z2 = make_pair(*shape, "infonce")
    kw = dict(reduction=reduction)
    if temperature is not None:
        kw["temperature"] = temperature
    check(dk.infonce_loss, off.infonce_official, [z1, z2], kw, dict(kw), what=f"infonce{shape},{kw}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("mu", [None, 0.5, 2.5])
def test_spectral(shape, side, mu):
    z1, z2 = make_spectral_pair(*shape, 1.0 if mu is None else mu)
    kw = {} if mu is None else dict(mu=mu)
    check(dk.spectral_contrastive_loss, off.spectral_official, [z1, z2], dict(kw, side=side), dict(kw),
          what=f"spectral{shape},{side},{kw}")


def test_reduction_consistency():
    """mean == sum / (2N) and none.sum() == sum for the library itself (docs/spec.md §4)."""
    n, d = 11, 7
    z1, z2 = make_pair(n, d, "red")
    for fn, kw in (
        (dk.ntxent_loss, dict(similarity="abs", normalization="center_l2")),
        (dk.dcl_loss, dict(similarity="square")),
        (dk.infonce_loss, {}),
    ):
        mean = fn(z1, z2, reduction="mean", backend=BACKEND, **kw)
        total = fn(z1, z2, reduction="sum", backend=BACKEND, **kw)
        none = fn(z1, z2, reduction="none", backend=BACKEND, **kw)
        assert none.shape == (2 * n,)
        assert_close(mean, total / (2 * n), f"{fn.__name__} mean vs sum")
        assert_close(none.sum(), total, f"{fn.__name__} none vs sum")


def test_non_contiguous_inputs():
    """Transposed and strided views give the oracle's numbers (docs/spec.md §6: accepted as is)."""
    g = _gen("noncontig")
    base1 = torch.randn(23, 2 * 19, generator=g, dtype=torch.float64)
    base2 = torch.randn(19, 23, generator=g, dtype=torch.float64).T  # transposed view (23, 19)
    z1 = base1[:, ::2]  # strided view (23, 19)
    z2 = base2
    assert not z1.is_contiguous() and not z2.is_contiguous()
    cases = [
        (dk.vicreg_loss, off.vicreg_official),
        (dk.barlow_twins_loss, off.barlow_twins_official),
        (dk.ntxent_loss, off.ntxent_official),
        (dk.dcl_loss, off.dcl_official),
        (dk.infonce_loss, off.infonce_official),
        (dk.spectral_contrastive_loss, off.spectral_official),
    ]
    for dk_fn, off_fn in cases:
        check(dk_fn, off_fn, [z1, z2], {}, {}, what=f"{dk_fn.__name__} non-contiguous")


# ----------------------------------------------------------------------------------------------
# 3. float32: the library in float32 against float64 truth
# ----------------------------------------------------------------------------------------------

F32_CASES = [
    ("vicreg", lambda z1, z2, **k: dk.vicreg_loss(z1, z2, **k), off.vicreg_official, {}),
    ("vicreg_exp", lambda z1, z2, **k: dk.vicreg_exp_loss(z1, z2, **k), off.vicreg_exp_official, dict(temperature=0.5)),
    ("vicreg_ctr", lambda z1, z2, **k: dk.vicreg_ctr_loss(z1, z2, **k), off.vicreg_ctr_official, dict(temperature=0.5)),
    ("barlow", lambda z1, z2, **k: dk.barlow_twins_loss(z1, z2, **k), off.barlow_twins_official, {}),
    ("ntxent", lambda z1, z2, **k: dk.ntxent_loss(z1, z2, **k), off.ntxent_official, {}),
    (
        "ntxent_sq_dimstd",
        lambda z1, z2, **k: dk.ntxent_loss(z1, z2, **k),
        off.ntxent_official,
        dict(similarity="square", normalization="dim_std"),
    ),
    ("dcl", lambda z1, z2, **k: dk.dcl_loss(z1, z2, **k), off.dcl_official, dict(similarity="abs")),
    ("infonce", lambda z1, z2, **k: dk.infonce_loss(z1, z2, **k), off.infonce_official, {}),
    ("spectral", lambda z1, z2, **k: dk.spectral_contrastive_loss(z1, z2, **k), off.spectral_official, dict(mu=2.0)),
    ("L_c", lambda z1, z2, **k: dk.sample_contrastive_criterion(z1, **k), lambda z1,
     z2: off.sample_contrastive_official(z1), {}),
    ("L_nc", lambda z1, z2, **k: dk.dimension_contrastive_criterion(z1, **k), lambda z1,
     z2: off.dimension_contrastive_official(z1), {}),
]

F32_RTOL = 1e-4


def _f32_ok(err, scale, eager_err, factor, atol):
    # Relative 1e-4 of the float64 truth, or docs/design.md's accuracy rule (within `factor` times the
    # error of the eager official formula run in float32), whichever is looser: the latter covers
    # ill-conditioned corners such as N = 2 (Barlow's batch-norm of two rows, dim_std with two
    # rows, whose exact gradient is ~0 and whose float32 gradient is rounding noise).
    return err <= max(F32_RTOL * scale, factor * eager_err) + atol


@pytest.mark.parametrize("shape", [(2, 17), (31, 97), (97, 31), (128, 130)])
@pytest.mark.parametrize("case", F32_CASES, ids=[c[0] for c in F32_CASES])
def test_float32_against_float64_truth(shape, case):
    name, dk_fn, off_fn, kw = case
    if name == "spectral":
        z1, z2 = make_spectral_pair(*shape, 2.0, "f32")
    else:
        z1, z2 = make_pair(*shape, "f32", name)
    z1, z2 = z1.float().double(), z2.float().double()  # exactly representable in float32
    a = [z1.float().requires_grad_(True), z2.float().requires_grad_(True)]
    e = [z1.float().requires_grad_(True), z2.float().requires_grad_(True)]
    b = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    out = dk_fn(*a, backend=BACKEND, **kw)
    eager = off_fn(*e, **kw)
    ref = off_fn(*b, **kw)
    assert out.dtype == torch.float32 and out.dim() == 0
    err, scale = _max_err(out, ref)
    eager_err, _ = _max_err(eager, ref)
    assert _f32_ok(err, scale, eager_err, 2.0, 1e-6), (
        f"{name}{shape} float32 value: err {err:.3e}, eager float32 err {eager_err:.3e}, |truth| {scale:.3e}"
    )
    grads = torch.autograd.grad(out, a, allow_unused=True)
    eager_grads = torch.autograd.grad(eager, e, allow_unused=True)
    truth = torch.autograd.grad(ref, b, allow_unused=True)
    for i, (g, ge, t) in enumerate(zip(grads, eager_grads, truth)):
        if t is None:  # single-input criteria: z2 is unused
            assert g is None or g.abs().max() == 0
            continue
        assert g.dtype == torch.float32
        err, scale = _max_err(g, t)
        eager_err, _ = _max_err(ge, t)
        assert _f32_ok(err, scale, eager_err, 3.0, 1e-7), (
            f"{name}{shape} float32 grad[z{i + 1}]: err {err:.3e}, eager float32 err {eager_err:.3e}, "
            f"max|truth| {scale:.3e}"
        )
