"""JIT helpers that several passes of the covariance family share (docs/triton_gram.md)."""
from __future__ import annotations

from .._common import tl, triton


@triton.jit
def _pick(view, first, second):
    """``first`` for view 0, ``second`` for view 1."""
    r = first
    if view != 0:
        r = second
    return r



@triton.jit
def _stripe(N, D, BD: tl.constexpr, RPC: tl.constexpr):
    """A column pass program's columns (stripe program_id(0), BD wide) and rows [r_lo, r_hi) (chunk
    program_id(1), RPC rows): (cols, cmask, r_lo, r_hi)."""
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    r_lo = tl.program_id(1) * RPC
    return cols, cols < D, r_lo, tl.minimum(r_lo + RPC, N)


@triton.jit
def _chunk_tile(r0, r_hi, cols, cmask, D, BR: tl.constexpr):
    """The (BR rows from r0) × stripe tile of a column pass: (its mask below r_hi and D, the
    elements' offsets in a row-major (N, D) view)."""
    rows = r0 + tl.arange(0, BR)
    mask = (rows < r_hi)[:, None] & cmask[None, :]
    return mask, rows.to(tl.int64)[:, None] * D + cols[None, :]


@triton.jit
def _view_ptrs(v, lv, p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr):
    """An epilogue program's pointers for view v (the launch's view lv): its product P, its gradient,
    its input and the other view's."""
    return _pick(lv, p0_ptr, p1_ptr), _pick(v, dz0_ptr, dz1_ptr), _pick(v, z1_ptr, z2_ptr), _pick(v, z2_ptr, z1_ptr)

@triton.jit
def _clamp0(x):
    """max(x, 0) that keeps NaN (docs/spec.md §6: NaN propagates as in the reference; Triton's maximum
    drops a NaN operand)."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def _floor(x, lo):
    """max(x, lo) that keeps NaN (as torch's clamp_min)."""
    return tl.where(x < lo, lo, x)


@triton.jit
def _sqrt64(x):
    """sqrt of a float64 vector as x·rsqrt(x), with sqrt's 0, inf and NaN: tl.sqrt of float64
    compiles to a subroutine call on sm_90, whose register saves ptxas (triton 3.6) counted as 8-16 B
    of spills in _finalize_kernel and _elem_bwd_kernel (VICReg)."""
    r = tl.math.rsqrt(x)
    return tl.where((x > 0) & (r > 0), x * r, x)


@triton.jit
def _bn_inv(m2, inv_n, eps):
    """BatchNorm's column scale 1/sqrt(m2/N + eps) (biased variance, docs/spec.md §1), float64. Vector
    divisions are written as products with scalar reciprocals and rsqrt throughout: a float64
    division compiles to a subroutine call on sm_90 whose register saves ptxas counts as spills."""
    return tl.math.rsqrt(m2 * inv_n + eps)


@triton.jit
def _operand(z, mean, inv, T: tl.constexpr):
    """The GEMM operand round_T((z − mean)·inv), computed in float64 and rounded once; the
    backward epilogues call it again and get the forward's operand bit for bit."""
    return ((z.to(tl.float64) - mean) * inv).to(T)


@triton.jit
def _pow2_scale(mx):
    """(2^k, 2^-k) fp32 with mx·2^k in [2^14, 2^15): fp16's largest finite value is 65504 < 2^16, so
    a row scaled by it cannot overflow; (1, 1) for zero, subnormal, inf or NaN maxima."""
    e = (mx.to(tl.int32, bitcast=True) >> 23) & 0xFF
    k = tl.minimum(tl.maximum(268 - e, 2), 252)  # biased exponent 127 + (141 − e), inverse in range
    k = tl.where((e == 0) | (e == 255), 127, k)
    return (k << 23).to(tl.float32, bitcast=True), ((254 - k) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _view_vectors(rs_ptr, w_ptr, v, N, D, RS: tl.constexpr, CORR: tl.constexpr):
    """View v's rows of the fp16 scales (by row: N, by column: D) and of the corrections."""
    rsv = rs_ptr + v * D
    if RS == 1:
        rsv = rs_ptr + v * N
    wv = w_ptr + v * D
    if CORR == 1:
        wv = w_ptr + v * N
    return rsv, wv


@triton.jit
def _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rs_ptr, w_ptr, mean_ptr,
             RS: tl.constexpr, CORR: tl.constexpr):
    """A tile of the true product from the GEMM result P' (docs/triton_gram.md, backward operands):
    P'·rs (fp16 row scales, by row on the N×N side, by column on the D×D side), minus the centering
    correction w_i·mean_k (N×N side) or u_k (D×D side)."""
    p = tl.load(p_ptr + idx, mask=mask, other=0.0)
    if RS == 1:
        p = p * tl.load(rs_ptr + rows, mask=rmask, other=0.0)[:, None]
    if RS == 2:
        p = p * tl.load(rs_ptr + cols, mask=cmask, other=0.0)[None, :]
    if CORR == 1:
        w = tl.load(w_ptr + rows, mask=rmask, other=0.0)
        m = tl.load(mean_ptr + cols, mask=cmask, other=0.0).to(p.dtype)
        p = p - w[:, None] * m[None, :]
    if CORR == 2:
        p = p - tl.load(w_ptr + cols, mask=cmask, other=0.0)[None, :]
    return p


@triton.jit
def _chunk_sum(ptr, k, kmask, nch, stride, BV: tl.constexpr):
    """Σ_c ptr[c·stride + k] over nch chunks, in chunk order."""
    acc = tl.zeros([BV], tl.float64)
    for c in range(0, nch):
        acc += tl.load(ptr + c * stride + k, mask=kmask, other=0.0)
    return acc
