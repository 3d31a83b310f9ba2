"""The primitives and the duality terms of the covariance family on Triton (docs/spec.md §1–2):
covariance, cross_correlation, normalized_gram and duality_terms, each as forward and backward
implementations, fakes, registered custom ops and the public entry function."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..._direct import apply
from .._common import device_guard as _device
from .column import _colpass
from .epilogue import _bn_bwd, _elem_bwd, _row_bwd
from .ops_base import _bwd_fake2, _e, _fake_saved, _new, _none, _register, _scalars
from .plan import (_BN, _CENTER, _CORR_COL, _E_COV, _E_DUALITY, _E_DUALITY_D, _F_DUALITY, _R_NGRAM, _ROW_L2,
                   _ROW_SQ, _RS_NONE, _SQ, _SUM_SQ, _groups, _mm, _plan, _rm, _rs_mode)
from .reduce import _Fin, _prep
from .row import _rowpass

Tensor = torch.Tensor


# ============================================================================================
# covariance (docs/spec.md §1)


def _covariance_fwd_impl(z: Tensor, correction: int) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (center(z)ᵀcenter(z)/(N − correction) (D, D), x (1, N, D) or empty, mean (1, D))."""
    z = z.contiguous()
    pl = _plan(z)
    with _device(z):
        cols = _colpass(z, None, _CENTER)
        x = cols.x
        c = _mm(x[0].t(), x[0])
        c.div_(z.shape[0] - int(correction))
    return c, (_none(z, z.dtype) if pl.ident else x), cols.mean


def _covariance_fwd_fake(z, correction):
    pl = _plan(z)
    n, d = z.shape
    return (_e(z, (d, d), pl.acc), _e(z, (0,)) if pl.ident else _e(z, (1, n, d)),
            _e(z, (1, d), torch.float64))


def _covariance_bwd_impl(z: Tensor, x: Tensor, mean: Tensor, grad: Tensor, correction: int) -> Tensor:
    """dz = x·(Gout + Goutᵀ)/(N − correction); no centering Jacobian (x's columns sum to 0)."""
    z = z.contiguous()
    pl = _plan(z)
    n, d = z.shape
    alpha = 1.0 / (n - int(correction))
    strides = ((grad.stride(0), grad.stride(1)),)
    dz = _new(z)
    with _device(z):
        if not pl.ident:
            pr = _prep(z, d, (grad,), strides, out_dtype=pl.acc, sym=True, alpha=alpha)
            _mm(x[0], pr.o[0], out=dz)
        else:
            pr = _prep(z, d, (grad,), strides, out_dtype=z.dtype, scale=pl.scale, sym=True,
                       alpha=alpha, vecs=(mean[0],))
            p = _mm(z, pr.o[0].t())
            _elem_bwd(_E_COV, (p,), (0,), (dz, dz), z, z, mean=mean, rs=pr.rs, w=pr.w,
                      rsm=_rs_mode(pl, False), corr=_CORR_COL)
    return dz


def _covariance_bwd_fake(z, x, mean, grad, correction):
    return _new(z)


_SPEC_COVARIANCE = _register("covariance", _covariance_fwd_impl, _covariance_fwd_fake, _covariance_bwd_impl,
                             _covariance_bwd_fake, 1, 1, False)


def covariance(z: Tensor, correction: int = 1) -> Tensor:
    """docs/spec.md §1 covariance: center(z)ᵀ center(z) / (N − correction), (D, D)."""
    return apply(_SPEC_COVARIANCE, z.contiguous(), int(correction))[0]


# ============================================================================================
# cross_correlation (docs/spec.md §1)


