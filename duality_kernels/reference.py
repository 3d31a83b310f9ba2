"""Pure-PyTorch math of ../shared/SPEC.md §1–4: the CPU path, the test oracle, the benchmark baseline.

Functions here trust their inputs (the public functions in ``functional.py`` validate them) and
take ``side`` already resolved to "sample" or "dimension". They run on any device and dtype;
float16/bfloat16 inputs are computed in float32 (SPEC: reductions accumulate in float32), and
autograd carries gradients back to the input dtype.

The duality (SPEC §2) is used wherever a sum of squared Gram entries appears:
‖aᵀb‖²_F = ⟨a aᵀ, b bᵀ⟩_F = ⟨aᵀa, bᵀb⟩_F, so such a term costs O(N²·D) on the sample side and
O(N·D²) on the dimension side, and the caller picks the cheaper one (``_cost.cheaper_side``).
Off-diagonal sums are computed as the full sum minus the diagonal's, which is what makes
the move between sides possible: the diagonal of one side's Gram is a vector of row or column
norms, known on the other side without the matrix.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
# (z) -> (mean, m2): per-column mean and centered sum of squares, in the compute dtype.
ColumnStats = Callable[[Tensor], Tuple[Tensor, Tensor]]

L2_EPS = 1e-12  # torch.nn.functional.normalize's default, SPEC "Notation"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (SPEC "Notation")."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _up(z: Tensor) -> Tensor:
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def l2n(z: Tensor) -> Tensor:
    """Each row divided by max(‖row‖₂, 1e-12)."""
    return F.normalize(_up(z), p=2.0, dim=1, eps=L2_EPS)


def torch_column_stats(z: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-column mean and centered sum of squares, in the compute dtype."""
    z = _up(z)
    mean = z.mean(dim=0)
    x = z - mean
    return mean, (x * x).sum(dim=0)


def _centered(z: Tensor, stats: Optional[ColumnStats]) -> Tuple[Tensor, Tensor]:
    """(x, m2): z minus its column means, and Σ_i x_ik² per column."""
    if stats is None:
        z = _up(z)
        x = z - z.mean(dim=0)
        return x, (x * x).sum(dim=0)
    mean, m2 = stats(z)
    return _up(z) - mean, m2


def _sq_sum(g: Tensor) -> Tensor:
    return (g * g).sum()


def gram_fro2(a: Tensor, b: Optional[Tensor], side: str) -> Tensor:
    """‖aᵀb‖²_F computed on ``side`` (b = a when b is None).

    "dimension": from the D×D matrix aᵀb. "sample": ⟨a aᵀ, b bᵀ⟩_F from two N×N Grams (one
    Gram when b is a, since ‖aᵀa‖_F = ‖a aᵀ‖_F).
    """
    if b is None:
        g = a @ a.T if side == "sample" else a.T @ a
        return _sq_sum(g)
    if side == "sample":
        return ((a @ a.T) * (b @ b.T)).sum()
    return _sq_sum(a.T @ b)


def cross_fro2(a: Tensor, b: Tensor, side: str) -> Tensor:
    """‖a bᵀ‖²_F, computed on ``side``: N×N directly, or ⟨aᵀa, bᵀb⟩_F on the D×D side."""
    if side == "sample":
        return _sq_sum(a @ b.T)
    return ((a.T @ a) * (b.T @ b)).sum()


# --------------------------------------------------------------------------------------------
# §1 primitives


def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None) -> Tensor:
    n1 = l2n(z1)
    n2 = n1 if z2 is None else l2n(z2)
    return n1 @ n2.T


def covariance(z: Tensor, correction: int = 1, stats: Optional[ColumnStats] = None) -> Tensor:
    x, _ = _centered(z, stats)
    return (x.T @ x) / (z.shape[0] - correction)


def standardize(z: Tensor, eps: float, stats: Optional[ColumnStats] = None) -> Tensor:
    """BatchNorm1d(affine=False) in train mode: center, divide by sqrt(biased var + eps)."""
    x, m2 = _centered(z, stats)
    return x / torch.sqrt(m2 / z.shape[0] + eps)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5, stats: Optional[ColumnStats] = None) -> Tensor:
    a = standardize(z1, eps, stats)
    b = standardize(z2, eps, stats)
    return (a.T @ b) / z1.shape[0]


# --------------------------------------------------------------------------------------------
# §2 the paper's criteria and the duality identity


