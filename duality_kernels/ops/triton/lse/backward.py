"""The backward passes and their launcher ``_backward``.

K ≤ 256: ``_lse_bwd_kernel`` (fused): a program owns an anchor block and all of K, recomputes each
S tile once and applies C_ab = ∂L/∂dot_ab (+ ∂L/∂dot_ba) as dA += C·B_J, the positives' tiles last,
the l2 Jacobian after the loop. K > 256: per stripe of anchor rows ``_lse_coef_kernel`` writes the
C tiles, cuBLAS runs C·B (docs/design.md convention 13), ``_lse_epi_kernel`` adds the positive's
term and the l2 Jacobian.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from .._common import (acc_dtype, arch_family, input_precision, interpreting, round_tf32, scalar, tf32_rounding, tl,
                       triton)
from .plan import Masks, Tensor, _acc_tl, _bwd_tiles, _coef_tiles, _fused_bwd, _orient, _scale_pair
from .tiles import _key_range, _key_tile, _neg_logits, _partners, _program_rows, _s_tile_o, _special_tile, _tile_masks


@triton.jit
def _coefs(s, x, gla, ma, glb, mb, ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TRANSFORM: tl.constexpr,
           ACC: tl.constexpr):
    """∂L/∂dot of the negatives (per unit logit): Σ over the sides that have loss terms of
    g·softmax = g·exp(−λ)·exp(x − m), through the transform's chain rule (d|s| = sign(s) ds,
    d s² = 2s ds). ``x`` are the masked logits (−inf off the negatives), (m, g·exp(−λ)) per row
    of each side (_side_vectors)."""
    w = tl.zeros(s.shape, ACC)
    if ROW_SIDE:
        w += gla[:, None] * tl.exp(x - ma[:, None])
    if COL_SIDE:
        w += glb[None, :] * tl.exp(x - mb[None, :])
    if TRANSFORM == 1:
        w = tl.where(s > 0, w, tl.where(s < 0, -w, 0.0))
    elif TRANSFORM == 2:
        w = 2.0 * s * w
    return w


@triton.jit
def _side_vectors(lse_ptr, s_lam, q_ptr, g_ptr, idx, ok, s_g, POS: tl.constexpr, DROP_POS: tl.constexpr,
                  ACC: tl.constexpr):
    """(m, g·exp(−λ), g·∂term/∂s_pos) of the rows ``idx`` of one side, from lse = m + λ (λ stored
    s_lam after m, see _finish_lse): softmax·g = exp(x − m)·g·exp(−λ) with x − m exact near the
    max, and two vectors per side live in the tile loop instead of four (registers: the fused
    backward sits at 240-255 per thread). The positive's coefficient is −g·q with the positive in
    the denominator, −g without (DCL)."""
    m = tl.load(lse_ptr + idx, mask=ok, other=0.0)
    lam = tl.load(lse_ptr + s_lam + idx, mask=ok, other=0.0)
    g = tl.load(g_ptr + idx.to(tl.int64) * s_g, mask=ok, other=0.0).to(ACC)
    gp = g
    if POS != 0:
        if not DROP_POS:
            gp = g * tl.load(q_ptr + idx, mask=ok, other=0.0)
    return m, g * tl.exp(-lam), gp


@triton.jit
def _side_or_zeros(lse_ptr, s_lam, q_ptr, g_ptr, idx, ok, s_g, HAS: tl.constexpr, POS: tl.constexpr,
                   DROP_POS: tl.constexpr, ACC: tl.constexpr, B: tl.constexpr):
    """_side_vectors of a side with loss terms (HAS), else three zero vectors of length B."""
    if HAS:
        m, gl, gp = _side_vectors(lse_ptr, s_lam, q_ptr, g_ptr, idx, ok, s_g, POS, DROP_POS, ACC)
    else:
        m = tl.zeros((B,), ACC)
        gl = m
        gp = m
    return m, gl, gp


@triton.jit
def _positive_coef(rows, ok, bid, M, MB, HALF_A, HALF_B, OFF, lsea_ptr, s_la, qa_ptr, ga_ptr, s_ga, lseb_ptr, s_lb,
                   qb_ptr, gb_ptr, s_gb, rb_ptr, inv_t, POS: tl.constexpr, DROP_POS: tl.constexpr,
                   ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr):
    """(key index p(a), ok, C_{a,p(a)}·dot_{a,p(a)}, C_{a,p(a)}·r_p) of anchor rows, with C_{a,p(a)}
    = ∂L/∂dot_{a,p(a)} (+ ∂L/∂dot_{p(a),a}) = −(g_a q_a + g_p q_p)/τ (q = 1 without the positive
    in the denominator); r_p = 1 unless the l2 scales are on the tile; dot_{a,p(a)} = τ·p_a, the
    forward's positive logit (stored after λ). The backward adds the positive's term after the
    C·B sums instead of inside them: there it is the one large negative entry among small
    positive ones, and its fp32 sums lost ~3 bits against eager, which adds the positive's
    gradient after its matmul (interpreter, temperature 0.5)."""
    me, pos = _partners(rows, HALF_A, HALF_B, OFF, POS)
    okp = ok & (pos >= 0) & (pos < MB)
    c = tl.zeros(rows.shape, ACC)
    if ROW_SIDE:
        c += _side_vectors(lsea_ptr, s_la, qa_ptr, ga_ptr, bid * M + rows, ok, s_ga, POS, DROP_POS, ACC)[2]
        p = tl.load(lsea_ptr + 2 * s_la + bid * M + rows, mask=ok, other=0.0)
    if COL_SIDE:
        c += _side_vectors(lseb_ptr, s_lb, qb_ptr, gb_ptr, bid * MB + pos, okp, s_gb, POS, DROP_POS, ACC)[2]
        p = tl.load(lseb_ptr + 2 * s_lb + bid * MB + pos, mask=okp, other=0.0)  # the same entry
    c = tl.where(okp, -c * inv_t, 0.0)
    cdot = c
    if TILE_SCALE:
        cdot = c * tl.load(rb_ptr + bid * MB + pos, mask=okp, other=0.0)
    return pos, okp, c * (p / inv_t), cdot


@triton.jit
def _l2_jacobian(acc, a_ptr, ra_ptr, keep_ptr, vidx, roff, ok, ks, K, TILE_SCALE: tl.constexpr, ACC: tl.constexpr):
    """∂L/∂u_a = r_a (g_a − keep_a n_a (n_a·g_a)) from g_a = ∂L/∂n_a = Σ_b C_ab n_b (the l2
    normalization's Jacobian, as autograd applies it to F.normalize), with n_a = op_a, or
    r_a·op_a when the scales are on the tile (TILE_SCALE)."""
    ra = tl.load(ra_ptr + vidx, mask=ok, other=0.0)
    keep = tl.load(keep_ptr + vidx, mask=ok, other=0.0)
    n_a = tl.load(a_ptr + roff[:, None] + ks[None, :], mask=ok[:, None] & (ks[None, :] < K), other=0.0).to(ACC)
    if TILE_SCALE:
        n_a = n_a * ra[:, None]
    proj = keep * tl.sum(n_a * acc, axis=1)
    return ra[:, None] * (acc - proj[:, None] * n_a)


@triton.jit
def _staged_chunk(out_ptr, v, s_o, a_ptr, ra, roff, ok, K, k0, TILE_SCALE: tl.constexpr, ACC: tl.constexpr,
                  KC: tl.constexpr):
    """(columns kk, mask, g_a, n_a) of columns [k0, k0 + KC) of the rows v of ``out`` (g_a) and of
    their operand rows at a_ptr + roff (n_a, times r_a when TILE_SCALE)."""
    kk = k0 + tl.arange(0, KC)
    mk = ok[:, None] & (kk[None, :] < K)
    g = tl.load(out_ptr + v[:, None] * s_o + kk[None, :], mask=mk, other=0.0)
    n_a = tl.load(a_ptr + roff[:, None] + kk[None, :], mask=mk, other=0.0).to(ACC)
    if TILE_SCALE:
        n_a = n_a * ra[:, None]
    return kk, mk, g, n_a


@triton.jit
def _l2_jacobian_staged(out_ptr, v, s_o, a_ptr, ra_ptr, keep_ptr, vidx, roff, ok, K, TILE_SCALE: tl.constexpr,
                        ACC: tl.constexpr, BK: tl.constexpr, KC: tl.constexpr):
    """_l2_jacobian on rows g_a already stored at out (an ACC buffer) by this program, in chunks of
    KC columns: n_a·g_a, then r_a (g_a − keep_a n_a (n_a·g_a)) in place. The caller's barrier
    makes every thread's stores visible to the whole program first."""
    ra = tl.load(ra_ptr + vidx, mask=ok, other=0.0)
    keep = tl.load(keep_ptr + vidx, mask=ok, other=0.0)
    proj = tl.zeros(ra.shape, ACC)
    for k0 in tl.static_range(0, BK, KC):
        kk, mk, g, n_a = _staged_chunk(out_ptr, v, s_o, a_ptr, ra, roff, ok, K, k0, TILE_SCALE, ACC, KC)
        proj += tl.sum(n_a * g, axis=1)
    proj = keep * proj
    for k0 in tl.static_range(0, BK, KC):
        kk, mk, g, n_a = _staged_chunk(out_ptr, v, s_o, a_ptr, ra, roff, ok, K, k0, TILE_SCALE, ACC, KC)
        tl.store(out_ptr + v[:, None] * s_o + kk[None, :], ra[:, None] * (g - proj[:, None] * n_a), mask=mk)


@triton.jit
def _tile_coefs(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo, lo_s, hi_s, lo_p,
                hi_p,
                gla, ma, gpa, glb, mb, gpb, SELF: tl.constexpr, POS: tl.constexpr, TRANSFORM: tl.constexpr,
                ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr,
                ROWS_MATTER: tl.constexpr, POS_IN: tl.constexpr, ACC: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr):
    """C of a tile, per unit logit: C_ab = ∂L/∂dot_ab (+ ∂L/∂dot_ba). The
    positive's entry −g·q of rows a and p(a) is in C only when POS_IN; otherwise it is zero here
    and the backward adds it after the sums (_positive_coef)."""
    x = _neg_logits(s, inv_t, inv_lo, TRANSFORM)  # before the branch (see _fwd_step)
    if _special_tile(n0, r0, MB, M, lo_s, hi_s, lo_p, hi_p, SELF, POS, TRANSPOSED, ROWS_MATTER, BM, BN):
        live, is_pos = _tile_masks(rows, cols, row_ok, col_ok, HALF_A, HALF_B, OFF, SELF, POS, TRANSPOSED, ROWS_MATTER)
        c = _coefs(s, tl.where(live, x, float("-inf")), gla, ma, glb, mb, ROW_SIDE, COL_SIDE, TRANSFORM, ACC)
        if POS != 0:
            if POS_IN:
                c = tl.where(is_pos, -(gpa[:, None] + gpb[None, :]), c)
    else:
        c = _coefs(s, x, gla, ma, glb, mb, ROW_SIDE, COL_SIDE, TRANSFORM, ACC)
    return c


@triton.jit
def _bwd_step(a, a_ptr, b_ptr, n0, r0, rows, rows64, row_ok, M, MB, K, HALF_A, HALF_B, OFF, inv_t, inv_lo,
              lo_s, hi_s, lo_p, hi_p, ra, rb_ptr, lseb_ptr, s_lb, qb_ptr, gb_ptr, s_gb, bid, s_am, s_bm,
              gla, ma, gpa, acc, lseb2_ptr, gb2_ptr, inv_t2, inv_lo2, gla2, ma2, gpa2,
              SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr,
              TILE_SCALE: tl.constexpr, ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr,
              ORIENT: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
              RNA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DUAL: tl.constexpr):
    """One key tile of the fused backward (see _lse_bwd_kernel)."""
    cols, col_ok, rb, s, b = _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, bid, rows64, row_ok, ra, MB, K, s_am, s_bm,
                                       ORIENT, True, TILE_SCALE, ACC, IP, BM, BN, BK)
    mb, glb, gpb = _side_or_zeros(lseb_ptr, s_lb, qb_ptr, gb_ptr, bid * MB + cols, col_ok, s_gb, COL_SIDE, POS,
                                  DROP_POS, ACC, BN)
    c = _tile_coefs(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo, lo_s, hi_s, lo_p,
                        hi_p, gla, ma, gpa, glb, mb, gpb, SELF, POS, TRANSFORM, ROW_SIDE, COL_SIDE, TRANSPOSED,
                        False, True, ACC, BM, BN)
    c = c * inv_t
    if DUAL:  # the second scale's coefficients from the same tile, into the same C
        mb2, glb2, gpb2 = _side_or_zeros(lseb2_ptr, s_lb, qb_ptr, gb2_ptr, bid * MB + cols, col_ok, s_gb, COL_SIDE,
                                         POS, DROP_POS, ACC, BN)
        c2 = _tile_coefs(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t2, inv_lo2, lo_s, hi_s,
                         lo_p, hi_p, gla2, ma2, gpa2, glb2, mb2, gpb2, SELF, POS, TRANSFORM, ROW_SIDE, COL_SIDE,
                         TRANSPOSED, False, True, ACC, BM, BN)
        c = c + c2 * inv_t2
    if TILE_SCALE:
        c = c * rb[None, :]
    acc = tl.dot(round_tf32(c, RNA).to(b.dtype), b, acc, input_precision=IP, out_dtype=ACC)
    return acc


