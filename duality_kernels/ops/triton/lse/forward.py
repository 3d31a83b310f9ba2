"""The forward pass: flash-style online log-sum-exp of each anchor block over all key tiles
(``_lse_fwd_kernel``), InfoNCE's column side merged in a second stage (``_lse_cols_merge_kernel``),
and their launcher ``_forward``. Each row's log-sum-exp is kept as the pair (m, λ) with the positive
logit, q = 1 − P(positive) and the term (see _finish_lse).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._common import acc_dtype, arch_family, input_precision, interpreting, scalar, tl, triton
from .plan import Masks, Tensor, _acc_tl, _fwd_tiles, _orient, _scale_pair
from .tiles import _key_range, _key_tile, _neg_logits, _program_rows, _scaled, _special_tile, _tile_masks

# The online max starts at −inf: a finite start (it was −1e30) made every row whose logits all lie
# below it (float64 inputs at scales past ~6e14, temperatures near 1e-300) −inf. Exponentials are
# taken against _shift(m), which is 0 while m is still −inf, so a fully masked tile adds exp(−inf) = 0.
_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _shift(m):
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _log1p(x):
    """log(1 + x) for x ≥ 0 to a few ulp without libdevice (the interpreter has none): the
    rounding of 1 + x cancels in log(u)·x/(u − 1) (Goldberg 1991, Theorem 4)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _finish_lse(m_i, l_i, p_i, POS: tl.constexpr, DROP_POS: tl.constexpr):
    """(m, λ, q, term) of rows from the running max m, the negatives' sum l = Σ exp(x − m) and the
    positive logit p. The log-sum-exp is kept as the pair lse = m + λ: the backward forms
    exp((x − m) − λ), where x − m is exact near the max and λ small, so a row whose softmax
    sits on one entry gets that probability to an ulp, where exp(x − lse) with lse rounded to
    fp32 is off by ulp(lse) ≈ 4e-6 at logits of 50 (temperature 0.02).

    With the positive in the denominator (NT-Xent, InfoNCE): λ = log(l + exp(p − m)), and with
    d = (m − p) + log l (lse_neg − p): term = lse − p = (m − p) + λ, or log1p(exp(d)) when the
    positive dominates (d < 0), and q = 1 − P(positive) = sigmoid(d). Both avoid the
    cancellation of lse − p and of 1 − exp(p − lse): when the positive dominates (low
    temperature, aligned views) they are far below an ulp of lse. The backward takes the
    positive's coefficient −g·q from here instead of exp(s_pos − lse) − 1 from a recomputed tile
    (measured: 20-35x eager's gradient error at temperature 0.02 in fp32 under the interpreter)."""
    ll = tl.log(l_i)
    if POS != 0:
        if DROP_POS:
            lam = ll
            term = (m_i - p_i) + ll
            q = tl.zeros_like(ll)
        else:
            lam = tl.log(l_i + tl.exp(p_i - m_i))
            d = (m_i - p_i) + ll
            term = tl.where(d < 0, _log1p(tl.exp(tl.minimum(d, 0.0))), (m_i - p_i) + lam)
            q = 1.0 / (1.0 + tl.exp(-d))
    else:
        lam = ll
        term = m_i + ll
        q = tl.zeros_like(ll)
    return m_i, lam, q, term


