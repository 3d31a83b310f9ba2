"""Sums over the Gram(s) and the finalize (docs/triton_gram.md, steps 3-4): per row block the float64
sums of squares (off-diagonal and diagonal), the backward's M×M operand, and the loss and its terms
in float64 on device; the kernels beside their launcher ``_prep``."""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch

from .._common import arch_family, interpreting, tl, triton
from .._common import scalar as _scalar
from .helpers import _chunk_sum, _pick, _pow2_scale, _sqrt64
from .plan import _OVERRIDES, _SUM_NONE, _WARPS, _blocks, _cdiv, _dummy

Tensor = torch.Tensor


@triton.jit
def _prep_kernel(src0_ptr, src1_ptr, s00, s01, s10, s11, pair_ptr, cm0_ptr, cm1_ptr,
                 vec0_ptr, vec1_ptr, alpha: tl.float64, o_ptr, rs_ptr, w_ptr, part_ptr, M, NRB,
                 a_ptr, b_ptr, c_ptr, dv_ptr, o0_ptr, o1_ptr, o2_ptr, o3_ptr, N, D, NCH,
                 w0: tl.float64, w1: tl.float64, w2: tl.float64, w3: tl.float64, w4: tl.float64,
                 SUMS: tl.constexpr, SUMV: tl.constexpr, WRITE: tl.constexpr, SYM: tl.constexpr,
                 COLMUL: tl.constexpr, VEC: tl.constexpr, SCALE: tl.constexpr,
                 BR: tl.constexpr, BC: tl.constexpr, FINAL: tl.constexpr, VIEWS: tl.constexpr,
                 MODE: tl.constexpr, NATIVE: tl.constexpr, BV: tl.constexpr):
    """``_prep_rows`` for one block of BR rows per program (grid: NRB row blocks, views); or, FINAL
    (small M: launch-bound), one program walks every block of every view and then runs the
    finalize (``_finalize_body``, arguments as ``_finalize_kernel``'s): one launch instead of two."""
    if FINAL:
        for v in range(0, VIEWS):
            for rb in range(0, NRB):
                _prep_rows(rb, v, NRB, src0_ptr, src1_ptr, s00, s01, s10, s11, pair_ptr, cm0_ptr,
                           cm1_ptr, vec0_ptr, vec1_ptr, alpha, o_ptr, rs_ptr, w_ptr, part_ptr, M,
                           SUMS, SUMV, WRITE, SYM, COLMUL, VEC, SCALE, BR, BC)
        tl.debug_barrier()  # the partial sums, written by every thread, are read below
        _finalize_body(part_ptr, NRB, a_ptr, b_ptr, c_ptr, dv_ptr, o0_ptr, o1_ptr, o2_ptr, o3_ptr,
                       N, D, NCH, w0, w1, w2, w3, w4, MODE, NATIVE, BV)
    else:
        _prep_rows(tl.program_id(0), tl.program_id(1), NRB, src0_ptr, src1_ptr, s00, s01, s10,
                   s11, pair_ptr, cm0_ptr, cm1_ptr, vec0_ptr, vec1_ptr, alpha, o_ptr, rs_ptr,
                   w_ptr, part_ptr, M, SUMS, SUMV, WRITE, SYM, COLMUL, VEC, SCALE, BR, BC)


