"""VICReg-exp and VICReg-ctr (docs/spec.md §3) on the log-sum-exp passes: the two views as grid
axis 1 of every pass; VICReg-exp's rows are the D rows of xᵀ (scale 1/(τ(N−1))), VICReg-ctr's the
N rows of y = x − rowmean(x) (scale 1/(τ(D−1))). ``_vicreg_scalars_kernel`` reduces the four outputs
in float64; the forward and backward implementations here are what the custom ops run.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .._common import acc_dtype, device_guard, interpreting, tl, triton
from .backward import _backward, _Side
from .forward import _forward
from .plan import _FIN_CTR, _FIN_EXP, _NO_POS, Tensor
from .prep import _colstats, _finish, _prep


@triton.jit
def _relu(x):
    """max(x, 0) that keeps a NaN, as torch.relu (tl.maximum drops it)."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def _vicreg_scalars_kernel(m2_ptr, sq_ptr, rstd_ptr, lse_ptr, loss_ptr, inv_ptr, var_ptr, cov_ptr, N, D, M,
                           inv_w: tl.float64, var_w: tl.float64, cov_w: tl.float64, gamma: tl.float64,
                           var_eps: tl.float64, CTR: tl.constexpr, B: tl.constexpr):
    """(loss, invariance, variance, covariance) of VICReg-exp / -ctr (docs/spec.md §3) from the column
    statistics, the rows' std (ctr) and the 2·M log-sum-exp terms: one program, float64 sums in
    a fixed order, rounded once."""
    offs = tl.arange(0, B)
    inv = tl.zeros((B,), tl.float64)
    for d0 in range(0, D, B):
        inv += tl.load(sq_ptr + d0 + offs, mask=d0 + offs < D, other=0.0)
    hinge = tl.zeros((B,), tl.float64)
    if CTR:
        for j0 in range(0, 2 * N, B):
            # padding lanes masked out of the sum: loaded as gamma they added gamma − fl32(gamma) each
            # in float64 (gamma = 1.3: 2.5e-6 off)
            sd = tl.load(rstd_ptr + j0 + offs, mask=j0 + offs < 2 * N, other=0.0).to(tl.float64)
            hinge += tl.where(j0 + offs < 2 * N, _relu(gamma - sd), 0.0)
        var = tl.sum(hinge, axis=0) / (2 * N)
    else:
        for j0 in range(0, 2 * D, B):
            m2 = tl.load(m2_ptr + j0 + offs, mask=j0 + offs < 2 * D, other=0.0)
            sd = tl.sqrt(m2 / (N - 1) + var_eps)
            hinge += tl.where(j0 + offs < 2 * D, _relu(gamma - sd), 0.0)
        var = tl.sum(hinge, axis=0) / (2 * D)
    cov = tl.zeros((B,), tl.float64)
    for j0 in range(0, 2 * M, B):
        cov += tl.load(lse_ptr + j0 + offs, mask=j0 + offs < 2 * M, other=0.0).to(tl.float64)
    inv_s = tl.sum(inv, axis=0) / (N * D)
    cov_s = tl.sum(cov, axis=0) / M
    loss = inv_w * inv_s + var_w * var + cov_w * cov_s
    ty = loss_ptr.dtype.element_ty
    tl.store(loss_ptr, loss.to(ty))
    tl.store(inv_ptr, inv_s.to(ty))
    tl.store(var_ptr, var.to(ty))
    tl.store(cov_ptr, cov_s.to(ty))


# --------------------------------------------------------------------------------------------
# forward and backward (the custom ops' implementations)