@triton.jit
def _fwd_step(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo, lo_s, hi_s, lo_p, hi_p,
              m_i, l_i, p_i, cm_ptr, cl_ptr, part_off,
              SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr,
              COLS: tl.constexpr, ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """One key tile of the online log-sum-exp (see _lse_fwd_kernel)."""
    # The logits before the branch: a tensor-core result first used inside an scf.if made triton
    # 3.6's software pipeliner fail (TritonGPUPipeline, sm_90 compile).
    x = _neg_logits(s, inv_t, inv_lo, TRANSFORM)
    if _special_tile(n0, r0, MB, M, lo_s, hi_s, lo_p, hi_p, SELF, POS, False, COLS, BM, BN):
        live, is_pos = _tile_masks(rows, cols, row_ok, col_ok, HALF_A, HALF_B, OFF, SELF, POS, False, COLS)
        x = tl.where(live, x, float("-inf"))
        # the positive's own term s/τ (at most one per row): a sum keeps a NaN, a max drops it
        sp = _scaled(s, inv_t, inv_lo)
        pt = tl.max(tl.where(is_pos, sp, float("-inf")), axis=1)
        p_i += tl.sum(tl.where(is_pos, sp, 0.0), axis=1)
    else:
        pt = tl.full((BM,), float("-inf"), ACC)
    if DROP_POS:
        # DCL: the positive is not in the sum, so not in its max either. With it there, aligned views
        # at a low temperature made every negative's exp(x − m) underflow: −inf losses, NaN gradients.
        m_new = tl.maximum(m_i, tl.max(x, axis=1))
    else:
        m_new = tl.maximum(m_i, tl.maximum(tl.max(x, axis=1), pt))
    sh = _shift(m_new)
    l_i = l_i * tl.exp(m_i - sh) + tl.sum(tl.exp(x - sh[:, None]), axis=1)
    if COLS:
        cm = tl.max(x, axis=0)
        cl = tl.sum(tl.exp(x - _shift(cm)[None, :]), axis=0)
        tl.store(cm_ptr + part_off + cols, cm, mask=col_ok)
        tl.store(cl_ptr + part_off + cols, cl, mask=col_ok)
    return m_new, l_i, p_i


@triton.jit
def _lse_fwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, lse_ptr, lam_ptr, q_ptr, term_ptr, p_ptr, cm_ptr, cl_ptr,
                    M, MB, K, HALF_A, HALF_B, OFF, s_lam, inv_t: tl.float64, inv_lo: tl.float64,
                    s_am, s_bm, s_abat, s_bbat, lse2_ptr, term2_ptr, inv_t2: tl.float64, inv_lo2: tl.float64,
                    SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr,
                    TRANSFORM: tl.constexpr, TILE_SCALE: tl.constexpr, ORIENT: tl.constexpr,
                    COLS: tl.constexpr, ONE_K: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DUAL: tl.constexpr = False):
    """(m, λ, p), q and term (_finish_lse) of a block of anchors (rows of A) against every key
    (row of B), online (flash-attention): the (BM, BN) tile of A·Bᵀ on the tensor cores, its
    masked logits reduced into a running max and sum of the negatives' exponentials and the
    positive logit.

    ONE_K: K fits one block; the row block of A is loaded once, each B tile once per step.
    Otherwise K is swept in BK chunks per tile. ORIENT: the tiles' operand order (_orient,
    _s_tile_o; 0 on the GPU). COLS (InfoNCE's Sᵀ): also each
    tile's column max and sum of exponentials, (cm, cl) per (row block, column), merged by
    _lse_cols_merge_kernel (a two-stage reduction, no atomics): S is computed once for both
    directions. Grid axis 1 is the batch (VICReg's two views). DUAL: a second log-sum-exp of the
    same masked entries at the scale inv_t2 (the hard-negative loss's two scales), from the same S
    tile, its (m, λ) and term to lse2 and term2 (not with COLS)."""
    pid = tl.program_id(0)
    bid = tl.program_id(1)
    inv_t, inv_lo, a_ptr, b_ptr, r0, rows, row_ok, rows64 = _program_rows(a_ptr, b_ptr, s_abat, s_bbat, inv_t, inv_lo,
                                                                          pid, bid, M, ACC, BM)
    ks = tl.arange(0, BK)
    if ONE_K:
        a = tl.load(a_ptr + rows64[:, None] * s_am + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K),
                    other=0.0)
    else:
        a = rows
    if TILE_SCALE:
        ra = tl.load(ra_ptr + bid * M + rows, mask=row_ok, other=0.0)
    else:
        ra = rows
    lo_s, hi_s, lo_p, hi_p = _key_range(rows, row_ok, HALF_A, HALF_B, OFF, POS)
    m_i = tl.full((BM,), _NEG_INF, ACC)
    l_i = tl.zeros((BM,), ACC)
    p_i = tl.zeros((BM,), ACC)
    m2 = m_i
    l2 = l_i
    p2 = p_i
    if DUAL:
        inv_t2 = scalar(inv_t2, ACC)
        inv_lo2 = scalar(inv_lo2, ACC)
    part = (bid * tl.num_programs(0) + pid).to(tl.int64) * MB
    for n0 in range(0, MB, BN):
        cols, col_ok, rb, s, _ = _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, bid, rows64, row_ok, ra, MB, K, s_am, s_bm,
                                           ORIENT, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        m_i, l_i, p_i = _fwd_step(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo,
                                  lo_s, hi_s, lo_p, hi_p, m_i, l_i, p_i, cm_ptr, cl_ptr, part,
                                  SELF, POS, DROP_POS, TRANSFORM, COLS, ACC, BM, BN)
        if DUAL:
            m2, l2, p2 = _fwd_step(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t2, inv_lo2,
                                   lo_s, hi_s, lo_p, hi_p, m2, l2, p2, cm_ptr, cl_ptr, part,
                                   SELF, POS, DROP_POS, TRANSFORM, False, ACC, BM, BN)
    m_o, lam, q, term = _finish_lse(m_i, l_i, p_i, POS, DROP_POS)
    out = bid * M + rows
    if DUAL:
        m_o2, lam2, _, term2 = _finish_lse(m2, l2, p2, POS, DROP_POS)
        tl.store(lse2_ptr + out, m_o2, mask=row_ok)
        tl.store(lse2_ptr + s_lam + out, lam2, mask=row_ok)
        tl.store(term2_ptr + out, term2, mask=row_ok)
    tl.store(lse_ptr + out, m_o, mask=row_ok)
    tl.store(lam_ptr + out, lam, mask=row_ok)
    tl.store(lam_ptr + s_lam + out, p_i, mask=row_ok)  # the positive logit, after λ
    tl.store(q_ptr + out, q, mask=row_ok)
    tl.store(term_ptr + out, term, mask=row_ok)
    if COLS:
        tl.store(p_ptr + out, p_i, mask=row_ok)