@triton.jit
def _prep_rows(rb, v, nrb, src0_ptr, src1_ptr, s00, s01, s10, s11, pair_ptr, cm0_ptr, cm1_ptr,
               vec0_ptr, vec1_ptr, alpha, o_ptr, rs_ptr, w_ptr, part_ptr, M,
               SUMS: tl.constexpr, SUMV: tl.constexpr, WRITE: tl.constexpr, SYM: tl.constexpr,
               COLMUL: tl.constexpr, VEC: tl.constexpr, SCALE: tl.constexpr,
               BR: tl.constexpr, BC: tl.constexpr):
    """Row block rb of view v's M×M matrix.

    Sums (float64, views v < SUMV): _SUM_SQ: Σ A² off the diagonal and on it; _SUM_PAIR (view 0):
    Σ A∘B over all entries (B = pair, row-major) into part[(v, 2, row blocks)].
    WRITE: the backward's GEMM operand O_v = A·alpha·colmul_v[col] (A = src_v with strides (s0, s1),
    + its transpose with SYM), rounded to o's dtype, each row times a power of two when SCALE
    (``_pow2_scale``, fp16; rs = the inverse factors), and with VEC the row dot
    w_r = rs_r·Σ_c O_v[r, c]·vec_v[c] (VEC 1: vec = 1) of the rounded operand: the centering
    correction of the epilogue (docs/triton_gram.md).
    Bytes: reads V·M² of src (twice with SCALE, the second time from L2), writes V·M² of O.
    """
    src = _pick(v, src0_ptr, src1_ptr)
    s0 = _pick(v, s00, s10)
    s1 = _pick(v, s01, s11)
    rows = rb * BR + tl.arange(0, BR)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    al = _scalar(alpha, tl.float64)
    scale = tl.full([BR], 1.0, tl.float32)
    inv = scale
    if SCALE:
        mx = tl.zeros([BR], tl.float32)
        for c0 in range(0, M, BC):
            cols = c0 + tl.arange(0, BC)
            cmask = cols < M
            mask = rmask[:, None] & cmask[None, :]
            c64 = cols.to(tl.int64)
            a = tl.load(src + r64[:, None] * s0 + c64[None, :] * s1, mask=mask, other=0.0).to(tl.float32)
            if SYM:
                a += tl.load(src + c64[None, :] * s0 + r64[:, None] * s1, mask=mask, other=0.0).to(tl.float32)
            a = a * al.to(tl.float32)
            if COLMUL:
                a = a * tl.abs(tl.load(_pick(v, cm0_ptr, cm1_ptr) + cols, mask=cmask,
                                       other=0.0).to(tl.float32))[None, :]
            mx = tl.maximum(mx, tl.max(tl.abs(a), axis=1))
        scale, inv = _pow2_scale(mx)
    off = tl.zeros([BR], tl.float64)
    dg = tl.zeros([BR], tl.float64)
    wacc = tl.zeros([BR], tl.float64)
    o_base = o_ptr + tl.cast(v, tl.int64) * M * M
    for c0 in range(0, M, BC):
        cols = c0 + tl.arange(0, BC)
        cmask = cols < M
        mask = rmask[:, None] & cmask[None, :]
        c64 = cols.to(tl.int64)
        a = tl.load(src + r64[:, None] * s0 + c64[None, :] * s1, mask=mask, other=0.0)
        if SYM:
            a += tl.load(src + c64[None, :] * s0 + r64[:, None] * s1, mask=mask, other=0.0)
        if SUMS == 1:
            a64 = a.to(tl.float64)
            sq = a64 * a64
            on = rows[:, None] == cols[None, :]
            if v < SUMV:
                off += tl.sum(tl.where(on, 0.0, sq), axis=1)
                dg += tl.sum(tl.where(on, sq, 0.0), axis=1)
        if SUMS == 2:
            if v == 0:
                b = tl.load(pair_ptr + r64[:, None] * M + c64[None, :], mask=mask, other=0.0)
                off += tl.sum(a.to(tl.float64) * b.to(tl.float64), axis=1)
        if WRITE:
            # float64: for fp32/fp64 outputs (the symmetrized upstream gradient) one rounding
            y = a.to(tl.float64) * al
            if COLMUL:
                y = y * tl.abs(tl.load(_pick(v, cm0_ptr, cm1_ptr) + cols, mask=cmask,
                                       other=0.0).to(tl.float64))[None, :]
            o = (y * scale.to(tl.float64)[:, None]).to(o_ptr.dtype.element_ty)
            tl.store(o_base + r64[:, None] * M + c64[None, :], o, mask=mask)
            if VEC == 1:
                wacc += tl.sum(tl.where(mask, o.to(tl.float64), 0.0), axis=1)
            if VEC == 2:
                vv = tl.load(_pick(v, vec0_ptr, vec1_ptr) + cols, mask=cmask, other=0.0).to(tl.float64)
                wacc += tl.sum(o.to(tl.float64) * vv[None, :], axis=1)
    if SUMS != 0:
        if v < SUMV:
            tl.store(part_ptr + (v * 2) * nrb + rb, tl.sum(off, axis=0))
            tl.store(part_ptr + (v * 2 + 1) * nrb + rb, tl.sum(dg, axis=0))
    if SCALE:
        tl.store(rs_ptr + v * M + rows, inv, mask=rmask)
    if VEC != 0:
        tl.store(w_ptr + v * M + rows, (wacc * inv.to(tl.float64)).to(tl.float32), mask=rmask)


