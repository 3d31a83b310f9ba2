"""Pure-PyTorch math of docs/spec.md §1–4: the CPU path, the test oracle, the benchmark baseline.

Functions here trust their inputs (the public functions in ``functional.py`` validate them) and
take ``side`` already resolved to "sample" or "dimension". They run on any device and dtype;
float16/bfloat16 inputs are computed in float32 (docs/spec.md: reductions accumulate in float32), and
autograd carries gradients back to the input dtype. Their products take operands rounded to the
input dtype and accumulate in float32 (``mm``): tensor cores with fp32 results on CUDA (as the
official formulas in bf16 and the compiled backends do; an fp32 upcast ran them on SIMT units,
2.6 ms per 2048×8192 Gram on the H200, 2026-11-30), the same rounding emulated in fp32 on the CPU.
float32 products follow torch's float32 matmul precision; float64 ones are float64.

The duality (docs/spec.md §2) is used wherever a sum of squared Gram entries appears:
‖aᵀb‖²_F = ⟨a aᵀ, b bᵀ⟩_F = ⟨aᵀa, bᵀb⟩_F, so such a term costs O(N²·D) on the sample side and
O(N·D²) on the dimension side, and the caller picks the cheaper one (``_cost.cheaper_side``).
An off-diagonal sum taken on its own side masks the diagonal before squaring; on the other side
it is the full sum minus the diagonal's (the diagonal of one side's Gram is a vector of row or
column norms, known there without the matrix), formed in float64 from float64 products for
float32 inputs, since it cancels when the diagonal dominates (docs/spec.md §8.2).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .._numerics import L2_EPS, acc_dtype
from ..distributed import LOCAL, Context, merged_moments

Tensor = torch.Tensor
# (z) -> (mean, m2): per-column mean and centered sum of squares, in the compute dtype.
ColumnStats = Callable[[Tensor], Tuple[Tensor, Tensor]]

compute_dtype = acc_dtype  # float64 for float64 inputs, float32 for everything else


def _up(z: Tensor) -> Tensor:
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


_HALF = (torch.float16, torch.bfloat16)
# torch.mm(..., out_dtype=torch.float32) for half operands exists on CUDA from torch 2.9
_MM_OUT_DTYPE = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9)


def operand_dtype(z: Tensor) -> Optional[torch.dtype]:
    """The dtype of ``z``'s product operands when it is a half type (else None: plain products)."""
    return z.dtype if z.dtype in _HALF else None