def _cross_correlation_fwd_impl(z1: Tensor, z2: Tensor, eps: float
                                ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (C = s(z1)ᵀ s(z2)/N (D, D), x (2, N, D) or empty, mean, m2, cs (2, D) float64)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    with _device(z1):
        cols = _colpass(z1, z2, _BN, eps=eps)
        x = cols.x
        c = _mm(x[0].t(), x[1])
        c.div_(z1.shape[0])
    return c, (_none(z1, z1.dtype) if pl.ident else x), cols.mean, cols.m2, cols.cs


def _cross_correlation_fwd_fake(z1, z2, eps):
    pl = _plan(z1)
    n, d = z1.shape
    f64 = torch.float64
    return (_e(z1, (d, d), pl.acc), _e(z1, (0,)) if pl.ident else _e(z1, (2, n, d)),
            _e(z1, (2, d), f64), _e(z1, (2, d), f64), _e(z1, (2, d), f64))


def _cross_correlation_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, mean: Tensor, m2: Tensor,
                                cs: Tensor, grad: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """C = aᵀb/N: da = b·Goutᵀ/N, db = a·Gout/N, then BatchNorm's Jacobian (``_bn_bwd_kernel``)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    dz = (_new(z1), _new(z2))
    s0, s1 = grad.stride(0), grad.stride(1)
    with _device(z1):
        if not pl.ident:
            _mm(x[1], grad.t(), out=dz[0])
            _mm(x[0], grad, out=dz[1])
            _bn_bwd(dz, (0, 1), dz, z1, z2, mean, m2, eps)
        else:
            pr = _prep(z1, d, (grad, grad), ((s0, s1), (s1, s0)), out_dtype=z1.dtype, scale=pl.scale,
                       colmuls=(cs[1], cs[0]), vecs=(mean[1], mean[0]), views=2)
            zs = (z1, z2)
            for group in _groups(pl, n, d):
                ps = [_mm(zs[1 - v], pr.o[v].t()) for v in group]
                _bn_bwd(ps, group, dz, z1, z2, mean, m2, eps, rs=pr.rs, w=pr.w,
                        rsm=_rs_mode(pl, False), corr=_CORR_COL)
                del ps  # one fp32 product alive at a time (the memory bound)
    return dz


_SPEC_CROSS_CORRELATION = _register("cross_correlation", _cross_correlation_fwd_impl, _cross_correlation_fwd_fake,
                                    _cross_correlation_bwd_impl, _bwd_fake2, 2, 1, False)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """docs/spec.md §1 cross_correlation: BatchNorm-standardized s(z1)ᵀ s(z2) / N, (D, D)."""
    return apply(_SPEC_CROSS_CORRELATION, z1.contiguous(), z2.contiguous(), float(eps))[0]


# ============================================================================================
# normalized_gram (docs/spec.md §1)


def _normalized_gram_fwd_impl(z1: Tensor, z2: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (K = l2n(z1)·l2n(z2 or z1)ᵀ (N, N), x (V, N, D) or empty, info (V, N) = ±1/max(‖z‖, eps))."""
    z1 = z1.contiguous()
    z2 = None if z2 is None else z2.contiguous()
    pl = _plan(z1)
    with _device(z1):
        x, info, _ = _rowpass(z1, z2, _ROW_L2, pl.acc)
        k = _mm(x[0], x[-1].t())
    return k, (_none(z1, z1.dtype) if pl.ident else x), info


def _normalized_gram_fwd_fake(z1, z2):
    pl = _plan(z1)
    n, d = z1.shape
    v = 1 if z2 is None else 2
    return (_e(z1, (n, n), pl.acc), _e(z1, (0,)) if pl.ident else _e(z1, (v, n, d)),
            _e(z1, (v, n), pl.acc))


def _normalized_gram_bwd_impl(z1: Tensor, z2: Optional[Tensor], x: Tensor, info: Tensor, grad: Tensor
                              ) -> List[Tensor]:
    """-> [dz1] without z2, [dz1, dz2] with it: dn1 = Gout·n2, dn2 = Goutᵀ·n1 ((Gout + Goutᵀ)·n
    without z2), then l2n's Jacobian (``_row_bwd_kernel``)."""
    z1 = z1.contiguous()
    pl = _plan(z1)
    n, d = z1.shape
    single = z2 is None
    z2 = z1 if single else z2.contiguous()
    dz = (_new(z1),) if single else (_new(z1), _new(z2))
    s0, s1 = grad.stride(0), grad.stride(1)
    with _device(z1):
        if single:
            out = pl.acc if not pl.ident else z1.dtype
            pr = _prep(z1, n, (grad,), ((s0, s1),), out_dtype=out, scale=pl.scale, sym=True,
                       colmuls=(info[0],) if pl.ident else None)
            p = _mm(pr.o[0], x[0] if not pl.ident else z1, out=None if pl.ident else dz[0])
            _row_bwd(_R_NGRAM, (p,), (0,), dz, z1, z1, info, rs=pr.rs, rsm=_rs_mode(pl, True))
        elif not pl.ident:
            _mm(grad, x[1], out=dz[0])
            _mm(grad.t(), x[0], out=dz[1])
            _row_bwd(_R_NGRAM, dz, (0, 1), dz, z1, z2, info)
        else:
            pr = _prep(z1, n, (grad, grad), ((s0, s1), (s1, s0)), out_dtype=z1.dtype, scale=pl.scale,
                       colmuls=(info[1], info[0]), views=2)
            zs = (z1, z2)
            for group in _groups(pl, n, d):
                ps = [_mm(pr.o[v], zs[1 - v]) for v in group]
                _row_bwd(_R_NGRAM, ps, group, dz, z1, z2, info, rs=pr.rs, rsm=_rs_mode(pl, True))
                del ps  # one fp32 product alive at a time (the memory bound)
    return list(dz)


def _normalized_gram_bwd_fake(z1, z2, x, info, grad):
    return [_new(z1)] if z2 is None else [_new(z1), _new(z2)]


_SPEC_NORMALIZED_GRAM = _register("normalized_gram", _normalized_gram_fwd_impl, _normalized_gram_fwd_fake,
                                  _normalized_gram_bwd_impl, _normalized_gram_bwd_fake, 2, 1, False)


def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None) -> Tensor:
    """docs/spec.md §1 normalized_gram: l2n(z1) · l2n(z2 or z1)ᵀ, (N, N)."""
    return apply(_SPEC_NORMALIZED_GRAM, z1.contiguous(), None if z2 is None else z2.contiguous())[0]


