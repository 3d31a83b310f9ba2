"""The losses of the covariance family on Triton: VICReg, Barlow Twins and the spectral contrastive
loss (docs/spec.md §3–4), each as forward and backward implementations, fakes, registered custom ops
and the public entry function."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..._direct import apply
from .._common import device_guard as _device
from .column import _colpass
from .epilogue import _bn_bwd, _elem_bwd, _row_bwd
from .ops_base import _bwd_fake2, _e, _fake_saved, _new, _none, _register, _scalars
from .plan import (_BN, _CENTER, _CORR_COL, _CORR_OUTER, _DIAG_DOT, _DIAG_NONE, _DIAG_SQ, _E_VICREG, _F_BARLOW,
                   _F_SPECTRAL, _F_VICREG, _R_SPECTRAL, _ROW_CLAMP, _SUM_PAIR, _SUM_SQ, _groups, _mm, _plan, _rm,
                   _rs_mode)
from .reduce import _Fin, _prep
from .row import _rowpass

Tensor = torch.Tensor


# ============================================================================================
# VICReg (docs/spec.md §3)


def _vicreg_fwd_impl(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                     gamma: float, eps: float, side: str
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, invariance, variance, covariance, x, gram, rs, w, mean, m2): x = the centered views
    (2, N, D) and gram = the Grams (2, M, M) in the compute dtype, float64 for fp32 "highest" on the
    sample side, the D×D ones with their diagonal zeroed; for bf16/fp16 x is empty and gram
    the backward's operands in the input dtype, with rs (fp16 scales) and w (corrections)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    m = n if sample else d
    rm = _rm(m)[0]
    with _device(z1):
        cols = _colpass(z1, z2, _CENTER, sqdiff=True, diag=_DIAG_SQ if sample else _DIAG_NONE)
        x = cols.x
        xt = x.transpose(1, 2)
        g = _mm(x, xt, wide=pl.wide) if sample else _mm(xt, x, wide=pl.wide)
        fin = _Fin(_F_VICREG, not sample, pl.acc, n, d, 4, cols.m2, cols.sq, cols.dpart, cols.chunks,
                   weights=(inv_weight, var_weight, cov_weight, gamma, eps))
        if pl.ident:
            pr = _prep(z1, m, (g[0], g[1]), (rm, rm), sums=_SUM_SQ, sumv=2, out_dtype=z1.dtype,
                       scale=pl.scale, ones=sample, vecs=None if sample else (cols.mean[0], cols.mean[1]),
                       views=2, fin=fin)
            x, gram = _none(z1, z1.dtype), pr.o
        else:
            pr = _prep(z1, m, (g[0], g[1]), (rm, rm), sums=_SUM_SQ, sumv=2, views=2, fin=fin)
            if pl.wide and sample:
                # kept float64: the backward's G·x cancels against x∘m2 when one column dominates,
                # and an fp32 G leaves ~1e-7·‖G‖ of it (docs/spec.md §8.2)
                gram = g
            else:
                gram = g.float() if pl.wide else g
                if not sample:
                    gram.diagonal(dim1=1, dim2=2).zero_()  # the backward's G_off (_elem_bwd, OFF)
    return (*pr.outs, x, gram, pr.rs, pr.w, cols.mean, cols.m2)


def _vicreg_fwd_fake(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side):
    pl = _plan(z1)
    n, d = z1.shape
    m = n if side == "sample" else d
    return (*_scalars(z1, pl, 4), *_fake_saved(z1, pl, m, 2, 2, 2, True, wide_gram=side == "sample"),
            _e(z1, (2, d), torch.float64), _e(z1, (2, d), torch.float64))


def _vicreg_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, gram: Tensor, rs: Tensor, w: Tensor,
                     mean: Tensor, m2: Tensor, g_loss: Tensor, g_inv: Tensor, g_var: Tensor,
                     g_cov: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                     gamma: float, eps: float, side: str) -> Tuple[Tensor, Tensor]:
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    dz = (_new(z1), _new(z2))
    kw = dict(mean=mean, cv=m2, rs=rs, w=w, gs=(g_loss, g_inv, g_var, g_cov),
              weights=(inv_weight, var_weight, cov_weight, gamma, eps))
    with _device(z1):
        if not pl.ident and gram.dtype != x.dtype:  # fp32, sample side: the float64 G of the forward
            x64 = x.double()
            kw["cv"] = (x64 * x64).sum(dim=1)  # the diagonal of x̃ᵀx̃ that G·x̃ holds, to cancel it
            _elem_bwd(_E_VICREG, [_mm(gram[v], x64[v]) for v in (0, 1)], (0, 1), dz, z1, z2, **kw)
        elif not pl.ident:  # products straight into the gradients; the epilogue rewrites them
            for v in (0, 1):
                _mm(gram[v], x[v], out=dz[v]) if sample else _mm(x[v], gram[v], out=dz[v])
            _elem_bwd(_E_VICREG, dz, (0, 1), dz, z1, z2, off=not sample, **kw)
        else:
            zs = (z1, z2)
            for group in _groups(pl, n, d):
                ps = [_mm(gram[v], zs[v]) if sample else _mm(zs[v], gram[v].t()) for v in group]
                _elem_bwd(_E_VICREG, ps, group, dz, z1, z2, rsm=_rs_mode(pl, sample),
                          corr=_CORR_OUTER if sample else _CORR_COL, **kw)
                del ps  # one fp32 product alive at a time (the memory bound)
    return dz


_SPEC_VICREG = _register("vicreg", _vicreg_fwd_impl, _vicreg_fwd_fake, _vicreg_bwd_impl,
                         _bwd_fake2, 2, 4, True, gathers=True)  # ops/gathered.py over moments / spectral_rows


def vicreg(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
           gamma: float, eps: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §3 VICReg: (loss, {"invariance", "variance", "covariance"})."""
    loss, inv, var, cov, *_ = apply(_SPEC_VICREG, z1.contiguous(), z2.contiguous(), float(inv_weight),
                                    float(var_weight), float(cov_weight), float(gamma), float(eps), side)
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