def duality_terms(z: Tensor, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram on ``side`` (paper Thm 3.3)."""
    z = _up(z)
    fro2 = gram_fro2(z, None, side)  # ‖z zᵀ‖² = ‖zᵀ z‖²
    sq = z * z
    rows4 = _sq_sum(sq.sum(dim=1))
    cols4 = _sq_sum(sq.sum(dim=0))
    return fro2 - rows4, fro2 - cols4, rows4, cols4


def sample_contrastive_criterion(z: Tensor, side: str) -> Tensor:
    """L_c = offsq(z zᵀ) = ‖z zᵀ‖² − Σ_i ‖z_i‖⁴."""
    z = _up(z)
    return gram_fro2(z, None, side) - _sq_sum((z * z).sum(dim=1))


def dimension_contrastive_criterion(z: Tensor, side: str) -> Tensor:
    """L_nc = offsq(zᵀ z) = ‖zᵀ z‖² − Σ_k ‖z_{:,k}‖⁴."""
    z = _up(z)
    return gram_fro2(z, None, side) - _sq_sum((z * z).sum(dim=0))


# --------------------------------------------------------------------------------------------
# §3 covariance family


def invariance(z1: Tensor, z2: Tensor) -> Tensor:
    return F.mse_loss(_up(z1), _up(z2))


def _variance_hinge(std: Tensor, gamma: float) -> Tensor:
    return F.relu(gamma - std).mean()


def vicreg_view(z: Tensor, gamma: float, eps: float, side: str,
                stats: Optional[ColumnStats] = None) -> Tuple[Tensor, Tensor]:
    """(v(z), c(z)) of SPEC §3 VICReg for one view.

    c(z) = offsq(xᵀx/(N−1))/D = [‖xᵀx‖² − Σ_k (Σ_i x_ik²)²] / ((N−1)²·D), where the first term is
    computed on ``side`` and the diagonal is the column sums of squares already needed by v(z).
    """
    n, d = z.shape
    x, m2 = _centered(z, stats)
    v = _variance_hinge(torch.sqrt(m2 / (n - 1) + eps), gamma)
    c = (gram_fro2(x, None, side) - _sq_sum(m2)) / ((n - 1) ** 2 * d)
    return v, c


def vicreg(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
           gamma: float, eps: float, side: str, stats: Optional[ColumnStats] = None):
    inv = invariance(z1, z2)
    v1, c1 = vicreg_view(z1, gamma, eps, side, stats)
    v2, c2 = vicreg_view(z2, gamma, eps, side, stats)
    var = (v1 + v2) / 2
    cov = c1 + c2
    loss = inv_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def _offdiag_lse_mean(g: Tensor, temperature: float) -> Tensor:
    """(1/M) Σ_k log Σ_{l≠k} exp(g_kl / temperature) for a square M×M matrix g."""
    eye = torch.eye(g.shape[0], dtype=torch.bool, device=g.device)
    logits = (g / temperature).masked_fill(eye, float("-inf"))
    return torch.logsumexp(logits, dim=1).mean()


def vicreg_exp(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
               gamma: float, eps: float, temperature: float):
    """Paper eq. 11–12: VICReg with c replaced by the row-wise log-sum-exp of the covariance."""
    inv = invariance(z1, z2)
    vs, cs = [], []
    for z in (z1, z2):
        n = z.shape[0]
        x, m2 = _centered(z, None)
        vs.append(_variance_hinge(torch.sqrt(m2 / (n - 1) + eps), gamma))
        cs.append(_offdiag_lse_mean((x.T @ x) / (n - 1), temperature))
    var = (vs[0] + vs[1]) / 2
    cov = cs[0] + cs[1]
    loss = inv_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def vicreg_ctr(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
               gamma: float, eps: float, temperature: float):
    """Paper eq. 13: the sample-contrastive twin of VICReg-exp (terms on the transposed matrix)."""
    inv = invariance(z1, z2)
    vs, cs = [], []
    for z in (z1, z2):
        d = z.shape[1]
        x, _ = _centered(z, None)
        y = x - x.mean(dim=1, keepdim=True)
        vs.append(_variance_hinge(torch.sqrt((y * y).sum(dim=1) / (d - 1) + eps), gamma))
        cs.append(_offdiag_lse_mean((y @ y.T) / (d - 1), temperature))
    var = (vs[0] + vs[1]) / 2
    cov = cs[0] + cs[1]
    loss = inv_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def barlow_twins(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str,
                 stats: Optional[ColumnStats] = None):
    """Σ_k (1 − C_kk)² + λ·offsq(C), C = a ᵀb / N with a, b BatchNorm-standardized views.

    offsq(C) = ‖aᵀb‖²/N² − Σ_k C_kk², the first term on ``side`` (N×N: ⟨a aᵀ, b bᵀ⟩).
    """
    n = z1.shape[0]
    a = standardize(z1, eps, stats)
    b = standardize(z2, eps, stats)
    diag = (a * b).sum(dim=0) / n
    on = _sq_sum(1 - diag)
    off = gram_fro2(a, b, side) / (n * n) - _sq_sum(diag)
    return on + lambda_param * off, {"on_diagonal": on, "off_diagonal": off}


# --------------------------------------------------------------------------------------------
# §4 sample-contrastive family


def _view_normalize(z1: Tensor, z2: Tensor, normalization: str) -> Tuple[Tensor, Tensor]:
    """The three normalizations of paper §5 / Table 1 (SPEC §4 NT-Xent)."""
    if normalization == "l2":
        return l2n(z1), l2n(z2)
    out = []
    for z in (_up(z1), _up(z2)):
        x = z - z.mean(dim=0)
        if normalization == "center_l2":
            out.append(F.normalize(x, p=2.0, dim=1, eps=L2_EPS))
        else:  # "dim_std": each column to L2 norm sqrt(N/D), no per-row normalization
            n, d = x.shape
            out.append(F.normalize(x, p=2.0, dim=0, eps=L2_EPS) * math.sqrt(n / d))
    return out[0], out[1]


def _reduce(terms: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    return terms


def pair_contrastive_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str,
                           normalization: str, drop_positive: bool) -> Tensor:
    """Per-anchor NT-Xent (drop_positive=False) or DCL (True) terms over the 2N rows [z1; z2]."""
    n1, n2 = _view_normalize(z1, z2, normalization)
    u = torch.cat([n1, n2], dim=0)
    m = u.shape[0]
    n = m // 2
    dots = u @ u.T
    pos = (n1 * n2).sum(dim=1) / temperature
    pos = torch.cat([pos, pos])
    if similarity == "abs":
        logits = dots.abs() / temperature
    elif similarity == "square":
        logits = (dots * dots) / temperature
    else:
        logits = dots / temperature
    idx = torch.arange(m, device=u.device)
    self_mask = idx[:, None] == idx[None, :]
    pos_mask = idx[None, :] == ((idx + n) % m)[:, None]
    logits = logits.masked_fill(self_mask, float("-inf"))
    if drop_positive:
        logits = logits.masked_fill(pos_mask, float("-inf"))
    elif similarity != "dot":
        # the positive's own term stays s_{a,p(a)}: the transform applies to negatives only
        logits = torch.where(pos_mask, dots / temperature, logits)
    return torch.logsumexp(logits, dim=1) - pos


def ntxent(z1, z2, temperature, similarity, normalization, reduction):
    return _reduce(pair_contrastive_terms(z1, z2, temperature, similarity, normalization, False), reduction)


def dcl(z1, z2, temperature, similarity, reduction):
    return _reduce(pair_contrastive_terms(z1, z2, temperature, similarity, "l2", True), reduction)


def infonce(z1: Tensor, z2: Tensor, temperature: float, reduction: str) -> Tensor:
    """CLIP form: ½[CE(S, arange) + CE(Sᵀ, arange)], S = l2n(z1) l2n(z2)ᵀ / temperature."""
    s = (l2n(z1) @ l2n(z2).T) / temperature
    diag = s.diagonal()
    terms = torch.cat([torch.logsumexp(s, dim=1) - diag, torch.logsumexp(s, dim=0) - diag])
    return _reduce(terms, reduction)


def clamp_row_norms(z: Tensor, mu: float) -> Tensor:
    """Rows with norm ≥ sqrt(mu) rescaled to norm sqrt(mu), as the official spectral code does."""
    z = _up(z)
    r = math.sqrt(mu)
    keep = torch.linalg.vector_norm(z, dim=1, keepdim=True) < r
    return torch.where(keep, z, F.normalize(z, p=2.0, dim=1, eps=L2_EPS) * r)


def spectral(z1: Tensor, z2: Tensor, mu: float, side: str):
    """[−(2/N) Σ_i a_i·b_i + offsq(a bᵀ)/(N(N−1))] / mu on the norm-clamped rows a, b.

    offsq(a bᵀ) = ‖a bᵀ‖² − Σ_i (a_i·b_i)², the first term on ``side`` (D×D: ⟨aᵀa, bᵀb⟩).
    """
    n = z1.shape[0]
    a = clamp_row_norms(z1, mu)
    b = clamp_row_norms(z2, mu)
    p = (a * b).sum(dim=1)
    positive = -2.0 * p.sum() / n / mu
    negative = (cross_fro2(a, b, side) - _sq_sum(p)) / (n * (n - 1)) / mu
    return positive + negative, {"positive": positive, "negative": negative}
