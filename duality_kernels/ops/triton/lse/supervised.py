"""SupCon, MoCo with a queue and the hard-negative NT-Xent (docs/spec.md §7) on the log-sum-exp
passes (forward.py, backward.py), with no (V·B)², N·K or N² buffer: the row log-sum-exps run in the
family's kernels; what needs no matrix (positive logits, SupCon's class sums, HCL's estimator, the
l2 Jacobian) is O(rows·D) torch work inside the ops. Backwards run the kernels without their l2
Jacobian (``keep=None``: ∂L/∂n̂ in the accumulation dtype), add the positive terms to that, and
apply the Jacobian once (``_l2_back``). The gathered forms (docs/spec.md §5) compose anchor_lse.
Design notes and bytes/flops counts: docs/triton_lse.md.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ... import registry
from ..._direct import apply
from .._common import acc_dtype, device_guard, device_rule, interpreting, triton
from .backward import _backward, _Side, dual_fused
from .forward import _forward
from .plan import _NO_POS, _POS_PAIR, Tensor, _grad_vector, _op_buffer, _reduce, _tile_scaled
from .prep import _prep

_NONE = (0, 0, 0, False, _NO_POS, False, 0)   # anchors against keys, nothing masked (MoCo's queue)
_SELF = (0, 0, 0, True, _NO_POS, False, 0)    # self masked, every other row in the sum (SupCon)


def _register(name, fwd, fwd_fake, bwd, bwd_fake, setup, backward, gathers=False):
    return registry.register(name, "triton", fwd=fwd, fwd_fake=fwd_fake, bwd=bwd, bwd_fake=bwd_fake, setup=setup,
                             backward=backward, device=device_rule, gathers=gathers)


def _prep1(x: Tensor):
    """Operand rows of ``x`` l2-scaled (prep.py): (prep, tile) with tile = the scales go on the S tile."""
    return _prep(x, x, 1, None, None, norm=True), _tile_scaled(x.dtype)


def _unit(op: Tensor, r: Tensor, tile: bool) -> Tensor:
    """n̂ = x/‖x‖ in the accumulation dtype, as the kernels see it: the operand itself (fp32/fp64,
    scaled by the prologue), or the operand times its scale (bf16/fp16, scaled on the tile)."""
    u = op.to(acc_dtype(op.dtype))
    return u * r[:, None] if tile else u


def _l2_back(gn: Tensor, n: Tensor, r: Tensor, keep: Tensor, dtype: torch.dtype) -> Tensor:
    """∂L/∂x = r (g − keep n̂ (n̂·g)) from g = ∂L/∂n̂ (the kernels' _l2_jacobian, here on the sum of
    the kernel's part and the positive terms, so both share one projection)."""
    proj = keep * (n * gn).sum(dim=1)
    return gn.sub_(proj[:, None] * n).mul_(r[:, None]).to(dtype)  # in place: gn is the op's own buffer


def _scales(r: Tensor, tile: bool) -> Optional[Tensor]:
    return r if tile else None


def _zero_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_zeros(()) if g is None else g.to(like.dtype)


# --------------------------------------------------------------------------------------------
# MoCo: queries against the queue, split-K (docs/triton_lse.md)

# Queue rows per program at least, and anchor rows (queries × splits) aimed at: ~2 waves of
# 64-row programs on 132 SMs. N = 256, K = 65536: 64 splits of 1024 keys, 256 programs.
_TARGET_ROWS, _MIN_CHUNK = 16384, 1024


def _splits(n: int, k: int) -> int:
    """How many key chunks the queue is split into (grid axis 1 of the lse kernels, as a batch)."""
    if interpreting():  # small, so that the test shapes take the split and the remainder
        return max(1, min(3, k // 8))
    return max(1, min(triton.cdiv(_TARGET_ROWS, n), k // _MIN_CHUNK))


def _repeat_rows(x: Tensor, s: int) -> Tensor:
    """x stacked s times (the split's anchors, one copy per key chunk), rows 16-byte aligned."""
    out = _op_buffer(s * x.shape[0], x.shape[1], x.dtype, x.device)
    out.view(s, x.shape[0], x.shape[1]).copy_(x.expand(s, *x.shape))
    return out


def _chunks(a: Tensor, ra: Optional[Tensor], b: Tensor, rb: Optional[Tensor]):
    """[(anchors, scales, keys, key scales, batch)]: the equal chunks as one batched launch, then the rest."""
    n, k = a.shape[0], b.shape[0]
    s = _splits(n, k)
    main = s * (k // s)
    out = [(_repeat_rows(a, s) if s > 1 else a, ra.repeat(s) if ra is not None and s > 1 else ra, b[:main],
            rb[:main] if rb is not None else None, s)]
    if main < k:
        out.append((a, ra, b[main:], rb[main:] if rb is not None else None, 1))
    return out


def _queue_lse(a: Tensor, ra: Optional[Tensor], b: Tensor, rb: Optional[Tensor], inv_t: float) -> Tensor:
    """(2, N): (m, λ) of log Σ_j exp(n̂_q·n̂_j·inv_t) over the queue, from per-chunk partials merged as
    the column merge does (max first, then the rescaled sums)."""
    acc = acc_dtype(a.dtype)
    ms, ls = [], []
    for ca, cra, cb, crb, s in _chunks(a, ra, b, rb):
        lse = torch.empty(3, s * a.shape[0], dtype=acc, device=a.device)
        q, term = (torch.empty(s * a.shape[0], dtype=acc, device=a.device) for _ in range(2))
        _forward(ca, cb, cra, crb, inv_t, _NONE, batch=s, lse=lse, q=q, term=term)
        ms.append(lse[0].view(s, -1))
        ls.append(lse[1].view(s, -1))
    m, lam = torch.cat(ms), torch.cat(ls)
    top = m.max(dim=0).values
    return torch.stack([top, torch.logsumexp(m - top + lam, dim=0)])


def _queue_grad(a: Tensor, ra: Optional[Tensor], b: Tensor, rb: Optional[Tensor], lse: Tensor, g: Tensor,
                inv_t: float, tile: bool) -> Tensor:
    """Σ_j g·softmax_j·inv_t·n̂_j per query (N, D), fp32/fp64, from the same chunks as the forward."""
    n, d = a.shape
    acc = acc_dtype(a.dtype)
    total = torch.zeros(n, d, dtype=acc, device=a.device)
    for ca, cra, cb, crb, s in _chunks(a, ra, b, rb):
        side = _Side(lse.repeat(1, s), lse[1].repeat(s), g.repeat(s) if g.stride(0) else g[:1].expand(s * n))
        out = torch.empty(s * n, d, dtype=acc, device=a.device)
        _backward(ca, cb, cra, crb, None, side, None, inv_t, _NONE, tile_scale=tile, out=out, batch=s)
        total += out.view(s, n, d).sum(dim=0)
    return total


def _queue_prep(queue: Tensor, normalize: bool, tile: bool) -> Tuple[Tensor, Tensor]:
    """(operand rows, their tile scales): l2-scaled as the queries, or as they are (lightly's bank:
    rows stored normalized; scales of 1 where the tile takes scales)."""
    if normalize:
        pb = _prep1(queue)[0]
        return pb.op, pb.r
    pb = _prep(queue, queue, 1, None, None)
    return pb.op, torch.ones(queue.shape[0] if tile else 0, dtype=acc_dtype(queue.dtype), device=queue.device)


def _moco_fwd_impl(query: Tensor, key: Tensor, queue: Tensor, temperature: float, reduction: str,
                   normalize_queue: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op_q, op_k, op_queue, r_q, keep_q, r_k, keep_k, r_queue, lse, q): the positive
    logit is folded into the queue's log-sum-exp after the sweep (logaddexp: no overflow, and the
    term as softplus(lse_neg − pos), q = 1 − P(positive) = sigmoid of it, as _finish_lse)."""
    inv_t = 1.0 / temperature
    with device_guard(query):
        (pq, tile), (pk, _) = _prep1(query), _prep1(key)
        op_b, r_b = _queue_prep(queue.detach(), normalize_queue, tile)
        nq, nk = _unit(pq.op, pq.r, tile), _unit(pk.op, pk.r, tile)
        pos = (nq * nk).sum(dim=1) * inv_t
        neg = _queue_lse(pq.op, _scales(pq.r, tile), op_b, _scales(r_b, tile), inv_t)
        d = (neg[0] - pos) + neg[1]
        zero = torch.zeros_like(d)
        term = torch.logaddexp(zero, d)
        lse = torch.stack([neg[0], neg[1] + torch.logaddexp(zero, -d)])  # the whole row's (m, λ)
    return _reduce(term, reduction), pq.op, pk.op, op_b, pq.r, pq.keep, pk.r, pk.keep, r_b, lse, torch.sigmoid(d)


def _moco_bwd_impl(query: Tensor, key: Tensor, op_q: Tensor, op_k: Tensor, op_b: Tensor, r_q: Tensor, keep_q: Tensor,
                   r_k: Tensor, keep_k: Tensor, r_b: Tensor, lse: Tensor, q: Tensor, g_loss: Tensor,
                   temperature: float, reduction: str, normalize_queue: bool) -> Tuple[Tensor, Tensor]:
    """-> (∂L/∂query, ∂L/∂key): the queue's part from recomputed tiles, the positive's −g·q/T."""
    inv_t = 1.0 / temperature
    tile = _tile_scaled(query.dtype)
    with device_guard(query):
        g = _grad_vector(g_loss, q, reduction)
        nq, nk = _unit(op_q, r_q, tile), _unit(op_k, r_k, tile)
        gq = _queue_grad(op_q, _scales(r_q, tile), op_b, _scales(r_b, tile), lse, g, inv_t, tile)
        cp = (-g * inv_t) * q
        gq += cp[:, None] * nk
        return _l2_back(gq, nq, r_q, keep_q, query.dtype), _l2_back(cp[:, None] * nq, nk, r_k, keep_k, key.dtype)


def _moco_fake(query, key, queue, temperature, reduction, normalize_queue):
    acc = acc_dtype(query.dtype)
    (n, d), k = query.shape, queue.shape[0]
    e = query.new_empty
    kr = k if normalize_queue or _tile_scaled(query.dtype) else 0
    ops = [_op_buffer(rows, d, query.dtype, query.device) for rows in (n, n, k)]
    vec = [e((m,), dtype=acc) for m in (n, n, n, n, kr)]
    return (e((n,) if reduction == "none" else (), dtype=acc), *ops, *vec, e((2, n), dtype=acc), e((n,), dtype=acc))


def _setup(ctx, inputs, output, n_tensors: int, results: int):
    """Saves the first ``n_tensors`` inputs and the outputs after the ``results`` returned ones."""
    ctx.save_for_backward(*inputs[:n_tensors], *output[results:])
    ctx.args = tuple(inputs[n_tensors:])
    ctx.mark_non_differentiable(*output[results:])


def _moco_setup(ctx, inputs, output):
    query, key, queue, *args = inputs
    ctx.save_for_backward(query, key, *output[1:])
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(*output[1:])


def _moco_backward(ctx, run_bwd, g_loss, *unused):
    query, key, *saved = ctx.saved_tensors
    g = g_loss if g_loss is not None else saved[-1].new_zeros(saved[-1].shape if ctx.args[1] == "none" else ())
    dq, dk = run_bwd(query, key, *saved, g, *ctx.args)
    return dq, dk, None, None, None, None


def _two_fake(a, b, *_args):
    return torch.empty_like(a), torch.empty_like(b)


_MOCO = _register("moco", _moco_fwd_impl, _moco_fake, _moco_bwd_impl, _two_fake, _moco_setup, _moco_backward)
moco_fwd, moco_bwd, _SPEC_MOCO, MoCoFunction = _MOCO.fwd, _MOCO.bwd, _MOCO.spec, _MOCO.function


def moco(query: Tensor, key: Tensor, queue: Tensor, temperature: float, reduction: str = "mean",
         normalize_queue: bool = True) -> Tensor:
    """MoCo's loss (docs/spec.md §7) reduced over queries; no gradient into ``queue``, whose rows
    are l2-normalized unless ``normalize_queue`` is False (lightly's memory bank)."""
    return apply(_SPEC_MOCO, query, key, queue.detach(), float(temperature), reduction, bool(normalize_queue))[0]


# --------------------------------------------------------------------------------------------
# hard-negative NT-Xent (HCL's "hard" estimator)


def _hn_scales(temperature: float, beta: float) -> Tuple[float, float]:
    return (1.0 + beta) / temperature, beta / temperature


def hn_terms(t1: Tensor, t2: Tensor, pos: Tensor, big_m: int, temperature: float, tau_plus: float
             ) -> Tuple[Tensor, Tensor, Tensor]:
    """(ℓ, ∂ℓ/∂t1, ∂ℓ/∂pos) per anchor from t_k = lse_neg_k − s_k·dot_pos (the DCL-form terms at the
    scales s_1 = (1+β)/t, s_2 = β/t; ∂ℓ/∂t2 = −∂ℓ/∂t1) and pos = dot_pos/t. Since s_1 − s_2 = 1/t,
    y = log(reweight·e^{−s_pos}) = t1 − t2 + log M exactly: the positive is never subtracted from a
    sum that holds it. Then as reference.supervised.hard_negative_terms: the debiasing with τ⁺ in the
    log domain, the clamp at M·e^{−1/t}, ℓ = softplus(log_x). Differentiable torch (the gathered form
    runs it under autograd); the coefficients are for the single-process op's backward."""
    y = t1 - t2 + math.log(big_m)
    dy = torch.ones_like(y)
    if tau_plus > 0.0:
        gap = y - math.log(tau_plus * big_m)
        valid = gap > 0
        safe = torch.where(valid, gap, torch.ones_like(gap))
        e = -torch.expm1(-safe)
        y = torch.where(valid, y + torch.log(e), torch.full_like(y, float("-inf"))) - math.log1p(-tau_plus)
        dy = torch.where(valid, 1.0 / e, torch.zeros_like(e))
    floor = math.log(big_m) - 1.0 / temperature - pos
    log_x = torch.maximum(y, floor)
    s = torch.sigmoid(log_x)
    use_y = y >= floor
    return torch.logaddexp(torch.zeros_like(log_x), log_x), torch.where(use_y, s * dy, 0.0), torch.where(use_y, 0.0, -s)


def _hn_fwd_impl(z1: Tensor, z2: Tensor, temperature: float, tau_plus: float, beta: float
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, op, r, keep, lse1, lse2, c1, c_pos): the 2N rows [z1; z2] against themselves with
    self and positive masked and the positive out of the running max (DROP_POS, as DCL), both
    scales in one sweep (the kernel's DUAL mode: S once); β = 0 has only the first (all the second's
    logits are 0: t2 = log M)."""
    n = z1.shape[0]
    acc = acc_dtype(z1.dtype)
    big_m = 2 * n - 2
    masks = (n, n, 0, True, _POS_PAIR, True, 0)
    s1, s2 = _hn_scales(temperature, beta)
    with device_guard(z1):
        pr = _prep(z1, z2, 2, None, None, norm=True)
        tile = _tile_scaled(z1.dtype)
        r = _scales(pr.r, tile)
        lse1, lse2 = (torch.empty(3, 2 * n, dtype=acc, device=z1.device) for _ in range(2))
        q, t1, t2 = (torch.empty(2 * n, dtype=acc, device=z1.device) for _ in range(3))
        _forward(pr.op, pr.op, r, r, s1, masks, orient=1, lse=lse1, q=q, term=t1,
                 dual=(s2, lse2, t2) if beta != 0.0 else None)
        if beta == 0.0:
            t2.fill_(math.log(big_m))
        u = _unit(pr.op, pr.r, tile)
        pos = (u[:n] * u[n:]).sum(dim=1) / temperature
        ell, c1, cp = hn_terms(t1, t2, torch.cat([pos, pos]), big_m, temperature, tau_plus)
    return ell.mean(), pr.op, pr.r, pr.keep, lse1, lse2, c1, cp


def _hn_bwd_impl(z1: Tensor, z2: Tensor, op: Tensor, r: Tensor, keep: Tensor, lse1: Tensor, lse2: Tensor, c1: Tensor,
                 cp: Tensor, g_loss: Tensor, temperature: float, tau_plus: float, beta: float) -> Tensor:
    """-> ∂L/∂[z1; z2] (2N, D): both scales' coefficients (each with its positive's −g·s_k, DROP_POS)
    in one sweep of the fused kernel (DUAL; two sweeps on the stripe path), the clamp's positive
    term, then the l2 Jacobian."""
    n = z1.shape[0]
    acc = acc_dtype(z1.dtype)
    masks = (n, n, 0, True, _POS_PAIR, True, 0)
    tile = _tile_scaled(z1.dtype)
    sc = _scales(r, tile)
    g = g_loss.to(acc) / (2 * n)
    s1, s2 = _hn_scales(temperature, beta)
    sides = [(s, _Side(lse, c1, (sign * g) * c1)) for sign, lse, s in ((1.0, lse1, s1), (-1.0, lse2, s2)) if s != 0.0]
    gn = torch.zeros(2 * n, z1.shape[1], dtype=acc, device=z1.device) if not sides else None
    with device_guard(z1):
        if len(sides) == 2 and dual_fused(op.dtype, op.shape[1]):
            (s, side), (s_b, side_b) = sides
            sides = [(s, side, (s_b, side_b, side_b))]
        for s, side, *dual in sides:
            out = torch.empty(2 * n, z1.shape[1], dtype=acc, device=z1.device)
            _backward(op, op, sc, sc, None, side, side, s, masks, tile_scale=tile, out=out, orient=1,
                      dual=dual[0] if dual else None)
            gn = out if gn is None else gn.add_(out)
        u = _unit(op, r, tile)
        cpos = g * (cp[:n] + cp[n:]) / temperature  # dot_{a,p(a)} is in ℓ_a and ℓ_p(a): one coefficient per pair
        gn[:n].addcmul_(cpos[:, None], u[n:])
        gn[n:].addcmul_(cpos[:, None], u[:n])
        return _l2_back(gn, u, r, keep, z1.dtype)


def _hn_fake(z1, z2, temperature, tau_plus, beta):
    acc = acc_dtype(z1.dtype)
    m = 2 * z1.shape[0]
    e = z1.new_empty
    return (e((), dtype=acc), _op_buffer(m, z1.shape[1], z1.dtype, z1.device), e((m,), dtype=acc), e((m,), dtype=acc),
            e((3, m), dtype=acc), e((3, m), dtype=acc), e((m,), dtype=acc), e((m,), dtype=acc))


def _hn_setup(ctx, inputs, output):
    _setup(ctx, inputs, output, 2, 1)


def _hn_backward(ctx, run_bwd, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = run_bwd(z1, z2, *saved, _zero_if_none(g_loss, saved[-1]), *ctx.args)
    n = z1.shape[0]
    return dz[:n], dz[n:], None, None, None


def _grad_fake(z1, *_args):
    return z1.new_empty((2 * z1.shape[0], z1.shape[1]))


_HN = _register("hard_negative_ntxent", _hn_fwd_impl, _hn_fake, _hn_bwd_impl, _grad_fake, _hn_setup, _hn_backward,
                gathers=True)
hard_negative_ntxent_fwd, hard_negative_ntxent_bwd = _HN.fwd, _HN.bwd
_SPEC_HN, HardNegativeNTXentFunction = _HN.spec, _HN.function


def hard_negative_ntxent(z1: Tensor, z2: Tensor, temperature: float, tau_plus: float, beta: float) -> Tensor:
    """HCL's "hard" loss (docs/spec.md §7) of one process's batch, the mean over its 2N anchors."""
    return apply(_SPEC_HN, z1, z2, float(temperature), float(tau_plus), float(beta))[0]


# --------------------------------------------------------------------------------------------
# SupCon: one log-sum-exp per anchor over every other row; the positives from class sums


def _classes(labels: Optional[Tensor], b: int, device) -> Tensor:
    """Each sample's class index in [0, B) (without labels, the sample itself): the rank of its label
    among the distinct labels, from a sort and a running count of label changes. Fixed shapes, so
    no host-device synchronization (torch.unique's output size needs one; docs/design.md convention 3)."""
    if labels is None:
        return torch.arange(b, device=device)
    ordered, perm = torch.sort(labels.to(torch.int64), stable=True)
    step = torch.zeros_like(ordered)
    step[1:] = (ordered[1:] != ordered[:-1]).to(torch.int64)
    return torch.empty_like(ordered).scatter_(0, perm, step.cumsum(0))


def _class_sums(cls: Tensor, rows: Tensor, b: int) -> Tensor:
    """(B, D): the sum of ``rows`` per class index (at most B classes: no data-dependent shape)."""
    return rows.new_zeros(b, rows.shape[1]).index_add_(0, cls, rows)


def supcon_positive(u: Tensor, a: Tensor, cls_rows: Tensor, cls_a: Tensor, b: int) -> Tuple[Tensor, Tensor]:
    """(Σ_{p∈P(a)} a·p, |P(a)|) per anchor row ``a`` of class ``cls_a``: a·(S_c − a) and n_c − 1, with
    S_c and n_c the sum and count of the contrast rows ``u`` of class c (classes indexed < B)."""
    sums = _class_sums(cls_rows, u, b)
    counts = cls_rows.new_zeros(b).index_add_(0, cls_rows, torch.ones_like(cls_rows))  # (bincount has no meta)
    return (a * sums[cls_a]).sum(dim=1) - (a * a).sum(dim=1), counts[cls_a] - 1


def supcon_terms(lse: Tensor, pos_sum: Tensor, n_pos: Tensor, temperature: float, base_temperature: float):
    """(terms, has): SupContrast's −(T/T_b)(mean positive logit − lse); 0 for an anchor without positive."""
    has = n_pos > 0
    mean_pos = pos_sum / temperature / n_pos.clamp(min=1).to(pos_sum.dtype)
    return torch.where(has, -(temperature / base_temperature) * (mean_pos - lse), torch.zeros_like(lse)), has


def _supcon_fwd_impl(features: Tensor, labels: Optional[Tensor], temperature: float, base_temperature: float,
                     contrast_mode: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                              Tensor]:
    """-> (loss, anchors_without_positive, op, r, keep, lse, g_lse, w_pos, cls): the V·B rows view-major
    (as SupContrast's), the anchors their first B·V ("all") or B ("one") rows, self masked. For the
    backward, over all V·B rows: (m, λ) with non-anchors at (+inf, 0) so that they weigh 0, and the
    coefficients of lse and of the positive sum per unit of the loss."""
    b, v, d = features.shape
    acc = acc_dtype(features.dtype)
    na = (v if contrast_mode == "all" else 1) * b
    with device_guard(features):
        pr, tile = _prep1(features.transpose(0, 1).reshape(v * b, d))
        lse = torch.empty(3, na, dtype=acc, device=features.device)
        q, term = (torch.empty(na, dtype=acc, device=features.device) for _ in range(2))
        r = _scales(pr.r, tile)
        _forward(pr.op[:na], pr.op, r[:na] if tile else None, r, 1.0 / temperature, _SELF, orient=1, lse=lse, q=q,
                 term=term)
        u = _unit(pr.op, pr.r, tile)
        cls = _classes(labels, b, features.device).repeat(v)
        pos_sum, n_pos = supcon_positive(u, u[:na], cls, cls[:na], b)
        terms, has = supcon_terms(term, pos_sum, n_pos, temperature, base_temperature)
        side = torch.zeros(2, v * b, dtype=acc, device=features.device)
        side[0, na:] = float("inf")
        side[:, :na] = lse[:2]
        g_lse, w_pos = (torch.zeros(v * b, dtype=acc, device=features.device) for _ in range(2))  # outputs: no views
        g_lse[:na] = has.to(acc) * (temperature / base_temperature / na)  # (a where of two floats is fp32)
        w_pos[:na] = torch.where(has, -1.0 / (base_temperature * na * n_pos.clamp(min=1).to(acc)), 0.0)
    return terms.mean(), (~has).sum(), pr.op, pr.r, pr.keep, side, g_lse, w_pos, cls


def _supcon_bwd_impl(features: Tensor, op: Tensor, r: Tensor, keep: Tensor, side: Tensor, g_lse: Tensor,
                     w_pos: Tensor, cls: Tensor, g_loss: Tensor, temperature: float, base_temperature: float,
                     contrast_mode: str) -> Tensor:
    """-> ∂L/∂features: the denominators' part in one symmetric sweep of all V·B rows (both sides'
    softmax, NT-Xent's pass), the positives' from class sums: for row x of class c,
    [x anchor]·w_x·(S_c − 2x) + Σ_{anchors a of class c} w_a·a."""
    b, v, d = features.shape
    acc = acc_dtype(features.dtype)
    tile = _tile_scaled(features.dtype)
    g = g_loss.to(acc)
    with device_guard(features):
        gn = torch.empty(v * b, d, dtype=acc, device=features.device)
        lse = _Side(side, g_lse, g * g_lse)
        _backward(op, op, _scales(r, tile), _scales(r, tile), None, lse, lse, 1.0 / temperature, _SELF,
                  tile_scale=tile, out=gn, orient=1)
        u = _unit(op, r, tile)
        wp = (g * w_pos)[:, None]
        # in place, one (V·B, D) temporary at a time (docs/triton_lse.md: memory beyond the inputs)
        gn.addcmul_(wp, _class_sums(cls, u, b)[cls]).addcmul_(wp, u, value=-2.0)
        gn += _class_sums(cls, wp * u, b)[cls]
        dx = _l2_back(gn, u, r, keep, features.dtype)
    return dx.view(v, b, d).transpose(0, 1).contiguous()


def _supcon_fake(features, labels, temperature, base_temperature, contrast_mode):
    b, v, d = features.shape
    acc = acc_dtype(features.dtype)
    m = v * b
    e = features.new_empty
    return (e((), dtype=acc), e((), dtype=torch.int64), _op_buffer(m, d, features.dtype, features.device),
            e((m,), dtype=acc), e((m,), dtype=acc), e((2, m), dtype=acc), e((m,), dtype=acc), e((m,), dtype=acc),
            e((m,), dtype=torch.int64))


def _supcon_setup(ctx, inputs, output):
    features, labels, *args = inputs
    ctx.save_for_backward(features, *output[2:])
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(*output[1:])


def _supcon_backward(ctx, run_bwd, g_loss, *unused):
    features, *saved = ctx.saved_tensors
    df = run_bwd(features, *saved, _zero_if_none(g_loss, saved[1]), *ctx.args)
    return df, None, None, None, None


def _supcon_bwd_fake(features, *_args):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


_SUPCON = _register("supcon", _supcon_fwd_impl, _supcon_fake, _supcon_bwd_impl, _supcon_bwd_fake, _supcon_setup,
                    _supcon_backward, gathers=True)
supcon_fwd, supcon_bwd, _SPEC_SUPCON, SupConFunction = _SUPCON.fwd, _SUPCON.bwd, _SUPCON.spec, _SUPCON.function


def supcon(features: Tensor, labels: Optional[Tensor], temperature: float, base_temperature: float,
           contrast_mode: str) -> Tuple[Tensor, Tensor]:
    """(loss, anchors_without_positive) of one process's batch (docs/spec.md §7)."""
    out = apply(_SPEC_SUPCON, features, labels, float(temperature), float(base_temperature), contrast_mode)
    return out[0], out[1]  # (compiled: every output of the op comes back)


# --------------------------------------------------------------------------------------------
# gather_distributed (docs/spec.md §5): this rank's anchors against all ranks' rows on anchor_lse,
# the rest torch under autograd (ctx.gather's backward sums over ranks)


def _anchor_lse(anchors: Tensor, keys: Tensor, scale: float, half_a: int, half_b: int, off: int, pos: int,
                drop_positive: bool) -> Tensor:
    from .ops import _SPEC_ANCHOR_LSE

    temperature = 1.0 / scale if scale != 0.0 else math.inf  # anchor_lse takes the temperature: 1/∞ = 0
    return apply(_SPEC_ANCHOR_LSE, anchors.contiguous(), keys.contiguous(), temperature, True, half_a, half_b, off,
                 True, pos, drop_positive, 0)[0]


def supcon_gathered(ctx, features: Tensor, labels: Optional[Tensor], temperature: float, base_temperature: float,
                    contrast_mode: str) -> Tuple[Tensor, Tensor]:
    """(loss, anchors_without_positive) of this rank's anchors. The keys are ordered so that the
    anchors are contiguous (self = anchor index + offset): sample-major for "all" (rank r's B·V rows
    from r·B·V on), view-major for "one" (view 0 of rank r's samples from r·B on)."""
    from ....reference import l2n

    b, v, d = features.shape
    glob = ctx.gather(features)
    m = glob.shape[0]
    lo = ctx.rank * b
    if labels is None:
        cls = torch.arange(m, device=features.device)
    else:
        with torch.no_grad():
            cls = _classes(ctx.gather(labels.to(torch.int64)), m, features.device)
    if contrast_mode == "all":
        keys, anchors, off = glob.reshape(m * v, d), features.reshape(b * v, d), lo * v
        cls_rows, cls_a = cls.repeat_interleave(v), cls[lo:lo + b].repeat_interleave(v)
    else:
        keys, anchors, off = glob.transpose(0, 1).reshape(v * m, d), features[:, 0], lo
        cls_rows, cls_a = cls.repeat(v), cls[lo:lo + b]
    lse = _anchor_lse(anchors, keys, 1.0 / temperature, 0, 0, off, _NO_POS, False)
    pos_sum, n_pos = supcon_positive(l2n(keys), l2n(anchors), cls_rows, cls_a, m)
    terms, has = supcon_terms(lse, pos_sum, n_pos, temperature, base_temperature)
    return terms.mean(), (~has).sum()


def hard_negative_gathered(ctx, z1: Tensor, z2: Tensor, temperature: float, tau_plus: float, beta: float) -> Tensor:
    """HCL's loss of this rank's 2N anchors against the 2·W·N rows of all ranks (M = 2·W·N − 2)."""
    from ....reference import l2n

    n = z1.shape[0]
    keys = torch.cat([ctx.gather(z1), ctx.gather(z2)])
    m = keys.shape[0] // 2
    lo = ctx.rank * n
    anchors = torch.cat([keys[lo:lo + n], keys[m + lo:m + lo + n]])
    s1, s2 = _hn_scales(temperature, beta)
    t1 = _anchor_lse(anchors, keys, s1, n, m, lo, _POS_PAIR, True)
    t2 = _anchor_lse(anchors, keys, s2, n, m, lo, _POS_PAIR, True) if beta != 0.0 else torch.full_like(
        t1, math.log(2 * m - 2))
    u = l2n(anchors)
    pos = (u[:n] * u[n:]).sum(dim=1) / temperature
    return hn_terms(t1, t2, torch.cat([pos, pos]), 2 * m - 2, temperature, tau_plus)[0].mean()
