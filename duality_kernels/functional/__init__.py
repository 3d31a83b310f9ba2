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
from ..ops import _checks, registry
from ..ops import gathered as _gathered
from ..ops.registry import GRAM, LSE, OpDef

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


# --------------------------------------------------------------------------------------------
# the ops: each one's contract (docs/spec.md §6, run by the public function and by the compiled
# entry points) and its description (ops/registry.py); docs/adding_an_op.md


_TWO_ROWS = "a batch variance needs two rows"
_VICREG_APPLY = "``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, "
_VICREG_TERMS = "(loss, invariance, variance, covariance)"
_side = _checks.check_side


def vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, min_cols=1, what=_TWO_ROWS):
    """-> the five weights as floats."""
    V.check_pair(z1, z2, min_rows=2, min_cols=min_cols, what=what)
    return V.vicreg_weights(inv_weight, var_weight, cov_weight, gamma, eps)


@registry.op("vicreg", ("vicreg_loss",), GRAM, 4, "VICRegFunction",
             f"VICReg (docs/spec.md §3): {_VICREG_APPLY}side)`` -> {_VICREG_TERMS}.")
def check_vicreg(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side) -> None:
    vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps)
    _side(side)


def barlow_twins_args(z1, z2, lambda_param, eps):
    """-> (lambda_param, eps) as floats."""
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    return V.check_finite(lambda_param, "lambda_param"), V.check_nonnegative(eps, "eps")


@registry.op("barlow_twins", ("barlow_twins_loss",), GRAM, 3, "BarlowTwinsFunction",
             "Barlow Twins (docs/spec.md §3): ``apply(z1, z2, lambda_param, eps, side)`` -> "
             "(loss, on_diagonal, off_diagonal).")
def check_barlow_twins(z1, z2, lambda_param, eps, side) -> None:
    barlow_twins_args(z1, z2, lambda_param, eps)
    _side(side)


def spectral_args(z1, z2, mu) -> float:
    V.check_pair(z1, z2, min_rows=2, what="the off-diagonal term needs two rows")
    return V.check_positive(mu, "mu")


@registry.op("spectral", ("spectral_contrastive_loss",), GRAM, 3, "SpectralContrastiveFunction",
             "Spectral contrastive loss (docs/spec.md §4): ``apply(z1, z2, mu, side)`` -> (loss, positive, negative).")
def check_spectral(z1, z2, mu, side) -> None:
    spectral_args(z1, z2, mu)
    _side(side)


@registry.op("covariance", ("covariance",), GRAM, 1, "CovarianceFunction",
             "covariance (docs/spec.md §1): ``apply(z, correction)`` -> (C,).")
def check_covariance(z, correction) -> None:
    V.check_tensor(z, "z")
    V.check_correction(correction, z.shape[0])


@registry.op("cross_correlation", ("cross_correlation",), GRAM, 1, "CrossCorrelationFunction",
             "cross_correlation (docs/spec.md §1): ``apply(z1, z2, eps)`` -> (C,).")
def check_cross_correlation(z1, z2, eps) -> float:
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    return V.check_nonnegative(eps, "eps")


@registry.op("normalized_gram", ("normalized_gram",), GRAM, 1, "NormalizedGramFunction",
             "normalized_gram (docs/spec.md §1): ``apply(z1, z2_or_None)`` -> (K,).")
def check_normalized_gram(z1, z2) -> None:
    if z2 is None:
        V.check_tensor(z1, "z1")
    else:
        V.check_pair(z1, z2)


@registry.op("duality_terms", ("duality_terms", "sample_contrastive_criterion", "dimension_contrastive_criterion"),
             GRAM, 4, "DualityTermsFunction",
             "duality_terms (docs/spec.md §2): ``apply(z, side)`` -> (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴).")
def check_duality_terms(z, side) -> None:
    V.check_tensor(z, "z")
    _side(side)


@registry.op("ntxent", ("ntxent_loss",), LSE, 1, "NTXentFunction",
             "NT-Xent (docs/spec.md §4): ``apply(z1, z2, temperature, similarity, normalization, reduction)`` -> "
             "(loss,).")
def check_ntxent(z1, z2, temperature, similarity, normalization, reduction) -> float:
    """-> the temperature as a float."""
    V.check_pair(z1, z2)
    t = V.check_positive(temperature, "temperature")
    V.check_choice(similarity, "similarity", V.SIMILARITIES)
    V.check_choice(normalization, "normalization", V.NORMALIZATIONS)
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    return t


@registry.op("dcl", ("dcl_loss",), LSE, 1, "DCLFunction",
             "DCL (docs/spec.md §4): ``apply(z1, z2, temperature, similarity, reduction)`` -> (loss,).")
