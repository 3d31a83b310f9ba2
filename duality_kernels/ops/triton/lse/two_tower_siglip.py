"""SigLIP (docs/spec.md §7.5): −(1/N) Σ_ij log σ(y_ij x_ij), x = s·â_i·b̂_j + t, y = 2I − 1, as a
tiled sum of softplus(−y·x) per row (no log-sum-exp, no statistics to keep); the backward
recomputes each tile, its coefficients ∂L/∂x = −y·σ(−y·x)·g/N elementwise, and the scale's and
bias's gradients as per-row tile reductions of the image-rows pass. Image rows may be fewer than
text rows (the gathered form: this rank's rows of the global matrix, positive at offset + i).
Scale and bias are read on the device (docs/design.md convention 3). Untested on GPU.
"""

from __future__ import annotations

from typing import Tuple

import torch

from ... import registry
from ..._direct import apply
from .._common import acc_dtype, arch_family, device_guard, device_rule, input_precision, tl, triton
from .forward import _log1p
from .plan import Tensor, _acc_tl, _op_buffer, _tile_scaled
from .prep import _prep
from .tiles import _scaled
from .two_tower import (_apply_coefs, _key_tile, _out_keys, _row_block, _scale_value, _store_part, bwd_flags, bwd_grid,
                        bwd_plan, finish_grad, fwd_tiles, grad_buffers, grads_fake, scalar_grad, scalar_tensor)


@triton.jit
def _signed_logits(s, rows, cols, row_ok, col_ok, OFF, s_hi, s_lo, t_hi, t_lo):
    """(z = −y·x, positive mask, live mask) of a tile of S: softplus(z) = −log σ(y·x)."""
    x = _scaled(s, s_hi, s_lo) + t_hi + t_lo
    pos = cols[None, :] == (rows + OFF)[:, None]
    return tl.where(pos, -x, x), pos, row_ok[:, None] & col_ok[None, :]


@triton.jit
def _softplus(z):
    """log(1 + e^z) without overflow: max(z, 0) + log1p(e^−|z|), to a few ulp for z ≪ 0 too."""
    return tl.maximum(z, 0.0) + _log1p(tl.exp(-tl.abs(z)))