@triton.jit
def _vsum(ptr, n, BV: tl.constexpr):
    """Σ ptr[0:n] in a fixed order, float64."""
    offs = tl.arange(0, BV)
    acc = tl.zeros([BV], tl.float64)
    for i0 in range(0, n, BV):
        acc += tl.load(ptr + i0 + offs, mask=i0 + offs < n, other=0.0).to(tl.float64)
    return tl.sum(acc, axis=0)


@triton.jit
def _store_terms(o0_ptr, o1_ptr, o2_ptr, o3_ptr, x0, x1, x2, x3, FOUR: tl.constexpr):
    """The finalize's 0-dim outputs x0, x1, x2 (and x3 when FOUR), each rounded once to its dtype."""
    tl.store(o0_ptr, x0.to(o0_ptr.dtype.element_ty))
    tl.store(o1_ptr, x1.to(o1_ptr.dtype.element_ty))
    tl.store(o2_ptr, x2.to(o2_ptr.dtype.element_ty))
    if FOUR:
        tl.store(o3_ptr, x3.to(o3_ptr.dtype.element_ty))


@triton.jit
def _finalize_kernel(part_ptr, nrb, a_ptr, b_ptr, c_ptr, dv_ptr, o0_ptr, o1_ptr, o2_ptr, o3_ptr,
                     N, D, NCH, w0: tl.float64, w1: tl.float64, w2: tl.float64,
                     w3: tl.float64, w4: tl.float64,
                     MODE: tl.constexpr, NATIVE: tl.constexpr, BV: tl.constexpr):
    """``_finalize_body`` on one program."""
    _finalize_body(part_ptr, nrb, a_ptr, b_ptr, c_ptr, dv_ptr, o0_ptr, o1_ptr, o2_ptr, o3_ptr,
                   N, D, NCH, w0, w1, w2, w3, w4, MODE, NATIVE, BV)


