"""Launch plans of the log-sum-exp kernels: tile tables per pass and dtype, which backward runs
(fused or striped), the S tiles' operand order, the memory-bound passes' blocks, and the small
dtype helpers and constants (masks, transforms, epilogue modes) every module of the family shares.

The tables follow docs/design.md convention 15; untested on GPU: chosen from the sm_90 compile of
every variant (registers / spills / shared memory / wgmma), not from timings.
"""

from __future__ import annotations

import math
import struct
from typing import Optional, Tuple

import torch

from ...._numerics import L2_EPS  # noqa: F401 (re-exported)
from ....reference import reduce_terms as _reduce  # noqa: F401 (docs/spec.md §4's reduction)
from .._common import (
    HOPPER,
    Tiles,
    acc_dtype,
    dot_block,
    interpreting,
    tl,
    triton,
    unavailable_reason,
)

# every module of the package imports this one before its @triton.jit definitions
if triton is None:  # pragma: no cover - import guard; functional.py checks availability first
    raise ImportError(unavailable_reason())

Tensor = torch.Tensor

TRANSFORMS = {"dot": 0, "abs": 1, "square": 2}
_NO_POS, _POS_PAIR, _POS_DIAG = 0, 1, 2
_DIAG = (0, 0, 0, False, _POS_DIAG, False, 0)  # InfoNCE on one process: positive on the diagonal

# prologue kinds (_lse_prep_kernel) and backward epilogues (_lse_finish_kernel)
_FIN_CENTER, _FIN_DIMSTD, _FIN_EXP, _FIN_CTR = 1, 2, 3, 4


def _kmax() -> int:
    """Largest K (padded to a power of two) the fused backward handles: it keeps a (BM, K) fp32
    accumulator per program, 64 registers per thread for BM = 64, K = 256 and 8 warps. Above it
    the stripe backward (coefficient tiles + cuBLAS) avoids recomputing each tile per K chunk.
    32 under the interpreter, so the test shapes take both paths."""
    return 32 if interpreting() else 256


def _fused_bwd(dtype: torch.dtype, ip: str, k: int) -> bool:
    """The fused backward (and the forward with the row block held whole) for tensor-core dots with
    K ≤ _kmax(). IEEE fp32 and fp64 take the stripe backward on the GPU: Triton's FMA dot runs at
    half cuBLAS's IEEE fp32 rate (SGEMM 51 TFLOP/s on the H200), so cuBLAS takes
    the C·B half. (The fused kernel in IEEE fp32 spilled 2.3 KB per thread at K = 256 with its
    earlier epilogue; with the staged l2 Jacobian it compiles at 255 registers without spills,
    triton 3.8, sm_90; which is faster is unmeasured.) The interpreter runs the fused
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
    there). numpy's BLAS, which the interpreter runs, is
    not (232 of 1024 entries of a 32×32 tile differed with the operands swapped, and results
    depend on the tile's shape and position), so under the interpreter each pair is
    computed with one call, the same in every kernel: square tiles of one size per problem, the
    block with the lower index (or the forward's anchors) as the left operand."""
    return orient if interpreting() else 0


def _tile(m: int) -> int:
    """The interpreter's S tile edge, the same for the forward and both backwards of a problem (see
    _orient); ``m``: the larger of the two row counts."""
    return 16 if m <= 16 else 32


def _fwd_tiles(dtype: torch.dtype, ip: str, k: int, m: int, fam: str = HOPPER,
               narrow: bool = False) -> Tuple[Tiles, bool]:
    """(tiles, one_k) of _lse_fwd_kernel. one_k: the padded K is one block (row block loaded once,
    each key tile once per step; the same K order as the fused backward's S). ``fam``: the launch
    table family (_common.arch_family); the Hopper table is the one the rest were derived from.
    ``narrow``: the modes without the self mask (MoCo) or with two scales, whose IEEE float32 tiles
    outside Hopper need narrower key tiles."""
    one_k = _fused_bwd(dtype, ip, k)
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, dot_block(k, _kmax()) if one_k else 32, 4, 1), one_k
    if fam != HOPPER:
        return _fwd_tiles_small(dtype, ip, k, one_k, narrow), one_k
    if dtype == torch.float64:
        return Tiles(32, 32, 16, 4, 1), False
    if ip == "ieee":  # FMA dot: operands in registers, K in small chunks (BK = 16 spilled 4 B)
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