# ============================================================================================
# Barlow Twins (docs/spec.md §3)


def _barlow_twins_fwd_impl(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                      Tensor, Tensor, Tensor]:
    """-> (loss, on_diagonal, off_diagonal, x, gram, rs, w, mean, m2, cs, d): x = the standardized
    views a, b; gram = [a aᵀ, b bᵀ] (2, N, N) or aᵀb (1, D, D) for fp32/fp64, the backward's
    operands (2, M, M) for bf16/fp16; d = C_kk (D)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    with _device(z1):
        cols = _colpass(z1, z2, _BN, eps=eps, diag=_DIAG_DOT)
        x = cols.x
        dv = torch.empty((d,), dtype=pl.acc, device=z1.device)
        fin = _Fin(_F_BARLOW, not sample, pl.acc, n, d, c=cols.dpart, nch=cols.chunks, dv=dv,
                   weights=(lambda_param,))
        if sample:  # ‖aᵀb‖² = ⟨a aᵀ, b bᵀ⟩ (docs/spec.md §2); view 0's operand is b bᵀ (applied to a)
            g = _mm(x, x.transpose(1, 2), wide=pl.wide)
            rm = _rm(n)[0]
            if pl.ident:
                pr = _prep(z1, n, (g[1], g[0]), (rm, rm), sums=_SUM_PAIR, sumv=1, pair=g[0],
                           out_dtype=z1.dtype, scale=pl.scale, ones=True, views=2, fin=fin)
            else:
                pr = _prep(z1, n, (g[1],), (rm,), sums=_SUM_PAIR, sumv=1, pair=g[0], fin=fin)
                gram = g.float() if pl.wide else g
        else:  # P = aᵀb; view 0 applies Pᵀ to b (operand P∘s_b), view 1 P to a (Pᵀ∘s_a)
            g = _mm(x[0].t(), x[1], wide=pl.wide)
            rm, tr = _rm(d)
            if pl.ident:
                pr = _prep(z1, d, (g, g), (rm, tr), sums=_SUM_SQ, sumv=1, out_dtype=z1.dtype,
                           scale=pl.scale, colmuls=(cols.cs[1], cols.cs[0]),
                           vecs=(cols.mean[1], cols.mean[0]), views=2, fin=fin)
            else:
                pr = _prep(z1, d, (g,), (rm,), sums=_SUM_SQ, sumv=1, fin=fin)
                gram = (g.float() if pl.wide else g).unsqueeze(0)
        if pl.ident:
            x, gram = _none(z1, z1.dtype), pr.o
    return (*pr.outs, x, gram, pr.rs, pr.w, cols.mean, cols.m2, cols.cs, dv)


def _barlow_twins_fwd_fake(z1, z2, lambda_param, eps, side):
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    m = n if sample else d
    f64 = torch.float64
    return (*_scalars(z1, pl, 3), *_fake_saved(z1, pl, m, 2, 2 if sample else 1, 2, True),
            _e(z1, (2, d), f64), _e(z1, (2, d), f64), _e(z1, (2, d), f64), _e(z1, (d,), pl.acc))


def _barlow_twins_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, gram: Tensor, rs: Tensor, w: Tensor,
                           mean: Tensor, m2: Tensor, cs: Tensor, dv: Tensor, g_loss: Tensor,
                           g_on: Tensor, g_off: Tensor, lambda_param: float, eps: float,
                           side: str) -> Tuple[Tensor, Tensor]:
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    dz = (_new(z1), _new(z2))
    kw = dict(dv=dv, gs=(g_loss, g_on, g_off), lam=lambda_param)
    with _device(z1):
        if not pl.ident:
            if sample:  # (b bᵀ)·a, (a aᵀ)·b
                _mm(gram[1], x[0], out=dz[0])
                _mm(gram[0], x[1], out=dz[1])
            else:  # b·Pᵀ, a·P
                _mm(x[1], gram[0].t(), out=dz[0])
                _mm(x[0], gram[0], out=dz[1])
            _bn_bwd(dz, (0, 1), dz, z1, z2, mean, m2, eps, **kw)
        else:
            zs = (z1, z2)
            for group in _groups(pl, n, d):
                if sample:
                    ps = [_mm(gram[v], zs[v]) for v in group]
                else:
                    ps = [_mm(zs[1 - v], gram[v].t()) for v in group]
                _bn_bwd(ps, group, dz, z1, z2, mean, m2, eps, rs=rs, w=w, rsm=_rs_mode(pl, sample),
                        corr=_CORR_OUTER if sample else _CORR_COL, post=sample, **kw)
                del ps  # one fp32 product alive at a time (the memory bound)
    return dz


_SPEC_BARLOW_TWINS = _register("barlow_twins", _barlow_twins_fwd_impl, _barlow_twins_fwd_fake, _barlow_twins_bwd_impl,
                               _bwd_fake2, 2, 3, True, gathers=True)  # ops/gathered.py over moments / spectral_rows


def barlow_twins(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                 ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §3 Barlow Twins: (loss, {"on_diagonal", "off_diagonal"})."""
    loss, on, off, *_ = apply(_SPEC_BARLOW_TWINS, z1.contiguous(), z2.contiguous(),
                              float(lambda_param), float(eps), side)
    return loss, {"on_diagonal": on, "off_diagonal": off}