def _mm_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b of half-precision 2-D operands, accumulated in float32, as a float32 result."""
    if a.device.type == "cuda" and _MM_OUT_DTYPE:
        return torch.mm(a, b, out_dtype=torch.float32)
    # CPU, or torch < 2.9 on CUDA: products of half values are exact in float32 (and in TF32), so
    # this is the same arithmetic (exact products, float32 sums), off the half-precision tensor cores
    return a.float() @ b.float()


class _HalfMM(torch.autograd.Function):
    """a @ b for float32 a, b whose operands are rounded to a half type first (tensor cores on
    CUDA); float32 result. The backward's products take the same route (the incoming gradient
    rounded to the half type), and pass the gradient straight through the rounding, as autograd
    of ``.to()`` does."""

    @staticmethod
    def forward(ctx, a, b, dtype):
        a16, b16 = a.to(dtype), b.to(dtype)
        ctx.save_for_backward(a16, b16)
        return _mm_fp32(a16, b16)

    @staticmethod
    def backward(ctx, g):
        a16, b16 = ctx.saved_tensors
        g16 = g.to(a16.dtype)
        da = _mm_fp32(g16, b16.T) if ctx.needs_input_grad[0] else None
        db = _mm_fp32(a16.T, g16) if ctx.needs_input_grad[1] else None
        return da, db, None


def mm(a: Tensor, b: Tensor, op: Optional[torch.dtype] = None) -> Tensor:
    """a @ b (2-D); with ``op`` a half dtype, on operands rounded to ``op`` with float32
    accumulation and result (see the module docstring)."""
    if op is None:
        return a @ b
    return _HalfMM.apply(a, b, op)


_BIG = 2.0 ** 60  # past this max |entry|, a squared norm can overflow float32 (docs/spec.md §8.2)


def normalize(z: Tensor, dim: int = 1) -> Tensor:
    """``F.normalize(z, dim=dim, eps=1e-12)`` without overflow: slices (rows for dim=1) whose largest
    |entry| exceeds 2^60 are first scaled by a power of two that brings it near 1, as
    ``torch.linalg.vector_norm`` does; the result z/‖z‖ is the same, and the scale is a constant
    to autograd. Smaller slices are untouched, so the 1e-12 floor keeps its meaning."""
    m = z.detach().abs().amax(dim=dim, keepdim=True)
    big = torch.isfinite(m) & (m > _BIG)
    scale = torch.where(big, torch.exp2(-torch.floor(torch.log2(torch.where(big, m, 1.0)))), 1.0)
    return F.normalize(z * scale, p=2.0, dim=dim, eps=L2_EPS)


def l2n(z: Tensor) -> Tensor:
    """Each row divided by max(‖row‖₂, 1e-12)."""
    return normalize(_up(z), 1)


def _moments(z: Tensor, stats: Optional[ColumnStats]) -> Tuple[Tensor, Tensor, Tensor]:
    """(mean, x, m2): column means, z minus them, and Σ_i x_ik² per column (``stats`` when given).

    float32 inputs are centered in float64 and rounded once: with large column offsets a float32
    mean and subtraction keep the offset's rounding in every x entry (docs/spec.md §8.2)."""
    if stats is None:
        z = _up(z)
        if z.dtype == torch.float32:
            z64 = z.double()
            mean64 = z64.mean(dim=0)
            x64 = z64 - mean64
            return mean64.float(), x64.float(), (x64 * x64).sum(dim=0).float()
        mean = z.mean(dim=0)
        x = z - mean
        return mean, x, (x * x).sum(dim=0)
    mean, m2 = stats(z)
    return mean, _up(z) - mean, m2


def _centered(z: Tensor, stats: Optional[ColumnStats]) -> Tuple[Tensor, Tensor]:
    """(x, m2): z minus its column means, and Σ_i x_ik² per column."""
    _, x, m2 = _moments(z, stats)
    return x, m2


def _sq_sum(g: Tensor) -> Tensor:
    return (g * g).sum()


_F64 = torch.float64


def _wide(a: Tensor, op: Optional[torch.dtype]) -> Tensor:
    """float32 operands as float64 (products and sums), others unchanged.

    A sum of squared Gram entries minus its diagonal's (the move between sides, docs/spec.md §2)
    cancels when the diagonal dominates, e.g. one column 1e4× the others: float32 products keep an
    error of ~1e-7·‖G‖²_F, which can exceed the difference itself. Half-precision operands keep
    their tensor-core products (``op``)."""
    return a.double() if op is None and a.dtype == torch.float32 else a


def _sum64(t: Tensor) -> Tensor:
    return t.sum(dtype=_F64) if t.dtype != _F64 else t.sum()


def offdiag_sq(g: Tensor) -> Tensor:
    """Σ_{k≠l} g_kl², float64: the diagonal is masked before squaring, not subtracted after."""
    eye = torch.eye(g.shape[0], dtype=torch.bool, device=g.device)
    return _sum64(torch.square(g.masked_fill(eye, 0.0)))


def _inner64(a: Tensor, b: Tensor) -> Tensor:
    return _sum64(a * b)


