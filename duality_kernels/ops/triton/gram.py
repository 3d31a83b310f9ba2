"""Triton kernels of the Gram family: VICReg, Barlow Twins, spectral contrastive, the §1 primitives
(covariance, cross_correlation, normalized_gram) and the §2 duality terms (../shared/SPEC.md).

UNTESTED ON GPU: nothing here has run on a GPU. The kernels have run under the Triton interpreter
(TRITON_INTERPRET=1, triton 3.8) on CPU tensors in float32/float64 only (tests/test_triton_gram.py).
Every specialization the ops launch (fp32 IEEE and TF32, fp64, bf16, fp16; both sides; the
interpreter's and the GPU's block sizes) was compiled to sm_90 cubins with triton 3.6.0 and 3.8.0
on a machine without a GPU (2026-11-30). The ``cuda`` tests of that file are the first GPU run.

Two kernel shapes (DESIGN "The idea that shapes the code"):

``_gram_reduce_kernel`` (Gram-reduce): tiles of x xᵀ (N×N, side="sample") or xᵀx (D×D,
    side="dimension") from ``tl.dot`` over the other axis, with the prologue fused into the tile
    loads (``_load_x``: column centering, BatchNorm's 1/sqrt(var_b + eps) per column, a per-row
    scale for spectral's norm clamp or the l2 normalization). Three modes: SYM (x xᵀ, upper-triangle
    tiles only, mirror-stored), CROSS (a bᵀ / aᵀb, every tile) and PAIR (⟨a aᵀ, b bᵀ⟩, two Grams per
    symmetric tile, SPEC §2). Each tile's sums of squares (or of GA∘GB), split into off-diagonal
    and diagonal parts, go to a float64 partials buffer that a one-program finalize kernel sums
    in a fixed order: deterministic, no float atomics (DESIGN convention 7). When the loss's
    off-diagonal sum lives on the side computed (VICReg / Barlow on the D×D side, spectral on the
    N×N side, each criterion of ``duality_terms`` on its own side) it is taken directly from the
    off-diagonal tiles instead of ‖G‖² minus a separately computed diagonal (no cancellation); on
    the other side the SPEC §2 identity is used. The small-side Gram is written only because the
    backward needs it (or because it is the primitive's output).
``_gram_apply`` (Gram-apply, backward): dz tile = (N×N Gram)·x or x·(D×D Gram), x loaded with the
    same prologue, then a per-loss epilogue (invariance, variance hinge, diagonal corrections,
    normalization Jacobians, scales). One pass, dz written once, where the math allows:
    - VICReg, covariance: the centering Jacobian vanishes exactly, because x is centered: the
      column sums of G·x = x xᵀ x and of x·(xᵀx) are 1ᵀx(..) = 0, and Σ_i x_ik = 0 for the
      variance term's 2·x_ik. So dz = dx, no column reduction of the gradient.
    - duality_terms: no normalization at all.
    - l2 normalization (normalized_gram): dz_i = (dn_i − n_i(n_i·dn_i))/‖z_i‖ with
      n_i·dn_i = Σ_j Gout_ij K_ij, a row reduction of N×N matrices (``_rowcol_dot_kernel``).
    - spectral on the N×N side: a_i·da_i = 2κ Σ_j S_ij² + e_i p_i, with Σ_j S_ij² reduced by the
      forward kernel from the same tiles (ROWCOL partials).
    Two passes (da to an N×D buffer in the accumulation dtype plus per-tile partial sums, then
    ``_proj_finish_kernel``) where the Jacobian needs a reduction of the gradient itself:
    - BatchNorm (cross_correlation, Barlow Twins, both sides): dz = s∘(da − mean_i da −
      (a − mean_i a)∘mean_i(da∘a)). mean_i(da∘a) has a D×D shortcut ((1/N)Σ_l C_kl·∂L/∂C_kl),
      but the residual cancels strongly when da ∥ a (N = 2, near-converged Barlow) and the
      shortcut's rounding then reached 4.4× eager's error; reducing the computed da is as
      accurate as autograd (``_bn_bwd_kernel`` docstring).
    - spectral on the D×D side: a_i·da_i needs a_i Gb a_iᵀ over all columns.

Per-column statistics (mean, centered sum of squares, and for two views their co-moment and
Σ(z1 − z2)²) come from ``_colstats_partial_kernel`` (both views in one launch, Chan/Welford merges
per tile) and ``_colstats_merge_kernel`` (the per-chunk partials merged in a fixed order). Per-row
(and duality_terms' per-column) raw sums of squares from ``_rowstats_partial_kernel`` +
``_rowinfo_kernel`` / ``_sum_partials_kernel``, accumulated in float64 (memory-bound kernels).
The scalar finalize kernels compute in float64 and round once.

Left in torch (why): allocation of outputs and scratch buffers, and ``torch.stack`` of two (N,)
sums; nothing that scales with N·D or touches data twice. The effective coefficients of the
backward (g_loss·weight + g_term) are computed inside the kernels from the 0-dim gradients.

Custom ops (DESIGN conventions 1–3): ``duality_kernels::<op>_fwd`` / ``<op>_bwd`` for op in
vicreg, barlow_twins, spectral, covariance, cross_correlation, normalized_gram, duality_terms; each
with a fake, the forward with ``register_autograd`` calling the backward op. The forward returns
(loss, term₁, term₂, …, saved tensors…); the backward op takes the incoming gradient of the loss and
of every term as 0-dim tensors and folds them into effective coefficients INSIDE the kernels
(loaded from device memory; no ``.item()``, no host-device synchronization, DESIGN convention 3).

Python scalars reach the kernels as float64 arguments (annotated ``tl.float64``) and are cast to
the accumulation dtype in the kernel (``_scalar``): a plain Python float would be passed as fp32,
which costs float64 inputs ~1e-8 relative accuracy. ``tl.dot`` gets ``out_dtype=ACC`` (triton 3.6
defaults it to fp32, which rejects a float64 accumulator).

Block sizes: 32/16 under the interpreter (fast tests, several tiles even at N, D ≈ 33); on the GPU
64-wide tiles (32 for float64), not tuned, no measurement yet. All are powers of two and every
``tl.dot`` operand dimension is at least 16 (DESIGN convention 10). Indices are int64 where N·D or
M² can pass 2³¹.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from .._direct import Spec, apply, function, pick
from ._common import acc_dtype, input_precision, interpreting, tl, triton, unavailable_reason
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
_SYM, _CROSS, _PAIR = 0, 1, 2  # _gram_reduce_kernel modes
_SAMPLE, _DIMENSION = 0, 1

# ============================================================================================
# JIT helpers


@triton.jit
def _pick(view, first, second):
    """``first`` for view 0, ``second`` for view 1 (kernels whose grid axis 2 is the view)."""
    r = first
    if view != 0:
        r = second
    return r


@triton.jit
def _sqrt(x):
    """Correctly rounded square root (``tl.sqrt`` is approximate in fp32; ``sqrt_rn`` is fp32-only)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _div(x, y, ACC: tl.constexpr):
    """x / y correctly rounded in ACC: Triton's fp32 ``/`` is div.full.f32 (up to 2 ulp, seen in the
    sm_90 PTX); ``div_rn`` is fp32-only (fp64 ``/`` is already div.rn.f64)."""
    if ACC == tl.float32:
        return tl.div_rn(tl.cast(x, ACC), tl.cast(y, ACC))
    else:
        return tl.cast(x, ACC) / tl.cast(y, ACC)


@triton.jit
def _load_x(z_ptr, m_ptr, c_ptr, r_ptr, ri, ci, N, D,
            HAS_M: tl.constexpr, HAS_C: tl.constexpr, HAS_R: tl.constexpr, ACC: tl.constexpr):
    """Prologue-fused load of x[ri, ci] = (z[ri, ci] − mean[ci])·cscale[ci]·rscale[ri], 0 outside.

    ``ri`` / ``ci`` are broadcastable index blocks ((B, 1) and (1, C), or the transpose), so the
    same helper loads a tile of x or of xᵀ. ``z`` is a contiguous (N, D) tensor.
    """
    rmask = ri < N
    cmask = ci < D
    mask = rmask & cmask
    x = tl.load(z_ptr + ri.to(tl.int64) * D + ci, mask=mask, other=0.0).to(ACC)
    if HAS_M:  # column centering (SPEC "Notation": center)
        x = x - tl.load(m_ptr + ci, mask=cmask, other=0.0)
    if HAS_C:  # BatchNorm standardization, 1/sqrt(var_b + eps) (SPEC §1 cross_correlation)
        x = x * tl.load(c_ptr + ci, mask=cmask, other=0.0)
    if HAS_R:  # per-row scale: l2n (SPEC §1) or spectral's norm clamp (SPEC §4)
        x = x * tl.load(r_ptr + ri, mask=rmask, other=0.0)
    return tl.where(mask, x, 0.0)  # padding stays 0 after centering


@triton.jit
def _load_mat(g_ptr, s0, s1, ri, ci, M, SYMM: tl.constexpr, ACC: tl.constexpr):
    """G[ri, ci] (+ G[ci, ri] when SYMM) of an M×M matrix with strides (s0, s1), 0 outside.

    Strides make transposition free and accept autograd's expanded (stride-0) gradients."""
    mask = (ri < M) & (ci < M)
    r64 = ri.to(tl.int64)
    c64 = ci.to(tl.int64)
    g = tl.load(g_ptr + r64 * s0 + c64 * s1, mask=mask, other=0.0).to(ACC)
    if SYMM:
        g += tl.load(g_ptr + c64 * s0 + r64 * s1, mask=mask, other=0.0).to(ACC)
    return g


