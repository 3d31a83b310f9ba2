"""Launch plans of the covariance family's Triton passes (docs/triton_gram.md): the kernels' modes,
the per-dtype plan, block sizes, row chunks, placeholder tensors and the cuBLAS products."""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from ...._numerics import L2_EPS  # noqa: F401 (re-exported)
from .._common import AMPERE, HOPPER, acc_dtype, interpreting

Tensor = torch.Tensor



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
# how a GEMM result P' is turned into the true product (IDENT operands, docs/triton_gram.md)
_RS_NONE, _RS_ROW, _RS_COL = 0, 1, 2          # undo the fp16 power-of-two scales by row / column
_CORR_NONE, _CORR_OUTER, _CORR_COL = 0, 1, 2  # − w_i·mean_k (N×N side) / − u_k (D×D side)


class _Plan(NamedTuple):
    """What a dtype's ops do (the fakes use it too, so it depends on the dtype only; docs/design.md §3)."""
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
    fin: Tuple[int, ...]    # vector block of the one-program finalize, per mode (_F_VICREG, ...)


def _blocks(dtype: torch.dtype, fam: str = HOPPER) -> _Blocks:
    """Block sizes of the memory-bound passes; ``fam``: the launch-table family of the tensors'
    device (_common.arch_family)."""
    if interpreting():
        # small tiles: several stripes, row blocks and chunks at the test sizes (17, 31, 33, 48)
        return _Blocks((8, 16), (8, 16), (8, 16), (8, 16), (64,) * 4)
    # GPU (unmeasured, untested on GPU): 4 warps; a [16, 64] tile is 8 elements (16 B of bf16) per
    # thread, 128-byte row segments; float64 tiles half as tall (register budget of the fp64 math)
    br = 8 if dtype == torch.float64 else 16
    if fam == AMPERE:
        # the finalize's float64 division is a called subroutine there; the registers saved around
        # the calls spilled 8-48 B at some blocks, varying with the mode (docs/triton_gram.md)
        return _Blocks((br, 64), (8, 64), (8, 128), (8, 128), (32, 64, 64, 256))
    if fam != HOPPER:  # _prep_kernel's (8, 128) spilled 8-16 B around float64 division calls on sm_100
        return _Blocks((br, 64), (8, 64), (8, 128), (8, 64), (128, 128, 256, 256))
    return _Blocks((br, 64), (8, 64), (8, 128), (8, 128), (256,) * 4)


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


def _rm(m: int):
    """Row-major strides of an M×M matrix, and its transpose's."""
    return (m, 1), (1, m)


def _rs_mode(pl: _Plan, sample: bool) -> int:
    if not pl.scale:
        return _RS_NONE
    return _RS_ROW if sample else _RS_COL
