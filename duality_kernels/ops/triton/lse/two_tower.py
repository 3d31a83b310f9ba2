"""CLIP (docs/spec.md §7.4) on the log-sum-exp passes: one forward sweep over the tiles of
s·ÂB̂ᵀ gives every row's log-sum-exp and, as per-row-block column partials merged by
forward._lse_cols_merge_kernel, every column's; the backward recomputes each tile once per side
(rows of A, then rows of B) and gradient-column chunk (bwd_plan) with both directions' softmax
in its coefficients, and the scale's gradient Σ_ab (∂L/∂x_ab)·â_a·b̂_b as a per-row tile
reduction of the first pass. No N×N matrix.

The scale is read on the device (a one-element tensor; a Python float becomes one), never on the
host (docs/design.md convention 3). The shared pieces of both two-tower modules live here: the
scale's (hi, lo) pair, the row block, the key tile, the column chunks, the l2 Jacobian epilogue
and pass, the tiles. gather_distributed (docs/spec.md §5, open_clip's local loss): anchor_lse
per direction, the scale on the anchors' rows. Untested on GPU; bytes and flops in
docs/triton_lse.md.
"""

from __future__ import annotations

from typing import Tuple

import torch

from ... import registry
from ....reference import l2n
from ..._direct import apply
from .._common import (HOPPER, Tiles, acc_dtype, arch_family, device_guard, device_rule, input_precision, interpreting,
                       round_tf32, tf32_rounding, tl, triton)
from .backward import _l2_jacobian, _l2_jacobian_staged, _side_vectors, _staged_jacobian, _tile_coefs
from .forward import _finish_lse, _fwd_step, _lse_cols_merge_kernel
from .plan import _POS_DIAG, Tensor, _acc_tl, _bwd_tiles, _fused_bwd, _fwd_tiles, _grad_vector, _op_buffer, _orient
from .plan import _kmax, _reduce, _tile, _tile_scaled
from .prep import _prep
from .tiles import _key_range, _s_tile_o, _scaled

_DIAG = tl.constexpr(_POS_DIAG)  # the positive of row i is column i (tiles._partners)


@triton.jit
def _scale_value(s_ptr, ACC: tl.constexpr):
    """The one-element tensor at s_ptr as the pair (hi, lo) of ACC values whose sum is its value
    (tiles._scaled): a float64 scale keeps its low part in fp32 logits, as plan._scale_pair does
    for a host temperature."""
    s = tl.load(s_ptr).to(tl.float64)
    hi = s.to(ACC)
    return hi, (s - hi.to(tl.float64)).to(ACC)


@triton.jit
def _row_block(a_ptr, ra_ptr, M, K, s_am, TILE_SCALE: tl.constexpr, ONE_K: tl.constexpr, BM: tl.constexpr,
               BK: tl.constexpr):
    """This program's anchor rows: (r0, rows, row_ok, rows64, ks, the (BM, BK) block when ONE_K, r_a
    when the l2 scales are on the tile)."""
    r0 = tl.program_id(0) * BM
    rows = r0 + tl.arange(0, BM)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ks = tl.arange(0, BK)
    a = rows
    if ONE_K:
        a = tl.load(a_ptr + rows64[:, None] * s_am + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K),
                    other=0.0)
    ra = rows
    if TILE_SCALE:
        ra = tl.load(ra_ptr + rows, mask=row_ok, other=0.0)
    return r0, rows, row_ok, rows64, ks, a, ra


