"""The local pieces of gather_distributed=True on Triton (docs/spec.md §5): ``moments`` and
``spectral_rows``, which ops/gathered.py merges across ranks."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import registry
from ..._checks import MOMENTS_CROSS, MOMENTS_NONE, MOMENTS_SELF  # noqa: F401 (re-exported)
from ..._direct import apply
from .._common import acc_dtype, device_rule
from .._common import device_guard as _device
from .column import _colpass
from .epilogue import _elem_bwd, _row_bwd
from .ops_base import _bwd_fake2, _e, _grads, _new, _none
from .plan import _CENTER, _E_MOMENTS, _E_MOMENTS_NOP, _R_CLAMP, _ROW_CLAMP, _mm, _plan
from .row import _rowpass

Tensor = torch.Tensor


# ============================================================================================
# gather_distributed=True (docs/spec.md §5): the local pieces that ops/gathered.py merges across ranks
# (the CUDA backend's cuda_moments_* and cuda_spectral_rows_*, same arguments and results)


def _moments_fwd_impl(z1: Tensor, z2: Tensor, mode: int
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (invariance mean((z1 − z2)²) (acc), mean (2, D) float64, m2 (2, D) float64, gram, x):
    the column pass's float64 statistics; gram (acc): (0, D, D) for mode 0, [x1ᵀx1, x2ᵀx2]
    (2, D, D) for mode 1, x1ᵀx2 (1, D, D) for mode 2, of the centered views x (2, N, D) in the
    input dtype (empty for mode 0, where no operand is written)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    with _device(z1):
        cols = _colpass(z1, z2, _CENTER, sqdiff=True, operand=mode != MOMENTS_NONE)
        inv = (cols.sq.sum() / (n * d)).to(acc)
        if mode == MOMENTS_NONE:
            x, gram = _none(z1, z1.dtype), z1.new_empty((0, d, d), dtype=acc)
        else:
            x = cols.x
            gram = _mm(x.transpose(1, 2), x) if mode == MOMENTS_SELF else _mm(x[0].t(), x[1]).unsqueeze(0)
    return inv, cols.mean, cols.m2, gram, x


def _moments_fwd_fake(z1, z2, mode):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    f64 = torch.float64
    return (_e(z1, (), acc), _e(z1, (2, d), f64), _e(z1, (2, d), f64),
            _e(z1, ((0, 2, 1)[mode], d, d), acc), _e(z1, (2, n, d) if mode else (0,)))


def _half_operand(m: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Optional[Tensor]]:
    """An acc matrix as a GEMM operand next to rows of ``dtype``: rounded to it for bf16/fp16, fp16
    first scaled to a largest magnitude of 2¹⁴ (its range ends at 65504; the product is then
    multiplied by the returned factor); fp32/fp64: itself."""
    if dtype not in (torch.bfloat16, torch.float16):
        return m, None
    if dtype == torch.bfloat16:
        return m.to(dtype), None
    amax = m.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    return (m * (16384.0 / amax)).to(dtype), amax / 16384.0


def _moments_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, mean: Tensor, g_inv: Optional[Tensor],
                      g_mean: Optional[Tensor], g_m2: Optional[Tensor], g_gram: Optional[Tensor],
                      mode: int) -> Tuple[Tensor, Tensor]:
    """dz_v = P_v ± 2g_inv(z1 − z2)/(N·D) + g_mean_v/N + 2g_m2_v∘(z_v − mean_v), P_v = x_v(G_v + G_vᵀ)
    (mode 1) or x2·Gᵀ, x1·G (mode 2) by cuBLAS; the rest in one epilogue (``_E_MOMENTS``)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    dz = (_new(z1), _new(z2))
    f64 = dict(dtype=torch.float64, device=z1.device)
    gm = torch.zeros((2, d), **f64) if g_mean is None else g_mean.to(torch.float64).contiguous()
    g2 = torch.zeros((2, d), **f64) if g_m2 is None else g_m2.to(torch.float64).contiguous()
    gi = _grads(z1, acc, (g_inv,), False)[0]
    with _device(z1):
        ps = None
        if mode != MOMENTS_NONE and g_gram is not None:
            g = g_gram.to(acc)
            if mode == MOMENTS_SELF:
                h, unscale = _half_operand(g + g.transpose(1, 2), z1.dtype)
                ps = [_mm(x[0], h[0]), _mm(x[1], h[1])]
            else:
                h, unscale = _half_operand(g[0], z1.dtype)
                ps = [_mm(x[1], h.t()), _mm(x[0], h)]
            if unscale is not None:
                ps = [q.mul_(unscale) for q in ps]
        _elem_bwd(_E_MOMENTS if ps is not None else _E_MOMENTS_NOP, ps or (dz[0], dz[1]), (0, 1), dz, z1, z2,
                  mean=mean.contiguous(), cv=g2, rv=gm, gs=(gi, gi))
    return dz


