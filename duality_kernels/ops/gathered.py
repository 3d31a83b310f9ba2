"""gather_distributed=True (docs/spec.md §5) on the compiled backends: the one home of their
distributed forms.

Each function takes the call's ``distributed.Context`` (W ranks, N rows each) and, for the Gram
family, the backend's op module (``ops.cuda`` or ``ops.triton.gram``: the same function names); it
returns what the single-process function returns, with docs/spec.md §5's semantics, built from
the backend's local ops (``moments``, ``spectral_rows``, ``anchor_lse``) and autograd-correct
collectives (``distributed.gather_rows`` / ``all_reduce_sum``, whose backwards sum over ranks).
What runs where, and what each form moves between ranks: docs/design.md, "Distributed forms".
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

from .. import reference as R
from .._numerics import L2_EPS
from ..distributed import Context
from .. import _validation as V
from . import registry
from ._checks import MOMENTS_CROSS as CROSS
from ._checks import MOMENTS_MODES
from ._checks import MOMENTS_NONE as NONE
from ._checks import MOMENTS_SELF as SELF

Tensor = torch.Tensor


# the backends' local pieces of these forms: their contracts and descriptions (ops/registry.py)


@registry.op("moments", (), registry.INTERNAL, 4)
def check_moments(z1, z2, mode) -> None:
    V.check_pair(z1, z2)
    if type(mode) is not int:
        raise TypeError(f"mode must be an int, got {mode!r} ({type(mode).__name__})")
    if mode not in MOMENTS_MODES:
        raise ValueError(f"mode must be one of 0, 1, 2; got {mode!r}")


@registry.op("spectral_rows", (), registry.INTERNAL, 2)
def check_spectral_rows(z1, z2, mu) -> None:
    V.check_pair(z1, z2)
    V.check_positive(mu, "mu")


registry.describe(registry.OpDef("anchor_lse", (), registry.INTERNAL, None, 1))

_F64 = torch.float64


def _acc(z: Tensor) -> torch.dtype:
    return R.compute_dtype(z.dtype)


def _offdiag_sq(g: Tensor) -> Tensor:
    """Σ_{k≠l} g_kl² (over the last two dims), summed in float64. The diagonal is zeroed before
    the sum rather than subtracted after it: the covariance family's diagonal dominates its Grams,
    and a difference of two float32 sums would keep their rounding (docs/spec.md §2's identities)."""
    sq = g * g
    sq.diagonal(dim1=-2, dim2=-1).zero_()  # mul saved its inputs, not sq: autograd allows it
    return sq.sum(dtype=_F64)


def _merged_stats(ctx: Context, mean: Tensor, m2: Tensor, n: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Chan's parallel merge of both views' column moments: (global mean (2, D), global m2 (2, D),
    δ (W, 2, D) = each rank's mean minus the global one), float64, from ONE gather of W·4·D."""
    st = ctx.gather(torch.stack([mean, m2])[None])  # (W, 2 [mean, m2], 2 views, D)
    means, m2s = st[:, 0], st[:, 1]
    g_mean = means.mean(dim=0)
    delta = means - g_mean
    return g_mean, m2s.sum(dim=0) + n * (delta * delta).sum(dim=0), delta


def vicreg(ops, ctx: Context, strategy: str, z1: Tensor, z2: Tensor, inv_weight: float,
           var_weight: float, cov_weight: float, gamma: float, eps: float, side: str
           ) -> Tuple[Tensor, Dict[str, Tensor]]:
    n, d = z1.shape
    acc = _acc(z1)
    if strategy == "gather":
        inv = ops.moments(z1, z2, NONE)[0]  # the local invariance (docs/spec.md §3: local rows only)
        loss, terms = ops.vicreg(ctx.gather(z1), ctx.gather(z2), 0.0, var_weight, cov_weight, gamma, eps, side)
        return loss + inv_weight * inv, {"invariance": inv, "variance": terms["variance"],
                                         "covariance": terms["covariance"]}
    inv, mean, m2, gram = ops.moments(z1, z2, SELF)
    m = ctx.world * n
    _, g_m2, delta = _merged_stats(ctx, mean, m2, n)
    dl = delta.to(gram.dtype)
    g_gram = ctx.all_reduce(gram) + n * torch.einsum("wvk,wvl->vkl", dl, dl)  # (2, D, D)
    var = torch.relu(gamma - torch.sqrt(g_m2 / (m - 1) + eps)).mean()  # (v(z1) + v(z2)) / 2
    cov = _offdiag_sq(g_gram) / ((m - 1) ** 2 * d)
    var, cov = var.to(acc), cov.to(acc)
    loss = inv_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def barlow_twins(ops, ctx: Context, strategy: str, z1: Tensor, z2: Tensor, lambda_param: float,
                 eps: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    if strategy == "gather":
        return ops.barlow_twins(ctx.gather(z1), ctx.gather(z2), lambda_param, eps, side)
    n = z1.shape[0]
    acc = _acc(z1)
    _, mean, m2, p = ops.moments(z1, z2, CROSS)
    m = ctx.world * n
    _, g_m2, delta = _merged_stats(ctx, mean, m2, n)
    dl = delta.to(p.dtype)
    # Σ_rows (z1 − ḡ1)ᵀ(z2 − ḡ2) over all ranks = Σ_r [x1ᵀx2 + N·δ1δ2ᵀ] (the cross terms vanish:
    # the local x's columns sum to 0)
    pg = ctx.all_reduce(p[0]) + n * (dl[:, 0].T @ dl[:, 1])
    s = torch.rsqrt(g_m2 / m + eps).to(p.dtype)  # BatchNorm's column scales (biased variance)
    c = s[0][:, None] * pg * (s[1] / m)[None, :]
    diag = c.diagonal()
    on = ((1 - diag) ** 2).sum(dtype=_F64).to(acc)
    off = _offdiag_sq(c).to(acc)
    return on + lambda_param * off, {"on_diagonal": on, "off_diagonal": off}


class _SymGram(torch.autograd.Function):
    """xᵀx (D×D, acc) with the backward's one product x·(G + Gᵀ) instead of autograd's two."""

    @staticmethod
    def forward(ctx, x, op):
        ctx.save_for_backward(x)
        ctx.op = op
        return R.mm(x.T, x, op)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return R.mm(x, g + g.T, ctx.op), None


def spectral(ops, ctx: Context, z1: Tensor, z2: Tensor, mu: float, side: str
             ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §5 for the spectral loss (reference.spectral with ctx): this rank's rows a_r against
    all rows b; rank loss = [−(2/N) Σ_{i∈r} p_i + (‖a_r bᵀ‖² − Σ_{i∈r} p_i²)/(N(M−1))] / mu."""
    n = z1.shape[0]
    m = ctx.world * n
    acc = _acc(z1)
    op = R.operand_dtype(z1)
    x, p = ops.spectral_rows(z1, z2, mu)
    a, b = x[0], x[1]
    if side == "dimension":  # ‖a_r bᵀ‖² = ⟨a_rᵀa_r, Σ_s b_sᵀb_s⟩ (docs/spec.md §2): one D×D all-reduce
        full = (_SymGram.apply(a, op) * ctx.all_reduce(_SymGram.apply(b, op))).sum(dtype=_F64)
        neg = full - (p * p).sum(dtype=_F64)
    else:  # the N×M block of a_r against the gathered b, without this rank's positives
        s = R.mm(a, ctx.gather(b).T, op)
        sq = s * s
        sq.diagonal(offset=ctx.rank * n).zero_()
        neg = sq.sum(dtype=_F64)
    positive = (-2.0 * p.sum(dtype=_F64) / n / mu).to(acc)
    negative = (neg / (n * (m - 1)) / mu).to(acc)
    return positive + negative, {"positive": positive, "negative": negative}


def vicreg_ctr_triton(ctx: Context, z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float,
                      cov_weight: float, gamma: float, eps: float, temperature: float
                      ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §5 for VICReg-ctr (reference.vicreg_ctr with ctx) on lse.py's anchor_lse kernel: this
    rank's rows of y (global column centering, then row centering) against all W·N rows, self
    masked, no positive; the variance hinge over its own rows. The centering is torch, as in the
    single-process Triton op."""
    from . import _direct
    from .triton import lse

    n, d = z1.shape
    lo = ctx.rank * n
    up = _acc(z1)
    views = []
    for z in (z1, z2):
        zg = ctx.gather(z.to(up))
        x = zg - zg.mean(dim=0)
        y = x - x.mean(dim=1, keepdim=True)
        own = y[lo:lo + n]
        v = torch.relu(gamma - torch.sqrt((own * own).sum(dim=1) / (d - 1) + eps)).mean()
        terms = _direct.apply(lse._SPEC_ANCHOR_LSE, own.contiguous(), y.contiguous(), temperature * (d - 1),
                              False, n, y.shape[0], lo, True, 0, False, 0)[0]
        views.append((v, terms.mean()))
    inv = torch.nn.functional.mse_loss(z1.to(up), z2.to(up))
    var = (views[0][0] + views[1][0]) / 2
    cov = views[0][1] + views[1][1]
    return inv_weight * inv + var_weight * var + cov_weight * cov, {"invariance": inv, "variance": var,
                                                                      "covariance": cov}


# ---- the log-sum-exp family on Triton: this rank's anchors against the rows of all ranks, in
# lse's anchor_lse kernel (each rank scores its own anchors; docs/spec.md §5)


def _stacked_views(z1: Tensor, z2: Tensor, normalization: str) -> Tuple[Tensor, bool]:
    """(u, normalize_in_kernel): the 2·W·N gathered rows before the kernel's l2 scaling
    (docs/spec.md §4, paper §5 Table 1), with global column statistics. Centering and dim_std's
    column scaling are O(N·D) torch ops tracked by autograd (no speed bar on this path)."""
    if normalization == "l2":
        return torch.cat([z1, z2]), True
    xs = [z.to(_acc(z)) - z.to(_acc(z)).mean(dim=0) for z in (z1, z2)]
    if normalization == "center_l2":
        return torch.cat(xs), True
    n, d = z1.shape  # "dim_std": each column to L2 norm sqrt(N/D), no row normalization
    scale = math.sqrt(n / d)
    return torch.cat([x / torch.linalg.vector_norm(x, dim=0).clamp_min(L2_EPS) * scale for x in xs]), False


def pair_terms_triton(ctx: Context, z1: Tensor, z2: Tensor, temperature: float, similarity: str,
                      normalization: str, drop_positive: bool) -> Tensor:
    """NT-Xent's (DCL's with drop_positive) terms of this rank's 2N anchors against the 2·W·N rows of
    all ranks, normalized with global statistics."""
    from . import _direct
    from .triton import lse

    n = z1.shape[0]
    keys, normalize = _stacked_views(ctx.gather(z1), ctx.gather(z2), normalization)
    m = keys.shape[0] // 2
    lo = ctx.rank * n
    anchors = torch.cat([keys[lo:lo + n], keys[m + lo:m + lo + n]])
    return _direct.apply(lse._SPEC_ANCHOR_LSE, anchors, keys.contiguous(), temperature, normalize, n, m, lo, True,
                         lse.plan._POS_PAIR, drop_positive, lse.TRANSFORMS[similarity])[0]


def infonce_terms_triton(ctx: Context, z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """InfoNCE's terms of this rank's rows of S (its z1 against all z2), then of its rows of Sᵀ."""
    from . import _direct
    from .triton import lse

    n = z1.shape[0]
    k1, k2 = ctx.gather(z1).contiguous(), ctx.gather(z2).contiguous()
    lo = ctx.rank * n
    diag = lse.plan._POS_DIAG
    rows = _direct.apply(lse._SPEC_ANCHOR_LSE, z1.contiguous(), k2, temperature, True, n, n, lo, False, diag,
                         False, 0)[0]
    cols = _direct.apply(lse._SPEC_ANCHOR_LSE, z2.contiguous(), k1, temperature, True, n, n, lo, False, diag,
                         False, 0)[0]
    return torch.cat([rows, cols])


def ntxent_triton(ctx, z1, z2, temperature, similarity, normalization, reduction) -> Tensor:
    return R.reduce_terms(pair_terms_triton(ctx, z1, z2, temperature, similarity, normalization, False), reduction)


def dcl_triton(ctx, z1, z2, temperature, similarity, reduction) -> Tensor:
    return R.reduce_terms(pair_terms_triton(ctx, z1, z2, temperature, similarity, "l2", True), reduction)


def infonce_triton(ctx, z1, z2, temperature, reduction) -> Tensor:
    return R.reduce_terms(infonce_terms_triton(ctx, z1, z2, temperature), reduction)