@triton.jit
def _sigmoid(z):
    """σ(z) from e^−|z| ≤ 1 (no overflow on either side)."""
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _siglip_fwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, s_ptr, t_ptr, term_ptr, M, MB, K, OFF, s_am, s_bm,
                       TILE_SCALE: tl.constexpr, ONE_K: tl.constexpr, ACC: tl.constexpr, IP: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Σ_j softplus(−y_ij x_ij) of a block of image rows i over every text row j."""
    s_hi, s_lo = _scale_value(s_ptr, ACC)
    t_hi, t_lo = _scale_value(t_ptr, ACC)
    r0, rows, row_ok, rows64, ks, a, ra = _row_block(a_ptr, ra_ptr, M, K, s_am, TILE_SCALE, ONE_K, BM, BK)
    total = tl.zeros((BM,), ACC)
    for n0 in range(0, MB, BN):
        cols, col_ok, rb, s, _ = _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, rows64, row_ok, ra, MB, K, s_am, s_bm,
                                           0, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        z, pos, live = _signed_logits(s, rows, cols, row_ok, col_ok, OFF, s_hi, s_lo, t_hi, t_lo)
        total += tl.sum(tl.where(live, _softplus(z), 0.0), axis=1)
    tl.store(term_ptr + rows, total, mask=row_ok)


@triton.jit
def _siglip_bwd_kernel(a_ptr, b_ptr, ra_ptr, rb_ptr, keep_ptr, s_ptr, t_ptr, g_ptr, out_ptr, dst_ptr,
                       M, MB, K, OFF, s_am, s_bm, s_o, s_dst,
                       TILE_SCALE: tl.constexpr, STAGED: tl.constexpr, DSCALE: tl.constexpr, ACC: tl.constexpr,
                       ONE_K: tl.constexpr, SPLIT: tl.constexpr, IP: tl.constexpr, RNA: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """∂L/∂(rows of A) (SPLIT: BD columns of it, as two_tower._clip_bwd_kernel): per tile
    C = ∂L/∂x = ∓σ(z)·g (− on the positives), dA += s·C·B̂_J, the l2 Jacobian after the loop.
    DSCALE: per row Σ_j C_ij·â_i·b̂_j and Σ_j C_ij (the scale's and bias's gradients) into dst's
    two rows. The text rows' pass is this kernel with the roles swapped and OFF negated (the loss
    is symmetric in the two towers)."""
    s_hi, s_lo = _scale_value(s_ptr, ACC)
    t_hi, t_lo = _scale_value(t_ptr, ACC)
    g = tl.load(g_ptr).to(ACC)
    r0, rows, row_ok, rows64, ks, a, ra = _row_block(a_ptr, ra_ptr, M, K, s_am, TILE_SCALE, ONE_K, BM, BK)
    acc = tl.zeros((BM, BD), ACC)
    dsr = tl.zeros((BM,), ACC)
    dtr = tl.zeros((BM,), ACC)
    for n0 in range(0, MB, BN):
        cols, col_ok, rb, s, b = _key_tile(a, a_ptr, b_ptr, rb_ptr, n0, r0, rows64, row_ok, ra, MB, K, s_am, s_bm,
                                           0, ONE_K, TILE_SCALE, ACC, IP, BM, BN, BK)
        b = _out_keys(b, b_ptr, cols, col_ok, K, s_bm, SPLIT, BD)
        z, pos, live = _signed_logits(s, rows, cols, row_ok, col_ok, OFF, s_hi, s_lo, t_hi, t_lo)
        c = tl.where(live, _sigmoid(z), 0.0) * g
        c = tl.where(pos, -c, c)
        if DSCALE:
            dsr += tl.sum(c * s, axis=1)
            dtr += tl.sum(c, axis=1)
        acc = _apply_coefs(acc, c, b, rb, s_hi, s_lo, TILE_SCALE, ACC, IP, RNA)
    _store_part(acc, out_ptr, s_o, a_ptr, ra_ptr, keep_ptr, rows, rows64, row_ok, ks, K, s_am, TILE_SCALE, STAGED,
                SPLIT, ACC, BK, BD)
    if DSCALE:
        first = row_ok & (tl.program_id(1) == 0)
        tl.store(dst_ptr + rows, dsr, mask=first)
        tl.store(dst_ptr + s_dst + rows, dtr, mask=first)


# --------------------------------------------------------------------------------------------
# the op


def _siglip_fwd_impl(image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor,
                     offset: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op_a, op_b, r_a, keep_a, r_b, keep_b): the loss, then the operand rows and l2
    scales of both towers for the backward."""
    a, b = image_features, text_features
    (m, k), mb = a.shape, b.shape[0]
    tile = _tile_scaled(a.dtype)
    with device_guard(a):
        pa = _prep(a, a, 1, None, None, norm=True)
        pb = _prep(b, b, 1, None, None, norm=True)
        term = torch.empty(m, dtype=acc_dtype(a.dtype), device=a.device)
        ip = input_precision(a.dtype)
        t, one_k = fwd_tiles(a.dtype, ip, k, max(m, mb), arch_family(a), False)
        _siglip_fwd_kernel[(triton.cdiv(m, t.BM),)](
            pa.op, pb.op, pa.r, pb.r, logit_scale, logit_bias, term, m, mb, k, offset, pa.op.stride(0),
            pb.op.stride(0), TILE_SCALE=tile, ONE_K=one_k, ACC=_acc_tl(a.dtype), IP=ip, BM=t.BM, BN=t.BN, BK=t.BK,
            num_warps=t.warps, num_stages=t.stages)
    return term.sum() / m, pa.op, pb.op, pa.r, pa.keep, pb.r, pb.keep


