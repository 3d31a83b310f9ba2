"""The memory-bound passes around the log-sum-exp kernels, each kernel with its launcher: column
statistics (``_lse_colstats_kernel``: means, Σ(z − mean)² and VICReg's Σ(z1 − z2)² in float64), the
operand prologue (``_lse_prep_kernel``: z, z − mean, dim_std's column scaling, row centering or the
transpose, the row norms) and the backward epilogue (``_lse_finish_kernel``: the centering / dim_std
Jacobians and VICReg's variance and invariance gradients).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .._common import acc_dtype, interpreting, round_tf32, scalar, tf32_rounding, tl, triton
from .plan import Tensor, _acc_tl, _mem_tiles, _op_buffer, _tile_scaled
from .tiles import _eps


@triton.jit
def _view(V: tl.constexpr, z1_ptr, z2_ptr, s_1n, s_1d, s_2n, s_2d):
    """View V's (pointer, row stride, column stride)."""
    if V == 0:
        z_ptr, s_n, s_d = z1_ptr, s_1n, s_1d
    else:
        z_ptr, s_n, s_d = z2_ptr, s_2n, s_2d
    return z_ptr, s_n, s_d


@triton.jit
def _lse_colstats_kernel(z1_ptr, z2_ptr, mean_ptr, m2_ptr, inv_ptr, N, D, s_1n, s_1d, s_2n, s_2d,
                     VIEWS: tl.constexpr, INV: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Per column of each view: the mean (stored in the accumulation dtype) and Σ_i (z − mean)²
    (float64), two passes over the column block (exact centering); INV: Σ_i (z1 − z2)² (float64,
    VICReg's invariance term). A program owns its columns (fixed order, no atomics)."""
    pid = tl.program_id(0)
    ds = pid * BD + tl.arange(0, BD)
    d_ok = ds < D
    ds64 = ds.to(tl.int64)
    for v in tl.static_range(VIEWS):
        z_ptr, s_n, s_d = _view(v, z1_ptr, z2_ptr, s_1n, s_1d, s_2n, s_2d)
        s1 = tl.zeros((BD,), tl.float64)
        for i0 in range(0, N, BR):
            rs = i0 + tl.arange(0, BR)
            mk = (rs[:, None] < N) & d_ok[None, :]
            z = tl.load(z_ptr + rs.to(tl.int64)[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0)
            s1 += tl.sum(z.to(tl.float64), axis=0)
        mean = s1 / N
        m2 = tl.zeros((BD,), tl.float64)
        for i0 in range(0, N, BR):
            rs = i0 + tl.arange(0, BR)
            mk = (rs[:, None] < N) & d_ok[None, :]
            z = tl.load(z_ptr + rs.to(tl.int64)[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0)
            x = tl.where(mk, z.to(tl.float64) - mean[None, :], 0.0)
            m2 += tl.sum(x * x, axis=0)
        tl.store(mean_ptr + v * D + ds, mean.to(mean_ptr.dtype.element_ty), mask=d_ok)
        tl.store(m2_ptr + v * D + ds, m2, mask=d_ok)
    if INV:
        si = tl.zeros((BD,), tl.float64)
        for i0 in range(0, N, BR):
            rs = i0 + tl.arange(0, BR)
            rs64 = rs.to(tl.int64)
            mk = (rs[:, None] < N) & d_ok[None, :]
            z1 = tl.load(z1_ptr + rs64[:, None] * s_1n + ds64[None, :] * s_1d, mask=mk, other=0.0)
            z2 = tl.load(z2_ptr + rs64[:, None] * s_2n + ds64[None, :] * s_2d, mask=mk, other=0.0)
            t = z1.to(tl.float64) - z2.to(tl.float64)
            si += tl.sum(t * t, axis=0)
        tl.store(inv_ptr + ds, si, mask=d_ok)


@triton.jit
def _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, ds, D, s_1n, s_1d, s_2n, s_2d, cs_num,
            CENTER: tl.constexpr, COLSCALE: tl.constexpr, ACC: tl.constexpr):
    """x = (z − mean_v)·c_v of rows (view 0 where ``first``, else view 1; row i) over columns ds,
    in ACC; c_v,k = sqrt(N/D)/max(‖x_:k‖, eps) for dim_std (COLSCALE), from the float64
    Σ (z − mean)². Pointers: one base per row (a [rows, cols] tensor of 64-bit pointers per
    view would take two registers per element)."""
    d_ok = ds < D
    mk = r_ok[:, None] & d_ok[None, :]
    base = tl.where(first, z1_ptr + i64 * s_1n, z2_ptr + i64 * s_2n)
    s_d = tl.where(first, s_1d, s_2d)
    x = tl.load(base[:, None] + ds.to(tl.int64)[None, :] * s_d[:, None], mask=mk, other=0.0).to(ACC)
    if CENTER:
        mu0 = tl.load(mean_ptr + ds, mask=d_ok, other=0.0).to(ACC)
        mu1 = tl.load(mean_ptr + D + ds, mask=d_ok, other=0.0).to(ACC)
        x = tl.where(mk, x - tl.where(first[:, None], mu0[None, :], mu1[None, :]), 0.0)
    if COLSCALE:
        eps = _eps(ACC).to(tl.float64)
        c0 = (cs_num / tl.maximum(tl.sqrt(tl.load(m2_ptr + ds, mask=d_ok, other=1.0)), eps)).to(ACC)
        c1 = (cs_num / tl.maximum(tl.sqrt(tl.load(m2_ptr + D + ds, mask=d_ok, other=1.0)), eps)).to(ACC)
        x = x * tl.where(first[:, None], c0[None, :], c1[None, :])
    return x


@triton.jit
def _unsquared_norm(norm, z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, dd, D, s_1n, s_1d, s_2n, s_2d,
                    cs_num, CENTER: tl.constexpr, COLSCALE: tl.constexpr, ACC: tl.constexpr, BD: tl.constexpr):
    """``norm`` = sqrt(Σ x²) per row, again where the sum overflowed to inf (float32 norms past
    ~1.8e19): each such row divided by its largest |entry| before squaring, as
    torch.linalg.vector_norm scales (docs/spec.md §8.2); other rows keep their bits."""
    big = norm == float("inf")
    if tl.max(big.to(tl.int32), axis=0) > 0:
        m = tl.zeros_like(norm)
        for d0 in range(0, D, BD):
            x = _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, d0 + dd, D, s_1n, s_1d, s_2n, s_2d,
                        cs_num, CENTER, COLSCALE, ACC)
            m = tl.maximum(m, tl.max(tl.abs(x), axis=1))
        den = tl.where(m > 0, m, 1.0)  # padding and zero rows: not selected below
        scaled = tl.zeros_like(norm)
        for d0 in range(0, D, BD):
            x = _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, d0 + dd, D, s_1n, s_1d, s_2n, s_2d,
                        cs_num, CENTER, COLSCALE, ACC) / den[:, None]
            scaled += tl.sum(x * x, axis=1)
        # an infinite entry keeps the norm inf (m = inf would make it NaN here)
        norm = tl.where(big & (m < float("inf")), m * tl.sqrt(scaled), norm)
    return norm


@triton.jit
def _lse_prep_kernel(z1_ptr, z2_ptr, mean_ptr, m2_ptr, op_ptr, r_ptr, keep_ptr, rmean_ptr, rstd_ptr,
                 N, D, s_1n, s_1d, s_2n, s_2d, s_op, s_opv, cs_num: tl.float64, var_eps: tl.float64,
                 VIEWS: tl.constexpr, CENTER: tl.constexpr, COLSCALE: tl.constexpr,
                 ROWCENTER: tl.constexpr, NORM: tl.constexpr, NORM_OP: tl.constexpr,
                 TRANS: tl.constexpr, RNA: tl.constexpr, ACC: tl.constexpr,
                 BR: tl.constexpr, BD: tl.constexpr):
    """The kernels' operand rows from the views, one pass (two where a row statistic must come
    first): op = x, or x/‖x‖ (NORM_OP: fp32/fp64, the l2 scale applied to the operand as eager
    applies it), y = x − rowmean(x) (ROWCENTER, VICReg-ctr, with the row std), or xᵀ (TRANS,
    VICReg-exp: one row per column of x); rounded to TF32 for TF32 dots (RNA), to the operand
    dtype otherwise. NORM: r = 1/max(‖x‖, 1e-12) and keep = [‖x‖ > 1e-12] per row. Rows of the
    two views are stacked (row v·N + i)."""
    pid = tl.program_id(0)
    rr = pid * BR + tl.arange(0, BR)
    r_ok = rr < VIEWS * N
    v = rr // N
    i = rr - v * N
    i64 = i.to(tl.int64)
    first = v == 0
    dd = tl.arange(0, BD)
    if TRANS:
        out_rows = v.to(tl.int64) * s_opv + i64  # op[v, k, i] = x[i, k]
    else:
        out_rows = rr.to(tl.int64) * s_op
    if NORM_OP or ROWCENTER:
        acc1 = tl.zeros((BR,), ACC)
        for d0 in range(0, D, BD):
            x = _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, d0 + dd, D, s_1n, s_1d, s_2n, s_2d,
                        cs_num, CENTER, COLSCALE, ACC)
            if ROWCENTER:
                acc1 += tl.sum(x, axis=1)
            else:
                acc1 += tl.sum(x * x, axis=1)
        if ROWCENTER:
            mu = acc1 / D
            den = tl.full((BR,), 1.0, ACC)
        else:
            norm = _unsquared_norm(tl.sqrt(acc1), z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, dd, D,
                                   s_1n, s_1d, s_2n, s_2d, cs_num, CENTER, COLSCALE, ACC, BD)
            mu = tl.zeros((BR,), ACC)
            den = tl.maximum(norm, _eps(ACC))
    else:
        mu = tl.zeros((BR,), ACC)
        den = tl.full((BR,), 1.0, ACC)
    acc2 = tl.zeros((BR,), ACC)
    for d0 in range(0, D, BD):
        ds = d0 + dd
        x = _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, ds, D, s_1n, s_1d, s_2n, s_2d,
                    cs_num, CENTER, COLSCALE, ACC)
        mk = r_ok[:, None] & (ds[None, :] < D)
        if ROWCENTER:
            x = tl.where(mk, x - mu[:, None], 0.0)
        if NORM or ROWCENTER:
            acc2 += tl.sum(x * x, axis=1)
        # a division, as F.normalize: x·(1/‖x‖) is off by an ulp where x/‖x‖ is exact (±1 for one
        # column), and the l2 Jacobian's g − n(n·g) then leaves 2^-23·|g|·r instead of cancelling
        # (NT-Xent center_l2 with one column: 47x eager's gradient error, interpreter)
        y = round_tf32(x / den[:, None], RNA).to(op_ptr.dtype.element_ty)
        if TRANS:
            tl.store(op_ptr + out_rows[:, None] + ds.to(tl.int64)[None, :] * s_op, y, mask=mk)
        else:
            tl.store(op_ptr + out_rows[:, None] + ds[None, :], y, mask=mk)
    if NORM:
        if NORM_OP:
            nrm = norm
        else:
            nrm = _unsquared_norm(tl.sqrt(acc2), z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, dd, D,
                                  s_1n, s_1d, s_2n, s_2d, cs_num, CENTER, COLSCALE, ACC, BD)
        tl.store(r_ptr + rr, 1.0 / tl.maximum(nrm, _eps(ACC)), mask=r_ok)
        tl.store(keep_ptr + rr, (nrm > _eps(ACC)).to(ACC), mask=r_ok)
    if ROWCENTER:
        tl.store(rmean_ptr + rr, mu, mask=r_ok)
        tl.store(rstd_ptr + rr, tl.sqrt(acc2 / (D - 1) + scalar(var_eps, ACC)), mask=r_ok)