@triton.jit
def _lse_cols_merge_kernel(cm_ptr, cl_ptr, p_ptr, lse_ptr, lam_ptr, q_ptr, term_ptr, MB, NRB, s_lam,
                       POS: tl.constexpr, DROP_POS: tl.constexpr, ACC: tl.constexpr, BN: tl.constexpr):
    """Stage 2 of the column log-sum-exp (InfoNCE's rows of Sᵀ): the NRB row blocks' (max, sum)
    of each column merged in a fixed order; the positive of column b is S_bb, the row pass's."""
    pid = tl.program_id(0)
    cols = pid * BN + tl.arange(0, BN)
    ok = cols < MB
    m = tl.full((BN,), _NEG_INF, ACC)
    for r in range(0, NRB):
        m = tl.maximum(m, tl.load(cm_ptr + tl.cast(r, tl.int64) * MB + cols, mask=ok, other=_NEG_INF))
    p = tl.load(p_ptr + cols, mask=ok, other=0.0)
    if POS != 0:
        if not DROP_POS:
            # a column without negatives (one row): the positive is the max, as in the row pass;
            # left at −inf, λ = log(exp(p − m)) would be inf and the backward's softmax NaN
            m = tl.where(m == _NEG_INF, p, m)
    sh = _shift(m)
    l = tl.zeros((BN,), ACC)
    for r in range(0, NRB):
        off = tl.cast(r, tl.int64) * MB + cols
        cm = tl.load(cm_ptr + off, mask=ok, other=_NEG_INF)
        l += tl.load(cl_ptr + off, mask=ok, other=0.0) * tl.exp(cm - sh)
    m_o, lam, q, term = _finish_lse(m, l, p, POS, DROP_POS)
    tl.store(lse_ptr + cols, m_o, mask=ok)
    tl.store(lam_ptr + cols, lam, mask=ok)
    tl.store(lam_ptr + s_lam + cols, p, mask=ok)
    tl.store(q_ptr + cols, q, mask=ok)
    tl.store(term_ptr + cols, term, mask=ok)


# --------------------------------------------------------------------------------------------
# launcher


def _forward(a: Tensor, b: Tensor, ra: Optional[Tensor], rb: Optional[Tensor], inv_t: float, masks: Masks,
             *, batch: int = 1, orient: int = 0, lse: Tensor, q: Tensor, term: Tensor,
             cols: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
             dual: Optional[Tuple[float, Tensor, Tensor]] = None) -> None:
    """The log-sum-exp forward of anchors ``a`` (batch·M rows) against keys ``b`` into lse (2,
    batch·M: m and λ, lse = m + λ), q and term (batch·M,). ``ra``/``rb``: l2 scales applied to the
    tile (bf16/fp16), else None. ``orient``: 1 when a and b are the same rows (see _s_tile).
    ``cols``: (lse, q, term) of the columns too (InfoNCE's Sᵀ, batch 1). ``dual``: (inv_t2, lse2,
    term2), the same rows' log-sum-exp at a second scale from the same tiles (lse2 shaped as lse)."""
    half_a, half_b, off, self_mask, pos, drop_positive, transform = masks
    m = a.shape[0] // batch
    mb = b.shape[0] // batch
    k = a.shape[1]
    ip = input_precision(a.dtype)
    t, one_k = _fwd_tiles(a.dtype, ip, k, max(m, mb), arch_family(a), narrow=not self_mask or dual is not None)
    nrb = triton.cdiv(m, t.BM)
    acc = acc_dtype(a.dtype)
    dummy = q
    if cols is not None:
        cm = torch.empty(nrb, mb, dtype=acc, device=a.device)
        cl = torch.empty_like(cm)
        p = torch.empty(m, dtype=acc, device=a.device)
    else:
        cm = cl = p = dummy
    _lse_fwd_kernel[(nrb, batch)](
        a, b, ra if ra is not None else dummy, rb if rb is not None else dummy, lse[0], lse[1], q, term, p, cm, cl,
        m, mb, k, half_a, half_b, off, lse.stride(0), *_scale_pair(inv_t, a.dtype), a.stride(0), b.stride(0),
        m * a.stride(0), mb * b.stride(0), dual[1] if dual else dummy, dual[2] if dual else dummy,
        *_scale_pair(dual[0] if dual else 0.0, a.dtype),
        SELF=self_mask, POS=pos, DROP_POS=drop_positive, TRANSFORM=transform, TILE_SCALE=ra is not None,
        ORIENT=_orient(orient), COLS=cols is not None, ONE_K=one_k, ACC=_acc_tl(a.dtype), IP=ip,
        BM=t.BM, BN=t.BN, BK=t.BK, DUAL=dual is not None, num_warps=t.warps, num_stages=t.stages)
    if cols is not None:
        bn = 32 if interpreting() else 128
        lse_c, q_c, term_c = cols
        _lse_cols_merge_kernel[(triton.cdiv(mb, bn),)](cm, cl, p, lse_c[0], lse_c[1], q_c, term_c, mb, nrb,
                                                    lse_c.stride(0), POS=pos,
                                                    DROP_POS=drop_positive,
                                                    ACC=_acc_tl(a.dtype), BN=bn, num_warps=4)