def _siglip_bwd_impl(image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor,
                     op_a: Tensor, op_b: Tensor, ra: Tensor, ka: Tensor, rb: Tensor, kb: Tensor, g_loss: Tensor,
                     offset: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (∂L/∂A, ∂L/∂B, ∂L/∂s, ∂L/∂t)."""
    a, b = image_features, text_features
    (m, k), mb = a.shape, b.shape[0]
    g = (g_loss.to(ra.dtype) / m).reshape(())  # ∂L/∂(Σ softplus)
    flags = bwd_flags(a, _tile_scaled(a.dtype), bwd_plan(a.dtype, input_precision(a.dtype), k, max(m, mb),
                                                         arch_family(a)))
    da = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    db = torch.empty(b.shape, dtype=b.dtype, device=b.device)
    dst = torch.empty(2, m, dtype=ra.dtype, device=a.device)
    with device_guard(a):
        gs = grad_buffers((da, db), flags)
        for x, y, rx, ry, kx, out, gx, rows, cols, off in ((op_a, op_b, ra, rb, ka, da, gs[0], m, mb, offset),
                                                           (op_b, op_a, rb, ra, kb, db, gs[1], mb, m, -offset)):
            _siglip_bwd_kernel[bwd_grid(flags, rows, k)](
                x, y, rx, ry, kx, logit_scale, logit_bias, g, gx, dst, rows, cols, k, off, x.stride(0), y.stride(0),
                gx.stride(0), dst.stride(0), DSCALE=out is da, **flags)
            finish_grad(gx, out, x, rx, kx, flags)
    return da, db, scalar_grad(dst[0], logit_scale), scalar_grad(dst[1], logit_bias)


def _siglip_fwd_fake(image_features, text_features, logit_scale, logit_bias, offset):
    (m, d), mb = image_features.shape, text_features.shape[0]
    e = image_features.new_empty
    acc = acc_dtype(image_features.dtype)
    ops = [_op_buffer(rows, d, image_features.dtype, image_features.device) for rows in (m, mb)]
    return (e((), dtype=acc), *ops, e((m,), dtype=acc), e((m,), dtype=acc), e((mb,), dtype=acc), e((mb,), dtype=acc))


def _siglip_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4], *output[1:])
    ctx.offset = inputs[4]
    ctx.mark_non_differentiable(*output[1:])


def _siglip_backward(ctx, run_bwd, g_loss, *unused):
    a, b, s, t, *saved = ctx.saved_tensors
    g = g_loss if g_loss is not None else saved[2].new_zeros(())
    return (*run_bwd(a, b, s, t, *saved, g, ctx.offset), None)


_SIGLIP = registry.register("siglip", "triton", fwd=_siglip_fwd_impl, fwd_fake=_siglip_fwd_fake, bwd=_siglip_bwd_impl,
                            bwd_fake=lambda a, b, s, t, *rest: grads_fake(a, b, s, t), setup=_siglip_setup,
                            backward=_siglip_backward, device=device_rule, gathers=True)
siglip_fwd, siglip_bwd, _SPEC_SIGLIP, SigLipFunction = _SIGLIP.fwd, _SIGLIP.bwd, _SIGLIP.spec, _SIGLIP.function


def siglip(image_features: Tensor, text_features: Tensor, logit_scale, logit_bias, offset: int = 0) -> Tensor:
    """SigLIP (docs/spec.md §7.5) of ``image_features`` against ``text_features`` (positives at offset + i)."""
    return apply(_SPEC_SIGLIP, image_features, text_features, scalar_tensor(logit_scale, image_features),
                 scalar_tensor(logit_bias, image_features), offset)[0]


def siglip_gathered(ctx, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias) -> Tensor:
    """docs/spec.md §5 (open_clip's distributed SigLipLoss): this rank's rows of the global matrix,
    the texts gathered with gradients (distributed.Context.gather), over the local N."""
    return siglip(image_features, ctx.gather(text_features).contiguous(), logit_scale, logit_bias,
                  ctx.rank * image_features.shape[0])
