"""Public functions of docs/spec.md: validate (docs/spec.md §6), pick the backend, call the op.

Every function takes keyword-only ``backend="auto"|"torch"|"triton"|"cuda"`` (see ``_backend``).
Functions with a sum of squared Gram entries also take ``side="auto"|"sample"|"dimension"``
(docs/spec.md §2): "auto" computes it on the cheaper side, the others force one; values and gradients
agree to rounding. Composite losses take ``return_terms=True`` to return ``(loss, terms)`` where
``terms`` is a dict of the named, unweighted terms, for logging.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _backend, _cost
from .._policy import public
from .. import _validation as V
from .. import distributed as _dist
from .. import reference as R
from ..ops import _checks as C
from ..ops import gathered as _gathered

Tensor = torch.Tensor

__all__ = [
    "normalized_gram",
    "covariance",
    "cross_correlation",
    "sample_contrastive_criterion",
    "dimension_contrastive_criterion",
    "duality_terms",
    "vicreg_loss",
    "vicreg_exp_loss",
    "vicreg_ctr_loss",
    "barlow_twins_loss",
    "ntxent_loss",
    "dcl_loss",
    "infonce_loss",
    "spectral_contrastive_loss",
]


def _triton(op: str, ctx: _dist.Context, gathers: bool = False):
    """The Triton op module for ``op`` (imported lazily: ``import duality_kernels`` needs no triton).
    ``gathers``: the op implements gather_distributed=True itself (docs/spec.md §5)."""
    if not gathers:
        _backend.require_single_process("triton", op, ctx)
    from ..ops.triton import lse

    return lse


def _gram_ops(be: str, op: str):
    """The compiled covariance-family module of backend ``be`` ("triton": ops/triton/gram.py,
    "cuda": ops/cuda.py; the same function names), or None for the torch reference. Their ops
    compute one process's batch; ops/gathered.py builds docs/spec.md §5's forms of VICReg, Barlow Twins and
    the spectral loss on them (the primitives and criteria take no gather_distributed)."""
    if be == "torch":
        return None
    mod = _GRAM_OPS.get(be)
    if mod is None:  # imported once (an import statement per call costs ~1 µs of host time)
        if be == "cuda":
            from ..ops import cuda as mod
        else:
            from ..ops.triton import gram as mod
        _GRAM_OPS[be] = mod
    return mod


_GRAM_OPS: dict = {}


def _out(loss: Tensor, terms: dict, return_terms: bool):
    return (loss, terms) if return_terms else loss


def _ctx(op: str, gather_distributed, z: Tensor) -> _dist.Context:
    return _dist.context(gather_distributed, z, op)


# --------------------------------------------------------------------------------------------
# §1 primitives


@public
def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """Cosine similarities l2n(z1)·l2n(z2 or z1)ᵀ, shape (N, N) (docs/spec.md §1)."""
    C.normalized_gram(z1, z2)
    ops = _gram_ops(_backend.resolve(backend, "normalized_gram", z1), "normalized_gram")
    if ops is not None:
        return ops.normalized_gram(z1, z2)
    return R.normalized_gram(z1, z2)


@public
def covariance(z: Tensor, correction: int = 1, *, backend: str = "auto") -> Tensor:
    """center(z)ᵀ center(z) / (N − correction), shape (D, D) (docs/spec.md §1)."""
    C.covariance(z, correction)
    ops = _gram_ops(_backend.resolve(backend, "covariance", z), "covariance")
    if ops is not None:
        return ops.covariance(z, correction)
    return R.covariance(z, correction)


@public
def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5, *, backend: str = "auto") -> Tensor:
    """BatchNorm-standardized views' s(z1)ᵀ s(z2) / N, shape (D, D) (docs/spec.md §1)."""
    eps = C.cross_correlation(z1, z2, eps)
    ops = _gram_ops(_backend.resolve(backend, "cross_correlation", z1), "cross_correlation")
    if ops is not None:
        return ops.cross_correlation(z1, z2, eps)
    return R.cross_correlation(z1, z2, eps)


# --------------------------------------------------------------------------------------------
# §2 criteria


def _criterion_args(z, side, backend, op) -> Tuple[str, str]:
    V.check_tensor(z, "z")
    side = V.check_side(side)
    be = _backend.resolve(backend, op, z)
    return _cost.resolve_side(side, *z.shape), be


@public
def sample_contrastive_criterion(z: Tensor, *, side: str = "auto", backend: str = "auto") -> Tensor:
    """L_c = Σ_{i≠j} (z zᵀ)_ij² (paper eq. for sample-contrastive methods; docs/spec.md §2)."""
    s, be = _criterion_args(z, side, backend, "sample_contrastive_criterion")
    ops = _gram_ops(be, "sample_contrastive_criterion")
    if ops is not None:
        return ops.duality_terms(z, s)[0]
    return R.sample_contrastive_criterion(z, s)