def check_dcl(z1, z2, temperature, similarity, reduction) -> float:
    V.check_pair(z1, z2, min_rows=2, what="every anchor needs at least one negative")
    t = V.check_positive(temperature, "temperature")
    V.check_choice(similarity, "similarity", V.SIMILARITIES)
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    return t


@registry.op("infonce", ("infonce_loss",), LSE, 1, "InfoNCEFunction",
             "InfoNCE, CLIP form (docs/spec.md §4): ``apply(z1, z2, temperature, reduction)`` -> (loss,).")
def check_infonce(z1, z2, temperature, reduction) -> float:
    V.check_pair(z1, z2)
    t = V.check_positive(temperature, "temperature")
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    return t


VICREG_EXP_ROWS = "a batch variance needs two rows and an off-diagonal term two columns"
VICREG_CTR_ROWS = "a row variance needs two columns and the sample term two rows"


def vicreg_lse_args(what, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """-> (the five weights, the temperature) as floats."""
    w = vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, min_cols=2, what=what)
    return w, V.check_positive(temperature, "temperature")


@registry.op("vicreg_exp", ("vicreg_exp_loss",), LSE, 4, "VICRegExpFunction",
             f"VICReg-exp (docs/spec.md §3): {_VICREG_APPLY}temperature)`` -> {_VICREG_TERMS}.")
def check_vicreg_exp(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    vicreg_lse_args(VICREG_EXP_ROWS, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)


@registry.op("vicreg_ctr", ("vicreg_ctr_loss",), LSE, 4, "VICRegCtrFunction",
             f"VICReg-ctr (docs/spec.md §3): {_VICREG_APPLY}temperature)`` -> {_VICREG_TERMS}.")
def check_vicreg_ctr(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    vicreg_lse_args(VICREG_CTR_ROWS, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)




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


def _primitive(backend, op: str, *args):
    """Primitive ``op`` (same name in the reference and the compiled backends) on its checked args."""
    ops = _gram_ops(_backend.resolve(backend, op, args[0]), op)
    return getattr(R if ops is None else ops, op)(*args)


@public
def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """Cosine similarities l2n(z1)·l2n(z2 or z1)ᵀ, shape (N, N) (docs/spec.md §1)."""
    check_normalized_gram(z1, z2)
    return _primitive(backend, "normalized_gram", z1, z2)


@public
def covariance(z: Tensor, correction: int = 1, *, backend: str = "auto") -> Tensor:
    """center(z)ᵀ center(z) / (N − correction), shape (D, D) (docs/spec.md §1)."""
    check_covariance(z, correction)
    return _primitive(backend, "covariance", z, correction)


@public
def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5, *, backend: str = "auto") -> Tensor:
    """BatchNorm-standardized views' s(z1)ᵀ s(z2) / N, shape (D, D) (docs/spec.md §1)."""
    eps = check_cross_correlation(z1, z2, eps)
    return _primitive(backend, "cross_correlation", z1, z2, eps)


# --------------------------------------------------------------------------------------------
# §2 criteria


def _criterion(z, side, backend, op: str, pick: Optional[int], reference):
    """The duality terms of z on ``side`` through the backend's ``duality_terms`` op (term ``pick``, or
    all four when None), or ``reference(z, side)``."""
    V.check_tensor(z, "z")
    side = V.check_side(side)
    ops = _gram_ops(_backend.resolve(backend, op, z), op)
    s = _cost.resolve_side(side, *z.shape)
    if ops is None:
        return reference(z, s)
    terms = ops.duality_terms(z, s)
    return tuple(terms) if pick is None else terms[pick]


@public
def sample_contrastive_criterion(z: Tensor, *, side: str = "auto", backend: str = "auto") -> Tensor:
    """L_c = Σ_{i≠j} (z zᵀ)_ij² (paper eq. for sample-contrastive methods; docs/spec.md §2)."""
    return _criterion(z, side, backend, "sample_contrastive_criterion", 0, R.sample_contrastive_criterion)


@public
def dimension_contrastive_criterion(z: Tensor, *, side: str = "auto", backend: str = "auto") -> Tensor:
    """L_nc = Σ_{k≠l} (zᵀ z)_kl² (docs/spec.md §2)."""
    return _criterion(z, side, backend, "dimension_contrastive_criterion", 1, R.dimension_contrastive_criterion)


@public
def duality_terms(z: Tensor, *, side: str = "auto", backend: str = "auto") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram; L_nc + Σ_k = L_c + Σ_i (paper Thm 3.3)."""
    return _criterion(z, side, backend, "duality_terms", None, R.duality_terms)


# --------------------------------------------------------------------------------------------
# §3 covariance family


def _gram_loss(op: str, name: str, z1, z2, args, side, gather_distributed, return_terms, backend, strategy=True):
    """A covariance-family loss after its own checks: ``name`` (vicreg, barlow_twins, spectral) of the
    backend's ops, of ops/gathered.py for the distributed form, or of the reference; ``strategy``: the
    distributed form takes docs/spec.md §5's gather/all-reduce strategy."""
    side = V.check_side(side)
    V.check_flag(return_terms, "return_terms")
    ctx = _ctx(op, gather_distributed, z1)
    be = _backend.resolve(backend, op, z1, ctx.active)
    n, d = z1.shape
    side = _cost.resolve_side(side, ctx.world * n, d)
    ops = _gram_ops(be, op)
    if ops is not None and not ctx.active:  # one process on a compiled backend: no strategy to choose
        return _out(*getattr(ops, name)(z1, z2, *args, side), return_terms)
    how = {"strategy": _dist.strategy(ctx, n, d)} if strategy else {}
    if ops is None:
        return _out(*getattr(R, name)(z1, z2, *args, side, ctx=ctx, **how), return_terms)
    return _out(*getattr(_gathered, name)(ops, ctx, *how.values(), z1, z2, *args, side), return_terms)


@public
def vicreg_loss(z1: Tensor, z2: Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4, *,
                side: str = "auto", gather_distributed: bool = False, return_terms: bool = False,
                backend: str = "auto"):
    """VICReg (Bardes et al. 2022), docs/spec.md §3; the covariance term on the cheaper side.

    terms: "invariance" (mean squared difference), "variance" ((v(z1)+v(z2))/2), "covariance"
    (c(z1)+c(z2)); loss = inv_weight·invariance + var_weight·variance + cov_weight·covariance.
    """
    w = vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps)
    return _gram_loss("vicreg_loss", "vicreg", z1, z2, w, side, gather_distributed, return_terms, backend)


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
    w, t = vicreg_lse_args(what, z1, z2, *weights, temperature)
    V.check_flag(return_terms, "return_terms")
    ctx = _ctx(op, gather_distributed, z1)
    be = _backend.resolve(backend, op, z1, ctx.active)
    loss, terms = compute(z1, z2, *w, t, ctx, be)
    return _out(loss, terms, return_terms)