def gram_fro2(a: Tensor, b: Optional[Tensor], side: str, op: Optional[torch.dtype] = None) -> Tensor:
    """‖aᵀb‖²_F computed on ``side`` (b = a when b is None), float64; products through ``mm(.., op)``
    (float64 for float32 operands, ``_wide``).

    "dimension": from the D×D matrix aᵀb. "sample": ⟨a aᵀ, b bᵀ⟩_F from two N×N Grams (one
    Gram when b is a, since ‖aᵀa‖_F = ‖a aᵀ‖_F).
    """
    a = _wide(a, op)
    if b is None:
        g = mm(a, a.T, op) if side == "sample" else mm(a.T, a, op)
        return _inner64(g, g)
    b = _wide(b, op)
    if side == "sample":
        return _inner64(mm(a, a.T, op), mm(b, b.T, op))
    g = mm(a.T, b, op)
    return _inner64(g, g)


def offsq_cols(a: Tensor, side: str, op: Optional[torch.dtype] = None) -> Tensor:
    """offsq(aᵀa) = Σ_{k≠l} (a_k·a_l)² over columns, float64, computed on ``side``: the D×D Gram
    with its diagonal masked, or ‖a aᵀ‖²_F − Σ_k ‖a_k‖⁴ with both terms from the same (widened)
    operands, so that the identity holds for them exactly up to the float64 sums."""
    w = _wide(a, op)
    if side == "dimension":
        return offdiag_sq(mm(w.T, w, op))
    g = mm(w, w.T, op)
    cols = _sum64_dim(w * w, 0)
    return _inner64(g, g) - _inner64(cols, cols)


def _sum64_dim(t: Tensor, dim: int) -> Tensor:
    return t.sum(dim=dim, dtype=_F64) if t.dtype != _F64 else t.sum(dim=dim)


def cross_fro2(a: Tensor, b: Tensor, side: str, op: Optional[torch.dtype] = None) -> Tensor:
    """‖a bᵀ‖²_F, float64, computed on ``side``: N×N directly, or ⟨aᵀa, bᵀb⟩_F on the D×D side."""
    a, b = _wide(a, op), _wide(b, op)
    if side == "sample":
        g = mm(a, b.T, op)
        return _inner64(g, g)
    return _inner64(mm(a.T, a, op), mm(b.T, b, op))


# --------------------------------------------------------------------------------------------
# §1 primitives


def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None) -> Tensor:
    n1 = l2n(z1)
    n2 = n1 if z2 is None else l2n(z2)
    return mm(n1, n2.T, operand_dtype(z1))


def covariance(z: Tensor, correction: int = 1, stats: Optional[ColumnStats] = None) -> Tensor:
    x, _ = _centered(z, stats)
    return mm(x.T, x, operand_dtype(z)) / (z.shape[0] - correction)


def standardize(z: Tensor, eps: float, stats: Optional[ColumnStats] = None) -> Tensor:
    """BatchNorm1d(affine=False) in train mode: center, divide by sqrt(biased var + eps)."""
    x, m2 = _centered(z, stats)
    return x / torch.sqrt(m2 / z.shape[0] + eps)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5, stats: Optional[ColumnStats] = None) -> Tensor:
    a = standardize(z1, eps, stats)
    b = standardize(z2, eps, stats)
    return mm(a.T, b, operand_dtype(z1)) / z1.shape[0]


# --------------------------------------------------------------------------------------------
# §2 the paper's criteria and the duality identity