@triton.jit
def _lse_bwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, keep_ptr, lsea_ptr, qa_ptr, ga_ptr, lseb_ptr, qb_ptr, gb_ptr,
                    out_ptr,
                    M, MB, K, HALF_A, HALF_B, OFF, inv_t: tl.float64, inv_lo: tl.float64,
                    s_am, s_bm, s_abat, s_bbat, s_la, s_lb, s_ga, s_gb, s_o,
                    lsea2_ptr, ga2_ptr, lseb2_ptr, gb2_ptr, inv_t2: tl.float64, inv_lo2: tl.float64,
                    SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr,
                    TILE_SCALE: tl.constexpr, L2JAC: tl.constexpr, ROW_SIDE: tl.constexpr,
                    COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr, ORIENT: tl.constexpr,
                    LATE_POS: tl.constexpr, STAGED: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
                    RNA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    DUAL: tl.constexpr = False):
    """∂L/∂(rows of A), K ≤ BK: one program owns a row block and the whole (padded) K, so every
    tile is computed once (no recomputation per column chunk). Per key tile: S (in the forward's
    operand order, ORIENT as in _lse_fwd_kernel; 2: every tile as (B_J·A_Iᵀ)ᵀ, for passes whose
    rows were the forward's keys), the coefficients C_ab = ∂L/∂dot_ab (+ ∂L/∂dot_ba for the
    symmetric matrix, see this module's docstring) and dA += C·B_J, B_J loaded once for both dots.
    LATE_POS: the tiles with the positives last. The l2 Jacobian's term (L2JAC) is added after
    the loop, then the scale r_a. Row a of batch b goes to row b·M + a of ``out``. DUAL: a second
    loss of the same masks at the scale inv_t2 (its lse and g per side at lsea2/ga2, lseb2/gb2, the
    strides and q of the first), its coefficients added to the same C (the hard-negative loss)."""
    pid = tl.program_id(0)
    bid = tl.program_id(1)
    inv_t, inv_lo, a_ptr, b_ptr, r0, rows, row_ok, rows64 = _program_rows(a_ptr, b_ptr, s_abat, s_bbat, inv_t, inv_lo,
                                                                          pid, bid, M, ACC, BM)
    ks = tl.arange(0, BK)
    a = tl.load(a_ptr + rows64[:, None] * s_am + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
    if TILE_SCALE:
        ra = tl.load(ra_ptr + bid * M + rows, mask=row_ok, other=0.0)
    else:
        ra = rows
    ma, gla, gpa = _side_or_zeros(lsea_ptr, s_la, qa_ptr, ga_ptr, bid * M + rows, row_ok, s_ga, ROW_SIDE, POS,
                                  DROP_POS, ACC, BM)
    ma2, gla2, gpa2 = ma, gla, gpa  # DUAL's row side (only read with DUAL)
    if DUAL:
        inv_t2 = scalar(inv_t2, ACC)
        inv_lo2 = scalar(inv_lo2, ACC)
        if ROW_SIDE:
            ma2, gla2, gpa2 = _side_vectors(lsea2_ptr, s_la, qa_ptr, ga2_ptr, bid * M + rows, row_ok, s_ga, POS,
                                            DROP_POS, ACC)
    lo_s, hi_s, lo_p, hi_p = _key_range(rows, row_ok, HALF_A, HALF_B, OFF, POS)
    acc = tl.zeros((BM, BK), ACC)
    # The tiles holding the rows' positives come last (the sweep starts after them and wraps
    # around): that entry, −g·q/τ, is the one large coefficient among small positive ones, and
    # summed early into the C·B accumulator it made the gradient's error 2-3x eager's, which adds
    # the positive's gradient after its matmul (interpreter, temperature 0.5). A
    # separate dot for it after the loop spilled (it needs the positives' rows in registers).
    nt = tl.cdiv(MB, BN)
    j0 = 0
    if LATE_POS:
        j0 = hi_p // BN + 1
    for t in range(0, nt):
        j = j0 + t
        j = tl.where(j >= nt, j - nt, j)
        acc = _bwd_step(a, a_ptr, b_ptr, j * BN, r0, rows, rows64, row_ok, M, MB, K, HALF_A, HALF_B, OFF,
                        inv_t, inv_lo, lo_s, hi_s, lo_p, hi_p, ra, rb_ptr, lseb_ptr, s_lb, qb_ptr, gb_ptr, s_gb, bid,
                        s_am, s_bm, gla, ma, gpa, acc, lseb2_ptr, gb2_ptr, inv_t2, inv_lo2, gla2, ma2, gpa2,
                        SELF, POS, DROP_POS, TRANSFORM, TILE_SCALE, ROW_SIDE, COL_SIDE, TRANSPOSED, ORIENT, ACC, IP,
                        RNA, BM, BN, BK, DUAL)
    # The l2 Jacobian r_a (g_a − keep_a n_a (n_a·g_a)) with n_a·g_a from the accumulator g_a itself,
    # as autograd applies F.normalize's backward to the same g: then the two terms cancel where
    # they should. (n_a·g_a as Σ_b C_ab s_ab summed in the tile loop instead was rounded apart
    # from g_a: one-column inputs, whose exact gradient is 0, came out 10-130x eager's error,
    # tests/test_properties.py's found examples, interpreter.) After the loop the
    # tiles are dead, so n_a in the accumulator's layout fits for bf16/fp16 (0 spills at BK = 256,
    # sm_90, triton 3.6 and 3.8). STAGED (an fp32/fp64 ``out``): g_a goes to ``out`` first and the
    # Jacobian works on it in column chunks, the accumulator dead: with n_a and the accumulator
    # both live, TF32 at unaligned shapes (16385×255) spilled 192 B at 255 registers with triton
    # 3.6 (sm_90 compile). The same g_a either way.
    v = (bid * M + rows).to(tl.int64)
    if L2JAC:
        if STAGED:
            tl.store(out_ptr + v[:, None] * s_o + ks[None, :], acc, mask=row_ok[:, None] & (ks[None, :] < K))
            tl.debug_barrier()
            _l2_jacobian_staged(out_ptr, v, s_o, a_ptr, ra_ptr, keep_ptr, bid * M + rows, rows64 * s_am, row_ok, K,
                                TILE_SCALE, ACC, BK, 64 if BK > 64 else BK)
        else:
            acc = _l2_jacobian(acc, a_ptr, ra_ptr, keep_ptr, bid * M + rows, rows64 * s_am, row_ok, ks, K,
                               TILE_SCALE, ACC)
    if not (L2JAC and STAGED):
        tl.store(out_ptr + v[:, None] * s_o + ks[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (ks[None, :] < K))


@triton.jit
def _lse_coef_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, lsea_ptr, qa_ptr, ga_ptr, lseb_ptr, qb_ptr, gb_ptr, c_ptr,
                     R0, RN, M, MB, K, HALF_A, HALF_B, OFF, inv_t: tl.float64, inv_lo: tl.float64,
                     s_am, s_bm, s_abat, s_bbat, s_la, s_lb, s_ga, s_gb, s_cm, s_cbat,
                     SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr,
                     TILE_SCALE: tl.constexpr, ROW_SIDE: tl.constexpr,
                     COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr, ORIENT: tl.constexpr,
                     ACC: tl.constexpr, IP: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The backward for K above the fused kernel's limit: the coefficient tiles C (as in
    _lse_bwd_kernel, times r_b for TILE_SCALE; S in the forward's operand order) of anchor rows
    [R0, R0 + RN) are written to a stripe buffer in the operands' dtype for cuBLAS (C·B,
    docs/design.md convention 13)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bid = tl.program_id(2)
    inv_t = scalar(inv_t, ACC)
    inv_lo = scalar(inv_lo, ACC)
    a_ptr += bid.to(tl.int64) * s_abat
    b_ptr += bid.to(tl.int64) * s_bbat
    r0 = R0 + pid_m * BM
    rows = r0 + tl.arange(0, BM)
    row_ok = (rows < M) & (rows < R0 + RN)
    rows64 = rows.to(tl.int64)
    n0 = pid_n * BN
    cols = n0 + tl.arange(0, BN)
    col_ok = cols < MB
    if TILE_SCALE:
        ra = tl.load(ra_ptr + bid * M + rows, mask=row_ok, other=0.0)
        rb = tl.load(rb_ptr + bid * MB + cols, mask=col_ok, other=0.0)
    else:
        ra = rows
        rb = cols
    s, _ = _s_tile_o(rows, a_ptr, b_ptr, n0, r0, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                     ORIENT, False, TILE_SCALE, ACC, IP, BM, BN, BK)
    ma, gla, gpa = _side_or_zeros(lsea_ptr, s_la, qa_ptr, ga_ptr, bid * M + rows, row_ok, s_ga, ROW_SIDE, POS,
                                  DROP_POS, ACC, BM)
    mb, glb, gpb = _side_or_zeros(lseb_ptr, s_lb, qb_ptr, gb_ptr, bid * MB + cols, col_ok, s_gb, COL_SIDE, POS,
                                  DROP_POS, ACC, BN)
    lo_s, hi_s, lo_p, hi_p = _key_range(rows, row_ok, HALF_A, HALF_B, OFF, POS)
    c = _tile_coefs(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo, lo_s, hi_s, lo_p,
                       hi_p, gla, ma, gpa, glb, mb, gpb, SELF, POS, TRANSFORM, ROW_SIDE, COL_SIDE, TRANSPOSED,
                       True, TRANSPOSED, ACC, BM, BN)
    c = c * inv_t
    if TILE_SCALE:
        c = c * rb[None, :]
    lr = (rows - R0).to(tl.int64)
    tl.store(c_ptr + bid.to(tl.int64) * s_cbat + lr[:, None] * s_cm + cols.to(tl.int64)[None, :],
             c.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _lse_epi_kernel(acc_ptr, a_ptr, b_ptr, ra_ptr, rb_ptr, keep_ptr, lsea_ptr, qa_ptr, ga_ptr, lseb_ptr, qb_ptr,
                    gb_ptr, out_ptr, R0, RN, M, MB, K, HALF_A, HALF_B, OFF, inv_t: tl.float64,
                    s_acc, s_accbat, s_am, s_abat, s_bm, s_bbat, s_la, s_lb, s_ga, s_gb, s_o,
                    POS: tl.constexpr, DROP_POS: tl.constexpr, ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr,
                    TRANSPOSED: tl.constexpr, TILE_SCALE: tl.constexpr, L2JAC: tl.constexpr,
                    ACC: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """Epilogue of the stripe backward: acc = C·B from cuBLAS, plus the positive's term (kept out
    of the sums, see _positive_coef), then the l2 Jacobian and the store. With the Jacobian a
    program owns whole rows (BK ≥ K: it needs n_a·∂L/∂n_a), otherwise a (BM, BK) tile."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    bid = tl.program_id(2)
    bb = bid
    inv_t = scalar(inv_t, ACC)
    lr = pid_m * BM + tl.arange(0, BM)
    rows = R0 + lr
    row_ok = (lr < RN) & (rows < M)
    lr64 = lr.to(tl.int64)
    ks = pid_k * BK + tl.arange(0, BK)
    mask = row_ok[:, None] & (ks[None, :] < K)
    acc = tl.load(acc_ptr + bid.to(tl.int64) * s_accbat + lr64[:, None] * s_acc + ks[None, :], mask=mask,
                  other=0.0).to(ACC)
    if POS != 0:
        if not TRANSPOSED:
            pos, okp, _, cdot = _positive_coef(rows, row_ok, bid, M, MB, HALF_A, HALF_B, OFF, lsea_ptr, s_la, qa_ptr,
                                               ga_ptr, s_ga, lseb_ptr, s_lb, qb_ptr, gb_ptr, s_gb, rb_ptr, inv_t, POS,
                                               DROP_POS, ROW_SIDE, COL_SIDE, TILE_SCALE, ACC)
            xp = tl.load(b_ptr + bb.to(tl.int64) * s_bbat + pos.to(tl.int64)[:, None] * s_bm + ks[None, :],
                         mask=okp[:, None] & (ks[None, :] < K), other=0.0).to(ACC)
            acc = acc + cdot[:, None] * xp
    if L2JAC:
        acc = _l2_jacobian(acc, a_ptr + bid.to(tl.int64) * s_abat, ra_ptr, keep_ptr, bid * M + rows,
                           rows.to(tl.int64) * s_am, row_ok, ks, K, TILE_SCALE, ACC)
    v = (bid * M + rows).to(tl.int64)
    tl.store(out_ptr + v[:, None] * s_o + ks[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launcher


# The stripe backward's coefficient buffer: at most this many bytes per stripe of anchor rows.
_STRIPE_BYTES = 256 * 2**20


def _staged_jacobian(out_dtype: torch.dtype) -> bool:
    """Whether the fused backward applies the l2 Jacobian through ``out`` (STAGED in
    _lse_bwd_kernel): when ``out`` holds the accumulator's precision (fp32/fp64); bf16/fp16
    gradients keep it in registers (storing g_a in them first would round it)."""
    return out_dtype in (torch.float32, torch.float64)


class _Side(NamedTuple):
    """One side's loss terms: their lse (2, rows: m and λ), q (1 − P(positive)) and incoming
    gradient (a vector, possibly with stride 0), all indexed by batch·rows."""
    lse: Tensor
    q: Tensor
    g: Tensor


def _backward(a: Tensor, b: Tensor, ra: Optional[Tensor], rb: Optional[Tensor], keep: Optional[Tensor],
              row: Optional[_Side], col: Optional[_Side], inv_t: float, masks: Masks, *,
              tile_scale: bool, out: Tensor, batch: int = 1, orient: int = 0, transposed: bool = False,
              dual: Optional[Tuple[float, Optional[_Side], Optional[_Side]]] = None) -> None:
    """∂L/∂(rows of ``a``) into ``out`` (row b·M + i for row i of batch b; unit column stride).
    ``row``/``col``: the loss terms of the rows of a / of b (None: they have none). ``keep``
    given: apply the l2 Jacobian (``ra`` the rows' scales). ``orient``: the forward's operand
    order (0: a was its anchors, 1: a and b the same rows, 2: a was its keys). ``transposed``:
    a holds the keys and b the anchors (masks read column-wise). ``dual``: (inv_t2, row, col) of a
    second loss at another scale over the same masks, summed into the same result: the fused
    kernel only (``dual_fused``), the sides laid out as the first's."""
    half_a, half_b, off, self_mask, pos, drop_positive, transform = masks
    m = a.shape[0] // batch
    mb = b.shape[0] // batch
    k = a.shape[1]
    ip = input_precision(a.dtype)
    l2jac = keep is not None
    dummy = (row or col).q
    sides = []
    for side in (row, col):
        if side is None:
            sides += [dummy, dummy, dummy]
        else:
            sides += [side.lse, side.q, side.g]
    s_ga = row.g.stride(0) if row is not None else 0
    s_gb = col.g.stride(0) if col is not None else 0
    s_la = row.lse.stride(0) if row is not None else 0
    s_lb = col.lse.stride(0) if col is not None else 0
    flags = dict(SELF=self_mask, POS=pos, DROP_POS=drop_positive, TRANSFORM=transform, TILE_SCALE=tile_scale,
                 ROW_SIDE=row is not None, COL_SIDE=col is not None, TRANSPOSED=transposed, ORIENT=_orient(orient),
                 ACC=_acc_tl(a.dtype), IP=ip)
    ra_ = ra if ra is not None else dummy
    rb_ = rb if rb is not None else dummy
    keep_ = keep if keep is not None else dummy
    if dual is not None and not _fused_bwd(a.dtype, ip, k):
        raise ValueError("_backward(dual=...) runs in the fused kernel only; see dual_fused")
    dual_ptrs = [dummy] * 4
    if dual is not None:
        dual_ptrs = [dual[1].lse if dual[1] else dummy, dual[1].g if dual[1] else dummy,
                     dual[2].lse if dual[2] else dummy, dual[2].g if dual[2] else dummy]
    if _fused_bwd(a.dtype, ip, k):
        t = _bwd_tiles(a.dtype, ip, k, max(m, mb), arch_family(a))
        _lse_bwd_kernel[(triton.cdiv(m, t.BM), batch)](
            a, b, ra_, rb_, keep_, *sides, out,
            m, mb, k, half_a, half_b, off, *_scale_pair(inv_t, a.dtype),
            a.stride(0), b.stride(0), m * a.stride(0), mb * b.stride(0), s_la, s_lb, s_ga, s_gb, out.stride(0),
            *dual_ptrs, *_scale_pair(dual[0] if dual is not None else 0.0, a.dtype), DUAL=dual is not None,
            L2JAC=l2jac, RNA=tf32_rounding(a.dtype), LATE_POS=pos != 0 and not transposed,
            STAGED=l2jac and _staged_jacobian(out.dtype), BM=t.BM, BN=t.BN, BK=t.BK, num_warps=t.warps,
            num_stages=t.stages, **flags)
        return
    # stripes of anchor rows: coefficient tiles (Triton) → C·B (cuBLAS) → epilogue (Triton)
    t = _coef_tiles(a.dtype, ip, max(m, mb), arch_family(a))
    rows = max(t.BM, (_STRIPE_BYTES // max(1, batch * mb * a.element_size())) // t.BM * t.BM)
    rows = min(rows, triton.cdiv(m, t.BM) * t.BM)
    c = torch.empty(batch, rows, mb, dtype=a.dtype, device=a.device)
    # the epilogue holds whole rows when it applies the Jacobian (n_a·g_a), chunks of K otherwise
    be = triton.next_power_of_2(k) if l2jac else min(64, triton.next_power_of_2(k))
    br = max(1, min(32, 2048 // be)) if not interpreting() else 32
    for r0 in range(0, m, rows):
        rn = min(rows, m - r0)
        _lse_coef_kernel[(triton.cdiv(rn, t.BM), triton.cdiv(mb, t.BN), batch)](
            a, b, ra_, rb_, *sides, c, r0, rn, m, mb, k, half_a, half_b, off, *_scale_pair(inv_t, a.dtype),
            a.stride(0), b.stride(0), m * a.stride(0), mb * b.stride(0), s_la, s_lb, s_ga, s_gb, c.stride(1),
            c.stride(0),
            BM=t.BM, BN=t.BN, BK=t.BK, num_warps=t.warps, num_stages=t.stages, **flags)
        acc = _mm_acc(c[:, :rn], b.view(batch, mb, k))
        _lse_epi_kernel[(triton.cdiv(rn, br), triton.cdiv(k, be), batch)](
            acc, a, b, ra_, rb_, keep_, *sides, out,
            r0, rn, m, mb, k, half_a, half_b, off, inv_t, acc.stride(1), acc.stride(0), a.stride(0),
            m * a.stride(0), b.stride(0), mb * b.stride(0), s_la, s_lb, s_ga, s_gb, out.stride(0),
            POS=pos, DROP_POS=drop_positive, ROW_SIDE=row is not None, COL_SIDE=col is not None,
            TRANSPOSED=transposed, TILE_SCALE=tile_scale, L2JAC=l2jac, ACC=_acc_tl(a.dtype),
            BM=br, BK=be, num_warps=4)


def dual_fused(dtype: torch.dtype, k: int) -> bool:
    """Whether ``_backward(dual=...)`` runs here (the fused kernel's K and dtypes; see _fused_bwd)."""
    return _fused_bwd(dtype, input_precision(dtype), k)


def _mm_acc(x: Tensor, y: Tensor) -> Tensor:
    """x @ y (batched) with an fp32 result for bf16/fp16 operands (cuBLAS, fp32 accumulation;
    torch ≥ 2.9's bmm(out_dtype)); fp32 follows the matmul precision setting, which cuBLAS rounds
    to TF32 as docs/design.md convention 16 asks."""
    acc = acc_dtype(x.dtype)
    if x.dtype == acc:
        return torch.bmm(x, y)
    if x.device.type == "cuda":
        return torch.bmm(x, y, out_dtype=acc)
    return torch.bmm(x.to(acc), y.to(acc))