@triton.jit
def _grad_rows(src_ptr, v, s_srcv, s_srci, s_srcd, i0, N, d_ok, ds64, ACC: tl.constexpr, BR: tl.constexpr):
    """Rows [i0, i0 + BR) of view v of the incoming gradient at src: (the rows, which are valid, the
    rows as int64, the tile's mask over the valid columns d_ok, and the gradient tile in ACC)."""
    rs = i0 + tl.arange(0, BR)
    r_ok = rs < N
    rs64 = rs.to(tl.int64)
    mk = r_ok[:, None] & d_ok[None, :]
    g = tl.load(src_ptr + v * s_srcv + rs64[:, None] * s_srci + ds64[None, :] * s_srcd, mask=mk, other=0.0).to(ACC)
    return rs, r_ok, rs64, mk, g


@triton.jit
def _lse_finish_kernel(src_ptr, z1_ptr, z2_ptr, mean_ptr, m2_ptr, rmean_ptr, rstd_ptr, dz1_ptr, dz2_ptr,
                   gl_ptr, gi_ptr, gv_ptr, N, D, s_srci, s_srcd, s_srcv, s_1n, s_1d, s_2n, s_2d, s_d1, s_d2,
                   inv_w: tl.float64, var_w: tl.float64, gamma: tl.float64, var_eps: tl.float64,
                   cs_num: tl.float64,
                   MODE: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """The backward after the log-sum-exp kernels, per column block of both views (a program owns
    its columns: the column reductions need no second launch and no atomics):

    - center_l2 (MODE 1): dz = dx − mean_i dx (the centering's Jacobian);
    - dim_std (2): dx = c_k (dn − keep_k x̂ (x̂·dn)_k / (N/D)) (column l2 normalization to norm
      sqrt(N/D)), then centering;
    - VICReg-exp (3): dz = dx_cov + the variance hinge's −a_var/2·[std_k < γ] x_ik/(D(N−1)std_k)
      ± a_inv·2(z1 − z2)/(ND). Centering's Jacobian vanishes: Σ_i x_ik = 0 makes the column sums
      of x·W and of the hinge term zero;
    - VICReg-ctr (4): dx = dy_cov + −a_var/2·[std_i < γ] y_ik/(N(D−1)std_i) (the row centering's
      Jacobian vanishes for the same reason on rows), then the column centering, plus the
      invariance term.

    a_var = g_loss·var_weight + g_var, a_inv = g_loss·inv_weight + g_inv, read from device memory
    (no host synchronization)."""
    pid = tl.program_id(0)
    ds = pid * BD + tl.arange(0, BD)
    d_ok = ds < D
    ds64 = ds.to(tl.int64)
    gamma = scalar(gamma, ACC)
    s2 = scalar(cs_num * cs_num, ACC)  # N/D, the squared norm of dim_std's columns
    if MODE >= 3:
        gl = tl.load(gl_ptr).to(ACC)
        a_var = gl * scalar(var_w, ACC) + tl.load(gv_ptr).to(ACC)
        a_inv = gl * scalar(inv_w, ACC) + tl.load(gi_ptr).to(ACC)
    for v in tl.static_range(2):
        z_ptr, s_n, s_d = _view(v, z1_ptr, z2_ptr, s_1n, s_1d, s_2n, s_2d)
        mu = tl.load(mean_ptr + v * D + ds, mask=d_ok, other=0.0).to(ACC)
        if MODE == 2 or MODE == 3:
            m2 = tl.load(m2_ptr + v * D + ds, mask=d_ok, other=1.0)
        if MODE == 2:
            cn = tl.sqrt(m2)
            c = (cs_num / tl.maximum(cn, _eps(ACC).to(tl.float64))).to(ACC)
            kc = (cn > _eps(ACC).to(tl.float64)).to(ACC)
        if MODE == 3:
            std = tl.sqrt(m2 / (N - 1) + var_eps).to(ACC)
            colc = tl.where(std < gamma, -0.5 * a_var / (D * (N - 1) * std), 0.0)
        cs_a = tl.zeros((BD,), ACC)
        cs_b = tl.zeros((BD,), ACC)
        cs_c = tl.zeros((BD,), ACC)
        if MODE != 3:  # pass 1: the column sums
            for i0 in range(0, N, BR):
                rs, r_ok, rs64, mk, g = _grad_rows(src_ptr, v, s_srcv, s_srci, s_srcd, i0, N, d_ok, ds64, ACC, BR)
                if MODE == 2:
                    z = tl.load(z_ptr + rs64[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0).to(ACC)
                    xh = tl.where(mk, (z - mu[None, :]) * c[None, :], 0.0)
                    cs_b += tl.sum(xh * g, axis=0)
                    cs_c += tl.sum(xh, axis=0)
                if MODE == 4:
                    z = tl.load(z_ptr + rs64[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0).to(ACC)
                    rm = tl.load(rmean_ptr + v * N + rs, mask=r_ok, other=0.0)
                    sd = tl.load(rstd_ptr + v * N + rs, mask=r_ok, other=1.0)
                    rowc = tl.where(sd < gamma, -0.5 * a_var / (N * (D - 1) * sd), 0.0)
                    y = tl.where(mk, z - mu[None, :] - rm[:, None], 0.0)
                    g = g + rowc[:, None] * y
                cs_a += tl.sum(g, axis=0)
        if MODE == 2:
            mean_dx = c * (cs_a - kc * cs_c * cs_b / s2) / N
        else:
            mean_dx = cs_a / N
        for i0 in range(0, N, BR):  # pass 2: the gradient
            rs, r_ok, rs64, mk, g = _grad_rows(src_ptr, v, s_srcv, s_srci, s_srcd, i0, N, d_ok, ds64, ACC, BR)
            if MODE >= 2:
                z = tl.load(z_ptr + rs64[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0).to(ACC)
            if MODE == 2:
                xh = (z - mu[None, :]) * c[None, :]
                g = c[None, :] * (g - (kc * cs_b / s2)[None, :] * xh)
            if MODE == 3:
                g = g + colc[None, :] * (z - mu[None, :])
            if MODE == 4:
                rm = tl.load(rmean_ptr + v * N + rs, mask=r_ok, other=0.0)
                sd = tl.load(rstd_ptr + v * N + rs, mask=r_ok, other=1.0)
                rowc = tl.where(sd < gamma, -0.5 * a_var / (N * (D - 1) * sd), 0.0)
                g = g + rowc[:, None] * (z - mu[None, :] - rm[:, None])
            if MODE != 3:
                g = g - mean_dx[None, :]
            if MODE >= 3:  # invariance: mean((z1 − z2)²)
                z1 = tl.load(z1_ptr + rs64[:, None] * s_1n + ds64[None, :] * s_1d, mask=mk, other=0.0).to(ACC)
                z2 = tl.load(z2_ptr + rs64[:, None] * s_2n + ds64[None, :] * s_2d, mask=mk, other=0.0).to(ACC)
                t = (2.0 * a_inv / (N * D)) * (z1 - z2)
                if v == 0:
                    g = g + t
                else:
                    g = g - t
            if v == 0:
                tl.store(dz1_ptr + rs64[:, None] * s_d1 + ds64[None, :], g.to(dz1_ptr.dtype.element_ty), mask=mk)
            else:
                tl.store(dz2_ptr + rs64[:, None] * s_d2 + ds64[None, :], g.to(dz2_ptr.dtype.element_ty), mask=mk)


# --------------------------------------------------------------------------------------------
# launchers


def _colstats(z1: Tensor, z2: Tensor, views: int, inv: bool):
    """(mean (views, D) acc dtype, m2 (views, D) float64, inv (D,) float64 or empty)."""
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    mean = torch.empty(views, d, dtype=acc, device=z1.device)
    m2 = torch.empty(views, d, dtype=torch.float64, device=z1.device)
    si = torch.empty(d if inv else 0, dtype=torch.float64, device=z1.device)
    br, _, warps = _mem_tiles(d)
    bd = 32  # column-owner programs: 32 columns, rows swept in BR chunks
    if z1.dtype == torch.float64 and not interpreting():
        br = 16  # (BR = 32 spilled 12 B with triton 3.6, none with 3.8; sm_90 compile)
    _lse_colstats_kernel[(triton.cdiv(d, bd),)](
        z1, z2, mean, m2, si if inv else m2, n, d, z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1),
        VIEWS=views, INV=inv, BR=br, BD=bd, num_warps=warps)
    return mean, m2, si


class _Prep(NamedTuple):
    op: Tensor     # operand rows (views·rows, K)
    r: Tensor      # 1/max(‖x‖, eps) per row (NORM), else empty
    keep: Tensor   # [‖x‖ > eps] per row (NORM), else empty
    rinfo: Tensor  # (2, views·N): row mean and row std (ROWCENTER), else empty


def _prep(z1: Tensor, z2: Tensor, views: int, mean: Optional[Tensor], m2: Optional[Tensor], *,
          center: bool = False, colscale: bool = False, rowcenter: bool = False, norm: bool = False,
          trans: bool = False, var_eps: float = 0.0) -> _Prep:
    n, d = z1.shape
    dt = z1.dtype
    acc = acc_dtype(dt)
    dev = z1.device
    norm_op = norm and not _tile_scaled(dt)
    if trans:
        op = _op_buffer(views * d, n, dt, dev)
        s_opv = d * op.stride(0)
    else:
        op = _op_buffer(views * n, d, dt, dev)
        s_opv = 0
    r = torch.empty(views * n if norm else 0, dtype=acc, device=dev)
    keep = torch.empty_like(r)
    rinfo = torch.empty(2, views * n if rowcenter else 0, dtype=acc, device=dev)
    br, bd, warps = _mem_tiles(d)
    if trans and not interpreting():
        br, bd = 32, 32  # a transposing store: square tiles
    dummy = r if norm else op
    _lse_prep_kernel[(triton.cdiv(views * n, br),)](
        z1, z2, mean if mean is not None else dummy, m2 if m2 is not None else dummy, op,
        r if norm else dummy, keep if norm else dummy, rinfo[0] if rowcenter else dummy,
        rinfo[1] if rowcenter else dummy,
        n, d, z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1), op.stride(0), s_opv,
        math.sqrt(n / d), float(var_eps),
        VIEWS=views, CENTER=center, COLSCALE=colscale, ROWCENTER=rowcenter, NORM=norm, NORM_OP=norm_op,
        TRANS=trans, RNA=tf32_rounding(dt), ACC=_acc_tl(dt), BR=br, BD=bd, num_warps=warps)
    return _Prep(op, r, keep, rinfo)


def _finish(src, z1, z2, mean, m2, rinfo, dz1, dz2, mode, s_srcv, s_srci, s_srcd, g=None, weights=(0.0, 0.0),
            gamma=0.0, var_eps=0.0):
    n, d = z1.shape
    br, _, warps = _mem_tiles(d)
    bd = 32
    dummy = mean
    gl, gi, gv = g if g is not None else (dummy, dummy, dummy)
    _lse_finish_kernel[(triton.cdiv(d, bd),)](
        src, z1, z2, mean, m2 if m2 is not None else dummy, rinfo[0] if rinfo is not None else dummy,
        rinfo[1] if rinfo is not None else dummy, dz1, dz2, gl, gi, gv, n, d, s_srci, s_srcd, s_srcv,
        z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1), dz1.stride(0), dz2.stride(0),
        float(weights[0]), float(weights[1]), float(gamma), float(var_eps), math.sqrt(n / d),
        MODE=mode, ACC=_acc_tl(z1.dtype), BR=br, BD=bd, num_warps=warps)
