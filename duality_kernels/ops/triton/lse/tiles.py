"""The ``@triton.jit`` helpers every log-sum-exp pass shares: the masks of a tile (self, positive,
padding), the key ranges that let most tiles skip them, the logits' transform and scale, and the S
tile itself with the operand order that gives dot_ab and dot_ba the same bits (see plan._orient).
"""

from __future__ import annotations

from .._common import scalar, tl, triton
from .plan import L2_EPS


_EPS = tl.constexpr(L2_EPS)  # (jit functions read module globals only as constexpr; see _eps)


@triton.jit
def _eps(DT: tl.constexpr):
    """L2_EPS as torch holds it in a tensor of dtype DT (rounded to fp32 for fp32, exact for fp64).
    A Python float in a jit function is an fp32 constant, and 1e-12 promoted from fp32 to fp64 is
    4e-9 relatively off: float64 gradients of all-zero rows, r = 1/eps times the upstream one,
    came out 4e-9 off against the 1e-10 the property tests allow (InfoNCE, interpreter)."""
    return tl.full((), _EPS, DT)


@triton.jit
def _partners(idx, HALF_A, HALF_B, OFF, POS: tl.constexpr):
    """(self, positive) key indices of anchors ``idx``.

    POS == 1 (two views stacked): anchor idx = v·HALF_A + i (view v, row i) is key v·HALF_B + OFF + i
    and its positive the other view's key (1 − v)·HALF_B + OFF + i. One process: HALF_A = HALF_B = N,
    OFF = 0 (a ↔ a ± N); with W ranks (docs/spec.md §5) the anchors are this rank's rows, HALF_B = W·N and
    OFF = rank·N. Otherwise (diagonal positive, or none) both are idx + OFF.
    """
    me = idx + OFF
    pos = idx + OFF
    if POS == 1:
        v = idx // HALF_A
        i = idx - v * HALF_A
        me = v * HALF_B + OFF + i
        pos = (1 - v) * HALF_B + OFF + i
    return me, pos


@triton.jit
def _tile_masks(rows, cols, row_ok, col_ok, HALF_A, HALF_B, OFF, SELF: tl.constexpr, POS: tl.constexpr,
                TRANSPOSED: tl.constexpr, ROWS_MATTER: tl.constexpr):
    """(negative, positive) masks of a tile: rows are anchors and cols keys, or the reverse
    (TRANSPOSED). Negatives are the entries in the log-sum-exp other than the positive; padding,
    self and (ROWS_MATTER, for column reductions) padded rows are neither."""
    if TRANSPOSED:
        me, pos = _partners(cols, HALF_A, HALF_B, OFF, POS)
        is_self = rows[:, None] == me[None, :]
        is_pos = rows[:, None] == pos[None, :]
    else:
        me, pos = _partners(rows, HALF_A, HALF_B, OFF, POS)
        is_self = cols[None, :] == me[:, None]
        is_pos = cols[None, :] == pos[:, None]
    live = col_ok[None, :] & (rows[:, None] >= 0)
    if ROWS_MATTER:
        live = live & row_ok[:, None]
    if SELF:
        live = live & (is_self == 0)
    if POS != 0:
        is_pos = is_pos & live
        live = live & (is_pos == 0)
    else:
        is_pos = live & (rows[:, None] < 0)  # all false
    return live, is_pos