def _fwd_tiles_small(dtype: torch.dtype, ip: str, k: int, one_k: bool, narrow: bool = False) -> Tiles:
    """_lse_fwd_kernel's tiles on sm_8x (mma.sync) and sm_100/120, within 99 KB of shared memory
    per block (sm_86/89/120; sm_80 and sm_100 could hold deeper pipelines, unmeasured): 64-row
    blocks whatever M (a 128-row block of K = 256 held whole took 129 KB on sm_89)."""
    if dtype == torch.float64:
        return Tiles(32, 32, 16, 4, 1)
    if ip == "ieee":  # narrow: 64-column key tiles spilled 40 B (MoCo, sm_80) and 24 B (two scales, sm_100)
        return Tiles(64, 32 if narrow and dtype == torch.float32 else 64, 32, 8, 1)
    kp = dot_block(k, 256)
    if dtype == torch.float32:  # TF32: 4-byte operands
        if one_k:
            return Tiles(64, 64 if kp <= 128 else 32, kp, 8, 2)
        return Tiles(64, 64, 32, 8, 3)  # 128 rows spilled 4 B at 128 registers (sm_120)
    if one_k:
        return Tiles(64, 64, kp, 8, 3)
    return Tiles(64, 64, 64, 8, 3)  # 128 rows spilled 16 B at 128 registers (sm_89)


def _bwd_tiles(dtype: torch.dtype, ip: str, k: int, m: int, fam: str = HOPPER) -> Tiles:
    """Tiles of the fused _lse_bwd_kernel (BK = the padded K ≤ 256): 8 warps, the (64, 256) fp32
    accumulator split over two warpgroups (64 registers per thread) on Hopper. Elsewhere (99 KB
    of shared memory per block) 32-column key tiles, and 32-row blocks in TF32."""
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, dot_block(k, _kmax()), 4, 1)
    if fam != HOPPER:  # bf16 (64, 64) spilled 4 B at 255 registers (sm_120); fp32 (64, 32) took 113 KB
        return Tiles(32 if dtype == torch.float32 else 64, 32, dot_block(k, 256), 4 if dtype == torch.float32 else 8, 2)
    if dtype == torch.float32:
        return Tiles(64, 32, dot_block(k, 256), 8, 2)
    return Tiles(64, 64, dot_block(k, 256), 8, 2)


def _coef_tiles(dtype: torch.dtype, ip: str, m: int, fam: str = HOPPER) -> Tiles:
    """Tiles of the stripe backward's _lse_coef_kernel (K swept in the forward's BK chunks, so that
    both accumulate each dot in the same order). The same tiles in every family: no spill and at
    most 74 KB of shared memory on every target."""
    if interpreting():
        t = _tile(m)
        return Tiles(t, t, 32, 4, 1)
    if dtype == torch.float64:
        return Tiles(32, 32, 16, 4, 1)
    if ip == "ieee":  # (1 stage spilled 4 B at 80 registers, sm_90 compile)
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


def _tile_scaled(dtype: torch.dtype) -> bool:
    """Where the l2 scales enter: on the fp32 tile for bf16/fp16 (their operands would otherwise be
    rounded once more to the input dtype before the tensor-core dot); on the operand for fp32 /
    fp64 (prologue writes x/‖x‖, as eager normalizes before its matmul; at temperature 0.01 this
    cut the gradient error from 2-7x to 1-3x eager's, interpreter)."""
    return dtype in _TILE_SCALE_DTYPES


def _op_buffer(rows: int, k: int, dtype: torch.dtype, device) -> Tensor:
    """(rows, k) operand rows with the row stride padded to 16 elements: 16-byte aligned rows
    whatever D is (unaligned rows made loads 3-5x slower on the H200)."""
    kp = -(-k // 16) * 16
    return torch.empty(rows, kp, dtype=dtype, device=device)[:, :k]


# The masks of one problem: (half_a, half_b, off, self_mask, pos, drop_positive, transform); see
# _partners for the first three.
Masks = Tuple[int, int, int, bool, int, bool, int]


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


