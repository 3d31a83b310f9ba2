"""The row pass (docs/triton_gram.md, step 1): row norms in float64 (spectral's clamp, l2,
duality's ‖z_i‖²) and the scaled rows in one launch; the kernel beside its launcher ``_rowpass``."""
from __future__ import annotations

from typing import Optional

import torch

from .._common import scalar as _scalar
from .._common import arch_family, tl, triton
from .helpers import _floor
from .plan import _ROW_CLAMP, _ROW_SQ, _WARPS, _blocks, _cdiv, _dummy

Tensor = torch.Tensor


@triton.jit
def _rowpass_kernel(z1_ptr, z2_ptr, x_ptr, info_ptr, pv_ptr, N, D, radius: tl.float64,
                    MODE: tl.constexpr, TWO: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Per block of BR rows (grid: row blocks): row norms in float64, then the scaled rows.

    _ROW_CLAMP (spectral, docs/spec.md §4): t = 1 where ‖z‖ < sqrt(mu), else sqrt(mu)/‖z‖; x̃ = round(z·t);
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


def _rowpass(z1: Tensor, z2: Optional[Tensor], mode: int, acc: torch.dtype, radius: float = 0.0):
    """-> (x (V, N, D) or None, info (rows, N) acc, pv float64: [p, p̃] (2, N) or ‖z_i‖² (N))."""
    n, d = z1.shape
    two = z2 is not None
    br, bd = _blocks(z1.dtype, arch_family(z1)).row
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
