"""Triton backend of the covariance family (../shared/SPEC.md §1–3): VICReg, Barlow Twins, spectral
contrastive, covariance, cross_correlation, normalized_gram and the duality terms.

UNTESTED ON GPU: the kernels have run under the Triton interpreter (triton 3.8) on CPU tensors in
fp16/fp32/fp64 (tests/test_triton_gram.py), and every launched variant compiles for sm_90
(duality_kernels/testing/triton_aot.py). Times below are the plan's arithmetic at the H200 ceilings of
../shared/ENVIRONMENT.md (4.25 TB/s, 701 TFLOP/s bf16, 356 TF32, ~60 fp64), not measurements.

Plan (DESIGN 13; the CUDA backend's, csrc/bindings.cpp + gram_ops.cu): the Gram products run on
cuBLAS (``torch.mm``/``bmm``, fp32 outputs for bf16/fp16); the kernels here are the passes around
them, each reading its inputs once or twice:
1. ``_colpass_kernel`` (+ ``_colmerge_kernel``): float64 column moments of both views (shifted
   sums, and VICReg's Σ(z1 − z2)²), then the GEMM operand x̃ = round((z − mean)·s) (s = 1 or
   BatchNorm's 1/sqrt(var_b + eps)) computed in float64 and rounded once, with the float64 column
   sums of the ROUNDED operand (Σx̃², Σx̃1·x̃2) that the N×N-side identities subtract. One launch
   (one program per column stripe) for small problems; stats over row chunks, a merge in chunk
   order and the operand pass otherwise. ``_rowpass_kernel``: row norms (spectral's clamp, l2,
   duality's ‖z_i‖²) and the scaled rows, one launch.
2. cuBLAS: the small-side Grams (N×N on side "sample", D×D on "dimension"); fp32 under matmul
   precision "highest" takes a float64 GEMM for the Grams whose squares are summed (the N×N-side
   identities cancel most of ‖G‖²), "high" the TF32 GEMM torch would run.
3. ``_prep_kernel``: per row block of the Gram(s), float64 sums of squares split into off-diagonal
   and diagonal parts (Σ GA∘GB for ⟨a aᵀ, b bᵀ⟩), so a loss's off-diagonal sum is taken directly on
   its own side (VICReg/Barlow D×D, spectral N×N) and through SPEC §2's identity on the other;
   bf16/fp16: also the backward's M×M operand in the input dtype.
4. The finalize (``_finalize_kernel``, or the tail of a one-program ``_prep_kernel`` when the Gram
   is small): loss and terms in float64 on device, rounded once; no host sync (DESIGN 3). Every
   reduction is two-stage in a fixed order, no float atomics (DESIGN 7).
5. Backward: dz = (small Gram)·x by cuBLAS, then one fused epilogue: ``_elem_bwd_kernel`` (VICReg's
   hinge and invariance, duality terms, covariance), ``_bn_bwd_kernel`` (BatchNorm's Jacobian for
   cross_correlation and Barlow, float64, keeping the (a − mean a) term as the CUDA backend does),
   ``_row_bwd_kernel`` (spectral's clamp and l2's projections).

Backward operands. fp32/fp64 save x̃ (N×D) and the fp32 Gram, and cuBLAS writes its products
straight into the gradient buffers, which the epilogue rewrites in place. bf16/fp16 save neither:
the products run on the raw input z and the epilogue removes the centering with a rank-one
correction computed from the same rounded operand the GEMM used (N×N side: G·(z − 1·meanᵀ) =
G·z − (G·1)·meanᵀ; D×D side: z·G − 1·(meanᵀG)); BatchNorm's column scale and the clamp's row
scale fold into the M×M operand or the epilogue. So the product sees the exact centered input, and
peak memory is gradients + one fp32 N×D product (views one after the other) + the M×M operands.
fp16 operands get a power-of-two scale per row (largest entry in [2¹⁴, 2¹⁵), undone exactly in
the epilogue): Gram entries reach D·var (3.7e8 at D = 4096, |z| ≈ 300), far past fp16's 65504;
no fp16 intermediate can overflow, and every loss and term comes back in fp32.

Launches per forward + backward of ``loss.backward()`` (Triton + cuBLAS + torch fills, bf16,
side "auto", recorded on meta tensors, 2026-12-01); before = the hand-written Gram tiles:
VICReg 2048×256 9 → 7 (3 + 3 + 1), 2048×8192 9 → 11 (7 + 3 + 1); Barlow 9 → 7 / 13; spectral
9 → 7 / 9; duality terms 10 → 7 / 9; covariance, cross_correlation, normalized_gram 5-6 → 5-7
(small) / 7-12 (large). Small (launch-bound) problems take the one-launch column pass, the fused
finalize and one epilogue for both views; large ones split the column pass over row chunks
(≥ 4 waves of programs on 132 SMs) and run one fp32 product and epilogue per view.

Expected forward + backward (Triton bytes at 4.25 TB/s + GEMM flops; then measured CUDA / eager):
- VICReg 2048×8192 bf16 (N×N): stats 67 MB, operand 134, sums 50, epilogues 2×168 = 587 MB
  (0.14 ms) + GEMMs 2×137 GFLOP (0.39 ms) ≈ 0.55 ms (0.85 / 5.09).
- VICReg 16384×2048 bf16 (D×D): 134 + 268 + 50 + 2×335 MB (0.26 ms) + 2×275 GFLOP (0.78 ms)
  ≈ 1.05 ms (1.38 / 3.05).
- VICReg 2048×256 bf16: 6 MB, 1.6 GFLOP, 7 launches: host-bound (0.23 / 1.95).
- Barlow 2048×8192 bf16 (N×N): 67 + 134 + 67 + BatchNorm backward 2×302 MB (0.21 ms) + 2×137
  GFLOP (0.39 ms) ≈ 0.6 ms (1.03 / 2.53).
- spectral 16384×256 bf16 (D×D): 50 + 2×42 MB (0.03 ms) + 2×4.3 GFLOP of skinny GEMMs (~0.05 ms):
  host-bound (0.38 / 4.16).
- VICReg 2048×8192 fp32 "high": 134 + 268 + 34 + 402 MB (0.2 ms) + TF32 2×137 GFLOP (0.77 ms)
  ≈ 1.0 ms (1.25 / 9.35); "highest": fp64 forward GEMM and IEEE backward, ≈ 5.5 ms (5.78 / 36.4).
Peak extra memory, bf16, against test_cuda_peak_memory_bound's 2·M²·4 + 2·inputs (torch's CPU
allocator with the kernels stubbed and GEMM outputs allocated as on the GPU): VICReg 2048×8192
151.3 of 167.8 MB, 16384×2048 285.3 of 302.0, Barlow 2048×8192 152.4 of 167.8, spectral
16384×256 34.0 of 34.1.

Loads are 2-D tiles with the block along the contiguous columns and masks only at tile edges:
16-byte vectors when D·itemsize is a multiple of 16, coalesced otherwise. Indices are int64 where
N·D can pass 2³¹; Python scalars reach kernels as float64 (``tl.float64``) arguments.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from .. import _checks
from .. import registry as _registry
from .._direct import Spec, apply, pick
from ._common import acc_dtype, interpreting, tl, triton, unavailable_reason
from ._common import device_guard as _device
from ._common import scalar as _scalar

if triton is None:  # pragma: no cover - import guard; functional.py checks availability first
    raise ImportError(unavailable_reason())

Tensor = torch.Tensor

__all__ = [
    "BarlowTwinsFunction",
    "CovarianceFunction",
    "CrossCorrelationFunction",
    "DualityTermsFunction",
    "NormalizedGramFunction",
    "SpectralContrastiveFunction",
    "VICRegFunction",
    "barlow_twins",
    "covariance",
    "cross_correlation",
    "duality_terms",
    "normalized_gram",
    "spectral",
    "vicreg",
]

L2_EPS = 1e-12  # torch.nn.functional.normalize's eps (SPEC "Notation")

# column pass modes / phases
_CENTER, _BN, _SQ = 0, 1, 2
_FUSED, _STATS, _APPLY = 0, 1, 2
_DIAG_NONE, _DIAG_SQ, _DIAG_DOT = 0, 1, 2
# row pass modes
_ROW_CLAMP, _ROW_L2, _ROW_SQ = 0, 1, 2
# prep sums
_SUM_NONE, _SUM_SQ, _SUM_PAIR = 0, 1, 2
# finalize / epilogue modes
_F_VICREG, _F_BARLOW, _F_SPECTRAL, _F_DUALITY = 0, 1, 2, 3
_E_VICREG, _E_DUALITY, _E_COV, _E_DUALITY_D = 0, 1, 2, 3  # _E_DUALITY: sample side
_E_MOMENTS, _E_MOMENTS_NOP = 4, 5  # gather_distributed's local moments (with / without P)
_R_SPECTRAL, _R_NGRAM, _R_CLAMP = 0, 1, 2
# how a GEMM result P' is turned into the true product (IDENT operands, module docstring)
_RS_NONE, _RS_ROW, _RS_COL = 0, 1, 2          # undo the fp16 power-of-two scales by row / column
_CORR_NONE, _CORR_OUTER, _CORR_COL = 0, 1, 2  # − w_i·mean_k (N×N side) / − u_k (D×D side)

# ============================================================================================
# JIT helpers


@triton.jit
def _pick(view, first, second):
    """``first`` for view 0, ``second`` for view 1."""
    r = first
    if view != 0:
        r = second
    return r


@triton.jit
def _clamp0(x):
    """max(x, 0) that keeps NaN (SPEC §6: NaN propagates as in the reference; Triton's maximum
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
    """BatchNorm's column scale 1/sqrt(m2/N + eps) (biased variance, SPEC §1), float64. Vector
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
    """A tile of the true product from the GEMM result P' (module docstring, backward operands):
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


# ============================================================================================
# Forward passes


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
    pid_d = tl.program_id(0)
    pid_c = tl.program_id(1)
    chunks = tl.num_programs(1)
    cols = pid_d * BD + tl.arange(0, BD)
    cmask = cols < D
    r_lo = pid_c * RPC
    r_hi = tl.minimum(r_lo + RPC, N)
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
            rows = r0 + tl.arange(0, BR)
            mask = (rows < r_hi)[:, None] & cmask[None, :]
            idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
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
            rows = r0 + tl.arange(0, BR)
            mask = (rows < r_hi)[:, None] & cmask[None, :]
            idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
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


@triton.jit
def _rowpass_kernel(z1_ptr, z2_ptr, x_ptr, info_ptr, pv_ptr, N, D, radius: tl.float64,
                    MODE: tl.constexpr, TWO: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Per block of BR rows (grid: row blocks): row norms in float64, then the scaled rows.

    _ROW_CLAMP (spectral, SPEC §4): t = 1 where ‖z‖ < sqrt(mu), else sqrt(mu)/‖z‖; x̃ = round(z·t);
      info[v] = ±t (negative: clamped, the projection applies), info[2] = p = a·b (exact), and
      pv = [p, p̃] float64 with p̃ = x̃1·x̃2 of the rounded rows (the D×D identity subtracts Σ p̃²).
    _ROW_L2 (l2n): r = 1/max(‖z‖, 1e-12), x̃ = round(z·r), info[v] = ±r (negative: ‖z‖ < eps, no
      projection, as torch's clamp_min backward).
    _ROW_SQ (duality): pv = ‖z_i‖² float64 only.
    Bytes: reads V·BR·D twice (the second time from L2), writes V·BR·D.
    """
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < N
    r64 = rows.to(tl.int64)
    nd = tl.cast(N, tl.int64) * D
    q11 = tl.zeros([BR], tl.float64)
    q22 = tl.zeros([BR], tl.float64)
    q12 = tl.zeros([BR], tl.float64)
    for c0 in range(0, D, BD):
        cols = c0 + tl.arange(0, BD)
        mask = rmask[:, None] & (cols < D)[None, :]
        idx = r64[:, None] * D + cols[None, :]
        a = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(tl.float64)
        q11 += tl.sum(a * a, axis=1)
        if TWO:
            b = tl.load(z2_ptr + idx, mask=mask, other=0.0).to(tl.float64)
            q22 += tl.sum(b * b, axis=1)
            q12 += tl.sum(a * b, axis=1)
    if MODE == 2:
        tl.store(pv_ptr + rows, q11, mask=rmask)
    else:
        T = x_ptr.dtype.element_ty
        ACC = info_ptr.dtype.element_ty
        eps = tl.full([BR], 1e-12, tl.float64)
        n1 = tl.sqrt(q11)
        n2 = tl.sqrt(q22)
        if MODE == 0:
            rad = _scalar(radius, tl.float64)
            k1 = n1 < rad
            k2 = n2 < rad
            t1 = tl.where(k1, 1.0, rad * tl.math.rsqrt(_floor(q11, eps * eps)))
            t2 = tl.where(k2, 1.0, rad * tl.math.rsqrt(_floor(q22, eps * eps)))
            p = t1 * t2 * q12
            f1 = n1 >= rad
            f2 = n2 >= rad
        else:
            t1 = tl.math.rsqrt(_floor(q11, eps * eps))  # 1/max(‖z‖, eps)
            t2 = tl.math.rsqrt(_floor(q22, eps * eps))
            f1 = n1 >= eps
            f2 = n2 >= eps
        a1 = t1.to(ACC)
        a2 = t2.to(ACC)
        # the sign carries the projection flag (spectral: clamped, negative; l2: ‖z‖ ≥ eps,
        # positive), so the backward needs one row per view
        if MODE == 1:
            i1 = tl.where(f1, a1, -a1)
            i2 = tl.where(f2, a2, -a2)
        else:
            i1 = tl.where(f1, -a1, a1)
            i2 = tl.where(f2, -a2, a2)
        tl.store(info_ptr + rows, i1, mask=rmask)
        if TWO:
            tl.store(info_ptr + N + rows, i2, mask=rmask)
        pt = tl.zeros([BR], tl.float64)
        for c0 in range(0, D, BD):
            cols = c0 + tl.arange(0, BD)
            mask = rmask[:, None] & (cols < D)[None, :]
            idx = r64[:, None] * D + cols[None, :]
            x1 = (tl.load(z1_ptr + idx, mask=mask, other=0.0).to(ACC) * a1[:, None]).to(T)
            tl.store(x_ptr + idx, x1, mask=mask)
            if TWO:
                x2 = (tl.load(z2_ptr + idx, mask=mask, other=0.0).to(ACC) * a2[:, None]).to(T)
                tl.store(x_ptr + nd + idx, x2, mask=mask)
                pt += tl.sum(x1.to(tl.float64) * x2.to(tl.float64), axis=1)
        if MODE == 0:
            tl.store(info_ptr + 2 * N + rows, p.to(ACC), mask=rmask)
            tl.store(pv_ptr + rows, p, mask=rmask)
            tl.store(pv_ptr + N + rows, pt, mask=rmask)


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
    correction of the epilogue (module docstring).
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
                a = a * tl.abs(tl.load(_pick(v, cm0_ptr, cm1_ptr) + cols, mask=cmask, other=0.0).to(tl.float32))[None, :]
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
                y = y * tl.abs(tl.load(_pick(v, cm0_ptr, cm1_ptr) + cols, mask=cmask, other=0.0).to(tl.float64))[None, :]
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
def _chunk_sum(ptr, k, kmask, nch, stride, BV: tl.constexpr):
    """Σ_c ptr[c·stride + k] over nch chunks, in chunk order."""
    acc = tl.zeros([BV], tl.float64)
    for c in range(0, nch):
        acc += tl.load(ptr + c * stride + k, mask=kmask, other=0.0)
    return acc


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
    """The loss and its terms in float64 on one program, rounded once (SPEC §2–4). Where the loss's
    off-diagonal sum is the Gram's own (NATIVE: same side) it is the sum of the off-diagonal squares
    directly; otherwise the full sum minus the other side's diagonal (SPEC §2), with that diagonal
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
                # relu written so that NaN propagates (SPEC §6), as torch's relu does
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
        tl.store(o0_ptr, loss.to(o0_ptr.dtype.element_ty))
        tl.store(o1_ptr, inv.to(o1_ptr.dtype.element_ty))
        tl.store(o2_ptr, var.to(o2_ptr.dtype.element_ty))
        tl.store(o3_ptr, cov.to(o3_ptr.dtype.element_ty))
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
        tl.store(o0_ptr, (on_s + _scalar(w0, tl.float64) * off_s).to(o0_ptr.dtype.element_ty))
        tl.store(o1_ptr, on_s.to(o1_ptr.dtype.element_ty))
        tl.store(o2_ptr, off_s.to(o2_ptr.dtype.element_ty))
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
        tl.store(o0_ptr, (pos + neg).to(o0_ptr.dtype.element_ty))
        tl.store(o1_ptr, pos.to(o1_ptr.dtype.element_ty))
        tl.store(o2_ptr, neg.to(o2_ptr.dtype.element_ty))
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
        tl.store(o0_ptr, lc.to(o0_ptr.dtype.element_ty))
        tl.store(o1_ptr, lnc.to(o1_ptr.dtype.element_ty))
        tl.store(o2_ptr, r4.to(o2_ptr.dtype.element_ty))
        tl.store(o3_ptr, c4.to(o3_ptr.dtype.element_ty))


# ============================================================================================
# Backward epilogues (after the cuBLAS product P' of each view)


@triton.jit
def _elem_bwd_kernel(p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr, mean_ptr, cv_ptr, rv_ptr,
                     rs_ptr, w_ptr, g0_ptr, g1_ptr, g2_ptr, g3_ptr, N, D, RPC, v0,
                     w_inv: tl.float64, w_var: tl.float64, w_cov: tl.float64,
                     gamma: tl.float64, eps: tl.float64,
                     MODE: tl.constexpr, RS: tl.constexpr, CORR: tl.constexpr,
                     BR: tl.constexpr, BD: tl.constexpr):
    """Elementwise epilogues over a stripe of BD columns × a chunk of RPC rows (grid: stripes,
    chunks, views in this launch; view = v0 + axis 2), P from ``_product``.
    _E_VICREG (SPEC §3), with a_t = g_loss·w_t + g_t (device scalars, no sync):
        dz = c_cov·P + x̃∘col_k ± (2a_inv/(N·D))·(z1 − z2),  P = G·x (N×N) or x·G (D×D),
        c_cov = 4a_cov/((N−1)²D), col_k = −a_var·[γ > std_k]/(2D(N−1)std_k) − c_cov·m2_k, and no
        centering Jacobian: every term is a combination of the centered x (its columns sum to 0).
    _E_DUALITY (SPEC §2), with P = G_off·z (sample side) or z·G_off (_E_DUALITY_D, dimension side),
        G_off = the Gram without its diagonal (zeroed in the forward): with the diagonal in the
        product it would cancel against r_i (or c_k) computed by another reduction, and two
        equal rows then left 3.5× eager's gradient error (hypothesis, 2026-11-30). Since
        (G·z)_ik = (G_off·z)_ik + r_i·z_ik and (z·G)_ik = (z·G_off)_ik + c_k·z_ik:
        sample:    dz = 4(g_Lc + g_Lnc)·P + 4z∘((g_r4 + g_Lnc)·r_i + (g_c4 − g_Lnc)·c_k);
        dimension: dz = 4(g_Lc + g_Lnc)·P + 4z∘((g_r4 − g_Lc)·r_i + (g_c4 + g_Lc)·c_k).
    _E_COV: dz = P (the 1/(N − correction) is in the operand).
    _E_MOMENTS (the local moments of ``moments``, SPEC §5), with mean = mean_ptr (float64), g_mean =
        rv_ptr, g_m2 = cv_ptr ((2, D) float64) and g_inv = g1:
        dz = P ± (2g_inv/(N·D))·(z1 − z2) + g_mean_k/N + 2g_m2_k·(z − mean_k); no centering
        Jacobian (every term but g_mean's sums to 0 over the rows). _E_MOMENTS_NOP: without P.
    Bytes per view: P (4 B) + z1, z2 (VICReg) or z read + dz written per element.
    """
    pid_d = tl.program_id(0)
    pid_c = tl.program_id(1)
    lv = tl.program_id(2)
    v = v0 + lv
    p_ptr = _pick(lv, p0_ptr, p1_ptr)
    dz_ptr = _pick(v, dz0_ptr, dz1_ptr)
    T = dz0_ptr.dtype.element_ty
    ACC = p0_ptr.dtype.element_ty
    cols = pid_d * BD + tl.arange(0, BD)
    cmask = cols < D
    r_lo = pid_c * RPC
    r_hi = tl.minimum(r_lo + RPC, N)
    nf = tl.cast(N, tl.float64)
    df = tl.cast(D, tl.float64)
    rsv, wv = _view_vectors(rs_ptr, w_ptr, v, N, D, RS, CORR)
    meanv = mean_ptr + v * D
    gl = tl.load(g0_ptr).to(tl.float64)
    if MODE == 0:
        a_inv = gl * _scalar(w_inv, tl.float64) + tl.load(g1_ptr).to(tl.float64)
        a_var = gl * _scalar(w_var, tl.float64) + tl.load(g2_ptr).to(tl.float64)
        a_cov = gl * _scalar(w_cov, tl.float64) + tl.load(g3_ptr).to(tl.float64)
        # the scalar float64 divisions (subroutine calls on sm_90) before any vector is loaded: with
        # the columns' vectors live across them, triton 3.6's fp32 variant spilled 8 B
        nm1 = nf - 1.0
        inv_nm1 = 1.0 / nm1
        c_cov = 4.0 * a_cov / (nm1 * nm1 * df)
        c_var = -a_var / (2.0 * df * nm1)
        ci = ((1.0 - 2.0 * v) * 2.0 * a_inv / (nf * df)).to(ACC)
        m2 = tl.load(cv_ptr + v * D + cols, mask=cmask, other=0.0)
        var = m2 * inv_nm1 + _scalar(eps, tl.float64)
        col = tl.where(_scalar(gamma, tl.float64) - _sqrt64(var) > 0, c_var * tl.math.rsqrt(var), 0.0) \
            - c_cov * m2
        col = col.to(ACC)
        cc = c_cov.to(ACC)
        mean = tl.load(meanv + cols, mask=cmask, other=0.0)
    if MODE == 1 or MODE == 3:
        gnc = tl.load(g1_ptr).to(tl.float64)
        a_fro = (4.0 * (gl + gnc)).to(ACC)
        if MODE == 1:
            a_r = 4.0 * (tl.load(g2_ptr).to(tl.float64) + gnc)
            a_c = 4.0 * (tl.load(g3_ptr).to(tl.float64) - gnc)
        else:
            a_r = 4.0 * (tl.load(g2_ptr).to(tl.float64) - gl)
            a_c = 4.0 * (tl.load(g3_ptr).to(tl.float64) + gl)
        ck = (a_c * tl.load(cv_ptr + cols, mask=cmask, other=0.0)).to(ACC)
    if MODE == 4 or MODE == 5:
        ci = ((1.0 - 2.0 * v) * 2.0 * tl.load(g1_ptr).to(tl.float64) / (nf * df)).to(ACC)
        ca = tl.load(rv_ptr + v * D + cols, mask=cmask, other=0.0) * (1.0 / nf)
        cb = 2.0 * tl.load(cv_ptr + v * D + cols, mask=cmask, other=0.0)
        mean = tl.load(meanv + cols, mask=cmask, other=0.0)
    for r0 in range(r_lo, r_hi, BR):
        rows = r0 + tl.arange(0, BR)
        rmask = rows < r_hi
        mask = rmask[:, None] & cmask[None, :]
        idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
        if MODE != 5:
            p = _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rsv, wv, meanv, RS, CORR)
        if MODE == 0:
            a = tl.load(z1_ptr + idx, mask=mask, other=0.0)
            b = tl.load(z2_ptr + idx, mask=mask, other=0.0)
            x = _operand(_pick(v, a, b), mean[None, :], 1.0, T).to(ACC)
            dz = cc * p + x * col[None, :] + ci * (a.to(ACC) - b.to(ACC))
        if MODE == 1 or MODE == 3:
            z = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(ACC)
            ri = (a_r * tl.load(rv_ptr + rows, mask=rmask, other=0.0)).to(ACC)
            dz = a_fro * p + z * (ri[:, None] + ck[None, :])
        if MODE == 2:
            dz = p
        if MODE == 4 or MODE == 5:
            a = tl.load(z1_ptr + idx, mask=mask, other=0.0)
            b = tl.load(z2_ptr + idx, mask=mask, other=0.0)
            zv = _pick(v, a, b).to(tl.float64)
            dz = (ca[None, :] + cb[None, :] * (zv - mean[None, :])).to(ACC) + ci * (a.to(ACC) - b.to(ACC))
            if MODE == 4:
                dz = dz + p
        tl.store(dz_ptr + idx, dz.to(T), mask=mask)


@triton.jit
def _bn_tile(r0, r_hi, cols, cmask, D, p_ptr, zs, zo, meanp, mean_s, s_s, mean_o, s_o, alpha, beta,
             rsv, wv, RS: tl.constexpr, CORR: tl.constexpr, POST: tl.constexpr, T: tl.constexpr,
             BR: tl.constexpr):
    """Rows [r0, r0 + BR) of ``_bn_bwd_kernel``'s stripe: (idx, mask, da, ã), float64."""
    rows = r0 + tl.arange(0, BR)
    rmask = rows < r_hi
    mask = rmask[:, None] & cmask[None, :]
    idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
    p = _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rsv, wv, meanp, RS, CORR).to(tl.float64)
    if POST:
        p = p * s_s[None, :]
    o = _operand(tl.load(zo + idx, mask=mask, other=0.0), mean_o[None, :], s_o[None, :], T)
    a = _operand(tl.load(zs + idx, mask=mask, other=0.0), mean_s[None, :], s_s[None, :], T)
    return idx, mask, alpha * p + beta[None, :] * o.to(tl.float64), a.to(tl.float64)


@triton.jit
def _bn_bwd_kernel(p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr, mean_ptr, m2_ptr, dv_ptr,
                   rs_ptr, w_ptr, g0_ptr, g1_ptr, g2_ptr, part_ptr, N, D, RPC, v0,
                   lam: tl.float64, eps: tl.float64,
                   BARLOW: tl.constexpr, RS: tl.constexpr, CORR: tl.constexpr, POST: tl.constexpr,
                   PHASE: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Backward through C = aᵀb/N with a, b BatchNorm-standardized (SPEC §1), float64 like the CUDA
    backend's (the result is a residual that cancels when da ∥ a: N = 2, or a ≈ b). Grid: stripes,
    chunks, views in this launch (view 0: self a, other b → dz1; view 1 the reverse).
        da = α·P + β_k·b̃,  dz = s∘(da − mean_i da − (ã − mean_i ã)∘mean_i(da∘ã)),
    ã, b̃ the forward's rounded operands (``_operand``), s = 1/sqrt(var_b + eps).
    cross_correlation: α = 1/N, β = 0, P = b·Goutᵀ / a·Gout. Barlow (SPEC §3): α = 2a_off/N²,
    β_k = (−2a_on(1 − d_k) − 2a_off·d_k)/N, d = C_kk, a_on = g_loss + g_on, a_off = λg_loss + g_off,
    P = (b bᵀ)·a (N×N) or b·(aᵀb)ᵀ (D×D). POST: P'' ∘ s_self (the N×N side's IDENT operand is z).
    _STATS-like PHASE 1 writes per-chunk sums of da, da∘ã, ã into part[(lv, 3, chunk, D)]; PHASE 2
    adds them in chunk order and writes dz; PHASE 0 does both in one program per stripe.
    Bytes per view: P (4 B) + z1, z2 read twice, dz written once per element.
    """
    pid_d = tl.program_id(0)
    pid_c = tl.program_id(1)
    lv = tl.program_id(2)
    chunks = tl.num_programs(1)
    v = v0 + lv
    p_ptr = _pick(lv, p0_ptr, p1_ptr)
    dz_ptr = _pick(v, dz0_ptr, dz1_ptr)
    zs = _pick(v, z1_ptr, z2_ptr)
    zo = _pick(v, z2_ptr, z1_ptr)
    T = dz0_ptr.dtype.element_ty
    cols = pid_d * BD + tl.arange(0, BD)
    cmask = cols < D
    r_lo = pid_c * RPC
    r_hi = tl.minimum(r_lo + RPC, N)
    nf = tl.cast(N, tl.float64)
    inv_n = 1.0 / nf
    e64 = _scalar(eps, tl.float64)
    rsv, wv = _view_vectors(rs_ptr, w_ptr, v, N, D, RS, CORR)
    mean_s = tl.load(mean_ptr + v * D + cols, mask=cmask, other=0.0)
    mean_o = tl.load(mean_ptr + (1 - v) * D + cols, mask=cmask, other=0.0)
    s_s = _bn_inv(tl.load(m2_ptr + v * D + cols, mask=cmask, other=0.0), inv_n, e64)
    s_o = _bn_inv(tl.load(m2_ptr + (1 - v) * D + cols, mask=cmask, other=0.0), inv_n, e64)
    if BARLOW:
        gl = tl.load(g0_ptr).to(tl.float64)
        a_on = gl + tl.load(g1_ptr).to(tl.float64)
        a_off = gl * _scalar(lam, tl.float64) + tl.load(g2_ptr).to(tl.float64)
        d = tl.load(dv_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
        alpha = 2.0 * a_off * inv_n * inv_n
        beta = (-2.0 * a_on * (1.0 - d) - 2.0 * a_off * d) * inv_n
    else:
        alpha = inv_n
        beta = tl.zeros([BD], tl.float64)
    sbase = part_ptr + (lv * 3 * chunks).to(tl.int64) * D + cols
    if PHASE != 2:
        t1 = tl.zeros([BD], tl.float64)
        t2 = tl.zeros([BD], tl.float64)
        t3 = tl.zeros([BD], tl.float64)
        for r0 in range(r_lo, r_hi, BR):
            idx, mask, da, a = _bn_tile(r0, r_hi, cols, cmask, D, p_ptr, zs, zo, mean_ptr + v * D,
                                        mean_s, s_s, mean_o, s_o, alpha, beta, rsv, wv,
                                        RS, CORR, POST, T, BR)
            # padding is not 0 after centering: masked out of the sums
            da = tl.where(mask, da, 0.0)
            a = tl.where(mask, a, 0.0)
            t1 += tl.sum(da, axis=0)
            t2 += tl.sum(da * a, axis=0)
            t3 += tl.sum(a, axis=0)
        if PHASE == 1:
            tl.store(sbase + pid_c * D, t1, mask=cmask)
            tl.store(sbase + (chunks + pid_c) * D, t2, mask=cmask)
            tl.store(sbase + (2 * chunks + pid_c) * D, t3, mask=cmask)
    if PHASE != 1:
        if PHASE == 2:
            t1 = _chunk_sum(sbase, 0, cmask, chunks, D, BD)
            t2 = _chunk_sum(sbase + chunks * D, 0, cmask, chunks, D, BD)
            t3 = _chunk_sum(sbase + 2 * chunks * D, 0, cmask, chunks, D, BD)
        m_da = t1 * inv_n
        m_daa = t2 * inv_n
        m_a = t3 * inv_n
        for r0 in range(r_lo, r_hi, BR):
            idx, mask, da, a = _bn_tile(r0, r_hi, cols, cmask, D, p_ptr, zs, zo, mean_ptr + v * D,
                                        mean_s, s_s, mean_o, s_o, alpha, beta, rsv, wv,
                                        RS, CORR, POST, T, BR)
            dz = s_s[None, :] * (da - m_da[None, :] - (a - m_a[None, :]) * m_daa[None, :])
            tl.store(dz_ptr + idx, dz.to(T), mask=mask)


@triton.jit
def _row_tile(c0, rows, rmask, D, p_ptr, zs, zo, t_s, t_o, e, k2, rsv, MODE: tl.constexpr,
              RS: tl.constexpr, POST: tl.constexpr, T: tl.constexpr, ACC: tl.constexpr,
              BD: tl.constexpr):
    """Columns [c0, c0 + BD) of ``_row_bwd_kernel``'s rows: (idx, mask, da, ã) in ACC."""
    cols = c0 + tl.arange(0, BD)
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
    da = _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rsv, rsv, rsv, RS, 0)
    if POST:
        da = da * t_s[:, None]
    a = (tl.load(zs + idx, mask=mask, other=0.0).to(ACC) * t_s[:, None]).to(T)
    if MODE == 0 or MODE == 2:
        o = (tl.load(zo + idx, mask=mask, other=0.0).to(ACC) * t_o[:, None]).to(T)
        da = k2 * da + e[:, None] * o.to(ACC)
    return idx, mask, da, a.to(ACC)


@triton.jit
def _row_bwd_kernel(p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr, info_ptr, rs_ptr,
                    g0_ptr, g1_ptr, g2_ptr, N, D, v0, mu: tl.float64,
                    MODE: tl.constexpr, RS: tl.constexpr, POST: tl.constexpr,
                    BR: tl.constexpr, BD: tl.constexpr):
    """Row epilogues over a block of BR rows (grid: row blocks, views in this launch): a row dot,
    then the projection; P from ``_product`` (POST: times the row's clamp t, D×D side IDENT).
    _R_SPECTRAL (SPEC §4), a = t∘z1 / b = t∘z2 the clamped rows: with a_pos = g_loss + g_pos,
        a_neg = g_loss + g_neg, κ = a_neg/(N(N−1)mu), e_i = −2a_pos/(N·mu) − 2κ·p_i,
        da = 2κ·P + e∘b̃ (P = S·b or a·(bᵀb)),  dz_i = t_i·(da_i − proj_i·ã_i·(ã_i·da_i)),
        proj = 1/mu on clamped rows.
    _R_NGRAM (l2n): dz_i = r_i·(dn_i − f_i·ñ_i·(ñ_i·dn_i)), dn = P = Gout·n2 (Goutᵀ·n1).
    _R_CLAMP (``spectral_rows``, SPEC §5): as _R_SPECTRAL with da = P + e_i·b̃, P the upstream
        gradient of the clamped rows and e = g0 a per-row vector (the upstream gradient of p_i).
    Bytes per view: P (4 B) + z (+ the other view for spectral) read twice, dz written once.
    """
    rb = tl.program_id(0)
    lv = tl.program_id(1)
    v = v0 + lv
    p_ptr = _pick(lv, p0_ptr, p1_ptr)
    dz_ptr = _pick(v, dz0_ptr, dz1_ptr)
    zs = _pick(v, z1_ptr, z2_ptr)
    zo = _pick(v, z2_ptr, z1_ptr)
    T = dz0_ptr.dtype.element_ty
    ACC = p0_ptr.dtype.element_ty
    rows = rb * BR + tl.arange(0, BR)
    rmask = rows < N
    nf = tl.cast(N, tl.float64)
    ts = tl.load(info_ptr + v * N + rows, mask=rmask, other=1.0)
    t_s = tl.abs(ts)
    rsv, _ = _view_vectors(rs_ptr, rs_ptr, v, N, D, RS, 0)
    if MODE == 2:
        mu_ = _scalar(mu, tl.float64)
        t_o = tl.abs(tl.load(info_ptr + (1 - v) * N + rows, mask=rmask, other=1.0))
        e = tl.load(g0_ptr + rows, mask=rmask, other=0.0).to(ACC)
        k2 = 1.0
        proj = tl.where(ts < 0, 1.0 / mu_, 0.0)
    elif MODE == 0:
        mu_ = _scalar(mu, tl.float64)
        t_o = tl.abs(tl.load(info_ptr + (1 - v) * N + rows, mask=rmask, other=1.0))
        p = tl.load(info_ptr + 2 * N + rows, mask=rmask, other=0.0).to(tl.float64)
        gl = tl.load(g0_ptr).to(tl.float64)
        a_pos = gl + tl.load(g1_ptr).to(tl.float64)
        a_neg = gl + tl.load(g2_ptr).to(tl.float64)
        kappa = a_neg / (nf * (nf - 1.0) * mu_)
        e = (-2.0 * a_pos / (nf * mu_) - 2.0 * kappa * p).to(ACC)
        k2 = (2.0 * kappa).to(ACC)
        proj = tl.where(ts < 0, 1.0 / mu_, 0.0)
    else:
        proj = tl.where(ts > 0, 1.0, 0.0)
        t_o = t_s
        e = tl.zeros([BR], ACC)
        k2 = 1.0
    # The projection ã(ã·da)/‖ã‖² (= proj·ã(ã·da): ‖ã‖² is 1 / mu on projected rows), divided by
    # the rounded row's own ‖ã‖² and subtracted in float64: with proj·ã(ã·da), ã = z·(1/‖z‖)
    # rounded, a one-column row's gradient (0 in exact arithmetic) came out ~2 ulp·|da|/‖z‖
    # (8.9e-6 at ‖z‖ = 0.027, test_properties' FOUND), eager's 0.
    dot = tl.zeros([BR], tl.float64)
    ss = tl.zeros([BR], tl.float64)
    for c0 in range(0, D, BD):
        idx, mask, da, a = _row_tile(c0, rows, rmask, D, p_ptr, zs, zo, t_s, t_o, e, k2, rsv,
                                     MODE, RS, POST, T, ACC, BD)
        a64 = a.to(tl.float64)
        dot += tl.sum(a64 * da.to(tl.float64), axis=1)
        ss += tl.sum(a64 * a64, axis=1)
    q = tl.where((proj != 0) & (ss > 0), dot / tl.where(ss > 0, ss, 1.0), 0.0)
    t64 = t_s.to(tl.float64)
    for c0 in range(0, D, BD):
        idx, mask, da, a = _row_tile(c0, rows, rmask, D, p_ptr, zs, zo, t_s, t_o, e, k2, rsv,
                                     MODE, RS, POST, T, ACC, BD)
        dz = t64[:, None] * (da.to(tl.float64) - q[:, None] * a.to(tl.float64))
        tl.store(dz_ptr + idx, dz.to(T), mask=mask)


# ============================================================================================
# Launch plans


class _Plan(NamedTuple):
    """What a dtype's ops do (the fakes use it too, so it depends on the dtype only; DESIGN 3)."""
    ident: bool    # backward products on the raw input z, operands in the input dtype (bf16/fp16)
    scale: bool    # fp16: power-of-two row scales on the M×M operands (no overflow)
    wide: bool     # fp32 under "highest": the summed Grams from a float64 GEMM
    acc: torch.dtype


# Test hooks (tests/test_triton_gram.py): "ident" runs fp32/fp64 through the bf16/fp16 plan, "scale"
# adds fp16's row scales to it, "chunks" forces the chunked column pass, "split" one backward
# epilogue per view, "unfused" the finalize as its own launch. Empty in normal use.
_OVERRIDES: Dict[str, object] = {}


def _plan(z: Tensor) -> _Plan:
    low = z.dtype in (torch.bfloat16, torch.float16)
    ident = low or bool(_OVERRIDES.get("ident"))
    scale = z.dtype == torch.float16 or (ident and bool(_OVERRIDES.get("scale")))
    wide = z.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    return _Plan(ident, scale, wide, acc_dtype(z.dtype))


class _Blocks(NamedTuple):
    col: Tuple[int, int]    # (BR, BD) of the column-stripe kernels
    bn: Tuple[int, int]     # (BR, BD) of _bn_bwd_kernel (float64 tiles)
    row: Tuple[int, int]    # (BR, BD) of the row kernels
    prep: Tuple[int, int]   # (BR, BC) of _prep_kernel
    fin: int                # vector block of the one-program finalize


def _blocks(dtype: torch.dtype) -> _Blocks:
    if interpreting():
        # small tiles: several stripes, row blocks and chunks at the test sizes (17, 31, 33, 48)
        return _Blocks((8, 16), (8, 16), (8, 16), (8, 16), 64)
    # GPU (unmeasured, untested on GPU): 4 warps; a [16, 64] tile is 8 elements (16 B of bf16) per
    # thread, 128-byte row segments; float64 tiles half as tall (register budget of the fp64 math)
    br = 8 if dtype == torch.float64 else 16
    return _Blocks((br, 64), (8, 64), (8, 128), (8, 128), 256)


_SMS = 132                 # H200
_FUSED_MAX = 1 << 20       # N·D at or below which one program per stripe does a column pass
_SPLIT_BYTES = 8 << 20     # bf16/fp16: one fp32 product (and epilogue) per view above this
_WARPS = 4


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _chunks(n: int, d: int, br: int, bd: int, fuse: bool = True) -> Tuple[int, int]:
    """(rows per chunk, chunks) of a column-stripe kernel. ``fuse`` (the column pass and the
    BatchNorm backward, where one chunk saves launches): one chunk when the problem is small
    (launch-bound: one launch instead of three) or the stripes alone fill two waves of 132 SMs.
    Otherwise about four waves of (stripe, chunk) programs, at least 128 rows each."""
    stripes = _cdiv(d, bd)
    forced = _OVERRIDES.get("chunks")
    if forced:
        want = int(forced)
    elif interpreting():
        want = 2 if n >= 2 * br else 1
    elif fuse and (n * d <= _FUSED_MAX or stripes >= 2 * _SMS):
        want = 1
    else:
        want = max(1, min(_cdiv(4 * _SMS, stripes), _cdiv(n, 128)))
    rpc = _cdiv(_cdiv(n, want), br) * br
    return rpc, _cdiv(n, rpc)


def _groups(pl: _Plan, n: int, d: int) -> List[Tuple[int, ...]]:
    """Views per backward epilogue launch: both, unless their fp32 products would not fit the
    memory bound (bf16/fp16 products live in a temporary; fp32/fp64 ones in the gradients)."""
    if pl.ident and (_OVERRIDES.get("split") or 2 * n * d * 4 > _SPLIT_BYTES):
        return [(0,), (1,)]
    return [(0, 1)]


_DUMMIES: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}


def _dummy(like: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """A placeholder for a pointer argument a kernel variant never touches (cached: no allocation
    per call)."""
    key = (like.device, dtype)
    t = _DUMMIES.get(key)
    if t is None:
        t = _DUMMIES[key] = torch.empty((1,), dtype=dtype, device=like.device)
    return t


_MM_DTYPE = "dtype" in torch.ops.aten.mm.overloads() and "dtype" in torch.ops.aten.bmm.overloads()


def _mm(a: Tensor, b: Tensor, out: Optional[Tensor] = None, wide: bool = False) -> Tensor:
    """a @ b (2-D, or batched 3-D) by cuBLAS with an fp32 (fp64) result. bf16/fp16 operands keep
    tensor cores with an fp32 result (``mm``/``bmm`` with ``out_dtype``, torch >= 2.8/2.9 on CUDA;
    an fp32 upcast elsewhere: CPU, older torch). ``wide``: a float64 GEMM (fp32 "highest" sums)."""
    f = torch.bmm if a.dim() == 3 else torch.mm
    if wide:
        return f(a.double(), b.double())
    if a.dtype in (torch.float32, torch.float64):
        return f(a, b) if out is None else f(a, b, out=out)
    if a.is_cuda and _MM_DTYPE:
        return f(a, b, out_dtype=torch.float32)
    return f(a.float(), b.float())


# ============================================================================================
# Launchers


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
    br, bd = _blocks(z1.dtype).col
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


def _rowpass(z1: Tensor, z2: Optional[Tensor], mode: int, acc: torch.dtype, radius: float = 0.0):
    """-> (x (V, N, D) or None, info (rows, N) acc, pv float64: [p, p̃] (2, N) or ‖z_i‖² (N))."""
    n, d = z1.shape
    two = z2 is not None
    br, bd = _blocks(z1.dtype).row
    dev = z1.device
    x = _dummy(z1, z1.dtype)
    info = _dummy(z1, acc)
    pv = _dummy(z1)
    if mode == _ROW_SQ:
        pv = torch.empty((n,), dtype=torch.float64, device=dev)
    else:
        x = torch.empty((2 if two else 1, n, d), dtype=z1.dtype, device=dev)
        info = torch.empty((3 if mode == _ROW_CLAMP else (2 if two else 1), n), dtype=acc, device=dev)
        if mode == _ROW_CLAMP:
            pv = torch.empty((2, n), dtype=torch.float64, device=dev)
    _rowpass_kernel[(_cdiv(n, br),)](z1, z2 if two else z1, x, info, pv, n, d, float(radius),
                                     MODE=mode, TWO=two, BR=br, BD=bd, num_warps=_WARPS)
    return (None if mode == _ROW_SQ else x), info, pv


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
    bl = _blocks(like.dtype)
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
        fflags = dict(MODE=fin.mode, NATIVE=fin.native, BV=bl.fin)
    else:
        fargs = (dm,) * 8 + (1, 1, 1) + (0.0,) * 5
        fflags = dict(MODE=0, NATIVE=False, BV=bl.fin)
    limit = (1 << 10) if interpreting() else _FINAL_MAX
    final = fin is not None and views * m * m <= limit and not _OVERRIDES.get("unfused")
    _prep_kernel[(1, 1) if final else (nrb, views)](
        src0, src1, s00, s01, s10, s11, pair if pair is not None else dm, cm[0], cm[-1],
        vv[0], vv[-1], float(alpha), o, rs if scale else _dummy(like, torch.float32),
        w if vec else _dummy(like, torch.float32), part, m, nrb, *fargs,
        SUMS=sums, SUMV=sumv, WRITE=write, SYM=sym, COLMUL=colmuls is not None, VEC=vec,
        SCALE=scale, BR=br, BC=bc, FINAL=final, VIEWS=views,
        **(fflags if final else dict(MODE=0, NATIVE=False, BV=bl.fin)), num_warps=_WARPS)
    if fin is not None and not final:
        _finalize_kernel[(1,)](part, nrb, *fargs, **fflags, num_warps=_WARPS)
    return _Prep(o if write else None, rs, w, res)


_ZEROS: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}


def _grads(like: Tensor, dtype: torch.dtype, gs, cached: bool) -> List[Tensor]:
    """Incoming 0-dim gradients in ``dtype``, a zero for each unused output (None). ``cached``
    (eager calls): one read-only zero per device and dtype, kept, so no fill launch per call;
    traced backwards create theirs (a kept tensor would become a graph constant)."""
    zero = None
    out = []
    for g in gs:
        if g is None:
            if zero is None:
                key = (like.device, dtype)
                zero = _ZEROS.get(key) if cached else None
                if zero is None:
                    zero = torch.zeros((), dtype=dtype, device=like.device)
                    # not from inside a CUDA graph capture: its fill would run only on replay
                    if cached and not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
                        _ZEROS[key] = zero
            out.append(zero)
        else:
            out.append(g.to(dtype).contiguous())
    return out


def _elem_bwd(mode, ps, group, dz, z1, z2, *, mean=None, cv=None, rv=None, rs=None, w=None,
              gs=(), rsm=_RS_NONE, corr=_CORR_NONE, weights=()):
    n, d = z1.shape
    br, bd = _blocks(z1.dtype).col
    rpc, chunks = _chunks(n, d, br, bd, fuse=False)
    dm = _dummy(z1)
    g = list(gs) + [gs[0]] * (4 - len(gs)) if gs else [dm] * 4
    wts = [float(x) for x in weights] + [0.0] * (5 - len(weights))
    _elem_bwd_kernel[(_cdiv(d, bd), chunks, len(group))](
        ps[0], ps[-1], dz[0], dz[-1], z1, z2, dm if mean is None else mean, dm if cv is None else cv,
        dm if rv is None else rv, rs if rsm else dm, w if corr else dm, *g, n, d, rpc, group[0], *wts,
        MODE=mode, RS=rsm, CORR=corr, BR=br, BD=bd, num_warps=_WARPS)


def _bn_bwd(ps, group, dz, z1, z2, mean, m2, eps, *, dv=None, gs=(), lam=0.0, rs=None, w=None,
            rsm=_RS_NONE, corr=_CORR_NONE, post=False):
    n, d = z1.shape
    br, bd = _blocks(z1.dtype).bn
    rpc, chunks = _chunks(n, d, br, bd)
    dm = _dummy(z1)
    g = list(gs) if gs else [dm] * 3
    grid = (_cdiv(d, bd), chunks, len(group))
    args = (ps[0], ps[-1], dz[0], dz[-1], z1, z2, mean, m2, dm if dv is None else dv,
            rs if rsm else dm, w if corr else dm, *g)
    flags = dict(BARLOW=dv is not None, RS=rsm, CORR=corr, POST=post, BR=br, BD=bd,
                 num_warps=_WARPS)
    if chunks == 1:
        _bn_bwd_kernel[grid](*args, dm, n, d, rpc, group[0], float(lam), float(eps), PHASE=_FUSED,
                             **flags)
    else:
        part = torch.empty((len(group), 3, chunks, d), dtype=torch.float64, device=z1.device)
        for phase in (_STATS, _APPLY):
            _bn_bwd_kernel[grid](*args, part, n, d, rpc, group[0], float(lam), float(eps),
                                 PHASE=phase, **flags)


def _row_bwd(mode, ps, group, dz, z1, z2, info, *, rs=None, gs=(), mu=1.0, rsm=_RS_NONE,
             post=False):
    n, d = z1.shape
    br, bd = _blocks(z1.dtype).row
    dm = _dummy(z1)
    g = list(gs) if gs else [dm] * 3
    _row_bwd_kernel[(_cdiv(n, br), len(group))](
        ps[0], ps[-1], dz[0], dz[-1], z1, z2, info, rs if rsm else dm, *g, n, d, group[0],
        float(mu), MODE=mode, RS=rsm, POST=post, BR=br, BD=bd, num_warps=_WARPS)


def _new(z: Tensor) -> Tensor:
    """A contiguous tensor like z (the gradients, and the fp32/fp64 products written into them)."""
    return torch.empty(z.shape, dtype=z.dtype, device=z.device)


def _none(z: Tensor, dtype=torch.float32) -> Tensor:
    return torch.empty((0,), dtype=dtype, device=z.device)


def _rm(m: int):
    """Row-major strides of an M×M matrix, and its transpose's."""
    return (m, 1), (1, m)


def _e(z: Tensor, shape, dtype=None) -> Tensor:
    return z.new_empty(shape, dtype=z.dtype if dtype is None else dtype)


def _fake_saved(z: Tensor, pl: _Plan, m: int, views: int, full_views: int, x_views: int, vec: bool):
    """Fakes of (x, gram, rs, w) as the forward ops save them (see each op's impl)."""
    n, d = z.shape
    x = _e(z, (0,)) if pl.ident else _e(z, (x_views, n, d))
    gram = _e(z, (views, m, m)) if pl.ident else _e(z, (full_views, m, m), pl.acc)
    rs = _e(z, (views, m) if pl.scale else (0,), torch.float32)
    w = _e(z, (views, m) if (pl.ident and vec) else (0,), torch.float32)
    return x, gram, rs, w


def _scalars(z: Tensor, pl: _Plan, k: int) -> List[Tensor]:
    return [_e(z, (), pl.acc) for _ in range(k)]


def _rs_mode(pl: _Plan, sample: bool) -> int:
    if not pl.scale:
        return _RS_NONE
    return _RS_ROW if sample else _RS_COL


# ============================================================================================
# The ops (DESIGN conventions 1–3): duality_kernels::<op>_fwd / _bwd custom ops with fakes; the
# forward's registered autograd saves the tensor inputs and the forward's outputs past the results,
# and calls the backward op with them, the incoming gradients and the non-tensor inputs.


def _register(name: str, fwd_impl, fwd_fake, bwd_impl, bwd_fake, nz: int, nres: int,
              scalar: bool) -> Spec:
    """Registers ``duality_kernels::<name>_fwd`` / ``_bwd`` and returns the op's Spec (ops/_direct.py).
    nz: leading tensor inputs (None allowed: normalized_gram's z2); nres: results returned to the
    caller (the rest is saved for the backward); scalar: the results are 0-dim (their gradients
    arrive as 0-dim tensors, or None when unused) rather than one matrix."""
    # the custom op checks its arguments as the public function does (ops/_checks.py, issue 15);
    # the eager path of the public functions (already validated) calls fwd_impl directly
    fwd = torch.library.custom_op(f"duality_kernels::{name}_fwd", mutates_args=())(
        _checks.checked(getattr(_checks, name), "triton", fwd_impl))
    fwd.register_fake(fwd_fake)
    bwd = torch.library.custom_op(f"duality_kernels::{name}_bwd", mutates_args=())(bwd_impl)
    bwd.register_fake(bwd_fake)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:nz], *output[nres:])
        ctx.args = tuple(inputs[nz:])

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        none = (None,) * (nz + len(ctx.args))
        if scalar:
            gs = _grads(saved[0], acc_dtype(saved[0].dtype), grads[:nres], getattr(ctx, "direct", False))
        elif grads[0] is None:
            return none
        else:
            gs = [grads[0]]
        dz = pick(ctx, bwd, bwd_impl)(*saved, *gs, *ctx.args)
        dz = (dz,) if isinstance(dz, Tensor) else tuple(dz)
        return dz + none[len(dz):]

    fwd.register_autograd(backward, setup_context=setup)
    return Spec(fwd, fwd_impl, setup, backward, nres)