def _moments_setup(ctx, inputs, output):
    z1, z2, mode = inputs
    ctx.save_for_backward(z1, z2, output[4], output[1])
    ctx.mode = mode


def _moments_backward(ctx, run_bwd, g_inv, g_mean, g_m2, g_gram, *_unused):
    z1, z2, x, mean = ctx.saved_tensors
    dz1, dz2 = run_bwd(z1, z2, x, mean, g_inv, g_mean, g_m2, g_gram if ctx.mode else None, ctx.mode)
    return dz1, dz2, None


_SPEC_MOMENTS = registry.register("moments", "triton", fwd=_moments_fwd_impl, fwd_fake=_moments_fwd_fake,
                                  bwd=_moments_bwd_impl, bwd_fake=_bwd_fake2, setup=_moments_setup,
                                  backward=_moments_backward, device=device_rule).spec


def moments(z1: Tensor, z2: Tensor, mode: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(invariance, mean, m2, gram) of this process's rows, differentiable (``_moments_fwd_impl``)."""
    out = apply(_SPEC_MOMENTS, z1.contiguous(), z2.contiguous(), int(mode))
    return out[0], out[1], out[2], out[3]


def _spectral_rows_fwd_impl(z1: Tensor, z2: Tensor, mu: float) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (x (2, N, D) the clamped rows a, b (docs/spec.md §4), p = a_i·b_i (N) acc, info (3, N) acc as
    ``_rowpass_kernel`` writes it)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    with _device(z1):
        x, info, _ = _rowpass(z1, z2, _ROW_CLAMP, pl.acc, radius=float(mu) ** 0.5)
    return x, info[2].clone(), info


def _spectral_rows_fwd_fake(z1, z2, mu):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    return _e(z1, (2, n, d)), _e(z1, (n,), acc), _e(z1, (3, n), acc)


def _spectral_rows_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, info: Tensor, g_x: Optional[Tensor],
                            g_p: Optional[Tensor], mu: float) -> Tuple[Tensor, Tensor]:
    """da_v = g_x[v] + g_p_i·(the other view's clamped row), then the clamp's Jacobian (``_R_CLAMP``)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    n, d = z1.shape
    acc = info.dtype
    gx = torch.zeros((2, n, d), dtype=acc, device=z1.device) if g_x is None else g_x.to(acc).contiguous()
    gp = torch.zeros((n,), dtype=acc, device=z1.device) if g_p is None else g_p.to(acc).contiguous()
    dz = (_new(z1), _new(z2))
    with _device(z1):
        _row_bwd(_R_CLAMP, (gx[0], gx[1]), (0, 1), dz, z1, z2, info, gs=(gp, gp, gp), mu=mu)
    return dz


def _spectral_rows_setup(ctx, inputs, output):
    z1, z2, mu = inputs
    ctx.save_for_backward(z1, z2, output[0], output[2])
    ctx.mu = mu


def _spectral_rows_backward(ctx, run_bwd, g_x, g_p, *_unused):
    z1, z2, x, info = ctx.saved_tensors
    dz1, dz2 = run_bwd(z1, z2, x, info, g_x, g_p, ctx.mu)
    return dz1, dz2, None


_SPEC_SPECTRAL_ROWS = registry.register("spectral_rows", "triton", fwd=_spectral_rows_fwd_impl,
                                        fwd_fake=_spectral_rows_fwd_fake, bwd=_spectral_rows_bwd_impl,
                                        bwd_fake=_bwd_fake2, setup=_spectral_rows_setup,
                                        backward=_spectral_rows_backward, device=device_rule).spec


def spectral_rows(z1: Tensor, z2: Tensor, mu: float) -> Tuple[Tensor, Tensor]:
    """(x, p): the clamped rows (2, N, D) of both views and their row dots p_i = a_i·b_i,
    differentiable (docs/spec.md §4's clamp; ops/gathered.py builds the distributed loss on them)."""
    out = apply(_SPEC_SPECTRAL_ROWS, z1.contiguous(), z2.contiguous(), float(mu))
    return out[0], out[1]