@public
def dimension_contrastive_criterion(z: Tensor, *, side: str = "auto", backend: str = "auto") -> Tensor:
    """L_nc = Σ_{k≠l} (zᵀ z)_kl² (docs/spec.md §2)."""
    s, be = _criterion_args(z, side, backend, "dimension_contrastive_criterion")
    ops = _gram_ops(be, "dimension_contrastive_criterion")
    if ops is not None:
        return ops.duality_terms(z, s)[1]
    return R.dimension_contrastive_criterion(z, s)


@public
def duality_terms(z: Tensor, *, side: str = "auto", backend: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram; L_nc + Σ_k = L_c + Σ_i (paper Thm 3.3)."""
    s, be = _criterion_args(z, side, backend, "duality_terms")
    ops = _gram_ops(be, "duality_terms")
    if ops is not None:
        return tuple(ops.duality_terms(z, s))
    return R.duality_terms(z, s)


# --------------------------------------------------------------------------------------------
# §3 covariance family


@public
def vicreg_loss(z1: Tensor, z2: Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4, *,
                side: str = "auto", gather_distributed: bool = False, return_terms: bool = False,
                backend: str = "auto"):
    """VICReg (Bardes et al. 2022), docs/spec.md §3; the covariance term on the cheaper side.

    terms: "invariance" (mean squared difference), "variance" ((v(z1)+v(z2))/2), "covariance"
    (c(z1)+c(z2)); loss = inv_weight·invariance + var_weight·variance + cov_weight·covariance.
    """
    w = C.vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps)
    side = V.check_side(side)
    V.check_flag(return_terms, "return_terms")
    ctx = _ctx("vicreg_loss", gather_distributed, z1)
    be = _backend.resolve(backend, "vicreg_loss", z1, ctx.active)
    n, d = z1.shape
    side = _cost.resolve_side(side, ctx.world * n, d)
    ops = _gram_ops(be, "vicreg_loss")
    if ops is not None:
        if ctx.active:
            return _out(*_gathered.vicreg(ops, ctx, _dist.strategy(ctx, n, d), z1, z2, *w, side), return_terms)
        return _out(*ops.vicreg(z1, z2, *w, side), return_terms)
    loss, terms = R.vicreg(z1, z2, *w, side=side, ctx=ctx,
                           strategy=_dist.strategy(ctx, n, d))
    return _out(loss, terms, return_terms)


def _exp_ref(z1, z2, inv_w, var_w, cov_w, gamma, eps, t, ctx, be="torch"):
    if be == "triton":
        return _triton("vicreg_exp_loss", ctx).vicreg_exp(z1, z2, inv_w, var_w, cov_w, gamma, eps, t)
    return R.vicreg_exp(z1, z2, inv_w, var_w, cov_w, gamma, eps, t, ctx=ctx, strategy=_dist.strategy(ctx, *z1.shape))


def _ctr_ref(z1, z2, inv_w, var_w, cov_w, gamma, eps, t, ctx, be="torch"):
    if be == "triton":
        if ctx.active:
            return _gathered.vicreg_ctr_triton(ctx, z1, z2, inv_w, var_w, cov_w, gamma, eps, t)
        return _triton("vicreg_ctr_loss", ctx).vicreg_ctr(z1, z2, inv_w, var_w, cov_w, gamma, eps, t)
    return R.vicreg_ctr(z1, z2, inv_w, var_w, cov_w, gamma, eps, t, ctx=ctx)


def _vicreg_lse(op, compute, z1, z2, weights, temperature, gather_distributed, return_terms, backend, what):
    """VICReg-exp / VICReg-ctr: the same checks, then ``compute(z1, z2, *weights, temperature, ctx, be)``."""
    w, t = C.vicreg_lse_args(what, z1, z2, *weights, temperature)
    V.check_flag(return_terms, "return_terms")
    ctx = _ctx(op, gather_distributed, z1)
    be = _backend.resolve(backend, op, z1, ctx.active)
    loss, terms = compute(z1, z2, *w, t, ctx, be)
    return _out(loss, terms, return_terms)


@public
def vicreg_exp_loss(z1: Tensor, z2: Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                    cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                    temperature: float = 0.1, *, gather_distributed: bool = False,
                    return_terms: bool = False, backend: str = "auto"):
    """VICReg-exp (paper eq. 11–12), docs/spec.md §3: covariance term = mean row log-sum-exp of C/τ off the diagonal."""
    weights = (inv_weight, var_weight, cov_weight, gamma, eps)
    return _vicreg_lse("vicreg_exp_loss", _exp_ref, z1, z2, weights, temperature, gather_distributed, return_terms,
                       backend, C.VICREG_EXP_ROWS)


@public
def vicreg_ctr_loss(z1: Tensor, z2: Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                    cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                    temperature: float = 0.1, *, gather_distributed: bool = False,
                    return_terms: bool = False, backend: str = "auto"):
    """VICReg-ctr (paper eq. 13), docs/spec.md §3: variance and log-sum-exp terms on the N×N sample side."""
    weights = (inv_weight, var_weight, cov_weight, gamma, eps)
    return _vicreg_lse("vicreg_ctr_loss", _ctr_ref, z1, z2, weights, temperature, gather_distributed, return_terms,
                       backend, C.VICREG_CTR_ROWS)


@public
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_param: float = 0.0051, eps: float = 1e-5, *,
                      side: str = "auto", gather_distributed: bool = False, return_terms: bool = False,
                      backend: str = "auto"):
    """Barlow Twins (Zbontar et al. 2021), docs/spec.md §3; the off-diagonal term on the cheaper side.

    terms: "on_diagonal" Σ_k (1 − C_kk)², "off_diagonal" Σ_{k≠l} C_kl²; loss = on + λ·off.
    """
    lam, eps = C.barlow_twins_args(z1, z2, lambda_param, eps)
    side = V.check_side(side)
    V.check_flag(return_terms, "return_terms")
    ctx = _ctx("barlow_twins_loss", gather_distributed, z1)
    be = _backend.resolve(backend, "barlow_twins_loss", z1, ctx.active)
    n, d = z1.shape
    side = _cost.resolve_side(side, ctx.world * n, d)
    ops = _gram_ops(be, "barlow_twins_loss")
    if ops is not None:
        if ctx.active:
            return _out(*_gathered.barlow_twins(ops, ctx, _dist.strategy(ctx, n, d), z1, z2, lam, eps, side),
                        return_terms)
        return _out(*ops.barlow_twins(z1, z2, lam, eps, side), return_terms)
    loss, terms = R.barlow_twins(z1, z2, lam, eps, side, ctx=ctx,
                                 strategy=_dist.strategy(ctx, n, d))
    return _out(loss, terms, return_terms)


# --------------------------------------------------------------------------------------------
# §4 sample-contrastive family


@public
def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, similarity: str = "dot",
                normalization: str = "l2", reduction: str = "mean", *,
                gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """NT-Xent / SimCLR over the 2N rows [z1; z2], positive kept in the denominator (docs/spec.md §4)."""
    t = C.ntxent(z1, z2, temperature, similarity, normalization, reduction)
    ctx = _ctx("ntxent_loss", gather_distributed, z1)
    be = _backend.resolve(backend, "ntxent_loss", z1, ctx.active)
    if be == "triton":
        if ctx.active:
            return _gathered.ntxent_triton(ctx, z1, z2, t, similarity, normalization, reduction)
        return _triton("ntxent_loss", ctx, True).ntxent(z1, z2, t, similarity, normalization, reduction)
    return R.ntxent(z1, z2, t, similarity, normalization, reduction, ctx=ctx)


@public
def dcl_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, similarity: str = "dot",
             reduction: str = "mean", *, gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """Decoupled contrastive loss: NT-Xent without the positive in the denominator (docs/spec.md §4)."""
    t = C.dcl(z1, z2, temperature, similarity, reduction)
    ctx = _ctx("dcl_loss", gather_distributed, z1)
    be = _backend.resolve(backend, "dcl_loss", z1, ctx.active)
    if be == "triton":
        if ctx.active:
            return _gathered.dcl_triton(ctx, z1, z2, t, similarity, reduction)
        return _triton("dcl_loss", ctx, True).dcl(z1, z2, t, similarity, reduction)
    return R.dcl(z1, z2, t, similarity, reduction, ctx=ctx)


@public
def infonce_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, reduction: str = "mean", *,
                 gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """Cross-view InfoNCE in the CLIP form, ½[CE(S) + CE(Sᵀ)] (docs/spec.md §4)."""
    t = C.infonce(z1, z2, temperature, reduction)
    ctx = _ctx("infonce_loss", gather_distributed, z1)
    be = _backend.resolve(backend, "infonce_loss", z1, ctx.active)
    if be == "triton":
        if ctx.active:
            return _gathered.infonce_triton(ctx, z1, z2, t, reduction)
        return _triton("infonce_loss", ctx, True).infonce(z1, z2, t, reduction)
    return R.infonce(z1, z2, t, reduction, ctx=ctx)


@public
def spectral_contrastive_loss(z1: Tensor, z2: Tensor, mu: float = 1.0, *, side: str = "auto",
                              gather_distributed: bool = False, return_terms: bool = False,
                              backend: str = "auto"):
    """Spectral contrastive loss (HaoChen et al. 2021), docs/spec.md §4; its N×N term on the cheaper side.

    terms: "positive" −(2/N)Σ_i z1_i·z2_i / mu, "negative" offsq(z1 z2ᵀ)/(N(N−1)) / mu.
    """
    mu = C.spectral_args(z1, z2, mu)
    side = V.check_side(side)
    V.check_flag(return_terms, "return_terms")
    ctx = _ctx("spectral_contrastive_loss", gather_distributed, z1)
    be = _backend.resolve(backend, "spectral_contrastive_loss", z1, ctx.active)
    n, d = z1.shape
    side = _cost.resolve_side(side, ctx.world * n, d)
    ops = _gram_ops(be, "spectral_contrastive_loss")
    if ops is not None:
        if ctx.active:
            return _out(*_gathered.spectral(ops, ctx, z1, z2, mu, side), return_terms)
        return _out(*ops.spectral(z1, z2, mu, side), return_terms)
    loss, terms = R.spectral(z1, z2, mu, side, ctx=ctx)
    return _out(loss, terms, return_terms)