# ============================================================================================
# duality_terms (docs/spec.md §2)


def _duality_terms_fwd_impl(z: Tensor, side: str
                            ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (L_c, L_nc, Σ_i‖z_i‖⁴, Σ_k‖z_:k‖⁴, gram (1, M, M), rs, row sums of squares r (N),
    column sums of squares c (D)); r and c float64, the Gram float64 for fp32 under "highest" (else
    the compute dtype; bf16/fp16: the backward's operand in the input dtype)."""
    z = z.contiguous()
    pl = _plan(z)
    n, d = z.shape
    sample = side == "sample"
    m = n if sample else d
    with _device(z):
        _, _, r = _rowpass(z, None, _ROW_SQ, pl.acc)
        c = _colpass(z, None, _SQ).m2[0]
        g = _mm(z, z.t(), wide=pl.wide) if sample else _mm(z.t(), z, wide=pl.wide)
        rm = _rm(m)[0]
        fin = _Fin(_F_DUALITY, not sample, pl.acc, n, d, 4, r, c)
        if pl.ident:
            pr = _prep(z, m, (g,), (rm,), sums=_SUM_SQ, sumv=1, out_dtype=z.dtype, scale=pl.scale,
                       fin=fin)
            gram = pr.o
        else:
            pr = _prep(z, m, (g,), (rm,), sums=_SUM_SQ, sumv=1, fin=fin)
            # kept float64 under pl.wide: with one column (row) dominating, the backward's G_off·z
            # (z·G_off) cancels against z∘c_k (r_i∘z) on the other side (docs/spec.md §8.2)
            gram = g.unsqueeze(0)
        gram.diagonal(dim1=1, dim2=2).zero_()  # the backward's G_off (_elem_bwd_kernel, _E_DUALITY)
    return (*pr.outs, gram, pr.rs, r, c)


def _duality_terms_fwd_fake(z, side):
    pl = _plan(z)
    n, d = z.shape
    _, gram, rs, _ = _fake_saved(z, pl, n if side == "sample" else d, 1, 1, 1, False, wide_gram=True)
    return (*_scalars(z, pl, 4), gram, rs, _e(z, (n,), torch.float64), _e(z, (d,), torch.float64))


def _duality_terms_bwd_impl(z: Tensor, gram: Tensor, rs: Tensor, r: Tensor, c: Tensor, g_lc: Tensor,
                            g_lnc: Tensor, g_r4: Tensor, g_c4: Tensor, side: str) -> Tensor:
    z = z.contiguous()
    pl = _plan(z)
    sample = side == "sample"
    dz = _new(z)
    with _device(z):
        if not pl.ident and gram.dtype != z.dtype:  # fp32 under pl.wide: float64 G and product
            p = _mm(gram[0], z.double()) if sample else _mm(z.double(), gram[0])
        elif not pl.ident:
            p = _mm(gram[0], z, out=dz) if sample else _mm(z, gram[0], out=dz)
        else:
            p = _mm(gram[0], z) if sample else _mm(z, gram[0].t())
        _elem_bwd(_E_DUALITY if sample else _E_DUALITY_D, (p,), (0,), (dz, dz), z, z, cv=c, rv=r, rs=rs,
                  gs=(g_lc, g_lnc, g_r4, g_c4),
                  rsm=_rs_mode(pl, sample) if pl.ident else _RS_NONE)
    return dz


def _duality_terms_bwd_fake(z, *_args):
    return _new(z)


_SPEC_DUALITY_TERMS = _register("duality_terms", _duality_terms_fwd_impl, _duality_terms_fwd_fake,
                                _duality_terms_bwd_impl, _duality_terms_bwd_fake, 1, 4, True)


def duality_terms(z: Tensor, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """docs/spec.md §2: (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram on ``side``."""
    lc, lnc, r4, c4, *_ = apply(_SPEC_DUALITY_TERMS, z.contiguous(), side)
    return lc, lnc, r4, c4
