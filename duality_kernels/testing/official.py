"""Eager transcriptions of the official formula of every loss and primitive of docs/spec.md §1-4.

Deliberately naive and independent of ``duality_kernels``: each materializes the full N×N or D×D
matrix, masks it and reduces it as the original repositories do (facebookresearch/vicreg,
facebookresearch/barlowtwins, jhaochenz96/spectral_contrastive_learning, the SimCLR / DCL / CLIP
cross-entropies as in lightly), never picking the cheaper side of the duality. Two roles: the test
oracle (float64 inputs give ground truth, tests/test_official.py) and the benchmarks' "eager
official formula" provider (benchmarks/sweep.py). Every function computes in its inputs' dtype,
keeps autograd, validates nothing, and returns a 0-dim tensor (the per-anchor vector for
``reduction="none"``, the matrix for the primitives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "off_diagonal",
    "batchnorm_affine_false",
    "normalized_gram_official",
    "covariance_official",
    "cross_correlation_official",
    "sample_contrastive_official",
    "dimension_contrastive_official",
    "duality_terms_official",
    "vicreg_official",
    "vicreg_exp_official",
    "vicreg_ctr_official",
    "barlow_twins_official",
    "ntxent_official",
    "dcl_official",
    "infonce_official",
    "spectral_official",
]


# ----------------------------------------------------------------------------------------------
# helpers written as in the official repositories
# ----------------------------------------------------------------------------------------------


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """Flattened off-diagonal entries of a square matrix.

    The flatten/view trick of facebookresearch/vicreg and facebookresearch/barlowtwins: dropping the
    last element of the flattened n x n matrix leaves n*n - 1 = (n - 1)(n + 1) entries; viewed as
    (n - 1) rows of n + 1, every diagonal element lands in column 0, which is sliced away.
    """
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def batchnorm_affine_false(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``nn.BatchNorm1d(D, affine=False)`` in train mode, written out.

    BatchNorm normalizes with the BIASED batch variance (divide by N) plus ``eps`` inside the
    square root (the unbiased variance only feeds the running statistics, unused here).
    """
    mean = z.mean(dim=0, keepdim=True)
    xc = z - mean
    var_biased = (xc * xc).mean(dim=0, keepdim=True)
    return xc / torch.sqrt(var_biased + eps)


def _l2n(z: torch.Tensor) -> torch.Tensor:
    # docs/spec.md "Notation" l2n: row / max(||row||_2, 1e-12), i.e. torch.nn.functional.normalize.
    return F.normalize(z, p=2.0, dim=1, eps=1e-12)


def _offsq_masked(g: torch.Tensor) -> torch.Tensor:
    # offsq(A) = sum_{i != j} A_ij^2 by an explicit boolean mask.
    mask = ~torch.eye(g.shape[0], dtype=torch.bool, device=g.device)
    return g[mask].pow(2).sum()