def _bwd_fake2(z1, z2, *_args):
    return _new(z1), _new(z2)


# ============================================================================================
# VICReg (SPEC §3)


def _vicreg_fwd_impl(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                     gamma: float, eps: float, side: str
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, invariance, variance, covariance, x, gram, rs, w, mean, m2): x = the centered views
    (2, N, D) and gram = the fp32 Grams (2, M, M) for fp32/fp64; for bf16/fp16 x is empty and gram
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
            gram = g.float() if pl.wide else g
    return (*pr.outs, x, gram, pr.rs, pr.w, cols.mean, cols.m2)


def _vicreg_fwd_fake(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side):
    pl = _plan(z1)
    n, d = z1.shape
    m = n if side == "sample" else d
    return (*_scalars(z1, pl, 4), *_fake_saved(z1, pl, m, 2, 2, 2, True),
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
        if not pl.ident:  # products straight into the gradients; the epilogue rewrites them
            for v in (0, 1):
                _mm(gram[v], x[v], out=dz[v]) if sample else _mm(x[v], gram[v], out=dz[v])
            _elem_bwd(_E_VICREG, dz, (0, 1), dz, z1, z2, **kw)
        else:
            zs = (z1, z2)
            for group in _groups(pl, n, d):
                ps = [_mm(gram[v], zs[v]) if sample else _mm(zs[v], gram[v].t()) for v in group]
                _elem_bwd(_E_VICREG, ps, group, dz, z1, z2, rsm=_rs_mode(pl, sample),
                          corr=_CORR_OUTER if sample else _CORR_COL, **kw)
                del ps  # one fp32 product alive at a time (the memory bound)
    return dz


_SPEC_VICREG = _register("vicreg", _vicreg_fwd_impl, _vicreg_fwd_fake, _vicreg_bwd_impl,
                         _bwd_fake2, 2, 4, True)


def vicreg(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
           gamma: float, eps: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SPEC §3 VICReg: (loss, {"invariance", "variance", "covariance"})."""
    loss, inv, var, cov, *_ = apply(_SPEC_VICREG, z1.contiguous(), z2.contiguous(), float(inv_weight),
                                    float(var_weight), float(cov_weight), float(gamma), float(eps), side)
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


# ============================================================================================
# Barlow Twins (SPEC §3)


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
        if sample:  # ‖aᵀb‖² = ⟨a aᵀ, b bᵀ⟩ (SPEC §2); view 0's operand is b bᵀ (applied to a)
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
                               _bwd_fake2, 2, 3, True)


def barlow_twins(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                 ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SPEC §3 Barlow Twins: (loss, {"on_diagonal", "off_diagonal"})."""
    loss, on, off, *_ = apply(_SPEC_BARLOW_TWINS, z1.contiguous(), z2.contiguous(),
                              float(lambda_param), float(eps), side)
    return loss, {"on_diagonal": on, "off_diagonal": off}


# ============================================================================================
# Spectral contrastive (SPEC §4)


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
                           _bwd_fake2, 2, 3, True)


def spectral(z1: Tensor, z2: Tensor, mu: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SPEC §4 spectral contrastive: (loss, {"positive", "negative"})."""
    loss, pos, neg, *_ = apply(_SPEC_SPECTRAL, z1.contiguous(), z2.contiguous(), float(mu), side)
    return loss, {"positive": pos, "negative": neg}


# ============================================================================================
# gather_distributed=True (SPEC §5): the local pieces that ops/gathered.py merges across ranks
# (the CUDA backend's cuda_moments_* and cuda_spectral_rows_*, same arguments and results)

MOMENTS_NONE, MOMENTS_SELF, MOMENTS_CROSS = 0, 1, 2


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


_moments_fwd = torch.library.custom_op("duality_kernels::moments_fwd", mutates_args=())(
    _checks.checked(_checks.moments, "triton", _moments_fwd_impl))
_moments_fwd.register_fake(_moments_fwd_fake)
_moments_bwd = torch.library.custom_op("duality_kernels::moments_bwd", mutates_args=())(_moments_bwd_impl)
_moments_bwd.register_fake(_bwd_fake2)


def _moments_setup(ctx, inputs, output):
    z1, z2, mode = inputs
    ctx.save_for_backward(z1, z2, output[4], output[1])
    ctx.mode = mode


def _moments_backward(ctx, g_inv, g_mean, g_m2, g_gram, *_unused):
    z1, z2, x, mean = ctx.saved_tensors
    dz1, dz2 = pick(ctx, _moments_bwd, _moments_bwd_impl)(z1, z2, x, mean, g_inv, g_mean, g_m2,
                                                          g_gram if ctx.mode else None, ctx.mode)
    return dz1, dz2, None


_moments_fwd.register_autograd(_moments_backward, setup_context=_moments_setup)
_SPEC_MOMENTS = Spec(_moments_fwd, _moments_fwd_impl, _moments_setup, _moments_backward, 4)


def moments(z1: Tensor, z2: Tensor, mode: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(invariance, mean, m2, gram) of this process's rows, differentiable (``_moments_fwd_impl``)."""
    out = apply(_SPEC_MOMENTS, z1.contiguous(), z2.contiguous(), int(mode))
    return out[0], out[1], out[2], out[3]


def _spectral_rows_fwd_impl(z1: Tensor, z2: Tensor, mu: float) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (x (2, N, D) the clamped rows a, b (SPEC §4), p = a_i·b_i (N) acc, info (3, N) acc as
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


_spectral_rows_fwd = torch.library.custom_op("duality_kernels::spectral_rows_fwd", mutates_args=())(
    _checks.checked(_checks.spectral_rows, "triton", _spectral_rows_fwd_impl))
_spectral_rows_fwd.register_fake(_spectral_rows_fwd_fake)
_spectral_rows_bwd = torch.library.custom_op("duality_kernels::spectral_rows_bwd", mutates_args=())(_spectral_rows_bwd_impl)
_spectral_rows_bwd.register_fake(_bwd_fake2)


def _spectral_rows_setup(ctx, inputs, output):
    z1, z2, mu = inputs
    ctx.save_for_backward(z1, z2, output[0], output[2])
    ctx.mu = mu


def _spectral_rows_backward(ctx, g_x, g_p, *_unused):
    z1, z2, x, info = ctx.saved_tensors
    dz1, dz2 = pick(ctx, _spectral_rows_bwd, _spectral_rows_bwd_impl)(z1, z2, x, info, g_x, g_p, ctx.mu)
    return dz1, dz2, None


_spectral_rows_fwd.register_autograd(_spectral_rows_backward, setup_context=_spectral_rows_setup)
_SPEC_SPECTRAL_ROWS = Spec(_spectral_rows_fwd, _spectral_rows_fwd_impl, _spectral_rows_setup,
                           _spectral_rows_backward, 2)


def spectral_rows(z1: Tensor, z2: Tensor, mu: float) -> Tuple[Tensor, Tensor]:
    """(x, p): the clamped rows (2, N, D) of both views and their row dots p_i = a_i·b_i,
    differentiable (SPEC §4's clamp; ops/gathered.py builds the distributed loss on them)."""
    out = apply(_SPEC_SPECTRAL_ROWS, z1.contiguous(), z2.contiguous(), float(mu))
    return out[0], out[1]


# ============================================================================================
# covariance (SPEC §1)


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
    """SPEC §1 covariance: center(z)ᵀ center(z) / (N − correction), (D, D)."""
    return apply(_SPEC_COVARIANCE, z.contiguous(), int(correction))[0]


# ============================================================================================
# cross_correlation (SPEC §1)


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


_SPEC_CROSS_CORRELATION = _register("cross_correlation", _cross_correlation_fwd_impl, _cross_correlation_fwd_fake, _cross_correlation_bwd_impl,
                                    _bwd_fake2, 2, 1, False)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """SPEC §1 cross_correlation: BatchNorm-standardized s(z1)ᵀ s(z2) / N, (D, D)."""
    return apply(_SPEC_CROSS_CORRELATION, z1.contiguous(), z2.contiguous(), float(eps))[0]


# ============================================================================================
# normalized_gram (SPEC §1)


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


_SPEC_NORMALIZED_GRAM = _register("normalized_gram", _normalized_gram_fwd_impl, _normalized_gram_fwd_fake, _normalized_gram_bwd_impl,
                                  _normalized_gram_bwd_fake, 2, 1, False)


def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None) -> Tensor:
    """SPEC §1 normalized_gram: l2n(z1) · l2n(z2 or z1)ᵀ, (N, N)."""
    return apply(_SPEC_NORMALIZED_GRAM, z1.contiguous(), None if z2 is None else z2.contiguous())[0]


# ============================================================================================
# duality_terms (SPEC §2)


def _duality_terms_fwd_impl(z: Tensor, side: str
                            ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (L_c, L_nc, Σ_i‖z_i‖⁴, Σ_k‖z_:k‖⁴, gram (1, M, M), rs, row sums of squares r (N),
    column sums of squares c (D)); r and c float64, the Gram fp32 (bf16/fp16: the backward's
    operand in the input dtype)."""
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
            gram = (g.float() if pl.wide else g).unsqueeze(0)
        gram.diagonal(dim1=1, dim2=2).zero_()  # the backward's G_off (_elem_bwd_kernel, _E_DUALITY)
    return (*pr.outs, gram, pr.rs, r, c)


def _duality_terms_fwd_fake(z, side):
    pl = _plan(z)
    n, d = z.shape
    _, gram, rs, _ = _fake_saved(z, pl, n if side == "sample" else d, 1, 1, 1, False)
    return (*_scalars(z, pl, 4), gram, rs, _e(z, (n,), torch.float64), _e(z, (d,), torch.float64))


def _duality_terms_bwd_impl(z: Tensor, gram: Tensor, rs: Tensor, r: Tensor, c: Tensor, g_lc: Tensor,
                            g_lnc: Tensor, g_r4: Tensor, g_c4: Tensor, side: str) -> Tensor:
    z = z.contiguous()
    pl = _plan(z)
    sample = side == "sample"
    dz = _new(z)
    with _device(z):
        if not pl.ident:
            p = _mm(gram[0], z, out=dz) if sample else _mm(z, gram[0], out=dz)
        else:
            p = _mm(gram[0], z) if sample else _mm(z, gram[0].t())
        _elem_bwd(_E_DUALITY if sample else _E_DUALITY_D, (p,), (0,), (dz, dz), z, z, cv=c, rv=r, rs=rs,
                  gs=(g_lc, g_lnc, g_r4, g_c4),
                  rsm=_rs_mode(pl, sample) if pl.ident else _RS_NONE)
    return dz


def _duality_terms_bwd_fake(z, *_args):
    return _new(z)


_SPEC_DUALITY_TERMS = _register("duality_terms", _duality_terms_fwd_impl, _duality_terms_fwd_fake, _duality_terms_bwd_impl,
                                _duality_terms_bwd_fake, 1, 4, True)


def duality_terms(z: Tensor, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """SPEC §2: (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram on ``side``."""
    lc, lnc, r4, c4, *_ = apply(_SPEC_DUALITY_TERMS, z.contiguous(), side)
    return lc, lnc, r4, c4


# ============================================================================================
# Drop-in torch.autograd.Function subclasses (DESIGN convention 2): contiguous inputs, side already
# "sample" or "dimension". Their forward checks the arguments (ops/_checks.py, as the CUDA
# backend's Functions) before the custom op, so that they raise the public functions'
# TypeError/ValueError (issue 15: an unchecked call reached native code); the public functions
# validate and pick the side themselves.


def _dropin(spec: Spec, op: str, name: str, doc: str) -> type:
    return _checks.dropin(spec, getattr(_checks, op), "triton", name, doc)


VICRegFunction = _dropin(_SPEC_VICREG, "vicreg", "VICRegFunction", "VICReg (SPEC §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side)`` -> (loss, invariance, variance, covariance).")
BarlowTwinsFunction = _dropin(_SPEC_BARLOW_TWINS, "barlow_twins", "BarlowTwinsFunction", "Barlow Twins (SPEC §3): ``apply(z1, z2, lambda_param, eps, side)`` -> (loss, on_diagonal, off_diagonal).")
SpectralContrastiveFunction = _dropin(_SPEC_SPECTRAL, "spectral", "SpectralContrastiveFunction", "Spectral contrastive loss (SPEC §4): ``apply(z1, z2, mu, side)`` -> (loss, positive, negative).")
CovarianceFunction = _dropin(_SPEC_COVARIANCE, "covariance", "CovarianceFunction", "covariance (SPEC §1): ``apply(z, correction)`` -> (C,).")
CrossCorrelationFunction = _dropin(_SPEC_CROSS_CORRELATION, "cross_correlation", "CrossCorrelationFunction", "cross_correlation (SPEC §1): ``apply(z1, z2, eps)`` -> (C,).")
NormalizedGramFunction = _dropin(_SPEC_NORMALIZED_GRAM, "normalized_gram", "NormalizedGramFunction", "normalized_gram (SPEC §1): ``apply(z1, z2_or_None)`` -> (K,).")
DualityTermsFunction = _dropin(_SPEC_DUALITY_TERMS, "duality_terms", "DualityTermsFunction", "duality_terms (SPEC §2): ``apply(z, side)`` -> (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴).")


for _name in ("vicreg", "barlow_twins", "spectral"):
    _registry.declare("triton", _name, gathers=True)
for _name in ("covariance", "cross_correlation", "normalized_gram", "duality_terms"):
    _registry.declare("triton", _name)
