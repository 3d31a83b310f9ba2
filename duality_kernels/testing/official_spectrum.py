"""Eager transcriptions of the official spectral formulas (docs/spec.md §7), independent of
``duality_kernels``: each works on the side the original code uses and factorizes with
``torch.logdet`` or ``torch.linalg.svdvals`` as it does.

* ``tcr_official``: EMP-SSL's ``TotalCodingRate(eps)(X)`` (tsb0601/EMP-SSL ``loss.py``):
  −½ logdet(I_D + D/(N·eps) XᵀX), the D×D side.
* ``mcr2_official``: the official ``MaximalCodingRateReduction(eps, gamma)(X, Y)`` total loss:
  membership matrices Π_c, −½ logdet(I + D/(N·eps) WWᵀ) + γ Σ_c (tr Π_c + 1e-8)/(2N) ·
  logdet(I + D/((tr Π_c + 1e-8)·eps) W Π_c Wᵀ) with W = Xᵀ, every class on the D×D side
  (including empty ones); also returns the two terms.
* ``mec_official``: xinliu20/MEC ``loss_func`` (the N×N matrix and all ``order`` powers) and its
  training step's −λ⁻¹·(f(p1, z2) + f(p2, z1))·½/N.
* ``rankme_official``: RankMe's definition (Garrido et al. 2023) with a full ``svdvals``.

Computes in the inputs' dtype, keeps autograd, does no validation. The benchmark's eager provider.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["tcr_official", "mcr2_official", "mec_loss_func", "mec_official", "rankme_official"]


def _logdet_coding(w: torch.Tensor, scalar) -> torch.Tensor:
    """logdet(I + scalar · W Wᵀ) for W of shape (D, m), as the official code writes it."""
    p = w.shape[0]
    eye = torch.eye(p, dtype=w.dtype, device=w.device)
    return torch.logdet(eye + scalar * w.matmul(w.T))


def tcr_official(x: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    w = x.T  # (D, N)
    p, m = w.shape
    return -(_logdet_coding(w, p / (m * eps)) / 2.0)


def mcr2_official(x: torch.Tensor, y: torch.Tensor, eps: float = 0.5, gamma: float = 1.0, num_classes=None):
    """(total loss, discriminative R, compressive Rc); Π_c built from the labels as diagonal
    0/1 memberships, the class Grams as W Π_c Wᵀ, one D×D logdet per class."""
    if num_classes is None:
        num_classes = int(y.max()) + 1
    w = x.T
    p, m = w.shape
    eye = torch.eye(p, dtype=w.dtype, device=w.device)
    discrimn = torch.logdet(eye + p / (m * eps) * w.matmul(w.T)) / 2.0
    compress = 0.0
    for j in range(num_classes):
        pi = torch.diag((y == j).to(w.dtype))
        tr_pi = torch.trace(pi) + 1e-8
        log_det = torch.logdet(eye + p / (tr_pi * eps) * w.matmul(pi).matmul(w.T))
        compress = compress + tr_pi / (2 * m) * log_det
    return -discrimn + gamma * compress, discrimn, compress


def mec_loss_func(p: torch.Tensor, z: torch.Tensor, lamda_inv: float, order: int = 4) -> torch.Tensor:
    p = F.normalize(p)
    z = F.normalize(z)
    c = (p @ z.T) / lamda_inv
    power = c
    acc = torch.zeros_like(c)
    for k in range(1, order + 1):
        if k > 1:
            power = power @ c
        acc = acc + power / k if k % 2 == 1 else acc - power / k
    return torch.trace(acc)


def mec_official(z1: torch.Tensor, z2: torch.Tensor, eps_sq: float = 64.0, order: int = 4, lamda_inv=None):
    """The symmetric MEC loss of the official training step, with p1 = z1 and p2 = z2."""
    m, d = z1.shape
    if lamda_inv is None:
        lamda_inv = m * eps_sq / d  # 1 / λ, λ = 1 / (m · eps / d)
    mec = (mec_loss_func(z1, z2, lamda_inv, order) + mec_loss_func(z2, z1, lamda_inv, order)) * 0.5 / m
    return -1 * mec * lamda_inv


def rankme_official(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    s = torch.linalg.svdvals(z)
    p = s / s.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum())
