"""Triton kernels of the log-sum-exp family (SPEC §3 VICReg-exp/-ctr, §4 NT-Xent, DCL, InfoNCE).

UNTESTED ON GPU: everything here has run only under the Triton interpreter (TRITON_INTERPRET=1,
triton 3.8) on CPU tensors in float32/float64 (tests/test_triton_lse.py). Every launched variant
at the bar shapes below (bf16, fp16, fp32 "highest" and "high", and fp64), and in bf16, fp16 and
fp32 at 16384×256 for every NT-Xent/DCL mode and at shapes one off the block multiples (16385×255,
16385×257, 2049×1025, ...), was compiled to sm_90 with triton 3.6.0 and 3.8.0 on a machine
without a GPU (benchmarks/kernel_report.py, with the launch-time specialization the JIT
applies): no register spills, shared memory ≤ 227 KB, and wgmma for every tensor-core dot
(2026-12-01). Speeds are estimates (table below);
``benchmarks/gpu_check.sh`` runs the ``cuda`` tests and the benchmarks on the H200.

One problem shape serves every loss: anchors (rows of A, M of them) against keys (rows of B, MB),
logits t(A_a·B_b)/τ with masks (self; the positive p(a), kept in the denominator or dropped for
DCL; transforms "abs"/"square" of the negatives, paper §5), per anchor a log-sum-exp and a term.
NT-Xent/DCL: A = B = the 2N rows [z1; z2] (positive a ± N); InfoNCE: A = z1, B = z2 (positive on
the diagonal; rows of S and, from the same tiles, rows of Sᵀ); VICReg-exp: per view the D rows of
xᵀ (the D×D covariance side, scale 1/(τ(N−1))); VICReg-ctr: per view the N rows of y (scale
1/(τ(D−1))); gather_distributed: this rank's anchors against all ranks' keys.

Passes (DESIGN "Gram-reduce" / "Gram-apply"; memory O(N·D), no N×N matrix for K ≤ 256):

- ``_lse_colstats_kernel`` (center_l2, dim_std, VICReg): per column, mean and Σ(z − mean)² in float64
  (two passes, a program per column block), and VICReg's Σ(z1 − z2)².
- ``_lse_prep_kernel``: the operand rows, once: z, z − mean, (z − mean)·c (dim_std), y = x − rowmean(x)
  (ctr), xᵀ (exp); divided by the row norm for fp32/fp64 (as eager normalizes before its matmul),
  raw for bf16/fp16 with the l2 scales on the fp32 tile; rounded to TF32 under "high"; rows 16-byte
  aligned whatever D is. Row norms r = 1/max(‖x‖, 1e-12).
- ``_lse_fwd_kernel``: flash-style online log-sum-exp of each anchor block over all key tiles;
  stores lse as the pair (m, λ) = (running max, log of the sum), the positive logit, q = 1 − P(pos)
  and the term (see _finish_lse for the cancellation-free forms). InfoNCE: S once, its columns as
  per-row-block partials merged by ``_lse_cols_merge_kernel`` (two-stage, no atomics).
- backward, K ≤ 256 (``_lse_bwd_kernel``, fused): a program owns an anchor block and all of K; per
  key tile S is recomputed and C_ab = ∂L/∂dot_ab + ∂L/∂dot_ba (the row softmax and, for the
  symmetric matrix or InfoNCE, the column side's) is applied, dA += C·B_J, B_J loaded once for
  both dots; the tiles with the positives last; the l2 Jacobian applied to the accumulator after
  the loop. No tile is computed twice, no gradient goes through a second buffer.
- backward, K > 256 (D up to 8192 and beyond, VICReg's K = N or D): a (BM, K) fp32 accumulator
  would not fit the registers, and splitting K recomputed every tile K/256 times (4x at D = 1024).
  Instead, per stripe of anchor rows (≤ 256 MB of coefficients), ``_lse_coef_kernel`` writes the
  C tiles in the operands' dtype, cuBLAS runs C·B (DESIGN convention 13: at K ≥ 1024 the product
  is a GEMM), and ``_lse_epi_kernel``
  adds the positive's term and the l2 Jacobian. Each C entry costs 4 B of traffic (bf16, written
  and read once) against 4K flops (its S entry and its share of C·B): ≥ 257 flop/B above K = 256,
  over the H200's 165, so the stripes stay compute-bound. IEEE fp32 and fp64 take this path at
  every K on the GPU (cuBLAS SGEMM for C·B rather than Triton's FMA dot, see _fused_bwd).
- ``_lse_finish_kernel``: the centering / dim_std Jacobians and VICReg's variance and invariance
  gradients, a program per column block (column sums and the update in one launch);
  ``_vicreg_scalars_kernel``: VICReg's four outputs in float64 from the per-row/column pieces.

Launches per forward+backward at the bar shapes, fp32 "high" (Triton launches + ATen ops that
launch a kernel, counted on meta tensors with the kernels replaced by counters and a
TorchDispatchMode as benchmarks/host_overhead.py counts them, without autograd's seed; 2026-12-01,
development machine): VICReg-exp 2048×1024 and VICReg-ctr 4096×1024 7 + 4 (the rewrite's
predecessor: 4 + 69 and 4 + 81; issue 18's H200 profile counted 96 and 106 launches); NT-Xent
16384×256 l2 3 + 2 (predecessor 2 + 9), center_l2 / dim_std 5 + 2; DCL 3 + 2; InfoNCE 32768×256
5 + 2; K > 256 adds one cuBLAS product per stripe of anchor rows (NT-Xent 2048×1024: 4 + 3).

Accuracy (DESIGN convention 5; the tests run temperatures 0.02, 0.07, 0.5 for every loss):
1 − P(positive) and the term come from the forward's (m, λ, p) without cancellation; each row's
softmax is exp(x − m)·exp(−λ); the positive's large coefficient enters the C·B sums last; dot_ab
and dot_ba have the same bits in every kernel (_orient); TF32 operands are rounded to nearest as
cuBLAS does (``_common.round_tf32``; Triton's tf32 dot truncates).

Not done, on purpose: computing only the upper-triangle tiles of the symmetric matrix. The
forward would then need each row's (max, sum) partials from every row block, (M/BM)·M·8 B:
134 MB at N = 16384 (BM = 64) against the 64 MB bar, 2 GB at N = 65536, for 0.5 of the 3 units
of work; the backward would need C·B partials per row block, (M/BM)·M·K·4 B = 17 GB at
N = 16384, or float atomics (DESIGN convention 7). Full tiles cost 3 units, 2.35 ms at N = 16384.

Work at the bar shapes (forward+backward; 1 unit = 2·M·MB·K flops; bytes = the HBM traffic of
the operands, gradients, coefficient stripes and partials) and the time at the H200's ceilings
(ENVIRONMENT.md: 701 TFLOP/s bf16, 356 TF32, 4.25 TB/s); arithmetic estimates, not measurements:

============================  ======  =======  ======  ============  ===========
loss, N × D, dtype            fwd TF  bwd TF   HBM MB  flop floor    byte floor
============================  ======  =======  ======  ============  ===========
NT-Xent/DCL 2048×256 bf16      0.009    0.017     8      0.037 ms     0.002 ms
NT-Xent/DCL 16384×256 bf16     0.550    1.100    67      2.35 ms      0.016 ms
NT-Xent/DCL 65536×256 bf16     8.80    17.6     268     37.6 ms       0.063 ms
InfoNCE 32768×256 TF32         0.550    2.20    470      7.72 ms      0.11 ms
VICReg-exp 2048×1024 bf16      0.009    0.017   101      0.037 ms     0.024 ms
VICReg-ctr 4096×1024 bf16      0.069    0.137   352      0.29 ms      0.083 ms
============================  ======  =======  ======  ============  ===========

All are compute-bound (InfoNCE: the backward's two passes recompute S, 4 units; the forward 1).
The bars (ISSUE 18) ask 5.0, 80, 0.3, 11, 1.5 and 2.0 ms: 47-70% of the ceilings for the large
shapes, launch overhead for the small ones (5-11 launches per step).

Custom ops (DESIGN conventions 1–3; forward and backward separate, fakes, registered autograd):
``ntxent_fwd/_bwd``, ``dcl_fwd/_bwd``, ``infonce_fwd/_bwd``, ``vicreg_exp_fwd/_bwd``,
``vicreg_ctr_fwd/_bwd`` (the losses, reduced inside the op), ``gram_lse`` / ``cross_lse`` (the
generic problems) and ``anchor_lse`` (gather_distributed, SPEC §5: the anchors' pass and the keys'
pass with the masks read column-wise). Drop-in ``torch.autograd.Function`` subclasses
(``NTXentFunction.apply`` & co.) call only these ops.
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple, Optional, Tuple

import torch

from .. import _checks
from .. import registry as _registry
from .._direct import Spec, apply, pick
from ._common import (Tiles, acc_dtype, device_guard, dot_block, input_precision, interpreting, round_tf32, scalar,
                      tf32_rounding, tl, triton, unavailable_reason)

if triton is None:  # pragma: no cover - import guard; functional.py checks availability first
    raise ImportError(unavailable_reason())

Tensor = torch.Tensor

__all__ = ["DCLFunction", "InfoNCEFunction", "NTXentFunction", "VICRegCtrFunction", "VICRegExpFunction", "dcl",
           "infonce", "ntxent", "vicreg_ctr", "vicreg_exp"]

L2_EPS = 1e-12  # torch.nn.functional.normalize's eps (SPEC "Notation")
_EPS = tl.constexpr(L2_EPS)  # (jit functions read module globals only as constexpr; see _eps)
TRANSFORMS = {"dot": 0, "abs": 1, "square": 2}
_NO_POS, _POS_PAIR, _POS_DIAG = 0, 1, 2
_NEG_BIG = tl.constexpr(-1e30)  # the online max's start: finite, so that a fully masked tile gives exp(-inf - m) = 0
_DIAG = (0, 0, 0, False, _POS_DIAG, False, 0)  # InfoNCE on one process: positive on the diagonal

# prologue kinds (_lse_prep_kernel) and backward epilogues (_lse_finish_kernel)
_FIN_CENTER, _FIN_DIMSTD, _FIN_EXP, _FIN_CTR = 1, 2, 3, 4


# --------------------------------------------------------------------------------------------
# JIT helpers


@triton.jit
def _eps(DT: tl.constexpr):
    """L2_EPS as torch holds it in a tensor of dtype DT (rounded to fp32 for fp32, exact for fp64).
    A Python float in a jit function is an fp32 constant, and 1e-12 promoted from fp32 to fp64 is
    4e-9 relatively off: float64 gradients of all-zero rows, r = 1/eps times the upstream one,
    came out 4e-9 off against the 1e-10 the property tests allow (InfoNCE, interpreter,
    2026-12-01)."""
    return tl.full((), _EPS, DT)


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
    """t(dot)/temperature of the negatives (SPEC §4: "abs" |s|, "square" s², paper §5)."""
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
    tests, interpreter, 2026-12-01)."""
    return t * inv_t + t * inv_lo


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
    (measured: 20-35x eager's gradient error at temperature 0.02 in fp32 under the interpreter,
    2026-12-01)."""
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
def _s_tile(a, a_ptr, b_ptr, rows64, row_ok, cols64, col_ok, K, s_am, s_bm, ra, rb,
            TRANS: tl.constexpr, ONE_K: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr,
            IP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """(S tile of anchors × keys, the key rows B_J when ONE_K). TRANS: computed as the transpose of
    dot(B_J, A_Iᵀ), the very call (operands, shapes, K order) with which the key rows' own
    program computes that pair, so dot_ab and dot_ba have the same bits everywhere: the backward
    then reads each row's softmax from the logits its forward used, as eager does. (A tensor-core
    or BLAS dot need not be symmetric in its operands: numpy's differed in 232 of 1024 entries
    of a 32×32 tile, 2026-12-01. A mismatch of one ulp of the logit on an entry whose softmax is
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
def _fwd_step(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo, lo_s, hi_s, lo_p, hi_p,
              m_i, l_i, p_i, cm_ptr, cl_ptr, part_off,
              SELF: tl.constexpr, POS: tl.constexpr, TRANSFORM: tl.constexpr, COLS: tl.constexpr,
              ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """One key tile of the online log-sum-exp (see _lse_fwd_kernel)."""
    # The logits before the branch: a tensor-core result first used inside an scf.if made triton
    # 3.6's software pipeliner fail (TritonGPUPipeline, sm_90 compile, 2026-12-01).
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
    m_new = tl.maximum(m_i, tl.maximum(tl.max(x, axis=1), pt))
    l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
    if COLS:
        cm = tl.maximum(tl.max(x, axis=0), _NEG_BIG)
        cl = tl.sum(tl.exp(x - cm[None, :]), axis=0)
        tl.store(cm_ptr + part_off + cols, cm, mask=col_ok)
        tl.store(cl_ptr + part_off + cols, cl, mask=col_ok)
    return m_new, l_i, p_i


@triton.jit
def _lse_fwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, lse_ptr, lam_ptr, q_ptr, term_ptr, p_ptr, cm_ptr, cl_ptr,
                    M, MB, K, HALF_A, HALF_B, OFF, s_lam, inv_t: tl.float64, inv_lo: tl.float64,
                    s_am, s_bm, s_abat, s_bbat,
                    SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr,
                    TRANSFORM: tl.constexpr, TILE_SCALE: tl.constexpr, ORIENT: tl.constexpr,
                    COLS: tl.constexpr, ONE_K: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """(m, λ, p), q and term (_finish_lse) of a block of anchors (rows of A) against every key
    (row of B), online (flash-attention): the (BM, BN) tile of A·Bᵀ on the tensor cores, its
    masked logits reduced into a running max and sum of the negatives' exponentials and the
    positive logit.

    ONE_K: K fits one block; the row block of A is loaded once, each B tile once per step.
    Otherwise K is swept in BK chunks per tile. ORIENT: the tiles' operand order (_orient,
    _s_tile_o; 0 on the GPU). COLS (InfoNCE's Sᵀ): also each
    tile's column max and sum of exponentials, (cm, cl) per (row block, column), merged by
    _lse_cols_merge_kernel (a two-stage reduction, no atomics): S is computed once for both
    directions. Grid axis 1 is the batch (VICReg's two views)."""
    pid = tl.program_id(0)
    bid = tl.program_id(1)
    inv_t = scalar(inv_t, ACC)
    inv_lo = scalar(inv_lo, ACC)
    a_ptr += bid.to(tl.int64) * s_abat
    b_ptr += bid.to(tl.int64) * s_bbat
    r0 = pid * BM
    rows = r0 + tl.arange(0, BM)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
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
    m_i = tl.full((BM,), _NEG_BIG, ACC)
    l_i = tl.zeros((BM,), ACC)
    p_i = tl.zeros((BM,), ACC)
    part = (bid * tl.num_programs(0) + pid).to(tl.int64) * MB
    for n0 in range(0, MB, BN):
        cols = n0 + tl.arange(0, BN)
        col_ok = cols < MB
        rb = ra
        if TILE_SCALE:
            rb = tl.load(rb_ptr + bid * MB + cols, mask=col_ok, other=0.0)
        s, _ = _s_tile_o(a, a_ptr, b_ptr, n0, r0, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                         ORIENT, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        m_i, l_i, p_i = _fwd_step(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo,
                                  lo_s, hi_s, lo_p, hi_p, m_i, l_i, p_i, cm_ptr, cl_ptr, part,
                                  SELF, POS, TRANSFORM, COLS, ACC, BM, BN)
    m_o, lam, q, term = _finish_lse(m_i, l_i, p_i, POS, DROP_POS)
    out = bid * M + rows
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
    m = tl.full((BN,), _NEG_BIG, ACC)
    for r in range(0, NRB):
        m = tl.maximum(m, tl.load(cm_ptr + tl.cast(r, tl.int64) * MB + cols, mask=ok, other=_NEG_BIG))
    l = tl.zeros((BN,), ACC)
    for r in range(0, NRB):
        off = tl.cast(r, tl.int64) * MB + cols
        cm = tl.load(cm_ptr + off, mask=ok, other=_NEG_BIG)
        l += tl.load(cl_ptr + off, mask=ok, other=0.0) * tl.exp(cm - m)
    p = tl.load(p_ptr + cols, mask=ok, other=0.0)
    m_o, lam, q, term = _finish_lse(m, l, p, POS, DROP_POS)
    tl.store(lse_ptr + cols, m_o, mask=ok)
    tl.store(lam_ptr + cols, lam, mask=ok)
    tl.store(lam_ptr + s_lam + cols, p, mask=ok)
    tl.store(q_ptr + cols, q, mask=ok)
    tl.store(term_ptr + cols, term, mask=ok)


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
def _positive_coef(rows, ok, bid, M, MB, HALF_A, HALF_B, OFF, lsea_ptr, s_la, qa_ptr, ga_ptr, s_ga, lseb_ptr, s_lb,
                   qb_ptr, gb_ptr, s_gb, rb_ptr, inv_t, POS: tl.constexpr, DROP_POS: tl.constexpr,
                   ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TILE_SCALE: tl.constexpr, ACC: tl.constexpr):
    """(key index p(a), ok, C_{a,p(a)}·dot_{a,p(a)}, C_{a,p(a)}·r_p) of anchor rows, with C_{a,p(a)}
    = ∂L/∂dot_{a,p(a)} (+ ∂L/∂dot_{p(a),a}) = −(g_a q_a + g_p q_p)/τ (q = 1 without the positive
    in the denominator); r_p = 1 unless the l2 scales are on the tile; dot_{a,p(a)} = τ·p_a, the
    forward's positive logit (stored after λ). The backward adds the positive's term after the
    C·B sums instead of inside them: there it is the one large negative entry among small
    positive ones, and its fp32 sums lost ~3 bits against eager, which adds the positive's
    gradient after its matmul (interpreter, temperature 0.5, 2026-12-01)."""
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
def _l2_jacobian_staged(out_ptr, v, s_o, a_ptr, ra_ptr, keep_ptr, vidx, roff, ok, K, TILE_SCALE: tl.constexpr,
                        ACC: tl.constexpr, BK: tl.constexpr, KC: tl.constexpr):
    """_l2_jacobian on rows g_a already stored at out (an ACC buffer) by this program, in chunks of
    KC columns: n_a·g_a, then r_a (g_a − keep_a n_a (n_a·g_a)) in place. The caller's barrier
    makes every thread's stores visible to the whole program first."""
    ra = tl.load(ra_ptr + vidx, mask=ok, other=0.0)
    keep = tl.load(keep_ptr + vidx, mask=ok, other=0.0)
    proj = tl.zeros(ra.shape, ACC)
    for k0 in tl.static_range(0, BK, KC):
        kk = k0 + tl.arange(0, KC)
        mk = ok[:, None] & (kk[None, :] < K)
        g = tl.load(out_ptr + v[:, None] * s_o + kk[None, :], mask=mk, other=0.0)
        n_a = tl.load(a_ptr + roff[:, None] + kk[None, :], mask=mk, other=0.0).to(ACC)
        if TILE_SCALE:
            n_a = n_a * ra[:, None]
        proj += tl.sum(n_a * g, axis=1)
    proj = keep * proj
    for k0 in tl.static_range(0, BK, KC):
        kk = k0 + tl.arange(0, KC)
        mk = ok[:, None] & (kk[None, :] < K)
        g = tl.load(out_ptr + v[:, None] * s_o + kk[None, :], mask=mk, other=0.0)
        n_a = tl.load(a_ptr + roff[:, None] + kk[None, :], mask=mk, other=0.0).to(ACC)
        if TILE_SCALE:
            n_a = n_a * ra[:, None]
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
              gla, ma, gpa, acc,
              SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr,
              TILE_SCALE: tl.constexpr, ROW_SIDE: tl.constexpr, COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr, ORIENT: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
              RNA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One key tile of the fused backward (see _lse_bwd_kernel)."""
    cols = n0 + tl.arange(0, BN)
    col_ok = cols < MB
    rb = ra
    if TILE_SCALE:
        rb = tl.load(rb_ptr + bid * MB + cols, mask=col_ok, other=0.0)
    s, b = _s_tile_o(a, a_ptr, b_ptr, n0, r0, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                     ORIENT, True, TILE_SCALE, ACC, IP, BM, BN, BK)
    if COL_SIDE:
        mb, glb, gpb = _side_vectors(lseb_ptr, s_lb, qb_ptr, gb_ptr, bid * MB + cols, col_ok, s_gb, POS, DROP_POS, ACC)
    else:
        mb = tl.zeros((BN,), ACC)
        glb = mb
        gpb = mb
    c = _tile_coefs(s, n0, r0, rows, cols, row_ok, col_ok, M, MB, HALF_A, HALF_B, OFF, inv_t, inv_lo, lo_s, hi_s, lo_p,
                        hi_p, gla, ma, gpa, glb, mb, gpb, SELF, POS, TRANSFORM, ROW_SIDE, COL_SIDE, TRANSPOSED,
                        False, True, ACC, BM, BN)
    c = c * inv_t
    if TILE_SCALE:
        c = c * rb[None, :]
    acc = tl.dot(round_tf32(c, RNA).to(b.dtype), b, acc, input_precision=IP, out_dtype=ACC)
    return acc


@triton.jit
def _lse_bwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, keep_ptr, lsea_ptr, qa_ptr, ga_ptr, lseb_ptr, qb_ptr, gb_ptr,
                    out_ptr,
                    M, MB, K, HALF_A, HALF_B, OFF, inv_t: tl.float64, inv_lo: tl.float64,
                    s_am, s_bm, s_abat, s_bbat, s_la, s_lb, s_ga, s_gb, s_o,
                    SELF: tl.constexpr, POS: tl.constexpr, DROP_POS: tl.constexpr, TRANSFORM: tl.constexpr,
                    TILE_SCALE: tl.constexpr, L2JAC: tl.constexpr, ROW_SIDE: tl.constexpr,
                    COL_SIDE: tl.constexpr, TRANSPOSED: tl.constexpr, ORIENT: tl.constexpr,
                    LATE_POS: tl.constexpr, STAGED: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
                    RNA: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """∂L/∂(rows of A), K ≤ BK: one program owns a row block and the whole (padded) K, so every
    tile is computed once (no recomputation per column chunk). Per key tile: S (in the forward's
    operand order, ORIENT as in _lse_fwd_kernel; 2: every tile as (B_J·A_Iᵀ)ᵀ, for passes whose
    rows were the forward's keys), the coefficients C_ab = ∂L/∂dot_ab (+ ∂L/∂dot_ba for the
    symmetric matrix, see the module docstring) and dA += C·B_J, B_J loaded once for both dots.
    LATE_POS: the tiles with the positives last. The l2 Jacobian's term (L2JAC) is added after
    the loop, then the scale r_a. Row a of batch b goes to row b·M + a of ``out``."""
    pid = tl.program_id(0)
    bid = tl.program_id(1)
    inv_t = scalar(inv_t, ACC)
    inv_lo = scalar(inv_lo, ACC)
    a_ptr += bid.to(tl.int64) * s_abat
    b_ptr += bid.to(tl.int64) * s_bbat
    r0 = pid * BM
    rows = r0 + tl.arange(0, BM)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ks = tl.arange(0, BK)
    a = tl.load(a_ptr + rows64[:, None] * s_am + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
    if TILE_SCALE:
        ra = tl.load(ra_ptr + bid * M + rows, mask=row_ok, other=0.0)
    else:
        ra = rows
    if ROW_SIDE:
        ma, gla, gpa = _side_vectors(lsea_ptr, s_la, qa_ptr, ga_ptr, bid * M + rows, row_ok, s_ga, POS, DROP_POS, ACC)
    else:
        ma = tl.zeros((BM,), ACC)
        gla = ma
        gpa = ma
    lo_s, hi_s, lo_p, hi_p = _key_range(rows, row_ok, HALF_A, HALF_B, OFF, POS)
    acc = tl.zeros((BM, BK), ACC)
    # The tiles holding the rows' positives come last (the sweep starts after them and wraps
    # around): that entry, −g·q/τ, is the one large coefficient among small positive ones, and
    # summed early into the C·B accumulator it made the gradient's error 2-3x eager's, which adds
    # the positive's gradient after its matmul (interpreter, temperature 0.5, 2026-12-01). A
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
                        s_am, s_bm, gla, ma, gpa, acc, SELF, POS, DROP_POS, TRANSFORM,
                        TILE_SCALE, ROW_SIDE, COL_SIDE, TRANSPOSED, ORIENT, ACC, IP, RNA, BM, BN, BK)
    # The l2 Jacobian r_a (g_a − keep_a n_a (n_a·g_a)) with n_a·g_a from the accumulator g_a itself,
    # as autograd applies F.normalize's backward to the same g: then the two terms cancel where
    # they should. (n_a·g_a as Σ_b C_ab s_ab summed in the tile loop instead was rounded apart
    # from g_a: one-column inputs, whose exact gradient is 0, came out 10-130x eager's error,
    # tests/test_properties.py's found examples, interpreter, 2026-12-01.) After the loop the
    # tiles are dead, so n_a in the accumulator's layout fits for bf16/fp16 (0 spills at BK = 256,
    # sm_90, triton 3.6 and 3.8). STAGED (an fp32/fp64 ``out``): g_a goes to ``out`` first and the
    # Jacobian works on it in column chunks, the accumulator dead: with n_a and the accumulator
    # both live, TF32 at unaligned shapes (16385×255) spilled 192 B at 255 registers with triton
    # 3.6 (sm_90 compile, 2026-12-01). The same g_a either way.
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
    [R0, R0 + RN) are written to a stripe buffer in the operands' dtype for cuBLAS (C·B, DESIGN
    convention 13)."""
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
    if ORIENT == 2:
        s, _ = _s_tile(rows, a_ptr, b_ptr, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                       True, False, TILE_SCALE, ACC, IP, BM, BN, BK)
    elif ORIENT == 1:
        if n0 < r0:
            s, _ = _s_tile(rows, a_ptr, b_ptr, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                           True, False, TILE_SCALE, ACC, IP, BM, BN, BK)
        else:
            s, _ = _s_tile(rows, a_ptr, b_ptr, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                           False, False, TILE_SCALE, ACC, IP, BM, BN, BK)
    else:
        s, _ = _s_tile(rows, a_ptr, b_ptr, rows64, row_ok, cols.to(tl.int64), col_ok, K, s_am, s_bm, ra, rb,
                       False, False, TILE_SCALE, ACC, IP, BM, BN, BK)
    if ROW_SIDE:
        ma, gla, gpa = _side_vectors(lsea_ptr, s_la, qa_ptr, ga_ptr, bid * M + rows, row_ok, s_ga, POS, DROP_POS, ACC)
    else:
        ma = tl.zeros((BM,), ACC)
        gla = ma
        gpa = ma
    if COL_SIDE:
        mb, glb, gpb = _side_vectors(lseb_ptr, s_lb, qb_ptr, gb_ptr, bid * MB + cols, col_ok, s_gb, POS, DROP_POS, ACC)
    else:
        mb = tl.zeros((BN,), ACC)
        glb = mb
        gpb = mb
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
    acc = tl.load(acc_ptr + bid.to(tl.int64) * s_accbat + lr64[:, None] * s_acc + ks[None, :], mask=mask, other=0.0).to(ACC)
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
# kernels: the memory-bound passes around them (column statistics, operand prologue, backward
# epilogue, VICReg's scalars)


@triton.jit
def _lse_colstats_kernel(z1_ptr, z2_ptr, mean_ptr, m2_ptr, inv_ptr, N, D, s_1n, s_1d, s_2n, s_2d,
                     VIEWS: tl.constexpr, INV: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Per column of each view: the mean (stored in the accumulation dtype) and Σ_i (z − mean)²
    (float64), two passes over the column block (exact centering); INV: Σ_i (z1 − z2)² (float64,
    VICReg's invariance term). A program owns its columns (fixed order, no atomics)."""
    pid = tl.program_id(0)
    ds = pid * BD + tl.arange(0, BD)
    d_ok = ds < D
    ds64 = ds.to(tl.int64)
    for v in tl.static_range(VIEWS):
        if v == 0:
            z_ptr = z1_ptr
            s_n = s_1n
            s_d = s_1d
        else:
            z_ptr = z2_ptr
            s_n = s_2n
            s_d = s_2d
        s1 = tl.zeros((BD,), tl.float64)
        for i0 in range(0, N, BR):
            rs = i0 + tl.arange(0, BR)
            mk = (rs[:, None] < N) & d_ok[None, :]
            z = tl.load(z_ptr + rs.to(tl.int64)[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0)
            s1 += tl.sum(z.to(tl.float64), axis=0)
        mean = s1 / N
        m2 = tl.zeros((BD,), tl.float64)
        for i0 in range(0, N, BR):
            rs = i0 + tl.arange(0, BR)
            mk = (rs[:, None] < N) & d_ok[None, :]
            z = tl.load(z_ptr + rs.to(tl.int64)[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0)
            x = tl.where(mk, z.to(tl.float64) - mean[None, :], 0.0)
            m2 += tl.sum(x * x, axis=0)
        tl.store(mean_ptr + v * D + ds, mean.to(mean_ptr.dtype.element_ty), mask=d_ok)
        tl.store(m2_ptr + v * D + ds, m2, mask=d_ok)
    if INV:
        si = tl.zeros((BD,), tl.float64)
        for i0 in range(0, N, BR):
            rs = i0 + tl.arange(0, BR)
            rs64 = rs.to(tl.int64)
            mk = (rs[:, None] < N) & d_ok[None, :]
            z1 = tl.load(z1_ptr + rs64[:, None] * s_1n + ds64[None, :] * s_1d, mask=mk, other=0.0)
            z2 = tl.load(z2_ptr + rs64[:, None] * s_2n + ds64[None, :] * s_2d, mask=mk, other=0.0)
            t = z1.to(tl.float64) - z2.to(tl.float64)
            si += tl.sum(t * t, axis=0)
        tl.store(inv_ptr + ds, si, mask=d_ok)


@triton.jit
def _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, ds, D, s_1n, s_1d, s_2n, s_2d, cs_num,
            CENTER: tl.constexpr, COLSCALE: tl.constexpr, ACC: tl.constexpr):
    """x = (z − mean_v)·c_v of rows (view 0 where ``first``, else view 1; row i) over columns ds,
    in ACC; c_v,k = sqrt(N/D)/max(‖x_:k‖, eps) for dim_std (COLSCALE), from the float64
    Σ (z − mean)². Pointers: one base per row (a [rows, cols] tensor of 64-bit pointers per
    view would take two registers per element)."""
    d_ok = ds < D
    mk = r_ok[:, None] & d_ok[None, :]
    base = tl.where(first, z1_ptr + i64 * s_1n, z2_ptr + i64 * s_2n)
    s_d = tl.where(first, s_1d, s_2d)
    x = tl.load(base[:, None] + ds.to(tl.int64)[None, :] * s_d[:, None], mask=mk, other=0.0).to(ACC)
    if CENTER:
        mu0 = tl.load(mean_ptr + ds, mask=d_ok, other=0.0).to(ACC)
        mu1 = tl.load(mean_ptr + D + ds, mask=d_ok, other=0.0).to(ACC)
        x = tl.where(mk, x - tl.where(first[:, None], mu0[None, :], mu1[None, :]), 0.0)
    if COLSCALE:
        eps = _eps(ACC).to(tl.float64)
        c0 = (cs_num / tl.maximum(tl.sqrt(tl.load(m2_ptr + ds, mask=d_ok, other=1.0)), eps)).to(ACC)
        c1 = (cs_num / tl.maximum(tl.sqrt(tl.load(m2_ptr + D + ds, mask=d_ok, other=1.0)), eps)).to(ACC)
        x = x * tl.where(first[:, None], c0[None, :], c1[None, :])
    return x


@triton.jit
def _lse_prep_kernel(z1_ptr, z2_ptr, mean_ptr, m2_ptr, op_ptr, r_ptr, keep_ptr, rmean_ptr, rstd_ptr,
                 N, D, s_1n, s_1d, s_2n, s_2d, s_op, s_opv, cs_num: tl.float64, var_eps: tl.float64,
                 VIEWS: tl.constexpr, CENTER: tl.constexpr, COLSCALE: tl.constexpr,
                 ROWCENTER: tl.constexpr, NORM: tl.constexpr, NORM_OP: tl.constexpr,
                 TRANS: tl.constexpr, RNA: tl.constexpr, ACC: tl.constexpr,
                 BR: tl.constexpr, BD: tl.constexpr):
    """The kernels' operand rows from the views, one pass (two where a row statistic must come
    first): op = x, or x/‖x‖ (NORM_OP: fp32/fp64, the l2 scale applied to the operand as eager
    applies it), y = x − rowmean(x) (ROWCENTER, VICReg-ctr, with the row std), or xᵀ (TRANS,
    VICReg-exp: one row per column of x); rounded to TF32 for TF32 dots (RNA), to the operand
    dtype otherwise. NORM: r = 1/max(‖x‖, 1e-12) and keep = [‖x‖ > 1e-12] per row. Rows of the
    two views are stacked (row v·N + i)."""
    pid = tl.program_id(0)
    rr = pid * BR + tl.arange(0, BR)
    r_ok = rr < VIEWS * N
    v = rr // N
    i = rr - v * N
    i64 = i.to(tl.int64)
    first = v == 0
    dd = tl.arange(0, BD)
    if TRANS:
        out_rows = v.to(tl.int64) * s_opv + i64  # op[v, k, i] = x[i, k]
    else:
        out_rows = rr.to(tl.int64) * s_op
    if NORM_OP or ROWCENTER:
        acc1 = tl.zeros((BR,), ACC)
        for d0 in range(0, D, BD):
            x = _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, d0 + dd, D, s_1n, s_1d, s_2n, s_2d,
                        cs_num, CENTER, COLSCALE, ACC)
            if ROWCENTER:
                acc1 += tl.sum(x, axis=1)
            else:
                acc1 += tl.sum(x * x, axis=1)
        if ROWCENTER:
            mu = acc1 / D
            den = tl.full((BR,), 1.0, ACC)
        else:
            norm = tl.sqrt(acc1)
            mu = tl.zeros((BR,), ACC)
            den = tl.maximum(norm, _eps(ACC))
    else:
        mu = tl.zeros((BR,), ACC)
        den = tl.full((BR,), 1.0, ACC)
    acc2 = tl.zeros((BR,), ACC)
    for d0 in range(0, D, BD):
        ds = d0 + dd
        x = _load_x(z1_ptr, z2_ptr, mean_ptr, m2_ptr, first, i64, r_ok, ds, D, s_1n, s_1d, s_2n, s_2d,
                    cs_num, CENTER, COLSCALE, ACC)
        mk = r_ok[:, None] & (ds[None, :] < D)
        if ROWCENTER:
            x = tl.where(mk, x - mu[:, None], 0.0)
        if NORM or ROWCENTER:
            acc2 += tl.sum(x * x, axis=1)
        # a division, as F.normalize: x·(1/‖x‖) is off by an ulp where x/‖x‖ is exact (±1 for one
        # column), and the l2 Jacobian's g − n(n·g) then leaves 2^-23·|g|·r instead of cancelling
        # (NT-Xent center_l2 with one column: 47x eager's gradient error, interpreter, 2026-12-01)
        y = round_tf32(x / den[:, None], RNA).to(op_ptr.dtype.element_ty)
        if TRANS:
            tl.store(op_ptr + out_rows[:, None] + ds.to(tl.int64)[None, :] * s_op, y, mask=mk)
        else:
            tl.store(op_ptr + out_rows[:, None] + ds[None, :], y, mask=mk)
    if NORM:
        if NORM_OP:
            nrm = norm
        else:
            nrm = tl.sqrt(acc2)
        tl.store(r_ptr + rr, 1.0 / tl.maximum(nrm, _eps(ACC)), mask=r_ok)
        tl.store(keep_ptr + rr, (nrm > _eps(ACC)).to(ACC), mask=r_ok)
    if ROWCENTER:
        tl.store(rmean_ptr + rr, mu, mask=r_ok)
        tl.store(rstd_ptr + rr, tl.sqrt(acc2 / (D - 1) + scalar(var_eps, ACC)), mask=r_ok)


@triton.jit
def _lse_finish_kernel(src_ptr, z1_ptr, z2_ptr, mean_ptr, m2_ptr, rmean_ptr, rstd_ptr, dz1_ptr, dz2_ptr,
                   gl_ptr, gi_ptr, gv_ptr, N, D, s_srci, s_srcd, s_srcv, s_1n, s_1d, s_2n, s_2d, s_d1, s_d2,
                   inv_w: tl.float64, var_w: tl.float64, gamma: tl.float64, var_eps: tl.float64,
                   cs_num: tl.float64,
                   MODE: tl.constexpr, ACC: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """The backward after the log-sum-exp kernels, per column block of both views (a program owns
    its columns: the column reductions need no second launch and no atomics):

    - center_l2 (MODE 1): dz = dx − mean_i dx (the centering's Jacobian);
    - dim_std (2): dx = c_k (dn − keep_k x̂ (x̂·dn)_k / (N/D)) (column l2 normalization to norm
      sqrt(N/D)), then centering;
    - VICReg-exp (3): dz = dx_cov + the variance hinge's −a_var/2·[std_k < γ] x_ik/(D(N−1)std_k)
      ± a_inv·2(z1 − z2)/(ND). Centering's Jacobian vanishes: Σ_i x_ik = 0 makes the column sums
      of x·W and of the hinge term zero;
    - VICReg-ctr (4): dx = dy_cov + −a_var/2·[std_i < γ] y_ik/(N(D−1)std_i) (the row centering's
      Jacobian vanishes for the same reason on rows), then the column centering, plus the
      invariance term.

    a_var = g_loss·var_weight + g_var, a_inv = g_loss·inv_weight + g_inv, read from device memory
    (no host synchronization)."""
    pid = tl.program_id(0)
    ds = pid * BD + tl.arange(0, BD)
    d_ok = ds < D
    ds64 = ds.to(tl.int64)
    gamma = scalar(gamma, ACC)
    s2 = scalar(cs_num * cs_num, ACC)  # N/D, the squared norm of dim_std's columns
    if MODE >= 3:
        gl = tl.load(gl_ptr).to(ACC)
        a_var = gl * scalar(var_w, ACC) + tl.load(gv_ptr).to(ACC)
        a_inv = gl * scalar(inv_w, ACC) + tl.load(gi_ptr).to(ACC)
    for v in tl.static_range(2):
        if v == 0:
            z_ptr = z1_ptr
            s_n = s_1n
            s_d = s_1d
        else:
            z_ptr = z2_ptr
            s_n = s_2n
            s_d = s_2d
        mu = tl.load(mean_ptr + v * D + ds, mask=d_ok, other=0.0).to(ACC)
        if MODE == 2 or MODE == 3:
            m2 = tl.load(m2_ptr + v * D + ds, mask=d_ok, other=1.0)
        if MODE == 2:
            cn = tl.sqrt(m2)
            c = (cs_num / tl.maximum(cn, _eps(ACC).to(tl.float64))).to(ACC)
            kc = (cn > _eps(ACC).to(tl.float64)).to(ACC)
        if MODE == 3:
            std = tl.sqrt(m2 / (N - 1) + var_eps).to(ACC)
            colc = tl.where(std < gamma, -0.5 * a_var / (D * (N - 1) * std), 0.0)
        cs_a = tl.zeros((BD,), ACC)
        cs_b = tl.zeros((BD,), ACC)
        cs_c = tl.zeros((BD,), ACC)
        if MODE != 3:  # pass 1: the column sums
            for i0 in range(0, N, BR):
                rs = i0 + tl.arange(0, BR)
                r_ok = rs < N
                rs64 = rs.to(tl.int64)
                mk = r_ok[:, None] & d_ok[None, :]
                g = tl.load(src_ptr + v * s_srcv + rs64[:, None] * s_srci + ds64[None, :] * s_srcd, mask=mk, other=0.0).to(ACC)
                if MODE == 2:
                    z = tl.load(z_ptr + rs64[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0).to(ACC)
                    xh = tl.where(mk, (z - mu[None, :]) * c[None, :], 0.0)
                    cs_b += tl.sum(xh * g, axis=0)
                    cs_c += tl.sum(xh, axis=0)
                if MODE == 4:
                    z = tl.load(z_ptr + rs64[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0).to(ACC)
                    rm = tl.load(rmean_ptr + v * N + rs, mask=r_ok, other=0.0)
                    sd = tl.load(rstd_ptr + v * N + rs, mask=r_ok, other=1.0)
                    rowc = tl.where(sd < gamma, -0.5 * a_var / (N * (D - 1) * sd), 0.0)
                    y = tl.where(mk, z - mu[None, :] - rm[:, None], 0.0)
                    g = g + rowc[:, None] * y
                cs_a += tl.sum(g, axis=0)
        if MODE == 2:
            mean_dx = c * (cs_a - kc * cs_c * cs_b / s2) / N
        else:
            mean_dx = cs_a / N
        for i0 in range(0, N, BR):  # pass 2: the gradient
            rs = i0 + tl.arange(0, BR)
            r_ok = rs < N
            rs64 = rs.to(tl.int64)
            mk = r_ok[:, None] & d_ok[None, :]
            g = tl.load(src_ptr + v * s_srcv + rs64[:, None] * s_srci + ds64[None, :] * s_srcd, mask=mk, other=0.0).to(ACC)
            if MODE >= 2:
                z = tl.load(z_ptr + rs64[:, None] * s_n + ds64[None, :] * s_d, mask=mk, other=0.0).to(ACC)
            if MODE == 2:
                xh = (z - mu[None, :]) * c[None, :]
                g = c[None, :] * (g - (kc * cs_b / s2)[None, :] * xh)
            if MODE == 3:
                g = g + colc[None, :] * (z - mu[None, :])
            if MODE == 4:
                rm = tl.load(rmean_ptr + v * N + rs, mask=r_ok, other=0.0)
                sd = tl.load(rstd_ptr + v * N + rs, mask=r_ok, other=1.0)
                rowc = tl.where(sd < gamma, -0.5 * a_var / (N * (D - 1) * sd), 0.0)
                g = g + rowc[:, None] * (z - mu[None, :] - rm[:, None])
            if MODE != 3:
                g = g - mean_dx[None, :]
            if MODE >= 3:  # invariance: mean((z1 − z2)²)
                z1 = tl.load(z1_ptr + rs64[:, None] * s_1n + ds64[None, :] * s_1d, mask=mk, other=0.0).to(ACC)
                z2 = tl.load(z2_ptr + rs64[:, None] * s_2n + ds64[None, :] * s_2d, mask=mk, other=0.0).to(ACC)
                t = (2.0 * a_inv / (N * D)) * (z1 - z2)
                if v == 0:
                    g = g + t
                else:
                    g = g - t
            if v == 0:
                tl.store(dz1_ptr + rs64[:, None] * s_d1 + ds64[None, :], g.to(dz1_ptr.dtype.element_ty), mask=mk)
            else:
                tl.store(dz2_ptr + rs64[:, None] * s_d2 + ds64[None, :], g.to(dz2_ptr.dtype.element_ty), mask=mk)


@triton.jit
def _relu(x):
    """max(x, 0) that keeps a NaN, as torch.relu (tl.maximum drops it)."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def _vicreg_scalars_kernel(m2_ptr, sq_ptr, rstd_ptr, lse_ptr, loss_ptr, inv_ptr, var_ptr, cov_ptr, N, D, M,
                           inv_w: tl.float64, var_w: tl.float64, cov_w: tl.float64, gamma: tl.float64,
                           var_eps: tl.float64, CTR: tl.constexpr, B: tl.constexpr):
    """(loss, invariance, variance, covariance) of VICReg-exp / -ctr (SPEC §3) from the column
    statistics, the rows' std (ctr) and the 2·M log-sum-exp terms: one program, float64 sums in
    a fixed order, rounded once."""
    offs = tl.arange(0, B)
    inv = tl.zeros((B,), tl.float64)
    for d0 in range(0, D, B):
        inv += tl.load(sq_ptr + d0 + offs, mask=d0 + offs < D, other=0.0)
    hinge = tl.zeros((B,), tl.float64)
    if CTR:
        for j0 in range(0, 2 * N, B):
            sd = tl.load(rstd_ptr + j0 + offs, mask=j0 + offs < 2 * N, other=gamma).to(tl.float64)
            hinge += _relu(gamma - sd)
        var = tl.sum(hinge, axis=0) / (2 * N)
    else:
        for j0 in range(0, 2 * D, B):
            m2 = tl.load(m2_ptr + j0 + offs, mask=j0 + offs < 2 * D, other=0.0)
            sd = tl.sqrt(m2 / (N - 1) + var_eps)
            hinge += tl.where(j0 + offs < 2 * D, _relu(gamma - sd), 0.0)
        var = tl.sum(hinge, axis=0) / (2 * D)
    cov = tl.zeros((B,), tl.float64)
    for j0 in range(0, 2 * M, B):
        cov += tl.load(lse_ptr + j0 + offs, mask=j0 + offs < 2 * M, other=0.0).to(tl.float64)
    inv_s = tl.sum(inv, axis=0) / (N * D)
    cov_s = tl.sum(cov, axis=0) / M
    loss = inv_w * inv_s + var_w * var + cov_w * cov_s
    ty = loss_ptr.dtype.element_ty
    tl.store(loss_ptr, loss.to(ty))
    tl.store(inv_ptr, inv_s.to(ty))
    tl.store(var_ptr, var.to(ty))
    tl.store(cov_ptr, cov_s.to(ty))


# --------------------------------------------------------------------------------------------
# launch configurations (DESIGN convention 15; untested on GPU: chosen from the sm_90 compile of
# every variant, registers / spills / shared memory / wgmma, not from timings)


def _kmax() -> int:
    """Largest K (padded to a power of two) the fused backward handles: it keeps a (BM, K) fp32
    accumulator per program, 64 registers per thread for BM = 64, K = 256 and 8 warps. Above it
    the stripe backward (coefficient tiles + cuBLAS) avoids recomputing each tile per K chunk.
    32 under the interpreter, so the test shapes take both paths."""
    return 32 if interpreting() else 256


# The stripe backward's coefficient buffer: at most this many bytes per stripe of anchor rows.
_STRIPE_BYTES = 256 * 2**20


def _fused_bwd(dtype: torch.dtype, ip: str, k: int) -> bool:
    """The fused backward (and the forward with the row block held whole) for tensor-core dots with
    K ≤ _kmax(). IEEE fp32 and fp64 take the stripe backward on the GPU: Triton's FMA dot runs at
    half cuBLAS's IEEE fp32 rate (ENVIRONMENT.md: SGEMM 51 TFLOP/s on the H200), so cuBLAS takes
    the C·B half. (The fused kernel in IEEE fp32 spilled 2.3 KB per thread at K = 256 with its
    earlier epilogue; with the staged l2 Jacobian it compiles at 255 registers without spills,
    triton 3.8, sm_90, 2026-12-01; which is faster is unmeasured.) The interpreter runs the fused
    kernel for every dtype (its only way to test it)."""
    if k > _kmax():
        return False
    return interpreting() or (ip != "ieee" and dtype != torch.float64)


def _orient(orient: int) -> int:
    """The operand order of the S tiles (_s_tile's TRANS, ORIENT in the kernels) where it matters.

    The backward reads each row's softmax, from the column side too, with logits that must carry
    the bits its forward used: dot_ab and dot_ba. On the GPU every tile is computed as A_I·B_Jᵀ,
    on the assumption that a tensor-core dot sums the same exact products a_k·b_k in the same k
    order for every output entry whatever the operands' roles or the tile's shape and position,
    and that the FMA dot accumulates fma(a_k, b_k, ·) in k order, so that dot_ab == dot_ba
    bitwise: test_triton_lse.py::test_gpu_dot_is_symmetric checks it on the GPU (not yet run
    there, 2026-12-01). numpy's BLAS, which the interpreter runs, is
    not (232 of 1024 entries of a 32×32 tile differed with the operands swapped, and results
    depend on the tile's shape and position, 2026-12-01), so under the interpreter each pair is
    computed with one call, the same in every kernel: square tiles of one size per problem, the
    block with the lower index (or the forward's anchors) as the left operand."""
    return orient if interpreting() else 0


def _tile(m: int) -> int:
    """The interpreter's S tile edge, the same for the forward and both backwards of a problem (see
    _orient); ``m``: the larger of the two row counts."""
    return 16 if m <= 16 else 32


def _fwd_tiles(dtype: torch.dtype, ip: str, k: int, m: int) -> Tuple[Tiles, bool]:
    """(tiles, one_k) of _lse_fwd_kernel. one_k: the padded K is one block (row block loaded once,
    each key tile once per step; the same K order as the fused backward's S)."""
    one_k = _fused_bwd(dtype, ip, k)
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, dot_block(k, _kmax()) if one_k else 32, 4, 1), one_k
    if dtype == torch.float64:
        return Tiles(32, 32, 16, 4, 1), False
    if ip == "ieee":  # FMA dot: operands in registers, K in small chunks (BK = 16 spilled 4 B, 2026-12-01)
        return Tiles(64, 64, 32, 8, 1), False
    small = m <= 8192  # fewer rows than 2 waves of 128-row programs: more, smaller programs
    if dtype == torch.float32:  # TF32: fp32 operands, twice the bf16 bytes per tile (≤ 227 KB of smem)
        if one_k:
            kp = dot_block(k, 256)
            return Tiles(64 if small else 128, 64 if kp <= 128 else 32, kp, 8, 2), True
        return Tiles(128, 64, 32, 8, 3), False
    if one_k:
        return Tiles(64 if small else 128, 64, dot_block(k, 256), 8, 3), True
    return Tiles(128, 64, 64, 8, 3), False


def _bwd_tiles(dtype: torch.dtype, ip: str, k: int, m: int) -> Tiles:
    """Tiles of the fused _lse_bwd_kernel (BK = the padded K ≤ 256): 8 warps, the (64, 256) fp32
    accumulator split over two warpgroups (64 registers per thread)."""
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, dot_block(k, _kmax()), 4, 1)
    if dtype == torch.float32:
        return Tiles(64, 32, dot_block(k, 256), 8, 2)
    return Tiles(64, 64, dot_block(k, 256), 8, 2)


def _coef_tiles(dtype: torch.dtype, ip: str, m: int) -> Tiles:
    """Tiles of the stripe backward's _lse_coef_kernel (K swept in the forward's BK chunks, so that
    both accumulate each dot in the same order)."""
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, 32, 4, 1)
    if dtype == torch.float64:
        return Tiles(32, 32, 16, 4, 1)
    if ip == "ieee":  # (1 stage spilled 4 B at 80 registers, sm_90 compile, 2026-12-01)
        return Tiles(64, 64, 32, 8, 2)
    if dtype == torch.float32:
        return Tiles(128, 64, 32, 8, 3)
    return Tiles(128, 64, 64, 8, 3)


def _mem_tiles(d: int) -> Tuple[int, int, int]:
    """(BR, BD, warps) of the memory-bound passes: 16 elements per thread (wider tiles made
    2-D tensors of 64-bit pointers spill)."""
    if interpreting():
        return 32, 32, 4
    return 32, min(64, triton.next_power_of_2(max(d, 16))), 4


def _scale_pair(inv_t: float, dtype: torch.dtype) -> Tuple[float, float]:
    """(1/τ, the rest): the kernels round the first to the accumulation dtype and add the second,
    itself exact in fp32, as the scale's low part (_scaled). fp64: the scale is exact already."""
    if acc_dtype(dtype) == torch.float64:
        return inv_t, 0.0
    # rounded to fp32 in plain Python: a CPU tensor's float() is an aten op (an .item()) per call
    hi = _fp32(inv_t)
    return inv_t, _fp32(inv_t - hi)


def _fp32(x: float) -> float:
    """x rounded to the nearest float32 (overflow to ±inf as the cast does)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _acc_tl(dtype: torch.dtype):
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


_TILE_SCALE_DTYPES = (torch.bfloat16, torch.float16)


def _staged_jacobian(out_dtype: torch.dtype) -> bool:
    """Whether the fused backward applies the l2 Jacobian through ``out`` (STAGED in
    _lse_bwd_kernel): when ``out`` holds the accumulator's precision (fp32/fp64); bf16/fp16
    gradients keep it in registers (storing g_a in them first would round it)."""
    return out_dtype in (torch.float32, torch.float64)


def _tile_scaled(dtype: torch.dtype) -> bool:
    """Where the l2 scales enter: on the fp32 tile for bf16/fp16 (their operands would otherwise be
    rounded once more to the input dtype before the tensor-core dot); on the operand for fp32 /
    fp64 (prologue writes x/‖x‖, as eager normalizes before its matmul; at temperature 0.01 this
    cut the gradient error from 2-7x to 1-3x eager's, interpreter, 2026-11-30)."""
    return dtype in _TILE_SCALE_DTYPES


def _op_buffer(rows: int, k: int, dtype: torch.dtype, device) -> Tensor:
    """(rows, k) operand rows with the row stride padded to 16 elements: 16-byte aligned rows
    whatever D is (unaligned rows made loads 3-5x slower on the H200, ENVIRONMENT.md)."""
    kp = -(-k // 16) * 16
    return torch.empty(rows, kp, dtype=dtype, device=device)[:, :k]


# --------------------------------------------------------------------------------------------
# launchers


def _colstats(z1: Tensor, z2: Tensor, views: int, inv: bool):
    """(mean (views, D) acc dtype, m2 (views, D) float64, inv (D,) float64 or empty)."""
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    mean = torch.empty(views, d, dtype=acc, device=z1.device)
    m2 = torch.empty(views, d, dtype=torch.float64, device=z1.device)
    si = torch.empty(d if inv else 0, dtype=torch.float64, device=z1.device)
    br, _, warps = _mem_tiles(d)
    bd = 32  # column-owner programs: 32 columns, rows swept in BR chunks
    if z1.dtype == torch.float64 and not interpreting():
        br = 16  # (BR = 32 spilled 12 B with triton 3.6, none with 3.8; sm_90 compile, 2026-12-01)
    _lse_colstats_kernel[(triton.cdiv(d, bd),)](
        z1, z2, mean, m2, si if inv else m2, n, d, z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1),
        VIEWS=views, INV=inv, BR=br, BD=bd, num_warps=warps)
    return mean, m2, si


class _Prep(NamedTuple):
    op: Tensor     # operand rows (views·rows, K)
    r: Tensor      # 1/max(‖x‖, eps) per row (NORM), else empty
    keep: Tensor   # [‖x‖ > eps] per row (NORM), else empty
    rinfo: Tensor  # (2, views·N): row mean and row std (ROWCENTER), else empty


def _prep(z1: Tensor, z2: Tensor, views: int, mean: Optional[Tensor], m2: Optional[Tensor], *,
          center: bool = False, colscale: bool = False, rowcenter: bool = False, norm: bool = False,
          trans: bool = False, var_eps: float = 0.0) -> _Prep:
    n, d = z1.shape
    dt = z1.dtype
    acc = acc_dtype(dt)
    dev = z1.device
    norm_op = norm and not _tile_scaled(dt)
    if trans:
        op = _op_buffer(views * d, n, dt, dev)
        s_opv = d * op.stride(0)
    else:
        op = _op_buffer(views * n, d, dt, dev)
        s_opv = 0
    r = torch.empty(views * n if norm else 0, dtype=acc, device=dev)
    keep = torch.empty_like(r)
    rinfo = torch.empty(2, views * n if rowcenter else 0, dtype=acc, device=dev)
    br, bd, warps = _mem_tiles(d)
    if trans and not interpreting():
        br, bd = 32, 32  # a transposing store: square tiles
    dummy = r if norm else op
    _lse_prep_kernel[(triton.cdiv(views * n, br),)](
        z1, z2, mean if mean is not None else dummy, m2 if m2 is not None else dummy, op,
        r if norm else dummy, keep if norm else dummy, rinfo[0] if rowcenter else dummy,
        rinfo[1] if rowcenter else dummy,
        n, d, z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1), op.stride(0), s_opv,
        math.sqrt(n / d), float(var_eps),
        VIEWS=views, CENTER=center, COLSCALE=colscale, ROWCENTER=rowcenter, NORM=norm, NORM_OP=norm_op,
        TRANS=trans, RNA=tf32_rounding(dt), ACC=_acc_tl(dt), BR=br, BD=bd, num_warps=warps)
    return _Prep(op, r, keep, rinfo)


# The masks of one problem: (half_a, half_b, off, self_mask, pos, drop_positive, transform); see
# _partners for the first three.
Masks = Tuple[int, int, int, bool, int, bool, int]


def _forward(a: Tensor, b: Tensor, ra: Optional[Tensor], rb: Optional[Tensor], inv_t: float, masks: Masks,
             *, batch: int = 1, orient: int = 0, lse: Tensor, q: Tensor, term: Tensor,
             cols: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> None:
    """The log-sum-exp forward of anchors ``a`` (batch·M rows) against keys ``b`` into lse (2,
    batch·M: m and λ, lse = m + λ), q and term (batch·M,). ``ra``/``rb``: l2 scales applied to the tile (bf16/fp16), else None.
    ``orient``: 1 when a and b are the same rows (see _s_tile). ``cols``: (lse, q, term) of the
    columns too (InfoNCE's Sᵀ, batch 1)."""
    half_a, half_b, off, self_mask, pos, drop_positive, transform = masks
    m = a.shape[0] // batch
    mb = b.shape[0] // batch
    k = a.shape[1]
    ip = input_precision(a.dtype)
    t, one_k = _fwd_tiles(a.dtype, ip, k, max(m, mb))
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
        m * a.stride(0), mb * b.stride(0),
        SELF=self_mask, POS=pos, DROP_POS=drop_positive, TRANSFORM=transform, TILE_SCALE=ra is not None,
        ORIENT=_orient(orient), COLS=cols is not None, ONE_K=one_k, ACC=_acc_tl(a.dtype), IP=ip,
        BM=t.BM, BN=t.BN, BK=t.BK, num_warps=t.warps, num_stages=t.stages)
    if cols is not None:
        bn = 32 if interpreting() else 128
        lse_c, q_c, term_c = cols
        _lse_cols_merge_kernel[(triton.cdiv(mb, bn),)](cm, cl, p, lse_c[0], lse_c[1], q_c, term_c, mb, nrb,
                                                    lse_c.stride(0), POS=pos,
                                                    DROP_POS=drop_positive,
                                                    ACC=_acc_tl(a.dtype), BN=bn, num_warps=4)


class _Side(NamedTuple):
    """One side's loss terms: their lse (2, rows: m and λ), q (1 − P(positive)) and incoming
    gradient (a vector, possibly with stride 0), all indexed by batch·rows."""
    lse: Tensor
    q: Tensor
    g: Tensor


def _backward(a: Tensor, b: Tensor, ra: Optional[Tensor], rb: Optional[Tensor], keep: Optional[Tensor],
              row: Optional[_Side], col: Optional[_Side], inv_t: float, masks: Masks, *,
              tile_scale: bool, out: Tensor, batch: int = 1, orient: int = 0, transposed: bool = False) -> None:
    """∂L/∂(rows of ``a``) into ``out`` (row b·M + i for row i of batch b; unit column stride).
    ``row``/``col``: the loss terms of the rows of a / of b (None: they have none). ``keep``
    given: apply the l2 Jacobian (``ra`` the rows' scales). ``orient``: the forward's operand
    order (0: a was its anchors, 1: a and b the same rows, 2: a was its keys). ``transposed``:
    a holds the keys and b the anchors (masks read column-wise)."""
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
    if _fused_bwd(a.dtype, ip, k):
        t = _bwd_tiles(a.dtype, ip, k, max(m, mb))
        _lse_bwd_kernel[(triton.cdiv(m, t.BM), batch)](
            a, b, ra_, rb_, keep_, *sides, out,
            m, mb, k, half_a, half_b, off, *_scale_pair(inv_t, a.dtype),
            a.stride(0), b.stride(0), m * a.stride(0), mb * b.stride(0), s_la, s_lb, s_ga, s_gb, out.stride(0),
            L2JAC=l2jac, RNA=tf32_rounding(a.dtype), LATE_POS=pos != 0 and not transposed,
            STAGED=l2jac and _staged_jacobian(out.dtype), BM=t.BM, BN=t.BN, BK=t.BK, num_warps=t.warps,
            num_stages=t.stages, **flags)
        return
    # stripes of anchor rows: coefficient tiles (Triton) → C·B (cuBLAS) → epilogue (Triton)
    t = _coef_tiles(a.dtype, ip, max(m, mb))
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


def _mm_acc(x: Tensor, y: Tensor) -> Tensor:
    """x @ y (batched) with an fp32 result for bf16/fp16 operands (cuBLAS, fp32 accumulation;
    torch ≥ 2.9's bmm(out_dtype)); fp32 follows the matmul precision setting, which cuBLAS rounds
    to TF32 as DESIGN convention 16 asks."""
    acc = acc_dtype(x.dtype)
    if x.dtype == acc:
        return torch.bmm(x, y)
    if x.device.type == "cuda":
        return torch.bmm(x, y, out_dtype=acc)
    return torch.bmm(x.to(acc), y.to(acc))


def _grad_vector(g: Optional[Tensor], like: Tensor, reduction: str) -> Tensor:
    """The gradient of each term from the gradient of the reduced loss: a stride-0 vector for
    "mean" and "sum" (no (M,) buffer), the incoming vector for "none". Unused outputs come back
    as None."""
    m = like.shape[0]
    if g is None:
        return like.new_zeros(()).expand(m) if reduction != "none" else like.new_zeros(m)
    g = g.to(like.dtype)
    if reduction == "mean":
        return (g / m).reshape(1).expand(m)
    if reduction == "sum":
        return g.reshape(1).expand(m)
    return g.contiguous()


def _reduce(terms: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    return terms


# --------------------------------------------------------------------------------------------
# NT-Xent and DCL on one process: the 2N rows [z1; z2] against themselves (SPEC §4)

def _pair_prep(z1: Tensor, z2: Tensor, normalization: str) -> Tuple[_Prep, Tensor, Tensor]:
    """Operand rows of NT-Xent's normalizations (paper §5 Table 1): l2 → z (scaled per row);
    center_l2 → z − column mean of its view (scaled per row); dim_std → (z − mean)·c_k with
    c_k = sqrt(N/D)/‖x_:k‖ (no row scaling). Returns (prep, mean, m2)."""
    dev, acc = z1.device, acc_dtype(z1.dtype)
    if normalization == "l2":
        mean = torch.empty(0, dtype=acc, device=dev)
        m2 = torch.empty(0, dtype=torch.float64, device=dev)
        return _prep(z1, z2, 2, None, None, norm=True), mean, m2
    mean, m2, _ = _colstats(z1, z2, 2, False)
    dim_std = normalization == "dim_std"
    return _prep(z1, z2, 2, mean, m2, center=True, colscale=dim_std, norm=not dim_std), mean, m2


def _pair_fwd(z1, z2, temperature, similarity, normalization, reduction, drop_positive):
    n = z1.shape[0]
    acc = acc_dtype(z1.dtype)
    with device_guard(z1):
        pr, mean, m2 = _pair_prep(z1, z2, normalization)
        lse = torch.empty(3, 2 * n, dtype=acc, device=z1.device)
        q, term = (torch.empty(2 * n, dtype=acc, device=z1.device) for _ in range(2))
        tile = pr.r.numel() > 0 and _tile_scaled(z1.dtype)
        masks = (n, n, 0, True, _POS_PAIR, drop_positive, TRANSFORMS[similarity])
        _forward(pr.op, pr.op, pr.r if tile else None, pr.r if tile else None, 1.0 / temperature, masks,
                 orient=1, lse=lse, q=q, term=term)
    return _reduce(term, reduction), pr.op, lse, q, pr.r, pr.keep, mean, m2


def _pair_bwd(z1, z2, op, lse, q, r, keep, mean, m2, g_loss, temperature, similarity, normalization,
              reduction, drop_positive):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    g = _grad_vector(g_loss, q, reduction)
    masks = (n, n, 0, True, _POS_PAIR, drop_positive, TRANSFORMS[similarity])
    side = _Side(lse, q, g)
    norm = r.numel() > 0
    tile = norm and _tile_scaled(z1.dtype)
    dz = torch.empty(2 * n, d, dtype=z1.dtype, device=z1.device)  # rows of z1, then of z2
    with device_guard(z1):
        # l2: the Jacobian in the kernel's epilogue, straight into dz; otherwise ∂L/∂op in fp32
        # and the normalization's backward in _lse_finish_kernel
        out = dz if normalization == "l2" else torch.empty(2 * n, d, dtype=acc, device=z1.device)
        # the matrix is symmetric: one pass over the rows gives both sides' contributions
        _backward(op, op, r if norm else None, r if tile else None, keep if norm else None, side, side,
                  1.0 / temperature, masks, tile_scale=tile, out=out, orient=1)
        if normalization != "l2":
            _finish(out, z1, z2, mean, m2, None, dz[:n], dz[n:],
                    _FIN_CENTER if normalization == "center_l2" else _FIN_DIMSTD, n * out.stride(0), out.stride(0), 1)
    return dz


def _finish(src, z1, z2, mean, m2, rinfo, dz1, dz2, mode, s_srcv, s_srci, s_srcd, g=None, weights=(0.0, 0.0),
            gamma=0.0, var_eps=0.0):
    n, d = z1.shape
    br, _, warps = _mem_tiles(d)
    bd = 32
    dummy = mean
    gl, gi, gv = g if g is not None else (dummy, dummy, dummy)
    _lse_finish_kernel[(triton.cdiv(d, bd),)](
        src, z1, z2, mean, m2 if m2 is not None else dummy, rinfo[0] if rinfo is not None else dummy,
        rinfo[1] if rinfo is not None else dummy, dz1, dz2, gl, gi, gv, n, d, s_srci, s_srcd, s_srcv,
        z1.stride(0), z1.stride(1), z2.stride(0), z2.stride(1), dz1.stride(0), dz2.stride(0),
        float(weights[0]), float(weights[1]), float(gamma), float(var_eps), math.sqrt(n / d),
        MODE=mode, ACC=_acc_tl(z1.dtype), BR=br, BD=bd, num_warps=warps)


def _pair_outputs_fake(z1, reduction, normalization):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    m = 2 * n
    loss = z1.new_empty((m,) if reduction == "none" else (), dtype=acc)
    stats = 0 if normalization == "l2" else d
    norm = normalization != "dim_std"
    return (loss, _op_buffer(m, d, z1.dtype, z1.device), z1.new_empty((3, m), dtype=acc), z1.new_empty((m,), dtype=acc),
            z1.new_empty((m if norm else 0,), dtype=acc), z1.new_empty((m if norm else 0,), dtype=acc),
            z1.new_empty((2 if stats else 0, stats) if stats else (0,), dtype=acc),
            z1.new_empty((2 if stats else 0, stats) if stats else (0,), dtype=torch.float64))


def _ntxent_fwd_impl(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str,
                     reduction: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, lse, q, r, keep, mean, m2): the loss (reduced, or the 2N terms), then what the
    backward needs."""
    return _pair_fwd(z1, z2, temperature, similarity, normalization, reduction, False)


ntxent_fwd = torch.library.custom_op("duality_kernels::ntxent_fwd", mutates_args=())(
    _checks.checked(_checks.ntxent, "triton", _ntxent_fwd_impl))


@ntxent_fwd.register_fake
def _(z1, z2, temperature, similarity, normalization, reduction):
    return _pair_outputs_fake(z1, reduction, normalization)


def _ntxent_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor,
                     mean: Tensor, m2: Tensor, g_loss: Tensor, temperature: float, similarity: str,
                     normalization: str, reduction: str) -> Tensor:
    """-> ∂L/∂[z1; z2] (2N, D)."""
    return _pair_bwd(z1, z2, op, lse, q, r, keep, mean, m2, g_loss, temperature, similarity, normalization,
                     reduction, False)


ntxent_bwd = torch.library.custom_op("duality_kernels::ntxent_bwd", mutates_args=())(_ntxent_bwd_impl)


@ntxent_bwd.register_fake
def _(z1, z2, op, lse, q, r, keep, mean, m2, g_loss, temperature, similarity, normalization, reduction):
    return _grad_fake(z1)


def _ntxent_setup(ctx, inputs, output):
    z1, z2, temperature, similarity, normalization, reduction = inputs
    ctx.save_for_backward(z1, z2, *output[1:])
    ctx.args = (temperature, similarity, normalization, reduction)
    ctx.mark_non_differentiable(*output[1:])


def _ntxent_backward(ctx, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = pick(ctx, ntxent_bwd, _ntxent_bwd_impl)(z1, z2, *saved, _zeros_if_none(g_loss, saved[2], ctx.args[-1]),
                                                 *ctx.args)
    return dz[:z1.shape[0]], dz[z1.shape[0]:], None, None, None, None


def _grad_fake(z1: Tensor) -> Tensor:
    return torch.empty(2 * z1.shape[0], z1.shape[1], dtype=z1.dtype, device=z1.device)


def _zeros_if_none(g: Optional[Tensor], like: Tensor, reduction: str) -> Tensor:
    if g is not None:
        return g
    return like.new_zeros(like.shape if reduction == "none" else ())


ntxent_fwd.register_autograd(_ntxent_backward, setup_context=_ntxent_setup)
_SPEC_NTXENT = Spec(ntxent_fwd, _ntxent_fwd_impl, _ntxent_setup, _ntxent_backward, 1)


def _dcl_fwd_impl(z1: Tensor, z2: Tensor, temperature: float, similarity: str,
                  reduction: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, lse, q, r, keep)."""
    return _pair_fwd(z1, z2, temperature, similarity, "l2", reduction, True)[:6]


dcl_fwd = torch.library.custom_op("duality_kernels::dcl_fwd", mutates_args=())(
    _checks.checked(_checks.dcl, "triton", _dcl_fwd_impl))


@dcl_fwd.register_fake
def _(z1, z2, temperature, similarity, reduction):
    return _pair_outputs_fake(z1, reduction, "l2")[:6]


def _dcl_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor,
                  g_loss: Tensor, temperature: float, similarity: str, reduction: str) -> Tensor:
    """-> ∂L/∂[z1; z2] (2N, D)."""
    return _pair_bwd(z1, z2, op, lse, q, r, keep, None, None, g_loss, temperature, similarity, "l2", reduction, True)


dcl_bwd = torch.library.custom_op("duality_kernels::dcl_bwd", mutates_args=())(_dcl_bwd_impl)


@dcl_bwd.register_fake
def _(z1, z2, op, lse, q, r, keep, g_loss, temperature, similarity, reduction):
    return _grad_fake(z1)


def _dcl_setup(ctx, inputs, output):
    z1, z2, temperature, similarity, reduction = inputs
    ctx.save_for_backward(z1, z2, *output[1:])
    ctx.args = (temperature, similarity, reduction)
    ctx.mark_non_differentiable(*output[1:])


def _dcl_backward(ctx, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = pick(ctx, dcl_bwd, _dcl_bwd_impl)(z1, z2, *saved, _zeros_if_none(g_loss, saved[2], ctx.args[-1]), *ctx.args)
    return dz[:z1.shape[0]], dz[z1.shape[0]:], None, None, None


dcl_fwd.register_autograd(_dcl_backward, setup_context=_dcl_setup)
_SPEC_DCL = Spec(dcl_fwd, _dcl_fwd_impl, _dcl_setup, _dcl_backward, 1)


# --------------------------------------------------------------------------------------------
# InfoNCE (CLIP form): S = l2n(z1) l2n(z2)ᵀ / temperature, rows of S then rows of Sᵀ (SPEC §4)


def _infonce_fwd_impl(z1: Tensor, z2: Tensor, temperature: float,
                      reduction: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, lse, q, r, keep); lse/q/r/keep (2N,): rows of S, then rows of Sᵀ."""
    n = z1.shape[0]
    acc = acc_dtype(z1.dtype)
    with device_guard(z1):
        pr = _prep(z1, z2, 2, None, None, norm=True)
        lse = torch.empty(3, 2 * n, dtype=acc, device=z1.device)
        q, term = (torch.empty(2 * n, dtype=acc, device=z1.device) for _ in range(2))
        tile = _tile_scaled(z1.dtype)
        r1, r2 = (pr.r[:n], pr.r[n:]) if tile else (None, None)
        # S once: its rows online, its columns as per-row-block partials merged afterwards
        _forward(pr.op[:n], pr.op[n:], r1, r2, 1.0 / temperature, _DIAG, lse=lse[:, :n], q=q[:n], term=term[:n],
                 cols=(lse[:, n:], q[n:], term[n:]))
    return _reduce(term, reduction), pr.op, lse, q, pr.r, pr.keep


infonce_fwd = torch.library.custom_op("duality_kernels::infonce_fwd", mutates_args=())(
    _checks.checked(_checks.infonce, "triton", _infonce_fwd_impl))


@infonce_fwd.register_fake
def _(z1, z2, temperature, reduction):
    return _pair_outputs_fake(z1, reduction, "l2")[:6]


def _infonce_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor,
                      g_loss: Tensor, temperature: float, reduction: str) -> Tensor:
    """-> ∂L/∂[z1; z2] (2N, D)."""
    side = _Side(lse, q, _grad_vector(g_loss, q, reduction))
    tile = _tile_scaled(z1.dtype)
    dz = torch.empty(2 * z1.shape[0], z1.shape[1], dtype=z1.dtype, device=z1.device)
    with device_guard(z1):
        n = z1.shape[0]
        inv_t = 1.0 / temperature
        rows, cols = _Side(lse[:, :n], q[:n], side.g[:n]), _Side(lse[:, n:], q[n:], side.g[n:])
        # rows of z1 against z2 (S: the rows' own terms and those of Sᵀ), then rows of z2 against
        # z1 with S's tiles in the forward's operand order (orient 2)
        _backward(op[:n], op[n:], r[:n], r[n:] if tile else None, keep[:n], rows, cols, inv_t, _DIAG,
                  tile_scale=tile, out=dz[:n])
        _backward(op[n:], op[:n], r[n:], r[:n] if tile else None, keep[n:], cols, rows, inv_t, _DIAG,
                  tile_scale=tile, out=dz[n:], orient=2)
    return dz


infonce_bwd = torch.library.custom_op("duality_kernels::infonce_bwd", mutates_args=())(_infonce_bwd_impl)


@infonce_bwd.register_fake
def _(z1, z2, op, lse, q, r, keep, g_loss, temperature, reduction):
    return _grad_fake(z1)


def _infonce_setup(ctx, inputs, output):
    z1, z2, temperature, reduction = inputs
    ctx.save_for_backward(z1, z2, *output[1:])
    ctx.args = (temperature, reduction)
    ctx.mark_non_differentiable(*output[1:])


def _infonce_backward(ctx, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = pick(ctx, infonce_bwd, _infonce_bwd_impl)(z1, z2, *saved, _zeros_if_none(g_loss, saved[2], ctx.args[-1]),
                                                   *ctx.args)
    return dz[:z1.shape[0]], dz[z1.shape[0]:], None, None


infonce_fwd.register_autograd(_infonce_backward, setup_context=_infonce_setup)
_SPEC_INFONCE = Spec(infonce_fwd, _infonce_fwd_impl, _infonce_setup, _infonce_backward, 1)


# --------------------------------------------------------------------------------------------
# VICReg-exp and VICReg-ctr (SPEC §3): the two views as grid axis 1 of every pass


def _vicreg_lse_fwd(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature, ctr):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    dev = z1.device
    with device_guard(z1):
        mean, m2, si = _colstats(z1, z2, 2, True)
        if ctr:  # y = x − rowmean(x), rows of y against each other, scale 1/(τ(D−1))
            pr = _prep(z1, z2, 2, mean, m2, center=True, rowcenter=True, var_eps=eps)
            m, inv_t = n, 1.0 / (temperature * (d - 1))
        else:  # the D rows of xᵀ against each other, scale 1/(τ(N−1))
            pr = _prep(z1, z2, 2, mean, m2, center=True, trans=True)
            m, inv_t = d, 1.0 / (temperature * (n - 1))
        lse = torch.empty(3, 2 * m, dtype=acc, device=dev)
        q, term = (torch.empty(2 * m, dtype=acc, device=dev) for _ in range(2))
        _forward(pr.op, pr.op, None, None, inv_t, (0, 0, 0, True, _NO_POS, False, 0), batch=2, orient=1,
                 lse=lse, q=q, term=term)
        outs = [torch.empty((), dtype=acc, device=dev) for _ in range(4)]
        _vicreg_scalars_kernel[(1,)](
            m2, si, pr.rinfo[1] if ctr else term, term, *outs, n, d, m, float(inv_weight), float(var_weight),
            float(cov_weight), float(gamma), float(eps), CTR=ctr, B=32 if interpreting() else 1024, num_warps=4)
    info = pr.rinfo if ctr else m2
    return (*outs, pr.op, lse, mean, info)


def _vicreg_lse_bwd(z1, z2, op, lse, mean, info, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight, cov_weight,
                    gamma, eps, temperature, ctr):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    dev = z1.device
    m = n if ctr else d
    inv_t = 1.0 / (temperature * ((d if ctr else n) - 1))
    with device_guard(z1):
        # ∂L/∂lse_k = (g_loss·cov_weight + g_cov)/M for every row of both views
        gc = torch.add(g_cov.to(acc), g_loss.to(acc), alpha=float(cov_weight)).div_(m).reshape(1).expand(2 * m)
        side = _Side(lse, lse, gc)
        kdim = d if ctr else n
        dx = torch.empty(2 * m, kdim, dtype=acc, device=dev)  # ∂L/∂op: dy (ctr) or d(xᵀ) (exp)
        _backward(op, op, None, None, None, side, side, inv_t, (0, 0, 0, True, _NO_POS, False, 0), tile_scale=False,
                  out=dx, batch=2, orient=1)
        dz1 = torch.empty(z1.shape, dtype=z1.dtype, device=dev)
        dz2 = torch.empty_like(dz1)
        g = tuple(x.to(acc) for x in (g_loss, g_inv, g_var))
        if ctr:
            _finish(dx, z1, z2, mean, None, info, dz1, dz2, _FIN_CTR, n * dx.stride(0), dx.stride(0), 1, g,
                    (inv_weight, var_weight), gamma, eps)
        else:  # dx holds d(xᵀ): element (i, k) of view v at v·D·N + k·N + i
            _finish(dx, z1, z2, mean, info, None, dz1, dz2, _FIN_EXP, d * dx.stride(0), 1, dx.stride(0), g,
                    (inv_weight, var_weight), gamma, eps)
    return dz1, dz2


def _vicreg_lse_fake(z1, ctr):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    m = n if ctr else d
    scalars = [z1.new_empty((), dtype=acc) for _ in range(4)]
    op = _op_buffer(2 * n, d, z1.dtype, z1.device) if ctr else _op_buffer(2 * d, n, z1.dtype, z1.device)
    info = z1.new_empty((2, 2 * n), dtype=acc) if ctr else z1.new_empty((2, d), dtype=torch.float64)
    return (*scalars, op, z1.new_empty((3, 2 * m), dtype=acc), z1.new_empty((2, d), dtype=acc), info)


def _vicreg_exp_fwd_impl(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                         gamma: float, eps: float, temperature: float
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, invariance, variance, covariance, op, lse, mean, m2)."""
    return _vicreg_lse_fwd(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature, False)


def _vicreg_ctr_fwd_impl(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                         gamma: float, eps: float, temperature: float
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, invariance, variance, covariance, op, lse, mean, rinfo (row mean, row std))."""
    return _vicreg_lse_fwd(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature, True)


def _vicreg_exp_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, mean: Tensor, info: Tensor,
                         g_loss: Tensor, g_inv: Tensor, g_var: Tensor, g_cov: Tensor, inv_weight: float,
                         var_weight: float, cov_weight: float, gamma: float, eps: float,
                         temperature: float) -> Tuple[Tensor, Tensor]:
    return _vicreg_lse_bwd(z1, z2, op, lse, mean, info, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight,
                           cov_weight, gamma, eps, temperature, False)


def _vicreg_ctr_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, mean: Tensor, info: Tensor,
                         g_loss: Tensor, g_inv: Tensor, g_var: Tensor, g_cov: Tensor, inv_weight: float,
                         var_weight: float, cov_weight: float, gamma: float, eps: float,
                         temperature: float) -> Tuple[Tensor, Tensor]:
    return _vicreg_lse_bwd(z1, z2, op, lse, mean, info, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight,
                           cov_weight, gamma, eps, temperature, True)


def _register_vicreg(name: str, fwd_impl, bwd_impl, ctr: bool) -> Spec:
    # the custom op checks its arguments as the public function does (ops/_checks.py); the
    # public functions (already validated) call fwd_impl directly
    fwd = torch.library.custom_op(f"duality_kernels::{name}_fwd", mutates_args=())(
        _checks.checked(getattr(_checks, name), "triton", fwd_impl))
    fwd.register_fake(lambda z1, z2, *args: _vicreg_lse_fake(z1, ctr))
    bwd = torch.library.custom_op(f"duality_kernels::{name}_bwd", mutates_args=())(bwd_impl)
    bwd.register_fake(lambda z1, z2, *args: (torch.empty(z1.shape, dtype=z1.dtype, device=z1.device),
                                             torch.empty(z2.shape, dtype=z2.dtype, device=z2.device)))

    def setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # unused terms: None, not three zero-fill launches
        ctx.save_for_backward(inputs[0], inputs[1], *output[4:])
        ctx.args = tuple(inputs[2:])
        ctx.mark_non_differentiable(*output[4:])

    def backward(ctx, g_loss, g_inv, g_var, g_cov, *unused):
        z1, z2, *saved = ctx.saved_tensors
        gs = [g_loss, g_inv, g_var, g_cov]
        if any(g is None for g in gs):  # outputs nobody used: one fill for all of them
            zero = saved[1].new_zeros(())
            gs = [zero if g is None else g for g in gs]
        dz1, dz2 = pick(ctx, bwd, bwd_impl)(z1, z2, *saved, *gs, *ctx.args)
        return (dz1, dz2) + (None,) * len(ctx.args)

    fwd.register_autograd(backward, setup_context=setup)
    return Spec(fwd, fwd_impl, setup, backward, 4), fwd, bwd


_SPEC_VICREG_EXP, vicreg_exp_fwd, vicreg_exp_bwd = _register_vicreg("vicreg_exp", _vicreg_exp_fwd_impl,
                                                                     _vicreg_exp_bwd_impl, False)
_SPEC_VICREG_CTR, vicreg_ctr_fwd, vicreg_ctr_bwd = _register_vicreg("vicreg_ctr", _vicreg_ctr_fwd_impl,
                                                                     _vicreg_ctr_bwd_impl, True)


# --------------------------------------------------------------------------------------------
# gram_lse / cross_lse: the generic ops (rows of u against themselves; InfoNCE's two views), and
# anchor_lse: this rank's anchors against the keys of all ranks (SPEC §5, gather_distributed)


def _gram_lse_fwd_impl(u: Tensor, temperature: float, normalize: bool, half: int, self_mask: bool,
                       drop_positive: bool, transform: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (terms, op, lse, q, r, keep): rows of u against themselves. ``half > 0``: the positive of
    row a is a ± half (the two views stacked); ``half = 0``: no positive (terms = lse)."""
    m = u.shape[0]
    acc = acc_dtype(u.dtype)
    with device_guard(u):
        pr = _prep(u, u, 1, None, None, norm=normalize)
        lse = torch.empty(3, m, dtype=acc, device=u.device)
        q, term = (torch.empty(m, dtype=acc, device=u.device) for _ in range(2))
        tile = normalize and _tile_scaled(u.dtype)
        masks = (half, half, 0, self_mask, _POS_PAIR if half > 0 else _NO_POS, drop_positive, transform)
        _forward(pr.op, pr.op, pr.r if tile else None, pr.r if tile else None, 1.0 / temperature, masks,
                 orient=1, lse=lse, q=q, term=term)
    return term, pr.op, lse, q, pr.r, pr.keep


gram_lse_fwd = torch.library.custom_op("duality_kernels::gram_lse_fwd", mutates_args=())(_gram_lse_fwd_impl)


@gram_lse_fwd.register_fake
def _(u, temperature, normalize, half, self_mask, drop_positive, transform):
    acc = acc_dtype(u.dtype)
    m, k = u.shape
    r = m if normalize else 0
    return (u.new_empty((m,), dtype=acc), _op_buffer(m, k, u.dtype, u.device), u.new_empty((3, m), dtype=acc),
            u.new_empty((m,), dtype=acc), u.new_empty((r,), dtype=acc), u.new_empty((r,), dtype=acc))


def _gram_lse_bwd_impl(u: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor, grad_terms: Tensor,
                       temperature: float, normalize: bool, half: int, self_mask: bool, drop_positive: bool,
                       transform: int) -> Tensor:
    side = _Side(lse, q, grad_terms)
    tile = normalize and _tile_scaled(u.dtype)
    masks = (half, half, 0, self_mask, _POS_PAIR if half > 0 else _NO_POS, drop_positive, transform)
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    with device_guard(u):
        _backward(op, op, r if normalize else None, r if tile else None, keep if normalize else None, side, side,
                  1.0 / temperature, masks, tile_scale=tile, out=du, orient=1)
    return du


gram_lse_bwd = torch.library.custom_op("duality_kernels::gram_lse_bwd", mutates_args=())(_gram_lse_bwd_impl)


@gram_lse_bwd.register_fake
def _(u, op, lse, q, r, keep, grad_terms, temperature, normalize, half, self_mask, drop_positive, transform):
    return torch.empty(u.shape, dtype=u.dtype, device=u.device)


def _gram_lse_setup(ctx, inputs, output):
    u, *args = inputs
    ctx.save_for_backward(u, *output[1:])
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(*output[1:])


def _gram_lse_backward(ctx, g_terms, *unused):
    u, op, lse, q, r, keep = ctx.saved_tensors
    du = pick(ctx, gram_lse_bwd, _gram_lse_bwd_impl)(u, op, lse, q, r, keep, _grad_vector(g_terms, q, "none"),
                                                     *ctx.args)
    return (du,) + (None,) * len(ctx.args)


gram_lse_fwd.register_autograd(_gram_lse_backward, setup_context=_gram_lse_setup)
_SPEC_GRAM_LSE = Spec(gram_lse_fwd, _gram_lse_fwd_impl, _gram_lse_setup, _gram_lse_backward, 1)


def _cross_lse_fwd_impl(u1: Tensor, u2: Tensor, temperature: float
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (terms, op, lse, q, r, keep): InfoNCE's 2N terms (rows of S, then of Sᵀ)."""
    return _infonce_fwd_impl(u1, u2, temperature, "none")


cross_lse_fwd = torch.library.custom_op("duality_kernels::cross_lse_fwd", mutates_args=())(_cross_lse_fwd_impl)


@cross_lse_fwd.register_fake
def _(u1, u2, temperature):
    return _pair_outputs_fake(u1, "none", "l2")[:6]


def _cross_lse_bwd_impl(u1: Tensor, u2: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor,
                        grad_terms: Tensor, temperature: float) -> Tensor:
    """-> ∂L/∂[u1; u2] (2N, D)."""
    return _infonce_bwd_impl(u1, u2, op, lse, q, r, keep, grad_terms, temperature, "none")


cross_lse_bwd = torch.library.custom_op("duality_kernels::cross_lse_bwd", mutates_args=())(_cross_lse_bwd_impl)


@cross_lse_bwd.register_fake
def _(u1, u2, op, lse, q, r, keep, grad_terms, temperature):
    return _grad_fake(u1)


def _cross_lse_setup(ctx, inputs, output):
    u1, u2, temperature = inputs
    ctx.save_for_backward(u1, u2, *output[1:])
    ctx.temperature = temperature
    ctx.mark_non_differentiable(*output[1:])


def _cross_lse_backward(ctx, g_terms, *unused):
    u1, u2, op, lse, q, r, keep = ctx.saved_tensors
    du = pick(ctx, cross_lse_bwd, _cross_lse_bwd_impl)(u1, u2, op, lse, q, r, keep,
                                                       _grad_vector(g_terms, q, "none"), ctx.temperature)
    return du[:u1.shape[0]], du[u1.shape[0]:], None


cross_lse_fwd.register_autograd(_cross_lse_backward, setup_context=_cross_lse_setup)
_SPEC_CROSS_LSE = Spec(cross_lse_fwd, _cross_lse_fwd_impl, _cross_lse_setup, _cross_lse_backward, 1)


def _anchor_lse_fwd_impl(anchors: Tensor, keys: Tensor, temperature: float, normalize: bool, half_a: int,
                         half_b: int, off: int, self_mask: bool, pos: int, drop_positive: bool, transform: int
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (terms, op_a, op_b, lse, q, ra, ka, rb, kb)."""
    m = anchors.shape[0]
    acc = acc_dtype(anchors.dtype)
    with device_guard(anchors):
        pa = _prep(anchors, anchors, 1, None, None, norm=normalize)
        pb = _prep(keys, keys, 1, None, None, norm=normalize)
        lse = torch.empty(3, m, dtype=acc, device=anchors.device)
        q, term = (torch.empty(m, dtype=acc, device=anchors.device) for _ in range(2))
        tile = normalize and _tile_scaled(anchors.dtype)
        masks = (half_a, half_b, off, self_mask, pos, drop_positive, transform)
        _forward(pa.op, pb.op, pa.r if tile else None, pb.r if tile else None, 1.0 / temperature, masks,
                 lse=lse, q=q, term=term)
    return term, pa.op, pb.op, lse, q, pa.r, pa.keep, pb.r, pb.keep


anchor_lse_fwd = torch.library.custom_op("duality_kernels::anchor_lse_fwd", mutates_args=())(_anchor_lse_fwd_impl)


@anchor_lse_fwd.register_fake
def _(anchors, keys, temperature, normalize, half_a, half_b, off, self_mask, pos, drop_positive, transform):
    acc = acc_dtype(anchors.dtype)
    (m, k), mb = anchors.shape, keys.shape[0]
    ra = m if normalize else 0
    rb = mb if normalize else 0
    e = anchors.new_empty
    return (e((m,), dtype=acc), _op_buffer(m, k, anchors.dtype, anchors.device),
            _op_buffer(mb, k, anchors.dtype, anchors.device), e((3, m), dtype=acc), e((m,), dtype=acc),
            e((ra,), dtype=acc), e((ra,), dtype=acc), e((rb,), dtype=acc), e((rb,), dtype=acc))


def _anchor_lse_bwd_impl(anchors: Tensor, keys: Tensor, op_a: Tensor, op_b: Tensor, lse: Tensor, q: Tensor,
                         ra: Tensor, ka: Tensor, rb: Tensor, kb: Tensor, grad_terms: Tensor, temperature: float,
                         normalize: bool, half_a: int, half_b: int, off: int, self_mask: bool, pos: int,
                         drop_positive: bool, transform: int) -> Tuple[Tensor, Tensor]:
    masks = (half_a, half_b, off, self_mask, pos, drop_positive, transform)
    inv_t = 1.0 / temperature
    side = _Side(lse, q, grad_terms)
    tile = normalize and _tile_scaled(anchors.dtype)
    d_anchors = torch.empty(anchors.shape, dtype=anchors.dtype, device=anchors.device)
    d_keys = torch.empty(keys.shape, dtype=keys.dtype, device=keys.device)
    with device_guard(anchors):
        # only the anchors have loss terms here: the anchors' pass uses their row softmax, the
        # keys' pass (keys as rows, TRANSPOSED masks) the anchors' softmax read column-wise
        _backward(op_a, op_b, ra if normalize else None, rb if tile else None, ka if normalize else None, side, None,
                  inv_t, masks, tile_scale=tile, out=d_anchors)
        _backward(op_b, op_a, rb if normalize else None, ra if tile else None, kb if normalize else None, None, side,
                  inv_t, masks, tile_scale=tile, out=d_keys, transposed=True, orient=2)
    return d_anchors, d_keys


anchor_lse_bwd = torch.library.custom_op("duality_kernels::anchor_lse_bwd", mutates_args=())(_anchor_lse_bwd_impl)


@anchor_lse_bwd.register_fake
def _(anchors, keys, op_a, op_b, lse, q, ra, ka, rb, kb, grad_terms, temperature, normalize, half_a, half_b, off,
      self_mask, pos, drop_positive, transform):
    return (torch.empty(anchors.shape, dtype=anchors.dtype, device=anchors.device),
            torch.empty(keys.shape, dtype=keys.dtype, device=keys.device))


def _anchor_lse_setup(ctx, inputs, output):
    anchors, keys, *args = inputs
    ctx.save_for_backward(anchors, keys, *output[1:])
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(*output[1:])


def _anchor_lse_backward(ctx, g_terms, *unused):
    anchors, keys, *saved = ctx.saved_tensors
    q = saved[3]
    d_anchors, d_keys = pick(ctx, anchor_lse_bwd, _anchor_lse_bwd_impl)(
        anchors, keys, *saved, _grad_vector(g_terms, q, "none"), *ctx.args)
    return (d_anchors, d_keys) + (None,) * len(ctx.args)


anchor_lse_fwd.register_autograd(_anchor_lse_backward, setup_context=_anchor_lse_setup)
_SPEC_ANCHOR_LSE = Spec(anchor_lse_fwd, _anchor_lse_fwd_impl, _anchor_lse_setup, _anchor_lse_backward, 1)


# --------------------------------------------------------------------------------------------
# drop-in torch.autograd.Function subclasses (DESIGN convention 2): forward and backward call only
# the custom ops, so torch.compile(fullgraph=True) traces them. Their forward checks the arguments
# first (ops/_checks.py, as the Gram family's Functions), so that they raise the public functions'
# TypeError/ValueError before any kernel runs.


def _dropin(spec: Spec, op: str, name: str, doc: str) -> type:
    return _checks.dropin(spec, getattr(_checks, op), "triton", name, doc)


NTXentFunction = _dropin(_SPEC_NTXENT, "ntxent", "NTXentFunction", "NT-Xent (SPEC §4): ``apply(z1, z2, temperature, similarity, normalization, reduction)`` -> (loss,).")
DCLFunction = _dropin(_SPEC_DCL, "dcl", "DCLFunction", "DCL (SPEC §4): ``apply(z1, z2, temperature, similarity, reduction)`` -> (loss,).")
InfoNCEFunction = _dropin(_SPEC_INFONCE, "infonce", "InfoNCEFunction", "InfoNCE, CLIP form (SPEC §4): ``apply(z1, z2, temperature, reduction)`` -> (loss,).")
VICRegExpFunction = _dropin(_SPEC_VICREG_EXP, "vicreg_exp", "VICRegExpFunction", "VICReg-exp (SPEC §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)`` -> (loss, invariance, variance, covariance).")
VICRegCtrFunction = _dropin(_SPEC_VICREG_CTR, "vicreg_ctr", "VICRegCtrFunction", "VICReg-ctr (SPEC §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)`` -> (loss, invariance, variance, covariance).")


# --------------------------------------------------------------------------------------------
# losses (inputs validated by functional.py)


def _up(z: Tensor) -> Tensor:
    return z.to(acc_dtype(z.dtype))  # SPEC: fp16/bf16 inputs computed in fp32, as the reference


def _stacked_views(z1: Tensor, z2: Tensor, normalization: str) -> Tuple[Tensor, bool]:
    """(u, normalize_in_kernel) of the gathered path: the 2·W·N rows before the kernel's l2
    scaling (SPEC §4, paper §5 Table 1), with global column statistics. Centering and dim_std's
    column scaling are O(N·D) torch ops tracked by autograd (no speed bar on this path)."""
    if normalization == "l2":
        return torch.cat([z1, z2]), True
    xs = [_up(z) - _up(z).mean(dim=0) for z in (z1, z2)]
    if normalization == "center_l2":
        return torch.cat(xs), True
    n, d = z1.shape  # "dim_std": each column to L2 norm sqrt(N/D), no row normalization
    scale = math.sqrt(n / d)
    return torch.cat([x / torch.linalg.vector_norm(x, dim=0).clamp_min(L2_EPS) * scale for x in xs]), False


def _gathered_pair_terms(z1, z2, temperature, similarity, normalization, drop_positive, ctx):
    """SPEC §5: own anchors against the 2·W·N rows of all ranks (normalized with global statistics)."""
    n = z1.shape[0]
    keys, normalize = _stacked_views(ctx.gather(z1), ctx.gather(z2), normalization)
    m = keys.shape[0] // 2
    lo = ctx.rank * n
    anchors = torch.cat([keys[lo:lo + n], keys[m + lo:m + lo + n]])
    return apply(_SPEC_ANCHOR_LSE, anchors, keys.contiguous(), temperature, normalize, n, m, lo, True, _POS_PAIR,
                 drop_positive, TRANSFORMS[similarity])[0]


def ntxent(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str, reduction: str,
           ctx=None) -> Tensor:
    """NT-Xent (SPEC §4), reduced."""
    if ctx is None or not ctx.active:
        return apply(_SPEC_NTXENT, z1, z2, float(temperature), similarity, normalization, reduction)[0]
    return _reduce(_gathered_pair_terms(z1, z2, temperature, similarity, normalization, False, ctx), reduction)


def dcl(z1: Tensor, z2: Tensor, temperature: float, similarity: str, reduction: str, ctx=None) -> Tensor:
    """DCL (SPEC §4), reduced."""
    if ctx is None or not ctx.active:
        return apply(_SPEC_DCL, z1, z2, float(temperature), similarity, reduction)[0]
    return _reduce(_gathered_pair_terms(z1, z2, temperature, similarity, "l2", True, ctx), reduction)


def infonce(z1: Tensor, z2: Tensor, temperature: float, reduction: str, ctx=None) -> Tensor:
    """InfoNCE, CLIP form (SPEC §4), reduced."""
    if ctx is None or not ctx.active:
        return apply(_SPEC_INFONCE, z1, z2, float(temperature), reduction)[0]
    return _reduce(infonce_terms(z1, z2, temperature, ctx), reduction)


def ntxent_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str,
                 ctx=None) -> Tensor:
    """Per-anchor NT-Xent terms (SPEC §4)."""
    return ntxent(z1, z2, temperature, similarity, normalization, "none", ctx)


def dcl_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str, ctx=None) -> Tensor:
    """Per-anchor DCL terms (SPEC §4)."""
    return dcl(z1, z2, temperature, similarity, "none", ctx)


def infonce_terms(z1: Tensor, z2: Tensor, temperature: float, ctx=None) -> Tensor:
    """InfoNCE's 2N per-row terms (rows of S, then of Sᵀ; SPEC §4)."""
    if ctx is None or not ctx.active:
        return infonce(z1, z2, temperature, "none")
    # SPEC §5: this rank's rows of S (its z1 against all z2), then its rows of Sᵀ
    n = z1.shape[0]
    k1, k2 = ctx.gather(z1).contiguous(), ctx.gather(z2).contiguous()
    lo = ctx.rank * n
    rows = apply(_SPEC_ANCHOR_LSE, z1.contiguous(), k2, temperature, True, n, n, lo, False, _POS_DIAG, False, 0)[0]
    cols = apply(_SPEC_ANCHOR_LSE, z2.contiguous(), k1, temperature, True, n, n, lo, False, _POS_DIAG, False, 0)[0]
    return torch.cat([rows, cols])


def _terms_dict(loss, inv, var, cov, *saved):
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def vicreg_exp(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """SPEC §3 VICReg-exp: (loss, {"invariance", "variance", "covariance"})."""
    return _terms_dict(*apply(_SPEC_VICREG_EXP, z1, z2, float(inv_weight), float(var_weight), float(cov_weight),
                              float(gamma), float(eps), float(temperature)))


def vicreg_ctr(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """SPEC §3 VICReg-ctr: (loss, {"invariance", "variance", "covariance"})."""
    return _terms_dict(*apply(_SPEC_VICREG_CTR, z1, z2, float(inv_weight), float(var_weight), float(cov_weight),
                              float(gamma), float(eps), float(temperature)))


for _name in ("ntxent", "dcl", "infonce", "vicreg_ctr"):
    _registry.declare("triton", _name, gathers=True)
_registry.declare("triton", "vicreg_exp")