def duality_terms(z: Tensor, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram on ``side`` (paper Thm 3.3)."""
    op = operand_dtype(z)
    z = _up(z)
    w = _wide(z, op)
    g = mm(w, w.T, op) if side == "sample" else mm(w.T, w, op)
    fro2 = _inner64(g, g)  # ‖z zᵀ‖² = ‖zᵀ z‖²
    sq = w * w
    rows, cols = _sum64_dim(sq, 1), _sum64_dim(sq, 0)
    rows4, cols4 = _inner64(rows, rows), _inner64(cols, cols)
    own = offdiag_sq(g)  # this side's criterion directly, the other's through the identity
    l_c, l_nc = (own, fro2 - cols4) if side == "sample" else (fro2 - rows4, own)
    return tuple(t.to(z.dtype) for t in (l_c, l_nc, rows4, cols4))


def sample_contrastive_criterion(z: Tensor, side: str) -> Tensor:
    """L_c = offsq(z zᵀ) = ‖z zᵀ‖² − Σ_i ‖z_i‖⁴."""
    z_up = _up(z)
    # offsq of the columns of zᵀ: its D×D side is z's N×N side
    return offsq_cols(z_up.T, "dimension" if side == "sample" else "sample", operand_dtype(z)).to(z_up.dtype)


def dimension_contrastive_criterion(z: Tensor, side: str) -> Tensor:
    """L_nc = offsq(zᵀ z) = ‖zᵀ z‖² − Σ_k ‖z_{:,k}‖⁴."""
    z_up = _up(z)
    return offsq_cols(z_up, side, operand_dtype(z)).to(z_up.dtype)


# --------------------------------------------------------------------------------------------
# §3 covariance family
#
# ``ctx`` (distributed.Context) is LOCAL for one process. With W ranks (docs/spec.md §5) every batch
# statistic is the global batch's, obtained by ``strategy`` "gather" (all rows to every rank, then
# the single-process math) or "allreduce" (merge per-rank moments and D×D Grams); the invariance
# term stays local.


def invariance(z1: Tensor, z2: Tensor) -> Tensor:
    return F.mse_loss(_up(z1), _up(z2))


def _variance_hinge(std: Tensor, gamma: float) -> Tensor:
    return F.relu(gamma - std).mean()


def _merged_gram(z: Tensor, stats: Optional[ColumnStats], ctx: Context) -> Tuple[int, Tensor, Tensor]:
    """"allreduce" strategy: (W·N, global m2, global centered D×D Gram) from this rank's rows."""
    n_local = z.shape[0]
    mean, x, m2 = _moments(z, stats)
    _, m2, gram = merged_moments(ctx, mean, m2, n_local, mm(x.T, x, operand_dtype(z)))
    return ctx.world * n_local, m2, gram


def vicreg_view(z: Tensor, gamma: float, eps: float, side: str,
                stats: Optional[ColumnStats] = None, ctx: Context = LOCAL,
                strategy: str = "gather") -> Tuple[Tensor, Tensor]:
    """(v(z), c(z)) of docs/spec.md §3 VICReg for one view.

    c(z) = offsq(xᵀx/(N−1))/D = [‖xᵀx‖² − Σ_k (Σ_i x_ik²)²] / ((N−1)²·D), where the first term is
    computed on ``side`` and the diagonal is the column sums of squares already needed by v(z).
    """
    d = z.shape[1]
    if ctx.active and strategy == "allreduce":
        n, m2, gram = _merged_gram(z, stats, ctx)
        off = offdiag_sq(gram)
    else:
        z = ctx.gather(z)
        n = z.shape[0]
        x, m2 = _centered(z, stats)
        off = offsq_cols(x, side, operand_dtype(z))
    v = _variance_hinge(torch.sqrt(m2 / (n - 1) + eps), gamma)
    c = (off / ((n - 1) ** 2 * d)).to(m2.dtype)
    return v, c


def _vicreg_combine(inv, vs, cs, inv_weight, var_weight, cov_weight):
    var = (vs[0] + vs[1]) / 2
    cov = cs[0] + cs[1]
    loss = inv_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def vicreg(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
           gamma: float, eps: float, side: str, stats: Optional[ColumnStats] = None,
           ctx: Context = LOCAL, strategy: str = "gather"):
    inv = invariance(z1, z2)
    v1, c1 = vicreg_view(z1, gamma, eps, side, stats, ctx, strategy)
    v2, c2 = vicreg_view(z2, gamma, eps, side, stats, ctx, strategy)
    return _vicreg_combine(inv, (v1, v2), (c1, c2), inv_weight, var_weight, cov_weight)


def _offdiag_lse(g: Tensor, temperature: float, self_col: Optional[Tensor] = None) -> Tensor:
    """Per row k: log Σ_{l ≠ self(k)} exp(g_kl / temperature); self(k) = k unless given."""
    if self_col is None:
        self_col = torch.arange(g.shape[0], device=g.device)
    mask = torch.arange(g.shape[1], device=g.device)[None, :] == self_col[:, None]
    return torch.logsumexp((g / temperature).masked_fill(mask, float("-inf")), dim=1)


def vicreg_exp(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
               gamma: float, eps: float, temperature: float, ctx: Context = LOCAL,
               strategy: str = "gather"):
    """Paper eq. 11–12: VICReg with c replaced by the row-wise log-sum-exp of the covariance."""
    inv = invariance(z1, z2)
    vs, cs = [], []
    for z in (z1, z2):
        if ctx.active and strategy == "allreduce":
            n, m2, gram = _merged_gram(z, None, ctx)
        else:
            z = ctx.gather(z)
            n = z.shape[0]
            x, m2 = _centered(z, None)
            gram = mm(x.T, x, operand_dtype(z))
        vs.append(_variance_hinge(torch.sqrt(m2 / (n - 1) + eps), gamma))
        cs.append(_offdiag_lse(gram / (n - 1), temperature).mean())
    return _vicreg_combine(inv, vs, cs, inv_weight, var_weight, cov_weight)


def vicreg_ctr(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
               gamma: float, eps: float, temperature: float, ctx: Context = LOCAL):
    """Paper eq. 13: the sample-contrastive twin of VICReg-exp (terms on the transposed matrix).

    With W ranks each rank takes its own rows as anchors against all W·N rows (global column
    centering): the mean over ranks of the per-anchor means is the global mean.
    """
    inv = invariance(z1, z2)
    vs, cs = [], []
    for z in (z1, z2):
        n_local, d = z.shape
        zg = ctx.gather(_up(z))
        x = zg - zg.mean(dim=0)
        y = x - x.mean(dim=1, keepdim=True)
        own = torch.arange(ctx.rank * n_local, (ctx.rank + 1) * n_local, device=z.device)
        y_own = y[ctx.rank * n_local:(ctx.rank + 1) * n_local]
        vs.append(_variance_hinge(torch.sqrt((y_own * y_own).sum(dim=1) / (d - 1) + eps), gamma))
        cs.append(_offdiag_lse(mm(y_own, y.T, operand_dtype(z)) / (d - 1), temperature, own).mean())
    return _vicreg_combine(inv, vs, cs, inv_weight, var_weight, cov_weight)


def barlow_twins(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str,
                 stats: Optional[ColumnStats] = None, ctx: Context = LOCAL, strategy: str = "gather"):
    """Σ_k (1 − C_kk)² + λ·offsq(C), C = aᵀb / N with a, b BatchNorm-standardized views.

    offsq(C) = ‖aᵀb‖²/N² − Σ_k C_kk², the first term on ``side`` (N×N: ⟨a aᵀ, b bᵀ⟩).
    """
    op = operand_dtype(z1)
    if ctx.active and strategy == "allreduce":
        n_local = z1.shape[0]
        n = ctx.world * n_local
        ab = []
        for z in (z1, z2):
            mean, _, m2 = _moments(z, stats)
            g_mean, g_m2, _ = merged_moments(ctx, mean, m2, n_local)
            ab.append((_up(z) - g_mean) / torch.sqrt(g_m2 / n + eps))
        c = ctx.all_reduce(mm(ab[0].T, ab[1], op)) / n
        diag = torch.diagonal(c)
        on = _sq_sum(1 - diag)
        off = offdiag_sq(c).to(on.dtype)
        return on + lambda_param * off, {"on_diagonal": on, "off_diagonal": off}
    z1, z2 = ctx.gather(z1), ctx.gather(z2)
    n = z1.shape[0]
    a = standardize(z1, eps, stats)
    b = standardize(z2, eps, stats)
    acc = a.dtype
    wa, wb = _wide(a, op), _wide(b, op)
    diag = _sum64_dim(wa * wb, 0) / n
    on = _sum64(torch.square(1 - diag)).to(acc)
    if side == "dimension":
        off = offdiag_sq(mm(wa.T, wb, op) / n)
    else:
        off = gram_fro2(wa, wb, side, op) / (n * n) - _inner64(diag, diag)
    off = off.to(acc)
    return on + lambda_param * off, {"on_diagonal": on, "off_diagonal": off}


# --------------------------------------------------------------------------------------------
# §4 sample-contrastive family
#
# With W ranks each rank's anchors are its own rows, scored against the rows of all ranks
# (docs/spec.md §5); rows are numbered globally, rank r owning [r·N, (r+1)·N) of each view.


def _view_normalize(z1: Tensor, z2: Tensor, normalization: str) -> Tuple[Tensor, Tensor]:
    """The three normalizations of paper §5 / Table 1 (docs/spec.md §4 NT-Xent)."""
    if normalization == "l2":
        return l2n(z1), l2n(z2)
    out = []
    for z in (_up(z1), _up(z2)):
        # centered in float64 and rounded once for float32: a collapsed batch centers to exact zeros
        # (float32 residue would be scaled to unit rows by the normalization, docs/spec.md §8.2)
        x = (z.double() - z.double().mean(dim=0)).float() if z.dtype == torch.float32 else z - z.mean(dim=0)
        if normalization == "center_l2":
            out.append(normalize(x, 1))
        else:  # "dim_std": each column to L2 norm sqrt(N/D), no per-row normalization
            n, d = x.shape
            out.append(normalize(x, 0) * math.sqrt(n / d))
    return out[0], out[1]


def reduce_terms(terms: Tensor, reduction: str) -> Tensor:
    """docs/spec.md §4 ``reduction``: mean or sum over the terms, or the terms themselves ("none")."""
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    return terms


def pair_contrastive_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str,
                           normalization: str, drop_positive: bool, ctx: Context = LOCAL) -> Tensor:
    """Per-anchor NT-Xent (drop_positive=False) or DCL (True) terms of this rank's 2N anchors
    (its rows of z1, then of z2) against all 2·W·N rows [z1_global; z2_global]."""
    n_local = z1.shape[0]
    n1, n2 = _view_normalize(ctx.gather(z1), ctx.gather(z2), normalization)
    m = n1.shape[0]
    lo = ctx.rank * n_local
    a1, a2 = n1[lo:lo + n_local], n2[lo:lo + n_local]
    own = torch.arange(lo, lo + n_local, device=n1.device)
    self_col = torch.cat([own, own + m])
    pos_col = torch.cat([own + m, own])
    keys = torch.cat([n1, n2])
    anchors = torch.cat([a1, a2]) if ctx.active else keys         # one rank: the anchors are all rows
    dots = mm(anchors, keys.T, operand_dtype(z1))                 # (2N, 2WN)
    # the positive's logit is the matrix's own entry: with "dot" the log-sum-exp includes it, so a
    # term is ≥ 0 in floating point too (a separately rounded dot product left them slightly
    # negative at low temperature)
    pos = (dots / temperature).gather(1, pos_col[:, None]).squeeze(1)
    if similarity == "abs":
        logits = dots.abs() / temperature
    elif similarity == "square":
        logits = (dots * dots) / temperature
    else:
        logits = dots / temperature
    cols = torch.arange(2 * m, device=n1.device)[None, :]
    logits = logits.masked_fill(cols == self_col[:, None], float("-inf"))
    pos_mask = cols == pos_col[:, None]
    if drop_positive:
        logits = logits.masked_fill(pos_mask, float("-inf"))
    elif similarity != "dot":
        # the positive's own term stays s_{a,p(a)}: the transform applies to negatives only
        logits = torch.where(pos_mask, dots / temperature, logits)
    return torch.logsumexp(logits, dim=1) - pos