@triton.jit
def _special_tile(n0, r0, MB, M, lo_s, hi_s, lo_p, hi_p, SELF: tl.constexpr, POS: tl.constexpr,
                  TRANSPOSED: tl.constexpr, ROWS_MATTER: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Whether tile columns [n0, n0 + BN) need the masks: padding, or a self / positive key of the
    row block inside (lo/hi: the range of those keys, a superset). Most tiles need none, and the
    masks are integer compares and selects on every entry (the forward's ALU work is comparable
    to its tensor-core work at K = 256)."""
    sp = n0 + BN > MB
    if ROWS_MATTER:
        sp = sp | (r0 + BM > M)
    if TRANSPOSED:
        sp = sp | (n0 >= 0)  # keys as rows: always masked (the gathered keys' pass; no speed bar)
    else:
        if SELF:
            sp = sp | ((n0 <= hi_s) & (n0 + BN > lo_s))
        if POS != 0:
            sp = sp | ((n0 <= hi_p) & (n0 + BN > lo_p))
    return sp


@triton.jit
def _key_range(rows, row_ok, HALF_A, HALF_B, OFF, POS: tl.constexpr):
    """(lo_self, hi_self, lo_pos, hi_pos) over the valid anchors ``rows`` (their keys' range)."""
    me, pos = _partners(rows, HALF_A, HALF_B, OFF, POS)
    lo_s = tl.min(tl.where(row_ok, me, 2147483647), axis=0)
    hi_s = tl.max(tl.where(row_ok, me, -1), axis=0)
    lo_p = tl.min(tl.where(row_ok, pos, 2147483647), axis=0)
    hi_p = tl.max(tl.where(row_ok, pos, -1), axis=0)
    return lo_s, hi_s, lo_p, hi_p


@triton.jit
def _neg_logits(s, inv_t, inv_lo, TRANSFORM: tl.constexpr):
    """t(dot)/temperature of the negatives (docs/spec.md §4: "abs" |s|, "square" s², paper §5)."""
    if TRANSFORM == 1:
        t = tl.abs(s)
    elif TRANSFORM == 2:
        t = s * s
    else:
        t = s
    return _scaled(t, inv_t, inv_lo)


@triton.jit
def _scaled(t, inv_t, inv_lo):
    """t·(1/τ) with the scale as the pair inv_t + inv_lo (_scale_pair): one rounded factor would
    bias every logit by the same relative error, up to 6e-8, and every log-sum-exp with it
    (VICReg-ctr's covariance term of ~214 came out 1.5e-5 off, one ulp, eager 2.6e-7; property
    tests, interpreter)."""
    return t * inv_t + t * inv_lo


@triton.jit
def _s_tile(a, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K, s_am, s_bm, ra, rb,
            TRANS: tl.constexpr, ONE_K: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr,
            IP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """(S tile of anchors × keys, the key rows B_J when ONE_K). TRANS: computed as the transpose of
    dot(B_J, A_Iᵀ), the very call (operands, shapes, K order) with which the key rows' own
    program computes that pair, so dot_ab and dot_ba have the same bits everywhere: the backward
    then reads each row's softmax from the logits its forward used, as eager does. (A tensor-core
    or BLAS dot need not be symmetric in its operands: numpy's differed in 232 of 1024 entries
    of a 32×32 tile. A mismatch of one ulp of the logit on an entry whose softmax is
    ≈ 1 is an error that eager, whose softmax and log-sum-exp share the logit, does not make:
    VICReg-ctr's gradient at temperature 0.02 was up to 2x eager's error without it, 0.6-1.5x
    with it, over 8 inputs, interpreter.) The l2 scales multiply the tile as s·(r_a·r_b), the
    same bits in either order."""
    ks = tl.arange(0, BK)
    if ONE_K:
        b = tl.load(b_ptr + cols64[:, None] * s_bm + ks[None, :], mask=col_ok[:, None] & (ks[None, :] < K), other=0.0)
        if TRANS:
            s = tl.trans(tl.dot(b, tl.trans(a), input_precision=IP, out_dtype=ACC))
        else:
            s = tl.dot(a, tl.trans(b), input_precision=IP, out_dtype=ACC)
    else:
        b = a
        if TRANS:
            st = tl.zeros((BN, BM), ACC)
        else:
            st = tl.zeros((BM, BN), ACC)
        for k0 in range(0, K, BK):
            kk = k0 + ks
            ak = tl.load(a_ptr + rows64[:, None] * s_am + kk[None, :], mask=row_ok[:, None] & (kk[None, :] < K),
                         other=0.0)
            bk = tl.load(b_ptr + cols64[:, None] * s_bm + kk[None, :], mask=col_ok[:, None] & (kk[None, :] < K),
                         other=0.0)
            if TRANS:
                st = tl.dot(bk, tl.trans(ak), st, input_precision=IP, out_dtype=ACC)
            else:
                st = tl.dot(ak, tl.trans(bk), st, input_precision=IP, out_dtype=ACC)
        if TRANS:
            s = tl.trans(st)
        else:
            s = st
    if TILE_SCALE:  # bf16/fp16: exact tensor-core operands, the l2 scales on the fp32 tile
        s = s * (ra[:, None] * rb[None, :])
    return s, b


@triton.jit
def _s_tile_o(a, a_ptr, b_ptr, n0, r0, rows64, row_ok, cols64, col_ok, K, s_am, s_bm, ra, rb,
              ORIENT: tl.constexpr, ONE_K: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr,
              IP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """_s_tile with the operand order of ORIENT (see _orient): 1 transposed left of the diagonal
    block (n0 < r0), 2 always transposed, 0 never (the GPU's)."""
    if ORIENT == 1:
        if n0 < r0:
            s, b = _s_tile(a, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K, s_am, s_bm, ra, rb,
                           True, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        else:
            s, b = _s_tile(a, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K, s_am, s_bm, ra, rb,
                           False, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
    else:
        s, b = _s_tile(a, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K, s_am, s_bm, ra, rb,
                       ORIENT == 2, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
    return s, b


@triton.jit
def _program_rows(a_ptr, b_ptr, s_abat, s_bbat, inv_t, inv_lo, pid, bid, M, ACC: tl.constexpr, BM: tl.constexpr):
    """The start of a program over row block ``pid`` of batch ``bid``: (the scale pair in ACC
    (_scale_pair), the batch's A and B, the block's first row, its rows, which are valid, and the
    rows as int64)."""
    inv_t = scalar(inv_t, ACC)
    inv_lo = scalar(inv_lo, ACC)
    a_ptr += bid.to(tl.int64) * s_abat
    b_ptr += bid.to(tl.int64) * s_bbat
    r0 = pid * BM
    rows = r0 + tl.arange(0, BM)
    return inv_t, inv_lo, a_ptr, b_ptr, r0, rows, rows < M, rows.to(tl.int64)


@triton.jit
def _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, bid, rows64, row_ok, ra, MB, K, s_am, s_bm, ORIENT: tl.constexpr,
              ONE_K: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr, BM: tl.constexpr,
              BN: tl.constexpr, BK: tl.constexpr):
    """Key tile [n0, n0 + BN) of a row block: (its columns, which are valid, the keys' l2 scales
    r_b (TILE_SCALE; else ``ra``), and _s_tile_o's S tile and key rows)."""
    cols = n0 + tl.arange(0, BN)
    col_ok = cols < MB
    rb = ra
    if TILE_SCALE:
        rb = tl.load(rb_ptr + bid * MB + cols, mask=col_ok, other=0.0)
    s, b = _s_tile_o(a, a_ptr, b_ptr, n0, r0, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                     ORIENT, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
    return cols, col_ok, rb, s, b
