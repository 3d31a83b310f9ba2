"""The column pass (docs/triton_gram.md, step 1): float64 column moments of both views and the GEMM
operand x̃, one launch for small problems, else statistics over row chunks, a merge in chunk order
and the operand pass; the kernels beside their launcher ``_colpass``."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .._common import scalar as _scalar
from .._common import arch_family, tl, triton
from .helpers import _bn_inv, _chunk_tile, _clamp0, _operand, _stripe
from .plan import _APPLY, _BN, _DIAG_NONE, _DIAG_SQ, _FUSED, _SQ, _STATS, _WARPS, _blocks, _cdiv, _chunks, _dummy

Tensor = torch.Tensor


@triton.jit
def _colpass_kernel(z1_ptr, z2_ptr, x_ptr, mean_ptr, m2_ptr, sq_ptr, cs_ptr, part_ptr, dpart_ptr,
                    N, D, RPC, eps: tl.float64,
                    MODE: tl.constexpr, PHASE: tl.constexpr, TWO: tl.constexpr,
                    SQDIFF: tl.constexpr, DIAG: tl.constexpr, ST: tl.constexpr,
                    BR: tl.constexpr, BD: tl.constexpr):
    """Column statistics and the GEMM operand for a stripe of BD columns × a chunk of RPC rows
    (grid: stripes, chunks), both views per program.

    _STATS: shifted sums Σ(z − z₀), Σ(z − z₀)² per view (z₀ = row 0, so chunk sums add up) and
      Σ(z1 − z2)², float64, into part[(j, chunk, D)], j = S1, Q1, S2, Q2, R.
    _APPLY: x̃ = _operand(z, mean, inv) (inv = 1, or BatchNorm's) from the merged statistics, written
      once, and per chunk the float64 column sums of the ROUNDED operand (DIAG: Σ x̃_v² per view or
      Σ x̃1·x̃2) into dpart[(chunk, j, D)]: the N×N-side identities subtract exactly those.
    _FUSED: both, one program per stripe over all rows (grid (stripes, 1)).
    MODE _SQ (duality): no shift, no operand; m2 = Σ z² per column.
    MODE _BN also writes the scales 1/sqrt(m2/N + eps) (float64) to cs. ST: the dtype of the
    per-tile sums (BR rows) before they join the float64 totals: fp32 for bf16/fp16 inputs (z − z₀
    of two bf16 values is exact in fp32; it halves the registers of the stats loop), else float64.
    Bytes: stats read V·N·D·itemsize; operand pass reads it again and writes it once.
    """
    pid_c = tl.program_id(1)
    chunks = tl.num_programs(1)
    cols, cmask, r_lo, r_hi = _stripe(N, D, BD, RPC)
    nf = tl.cast(N, tl.float64)
    inv_n = 1.0 / nf
    e64 = _scalar(eps, tl.float64)
    nd = tl.cast(N, tl.int64) * D
    if PHASE != 2:
        if MODE == 2:
            s1 = tl.zeros([BD], ST)
            s2 = tl.zeros([BD], ST)
        else:
            s1 = tl.load(z1_ptr + cols, mask=cmask, other=0.0).to(ST)
            s2 = s1
            if TWO:
                s2 = tl.load(z2_ptr + cols, mask=cmask, other=0.0).to(ST)
        S1 = tl.zeros([BD], tl.float64)
        Q1 = tl.zeros([BD], tl.float64)
        S2 = tl.zeros([BD], tl.float64)
        Q2 = tl.zeros([BD], tl.float64)
        R = tl.zeros([BD], tl.float64)
        for r0 in range(r_lo, r_hi, BR):
            mask, idx = _chunk_tile(r0, r_hi, cols, cmask, D, BR)
            a = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(ST)
            d1 = tl.where(mask, a - s1[None, :], 0.0)
            S1 += tl.sum(d1, axis=0).to(tl.float64)
            Q1 += tl.sum(d1 * d1, axis=0).to(tl.float64)
            if TWO:
                b = tl.load(z2_ptr + idx, mask=mask, other=0.0).to(ST)
                d2 = tl.where(mask, b - s2[None, :], 0.0)
                S2 += tl.sum(d2, axis=0).to(tl.float64)
                Q2 += tl.sum(d2 * d2, axis=0).to(tl.float64)
                if SQDIFF:
                    e = a - b
                    R += tl.sum(e * e, axis=0).to(tl.float64)
        if PHASE == 1:
            out = pid_c * D + cols
            tl.store(part_ptr + out, S1, mask=cmask)
            tl.store(part_ptr + chunks * D + out, Q1, mask=cmask)
            if TWO:
                tl.store(part_ptr + 2 * chunks * D + out, S2, mask=cmask)
                tl.store(part_ptr + 3 * chunks * D + out, Q2, mask=cmask)
                if SQDIFF:
                    tl.store(part_ptr + 4 * chunks * D + out, R, mask=cmask)
        else:
            mean1 = s1.to(tl.float64) + S1 * inv_n
            m21 = _clamp0(Q1 - S1 * S1 * inv_n)
            if MODE == 2:
                m21 = Q1
            tl.store(mean_ptr + cols, mean1, mask=cmask)
            tl.store(m2_ptr + cols, m21, mask=cmask)
            mean2 = mean1
            m22 = m21
            if TWO:
                mean2 = s2.to(tl.float64) + S2 * inv_n
                m22 = _clamp0(Q2 - S2 * S2 * inv_n)
                tl.store(mean_ptr + D + cols, mean2, mask=cmask)
                tl.store(m2_ptr + D + cols, m22, mask=cmask)
                if SQDIFF:
                    tl.store(sq_ptr + cols, R, mask=cmask)
    else:
        mean1 = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
        m21 = tl.load(m2_ptr + cols, mask=cmask, other=0.0)
        mean2 = mean1
        m22 = m21
        if TWO:
            mean2 = tl.load(mean_ptr + D + cols, mask=cmask, other=0.0)
            m22 = tl.load(m2_ptr + D + cols, mask=cmask, other=0.0)
    if PHASE != 1 and MODE != 2:
        T = x_ptr.dtype.element_ty
        inv1 = tl.full([BD], 1.0, tl.float64)
        inv2 = inv1
        if MODE == 1:
            inv1 = _bn_inv(m21, inv_n, e64)
            inv2 = _bn_inv(m22, inv_n, e64)
            if pid_c == 0:  # the scales, for the backward's D×D operands (bf16/fp16)
                tl.store(cs_ptr + cols, inv1, mask=cmask)
                if TWO:
                    tl.store(cs_ptr + D + cols, inv2, mask=cmask)
        g0 = tl.zeros([BD], tl.float64)
        g1 = tl.zeros([BD], tl.float64)
        for r0 in range(r_lo, r_hi, BR):
            mask, idx = _chunk_tile(r0, r_hi, cols, cmask, D, BR)
            x1 = _operand(tl.load(z1_ptr + idx, mask=mask, other=0.0), mean1[None, :], inv1[None, :], T)
            tl.store(x_ptr + idx, x1, mask=mask)
            f1 = tl.where(mask, x1.to(tl.float64), 0.0)
            if DIAG == 1:
                g0 += tl.sum(f1 * f1, axis=0)
            if TWO:
                x2 = _operand(tl.load(z2_ptr + idx, mask=mask, other=0.0), mean2[None, :], inv2[None, :], T)
                tl.store(x_ptr + nd + idx, x2, mask=mask)
                f2 = tl.where(mask, x2.to(tl.float64), 0.0)
                if DIAG == 1:
                    g1 += tl.sum(f2 * f2, axis=0)
                if DIAG == 2:
                    g0 += tl.sum(f1 * f2, axis=0)
        if DIAG == 1:
            tl.store(dpart_ptr + (pid_c * 2) * D + cols, g0, mask=cmask)
            if TWO:
                tl.store(dpart_ptr + (pid_c * 2 + 1) * D + cols, g1, mask=cmask)
        if DIAG == 2:
            tl.store(dpart_ptr + pid_c * D + cols, g0, mask=cmask)


@triton.jit
def _colmerge_kernel(z1_ptr, z2_ptr, part_ptr, mean_ptr, m2_ptr, sq_ptr, N, D, chunks,
                     MODE: tl.constexpr, TWO: tl.constexpr, SQDIFF: tl.constexpr, BD: tl.constexpr):
    """Stage 2 of the column statistics: the chunks' shifted sums added in chunk order (grid:
    stripes). Reads 5·chunks·D float64."""
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    cmask = cols < D
    inv_n = 1.0 / tl.cast(N, tl.float64)
    S1 = tl.zeros([BD], tl.float64)
    Q1 = tl.zeros([BD], tl.float64)
    S2 = tl.zeros([BD], tl.float64)
    Q2 = tl.zeros([BD], tl.float64)
    R = tl.zeros([BD], tl.float64)
    for c in range(0, chunks):
        off = c * D + cols
        S1 += tl.load(part_ptr + off, mask=cmask, other=0.0)
        Q1 += tl.load(part_ptr + chunks * D + off, mask=cmask, other=0.0)
        if TWO:
            S2 += tl.load(part_ptr + 2 * chunks * D + off, mask=cmask, other=0.0)
            Q2 += tl.load(part_ptr + 3 * chunks * D + off, mask=cmask, other=0.0)
            if SQDIFF:
                R += tl.load(part_ptr + 4 * chunks * D + off, mask=cmask, other=0.0)
    s1 = tl.zeros([BD], tl.float64)
    s2 = tl.zeros([BD], tl.float64)
    if MODE != 2:
        s1 = tl.load(z1_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
        if TWO:
            s2 = tl.load(z2_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
    tl.store(mean_ptr + cols, s1 + S1 * inv_n, mask=cmask)
    if MODE == 2:
        tl.store(m2_ptr + cols, Q1, mask=cmask)
    else:
        tl.store(m2_ptr + cols, _clamp0(Q1 - S1 * S1 * inv_n), mask=cmask)
    if TWO:
        tl.store(mean_ptr + D + cols, s2 + S2 * inv_n, mask=cmask)
        tl.store(m2_ptr + D + cols, _clamp0(Q2 - S2 * S2 * inv_n), mask=cmask)
        if SQDIFF:
            tl.store(sq_ptr + cols, R, mask=cmask)


class _Cols(NamedTuple):
    x: Optional[Tensor]   # (V, N, D) operand, input dtype
    mean: Tensor          # (V, D) float64
    m2: Tensor            # (V, D) float64 (_SQ: Σ z²)
    cs: Tensor            # (V, D) float64 BatchNorm scales (_BN)
    sq: Tensor            # (D,) float64 Σ(z1 − z2)² (sqdiff)
    dpart: Tensor         # (chunks, ·, D) float64 column sums of the rounded operand (diag)
    chunks: int


def _colpass(z1: Tensor, z2: Optional[Tensor], mode: int, *, eps: float = 0.0, sqdiff: bool = False,
             diag: int = _DIAG_NONE, operand: bool = True) -> _Cols:
    """``operand=False``: the statistics only (stats and merge; no operand written)."""
    n, d = z1.shape
    two = z2 is not None
    v = 2 if two else 1
    br, bd = _blocks(z1.dtype, arch_family(z1)).col
    rpc, chunks = _chunks(n, d, br, bd)
    f64 = dict(dtype=torch.float64, device=z1.device)
    mean = torch.empty((v, d), **f64)
    m2 = torch.empty((v, d), **f64)
    sq = torch.empty((d,), **f64) if sqdiff else mean
    cs = torch.empty((v, d), **f64) if mode == _BN else mean
    write = mode != _SQ and operand
    x = torch.empty((v, n, d), dtype=z1.dtype, device=z1.device) if write else _dummy(z1, z1.dtype)
    dpart = torch.empty((chunks, 2 if diag == _DIAG_SQ else 1, d), **f64) if diag else mean
    b = z2 if two else z1
    grid = (_cdiv(d, bd), chunks)
    st = tl.float32 if z1.dtype in (torch.bfloat16, torch.float16) else tl.float64
    flags = dict(MODE=mode, TWO=two, SQDIFF=sqdiff, DIAG=diag, ST=st, BR=br, BD=bd, num_warps=_WARPS)
    if chunks == 1 and (write or mode == _SQ):
        _colpass_kernel[grid](z1, b, x, mean, m2, sq, cs, mean, dpart, n, d, rpc, float(eps),
                              PHASE=_FUSED, **flags)
    else:
        part = torch.empty((5, chunks, d), **f64)
        _colpass_kernel[grid](z1, b, x, mean, m2, sq, cs, part, dpart, n, d, rpc, float(eps),
                              PHASE=_STATS, **flags)
        _colmerge_kernel[(grid[0],)](z1, b, part, mean, m2, sq, n, d, chunks, MODE=mode, TWO=two,
                                     SQDIFF=sqdiff, BD=bd, num_warps=_WARPS)
        if write:
            _colpass_kernel[grid](z1, b, x, mean, m2, sq, cs, part, dpart, n, d, rpc, float(eps),
                                  PHASE=_APPLY, **flags)
    return _Cols(x if write else None, mean, m2, cs, sq, dpart, chunks)