def ntxent(z1, z2, temperature, similarity, normalization, reduction, ctx: Context = LOCAL):
    return reduce_terms(pair_contrastive_terms(z1, z2, temperature, similarity, normalization, False, ctx), reduction)


def dcl(z1, z2, temperature, similarity, reduction, ctx: Context = LOCAL):
    return reduce_terms(pair_contrastive_terms(z1, z2, temperature, similarity, "l2", True, ctx), reduction)


def infonce(z1: Tensor, z2: Tensor, temperature: float, reduction: str, ctx: Context = LOCAL) -> Tensor:
    """CLIP form: ½[CE(S, arange) + CE(Sᵀ, arange)], S = l2n(z1) l2n(z2)ᵀ / temperature.

    Terms: this rank's rows of S (its z1 anchors against all z2 rows), then its rows of Sᵀ.
    """
    n_local = z1.shape[0]
    op = operand_dtype(z1)
    if not ctx.active:
        s = mm(l2n(z1), l2n(z2).T, op) / temperature
        diag = s.diagonal()
        terms = torch.cat([torch.logsumexp(s, dim=1) - diag, torch.logsumexp(s, dim=0) - diag])
        return reduce_terms(terms, reduction)
    n1, n2 = l2n(ctx.gather(z1)), l2n(ctx.gather(z2))
    lo = ctx.rank * n_local
    a1, a2 = n1[lo:lo + n_local], n2[lo:lo + n_local]
    diag = (a1 * a2).sum(dim=1) / temperature
    rows = torch.logsumexp(mm(a1, n2.T, op) / temperature, dim=1) - diag
    cols = torch.logsumexp(mm(a2, n1.T, op) / temperature, dim=1) - diag
    return reduce_terms(torch.cat([rows, cols]), reduction)