@triton.jit
def _finalize_body(part_ptr, nrb, a_ptr, b_ptr, c_ptr, dv_ptr, o0_ptr, o1_ptr, o2_ptr, o3_ptr,
                   N, D, NCH, w0, w1, w2, w3, w4,
                   MODE: tl.constexpr, NATIVE: tl.constexpr, BV: tl.constexpr):
    """The loss and its terms in float64 on one program, rounded once (docs/spec.md §2–4). Where the loss's
    off-diagonal sum is the Gram's own (NATIVE: same side) it is the sum of the off-diagonal squares
    directly; otherwise the full sum minus the other side's diagonal (docs/spec.md §2), with that diagonal
    from the rounded operand (Σ x̃², Σ ã·b̃, p̃), so the identity cancels nothing rounded differently.
    _F_VICREG: a = m2 (2, D), b = Σ(z1 − z2)² (D), c = Σ x̃² chunks (NCH, 2, D); w = weights, γ, eps.
    _F_BARLOW: c = Σ ã·b̃ chunks (NCH, 1, D); writes d = C_kk (D) to dv; w0 = λ.
    _F_SPECTRAL: a = [p, p̃] (2, N); w0 = mu.  _F_DUALITY: a = ‖z_i‖² (N), b = Σ_i z_ik² (D).
    """
    nf = tl.cast(N, tl.float64)
    df = tl.cast(D, tl.float64)
    inv_n = 1.0 / nf
    offs = tl.arange(0, BV)
    off0 = _vsum(part_ptr, nrb, BV)
    dg0 = _vsum(part_ptr + nrb, nrb, BV)
    if MODE == 0:
        gam = _scalar(w3, tl.float64)
        eps = _scalar(w4, tl.float64)
        inv_nm1 = 1.0 / (nf - 1.0)
        off1 = _vsum(part_ptr + 2 * nrb, nrb, BV)
        dg1 = _vsum(part_ptr + 3 * nrb, nrb, BV)
        h = tl.zeros([BV], tl.float64)
        cc = tl.zeros([BV], tl.float64)
        for k0 in range(0, D, BV):
            k = k0 + offs
            km = k < D
            for v in range(0, 2):
                s = _sqrt64(tl.load(a_ptr + v * D + k, mask=km, other=0.0) * inv_nm1 + eps)
                hv = gam - s
                # relu written so that NaN propagates (docs/spec.md §6), as torch's relu does
                h += tl.where(km, tl.where(hv < 0, 0.0, hv), 0.0)
                if not NATIVE:
                    g = _chunk_sum(c_ptr + v * D, k, km, NCH, 2 * D, BV)
                    cc += g * g
        if NATIVE:
            cov = off0 + off1
        else:
            cov = (off0 + dg0) + (off1 + dg1) - tl.sum(cc, axis=0)
        inv = _vsum(b_ptr, D, BV) / (nf * df)
        var = tl.sum(h, axis=0) / (2.0 * df)
        cov = cov / ((nf - 1.0) * (nf - 1.0) * df)
        loss = _scalar(w0, tl.float64) * inv + _scalar(w1, tl.float64) * var \
            + _scalar(w2, tl.float64) * cov
        _store_terms(o0_ptr, o1_ptr, o2_ptr, o3_ptr, loss, inv, var, cov, True)
    if MODE == 1:
        on = tl.zeros([BV], tl.float64)
        dd = tl.zeros([BV], tl.float64)
        for k0 in range(0, D, BV):
            k = k0 + offs
            km = k < D
            d = _chunk_sum(c_ptr, k, km, NCH, D, BV) * inv_n
            tl.store(dv_ptr + k, d.to(dv_ptr.dtype.element_ty), mask=km)
            on += tl.where(km, (1.0 - d) * (1.0 - d), 0.0)
            dd += d * d
        on_s = tl.sum(on, axis=0)
        if NATIVE:
            off_s = off0 / (nf * nf)
        else:
            off_s = off0 / (nf * nf) - tl.sum(dd, axis=0)
        _store_terms(o0_ptr, o1_ptr, o2_ptr, o3_ptr, on_s + _scalar(w0, tl.float64) * off_s, on_s, off_s, off_s, False)
    if MODE == 2:
        mu = _scalar(w0, tl.float64)
        sp = tl.zeros([BV], tl.float64)
        spp = tl.zeros([BV], tl.float64)
        for i0 in range(0, N, BV):
            i = i0 + offs
            sp += tl.load(a_ptr + i, mask=i < N, other=0.0)
            pt = tl.load(a_ptr + N + i, mask=i < N, other=0.0)
            spp += pt * pt
        if NATIVE:
            offsq = off0
        else:
            offsq = off0 - tl.sum(spp, axis=0)
        pos = -2.0 * tl.sum(sp, axis=0) / nf / mu
        neg = offsq / (nf * (nf - 1.0)) / mu
        _store_terms(o0_ptr, o1_ptr, o2_ptr, o3_ptr, pos + neg, pos, neg, neg, False)
    if MODE == 3:
        rr = tl.zeros([BV], tl.float64)
        cc = tl.zeros([BV], tl.float64)
        for i0 in range(0, N, BV):
            r = tl.load(a_ptr + i0 + offs, mask=i0 + offs < N, other=0.0)
            rr += r * r
        for k0 in range(0, D, BV):
            c = tl.load(b_ptr + k0 + offs, mask=k0 + offs < D, other=0.0)
            cc += c * c
        r4 = tl.sum(rr, axis=0)
        c4 = tl.sum(cc, axis=0)
        # the Gram's own off-diagonal squares give its side's criterion (paper Thm 3.3)
        if NATIVE:  # D×D side
            lc = (off0 + dg0) - r4
            lnc = off0
        else:
            lc = off0
            lnc = (off0 + dg0) - c4
        _store_terms(o0_ptr, o1_ptr, o2_ptr, o3_ptr, lc, lnc, r4, c4, True)


class _Prep(NamedTuple):
    o: Optional[Tensor]   # (V, M, M) operands (WRITE)
    rs: Tensor            # (V, M) fp32 inverse row scales (SCALE) or empty
    w: Tensor             # (V, M) fp32 centering corrections (VEC) or empty
    outs: List[Tensor]    # the finalize's 0-dim outputs (``fin``)