@triton.jit
def _gram_apply(g_ptr, s0, s1, x_ptr, xm_ptr, xc_ptr, xr_ptr, offs_i, offs_k, N, D,
                SYMM: tl.constexpr, X_M: tl.constexpr, X_C: tl.constexpr, X_R: tl.constexpr,
                SIDE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Gram-apply tile (rows offs_i, columns offs_k of an N×D result):
    SIDE 0: (G·x)[i, k] with G N×N; SIDE 1: (x·G)[i, k] with G D×D; x prologue-loaded."""
    acc = tl.zeros((BM, BM), ACC)
    if SIDE == 0:
        for j0 in range(0, N, BK):
            offs_j = j0 + tl.arange(0, BK)
            g = _load_mat(g_ptr, s0, s1, offs_i[:, None], offs_j[None, :], N, SYMM, ACC)
            x = _load_x(x_ptr, xm_ptr, xc_ptr, xr_ptr, offs_j[:, None], offs_k[None, :], N, D,
                        X_M, X_C, X_R, ACC)
            acc = tl.dot(g.to(DOT), x.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
    else:
        for l0 in range(0, D, BK):
            offs_l = l0 + tl.arange(0, BK)
            x = _load_x(x_ptr, xm_ptr, xc_ptr, xr_ptr, offs_i[:, None], offs_l[None, :], N, D,
                        X_M, X_C, X_R, ACC)
            g = _load_mat(g_ptr, s0, s1, offs_l[:, None], offs_k[None, :], D, SYMM, ACC)
            acc = tl.dot(x.to(DOT), g.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _vsum(ptr, n, BV: tl.constexpr, ACC: tl.constexpr):
    """Σ ptr[0:n] in a fixed order (one program)."""
    offs = tl.arange(0, BV)
    acc = tl.zeros((BV,), ACC)
    for p0 in range(0, n, BV):
        acc += tl.load(ptr + p0 + offs, mask=p0 + offs < n, other=0.0).to(ACC)
    return tl.sum(acc, axis=0)


# ============================================================================================
# Statistics kernels (SPEC "Notation": center, var_u, var_b; l2n; spectral's norm clamp)


@triton.jit
def _colstats_partial_kernel(z1_ptr, z2_ptr, pmean_ptr, pm2_ptr, pco_ptr, psq_ptr,
                             N, D, CHUNK,
                             TWO: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
                             ACC: tl.constexpr):
    """Stage 1: per chunk of CHUNK rows and block of BD columns, the chunk's column mean and
    centered sum of squares (per view), and with TWO views the centered co-moment Σ x1·x2 and
    Σ (z1 − z2)². Tiles of BR rows are merged with Chan's parallel formulas, so the centered sums
    never come from a difference of raw moments (no cancellation)."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    n_chunks = tl.num_programs(0)
    offs_d = pid_d * BD + tl.arange(0, BD)
    dmask = offs_d < D
    start = pid_c * CHUNK
    end = tl.minimum(start + CHUNK, N)
    mean1 = tl.zeros((BD,), ACC)
    m21 = tl.zeros((BD,), ACC)
    mean2 = tl.zeros((BD,), ACC)
    m22 = tl.zeros((BD,), ACC)
    co = tl.zeros((BD,), ACC)
    sq = tl.zeros((BD,), ACC)
    for r0 in range(start, end, BR):
        offs_r = r0 + tl.arange(0, BR)
        mask = (offs_r < end)[:, None] & dmask[None, :]
        idx = offs_r.to(tl.int64)[:, None] * D + offs_d[None, :]
        n_t = tl.cast(tl.minimum(end - r0, BR), ACC)
        n_a = tl.cast(r0 - start, ACC)
        w_t = _div(n_t, n_a + n_t, ACC)
        w_at = n_a * w_t
        x1 = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(ACC)
        t_mean1 = _div(tl.sum(x1, axis=0), n_t, ACC)
        d1 = tl.where(mask, x1 - t_mean1[None, :], 0.0)
        delta1 = t_mean1 - mean1
        mean1 = mean1 + delta1 * w_t
        m21 = m21 + tl.sum(d1 * d1, axis=0) + delta1 * delta1 * w_at
        if TWO:
            x2 = tl.load(z2_ptr + idx, mask=mask, other=0.0).to(ACC)
            t_mean2 = _div(tl.sum(x2, axis=0), n_t, ACC)
            d2 = tl.where(mask, x2 - t_mean2[None, :], 0.0)
            delta2 = t_mean2 - mean2
            mean2 = mean2 + delta2 * w_t
            m22 = m22 + tl.sum(d2 * d2, axis=0) + delta2 * delta2 * w_at
            co = co + tl.sum(d1 * d2, axis=0) + delta1 * delta2 * w_at
            diff = x1 - x2
            sq = sq + tl.sum(diff * diff, axis=0)
    out = pid_c * D + offs_d
    tl.store(pmean_ptr + out, mean1, mask=dmask)
    tl.store(pm2_ptr + out, m21, mask=dmask)
    if TWO:
        out2 = (n_chunks + pid_c) * D + offs_d
        tl.store(pmean_ptr + out2, mean2, mask=dmask)
        tl.store(pm2_ptr + out2, m22, mask=dmask)
        tl.store(pco_ptr + out, co, mask=dmask)
        tl.store(psq_ptr + out, sq, mask=dmask)


@triton.jit
def _colstats_merge_kernel(pmean_ptr, pm2_ptr, pco_ptr, psq_ptr,
                           mean_ptr, m2_ptr, co_ptr, sq_ptr, cs_ptr,
                           N, D, CHUNK, n_chunks, eps: tl.float64,
                           TWO: tl.constexpr, BN_SCALE: tl.constexpr, BD: tl.constexpr,
                           ACC: tl.constexpr):
    """Stage 2: merge the chunks' partial moments in chunk order (deterministic). With BN_SCALE
    also write BatchNorm's per-column scale 1/sqrt(m2/N + eps) (biased variance, SPEC §1)."""
    pid_d = tl.program_id(0)
    offs_d = pid_d * BD + tl.arange(0, BD)
    dmask = offs_d < D
    mean1 = tl.zeros((BD,), ACC)
    m21 = tl.zeros((BD,), ACC)
    mean2 = tl.zeros((BD,), ACC)
    m22 = tl.zeros((BD,), ACC)
    co = tl.zeros((BD,), ACC)
    sq = tl.zeros((BD,), ACC)
    for c in range(0, n_chunks):
        n_a = tl.cast(c * CHUNK, ACC)
        n_t = tl.cast(tl.minimum(N - c * CHUNK, CHUNK), ACC)
        w_t = _div(n_t, n_a + n_t, ACC)
        w_at = n_a * w_t
        off = c * D + offs_d
        delta1 = tl.load(pmean_ptr + off, mask=dmask, other=0.0) - mean1
        mean1 = mean1 + delta1 * w_t
        m21 = m21 + tl.load(pm2_ptr + off, mask=dmask, other=0.0) + delta1 * delta1 * w_at
        if TWO:
            off2 = (n_chunks + c) * D + offs_d
            delta2 = tl.load(pmean_ptr + off2, mask=dmask, other=0.0) - mean2
            mean2 = mean2 + delta2 * w_t
            m22 = m22 + tl.load(pm2_ptr + off2, mask=dmask, other=0.0) + delta2 * delta2 * w_at
            co = co + tl.load(pco_ptr + off, mask=dmask, other=0.0) + delta1 * delta2 * w_at
            sq = sq + tl.load(psq_ptr + off, mask=dmask, other=0.0)
    tl.store(mean_ptr + offs_d, mean1, mask=dmask)
    tl.store(m2_ptr + offs_d, m21, mask=dmask)
    n = tl.cast(N, ACC)
    eps_ = _scalar(eps, ACC)
    if BN_SCALE:
        tl.store(cs_ptr + offs_d, _div(1.0, _sqrt(_div(m21, n, ACC) + eps_), ACC), mask=dmask)
    if TWO:
        tl.store(mean_ptr + D + offs_d, mean2, mask=dmask)
        tl.store(m2_ptr + D + offs_d, m22, mask=dmask)
        tl.store(co_ptr + offs_d, co, mask=dmask)
        tl.store(sq_ptr + offs_d, sq, mask=dmask)
        if BN_SCALE:
            tl.store(cs_ptr + D + offs_d, _div(1.0, _sqrt(_div(m22, n, ACC) + eps_), ACC), mask=dmask)


@triton.jit
def _rowstats_partial_kernel(z1_ptr, z2_ptr, part_ptr, colp_ptr, N, D, CHUNK,
                             TWO: tl.constexpr, COLS: tl.constexpr,
                             BM: tl.constexpr, BD: tl.constexpr, SACC: tl.constexpr):
    """Per block of BM rows and chunk of CHUNK columns: partial Σ_k z1², (TWO) Σ_k z2², Σ_k z1·z2
    into part[chunk, 0:3, rows]; with COLS also each tile's column sums Σ_i z1² into
    colp[row block, columns] (duality_terms needs both the row and the column norms).
    Accumulated in SACC = float64: raw (uncentered) sums of squares, whose squares and square roots
    feed Σ‖z_i‖⁴, the norm clamp and l2n; memory-bound, so the wider adds cost nothing."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    mmask = offs_m < N
    r11 = tl.zeros((BM,), SACC)
    r22 = tl.zeros((BM,), SACC)
    r12 = tl.zeros((BM,), SACC)
    start = pid_c * CHUNK
    end = tl.minimum(start + CHUNK, D)
    for c0 in range(start, end, BD):
        offs_d = c0 + tl.arange(0, BD)
        mask = mmask[:, None] & (offs_d < end)[None, :]
        idx = offs_m.to(tl.int64)[:, None] * D + offs_d[None, :]
        x1 = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(SACC)
        s1 = x1 * x1
        r11 += tl.sum(s1, axis=1)
        if COLS:
            tl.store(colp_ptr + pid_m.to(tl.int64) * D + offs_d, tl.sum(s1, axis=0),
                     mask=offs_d < end)
        if TWO:
            x2 = tl.load(z2_ptr + idx, mask=mask, other=0.0).to(SACC)
            r22 += tl.sum(x2 * x2, axis=1)
            r12 += tl.sum(x1 * x2, axis=1)
    base = pid_c * 3 * N
    tl.store(part_ptr + base + offs_m, r11, mask=mmask)
    if TWO:
        tl.store(part_ptr + base + N + offs_m, r22, mask=mmask)
        tl.store(part_ptr + base + 2 * N + offs_m, r12, mask=mmask)


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, R, M, stride, BV: tl.constexpr, ACC: tl.constexpr):
    """out[m] = Σ_{r<R} part[r·stride + m], in r order (the second stage of a reduction)."""
    offs = tl.program_id(0) * BV + tl.arange(0, BV)
    mask = offs < M
    acc = tl.zeros((BV,), ACC)
    for r in range(0, R):
        acc += tl.load(part_ptr + tl.cast(r, tl.int64) * stride + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc, mask=mask)


@triton.jit
def _rowinfo_kernel(part_ptr, info_ptr, N, n_chunks, radius: tl.float64, inv_mu: tl.float64,
                    l2_eps: tl.float64,
                    CLAMP: tl.constexpr, TWO: tl.constexpr, BV: tl.constexpr, SACC: tl.constexpr):
    """Sum the row partials and derive the per-row prologue scales.

    Computed in SACC = float64, stored in the info dtype.
    CLAMP=False (l2n, SPEC "Notation"): info rows [1/max(‖z1‖, eps), (TWO) 1/max(‖z2‖, eps),
        [‖z1‖ ≥ eps], (TWO) [‖z2‖ ≥ eps]] (the flag says whether the projection of the Jacobian
        applies, as torch's clamp_min backward).
    CLAMP=True (spectral, SPEC §4): info rows [t1, t2, proj1, proj2, p] with t = 1 for rows of
        norm < sqrt(mu), sqrt(mu)/‖z‖ otherwise; proj = 1/mu on clamped rows, 0 on kept ones;
        p_i = a_i·b_i of the clamped rows.
    """
    offs = tl.program_id(0) * BV + tl.arange(0, BV)
    mask = offs < N
    s11 = tl.zeros((BV,), SACC)
    s22 = tl.zeros((BV,), SACC)
    s12 = tl.zeros((BV,), SACC)
    for c in range(0, n_chunks):
        base = c * 3 * N
        s11 += tl.load(part_ptr + base + offs, mask=mask, other=0.0)
        if TWO:
            s22 += tl.load(part_ptr + base + N + offs, mask=mask, other=0.0)
            s12 += tl.load(part_ptr + base + 2 * N + offs, mask=mask, other=0.0)
    n1 = _sqrt(s11)
    n2 = _sqrt(s22)
    eps = _scalar(l2_eps, SACC)  # an fp32 literal 1e-12 would be off by 2e-8 relative in fp64
    if CLAMP:
        r = _scalar(radius, SACC)
        im = _scalar(inv_mu, SACC)
        keep1 = n1 < r
        keep2 = n2 < r
        t1 = tl.where(keep1, 1.0, r / tl.maximum(n1, eps))
        t2 = tl.where(keep2, 1.0, r / tl.maximum(n2, eps))
        tl.store(info_ptr + offs, t1, mask=mask)
        tl.store(info_ptr + N + offs, t2, mask=mask)
        tl.store(info_ptr + 2 * N + offs, tl.where(keep1, 0.0, im), mask=mask)
        tl.store(info_ptr + 3 * N + offs, tl.where(keep2, 0.0, im), mask=mask)
        tl.store(info_ptr + 4 * N + offs, t1 * t2 * s12, mask=mask)
    else:
        tl.store(info_ptr + offs, 1.0 / tl.maximum(n1, eps), mask=mask)
        f1 = tl.where(n1 >= eps, 1.0, 0.0).to(SACC)
        if TWO:
            tl.store(info_ptr + N + offs, 1.0 / tl.maximum(n2, eps), mask=mask)
            tl.store(info_ptr + 2 * N + offs, f1, mask=mask)
            tl.store(info_ptr + 3 * N + offs, tl.where(n2 >= eps, 1.0, 0.0).to(SACC), mask=mask)
        else:
            tl.store(info_ptr + N + offs, f1, mask=mask)


@triton.jit
def _rowcol_dot_kernel(a_ptr, sa0, sa1, b_ptr, sb0, sb1, out_ptr, M,
                       BV: tl.constexpr, BW: tl.constexpr, ACC: tl.constexpr):
    """out[0, m] = Σ_n A_mn B_mn, out[1, n] = Σ_m A_mn B_mn for M×M strided A, B (axis 1 of the
    grid picks rows or columns by swapping strides): l2n's Jacobian contraction n_i·dn_i of
    normalized_gram is a row (column) sum of Gout∘K (module docstring)."""
    pid = tl.program_id(0)
    axis = tl.program_id(1)
    # swap strides arithmetically (an int argument equal to 1 is a compile-time constant)
    ta0 = sa0 + (sa1 - sa0) * axis
    ta1 = sa1 + (sa0 - sa1) * axis
    tb0 = sb0 + (sb1 - sb0) * axis
    tb1 = sb1 + (sb0 - sb1) * axis
    offs_m = pid * BV + tl.arange(0, BV)
    m64 = offs_m.to(tl.int64)
    acc = tl.zeros((BV,), ACC)
    for n0 in range(0, M, BW):
        offs_n = n0 + tl.arange(0, BW)
        n64 = offs_n.to(tl.int64)
        mask = (offs_m < M)[:, None] & (offs_n < M)[None, :]
        a = tl.load(a_ptr + m64[:, None] * ta0 + n64[None, :] * ta1, mask=mask, other=0.0).to(ACC)
        b = tl.load(b_ptr + m64[:, None] * tb0 + n64[None, :] * tb1, mask=mask, other=0.0).to(ACC)
        acc += tl.sum(a * b, axis=1)
    tl.store(out_ptr + axis * M + offs_m, acc, mask=offs_m < M)


# ============================================================================================
# Gram-reduce


@triton.jit
def _gram_reduce_kernel(a_ptr, am_ptr, ac_ptr, ar_ptr, b_ptr, bm_ptr, bc_ptr, br_ptr,
                        g_ptr, part_ptr, rowp_ptr, colp_ptr, N, D, out_div,
                        SIDE: tl.constexpr, MODE: tl.constexpr, STORE: tl.constexpr,
                        ROWCOL: tl.constexpr,
                        A_M: tl.constexpr, A_C: tl.constexpr, A_R: tl.constexpr,
                        B_M: tl.constexpr, B_C: tl.constexpr, B_R: tl.constexpr,
                        BM: tl.constexpr, BK: tl.constexpr,
                        ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """One (BM×BM) tile (i, j) of the side's Gram, reduced on chip (SPEC §2).

    SIDE 0: M = N rows, the reduction runs over D; SIDE 1: M = D columns, over N.
    MODE _SYM: G = x xᵀ / xᵀx of one operand per view (grid axis 2: view 0 = a, view 1 = b, same
        prologue flags A_*): upper-triangle tiles only, mirror-stored, off-diagonal tiles count 2×
        in Σ G². MODE _CROSS: G = a bᵀ / aᵀb, every tile; ROWCOL also writes the tile's row and
        column sums of G² (partials over the other tile index). MODE _PAIR: GA and GB of a and b
        on the same symmetric tile, reduced as Σ GA∘GB = ‖aᵀb‖² or ‖a bᵀ‖² (SPEC §2).
    part[view, 0, i, j] gets the tile's sum of off-diagonal squares (of GA∘GB for PAIR),
    part[view, 1, i, j] the diagonal's (nonzero on diagonal tiles only); both are 0 for skipped
    lower tiles (the buffer is zeroed). Float64 sums of the fp32/fp64 accumulator's squares.
    STORE writes G / out_div (G[view] or [GA, GB]) in the accumulation dtype.
    """
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    view = tl.program_id(2)
    nb = tl.num_programs(0)
    if MODE != 1:
        if pid_i > pid_j:  # symmetric: the lower triangle is the mirror of the upper one
            return
    if SIDE == 0:
        M = N
        R = D
    else:
        M = D
        R = N
    if MODE == 0:
        pz = _pick(view, a_ptr, b_ptr)
        pm = _pick(view, am_ptr, bm_ptr)
        pc = _pick(view, ac_ptr, bc_ptr)
        pr = _pick(view, ar_ptr, br_ptr)
    else:
        pz = a_ptr
        pm = am_ptr
        pc = ac_ptr
        pr = ar_ptr
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_j = pid_j * BM + tl.arange(0, BM)
    acc = tl.zeros((BM, BM), ACC)
    acc2 = tl.zeros((BM, BM), ACC)
    for r0 in range(0, R, BK):
        offs_r = r0 + tl.arange(0, BK)
        if SIDE == 0:
            ri_i = offs_i[:, None]   # left operand (BM, BK): x[i, r]
            ci_i = offs_r[None, :]
            ri_j = offs_j[None, :]   # right operand (BK, BM): x[j, r]ᵀ
            ci_j = offs_r[:, None]
        else:
            ri_i = offs_r[None, :]   # left operand (BM, BK): x[r, i]ᵀ
            ci_i = offs_i[:, None]
            ri_j = offs_r[:, None]   # right operand (BK, BM): x[r, j]
            ci_j = offs_j[None, :]
        left = _load_x(pz, pm, pc, pr, ri_i, ci_i, N, D, A_M, A_C, A_R, ACC)
        if MODE == 1:
            right = _load_x(b_ptr, bm_ptr, bc_ptr, br_ptr, ri_j, ci_j, N, D, B_M, B_C, B_R, ACC)
        else:
            right = _load_x(pz, pm, pc, pr, ri_j, ci_j, N, D, A_M, A_C, A_R, ACC)
        acc = tl.dot(left.to(DOT), right.to(DOT), acc, input_precision=PREC, out_dtype=ACC)
        if MODE == 2:
            left2 = _load_x(b_ptr, bm_ptr, bc_ptr, br_ptr, ri_i, ci_i, N, D, B_M, B_C, B_R, ACC)
            right2 = _load_x(b_ptr, bm_ptr, bc_ptr, br_ptr, ri_j, ci_j, N, D, B_M, B_C, B_R, ACC)
            acc2 = tl.dot(left2.to(DOT), right2.to(DOT), acc2, input_precision=PREC, out_dtype=ACC)
    # squares summed in float64: the tile sums and the finalize's combination (‖G‖² minus a
    # diagonal sum, often of similar size) are where fp32 would lose the last bits
    a64 = acc.to(tl.float64)
    if MODE == 2:
        prod = a64 * acc2.to(tl.float64)
    else:
        prod = a64 * a64
    on_diag = offs_i[:, None] == offs_j[None, :]
    dsum = tl.sum(tl.sum(tl.where(on_diag, prod, 0.0), axis=1), axis=0)
    osum = tl.sum(tl.sum(tl.where(on_diag, 0.0, prod), axis=1), axis=0)
    if MODE != 1:
        osum = tl.where(pid_i == pid_j, osum, osum + osum)
    pp = part_ptr + ((view * 2) * nb + pid_i) * nb + pid_j
    tl.store(pp, osum)
    tl.store(pp + nb * nb, dsum)
    if STORE:
        div = tl.cast(out_div, ACC)
        i64 = offs_i.to(tl.int64)
        j64 = offs_j.to(tl.int64)
        mask = (offs_i < M)[:, None] & (offs_j < M)[None, :]
        maskT = (offs_j < M)[:, None] & (offs_i < M)[None, :]
        MM = tl.cast(M, tl.int64) * M
        g0 = g_ptr + view.to(tl.int64) * MM
        tl.store(g0 + i64[:, None] * M + j64[None, :], _div(acc, div, ACC), mask=mask)
        if MODE != 1:
            if pid_i != pid_j:
                tl.store(g0 + j64[:, None] * M + i64[None, :], _div(tl.trans(acc), div, ACC), mask=maskT)
        if MODE == 2:
            g1 = g_ptr + MM
            tl.store(g1 + i64[:, None] * M + j64[None, :], _div(acc2, div, ACC), mask=mask)
            if pid_i != pid_j:
                tl.store(g1 + j64[:, None] * M + i64[None, :], _div(tl.trans(acc2), div, ACC), mask=maskT)
    if ROWCOL:
        tl.store(rowp_ptr + pid_j * M + offs_i, tl.sum(prod, axis=1), mask=offs_i < M)
        tl.store(colp_ptr + pid_i * M + offs_j, tl.sum(prod, axis=0), mask=offs_j < M)


# ============================================================================================
# Finalize kernels (one program each: O(D + N + tiles) scalar work, fixed summation order).
# They compute in float64 whatever the input (FIN): a few thousand flops, and the outputs
# are then rounded once, which keeps the fp32 losses within an ulp or so of float64 truth.


@triton.jit
def _offdiag(part_ptr, n_part, view, BV: tl.constexpr, FIN: tl.constexpr):
    """(Σ of the off-diagonal squares, Σ of the diagonal squares) of view ``view``'s Gram from the
    tile partials. Where the loss's off-diagonal sum is the Gram's own (NATIVE in the callers: same
    side, SPEC §2) it is used as such, instead of ‖G‖² minus a separately computed diagonal: no
    cancellation, and no mismatch between the diagonal inside ‖G‖² and the one subtracted."""
    off = _vsum(part_ptr + (2 * view) * n_part, n_part, BV, FIN)
    diag = _vsum(part_ptr + (2 * view + 1) * n_part, n_part, BV, FIN)
    return off, diag


@triton.jit
def _vicreg_finalize_kernel(part_ptr, n_part, m2_ptr, sq_ptr,
                            loss_ptr, inv_ptr, var_ptr, cov_ptr, N, D,
                            inv_weight: tl.float64, var_weight: tl.float64,
                            cov_weight: tl.float64, gamma: tl.float64, eps: tl.float64,
                            NATIVE: tl.constexpr, BV: tl.constexpr, FIN: tl.constexpr):
    """SPEC §3 VICReg: inv = Σ(z1 − z2)²/(N·D); v = mean_k relu(γ − sqrt(m2/(N−1) + eps));
    c = offsq(xᵀx)/((N−1)²·D): on the D×D side (NATIVE) the Gram's off-diagonal squares; on the
    N×N side ‖x xᵀ‖² − Σ_k m2_k² (SPEC §2)."""
    gam = _scalar(gamma, FIN)
    eps_ = _scalar(eps, FIN)
    nm1 = tl.cast(N - 1, FIN)
    df = tl.cast(D, FIN)
    off0, diag0 = _offdiag(part_ptr, n_part, 0, BV, FIN)
    off1, diag1 = _offdiag(part_ptr, n_part, 1, BV, FIN)
    offs = tl.arange(0, BV)
    dg0 = tl.zeros((BV,), FIN)
    dg1 = tl.zeros((BV,), FIN)
    h = tl.zeros((BV,), FIN)
    for k0 in range(0, D, BV):
        k = k0 + offs
        kmask = k < D
        a0 = tl.load(m2_ptr + k, mask=kmask, other=0.0).to(FIN)
        a1 = tl.load(m2_ptr + D + k, mask=kmask, other=0.0).to(FIN)
        dg0 += a0 * a0
        dg1 += a1 * a1
        h0 = gam - _sqrt(a0 / nm1 + eps_)
        h1 = gam - _sqrt(a1 / nm1 + eps_)
        # relu written so that NaN propagates (SPEC §6), as torch's relu does
        h += tl.where(kmask, tl.where(h0 < 0, 0.0, h0) + tl.where(h1 < 0, 0.0, h1), 0.0)
    if not NATIVE:
        off0 = (off0 + diag0) - tl.sum(dg0, axis=0)
        off1 = (off1 + diag1) - tl.sum(dg1, axis=0)
    sq = _vsum(sq_ptr, D, BV, FIN)
    inv = sq / (tl.cast(N, FIN) * df)
    var = tl.sum(h, axis=0) / (2.0 * df)
    cov = (off0 + off1) / (nm1 * nm1 * df)
    loss = _scalar(inv_weight, FIN) * inv + _scalar(var_weight, FIN) * var \
        + _scalar(cov_weight, FIN) * cov
    tl.store(loss_ptr, loss)
    tl.store(inv_ptr, inv)
    tl.store(var_ptr, var)
    tl.store(cov_ptr, cov)


@triton.jit
def _barlow_finalize_kernel(part_ptr, n_part, cs_ptr, co_ptr, loss_ptr, on_ptr, off_ptr, N, D,
                            lambda_param: tl.float64,
                            NATIVE: tl.constexpr, BV: tl.constexpr, FIN: tl.constexpr):
    """SPEC §3 Barlow Twins: d_k = C_kk = co_k·s1_k·s2_k/N; on = Σ(1 − d)²; off = offsq(C):
    on the D×D side (NATIVE) the off-diagonal squares of P = aᵀb over N²; on the N×N side
    ⟨a aᵀ, b bᵀ⟩/N² − Σ d² (SPEC §2)."""
    n = tl.cast(N, FIN)
    off, diag = _offdiag(part_ptr, n_part, 0, BV, FIN)
    offs = tl.arange(0, BV)
    on = tl.zeros((BV,), FIN)
    dd = tl.zeros((BV,), FIN)
    for k0 in range(0, D, BV):
        k = k0 + offs
        kmask = k < D
        d = tl.load(co_ptr + k, mask=kmask, other=0.0).to(FIN) \
            * tl.load(cs_ptr + k, mask=kmask, other=0.0).to(FIN) \
            * tl.load(cs_ptr + D + k, mask=kmask, other=0.0).to(FIN) / n
        on += tl.where(kmask, (1.0 - d) * (1.0 - d), 0.0)
        dd += d * d
    on_s = tl.sum(on, axis=0)
    if NATIVE:
        off_s = off / (n * n)
    else:
        off_s = (off + diag) / (n * n) - tl.sum(dd, axis=0)
    tl.store(loss_ptr, on_s + _scalar(lambda_param, FIN) * off_s)
    tl.store(on_ptr, on_s)
    tl.store(off_ptr, off_s)


@triton.jit
def _spectral_finalize_kernel(part_ptr, n_part, info_ptr, loss_ptr, pos_ptr, neg_ptr, N,
                              mu: tl.float64, NATIVE: tl.constexpr, BV: tl.constexpr,
                              FIN: tl.constexpr):
    """SPEC §4 spectral: [−(2/N)Σ p_i + offsq(a bᵀ)/(N(N−1))]/mu on the clamped rows; offsq from
    the N×N tiles directly (NATIVE), or ⟨aᵀa, bᵀb⟩ − Σ p_i² on the D×D side."""
    mu_ = _scalar(mu, FIN)
    n = tl.cast(N, FIN)
    off, diag = _offdiag(part_ptr, n_part, 0, BV, FIN)
    offs = tl.arange(0, BV)
    sp = tl.zeros((BV,), FIN)
    spp = tl.zeros((BV,), FIN)
    for i0 in range(0, N, BV):
        p = tl.load(info_ptr + 4 * N + i0 + offs, mask=i0 + offs < N, other=0.0).to(FIN)
        sp += p
        spp += p * p
    if not NATIVE:
        off = (off + diag) - tl.sum(spp, axis=0)
    pos = -2.0 * tl.sum(sp, axis=0) / n / mu_
    neg = off / (n * (n - 1.0)) / mu_
    tl.store(loss_ptr, pos + neg)
    tl.store(pos_ptr, pos)
    tl.store(neg_ptr, neg)


@triton.jit
def _duality_finalize_kernel(part_ptr, n_part, r_ptr, c_ptr, lc_ptr, lnc_ptr, r4_ptr, c4_ptr,
                             N, D, SIDE: tl.constexpr, BV: tl.constexpr, FIN: tl.constexpr):
    """SPEC §2: the Gram's own off-diagonal squares give its side's criterion (L_c on the N×N
    side, L_nc on the D×D side); the other one is ‖G‖² − Σ of the other side's norms⁴."""
    off, diag = _offdiag(part_ptr, n_part, 0, BV, FIN)
    offs = tl.arange(0, BV)
    rr = tl.zeros((BV,), FIN)
    cc = tl.zeros((BV,), FIN)
    for i0 in range(0, N, BV):
        r = tl.load(r_ptr + i0 + offs, mask=i0 + offs < N, other=0.0).to(FIN)
        rr += r * r
    for k0 in range(0, D, BV):
        c = tl.load(c_ptr + k0 + offs, mask=k0 + offs < D, other=0.0).to(FIN)
        cc += c * c
    r4 = tl.sum(rr, axis=0)
    c4 = tl.sum(cc, axis=0)
    if SIDE == 0:
        lc = off
        lnc = (off + diag) - c4
    else:
        lc = (off + diag) - r4
        lnc = off
    tl.store(lc_ptr, lc)
    tl.store(lnc_ptr, lnc)
    tl.store(r4_ptr, r4)
    tl.store(c4_ptr, c4)


# ============================================================================================
# Gram-apply kernels (backward)


@triton.jit
def _vicreg_bwd_kernel(z1_ptr, z2_ptr, g_ptr, mean_ptr, m2_ptr, dz1_ptr, dz2_ptr,
                       gl_ptr, gi_ptr, gv_ptr, gc_ptr, N, D,
                       inv_weight: tl.float64, var_weight: tl.float64, cov_weight: tl.float64,
                       gamma: tl.float64, eps: tl.float64,
                       SIDE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                       ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """dz of SPEC §3 VICReg for one view (grid axis 2), in one pass:
        dz = (4·a_cov/((N−1)²D))·(G x)  + x∘col_k  ± (2·a_inv/(N·D))·(z1 − z2),
        col_k = −a_var·[γ > std_k]/(2·D·(N−1)·std_k) − 4·a_cov·m2_k/((N−1)²D),
    with G·x = x xᵀ x (N×N side) or x·xᵀx (D×D side), and a_t = g_loss·w_t + g_t the effective
    coefficients of the terms (loaded from device memory). No centering Jacobian: it vanishes
    exactly because every contribution is a combination of the centered x (module docstring)."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    view = tl.program_id(2)
    zp = _pick(view, z1_ptr, z2_ptr)
    dzp = _pick(view, dz1_ptr, dz2_ptr)
    if SIDE == 0:
        M = N
    else:
        M = D
    gp = g_ptr + view.to(tl.int64) * M * M
    mp = mean_ptr + view * D
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    acc = _gram_apply(gp, M, 1, zp, mp, mp, mp, offs_i, offs_k, N, D,
                      False, True, False, False, SIDE, BM, BK, ACC, DOT, PREC)
    gl = tl.load(gl_ptr).to(ACC)
    a_inv = gl * _scalar(inv_weight, ACC) + tl.load(gi_ptr).to(ACC)
    a_var = gl * _scalar(var_weight, ACC) + tl.load(gv_ptr).to(ACC)
    a_cov = gl * _scalar(cov_weight, ACC) + tl.load(gc_ptr).to(ACC)
    nm1 = tl.cast(N - 1, ACC)
    df = tl.cast(D, ACC)
    kmask = offs_k < D
    m2k = tl.load(m2_ptr + view * D + offs_k, mask=kmask, other=0.0).to(ACC)
    std = _sqrt(_div(m2k, nm1, ACC) + _scalar(eps, ACC))
    hinge = (_scalar(gamma, ACC) - std) > 0
    c_cov = _div(4.0 * a_cov, nm1 * nm1 * df, ACC)
    col = tl.where(hinge, _div(-a_var, 2.0 * df * nm1 * std, ACC), 0.0) - c_cov * m2k
    x = _load_x(zp, mp, mp, mp, offs_i[:, None], offs_k[None, :], N, D, True, False, False, ACC)
    mask = (offs_i < N)[:, None] & kmask[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    diff = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(ACC) \
        - tl.load(z2_ptr + idx, mask=mask, other=0.0).to(ACC)
    sign = 1.0 - 2.0 * tl.cast(view, ACC)
    dz = c_cov * acc + x * col[None, :] + _div(sign * 2.0 * a_inv, tl.cast(N, ACC) * df, ACC) * diff
    tl.store(dzp + idx, dz.to(dzp.dtype.element_ty), mask=mask)


@triton.jit
def _duality_bwd_kernel(z_ptr, g_ptr, r_ptr, c_ptr, dz_ptr, g_lc, g_lnc, g_r4, g_c4, N, D,
                        SIDE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                        ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """SPEC §2: with a_fro = g_Lc + g_Lnc, a_r = g_r4 − g_Lc, a_c = g_c4 − g_Lnc,
    dz = 4·a_fro·(G z) + 4·z∘(a_r·r_i + a_c·c_k), r / c the row / column sums of squares."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    if SIDE == 0:
        M = N
    else:
        M = D
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    acc = _gram_apply(g_ptr, M, 1, z_ptr, z_ptr, z_ptr, z_ptr, offs_i, offs_k, N, D,
                      False, False, False, False, SIDE, BM, BK, ACC, DOT, PREC)
    glc = tl.load(g_lc).to(ACC)
    glnc = tl.load(g_lnc).to(ACC)
    a_fro = glc + glnc
    a_r = tl.load(g_r4).to(ACC) - glc
    a_c = tl.load(g_c4).to(ACC) - glnc
    r = tl.load(r_ptr + offs_i, mask=offs_i < N, other=0.0).to(ACC)
    c = tl.load(c_ptr + offs_k, mask=offs_k < D, other=0.0).to(ACC)
    mask = (offs_i < N)[:, None] & (offs_k < D)[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(ACC)
    dz = 4.0 * (a_fro * acc + z * (a_r * r[:, None] + a_c * c[None, :]))
    tl.store(dz_ptr + idx, dz.to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _covariance_bwd_kernel(z_ptr, mean_ptr, go_ptr, sg0, sg1, dz_ptr, N, D, out_div,
                           BM: tl.constexpr, BK: tl.constexpr,
                           ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """SPEC §1 covariance: dz = x·(Gout + Goutᵀ)/(N − correction); no centering Jacobian (the
    column means of x·S vanish because x is centered)."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    acc = _gram_apply(go_ptr, sg0, sg1, z_ptr, mean_ptr, mean_ptr, mean_ptr, offs_i, offs_k, N, D,
                      True, True, False, False, 1, BM, BK, ACC, DOT, PREC)
    mask = (offs_i < N)[:, None] & (offs_k < D)[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    dz = _div(acc, tl.cast(out_div, ACC), ACC)
    tl.store(dz_ptr + idx, dz.to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_bwd_kernel(z1_ptr, z2_ptr, mean_ptr, cs_ptr, m_ptr, sm0, sm1, co_ptr, da_ptr, part_ptr,
                   gl_ptr, gon_ptr, goff_ptr, N, D, lambda_param: tl.float64,
                   SIDE: tl.constexpr, BARLOW: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                   ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Backward through C = aᵀb/N with a, b BatchNorm-standardized (SPEC §1), pass 1 of 2
    (view = grid axis 2; view 0: self a, other b → dz1; view 1 the reverse):
        da = b·Gcᵀ/N  (Gc = ∂L/∂C),  stored in the accumulation dtype, plus this row block's
        Σ_i da_ik, Σ_i da_ik·a_ik and Σ_i a_ik into part[view, 0:3, row block, k].
    ``_proj_finish_kernel`` then applies BatchNorm's Jacobian
        dz = s∘(da − mean_i da − (a − mean_i a)∘mean_i(da∘a)),
    which is autograd's dx − mean_i(dx) with dx = s∘(da − a∘mean_i(da∘a)). In exact arithmetic
    mean_i a = 0, mean_i da = 0 (b is centered) and mean_i(da∘a)_k = (1/N)Σ_l C_kl Gc_kl (a D×D
    shortcut, one pass), but the result is a residual that cancels strongly when da ∥ a (N = 2,
    or a ≈ b near convergence). Measured in fp32 at N=2 (torch emulation, 7 seeds, 2026-11-30):
    dropping the two mean terms gave up to 30× eager's error; keeping them with the shortcut for
    mean_i(da∘a), up to 4.4×; reducing the very da that is subtracted (this kernel), about 1×.
    SIDE 1 (D×D): cross_correlation: M = Gout (strided); BARLOW (SPEC §3): M = P = aᵀb (saved,
        C = P/N) and Gc = 2·a_off·C + diag(e), e_k = −2·a_on(1 − d_k) − 2·a_off·d_k with
        a_on = g_loss + g_on, a_off = λ·g_loss + g_off, d_k = C_kk:
        da = (2a_off/N²)·b·Pᵀ + b∘e/N (view 1: a·P).
    SIDE 0 (N×N, BARLOW only): d‖aᵀb‖²/da = 2·(b bᵀ)·a, so da = (2a_off/N²)·(b bᵀ)·a + b∘e/N
        with m_ptr = [a aᵀ, b bᵀ] (view 0 applies b bᵀ to a, view 1 a aᵀ to b)."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    view = tl.program_id(2)
    nbi = tl.num_programs(0)
    sz = _pick(view, z1_ptr, z2_ptr)
    oz = _pick(view, z2_ptr, z1_ptr)
    sm = mean_ptr + view * D
    om = mean_ptr + (1 - view) * D
    scs = cs_ptr + view * D
    ocs = cs_ptr + (1 - view) * D
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    kmask = offs_k < D
    if SIDE == 1:
        # view 0 applies Mᵀ (strides swapped), view 1 applies M
        t0 = sm1 + (sm0 - sm1) * view
        t1 = sm0 + (sm1 - sm0) * view
        acc = _gram_apply(m_ptr, t0, t1, oz, om, ocs, ocs, offs_i, offs_k, N, D,
                          False, True, True, False, 1, BM, BK, ACC, DOT, PREC)
    else:
        gp = m_ptr + (1 - view).to(tl.int64) * N * N
        acc = _gram_apply(gp, N, 1, sz, sm, scs, scs, offs_i, offs_k, N, D,
                          False, True, True, False, 0, BM, BK, ACC, DOT, PREC)
    n = tl.cast(N, ACC)
    if BARLOW:
        gl = tl.load(gl_ptr).to(ACC)
        a_on = gl + tl.load(gon_ptr).to(ACC)
        a_off = gl * _scalar(lambda_param, ACC) + tl.load(goff_ptr).to(ACC)
        d = tl.load(co_ptr + offs_k, mask=kmask, other=0.0).to(ACC) \
            * tl.load(scs + offs_k, mask=kmask, other=0.0) \
            * tl.load(ocs + offs_k, mask=kmask, other=0.0)
        d = _div(d, n, ACC)
        e = -2.0 * a_on * (1.0 - d) - 2.0 * a_off * d
        other = _load_x(oz, om, ocs, ocs, offs_i[:, None], offs_k[None, :], N, D,
                        True, True, False, ACC)
        da = _div(2.0 * a_off, n * n, ACC) * acc + other * _div(e, n, ACC)[None, :]
    else:
        da = _div(acc, n, ACC)
    selfx = _load_x(sz, sm, scs, scs, offs_i[:, None], offs_k[None, :], N, D, True, True, False, ACC)
    mask = (offs_i < N)[:, None] & kmask[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    tl.store(da_ptr + view.to(tl.int64) * N * D + idx, da, mask=mask)
    pbase = part_ptr + (view * 3 * nbi + pid_i).to(tl.int64) * D + offs_k
    tl.store(pbase, tl.sum(da, axis=0), mask=kmask)  # padding rows of da are 0 (acc and other are)
    tl.store(pbase + nbi * D, tl.sum(da * selfx, axis=0), mask=kmask)
    tl.store(pbase + 2 * nbi * D, tl.sum(selfx, axis=0), mask=kmask)


@triton.jit
def _spectral_bwd_kernel(z1_ptr, z2_ptr, g_ptr, info_ptr, s2_ptr, dz1_ptr, dz2_ptr, da_ptr, part_ptr,
                         gl_ptr, gp_ptr, gn_ptr, N, D, mu: tl.float64,
                         SIDE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                         ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """SPEC §4 spectral, view = grid axis 2 (view 0: self a = t1∘z1, other b = t2∘z2).
    With a_pos = g_loss + g_pos, a_neg = g_loss + g_neg, κ = a_neg/(N(N−1)mu) and
    e_i = −2a_pos/(N·mu) − 2κ·p_i:  da = 2κ·(dF/da)/2 + e∘b, F = ‖a bᵀ‖²;
    the clamp's Jacobian dz_i = t_i·(da_i − proj_i·a_i·(a_i·da_i)) (proj = 1/mu on clamped rows).
    SIDE 0 (S = a bᵀ saved): dF/da = 2·S·b, dF/db = 2·Sᵀ·a, and a_i·da_i = 2κ·Σ_j S_ij² + e_i·p_i
        with Σ_j S_ij² from the forward: dz written in one pass.
    SIDE 1 (Ga = aᵀa, Gb = bᵀb saved): dF/da = 2·a·Gb; a_i·da_i is a reduction over all columns,
        so this pass stores da and per-tile partial row sums; ``_proj_finish_kernel`` finishes."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    view = tl.program_id(2)
    nbk = tl.num_programs(1)
    sz = _pick(view, z1_ptr, z2_ptr)
    oz = _pick(view, z2_ptr, z1_ptr)
    dzp = _pick(view, dz1_ptr, dz2_ptr)
    st = info_ptr + view * N          # t of self
    ot = info_ptr + (1 - view) * N    # t of other
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    imask = offs_i < N
    n = tl.cast(N, ACC)
    mu_ = _scalar(mu, ACC)
    gl = tl.load(gl_ptr).to(ACC)
    a_pos = gl + tl.load(gp_ptr).to(ACC)
    a_neg = gl + tl.load(gn_ptr).to(ACC)
    kappa = _div(a_neg, n * (n - 1.0) * mu_, ACC)
    p = tl.load(info_ptr + 4 * N + offs_i, mask=imask, other=0.0)
    e = _div(-2.0 * a_pos, n * mu_, ACC) - 2.0 * kappa * p
    if SIDE == 0:
        # view 0: S·b (S strides (N, 1)); view 1: Sᵀ·a (strides (1, N))
        s0 = 1 + (N - 1) * (1 - view)
        s1 = N + (1 - N) * (1 - view)
        acc = _gram_apply(g_ptr, s0, s1, oz, ot, ot, ot, offs_i, offs_k, N, D,
                          False, False, False, True, 0, BM, BK, ACC, DOT, PREC)
    else:
        gp = g_ptr + (1 - view).to(tl.int64) * D * D  # view 0 applies Gb, view 1 Ga
        acc = _gram_apply(gp, D, 1, sz, st, st, st, offs_i, offs_k, N, D,
                          False, False, False, True, 1, BM, BK, ACC, DOT, PREC)
    other = _load_x(oz, ot, ot, ot, offs_i[:, None], offs_k[None, :], N, D, False, False, True, ACC)
    selfx = _load_x(sz, st, st, st, offs_i[:, None], offs_k[None, :], N, D, False, False, True, ACC)
    da = 2.0 * kappa * acc + e[:, None] * other
    mask = imask[:, None] & (offs_k < D)[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    if SIDE == 0:
        s2 = tl.load(s2_ptr + view * N + offs_i, mask=imask, other=0.0)
        t = tl.load(st + offs_i, mask=imask, other=0.0)
        proj = tl.load(info_ptr + (2 + view) * N + offs_i, mask=imask, other=0.0)
        q = proj * (2.0 * kappa * s2 + e * p)
        dz = t[:, None] * (da - selfx * q[:, None])
        tl.store(dzp + idx, dz.to(dzp.dtype.element_ty), mask=mask)
    else:
        tl.store(da_ptr + view.to(tl.int64) * N * D + idx, da, mask=mask)
        tl.store(part_ptr + (view * nbk + pid_k).to(tl.int64) * N + offs_i, tl.sum(da * selfx, axis=1),
                 mask=imask)


@triton.jit
def _proj_finish_kernel(z1_ptr, z2_ptr, mean_ptr, scale_ptr, proj_ptr, da_ptr, part_ptr,
                        dz1_ptr, dz2_ptr, N, D, n_part,
                        COLWISE: tl.constexpr, BM: tl.constexpr, ACC: tl.constexpr):
    """Pass 2 of the two-pass backwards: dz = scale∘(da − …) with y the view's prologued rows.
    COLWISE (BatchNorm: cross_correlation, Barlow Twins): y = a = (z − mean)∘s, scale = s_k,
        dz = s∘(da − mean_i(da) − (a − mean_i a)∘mean_i(da∘a)), sums from part[view, 0:3, ·, k].
    else (spectral's clamp on the D×D side): y = a = t_i∘z, scale = t_i,
        dz = t∘(da − a∘Q), Q_i = proj_i·Σ_{column blocks} part[view, ·, i] = proj_i·(a_i·da_i)."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    view = tl.program_id(2)
    zp = _pick(view, z1_ptr, z2_ptr)
    dzp = _pick(view, dz1_ptr, dz2_ptr)
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    imask = offs_i < N
    kmask = offs_k < D
    mask = imask[:, None] & kmask[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    da = tl.load(da_ptr + view.to(tl.int64) * N * D + idx, mask=mask, other=0.0)
    if COLWISE:
        sm = mean_ptr + view * D
        sc = scale_ptr + view * D
        y = _load_x(zp, sm, sc, sc, offs_i[:, None], offs_k[None, :], N, D, True, True, False, ACC)
        q0 = tl.zeros((BM,), ACC)
        q1 = tl.zeros((BM,), ACC)
        q2 = tl.zeros((BM,), ACC)
        pbase = part_ptr + (view * 3 * n_part).to(tl.int64) * D + offs_k
        for r in range(0, n_part):
            r64 = tl.cast(r, tl.int64)
            q0 += tl.load(pbase + r64 * D, mask=kmask, other=0.0)
            q1 += tl.load(pbase + (n_part + r64) * D, mask=kmask, other=0.0)
            q2 += tl.load(pbase + (2 * n_part + r64) * D, mask=kmask, other=0.0)
        n = tl.cast(N, ACC)
        s = tl.load(sc + offs_k, mask=kmask, other=0.0)
        m_da = _div(q0, n, ACC)
        m_a = _div(q2, n, ACC)
        m_daa = _div(q1, n, ACC)
        dz = s[None, :] * (da - m_da[None, :] - (y - m_a[None, :]) * m_daa[None, :])
    else:
        st = scale_ptr + view * N
        y = _load_x(zp, st, st, st, offs_i[:, None], offs_k[None, :], N, D, False, False, True, ACC)
        q = tl.zeros((BM,), ACC)
        for r in range(0, n_part):
            q += tl.load(part_ptr + (view * n_part + tl.cast(r, tl.int64)) * N + offs_i, mask=imask,
                         other=0.0)
        q = q * tl.load(proj_ptr + view * N + offs_i, mask=imask, other=0.0)
        t = tl.load(st + offs_i, mask=imask, other=0.0)
        dz = t[:, None] * (da - y * q[:, None])
    tl.store(dzp + idx, dz.to(dzp.dtype.element_ty), mask=mask)


@triton.jit
def _ngram_bwd_kernel(z1_ptr, z2_ptr, info_ptr, go_ptr, sg0, sg1, q_ptr, dz1_ptr, dz2_ptr, N, D,
                      SINGLE: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                      ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """SPEC §1 normalized_gram, K = n1 n2ᵀ: dn1 = Gout·n2, dn2 = Goutᵀ·n1 (SINGLE, z2 = z1:
    dn = (Gout + Goutᵀ)·n), then l2n's Jacobian dz_i = r_i·(dn_i − f_i·n_i·(n_i·dn_i)) with
    r = 1/max(‖z‖, eps), f = [‖z‖ ≥ eps] and n_i·dn_i = Σ_j Gout_ij K_ij (row / column sums of
    Gout∘K from ``_rowcol_dot_kernel``, both for SINGLE): one pass."""
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    view = tl.program_id(2)
    offs_i = pid_i * BM + tl.arange(0, BM)
    offs_k = pid_k * BM + tl.arange(0, BM)
    imask = offs_i < N
    if SINGLE:
        rs = info_ptr
        fl = info_ptr + N
        acc = _gram_apply(go_ptr, sg0, sg1, z1_ptr, rs, rs, rs, offs_i, offs_k, N, D,
                          True, False, False, True, 0, BM, BK, ACC, DOT, PREC)
        q = tl.load(q_ptr + offs_i, mask=imask, other=0.0) \
            + tl.load(q_ptr + N + offs_i, mask=imask, other=0.0)
        zp = z1_ptr
        dzp = dz1_ptr
    else:
        zp = _pick(view, z1_ptr, z2_ptr)
        oz = _pick(view, z2_ptr, z1_ptr)
        dzp = _pick(view, dz1_ptr, dz2_ptr)
        rs = info_ptr + view * N
        fl = info_ptr + (2 + view) * N
        ors = info_ptr + (1 - view) * N
        t0 = sg0 + (sg1 - sg0) * view  # view 1 applies Goutᵀ
        t1 = sg1 + (sg0 - sg1) * view
        acc = _gram_apply(go_ptr, t0, t1, oz, ors, ors, ors, offs_i, offs_k, N, D,
                          False, False, False, True, 0, BM, BK, ACC, DOT, PREC)
        q = tl.load(q_ptr + view * N + offs_i, mask=imask, other=0.0)
    r = tl.load(rs + offs_i, mask=imask, other=0.0)
    f = tl.load(fl + offs_i, mask=imask, other=0.0)
    nself = _load_x(zp, rs, rs, rs, offs_i[:, None], offs_k[None, :], N, D, False, False, True, ACC)
    dz = r[:, None] * (acc - nself * (f * q)[:, None])
    mask = imask[:, None] & (offs_k < D)[None, :]
    idx = offs_i.to(tl.int64)[:, None] * D + offs_k[None, :]
    tl.store(dzp + idx, dz.to(dzp.dtype.element_ty), mask=mask)


# ============================================================================================
# Launchers


_TL = {torch.float32: tl.float32, torch.float64: tl.float64,
       torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


class _Cfg(NamedTuple):
    acc: torch.dtype    # accumulation / statistics dtype (SPEC "Notation")
    ACC: object         # the same as a triton dtype
    DOT: object         # tl.dot operand dtype: the input dtype for bf16/fp16 (tensor cores), else ACC
    PREC: str           # tl.dot input_precision (DESIGN convention 4)
    BM: int             # Gram tile edge (both tile dims, power of two, >= 16)
    BK: int             # tl.dot reduction block (>= 16)
    BR: int             # rows per statistics tile
    BD: int             # columns per statistics tile
    BV: int             # vector block of the one-program and 1-D kernels
    warps: int
    target: int         # programs wanted for the chunked statistics reductions


def _cfg(z: Tensor) -> _Cfg:
    return _cfg_of(z.dtype)


def _cfg_of(dtype: torch.dtype) -> _Cfg:
    acc = acc_dtype(dtype)
    ACC = _TL[acc]
    DOT = _TL[dtype] if dtype in (torch.bfloat16, torch.float16) else ACC
    prec = input_precision(dtype)
    if interpreting():
        # small blocks: several tiles at test sizes (31, 33, ...) and fast numpy-backed programs;
        # target=2 chunks per column block so that the chunk merges are exercised
        return _Cfg(acc, ACC, DOT, prec, 32, 16, 16, 32, 128, 4, 2)
    if dtype == torch.float64:
        return _Cfg(acc, ACC, DOT, prec, 32, 16, 32, 64, 1024, 4, 512)
    if dtype == torch.float32:
        return _Cfg(acc, ACC, DOT, prec, 64, 32, 32, 128, 1024, 4, 512)
    return _Cfg(acc, ACC, DOT, prec, 64, 64, 32, 128, 1024, 4, 512)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _chunking(n: int, block: int, other_programs: int, target: int) -> Tuple[int, int]:
    """(chunk length, number of chunks) splitting n into block-multiples so that about
    ``target`` programs run in all (stage 1 of a two-stage reduction)."""
    tiles = _cdiv(n, block)
    want = max(1, min(tiles, _cdiv(target, max(other_programs, 1))))
    chunk = _cdiv(tiles, want) * block
    return chunk, _cdiv(n, chunk)


def _colstats(z1: Tensor, z2: Optional[Tensor], eps: float, bn_scale: bool, cfg: _Cfg):
    """Per-column (mean (V, D), m2 (V, D), co (D), sq (D), cs (V, D)) for V = 1 or 2 views.

    Accumulated in float64 for every input dtype (memory-bound kernels: the wider arithmetic is
    free), as the CUDA backend's column moments. mean and cs, which build the GEMM operands, are
    rounded to the accumulation dtype; m2, co and sq stay float64: the finalize kernels subtract
    Σ_k m2_k² (VICReg) or Σ_k C_kk² (Barlow) from a Gram's ‖·‖² on the N×N side, and fp32-rounded
    moments there cost a few ulp of the loss (VICReg fp32 7×3: 3.2× eager's error)."""
    n, d = z1.shape
    two = z2 is not None
    v = 2 if two else 1
    dev = z1.device
    f64 = torch.float64
    nbd = _cdiv(d, cfg.BD)
    chunk, n_chunks = _chunking(n, cfg.BR, nbd, cfg.target)
    pmean = torch.empty((v, n_chunks, d), dtype=f64, device=dev)
    pm2 = torch.empty_like(pmean)
    pco = torch.empty((n_chunks, d) if two else (1,), dtype=f64, device=dev)
    psq = torch.empty_like(pco)
    _colstats_partial_kernel[(n_chunks, nbd)](
        z1, z2 if two else z1, pmean, pm2, pco, psq, n, d, chunk,
        TWO=two, BR=cfg.BR, BD=cfg.BD, ACC=tl.float64, num_warps=cfg.warps)
    mean = torch.empty((v, d), dtype=cfg.acc, device=dev)
    m2 = torch.empty((v, d), dtype=f64, device=dev)
    co = torch.empty((d,) if two else (1,), dtype=f64, device=dev)
    sq = torch.empty_like(co)
    cs = torch.empty_like(mean) if bn_scale else mean
    _colstats_merge_kernel[(nbd,)](
        pmean, pm2, pco, psq, mean, m2, co, sq, cs, n, d, chunk, n_chunks, float(eps),
        TWO=two, BN_SCALE=bn_scale, BD=cfg.BD, ACC=tl.float64, num_warps=cfg.warps)
    return mean, m2, co, sq, cs


def _rowstats(z1: Tensor, z2: Optional[Tensor], cols: bool, cfg: _Cfg):
    """(row partials (chunks, 3, N), number of chunks, column partials (row blocks, D) or None),
    float64."""
    n, d = z1.shape
    two = z2 is not None
    dev = z1.device
    nbm = _cdiv(n, cfg.BR)
    chunk, n_chunks = _chunking(d, cfg.BD, nbm, cfg.target)
    part = torch.empty((n_chunks, 3, n), dtype=torch.float64, device=dev)
    colp = torch.empty((nbm, d), dtype=torch.float64, device=dev) if cols else part
    _rowstats_partial_kernel[(nbm, n_chunks)](
        z1, z2 if two else z1, part, colp, n, d, chunk,
        TWO=two, COLS=cols, BM=cfg.BR, BD=cfg.BD, SACC=tl.float64, num_warps=cfg.warps)
    return part, n_chunks, (colp if cols else None)


def _sum_partials(part: Tensor, r: int, m: int, stride: int, cfg: _Cfg) -> Tensor:
    """Σ over the r partial rows, in the partials' dtype."""
    out = torch.empty((m,), dtype=part.dtype, device=part.device)
    _sum_partials_kernel[(_cdiv(m, cfg.BV),)](part, out, r, m, stride, BV=cfg.BV, ACC=_TL[part.dtype],
                                              num_warps=cfg.warps)
    return out


def _rowinfo(z1: Tensor, z2: Optional[Tensor], clamp: bool, mu: float, cfg: _Cfg) -> Tensor:
    n = z1.shape[0]
    part, n_chunks, _ = _rowstats(z1, z2, False, cfg)
    two = z2 is not None
    rows = 5 if clamp else (4 if two else 2)
    info = torch.empty((rows, n), dtype=cfg.acc, device=z1.device)
    radius = float(mu) ** 0.5 if clamp else 0.0
    inv_mu = 1.0 / float(mu) if clamp else 0.0
    _rowinfo_kernel[(_cdiv(n, cfg.BV),)](part, info, n, n_chunks, radius, inv_mu, L2_EPS,
                                         CLAMP=clamp, TWO=two, BV=cfg.BV, SACC=tl.float64,
                                         num_warps=cfg.warps)
    return info


class _Operand(NamedTuple):
    z: Tensor
    mean: Optional[Tensor] = None
    cscale: Optional[Tensor] = None
    rscale: Optional[Tensor] = None


def _gram_reduce(side: str, mode: int, a: _Operand, b: Optional[_Operand], cfg: _Cfg, *,
                 store: bool, views: int = 1, rowcol: bool = False, out_div: int = 1,
                 sums: bool = True):
    """Launch ``_gram_reduce_kernel``; returns (G or None, partials (views, 2, nb, nb), rowp, colp).

    ``sums``: the caller uses the partial sums of squares (a loss or criterion, not a primitive's
    matrix alone). For fp32 under IEEE precision ("highest") their Gram tiles are then accumulated
    in float64, as the CUDA backend takes those Grams from a float64 GEMM: the losses cancel most
    of ‖G‖² (Barlow's ⟨a aᵀ, b bᵀ⟩/N² − Σ C_kk² on the N×N side, VICReg's ‖x xᵀ‖² − Σ m2²), so
    fp32-rounded tile entries left the kernel 2-3 ulp off where eager's direct D×D sum was within
    one, on some CPUs' BLAS under the interpreter (Barlow fp32 2×5, sample side, OpenBLAS SkylakeX
    kernels). The stored G (for the backward) is still rounded to fp32.
    """
    n, d = a.z.shape
    m = n if side == "sample" else d
    dev = a.z.device
    if sums and cfg.acc == torch.float32 and cfg.PREC == "ieee":
        wide = _cfg_of(torch.float64)
        cfg = cfg._replace(ACC=wide.ACC, DOT=wide.DOT, BM=wide.BM, BK=wide.BK)
    nb = _cdiv(m, cfg.BM)
    dummy = torch.empty((1,), dtype=cfg.acc, device=dev)
    b = a if b is None else b
    n_mats = 2 if mode == _PAIR else views
    g = torch.empty((n_mats, m, m), dtype=cfg.acc, device=dev) if store else dummy
    part = torch.zeros((views, 2, nb, nb), dtype=torch.float64, device=dev)
    rowp = torch.empty((nb, m), dtype=cfg.acc, device=dev) if rowcol else dummy
    colp = torch.empty((nb, m), dtype=cfg.acc, device=dev) if rowcol else dummy

    def vec(t):
        return dummy if t is None else t

    _gram_reduce_kernel[(nb, nb, views)](
        a.z, vec(a.mean), vec(a.cscale), vec(a.rscale), b.z, vec(b.mean), vec(b.cscale), vec(b.rscale),
        g, part, rowp, colp, n, d, out_div,
        SIDE=_SAMPLE if side == "sample" else _DIMENSION, MODE=mode, STORE=store, ROWCOL=rowcol,
        A_M=a.mean is not None, A_C=a.cscale is not None, A_R=a.rscale is not None,
        B_M=b.mean is not None, B_C=b.cscale is not None, B_R=b.rscale is not None,
        BM=cfg.BM, BK=cfg.BK, ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC, num_warps=cfg.warps)
    return (g if store else None), part, (rowp if rowcol else None), (colp if rowcol else None)


def _rowcol_dot(a: Tensor, b: Tensor, cfg: _Cfg) -> Tensor:
    """(2, M): row sums and column sums of a∘b (M×M, any strides)."""
    m = a.shape[0]
    out = torch.empty((2, m), dtype=cfg.acc, device=a.device)
    bv = 32 if interpreting() else 64
    _rowcol_dot_kernel[(_cdiv(m, bv), 2)](a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1),
                                          out, m, BV=bv, BW=bv, ACC=cfg.ACC, num_warps=cfg.warps)
    return out


def _zeros0(like: Tensor, g: Optional[Tensor]) -> Tensor:
    """An incoming 0-dim gradient, or 0 where autograd passes None (an unused output)."""
    if g is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return g.to(like.dtype).contiguous()


def _apply_grid(n: int, d: int, cfg: _Cfg, views: int):
    return (_cdiv(n, cfg.BM), _cdiv(d, cfg.BM), views)


def _acc_of(z: Tensor) -> torch.dtype:
    return acc_dtype(z.dtype)


# ============================================================================================
# VICReg (SPEC §3)


def _vicreg_fwd_impl(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
               gamma: float, eps: float, side: str
               ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, invariance, variance, covariance, gram (2, M, M), mean (2, D), m2 (2, D) float64)."""
    cfg = _cfg(z1)
    n, d = z1.shape
    with _device(z1):
        # one launch for both views' column moments and Σ(z1 − z2)² (the invariance term)
        mean, m2, _, sq, _ = _colstats(z1, z2, 0.0, False, cfg)
        g, part, _, _ = _gram_reduce(side, _SYM, _Operand(z1, mean[0]), _Operand(z2, mean[1]), cfg,
                                     store=True, views=2)
        outs = [torch.empty((), dtype=cfg.acc, device=z1.device) for _ in range(4)]
        _vicreg_finalize_kernel[(1,)](part, part[0, 0].numel(), m2, sq, *outs, n, d,
                                      float(inv_weight), float(var_weight), float(cov_weight),
                                      float(gamma), float(eps), NATIVE=side == "dimension",
                                      BV=cfg.BV, FIN=tl.float64,
                                      num_warps=cfg.warps)
    return (*outs, g, mean, m2)


vicreg_fwd = torch.library.custom_op("duality_kernels::vicreg_fwd", mutates_args=())(_vicreg_fwd_impl)


@vicreg_fwd.register_fake
def _(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side):
    n, d = z1.shape
    m = n if side == "sample" else d
    acc = _acc_of(z1)
    scalars = [z1.new_empty((), dtype=acc) for _ in range(4)]
    return (*scalars, z1.new_empty((2, m, m), dtype=acc), z1.new_empty((2, d), dtype=acc),
            z1.new_empty((2, d), dtype=torch.float64))


def _vicreg_bwd_impl(z1: Tensor, z2: Tensor, gram: Tensor, mean: Tensor, m2: Tensor,
               g_loss: Tensor, g_inv: Tensor, g_var: Tensor, g_cov: Tensor,
               inv_weight: float, var_weight: float, cov_weight: float, gamma: float, eps: float,
               side: str) -> Tuple[Tensor, Tensor]:
    cfg = _cfg(z1)
    n, d = z1.shape
    dz1 = torch.empty_like(z1)
    dz2 = torch.empty_like(z2)
    with _device(z1):
        _vicreg_bwd_kernel[_apply_grid(n, d, cfg, 2)](
            z1, z2, gram, mean, m2, dz1, dz2, g_loss, g_inv, g_var, g_cov, n, d,
            float(inv_weight), float(var_weight), float(cov_weight), float(gamma), float(eps),
            SIDE=_SAMPLE if side == "sample" else _DIMENSION, BM=cfg.BM, BK=cfg.BK,
            ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC, num_warps=cfg.warps)
    return dz1, dz2


vicreg_bwd = torch.library.custom_op("duality_kernels::vicreg_bwd", mutates_args=())(_vicreg_bwd_impl)


@vicreg_bwd.register_fake
def _(z1, z2, gram, mean, m2, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight, cov_weight,
      gamma, eps, side):
    return torch.empty_like(z1), torch.empty_like(z2)


def _vicreg_setup(ctx, inputs, output):
    z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side = inputs
    ctx.save_for_backward(z1, z2, output[4], output[5], output[6])
    ctx.args = (inv_weight, var_weight, cov_weight, gamma, eps, side)


def _vicreg_backward(ctx, g_loss, g_inv, g_var, g_cov, *_unused):
    z1, z2, gram, mean, m2 = ctx.saved_tensors
    gs = [_zeros0(mean, g) for g in (g_loss, g_inv, g_var, g_cov)]
    dz1, dz2 = pick(ctx, vicreg_bwd, _vicreg_bwd_impl)(z1, z2, gram, mean, m2, *gs, *ctx.args)
    return dz1, dz2, None, None, None, None, None, None


vicreg_fwd.register_autograd(_vicreg_backward, setup_context=_vicreg_setup)
_SPEC_VICREG = Spec(vicreg_fwd, _vicreg_fwd_impl, _vicreg_setup, _vicreg_backward, 4)


def vicreg(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
           gamma: float, eps: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SPEC §3 VICReg (reference.vicreg with ctx LOCAL): (loss, {"invariance", "variance", "covariance"})."""
    loss, inv, var, cov, *_ = apply(_SPEC_VICREG, z1.contiguous(), z2.contiguous(), float(inv_weight),
                                         float(var_weight), float(cov_weight), float(gamma),
                                         float(eps), side)
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


# ============================================================================================
# Barlow Twins (SPEC §3)


def _barlow_twins_fwd_impl(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, on_diagonal, off_diagonal, grams, mean (2, D), cs (2, D), co (D)).

    grams: side "dimension" → P = aᵀb (1, D, D); side "sample" → [a aᵀ, b bᵀ] (2, N, N).
    cs = 1/sqrt(var_b + eps), co = the centered co-moment Σ_i x1_ik·x2_ik (float64), so
    C_kk = co·cs1·cs2/N."""
    cfg = _cfg(z1)
    n, d = z1.shape
    with _device(z1):
        mean, _, co, _, cs = _colstats(z1, z2, eps, True, cfg)
        a = _Operand(z1, mean[0], cs[0])
        b = _Operand(z2, mean[1], cs[1])
        # N×N side: ⟨a aᵀ, b bᵀ⟩ (PAIR); D×D side: ‖aᵀb‖² (CROSS). SPEC §3
        g, part, _, _ = _gram_reduce(side, _PAIR if side == "sample" else _CROSS, a, b, cfg, store=True)
        outs = [torch.empty((), dtype=cfg.acc, device=z1.device) for _ in range(3)]
        _barlow_finalize_kernel[(1,)](part, part[0, 0].numel(), cs, co, *outs, n, d,
                                      float(lambda_param), NATIVE=side == "dimension",
                                      BV=cfg.BV, FIN=tl.float64, num_warps=cfg.warps)
    return (*outs, g, mean, cs, co)


barlow_twins_fwd = torch.library.custom_op("duality_kernels::barlow_twins_fwd", mutates_args=())(_barlow_twins_fwd_impl)


@barlow_twins_fwd.register_fake
def _(z1, z2, lambda_param, eps, side):
    n, d = z1.shape
    acc = _acc_of(z1)
    scalars = [z1.new_empty((), dtype=acc) for _ in range(3)]
    g = z1.new_empty((2, n, n) if side == "sample" else (1, d, d), dtype=acc)
    return (*scalars, g, z1.new_empty((2, d), dtype=acc), z1.new_empty((2, d), dtype=acc),
            z1.new_empty((d,), dtype=torch.float64))


def _bn_backward(z1, z2, mean, cs, m, co, gl, gon, goff, lambda_param, side, barlow, cfg):
    """Both passes of the BatchNorm backward (``_bn_bwd_kernel`` + ``_proj_finish_kernel``)."""
    n, d = z1.shape
    dz1 = torch.empty_like(z1)
    dz2 = torch.empty_like(z2)
    grid = _apply_grid(n, d, cfg, 2)
    da = torch.empty((2, n, d), dtype=cfg.acc, device=z1.device)
    part = torch.empty((2, 3, grid[0], d), dtype=cfg.acc, device=z1.device)
    s0, s1 = (m.stride(-2), m.stride(-1))
    with _device(z1):
        _bn_bwd_kernel[grid](
            z1, z2, mean, cs, m, s0, s1, co, da, part, gl, gon, goff, n, d, float(lambda_param),
            SIDE=_SAMPLE if side == "sample" else _DIMENSION, BARLOW=barlow, BM=cfg.BM, BK=cfg.BK,
            ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC, num_warps=cfg.warps)
        _proj_finish_kernel[grid](
            z1, z2, mean, cs, cs, da, part, dz1, dz2, n, d, grid[0],
            COLWISE=True, BM=cfg.BM, ACC=cfg.ACC, num_warps=cfg.warps)
    return dz1, dz2


def _barlow_twins_bwd_impl(z1: Tensor, z2: Tensor, grams: Tensor, mean: Tensor, cs: Tensor, co: Tensor,
                     g_loss: Tensor, g_on: Tensor, g_off: Tensor, lambda_param: float,
                     side: str) -> Tuple[Tensor, Tensor]:
    return _bn_backward(z1, z2, mean, cs, grams, co, g_loss, g_on, g_off, lambda_param, side, True,
                        _cfg(z1))


barlow_twins_bwd = torch.library.custom_op("duality_kernels::barlow_twins_bwd", mutates_args=())(_barlow_twins_bwd_impl)


@barlow_twins_bwd.register_fake
def _(z1, z2, grams, mean, cs, co, g_loss, g_on, g_off, lambda_param, side):
    return torch.empty_like(z1), torch.empty_like(z2)


def _barlow_setup(ctx, inputs, output):
    z1, z2, lambda_param, eps, side = inputs
    ctx.save_for_backward(z1, z2, *output[3:7])
    ctx.args = (lambda_param, side)


def _barlow_backward(ctx, g_loss, g_on, g_off, *_unused):
    z1, z2, grams, mean, cs, co = ctx.saved_tensors
    gs = [_zeros0(mean, g) for g in (g_loss, g_on, g_off)]
    dz1, dz2 = pick(ctx, barlow_twins_bwd, _barlow_twins_bwd_impl)(z1, z2, grams, mean, cs, co, *gs, *ctx.args)
    return dz1, dz2, None, None, None


barlow_twins_fwd.register_autograd(_barlow_backward, setup_context=_barlow_setup)
_SPEC_BARLOW_TWINS = Spec(barlow_twins_fwd, _barlow_twins_fwd_impl, _barlow_setup, _barlow_backward, 3)


def barlow_twins(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                 ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SPEC §3 Barlow Twins: (loss, {"on_diagonal", "off_diagonal"})."""
    loss, on, off, *_ = apply(_SPEC_BARLOW_TWINS, z1.contiguous(), z2.contiguous(), float(lambda_param),
                                         float(eps), side)
    return loss, {"on_diagonal": on, "off_diagonal": off}


# ============================================================================================
# Spectral contrastive (SPEC §4)


def _spectral_fwd_impl(z1: Tensor, z2: Tensor, mu: float, side: str
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, positive, negative, grams, info (5, N), s2).

    grams: side "sample" → S = a bᵀ (1, N, N), s2 = (Σ_j S_ij², Σ_i S_ij) as (2, N);
    side "dimension" → [aᵀa, bᵀb] (2, D, D), s2 empty (2, 0). info = [t1, t2, proj1, proj2, p]
    (``_rowinfo_kernel``)."""
    cfg = _cfg(z1)
    n, d = z1.shape
    with _device(z1):
        info = _rowinfo(z1, z2, True, mu, cfg)
        a = _Operand(z1, rscale=info[0])
        b = _Operand(z2, rscale=info[1])
        if side == "sample":
            g, part, rowp, colp = _gram_reduce(side, _CROSS, a, b, cfg, store=True, rowcol=True)
            nb = rowp.shape[0]
            s2 = torch.stack([_sum_partials(rowp, nb, n, n, cfg), _sum_partials(colp, nb, n, n, cfg)])
        else:
            g, part, _, _ = _gram_reduce(side, _PAIR, a, b, cfg, store=True)
            s2 = torch.empty((2, 0), dtype=cfg.acc, device=z1.device)
        outs = [torch.empty((), dtype=cfg.acc, device=z1.device) for _ in range(3)]
        _spectral_finalize_kernel[(1,)](part, part[0, 0].numel(), info, *outs, n, float(mu),
                                        NATIVE=side == "sample", BV=cfg.BV, FIN=tl.float64,
                                        num_warps=cfg.warps)
    return (*outs, g, info, s2)


spectral_fwd = torch.library.custom_op("duality_kernels::spectral_fwd", mutates_args=())(_spectral_fwd_impl)


@spectral_fwd.register_fake
def _(z1, z2, mu, side):
    n, d = z1.shape
    acc = _acc_of(z1)
    scalars = [z1.new_empty((), dtype=acc) for _ in range(3)]
    if side == "sample":
        g = z1.new_empty((1, n, n), dtype=acc)
        s2 = z1.new_empty((2, n), dtype=acc)
    else:
        g = z1.new_empty((2, d, d), dtype=acc)
        s2 = z1.new_empty((2, 0), dtype=acc)
    return (*scalars, g, z1.new_empty((5, n), dtype=acc), s2)


def _spectral_bwd_impl(z1: Tensor, z2: Tensor, grams: Tensor, info: Tensor, s2: Tensor,
                 g_loss: Tensor, g_pos: Tensor, g_neg: Tensor, mu: float, side: str
                 ) -> Tuple[Tensor, Tensor]:
    cfg = _cfg(z1)
    n, d = z1.shape
    dz1 = torch.empty_like(z1)
    dz2 = torch.empty_like(z2)
    grid = _apply_grid(n, d, cfg, 2)
    with _device(z1):
        if side == "sample":
            _spectral_bwd_kernel[grid](
                z1, z2, grams, info, s2, dz1, dz2, info, info, g_loss, g_pos, g_neg, n, d, float(mu),
                SIDE=_SAMPLE, BM=cfg.BM, BK=cfg.BK, ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC,
                num_warps=cfg.warps)
        else:
            # two passes: a_i·da_i needs every column of the row (module docstring)
            da = torch.empty((2, n, d), dtype=cfg.acc, device=z1.device)
            part = torch.empty((2, grid[1], n), dtype=cfg.acc, device=z1.device)
            _spectral_bwd_kernel[grid](
                z1, z2, grams, info, info, dz1, dz2, da, part, g_loss, g_pos, g_neg, n, d, float(mu),
                SIDE=_DIMENSION, BM=cfg.BM, BK=cfg.BK, ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC,
                num_warps=cfg.warps)
            _proj_finish_kernel[grid](
                z1, z2, info, info, info[2:4], da, part, dz1, dz2, n, d, grid[1],
                COLWISE=False, BM=cfg.BM, ACC=cfg.ACC, num_warps=cfg.warps)
    return dz1, dz2


spectral_bwd = torch.library.custom_op("duality_kernels::spectral_bwd", mutates_args=())(_spectral_bwd_impl)


@spectral_bwd.register_fake
def _(z1, z2, grams, info, s2, g_loss, g_pos, g_neg, mu, side):
    return torch.empty_like(z1), torch.empty_like(z2)


def _spectral_setup(ctx, inputs, output):
    z1, z2, mu, side = inputs
    ctx.save_for_backward(z1, z2, *output[3:6])
    ctx.args = (mu, side)


def _spectral_backward(ctx, g_loss, g_pos, g_neg, *_unused):
    z1, z2, grams, info, s2 = ctx.saved_tensors
    gs = [_zeros0(info, g) for g in (g_loss, g_pos, g_neg)]
    dz1, dz2 = pick(ctx, spectral_bwd, _spectral_bwd_impl)(z1, z2, grams, info, s2, *gs, *ctx.args)
    return dz1, dz2, None, None


spectral_fwd.register_autograd(_spectral_backward, setup_context=_spectral_setup)
_SPEC_SPECTRAL = Spec(spectral_fwd, _spectral_fwd_impl, _spectral_setup, _spectral_backward, 3)


def spectral(z1: Tensor, z2: Tensor, mu: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SPEC §4 spectral contrastive: (loss, {"positive", "negative"})."""
    loss, pos, neg, *_ = apply(_SPEC_SPECTRAL, z1.contiguous(), z2.contiguous(), float(mu), side)
    return loss, {"positive": pos, "negative": neg}


# ============================================================================================
# covariance (SPEC §1)


def _covariance_fwd_impl(z: Tensor, correction: int) -> Tuple[Tensor, Tensor]:
    """-> (center(z)ᵀcenter(z)/(N − correction) (D, D), column means (D,))."""
    cfg = _cfg(z)
    n, d = z.shape
    with _device(z):
        mean, _, _, _, _ = _colstats(z, None, 0.0, False, cfg)
        g, _, _, _ = _gram_reduce("dimension", _SYM, _Operand(z, mean[0]), None, cfg, store=True,
                                  out_div=n - int(correction), sums=False)
    return g[0], mean[0]


covariance_fwd = torch.library.custom_op("duality_kernels::covariance_fwd", mutates_args=())(_covariance_fwd_impl)


@covariance_fwd.register_fake
def _(z, correction):
    d = z.shape[1]
    acc = _acc_of(z)
    return z.new_empty((d, d), dtype=acc), z.new_empty((d,), dtype=acc)


def _covariance_bwd_impl(z: Tensor, mean: Tensor, grad: Tensor, correction: int) -> Tensor:
    cfg = _cfg(z)
    n, d = z.shape
    dz = torch.empty_like(z)
    with _device(z):
        _covariance_bwd_kernel[_apply_grid(n, d, cfg, 1)](
            z, mean, grad, grad.stride(0), grad.stride(1), dz, n, d, n - int(correction),
            BM=cfg.BM, BK=cfg.BK, ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC, num_warps=cfg.warps)
    return dz


covariance_bwd = torch.library.custom_op("duality_kernels::covariance_bwd", mutates_args=())(_covariance_bwd_impl)


@covariance_bwd.register_fake
def _(z, mean, grad, correction):
    return torch.empty_like(z)


def _covariance_setup(ctx, inputs, output):
    z, correction = inputs
    ctx.save_for_backward(z, output[1])
    ctx.correction = correction


def _covariance_backward(ctx, grad, _unused):
    z, mean = ctx.saved_tensors
    if grad is None:
        return None, None
    return pick(ctx, covariance_bwd, _covariance_bwd_impl)(z, mean, grad, ctx.correction), None


covariance_fwd.register_autograd(_covariance_backward, setup_context=_covariance_setup)
_SPEC_COVARIANCE = Spec(covariance_fwd, _covariance_fwd_impl, _covariance_setup, _covariance_backward, 1)


def covariance(z: Tensor, correction: int = 1) -> Tensor:
    """SPEC §1 covariance: center(z)ᵀ center(z) / (N − correction), (D, D)."""
    return apply(_SPEC_COVARIANCE, z.contiguous(), int(correction))[0]


# ============================================================================================
# cross_correlation (SPEC §1)


def _cross_correlation_fwd_impl(z1: Tensor, z2: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (C = s(z1)ᵀ s(z2)/N (D, D), mean (2, D), cs (2, D))."""
    cfg = _cfg(z1)
    n, d = z1.shape
    with _device(z1):
        mean, _, _, _, cs = _colstats(z1, z2, eps, True, cfg)
        g, _, _, _ = _gram_reduce("dimension", _CROSS, _Operand(z1, mean[0], cs[0]),
                                  _Operand(z2, mean[1], cs[1]), cfg, store=True, out_div=n,
                                  sums=False)
    return g[0], mean, cs


cross_correlation_fwd = torch.library.custom_op("duality_kernels::cross_correlation_fwd", mutates_args=())(_cross_correlation_fwd_impl)


@cross_correlation_fwd.register_fake
def _(z1, z2, eps):
    d = z1.shape[1]
    acc = _acc_of(z1)
    return (z1.new_empty((d, d), dtype=acc), z1.new_empty((2, d), dtype=acc),
            z1.new_empty((2, d), dtype=acc))


def _cross_correlation_bwd_impl(z1: Tensor, z2: Tensor, mean: Tensor, cs: Tensor, grad: Tensor
                          ) -> Tuple[Tensor, Tensor]:
    return _bn_backward(z1, z2, mean, cs, grad, cs, grad, grad, grad, 0.0, "dimension", False,
                        _cfg(z1))


cross_correlation_bwd = torch.library.custom_op("duality_kernels::cross_correlation_bwd", mutates_args=())(_cross_correlation_bwd_impl)


@cross_correlation_bwd.register_fake
def _(z1, z2, mean, cs, grad):
    return torch.empty_like(z1), torch.empty_like(z2)


def _xcorr_setup(ctx, inputs, output):
    z1, z2, eps = inputs
    ctx.save_for_backward(z1, z2, output[1], output[2])


def _xcorr_backward(ctx, grad, *_unused):
    z1, z2, mean, cs = ctx.saved_tensors
    if grad is None:
        return None, None, None
    dz1, dz2 = pick(ctx, cross_correlation_bwd, _cross_correlation_bwd_impl)(z1, z2, mean, cs, grad)
    return dz1, dz2, None


cross_correlation_fwd.register_autograd(_xcorr_backward, setup_context=_xcorr_setup)
_SPEC_CROSS_CORRELATION = Spec(cross_correlation_fwd, _cross_correlation_fwd_impl, _xcorr_setup, _xcorr_backward, 1)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """SPEC §1 cross_correlation: BatchNorm-standardized s(z1)ᵀ s(z2) / N, (D, D)."""
    return apply(_SPEC_CROSS_CORRELATION, z1.contiguous(), z2.contiguous(), float(eps))[0]


# ============================================================================================
# normalized_gram (SPEC §1)


def _normalized_gram_fwd_impl(z1: Tensor, z2: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """-> (K = l2n(z1)·l2n(z2 or z1)ᵀ (N, N), info): info rows [1/max(‖z_v‖, eps) per view,
    [‖z_v‖ ≥ eps] per view] ((2, N) without z2, (4, N) with it)."""
    cfg = _cfg(z1)
    with _device(z1):
        info = _rowinfo(z1, z2, False, 1.0, cfg)
        if z2 is None:
            g, _, _, _ = _gram_reduce("sample", _SYM, _Operand(z1, rscale=info[0]), None, cfg, store=True,
                                      sums=False)
        else:
            g, _, _, _ = _gram_reduce("sample", _CROSS, _Operand(z1, rscale=info[0]),
                                      _Operand(z2, rscale=info[1]), cfg, store=True, sums=False)
    return g[0], info


normalized_gram_fwd = torch.library.custom_op("duality_kernels::normalized_gram_fwd", mutates_args=())(_normalized_gram_fwd_impl)


@normalized_gram_fwd.register_fake
def _(z1, z2):
    n = z1.shape[0]
    acc = _acc_of(z1)
    return z1.new_empty((n, n), dtype=acc), z1.new_empty((2 if z2 is None else 4, n), dtype=acc)


def _normalized_gram_bwd_impl(z1: Tensor, z2: Optional[Tensor], k: Tensor, info: Tensor, grad: Tensor
                        ) -> List[Tensor]:
    """-> [dz1] without z2, [dz1, dz2] with it."""
    cfg = _cfg(z1)
    n, d = z1.shape
    single = z2 is None
    dz1 = torch.empty_like(z1)
    dz2 = dz1 if single else torch.empty_like(z2)
    with _device(z1):
        q = _rowcol_dot(grad, k, cfg)  # n_i·dn_i (row sums; column sums for view 2 / Goutᵀ)
        _ngram_bwd_kernel[_apply_grid(n, d, cfg, 1 if single else 2)](
            z1, z1 if single else z2, info, grad, grad.stride(0), grad.stride(1), q, dz1, dz2, n, d,
            SINGLE=single, BM=cfg.BM, BK=cfg.BK, ACC=cfg.ACC, DOT=cfg.DOT, PREC=cfg.PREC,
            num_warps=cfg.warps)
    return [dz1] if single else [dz1, dz2]


normalized_gram_bwd = torch.library.custom_op("duality_kernels::normalized_gram_bwd", mutates_args=())(_normalized_gram_bwd_impl)


@normalized_gram_bwd.register_fake
def _(z1, z2, k, info, grad):
    return [torch.empty_like(z1)] if z2 is None else [torch.empty_like(z1), torch.empty_like(z2)]


def _ngram_setup(ctx, inputs, output):
    z1, z2 = inputs
    ctx.single = z2 is None
    ctx.save_for_backward(z1, z1 if z2 is None else z2, *output)


def _ngram_backward(ctx, grad, _unused):
    z1, z2, k, info = ctx.saved_tensors
    if grad is None:
        return None, None
    if ctx.single:
        return pick(ctx, normalized_gram_bwd, _normalized_gram_bwd_impl)(z1, None, k, info, grad)[0], None
    dz1, dz2 = pick(ctx, normalized_gram_bwd, _normalized_gram_bwd_impl)(z1, z2, k, info, grad)
    return dz1, dz2


normalized_gram_fwd.register_autograd(_ngram_backward, setup_context=_ngram_setup)
_SPEC_NORMALIZED_GRAM = Spec(normalized_gram_fwd, _normalized_gram_fwd_impl, _ngram_setup, _ngram_backward, 1)


def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None) -> Tensor:
    """SPEC §1 normalized_gram: l2n(z1) · l2n(z2 or z1)ᵀ, (N, N)."""
    return apply(_SPEC_NORMALIZED_GRAM, z1.contiguous(), None if z2 is None else z2.contiguous())[0]


# ============================================================================================
# duality_terms (SPEC §2)


def _duality_terms_fwd_impl(z: Tensor, side: str
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (L_c, L_nc, Σ_i‖z_i‖⁴, Σ_k‖z_:k‖⁴, gram (1, M, M), row sums of squares (N,),
    column sums of squares (D,)); the two sums of squares in float64 (``_rowstats``)."""
    cfg = _cfg(z)
    n, d = z.shape
    with _device(z):
        part_r, n_chunks, colp = _rowstats(z, None, True, cfg)
        r = _sum_partials(part_r, n_chunks, n, 3 * n, cfg)
        c = _sum_partials(colp, colp.shape[0], d, d, cfg)
        g, part, _, _ = _gram_reduce(side, _SYM, _Operand(z), None, cfg, store=True)
        outs = [torch.empty((), dtype=cfg.acc, device=z.device) for _ in range(4)]
        _duality_finalize_kernel[(1,)](part, part[0, 0].numel(), r, c, *outs, n, d,
                                       SIDE=_SAMPLE if side == "sample" else _DIMENSION,
                                       BV=cfg.BV, FIN=tl.float64, num_warps=cfg.warps)
    return (*outs, g, r, c)


duality_terms_fwd = torch.library.custom_op("duality_kernels::duality_terms_fwd", mutates_args=())(_duality_terms_fwd_impl)


@duality_terms_fwd.register_fake
def _(z, side):
    n, d = z.shape
    m = n if side == "sample" else d
    acc = _acc_of(z)
    scalars = [z.new_empty((), dtype=acc) for _ in range(4)]
    return (*scalars, z.new_empty((1, m, m), dtype=acc), z.new_empty((n,), dtype=torch.float64),
            z.new_empty((d,), dtype=torch.float64))


def _duality_terms_bwd_impl(z: Tensor, gram: Tensor, r: Tensor, c: Tensor, g_lc: Tensor, g_lnc: Tensor,
                      g_r4: Tensor, g_c4: Tensor, side: str) -> Tensor:
    cfg = _cfg(z)
    n, d = z.shape
    dz = torch.empty_like(z)
    with _device(z):
        _duality_bwd_kernel[_apply_grid(n, d, cfg, 1)](
            z, gram, r, c, dz, g_lc, g_lnc, g_r4, g_c4, n, d,
            SIDE=_SAMPLE if side == "sample" else _DIMENSION, BM=cfg.BM, BK=cfg.BK, ACC=cfg.ACC,
            DOT=cfg.DOT, PREC=cfg.PREC, num_warps=cfg.warps)
    return dz


duality_terms_bwd = torch.library.custom_op("duality_kernels::duality_terms_bwd", mutates_args=())(_duality_terms_bwd_impl)


@duality_terms_bwd.register_fake
def _(z, gram, r, c, g_lc, g_lnc, g_r4, g_c4, side):
    return torch.empty_like(z)


def _duality_setup(ctx, inputs, output):
    z, side = inputs
    ctx.save_for_backward(z, *output[4:7])
    ctx.side = side


def _duality_backward(ctx, g_lc, g_lnc, g_r4, g_c4, *_unused):
    z, gram, r, c = ctx.saved_tensors
    gs = [_zeros0(gram, g) for g in (g_lc, g_lnc, g_r4, g_c4)]
    return pick(ctx, duality_terms_bwd, _duality_terms_bwd_impl)(z, gram, r, c, *gs, ctx.side), None


duality_terms_fwd.register_autograd(_duality_backward, setup_context=_duality_setup)
_SPEC_DUALITY_TERMS = Spec(duality_terms_fwd, _duality_terms_fwd_impl, _duality_setup, _duality_backward, 4)


def duality_terms(z: Tensor, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """SPEC §2: (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_{:,k}‖⁴) from one Gram on ``side``."""
    lc, lnc, r4, c4, *_ = apply(_SPEC_DUALITY_TERMS, z.contiguous(), side)
    return lc, lnc, r4, c4


# ---- drop-in torch.autograd.Function subclasses (DESIGN convention 2): contiguous inputs, side
# already "sample" or "dimension"; the public functions in functional.py validate and pick it.

VICRegFunction = function(_SPEC_VICREG, "VICRegFunction", "VICReg (SPEC §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side)`` -> (loss, invariance, variance, covariance).")
BarlowTwinsFunction = function(_SPEC_BARLOW_TWINS, "BarlowTwinsFunction", "Barlow Twins (SPEC §3): ``apply(z1, z2, lambda_param, eps, side)`` -> (loss, on_diagonal, off_diagonal).")
SpectralContrastiveFunction = function(_SPEC_SPECTRAL, "SpectralContrastiveFunction", "Spectral contrastive loss (SPEC §4): ``apply(z1, z2, mu, side)`` -> (loss, positive, negative).")
CovarianceFunction = function(_SPEC_COVARIANCE, "CovarianceFunction", "covariance (SPEC §1): ``apply(z, correction)`` -> (C,).")
CrossCorrelationFunction = function(_SPEC_CROSS_CORRELATION, "CrossCorrelationFunction", "cross_correlation (SPEC §1): ``apply(z1, z2, eps)`` -> (C,).")
NormalizedGramFunction = function(_SPEC_NORMALIZED_GRAM, "NormalizedGramFunction", "normalized_gram (SPEC §1): ``apply(z1, z2_or_None)`` -> (K,).")
DualityTermsFunction = function(_SPEC_DUALITY_TERMS, "DualityTermsFunction", "duality_terms (SPEC §2): ``apply(z, side)`` -> (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴).")