@triton.jit
def _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, rows64, row_ok, ra, MB, K, s_am, s_bm, ORIENT: tl.constexpr,
              ONE_K: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """(cols, col_ok, r_b, S tile of the normalized rows, the key rows) of key tile n0."""
    cols = n0 + tl.arange(0, BN)
    col_ok = cols < MB
    rb = ra
    if TILE_SCALE:
        rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
    s, b = _s_tile_o(a, a_ptr, b_ptr, n0, r0, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                     ORIENT, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
    return cols, col_ok, rb, s, b


@triton.jit
def _apply_coefs(acc, c, b, rb, hi, lo, TILE_SCALE: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
                 RNA: tl.constexpr):
    """acc + (s·C)·B_J for coefficients C per unit logit (the scale as the pair hi + lo; r_b on the
    tile when the l2 scales are there), C rounded as the dot's operand (round_tf32)."""
    c = _scaled(c, hi, lo)
    if TILE_SCALE:
        c = c * rb[None, :]
    return tl.dot(round_tf32(c, RNA).to(b.dtype), b, acc, input_precision=IP, out_dtype=ACC)


@triton.jit
def _store_grad(acc, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64, row_ok, ks, K, s_am,
                TILE_SCALE: tl.constexpr, STAGED: tl.constexpr, ACC: tl.constexpr, BK: tl.constexpr):
    """∂L/∂u_a from g_a = ∂L/∂â_a (the accumulator) through the l2 Jacobian, into out (as
    backward._lse_bwd_kernel: STAGED through an fp32/fp64 out, in registers otherwise)."""
    mask = row_ok[:, None] & (ks[None, :] < K)
    if STAGED:
        tl.store(out_ptr + rows64[:, None] * s_o + ks[None, :], acc, mask=mask)
        tl.debug_barrier()
        _l2_jacobian_staged(out_ptr, rows64, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64 * s_am, row_ok, K,
                            TILE_SCALE, ACC, BK, 64 if BK > 64 else BK)
    else:
        acc = _l2_jacobian(acc, a_ptr, ra_ptr, keep_ptr, rows, rows64 * s_am, row_ok, ks, K, TILE_SCALE, ACC)
        tl.store(out_ptr + rows64[:, None] * s_o + ks[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _out_keys(b, b_ptr, cols, col_ok, K, s_bm, SPLIT: tl.constexpr, BD: tl.constexpr):
    """The key rows' columns this program's gradient columns take: B_J as the S tile loaded it, or
    (SPLIT) its BD columns from BD·program_id(1) on."""
    if SPLIT:
        dk = tl.program_id(1) * BD + tl.arange(0, BD)
        b = tl.load(b_ptr + cols.to(tl.int64)[:, None] * s_bm + dk[None, :], mask=col_ok[:, None] & (dk[None, :] < K),
                    other=0.0)
    return b


@triton.jit
def _store_part(acc, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64, row_ok, ks, K, s_am,
                TILE_SCALE: tl.constexpr, STAGED: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr,
                BK: tl.constexpr, BD: tl.constexpr):
    """_store_grad of a whole row block, or (SPLIT) g_a's BD columns into out (an ACC buffer) for
    _jacobian_kernel: the l2 Jacobian needs n_a·g_a over the whole row."""
    if SPLIT:
        dk = tl.program_id(1) * BD + tl.arange(0, BD)
        tl.store(out_ptr + rows64[:, None] * s_o + dk[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (dk[None, :] < K))
    else:
        _store_grad(acc, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64, row_ok, ks, K, s_am, TILE_SCALE, STAGED,
                    ACC, BK)


@triton.jit
def _jacobian_kernel(g_ptr, s_g, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, M, K, s_am, TILE_SCALE: tl.constexpr,
                     STAGED: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr):
    """The l2 Jacobian of the rows g_a = ∂L/∂n_a that the column-split backward left in g (ACC;
    out itself when STAGED): a memory-bound pass over BR rows per program."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    if STAGED:
        _l2_jacobian_staged(out_ptr, rows64, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64 * s_am, row_ok, K,
                            TILE_SCALE, ACC, BK, 64 if BK > 64 else BK)
    else:
        ks = tl.arange(0, BK)
        acc = tl.load(g_ptr + rows64[:, None] * s_g + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K),
                      other=0.0)
        _store_grad(acc, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64, row_ok, ks, K, s_am, TILE_SCALE, False,
                    ACC, BK)


@triton.jit
def _clip_fwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, s_ptr, lse_ptr, q_ptr, term_ptr, cm_ptr, cl_ptr, M, K, s_lam,
                     s_am, s_bm, TILE_SCALE: tl.constexpr, ORIENT: tl.constexpr, ONE_K: tl.constexpr,
                     ACC: tl.constexpr, IP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Rows of s·ÂB̂ᵀ online (forward._fwd_step with the diagonal positive): (m, λ, positive) into
    the three rows of lse, q and the term; each tile's column max and sum of exponentials into
    (cm, cl)[program] for the merge (a two-stage reduction, no atomics)."""
    inv_t, inv_lo = _scale_value(s_ptr, ACC)
    r0, rows, row_ok, rows64, ks, a, ra = _row_block(a_ptr, ra_ptr, M, K, s_am, TILE_SCALE, ONE_K, BM, BK)
    lo_s, hi_s, lo_p, hi_p = _key_range(rows, row_ok, 0, 0, 0, _DIAG)
    m_i = tl.full((BM,), float("-inf"), ACC)
    l_i = tl.zeros((BM,), ACC)
    p_i = tl.zeros((BM,), ACC)
    part = tl.program_id(0).to(tl.int64) * M
    for n0 in range(0, M, BN):
        cols, col_ok, rb, s, _ = _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, rows64, row_ok, ra, M, K, s_am, s_bm,
                                           ORIENT, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        m_i, l_i, p_i = _fwd_step(s, n0, r0, rows, cols, row_ok, col_ok, M, M, 0, 0, 0, inv_t, inv_lo, lo_s, hi_s,
                                  lo_p, hi_p, m_i, l_i, p_i, cm_ptr, cl_ptr, part, False, _DIAG, False, 0, True, ACC,
                                  BM, BN)
    m_o, lam, q, term = _finish_lse(m_i, l_i, p_i, _DIAG, False)
    tl.store(lse_ptr + rows, m_o, mask=row_ok)
    tl.store(lse_ptr + s_lam + rows, lam, mask=row_ok)
    tl.store(lse_ptr + 2 * s_lam + rows, p_i, mask=row_ok)
    tl.store(q_ptr + rows, q, mask=row_ok)
    tl.store(term_ptr + rows, term, mask=row_ok)


@triton.jit
def _clip_bwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, keep_ptr, s_ptr, lsea_ptr, qa_ptr, lseb_ptr, qb_ptr, g_ptr,
                     out_ptr, ds_ptr, M, K, s_la, s_lb, s_g, s_am, s_bm, s_o,
                     TILE_SCALE: tl.constexpr, ORIENT: tl.constexpr, STAGED: tl.constexpr, DSCALE: tl.constexpr,
                     ONE_K: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr, RNA: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """∂L/∂(rows of A) of CLIP: each tile recomputed once per program, its coefficients per unit logit
    C_ab = g_a P^row_ab + g_b P^col_ab (the positive −g_a q_a − g_b q_b, tiles with it last as in
    _lse_bwd_kernel), dA += s·C·B̂_J, the l2 Jacobian after the loop. DSCALE: Σ_b C_ab·â_a·b̂_b
    per row too (the scale's gradient; only the A pass: C holds both directions). SPLIT: this
    program's BD gradient columns only (program_id(1)), S in the forward's K chunks unless ONE_K,
    g_a left in out for _jacobian_kernel (see bwd_plan)."""
    inv_t, inv_lo = _scale_value(s_ptr, ACC)
    r0, rows, row_ok, rows64, ks, a, ra = _row_block(a_ptr, ra_ptr, M, K, s_am, TILE_SCALE, ONE_K, BM, BK)
    ma, gla, gpa = _side_vectors(lsea_ptr, s_la, qa_ptr, g_ptr, rows, row_ok, s_g, _DIAG, False, ACC)
    lo_s, hi_s, lo_p, hi_p = _key_range(rows, row_ok, 0, 0, 0, _DIAG)
    acc = tl.zeros((BM, BD), ACC)
    dsr = tl.zeros((BM,), ACC)
    nt = tl.cdiv(M, BN)
    j0 = hi_p // BN + 1
    for t in range(0, nt):
        j = j0 + t
        n0 = tl.where(j >= nt, j - nt, j) * BN
        cols, col_ok, rb, s, b = _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, rows64, row_ok, ra, M, K, s_am, s_bm,
                                           ORIENT, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        b = _out_keys(b, b_ptr, cols, col_ok, K, s_bm, SPLIT, BD)
        mb, glb, gpb = _side_vectors(lseb_ptr, s_lb, qb_ptr, g_ptr, cols, col_ok, s_g, _DIAG, False, ACC)
        c = _tile_coefs(s, n0, r0, rows, cols, row_ok, col_ok, M, M, 0, 0, 0, inv_t, inv_lo, lo_s, hi_s, lo_p, hi_p,
                        gla, ma, gpa, glb, mb, gpb, False, _DIAG, 0, True, True, False, False, True, ACC, BM, BN)
        if DSCALE:
            dsr += tl.sum(c * s, axis=1)
        acc = _apply_coefs(acc, c, b, rb, inv_t, inv_lo, TILE_SCALE, ACC, IP, RNA)
    _store_part(acc, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64, row_ok, ks, K, s_am, TILE_SCALE, STAGED,
                SPLIT, ACC, BK, BD)
    if DSCALE:
        tl.store(ds_ptr + rows, dsr, mask=row_ok & (tl.program_id(1) == 0))


# --------------------------------------------------------------------------------------------
# launch plans: the family's tables (plan.py) where they apply, a whole-K fallback elsewhere


def _whole_k(k: int) -> int:
    return triton.next_power_of_2(max(k, 16))


def fwd_tiles(dtype: torch.dtype, ip: str, k: int, m: int, fam: str, whole_k: bool) -> Tuple[Tiles, bool]:
    """(tiles, one_k) of a forward sweep. ``whole_k`` (CLIP under the interpreter): K in one block
    with the backward's square tiles, so both compute each S entry with one call (plan._orient)."""
    if interpreting():
        if whole_k:
            t = _tile(m)
            return Tiles(t, t, _whole_k(k), 4, 1), True
        return _fwd_tiles(dtype, ip, k, m, fam)
    t, one_k = _fwd_tiles(dtype, ip, k, m, fam)  # the K chunks stay the table's (split_tiles reads them)
    if ip == "ieee" and dtype == torch.float32 and not whole_k:
        t = t._replace(BN=32)  # SigLIP's softplus: (64, 64) spilled 92 B (sm_90)
    elif fam != HOPPER and ip != "ieee" and dtype != torch.float64:
        # the column partials (CLIP) and the softplus (SigLIP) on top of the LSE forward's tile:
        # (64, 64) spilled 20-24 B at K = 512 (sm_120, bf16 and TF32); 32-key tiles do not
        t = t._replace(BN=min(t.BN, 32))
    return t, one_k


def bwd_plan(dtype: torch.dtype, ip: str, k: int, m: int, fam: str) -> Tuple[Tiles, int, bool]:
    """(tiles, BD, one_k) of the backward kernels: BD gradient columns per program (a second grid
    axis when BD < the padded K: SPLIT), S by one whole-K dot of the held row block when one_k,
    else in K chunks of tiles.BK. K ≤ 256 (or the interpreter's _kmax()): one program per row
    block, whole K (split_tiles for K > 256). The interpreter splits K > 32 into 32 columns with S
    still one whole-K call (plan._orient: the forward's bits)."""
    kp = _whole_k(k)
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, kp, 4, 1), min(kp, _kmax()), True
    if k > 256:
        return split_tiles(dtype, ip, k, m, fam)
    if _fused_bwd(dtype, ip, k):
        return _bwd_tiles(dtype, ip, k, m, fam), kp, True
    # IEEE fp32 and fp64: the largest of (32, 64), (32, 32), (16, 32), (16, 16) whose (BM, K)
    # accumulator takes ≤ 64 KB and whose operand rows (BM + BN)·K ≤ 128 KB (Hopper) or 56 KB
    elt = torch.empty((), dtype=dtype).element_size()
    acc = 8 if dtype == torch.float64 else 4
    budget = (128 if fam == HOPPER else 56) << 10
    for bm, bn in ((32, 64), (32, 32), (16, 32), (16, 16)):
        if bm * kp * acc <= 64 << 10 and (bm + bn) * kp * elt <= budget:
            break
    return Tiles(bm, bn, kp, 8 if bm * bn >= 512 else 4, 1), kp, True


def split_tiles(dtype: torch.dtype, ip: str, k: int, m: int, fam: str) -> Tuple[Tiles, int, bool]:
    """K > 256: the gradient's columns split over programs (BD per program), each recomputing its S
    tiles in the forward's K chunks (the forward's accumulation order): ⌈K/BD⌉ units of S and one
    of C·B per pass instead of one each, for a (BM, BD) accumulator. Whole-K row blocks (the
    earlier design) held (BM, K) operands and accumulator: at K = 512, 32-row blocks (mma.sync,
    no wgmma on sm_90), over the 99/163 KB of shared memory on sm_8x/sm_120, fp64 (16, 16) spilled
    2.9 KB. Tensor-core dtypes: BD = 256, the accumulator of the fused backward at K = 256; on
    Hopper its 64-row tiles (wgmma). IEEE fp32 (FMA dots) and fp64: BD = 128. Chosen from the
    kernel report (sm_80/86/89/90/100/120, triton 3.8): none spills, ≤ 74 KB of shared memory."""
    chunk = fwd_tiles(dtype, ip, k, m, fam, False)[0].BK
    if ip != "ieee":
        if fam == HOPPER:
            t = _bwd_tiles(dtype, ip, 256, m, fam)
            return Tiles(t.BM, t.BN, chunk, t.warps, t.stages), 256, False
        return Tiles(64, 16, chunk, 8, 2), 256, False  # (64, 32) spilled 8 B at 255 registers (sm_120)
    if dtype == torch.float64:  # (32, 32) spilled 8 B (sm_90); BD = 64: twice the S recomputation
        return Tiles(32, 16, chunk, 8, 1), 128, False
    return Tiles(16, 32, chunk, 4, 1), 128, False  # (32, 16) spilled 12 B at 128 registers (sm_86)


def bwd_flags(a: Tensor, tile: bool, plan: Tuple[Tiles, int, bool]) -> dict:
    """The constexprs and launch options every two-tower backward launch shares."""
    t, bd, one_k = plan
    return dict(TILE_SCALE=tile, STAGED=_staged_jacobian(a.dtype), ONE_K=one_k, SPLIT=bd < _whole_k(a.shape[1]),
                ACC=_acc_tl(a.dtype), IP=input_precision(a.dtype), RNA=tf32_rounding(a.dtype), BM=t.BM, BN=t.BN,
                BK=t.BK, BD=bd, num_warps=t.warps, num_stages=t.stages)


def bwd_grid(flags: dict, rows: int, k: int) -> Tuple[int, int]:
    """Row blocks × column chunks (one chunk unless SPLIT)."""
    return triton.cdiv(rows, flags["BM"]), triton.cdiv(k, flags["BD"]) if flags["SPLIT"] else 1


def grad_buffers(outs: Tuple[Tensor, Tensor], flags: dict) -> Tuple[Tensor, Tensor]:
    """Where the two passes write: the outs, or (SPLIT into bf16/fp16 outs) g_a in rows of one fp32
    buffer that both passes use in turn (each pass's Jacobian pass reads it before the next)."""
    if flags["SPLIT"] and not flags["STAGED"]:
        buf = torch.empty(max(o.shape[0] for o in outs), outs[0].shape[1], dtype=torch.float32,
                          device=outs[0].device)
        return tuple(buf[:o.shape[0]] for o in outs)
    return outs


def finish_grad(g: Tensor, out: Tensor, x: Tensor, rx: Tensor, kx: Tensor, flags: dict) -> None:
    """The l2 Jacobian pass after a SPLIT backward (g: from grad_buffers); nothing otherwise."""
    if not flags["SPLIT"]:
        return
    n, k = out.shape
    kp = _whole_k(k)
    br = 16 if flags["STAGED"] else max(1, min(32, 4096 // kp))  # registers: ≤ 32 fp32 of g per thread
    _jacobian_kernel[(triton.cdiv(n, br),)](g, g.stride(0), out, out.stride(0), x, rx, kx, n, k, x.stride(0),
                                            TILE_SCALE=flags["TILE_SCALE"], STAGED=flags["STAGED"], ACC=flags["ACC"],
                                            BR=br, BK=kp, num_warps=4)


def scalar_grad(parts: Tensor, like: Tensor) -> Tensor:
    """A scale's or bias's gradient from its per-row partials, in the tensor's dtype and shape."""
    return parts.sum().to(like.dtype).reshape(like.shape)


# --------------------------------------------------------------------------------------------
# the op


def _clip_fwd_impl(image_features: Tensor, text_features: Tensor, logit_scale: Tensor
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, lse, q, r, keep); op/r/keep (2N,): rows of A then of B; lse (3, 2N) (m, λ and
    the positive logit) and q: rows of s·ÂB̂ᵀ, then its columns."""
    a, b = image_features, text_features
    n, k = a.shape
    acc = acc_dtype(a.dtype)
    dev = a.device
    with device_guard(a):
        pr = _prep(a, b, 2, None, None, norm=True)
        lse = torch.empty(3, 2 * n, dtype=acc, device=dev)
        q, term = (torch.empty(2 * n, dtype=acc, device=dev) for _ in range(2))
        tile = _tile_scaled(a.dtype)
        r = pr.r if tile else q
        ip = input_precision(a.dtype)
        t, one_k = fwd_tiles(a.dtype, ip, k, n, arch_family(a), True)
        nrb = triton.cdiv(n, t.BM)
        cm = torch.empty(nrb, n, dtype=acc, device=dev)
        cl = torch.empty_like(cm)
        _clip_fwd_kernel[(nrb,)](pr.op[:n], pr.op[n:], r[:n], r[n:], logit_scale, lse, q, term, cm, cl, n, k,
                                 lse.stride(0), pr.op.stride(0), pr.op.stride(0), TILE_SCALE=tile, ORIENT=_orient(0),
                                 ONE_K=one_k, ACC=_acc_tl(a.dtype), IP=ip, BM=t.BM, BN=t.BN, BK=t.BK,
                                 num_warps=t.warps, num_stages=t.stages)
        bn = 32 if interpreting() else 128
        lc = lse[:, n:]
        _lse_cols_merge_kernel[(triton.cdiv(n, bn),)](cm, cl, lse[2], lc[0], lc[1], q[n:], term[n:], n, nrb,
                                                      lc.stride(0), POS=_POS_DIAG, DROP_POS=False,
                                                      ACC=_acc_tl(a.dtype), BN=bn, num_warps=4)
    return _reduce(term, "mean"), pr.op, lse, q, pr.r, pr.keep


def _clip_bwd_impl(image_features: Tensor, text_features: Tensor, logit_scale: Tensor, op: Tensor, lse: Tensor,
                   q: Tensor, r: Tensor, keep: Tensor, g_loss: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (∂L/∂A, ∂L/∂B, ∂L/∂s)."""
    a = image_features
    n, k = a.shape
    g = _grad_vector(g_loss, q, "mean")  # ∂L/∂term: g/(2N), stride 0
    tile = _tile_scaled(a.dtype)
    flags = bwd_flags(a, tile, bwd_plan(a.dtype, input_precision(a.dtype), k, n, arch_family(a)))
    da = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    db = torch.empty(text_features.shape, dtype=a.dtype, device=a.device)
    ds = torch.empty(n, dtype=q.dtype, device=a.device)
    if n == 1:
        # the one logit is the positive: both cross-entropies are log 1 = 0 whatever the inputs, and a
        # column without negatives has merged statistics m = −inf, λ = inf, which give 0·NaN per tile
        return da.zero_(), db.zero_(), scalar_grad(ds.zero_(), logit_scale)
    sides = ((op[:n], r[:n], keep[:n], lse[:, :n], q[:n]), (op[n:], r[n:], keep[n:], lse[:, n:], q[n:]))
    with device_guard(a):
        # rows of A against B, then rows of B against A with S's tiles in the forward's operand order
        gs = grad_buffers((da, db), flags)
        for (x, rx, kx, lx, qx), (y, ry, _, ly, qy), out, gx, orient in ((*sides, da, gs[0], 0),
                                                                          (*sides[::-1], db, gs[1], 2)):
            _clip_bwd_kernel[bwd_grid(flags, n, k)](
                x, y, rx, ry, kx, logit_scale, lx, qx, ly, qy, g, gx, ds, n, k, lx.stride(0), ly.stride(0),
                g.stride(0), x.stride(0), y.stride(0), gx.stride(0), ORIENT=_orient(orient), DSCALE=orient == 0,
                **flags)
            finish_grad(gx, out, x, rx, kx, flags)
    return da, db, scalar_grad(ds, logit_scale)


def _clip_fwd_fake(image_features, text_features, logit_scale):
    n, d = image_features.shape
    e = image_features.new_empty
    acc = acc_dtype(image_features.dtype)
    return (e((), dtype=acc), _op_buffer(2 * n, d, image_features.dtype, image_features.device),
            e((3, 2 * n), dtype=acc), e((2 * n,), dtype=acc), e((2 * n,), dtype=acc), e((2 * n,), dtype=acc))


def grads_fake(*tensors: Tensor) -> Tuple[Tensor, ...]:
    """Fakes of a backward's results: one gradient per tensor, of its shape and dtype."""
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in tensors)


def _clip_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _clip_backward(ctx, run_bwd, g_loss, *unused):
    a, b, s, *saved = ctx.saved_tensors
    return run_bwd(a, b, s, *saved, g_loss if g_loss is not None else saved[1].new_zeros(()))


_CLIP = registry.register("clip", "triton", fwd=_clip_fwd_impl, fwd_fake=_clip_fwd_fake, bwd=_clip_bwd_impl,
                          bwd_fake=lambda a, b, s, *rest: grads_fake(a, b, s), setup=_clip_setup,
                          backward=_clip_backward, device=device_rule, gathers=True)
clip_fwd, clip_bwd, _SPEC_CLIP, ClipFunction = _CLIP.fwd, _CLIP.bwd, _CLIP.spec, _CLIP.function


# --------------------------------------------------------------------------------------------
# the functions functional/two_tower.py calls (inputs validated there)


def scalar_tensor(value, like: Tensor) -> Tensor:
    """A scale or bias as the ops take it: a tensor as given (its value stays on the device), a
    Python float as a 0-dim float64 tensor on the features' device (a fill, no synchronization)."""
    if isinstance(value, Tensor):
        return value
    return torch.full((), float(value), dtype=torch.float64, device=like.device)


def clip(image_features: Tensor, text_features: Tensor, logit_scale) -> Tensor:
    """CLIP (docs/spec.md §7.4) of one process's batch."""
    return apply(_SPEC_CLIP, image_features, text_features, scalar_tensor(logit_scale, image_features))[0]


def clip_gathered(ctx, image_features: Tensor, text_features: Tensor, logit_scale) -> Tensor:
    """open_clip's local loss (docs/spec.md §5, §7.4): this rank's rows of s·ÂB̂ᵀ and of s·B̂Âᵀ over
    every rank's columns, each direction one anchor_lse pass whose anchors are s·(normalized rows)
    in the compute dtype (temperature 1, no normalization inside), so autograd takes the scale's
    and the features' gradients through the scaling, the normalization and the gather."""
    from .ops import _SPEC_ANCHOR_LSE

    n = image_features.shape[0]
    up = acc_dtype(image_features.dtype)
    s = logit_scale.reshape(()).to(up) if isinstance(logit_scale, Tensor) else float(logit_scale)
    a_all, b_all = l2n(ctx.gather(image_features)).to(up), l2n(ctx.gather(text_features)).to(up)
    lo = ctx.rank * n
    terms = [apply(_SPEC_ANCHOR_LSE, (x[lo:lo + n] * s).contiguous(), y.contiguous(), 1.0, False, n, n, lo, False,
                   _POS_DIAG, False, 0)[0].mean() for x, y in ((a_all, b_all), (b_all, a_all))]
    return (terms[0] + terms[1]) / 2
