"""NT-Xent, DCL and InfoNCE (docs/spec.md §4) on the log-sum-exp passes, and the gathered form
(docs/spec.md §5): the forward and backward implementations that the custom ops run.

NT-Xent / DCL on one process: the 2N rows [z1; z2] against themselves (positive a ± N). InfoNCE
(CLIP form): S = l2n(z1) l2n(z2)ᵀ / temperature, its rows then the rows of Sᵀ from the same tiles.
anchor_lse: this rank's anchors against the keys of all ranks.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .._common import acc_dtype, device_guard
from .backward import _backward, _Side
from .forward import _forward
from .plan import (_DIAG, _FIN_CENTER, _FIN_DIMSTD, _POS_PAIR, TRANSFORMS, Tensor, _grad_vector, _reduce,
                   _tile_scaled)
from .prep import _colstats, _finish, _Prep, _prep


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


def _ntxent_fwd_impl(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str,
                     reduction: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, lse, q, r, keep, mean, m2): the loss (reduced, or the 2N terms), then what the
    backward needs."""
    return _pair_fwd(z1, z2, temperature, similarity, normalization, reduction, False)


def _ntxent_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor,
                     mean: Tensor, m2: Tensor, g_loss: Tensor, temperature: float, similarity: str,
                     normalization: str, reduction: str) -> Tensor:
    """-> ∂L/∂[z1; z2] (2N, D)."""
    return _pair_bwd(z1, z2, op, lse, q, r, keep, mean, m2, g_loss, temperature, similarity, normalization,
                     reduction, False)


def _dcl_fwd_impl(z1: Tensor, z2: Tensor, temperature: float, similarity: str,
                  reduction: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, lse, q, r, keep)."""
    return _pair_fwd(z1, z2, temperature, similarity, "l2", reduction, True)[:6]


def _dcl_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, lse: Tensor, q: Tensor, r: Tensor, keep: Tensor,
                  g_loss: Tensor, temperature: float, similarity: str, reduction: str) -> Tensor:
    """-> ∂L/∂[z1; z2] (2N, D)."""
    return _pair_bwd(z1, z2, op, lse, q, r, keep, None, None, g_loss, temperature, similarity, "l2", reduction, True)


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