# ============================================================================================
# Spectral contrastive (docs/spec.md §4)


def _spectral_fwd_impl(z1: Tensor, z2: Tensor, mu: float, side: str
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, positive, negative, x, gram, rs, info): x = the clamped rows; gram = S = a bᵀ
    (1, N, N) or [aᵀa, bᵀb] (2, D, D) for fp32/fp64, the backward's operands (2, M, M) for bf16/fp16;
    info (3, N) = [±t1, ±t2, p] (``_rowpass_kernel``)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    with _device(z1):
        x, info, pv = _rowpass(z1, z2, _ROW_CLAMP, pl.acc, radius=float(mu) ** 0.5)
        fin = _Fin(_F_SPECTRAL, sample, pl.acc, n, d, a=pv, weights=(mu,))
        if sample:  # S = a bᵀ; view 0 applies S∘t2 to z2, view 1 Sᵀ∘t1 to z1
            g = _mm(x[0], x[1].t(), wide=pl.wide)
            rm, tr = _rm(n)
            if pl.ident:
                pr = _prep(z1, n, (g, g), (rm, tr), sums=_SUM_SQ, sumv=1, out_dtype=z1.dtype,
                           scale=pl.scale, colmuls=(info[1], info[0]), views=2, fin=fin)
            else:
                pr = _prep(z1, n, (g,), (rm,), sums=_SUM_SQ, sumv=1, fin=fin)
                gram = (g.float() if pl.wide else g).unsqueeze(0)
        else:  # ‖a bᵀ‖² = ⟨aᵀa, bᵀb⟩; view 0 applies bᵀb to a, view 1 aᵀa to b
            g = _mm(x.transpose(1, 2), x, wide=pl.wide)
            rm = _rm(d)[0]
            if pl.ident:
                pr = _prep(z1, d, (g[1], g[0]), (rm, rm), sums=_SUM_PAIR, sumv=1, pair=g[0],
                           out_dtype=z1.dtype, scale=pl.scale, views=2, fin=fin)
            else:
                pr = _prep(z1, d, (g[1],), (rm,), sums=_SUM_PAIR, sumv=1, pair=g[0], fin=fin)
                gram = g.float() if pl.wide else g
        if pl.ident:
            x, gram = _none(z1, z1.dtype), pr.o
    return (*pr.outs, x, gram, pr.rs, info)