def _vicreg_lse_public(op: str, compute, what: str, doc: str):
    """The public VICReg-exp or VICReg-ctr function: one signature (docs/spec.md §3), its own compute."""

    def loss(z1: Tensor, z2: Tensor, inv_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
             gamma: float = 1.0, eps: float = 1e-4, temperature: float = 0.1, *, gather_distributed: bool = False,
             return_terms: bool = False, backend: str = "auto"):
        weights = (inv_weight, var_weight, cov_weight, gamma, eps)
        return _vicreg_lse(op, compute, z1, z2, weights, temperature, gather_distributed, return_terms, backend, what)

    loss.__name__ = loss.__qualname__ = op
    loss.__doc__ = doc
    return public(loss)


vicreg_exp_loss = _vicreg_lse_public(
    "vicreg_exp_loss", _exp_ref, VICREG_EXP_ROWS,
    "VICReg-exp (paper eq. 11–12), docs/spec.md §3: covariance term = mean row log-sum-exp of C/τ off the diagonal.")
vicreg_ctr_loss = _vicreg_lse_public(
    "vicreg_ctr_loss", _ctr_ref, VICREG_CTR_ROWS,
    "VICReg-ctr (paper eq. 13), docs/spec.md §3: variance and log-sum-exp terms on the N×N sample side.")


@public
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_param: float = 0.0051, eps: float = 1e-5, *,
                      side: str = "auto", gather_distributed: bool = False, return_terms: bool = False,
                      backend: str = "auto"):
    """Barlow Twins (Zbontar et al. 2021), docs/spec.md §3; the off-diagonal term on the cheaper side.

    terms: "on_diagonal" Σ_k (1 − C_kk)², "off_diagonal" Σ_{k≠l} C_kl²; loss = on + λ·off.
    """
    args = barlow_twins_args(z1, z2, lambda_param, eps)
    return _gram_loss("barlow_twins_loss", "barlow_twins", z1, z2, args, side, gather_distributed, return_terms,
                      backend)


# --------------------------------------------------------------------------------------------
# §4 sample-contrastive family


@public
def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, similarity: str = "dot",
                normalization: str = "l2", reduction: str = "mean", *,
                gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """NT-Xent / SimCLR over the 2N rows [z1; z2], positive kept in the denominator (docs/spec.md §4)."""
    t = check_ntxent(z1, z2, temperature, similarity, normalization, reduction)
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
    t = check_dcl(z1, z2, temperature, similarity, reduction)
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
    t = check_infonce(z1, z2, temperature, reduction)
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
    mu = spectral_args(z1, z2, mu)
    return _gram_loss("spectral_contrastive_loss", "spectral", z1, z2, (mu,), side, gather_distributed, return_terms,
                      backend, strategy=False)
