"""Triton kernels of the log-sum-exp family (SPEC §3 VICReg-exp/-ctr, §4 NT-Xent, DCL, InfoNCE).

UNTESTED ON GPU: these kernels have only run under the Triton interpreter (TRITON_INTERPRET=1) on
CPU tensors in float32/float64. ``benchmarks/gpu_check.sh`` runs their ``cuda`` tests on the H200.

One kernel pair serves every loss of the family (DESIGN "Gram-reduce" / "Gram-apply" for the
log-sum-exp case, flash-attention style, so memory stays O(rows) and no Gram matrix is written):

``_lse_fwd_kernel``: for a block of rows a of A (M×K) and every row b of B (MB×K), the tile
    dot_ab = r_a r_b · (A_a · B_b) is computed on chip (``tl.dot`` over K in chunks; r = optional
    per-row inverse norms, which fuses the l2 normalization into the tile), turned into logits
    t(dot_ab)/temperature with the masks (self b = a, positive p(a), optional removal of the
    positive = DCL) and the transform of negatives (abs / square, paper §5), and reduced by an
    online max / sum-exp into lse_a. It stores lse_a and the row's term lse_a − s_{a,p(a)}.
``_lse_bwd_kernel``: recomputes the same tiles from the saved lse (no N×N buffer) and applies
    C_ab = ∂L/∂dot_ab + ∂L/∂dot_ba to the rows of B in one pass:
        ∂L/∂logit = g_a·exp(logit_ab − lse_a) + g_b·exp(logit_ab − lseB_b) − [b = p(a)](g_a + g_b)
    The second softmax is the transposed matrix's: for the symmetric matrix of both views
    (NT-Xent, DCL, VICReg-exp/-ctr) logit_ba = logit_ab, so ONE pass over the rows gives the whole
    gradient; for InfoNCE's cross-view matrix the second pass swaps A and B (Sᵀ). The l2
    normalization's Jacobian is fused in the epilogue: with n_a = r_a·u_a,
        ∂L/∂u_a = r_a·(Σ_b C_ab n_b − [‖u_a‖ > 1e-12]·n_a·Σ_b C_ab dot_ab),
    and Σ_b C_ab dot_ab is a row reduction of the same tiles (it equals n_a·∂L/∂n_a).

Left in torch, around the ops (O(N·D) elementwise work, autograd-tracked): the concatenation of the
two views, the column centering of center_l2 / dim_std / VICReg-exp/-ctr and the column scaling of
dim_std, VICReg-exp/-ctr's variance hinge and invariance terms, and the reductions over rows.

Custom ops (DESIGN conventions 1–3; forward and backward separate, fakes registered, autograd
registered, no host-device synchronization):

- ``duality_kernels::gram_lse_fwd(u, temperature, normalize, half, self_mask, drop_positive, transform)
  -> (terms, lse, rinv, keep)``: rows of u against themselves. ``half > 0``: the positive of row a
  is a ± half (the two views stacked); ``half = 0``: no positive (terms = lse).
- ``duality_kernels::gram_lse_bwd(...) -> du``.
- ``duality_kernels::cross_lse_fwd(u1, u2, temperature) -> (terms, lse, rinv)``: InfoNCE, the rows of
  S = l2n(u1) l2n(u2)ᵀ/temperature, then the rows of Sᵀ, positive on the diagonal.
- ``duality_kernels::cross_lse_bwd(...) -> (du1, du2)``.
- ``duality_kernels::anchor_lse_fwd(anchors, keys, temperature, normalize, half_a, half_b, off,
  self_mask, pos, drop_positive, transform) -> (terms, lse, ra, ka, rb, kb)`` and
  ``anchor_lse_bwd(...) -> (d_anchors, d_keys)``: ``gather_distributed=True`` (SPEC §5) for NT-Xent,
  DCL and InfoNCE: this rank's anchors against the gathered keys of all ranks. Only the anchors have
  loss terms, so the backward takes two passes (anchors as rows; keys as rows with the masks read
  column-wise); the gather's backward then sums the keys' gradients over ranks.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .._direct import Spec, apply, pick
from ._common import acc_dtype, device_guard, dot_block, input_precision, interpreting, scalar, tl, triton

Tensor = torch.Tensor

L2_EPS = 1e-12  # torch.nn.functional.normalize's eps (SPEC "Notation")
TRANSFORMS = {"dot": 0, "abs": 1, "square": 2}
_NO_POS, _POS_PAIR, _POS_DIAG = 0, 1, 2
_DIAG = (0, 0, 0, False, _POS_DIAG, False, 0)  # InfoNCE on one process: positive on the diagonal


# --------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _dot_tile(a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K, s_am, s_ak, s_bm, s_bk, ra, rb,
              SCALE_ROWS: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) tile of A·Bᵀ, accumulated in ACC over K in chunks of BLOCK_K."""
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        ks64 = ks.to(tl.int64)
        a = tl.load(a_ptr + rows64[:, None] * s_am + ks64[None, :] * s_ak,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + cols64[None, :] * s_bm + ks64[:, None] * s_bk,
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if SCALE_ROWS == 1:  # fp32/fp64: n = r·u on load (more accurate than scaling the dot)
            a = (a * ra[:, None]).to(a.dtype)
            b = (b * rb[None, :]).to(b.dtype)
        s = tl.dot(a, b, s, input_precision=IP, out_dtype=ACC)  # triton 3.6: fp64 needs out_dtype
    return s


@triton.jit
def _row_scale(r_ptr, idx, ok, SCALE_ROWS: tl.constexpr, ACC: tl.constexpr):
    """The l2 scales of rows ``idx`` (0.0, unused, without row scaling)."""
    r = 0.0
    if SCALE_ROWS:
        r = tl.load(r_ptr + idx, mask=ok, other=0.0).to(ACC)
    return r


@triton.jit
def _partners(idx, HALF_A, HALF_B, OFF, POS: tl.constexpr):
    """(self, positive) key indices of anchors ``idx``.

    POS == 1 (two views stacked): anchor idx = v·HALF_A + i (view v, row i) is key v·HALF_B + OFF + i
    and its positive the other view's key (1 − v)·HALF_B + OFF + i. One process: HALF_A = HALF_B = N,
    OFF = 0 (a ↔ a ± N); with W ranks (SPEC §5) the anchors are this rank's rows, HALF_B = W·N and
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
def _masks(rows, cols, HALF_A, HALF_B, OFF, POS: tl.constexpr, TRANSPOSED: tl.constexpr):
    """(is_self, is_pos) of a tile: rows are anchors and cols keys, or the reverse (TRANSPOSED)."""
    if TRANSPOSED:
        me, pos = _partners(cols, HALF_A, HALF_B, OFF, POS)
        is_self = rows[:, None] == me[None, :]
        is_pos = rows[:, None] == pos[None, :]
    else:
        me, pos = _partners(rows, HALF_A, HALF_B, OFF, POS)
        is_self = cols[None, :] == me[:, None]
        is_pos = cols[None, :] == pos[:, None]
    return is_self, is_pos


@triton.jit
def _logits(s, is_self, is_pos, col_ok, inv_t,
            SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr):
    """Masked logits of SPEC §4: t(dot)/temperature, positive raw (or removed), self and padding −inf."""
    if TRANSFORM == 1:
        t = tl.abs(s)
    elif TRANSFORM == 2:
        t = s * s
    else:
        t = s
    if POS != 0:
        if TRANSFORM != 0:
            t = tl.where(is_pos, s, t)  # the positive's own term stays s_{a,p(a)}
    logit = t * inv_t
    dead = col_ok[None, :] == 0
    if SELF:
        dead = dead | is_self
    if POS != 0:
        if DROP_POS:
            dead = dead | is_pos
    return tl.where(dead, float("-inf"), logit)


@triton.jit
def _lse_fwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, lse_ptr, term_ptr,
                    M, MB, K, HALF_A, HALF_B, OFF, inv_t: tl.float64,
                    s_am, s_ak, s_bm, s_bk,
                    SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr,
                    TRANSFORM: tl.constexpr, SCALE_ROWS: tl.constexpr,
                    ACC: tl.constexpr, IP: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """lse and term of anchors (rows of A) against keys (rows of B)."""
    pid = tl.program_id(0)
    inv_t = scalar(inv_t, ACC)  # a float64 argument (see _common.scalar)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ra = _row_scale(ra_ptr, rows, row_ok, SCALE_ROWS, ACC)
    # Online log-sum-exp (flash-attention): m starts finite so that a fully masked tile gives
    # exp(-inf - m) = 0 instead of NaN; real logits are far above -1e30.
    m_i = tl.full((BLOCK_M,), -1e30, dtype=ACC)
    l_i = tl.zeros((BLOCK_M,), dtype=ACC)
    p_i = tl.zeros((BLOCK_M,), dtype=ACC)
    for n0 in range(0, MB, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < MB
        rb = _row_scale(rb_ptr, cols, col_ok, SCALE_ROWS, ACC)
        s = _dot_tile(a_ptr, b_ptr, rows64, row_ok, cols.to(tl.int64), col_ok, K,
                      s_am, s_ak, s_bm, s_bk, ra, rb, SCALE_ROWS, ACC, IP, BLOCK_M, BLOCK_N, BLOCK_K)
        if SCALE_ROWS == 2:  # bf16/fp16: exact tensor-core operands, the scales on the fp32 tile
            s = s * ra[:, None] * rb[None, :]
        is_self, is_pos = _masks(rows, cols, HALF_A, HALF_B, OFF, POS, False)
        logit = _logits(s, is_self, is_pos, col_ok, inv_t, SELF, POS, DROP_POS, TRANSFORM)
        m_new = tl.maximum(m_i, tl.max(logit, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logit - m_new[:, None]), axis=1)
        m_i = m_new
        if POS != 0:
            p_i += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
    lse = m_i + tl.log(l_i)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if POS != 0:
        tl.store(term_ptr + rows, lse - p_i * inv_t, mask=row_ok)
    else:
        tl.store(term_ptr + rows, lse, mask=row_ok)


@triton.jit
def _lse_bwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, ka_ptr, lsea_ptr, ga_ptr, lseb_ptr, gb_ptr, out_ptr,
                    M, MB, K, HALF_A, HALF_B, OFF, inv_t: tl.float64,
                    s_am, s_ak, s_bm, s_bk, s_om, s_ok,
                    SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr,
                    TRANSFORM: tl.constexpr, SCALE_ROWS: tl.constexpr,
                    ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr,
                    ACC: tl.constexpr, IP: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """dA[rows, d-chunk] for one (row block, column chunk of A) program; see the module docstring.

    ROW_SIDE: the rows of A have loss terms (lse_a, g_a); COL_SIDE: the rows of B do (lse_b, g_b).
    Both for the symmetric matrix of one process and InfoNCE's cross matrix; with W ranks the
    anchors' pass has only ROW_SIDE and the keys' pass (TRANSPOSED: rows are keys) only COL_SIDE.
    """
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    inv_t = scalar(inv_t, ACC)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < K
    ds64 = ds.to(tl.int64)
    if ROW_SIDE:
        lse_a = tl.load(lsea_ptr + rows, mask=row_ok, other=0.0).to(ACC)
        g_a = tl.load(ga_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    else:
        g_a = tl.zeros((BLOCK_M,), dtype=ACC)
    ra = _row_scale(ra_ptr, rows, row_ok, SCALE_ROWS, ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    rowsum = tl.zeros((BLOCK_M,), dtype=ACC)
    for n0 in range(0, MB, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < MB
        cols64 = cols.to(tl.int64)
        rb = _row_scale(rb_ptr, cols, col_ok, SCALE_ROWS, ACC)
        s = _dot_tile(a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K,
                      s_am, s_ak, s_bm, s_bk, ra, rb, SCALE_ROWS, ACC, IP, BLOCK_M, BLOCK_N, BLOCK_K)
        if SCALE_ROWS == 2:  # bf16/fp16: exact tensor-core operands, the scales on the fp32 tile
            s = s * ra[:, None] * rb[None, :]
        is_self, is_pos = _masks(rows, cols, HALF_A, HALF_B, OFF, POS, TRANSPOSED)
        logit = _logits(s, is_self, is_pos, col_ok, inv_t, SELF, POS, DROP_POS, TRANSFORM)
        w = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        if ROW_SIDE:
            w += g_a[:, None] * tl.exp(logit - lse_a[:, None])
        if COL_SIDE:
            lse_b = tl.load(lseb_ptr + cols, mask=col_ok, other=0.0).to(ACC)
            g_b = tl.load(gb_ptr + cols, mask=col_ok, other=0.0).to(ACC)
            w += g_b[None, :] * tl.exp(logit - lse_b[None, :])
        else:
            g_b = tl.zeros((BLOCK_N,), dtype=ACC)
        # chain rule through the transform of negatives (d|s| = sign(s) ds, d s² = 2s ds)
        if TRANSFORM == 1:
            c = tl.where(s > 0, w, tl.where(s < 0, -w, 0.0))
        elif TRANSFORM == 2:
            c = 2.0 * s * w
        else:
            c = w
        if POS != 0:
            if TRANSFORM != 0:
                if not DROP_POS:
                    c = tl.where(is_pos, w, c)
            c = tl.where(is_pos, c - (g_a[:, None] + g_b[None, :]), c)  # −s_{a,p(a)} of rows a and p(a)
        c = c * inv_t
        b = tl.load(b_ptr + cols64[:, None] * s_bm + ds64[None, :] * s_bk,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if SCALE_ROWS:
            rowsum += tl.sum(c * s, axis=1)
            c = c * rb[None, :]
        acc = tl.dot(c.to(b.dtype), b, acc, input_precision=IP, out_dtype=ACC)
    if SCALE_ROWS:
        keep = tl.load(ka_ptr + rows, mask=row_ok, other=0.0).to(ACC)
        a = tl.load(a_ptr + rows64[:, None] * s_am + ds64[None, :] * s_ak,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
        acc = ra[:, None] * (acc - (keep * ra * rowsum)[:, None] * a)
    tl.store(out_ptr + rows64[:, None] * s_om + ds64[None, :] * s_ok, acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------------------------
# launchers


def _blocks(m: int, k: int):
    """(BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_D, num_warps). Small blocks in the interpreter (speed);
    on the GPU 64×64 tiles, K chunks of 64 and the whole row (≤ 256) in one backward program
    (no recomputation of the tiles per column chunk for D ≤ 256). Untuned: no GPU measurement yet."""
    if interpreting():
        return 16 if m <= 16 else 32, 16 if m <= 16 else 32, dot_block(k, 32), dot_block(k, 32), 4
    bd = dot_block(k, 256)
    return 64, 64, dot_block(k, 64), bd, 8 if bd >= 128 else 4


def _row_scales(u: Tensor) -> Tuple[Tensor, Tensor]:
    """(1/max(‖u_a‖, 1e-12), [‖u_a‖ > 1e-12]) in the accumulation dtype: l2n's scale and whether
    the norm (rather than the eps) is in the denominator, i.e. whether its Jacobian has the
    −n_a n_aᵀ part."""
    norm = torch.linalg.vector_norm(u.to(acc_dtype(u.dtype)), dim=1)
    return 1.0 / norm.clamp_min(L2_EPS), (norm > L2_EPS).to(norm.dtype)


# The masks of one problem: (half_a, half_b, off, self_mask, pos, drop_positive, transform); see
# _partners for the first three.
Masks = Tuple[int, int, int, bool, int, bool, int]


def _acc_tl(dtype: torch.dtype):
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


# Where the l2 scales r_a·r_b enter (kernel constexpr SCALE_ROWS): 1 = on the loaded operands, for
# these dtypes (at temperature 0.01 in fp32 it cut the gradient error from 2-7x to 1-3x eager's,
# interpreter, 2026-11-30); 2 = on the fp32 dot tile, for bf16/fp16, whose operands would
# otherwise be rounded once more to the input dtype before the tensor-core dot.
_LOAD_SCALE_DTYPES = (torch.float32, torch.float64)


def _scale_mode(a: Tensor, r: Optional[Tensor]) -> int:
    if r is None:
        return 0
    return 1 if a.dtype in _LOAD_SCALE_DTYPES else 2


def _lse_fwd(a: Tensor, b: Tensor, ra: Optional[Tensor], rb: Optional[Tensor], inv_t: float,
             masks: Masks) -> Tuple[Tensor, Tensor]:
    """(terms, lse) of the anchors (rows of a) against the keys (rows of b)."""
    half_a, half_b, off, self_mask, pos, drop_positive, transform = masks
    m, k = a.shape
    lse = torch.empty(m, device=a.device, dtype=acc_dtype(a.dtype))
    terms = torch.empty_like(lse)
    bm, bn, bk, _, warps = _blocks(m, k)
    scale = _scale_mode(a, ra)
    with device_guard(a):
        _lse_fwd_kernel[(triton.cdiv(m, bm),)](
            a, b, ra if scale else lse, rb if scale else lse, lse, terms,
            m, b.shape[0], k, half_a, half_b, off, inv_t,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            SELF=self_mask, POS=pos, DROP_POS=drop_positive, TRANSFORM=transform, SCALE_ROWS=scale,
            ACC=_acc_tl(a.dtype), IP=input_precision(a.dtype),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return terms, lse


def _lse_bwd(a: Tensor, b: Tensor, ra: Optional[Tensor], rb: Optional[Tensor], keep_a: Optional[Tensor],
             lse_a: Optional[Tensor], g_a: Optional[Tensor], lse_b: Optional[Tensor], g_b: Optional[Tensor],
             inv_t: float, masks: Masks, transposed: bool = False) -> Tensor:
    """∂L/∂(rows of a): (lse_a, g_a) are the rows' own loss terms (None: they have none), (lse_b,
    g_b) the columns' (None: none). ``transposed``: a holds the keys and b the anchors."""
    half_a, half_b, off, self_mask, pos, drop_positive, transform = masks
    m, k = a.shape
    out = torch.empty_like(a)
    bm, bn, bk, bd, warps = _blocks(m, k)
    scale = _scale_mode(a, ra)
    dummy = next(t for t in (lse_a, lse_b) if t is not None)
    with device_guard(a):
        _lse_bwd_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bd))](
            a, b, ra if scale else dummy, rb if scale else dummy, keep_a if scale else dummy,
            dummy if lse_a is None else lse_a, dummy if g_a is None else g_a,
            dummy if lse_b is None else lse_b, dummy if g_b is None else g_b, out,
            m, b.shape[0], k, half_a, half_b, off, inv_t,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            SELF=self_mask, POS=pos, DROP_POS=drop_positive, TRANSFORM=transform, SCALE_ROWS=scale,
            ROW_SIDE=lse_a is not None, COL_SIDE=lse_b is not None, TRANSPOSED=transposed,
            ACC=_acc_tl(a.dtype), IP=input_precision(a.dtype),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, num_warps=warps)
    return out