def _vicreg_lse_fwd(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature, ctr):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    dev = z1.device
    with device_guard(z1):
        mean, m2, si = _colstats(z1, z2, 2, True)
        if ctr:  # y = x − rowmean(x), rows of y against each other, scale 1/(τ(D−1))
            pr = _prep(z1, z2, 2, mean, m2, center=True, rowcenter=True, var_eps=eps)
            m, inv_t = n, 1.0 / (temperature * (d - 1))
        else:  # the D rows of xᵀ against each other, scale 1/(τ(N−1))
            pr = _prep(z1, z2, 2, mean, m2, center=True, trans=True)
            m, inv_t = d, 1.0 / (temperature * (n - 1))
        lse = torch.empty(3, 2 * m, dtype=acc, device=dev)
        q, term = (torch.empty(2 * m, dtype=acc, device=dev) for _ in range(2))
        _forward(pr.op, pr.op, None, None, inv_t, (0, 0, 0, True, _NO_POS, False, 0), batch=2, orient=1,
                 lse=lse, q=q, term=term)
        outs = [torch.empty((), dtype=acc, device=dev) for _ in range(4)]
        _vicreg_scalars_kernel[(1,)](
            m2, si, pr.rinfo[1] if ctr else term, term, *outs, n, d, m, float(inv_weight), float(var_weight),
            float(cov_weight), float(gamma), float(eps), CTR=ctr, B=32 if interpreting() else 1024, num_warps=4)
    info = pr.rinfo if ctr else m2
    return (*outs, pr.op, lse, mean, info)


def _vicreg_lse_bwd(z1, z2, op, lse, mean, info, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight, cov_weight,
                    gamma, eps, temperature, ctr):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    dev = z1.device
    m = n if ctr else d
    inv_t = 1.0 / (temperature * ((d if ctr else n) - 1))
    with device_guard(z1):
        # ∂L/∂lse_k = (g_loss·cov_weight + g_cov)/M for every row of both views
        gc = torch.add(g_cov.to(acc), g_loss.to(acc), alpha=float(cov_weight)).div_(m).reshape(1).expand(2 * m)
        side = _Side(lse, lse, gc)
        kdim = d if ctr else n
        dx = torch.empty(2 * m, kdim, dtype=acc, device=dev)  # ∂L/∂op: dy (ctr) or d(xᵀ) (exp)
        _backward(op, op, None, None, None, side, side, inv_t, (0, 0, 0, True, _NO_POS, False, 0), tile_scale=False,
                  out=dx, batch=2, orient=1)
        dz1 = torch.empty(z1.shape, dtype=z1.dtype, device=dev)
        dz2 = torch.empty_like(dz1)
        g = tuple(x.to(acc) for x in (g_loss, g_inv, g_var))
        if ctr:
            _finish(dx, z1, z2, mean, None, info, dz1, dz2, _FIN_CTR, n * dx.stride(0), dx.stride(0), 1, g,
                    (inv_weight, var_weight), gamma, eps)
        else:  # dx holds d(xᵀ): element (i, k) of view v at v·D·N + k·N + i
            _finish(dx, z1, z2, mean, info, None, dz1, dz2, _FIN_EXP, d * dx.stride(0), 1, dx.stride(0), g,
                    (inv_weight, var_weight), gamma, eps)
    return dz1, dz2


def _vicreg_impls(ctr: bool):
    """The custom ops' forward and backward of VICReg-ctr (``ctr``) or VICReg-exp. The forward
    returns (loss, invariance, variance, covariance, op, lse, mean, info): info is m2 for
    VICReg-exp, rinfo (row mean, row std) for VICReg-ctr."""

    def fwd(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float, gamma: float,
            eps: float, temperature: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _vicreg_lse_fwd(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature, ctr)

    def bwd(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, mean: Tensor, info: Tensor, g_loss: Tensor,
            g_inv: Tensor, g_var: Tensor, g_cov: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
            gamma: float, eps: float, temperature: float) -> Tuple[Tensor, Tensor]:
        return _vicreg_lse_bwd(z1, z2, op, lse, mean, info, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight,
                               cov_weight, gamma, eps, temperature, ctr)

    return fwd, bwd


_vicreg_exp_fwd_impl, _vicreg_exp_bwd_impl = _vicreg_impls(False)
_vicreg_ctr_fwd_impl, _vicreg_ctr_bwd_impl = _vicreg_impls(True)