class _Fin(NamedTuple):
    """Arguments of the finalize (``_finalize_body``): mode, native side, and its vectors."""
    mode: int
    native: bool
    acc: torch.dtype
    n: int
    d: int
    outs: int = 3
    a: Optional[Tensor] = None
    b: Optional[Tensor] = None
    c: Optional[Tensor] = None
    nch: int = 1
    dv: Optional[Tensor] = None
    weights: tuple = ()


_FINAL_MAX = 1 << 17   # V·M² at or below which one program does the sums and the finalize


def _prep(like: Tensor, m: int, srcs, strides, *, sums: int = _SUM_NONE, sumv: int = 0,
          pair: Optional[Tensor] = None, out_dtype: Optional[torch.dtype] = None,
          scale: bool = False, colmuls=None, vecs=None, ones: bool = False, alpha: float = 1.0,
          sym: bool = False, views: int = 1, fin: Optional[_Fin] = None) -> _Prep:
    """Launch ``_prep_kernel`` over ``views`` operands: srcs (one or two M×M tensors), strides
    ((s00, s01), (s10, s11)) per view; then the finalize ``fin`` (in the same launch for small M).
    ``like``: a tensor on the device (for placeholders)."""
    bl = _blocks(like.dtype, arch_family(like))
    br, bc = bl.prep
    nrb = _cdiv(m, br)
    dev = like.device
    dm = _dummy(like)
    f32 = dict(dtype=torch.float32, device=dev)
    write = out_dtype is not None
    o = torch.empty((views, m, m), dtype=out_dtype, device=dev) if write else dm
    rs = torch.empty((views, m), **f32) if scale else torch.empty((0,), **f32)
    vec = 1 if ones else (2 if vecs is not None else 0)
    w = torch.empty((views, m), **f32) if vec else torch.empty((0,), **f32)
    part = torch.empty((max(sumv, 1), 2, nrb), dtype=torch.float64, device=dev) if sums else dm
    src0, src1 = srcs[0], srcs[-1]
    (s00, s01), (s10, s11) = strides[0], strides[-1]
    cm = colmuls if colmuls is not None else (dm,)
    vv = vecs if vecs is not None else (dm,)
    res: List[Tensor] = []
    if fin is not None:
        res = [torch.empty((), dtype=fin.acc, device=dev) for _ in range(fin.outs)]
        outs = res + [res[0]] * (4 - fin.outs)
        wts = [float(x) for x in fin.weights] + [0.0] * (5 - len(fin.weights))
        fargs = (dm if fin.a is None else fin.a, dm if fin.b is None else fin.b,
                 dm if fin.c is None else fin.c, dm if fin.dv is None else fin.dv, *outs,
                 fin.n, fin.d, fin.nch, *wts)
        fflags = dict(MODE=fin.mode, NATIVE=fin.native, BV=bl.fin[fin.mode])
    else:
        fargs = (dm,) * 8 + (1, 1, 1) + (0.0,) * 5
        fflags = dict(MODE=0, NATIVE=False, BV=bl.fin[0])
    limit = (1 << 10) if interpreting() else _FINAL_MAX
    final = fin is not None and views * m * m <= limit and not _OVERRIDES.get("unfused")
    _prep_kernel[(1, 1) if final else (nrb, views)](
        src0, src1, s00, s01, s10, s11, pair if pair is not None else dm, cm[0], cm[-1],
        vv[0], vv[-1], float(alpha), o, rs if scale else _dummy(like, torch.float32),
        w if vec else _dummy(like, torch.float32), part, m, nrb, *fargs,
        SUMS=sums, SUMV=sumv, WRITE=write, SYM=sym, COLMUL=colmuls is not None, VEC=vec,
        SCALE=scale, BR=br, BC=bc, FINAL=final, VIEWS=views,
        **(fflags if final else dict(MODE=0, NATIVE=False, BV=bl.fin[0])), num_warps=_WARPS)
    if fin is not None and not final:
        _finalize_kernel[(1,)](part, nrb, *fargs, **fflags, num_warps=_WARPS)
    return _Prep(o if write else None, rs, w, res)