def _spectral_fwd_fake(z1, z2, mu, side):
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    x, gram, rs, _ = _fake_saved(z1, pl, n if sample else d, 2, 1 if sample else 2, 2, False)
    return (*_scalars(z1, pl, 3), x, gram, rs, _e(z1, (3, n), pl.acc))


def _spectral_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, gram: Tensor, rs: Tensor, info: Tensor,
                       g_loss: Tensor, g_pos: Tensor, g_neg: Tensor, mu: float, side: str
                       ) -> Tuple[Tensor, Tensor]:
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    sample = side == "sample"
    dz = (_new(z1), _new(z2))
    kw = dict(gs=(g_loss, g_pos, g_neg), mu=mu)
    with _device(z1):
        if not pl.ident:
            if sample:  # S·b, Sᵀ·a
                _mm(gram[0], x[1], out=dz[0])
                _mm(gram[0].t(), x[0], out=dz[1])
            else:  # a·(bᵀb), b·(aᵀa)
                _mm(x[0], gram[1], out=dz[0])
                _mm(x[1], gram[0], out=dz[1])
            _row_bwd(_R_SPECTRAL, dz, (0, 1), dz, z1, z2, info, **kw)
        else:
            zs = (z1, z2)
            for group in _groups(pl, n, d):
                if sample:
                    ps = [_mm(gram[v], zs[1 - v]) for v in group]
                else:
                    ps = [_mm(zs[v], gram[v].t()) for v in group]
                _row_bwd(_R_SPECTRAL, ps, group, dz, z1, z2, info, rs=rs, rsm=_rs_mode(pl, sample),
                         post=not sample, **kw)
                del ps  # one fp32 product alive at a time (the memory bound)
    return dz


_SPEC_SPECTRAL = _register("spectral", _spectral_fwd_impl, _spectral_fwd_fake, _spectral_bwd_impl,
                           _bwd_fake2, 2, 3, True, gathers=True)  # ops/gathered.py over moments / spectral_rows


def spectral(z1: Tensor, z2: Tensor, mu: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §4 spectral contrastive: (loss, {"positive", "negative"})."""
    loss, pos, neg, *_ = apply(_SPEC_SPECTRAL, z1.contiguous(), z2.contiguous(), float(mu), side)
    return loss, {"positive": pos, "negative": neg}