def clamp_row_norms(z: Tensor, mu: float) -> Tensor:
    """Rows with norm ≥ sqrt(mu) rescaled to norm sqrt(mu), as the official spectral code does."""
    z = _up(z)
    r = math.sqrt(mu)
    keep = torch.linalg.vector_norm(z, dim=1, keepdim=True) < r
    return torch.where(keep, z, normalize(z, 1) * r)


def spectral(z1: Tensor, z2: Tensor, mu: float, side: str, ctx: Context = LOCAL):
    """[−(2/N) Σ_i a_i·b_i + offsq(a bᵀ)/(N(N−1))] / mu on the norm-clamped rows a, b.

    offsq(a bᵀ) = ‖a bᵀ‖² − Σ_i (a_i·b_i)², the first term on ``side`` (D×D: ⟨aᵀa, bᵀb⟩).
    With W ranks: this rank's rows a_r against all rows of b, scaled so that the mean over ranks
    is the global loss: [−(2/N) Σ_{i∈r} p_i + (‖a_r bᵀ‖² − Σ_{i∈r} p_i²)/(N(W·N−1))] / mu.
    """
    n_local = z1.shape[0]
    a = clamp_row_norms(z1, mu)
    b_all = clamp_row_norms(ctx.gather(z2), mu)
    m = b_all.shape[0]
    lo = ctx.rank * n_local
    op = operand_dtype(z1)
    wa, wb = _wide(a, op), _wide(b_all, op)
    p = _sum64_dim(wa * wb[lo:lo + n_local], 1)
    positive = (-2.0 * p.sum() / n_local / mu).to(a.dtype)
    if side == "sample":  # the N×M block directly, this rank's positives masked before squaring
        s = mm(wa, wb.T, op)
        own = torch.arange(lo, lo + n_local, device=s.device)
        mask = torch.arange(m, device=s.device)[None, :] == own[:, None]
        neg = _sum64(torch.square(s.masked_fill(mask, 0.0)))
    else:
        neg = cross_fro2(wa, wb, side, op) - _inner64(p, p)
    negative = (neg / (n_local * (m - 1)) / mu).to(a.dtype)
    return positive + negative, {"positive": positive, "negative": negative}