def _reduce(per_anchor: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_anchor.mean()
    if reduction == "sum":
        return per_anchor.sum()
    if reduction == "none":
        return per_anchor
    raise ValueError(f"unknown reduction {reduction!r}")


# ----------------------------------------------------------------------------------------------
# docs/spec.md §1: primitives
# ----------------------------------------------------------------------------------------------


def normalized_gram_official(z1: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine-similarity matrix l2n(z1) l2n(z2)^T (N x N); z2 defaults to z1."""
    other = z1 if z2 is None else z2
    return _l2n(z1) @ _l2n(other).T


def covariance_official(z: torch.Tensor, correction: int = 1) -> torch.Tensor:
    """center(z)^T center(z) / (N - correction) (D x D)."""
    n = z.shape[0]
    x = z - z.mean(dim=0)
    return (x.T @ x) / (n - correction)


def cross_correlation_official(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' empirical cross-correlation bn(z1)^T bn(z2) / N (D x D)."""
    n = z1.shape[0]
    c = batchnorm_affine_false(z1, eps).T @ batchnorm_affine_false(z2, eps)
    return c / n


# ----------------------------------------------------------------------------------------------
# docs/spec.md §2: the two criteria of the paper
# ----------------------------------------------------------------------------------------------


def sample_contrastive_official(z: torch.Tensor) -> torch.Tensor:
    """L_c = offsq(z z^T): the N x N Gram of the samples, off-diagonal squared and summed."""
    return _offsq_masked(z @ z.T)


def dimension_contrastive_official(z: torch.Tensor) -> torch.Tensor:
    """L_nc = offsq(z^T z): the D x D Gram of the dimensions, off-diagonal squared and summed."""
    return _offsq_masked(z.T @ z)


def duality_terms_official(z: torch.Tensor):
    """(L_c, L_nc, sum_i ||z_i||^4, sum_k ||z_:,k||^4), each from its own matrix."""
    row_sq = (z * z).sum(dim=1)
    col_sq = (z * z).sum(dim=0)
    return (
        sample_contrastive_official(z),
        dimension_contrastive_official(z),
        (row_sq * row_sq).sum(),
        (col_sq * col_sq).sum(),
    )


# ----------------------------------------------------------------------------------------------
# docs/spec.md §3: covariance family
# ----------------------------------------------------------------------------------------------


def _vicreg_std_term(x: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    # main_vicreg.py: std = sqrt(x.var(dim=0) + eps) (unbiased), hinge relu(gamma - std), mean.
    std = torch.sqrt(x.var(dim=0) + eps)
    return torch.mean(F.relu(gamma - std))


def _vicreg_parts(z1: torch.Tensor, z2: torch.Tensor, gamma: float, eps: float):
    """``VICReg.forward`` up to its covariance term: (repr_loss, std_loss, cov_x, cov_y)."""
    n = z1.shape[0]
    repr_loss = F.mse_loss(z1, z2)

    x = z1 - z1.mean(dim=0)
    y = z2 - z2.mean(dim=0)

    std_loss = _vicreg_std_term(x, gamma, eps) / 2 + _vicreg_std_term(y, gamma, eps) / 2

    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    return repr_loss, std_loss, cov_x, cov_y


def vicreg_official(z1: torch.Tensor, z2: torch.Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                    cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg as in facebookresearch/vicreg ``VICReg.forward`` (one process, 2-D inputs)."""
    repr_loss, std_loss, cov_x, cov_y = _vicreg_parts(z1, z2, gamma, eps)
    d = z1.shape[1]
    cov_loss = off_diagonal(cov_x).pow(2).sum().div(d) + off_diagonal(cov_y).pow(2).sum().div(d)

    return inv_weight * repr_loss + var_weight * std_loss + cov_weight * cov_loss


def _masked_row_logsumexp(logits: torch.Tensor) -> torch.Tensor:
    # Row-wise log sum_{l != k} exp(logits_kl): the diagonal is set to -inf before logsumexp.
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1)


def vicreg_exp_official(z1: torch.Tensor, z2: torch.Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                        cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                        temperature: float = 0.1) -> torch.Tensor:
    """VICReg-exp (paper eq. 11-12): the covariance term becomes a row log-sum-exp over C/tau."""
    repr_loss, std_loss, cov_x, cov_y = _vicreg_parts(z1, z2, gamma, eps)
    cov_loss = _masked_row_logsumexp(cov_x / temperature).mean() + _masked_row_logsumexp(
        cov_y / temperature
    ).mean()

    return inv_weight * repr_loss + var_weight * std_loss + cov_weight * cov_loss


def vicreg_ctr_official(z1: torch.Tensor, z2: torch.Tensor, inv_weight: float = 25.0, var_weight: float = 25.0,
                        cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                        temperature: float = 0.1) -> torch.Tensor:
    """VICReg-ctr (paper eq. 13): variance and exp-covariance terms on the transposed matrix.

    Per view: x = z centered over the rows (as VICReg), y = x with each row centered over its
    D entries; the variance hinge runs over the rows' (unbiased) standard deviations and the
    log-sum-exp over the N x N matrix G = y y^T / (D - 1) with its diagonal excluded.
    """
    n, d = z1.shape
    repr_loss = F.mse_loss(z1, z2)

    def view_terms(z: torch.Tensor):
        x = z - z.mean(dim=0)
        y = x - x.mean(dim=1, keepdim=True)
        std_rows = torch.sqrt(y.var(dim=1) + eps)
        v = torch.mean(F.relu(gamma - std_rows))
        g = (y @ y.T) / (d - 1)
        c = _masked_row_logsumexp(g / temperature).mean()
        return v, c

    v1, c1 = view_terms(z1)
    v2, c2 = view_terms(z2)
    return inv_weight * repr_loss + var_weight * (v1 + v2) / 2 + cov_weight * (c1 + c2)


def barlow_twins_official(
    z1: torch.Tensor, z2: torch.Tensor, lambda_param: float = 0.0051, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins as in facebookresearch/barlowtwins ``BarlowTwins.forward`` on one device."""
    n = z1.shape[0]
    c = batchnorm_affine_false(z1, eps).T @ batchnorm_affine_false(z2, eps)
    c = c / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambda_param * off_diag


# ----------------------------------------------------------------------------------------------
# docs/spec.md §4: Gram family
# ----------------------------------------------------------------------------------------------


def _normalize_views(z1: torch.Tensor, z2: torch.Tensor, normalization: str):
    """The per-view normalization of NT-Xent (paper §5, Table 1)."""
    if normalization == "l2":
        return _l2n(z1), _l2n(z2)
    if normalization == "center_l2":
        return _l2n(z1 - z1.mean(dim=0)), _l2n(z2 - z2.mean(dim=0))
    if normalization == "dim_std":
        n, d = z1.shape
        target = math.sqrt(n / d)

        def col_scale(z):
            x = z - z.mean(dim=0)
            return x / x.norm(dim=0, keepdim=True) * target

        return col_scale(z1), col_scale(z2)
    raise ValueError(f"unknown normalization {normalization!r}")


def _pair_logits(z1, z2, temperature, similarity, normalization):
    """(2N x 2N) transformed logits, the positive mask and the positive logits s_{a,p(a)}.

    Rows/columns are u = [z1; z2]; anchor a's positive is p(a) = (a + N) mod 2N. The similarity
    transform of docs/spec.md §4 applies to every entry except the positive, whose logit stays s_{a,p(a)}.
    """
    n = z1.shape[0]
    n1, n2 = _normalize_views(z1, z2, normalization)
    u = torch.cat([n1, n2], dim=0)
    dots = u @ u.T
    s = dots / temperature
    if similarity == "dot":
        t = s
    elif similarity == "abs":
        t = dots.abs() / temperature
    elif similarity == "square":
        t = dots.pow(2) / temperature
    else:
        raise ValueError(f"unknown similarity {similarity!r}")
    idx = torch.arange(2 * n, device=z1.device)
    pos_idx = (idx + n) % (2 * n)
    pos_mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=z1.device)
    pos_mask[idx, pos_idx] = True
    logits = torch.where(pos_mask, s, t)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z1.device)
    return logits, self_mask, pos_mask, pos_idx


def ntxent_official(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, similarity: str = "dot",
                    normalization: str = "l2", reduction: str = "mean") -> torch.Tensor:
    """NT-Xent / SimCLR: 2N x 2N logits, -inf on the self-similarity, cross-entropy on p(a)."""
    logits, self_mask, _, labels = _pair_logits(z1, z2, temperature, similarity, normalization)
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, labels, reduction=reduction)


def dcl_official(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, similarity: str = "dot",
                 reduction: str = "mean") -> torch.Tensor:
    """Decoupled contrastive loss: NT-Xent with the positive removed from the denominator."""
    logits, self_mask, pos_mask, _ = _pair_logits(z1, z2, temperature, similarity, "l2")
    positive = logits[pos_mask]  # row-major: entry a is s_{a, p(a)}
    negatives = logits.masked_fill(self_mask | pos_mask, float("-inf"))
    per_anchor = -positive + torch.logsumexp(negatives, dim=1)
    return _reduce(per_anchor, reduction)


def infonce_official(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-view InfoNCE (CLIP form): symmetric cross-entropy over S = l2n(z1) l2n(z2)^T / tau.

    The 2N terms are the rows of S then the rows of S^T; "mean" = 1/2 [CE(S) + CE(S^T)] is their
    mean and "sum" their sum.
    """
    n = z1.shape[0]
    logits = _l2n(z1) @ _l2n(z2).T / temperature
    labels = torch.arange(n, device=z1.device)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    per_col = F.cross_entropy(logits.T, labels, reduction="none")
    if reduction == "mean":
        return 0.5 * (per_row.mean() + per_col.mean())
    return _reduce(torch.cat([per_row, per_col]), reduction)


def spectral_official(z1: torch.Tensor, z2: torch.Tensor, mu: float = 1.0) -> torch.Tensor:
    """Spectral contrastive loss as in jhaochenz96/spectral_contrastive_learning ``D(z1, z2, mu)``.

    Rows whose norm is at least sqrt(mu) are rescaled to norm sqrt(mu) (mask blend, as the official
    code); then -2 mean(z1 * z2) D + mean over the off-diagonal of (z1 z2^T)^2 * N / (N - 1), / mu.
    """
    root = math.sqrt(mu)
    mask1 = (torch.norm(z1, p=2, dim=1) < root).to(z1.dtype).unsqueeze(1)
    mask2 = (torch.norm(z2, p=2, dim=1) < root).to(z2.dtype).unsqueeze(1)
    z1 = mask1 * z1 + (1 - mask1) * F.normalize(z1, dim=1) * root
    z2 = mask2 * z2 + (1 - mask2) * F.normalize(z2, dim=1) * root
    n, d = z1.shape
    part1 = -2 * torch.mean(z1 * z2) * d
    square = torch.matmul(z1, z2.T) ** 2
    part2 = torch.mean(torch.triu(square, diagonal=1) + torch.tril(square, diagonal=-1)) * n / (n - 1)
    return (part1 + part2) / mu