def _grad_vector(g: Optional[Tensor], like: Tensor) -> Tensor:
    # Unused outputs come back as None; a mean's gradient arrives expanded (stride 0).
    if g is None:
        return torch.zeros_like(like)
    return g.to(like.dtype).contiguous()


# --------------------------------------------------------------------------------------------
# gram_lse: rows of u against themselves (NT-Xent, DCL: u = [z1; z2]; VICReg-exp: u = xᵀ;
# VICReg-ctr: u = y)


def _gram_lse_fwd_impl(u: Tensor, temperature: float, normalize: bool, half: int, self_mask: bool,
                 drop_positive: bool, transform: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if normalize:
        rinv, keep = _row_scales(u)
    else:
        rinv, keep = (u.new_empty((0,), dtype=acc_dtype(u.dtype)) for _ in range(2))  # no aliased outputs
    r = rinv if normalize else None
    masks = (half, half, 0, self_mask, _POS_PAIR if half > 0 else _NO_POS, drop_positive, transform)
    terms, lse = _lse_fwd(u, u, r, r, 1.0 / temperature, masks)
    return terms, lse, rinv, keep


gram_lse_fwd = torch.library.custom_op("duality_kernels::gram_lse_fwd", mutates_args=())(_gram_lse_fwd_impl)


@gram_lse_fwd.register_fake
def _(u, temperature, normalize, half, self_mask, drop_positive, transform):
    acc = acc_dtype(u.dtype)
    m = u.shape[0]
    r = m if normalize else 0
    return (u.new_empty((m,), dtype=acc), u.new_empty((m,), dtype=acc),
            u.new_empty((r,), dtype=acc), u.new_empty((r,), dtype=acc))


def _gram_lse_bwd_impl(u: Tensor, rinv: Tensor, keep: Tensor, lse: Tensor, grad_terms: Tensor,
                 temperature: float, normalize: bool, half: int, self_mask: bool,
                 drop_positive: bool, transform: int) -> Tensor:
    r = rinv if normalize else None
    masks = (half, half, 0, self_mask, _POS_PAIR if half > 0 else _NO_POS, drop_positive, transform)
    # the matrix is symmetric: one pass over the rows gives both sides' contributions
    return _lse_bwd(u, u, r, r, keep if normalize else None, lse, grad_terms, lse, grad_terms,
                    1.0 / temperature, masks)


gram_lse_bwd = torch.library.custom_op("duality_kernels::gram_lse_bwd", mutates_args=())(_gram_lse_bwd_impl)


@gram_lse_bwd.register_fake
def _(u, rinv, keep, lse, grad_terms, temperature, normalize, half, self_mask, drop_positive, transform):
    return torch.empty_like(u)


def _gram_lse_setup(ctx, inputs, output):
    u, temperature, normalize, half, self_mask, drop_positive, transform = inputs
    _, lse, rinv, keep = output
    ctx.save_for_backward(u, rinv, keep, lse)
    ctx.args = (temperature, normalize, half, self_mask, drop_positive, transform)
    ctx.mark_non_differentiable(lse, rinv, keep)


def _gram_lse_backward(ctx, g_terms, g_lse, g_rinv, g_keep):
    u, rinv, keep, lse = ctx.saved_tensors
    du = pick(ctx, gram_lse_bwd, _gram_lse_bwd_impl)(u, rinv, keep, lse, _grad_vector(g_terms, lse), *ctx.args)
    return du, None, None, None, None, None, None


gram_lse_fwd.register_autograd(_gram_lse_backward, setup_context=_gram_lse_setup)
_SPEC_GRAM_LSE = Spec(gram_lse_fwd, _gram_lse_fwd_impl, _gram_lse_setup, _gram_lse_backward, 1)


# --------------------------------------------------------------------------------------------
# cross_lse: InfoNCE's S = l2n(u1) l2n(u2)ᵀ / temperature, row and column log-sum-exps


def _cross_lse_fwd_impl(u1: Tensor, u2: Tensor, temperature: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r1, k1 = _row_scales(u1)
    r2, k2 = _row_scales(u2)
    inv_t = 1.0 / temperature
    t_rows, lse_rows = _lse_fwd(u1, u2, r1, r2, inv_t, _DIAG)
    t_cols, lse_cols = _lse_fwd(u2, u1, r2, r1, inv_t, _DIAG)
    return (torch.cat([t_rows, t_cols]), torch.cat([lse_rows, lse_cols]),
            torch.cat([r1, r2]), torch.cat([k1, k2]))


cross_lse_fwd = torch.library.custom_op("duality_kernels::cross_lse_fwd", mutates_args=())(_cross_lse_fwd_impl)


@cross_lse_fwd.register_fake
def _(u1, u2, temperature):
    acc = acc_dtype(u1.dtype)
    m = 2 * u1.shape[0]
    return tuple(u1.new_empty((m,), dtype=acc) for _ in range(4))


def _cross_lse_bwd_impl(u1: Tensor, u2: Tensor, rinv: Tensor, keep: Tensor, lse: Tensor, grad_terms: Tensor,
                  temperature: float) -> Tuple[Tensor, Tensor]:
    n = u1.shape[0]
    r1, r2, k1, k2 = rinv[:n], rinv[n:], keep[:n], keep[n:]
    l1, l2, g1, g2 = lse[:n], lse[n:], grad_terms[:n], grad_terms[n:]
    inv_t = 1.0 / temperature
    du1 = _lse_bwd(u1, u2, r1, r2, k1, l1, g1, l2, g2, inv_t, _DIAG)
    du2 = _lse_bwd(u2, u1, r2, r1, k2, l2, g2, l1, g1, inv_t, _DIAG)
    return du1, du2


cross_lse_bwd = torch.library.custom_op("duality_kernels::cross_lse_bwd", mutates_args=())(_cross_lse_bwd_impl)


@cross_lse_bwd.register_fake
def _(u1, u2, rinv, keep, lse, grad_terms, temperature):
    return torch.empty_like(u1), torch.empty_like(u2)


def _cross_lse_setup(ctx, inputs, output):
    u1, u2, temperature = inputs
    _, lse, rinv, keep = output
    ctx.save_for_backward(u1, u2, rinv, keep, lse)
    ctx.temperature = temperature
    ctx.mark_non_differentiable(lse, rinv, keep)


def _cross_lse_backward(ctx, g_terms, g_lse, g_rinv, g_keep):
    u1, u2, rinv, keep, lse = ctx.saved_tensors
    du1, du2 = pick(ctx, cross_lse_bwd, _cross_lse_bwd_impl)(u1, u2, rinv, keep, lse, _grad_vector(g_terms, lse), ctx.temperature)
    return du1, du2, None


cross_lse_fwd.register_autograd(_cross_lse_backward, setup_context=_cross_lse_setup)
_SPEC_CROSS_LSE = Spec(cross_lse_fwd, _cross_lse_fwd_impl, _cross_lse_setup, _cross_lse_backward, 1)


# --------------------------------------------------------------------------------------------
# anchor_lse: this rank's anchors against the keys of all ranks (SPEC §5, gather_distributed=True)


def _anchor_lse_fwd_impl(anchors: Tensor, keys: Tensor, temperature: float, normalize: bool, half_a: int,
                   half_b: int, off: int, self_mask: bool, pos: int, drop_positive: bool,
                   transform: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    acc = acc_dtype(anchors.dtype)
    if normalize:
        ra, ka = _row_scales(anchors)
        rb, kb = _row_scales(keys)
    else:
        ra, ka, rb, kb = (anchors.new_empty((0,), dtype=acc) for _ in range(4))
    masks = (half_a, half_b, off, self_mask, pos, drop_positive, transform)
    terms, lse = _lse_fwd(anchors, keys, ra if normalize else None, rb if normalize else None,
                          1.0 / temperature, masks)
    return terms, lse, ra, ka, rb, kb


anchor_lse_fwd = torch.library.custom_op("duality_kernels::anchor_lse_fwd", mutates_args=())(_anchor_lse_fwd_impl)


@anchor_lse_fwd.register_fake
def _(anchors, keys, temperature, normalize, half_a, half_b, off, self_mask, pos, drop_positive, transform):
    acc = acc_dtype(anchors.dtype)
    m, mb = anchors.shape[0], keys.shape[0]
    ra = m if normalize else 0
    rb = mb if normalize else 0
    return (anchors.new_empty((m,), dtype=acc), anchors.new_empty((m,), dtype=acc),
            anchors.new_empty((ra,), dtype=acc), anchors.new_empty((ra,), dtype=acc),
            anchors.new_empty((rb,), dtype=acc), anchors.new_empty((rb,), dtype=acc))


def _anchor_lse_bwd_impl(anchors: Tensor, keys: Tensor, ra: Tensor, ka: Tensor, rb: Tensor, kb: Tensor,
                   lse: Tensor, grad_terms: Tensor, temperature: float, normalize: bool, half_a: int,
                   half_b: int, off: int, self_mask: bool, pos: int, drop_positive: bool,
                   transform: int) -> Tuple[Tensor, Tensor]:
    masks = (half_a, half_b, off, self_mask, pos, drop_positive, transform)
    inv_t = 1.0 / temperature
    ra_, rb_ = (ra, rb) if normalize else (None, None)
    # only the anchors have loss terms here: the anchors' pass uses their row softmax, the keys'
    # pass (keys as rows, TRANSPOSED masks) the anchors' softmax read column-wise
    d_anchors = _lse_bwd(anchors, keys, ra_, rb_, ka if normalize else None, lse, grad_terms, None, None,
                         inv_t, masks)
    d_keys = _lse_bwd(keys, anchors, rb_, ra_, kb if normalize else None, None, None, lse, grad_terms,
                      inv_t, masks, transposed=True)
    return d_anchors, d_keys


anchor_lse_bwd = torch.library.custom_op("duality_kernels::anchor_lse_bwd", mutates_args=())(_anchor_lse_bwd_impl)


@anchor_lse_bwd.register_fake
def _(anchors, keys, ra, ka, rb, kb, lse, grad_terms, temperature, normalize, half_a, half_b, off,
      self_mask, pos, drop_positive, transform):
    return torch.empty_like(anchors), torch.empty_like(keys)


def _anchor_lse_setup(ctx, inputs, output):
    anchors, keys, *args = inputs
    _, lse, ra, ka, rb, kb = output
    ctx.save_for_backward(anchors, keys, ra, ka, rb, kb, lse)
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(lse, ra, ka, rb, kb)


def _anchor_lse_backward(ctx, g_terms, *unused):
    anchors, keys, ra, ka, rb, kb, lse = ctx.saved_tensors
    d_anchors, d_keys = pick(ctx, anchor_lse_bwd, _anchor_lse_bwd_impl)(anchors, keys, ra, ka, rb, kb, lse, _grad_vector(g_terms, lse), *ctx.args)
    return (d_anchors, d_keys) + (None,) * len(ctx.args)


anchor_lse_fwd.register_autograd(_anchor_lse_backward, setup_context=_anchor_lse_setup)
_SPEC_ANCHOR_LSE = Spec(anchor_lse_fwd, _anchor_lse_fwd_impl, _anchor_lse_setup, _anchor_lse_backward, 1)


# --------------------------------------------------------------------------------------------
# losses (inputs validated by functional.py; single process)


def _up(z: Tensor) -> Tensor:
    return z.to(acc_dtype(z.dtype))  # SPEC: fp16/bf16 inputs computed in fp32, as the reference


def _stacked_views(z1: Tensor, z2: Tensor, normalization: str) -> Tuple[Tensor, bool]:
    """(u, normalize_in_kernel): the 2N rows before the kernel's fused l2 scaling (SPEC §4, paper
    §5 Table 1). Centering and dim_std's column scaling are O(N·D) torch ops tracked by autograd."""
    if normalization == "l2":
        return torch.cat([z1, z2]), True
    xs = [_up(z) - _up(z).mean(dim=0) for z in (z1, z2)]
    if normalization == "center_l2":
        return torch.cat(xs), True
    n, d = z1.shape  # "dim_std": each column to L2 norm sqrt(N/D), no row normalization
    scale = math.sqrt(n / d)
    return torch.cat([x / torch.linalg.vector_norm(x, dim=0).clamp_min(L2_EPS) * scale for x in xs]), False


def _pair_terms(z1, z2, temperature, similarity, normalization, drop_positive, ctx):
    """Per-anchor NT-Xent (drop_positive=False) / DCL (True) terms of this process's 2N anchors."""
    transform = TRANSFORMS[similarity]
    if ctx is None or not ctx.active:
        u, normalize = _stacked_views(z1, z2, normalization)
        return apply(_SPEC_GRAM_LSE, u.contiguous(), temperature, normalize, z1.shape[0], True, drop_positive,
                            transform)[0]
    # SPEC §5: own anchors against the 2·W·N rows of all ranks (normalized with global statistics)
    n = z1.shape[0]
    keys, normalize = _stacked_views(ctx.gather(z1), ctx.gather(z2), normalization)
    m = keys.shape[0] // 2
    lo = ctx.rank * n
    anchors = torch.cat([keys[lo:lo + n], keys[m + lo:m + lo + n]])
    return apply(_SPEC_ANCHOR_LSE, anchors, keys.contiguous(), temperature, normalize, n, m, lo, True, _POS_PAIR,
                          drop_positive, transform)[0]


def ntxent_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str,
                 ctx=None) -> Tensor:
    """Per-anchor NT-Xent terms (SPEC §4); the caller reduces them."""
    return _pair_terms(z1, z2, temperature, similarity, normalization, False, ctx)


def dcl_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str, ctx=None) -> Tensor:
    """Per-anchor DCL terms (SPEC §4); the caller reduces them."""
    return _pair_terms(z1, z2, temperature, similarity, "l2", True, ctx)


def infonce_terms(z1: Tensor, z2: Tensor, temperature: float, ctx=None) -> Tensor:
    """InfoNCE's 2N per-row terms (rows of S, then of Sᵀ; SPEC §4); the caller reduces them."""
    if ctx is None or not ctx.active:
        return apply(_SPEC_CROSS_LSE, z1.contiguous(), z2.contiguous(), temperature)[0]
    # SPEC §5: this rank's rows of S (its z1 against all z2), then its rows of Sᵀ
    n = z1.shape[0]
    k1, k2 = ctx.gather(z1).contiguous(), ctx.gather(z2).contiguous()
    lo = ctx.rank * n
    rows = apply(_SPEC_ANCHOR_LSE, z1.contiguous(), k2, temperature, True, n, n, lo, False, _POS_DIAG, False, 0)[0]
    cols = apply(_SPEC_ANCHOR_LSE, z2.contiguous(), k1, temperature, True, n, n, lo, False, _POS_DIAG, False, 0)[0]
    return torch.cat([rows, cols])


def _variance_hinge(var: Tensor, gamma: float, eps: float) -> Tensor:
    return torch.relu(gamma - torch.sqrt(var + eps)).mean()


def _vicreg_terms(z1, z2, views, inv_weight, var_weight, cov_weight):
    inv = torch.nn.functional.mse_loss(_up(z1), _up(z2))
    var = (views[0][0] + views[1][0]) / 2
    cov = views[0][1] + views[1][1]
    return inv_weight * inv + var_weight * var + cov_weight * cov, {"invariance": inv, "variance": var,
                                                                      "covariance": cov}


def vicreg_exp(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """SPEC §3 VICReg-exp: c_exp = mean_k log Σ_{l≠k} exp(C_kl/τ), C = xᵀx/(N−1): the kernel runs
    over the D rows of xᵀ (a transposed view, no copy) with scale 1/(τ(N−1))."""
    n = z1.shape[0]
    views = []
    for z in (z1, z2):
        x = _up(z) - _up(z).mean(dim=0)
        v = _variance_hinge((x * x).sum(dim=0) / (n - 1), gamma, eps)
        c = apply(_SPEC_GRAM_LSE, x.t(), temperature * (n - 1), False, 0, True, False, 0)[0].mean()
        views.append((v, c))
    return _vicreg_terms(z1, z2, views, inv_weight, var_weight, cov_weight)


def vicreg_ctr(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """SPEC §3 VICReg-ctr: rows of y (column-, then row-centered) against each other, scale
    1/(τ(D−1)); the variance hinge over rows."""
    d = z1.shape[1]
    views = []
    for z in (z1, z2):
        x = _up(z) - _up(z).mean(dim=0)
        y = x - x.mean(dim=1, keepdim=True)
        v = _variance_hinge((y * y).sum(dim=1) / (d - 1), gamma, eps)
        c = apply(_SPEC_GRAM_LSE, y, temperature * (d - 1), False, 0, True, False, 0)[0].mean()
        views.append((v, c))
    return _vicreg_terms(z1, z2, views, inv_weight, var_weight, cov_weight)
