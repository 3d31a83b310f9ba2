"""Pure-PyTorch math of the supervised and negative-sampling contrastive losses (docs/spec.md §7).

SupCon (Khosla et al. 2020, SupContrast's ``SupConLoss``), MoCo's queue loss (solo-learn's
``moco_loss_func`` with the queue as rows), the hard-negative NT-Xent of Robinson et al. 2021
(joshr17/HCL's "hard" estimator) and lightly's weighted DCL. Every one is a row log-sum-exp over
a similarity matrix plus terms that need no matrix: ``row_lse`` computes the log-sum-exps over
chunks of anchor rows, recomputing each chunk in the backward (activation checkpointing), so no
(V·B)², N·K or N² buffer outlives its chunk. SupCon's positive sum a·(S_c − a) uses class sums S_c
(an O(B·V·D + C·D) identity instead of the (V·B)² label mask). Inputs are trusted (the public
functions validate them); dtypes as in ``reference/__init__.py``: half inputs compute in float32
with products on half operands, float64 stays float64. ``ctx`` gives docs/spec.md §5's gathered form:
each rank's own anchors against the rows of every rank.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from ..distributed import LOCAL, Context
from . import l2n, mm, operand_dtype, reduce_terms

Tensor = torch.Tensor

# Logits held at once by one chunk of ``row_lse`` (16 MiB in float32); a smaller problem is one chunk.
CHUNK_ELEMENTS = 1 << 22


def _lse_block(anchors: Tensor, keys: Tensor, scales: Tuple[float, ...], exclude: Tuple[Tensor, ...],
               op: Optional[torch.dtype]) -> Tensor:
    """(len(scales), A): log Σ_{b ∉ exclude(a)} exp(scale · anchors_a · keys_b) for each scale."""
    dots = mm(anchors, keys.T, op)
    mask = None
    if exclude:
        cols = torch.arange(keys.shape[0], device=anchors.device)[None, :]
        for col in exclude:
            hit = cols == col[:, None]
            mask = hit if mask is None else mask | hit
    out = []
    for s in scales:
        logits = dots * s
        if mask is not None:
            logits = logits.masked_fill(mask, float("-inf"))
        out.append(torch.logsumexp(logits, dim=1))
    return torch.stack(out)


def row_lse(anchors: Tensor, keys: Tensor, scales: Sequence[float], exclude: Sequence[Tensor] = (),
            op: Optional[torch.dtype] = None, chunk_rows: Optional[int] = None) -> Tensor:
    """Row log-sum-exps of scale·anchors·keysᵀ without the excluded columns, shape (len(scales), A).

    ``exclude``: per-anchor column indices left out (self, positive). Anchors are processed
    ``chunk_rows`` at a time (default: CHUNK_ELEMENTS logits per chunk); with gradients, each
    chunk is checkpointed, so memory stays O(chunk_rows · K) in the forward and the backward.
    """
    scales, exclude = tuple(float(s) for s in scales), tuple(exclude)
    a_rows = anchors.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // max(1, keys.shape[0]))
    if a_rows <= chunk_rows:
        return _lse_block(anchors, keys, scales, exclude, op)
    grad = torch.is_grad_enabled() and (anchors.requires_grad or keys.requires_grad)
    parts = []
    for lo in range(0, a_rows, chunk_rows):
        sl = slice(lo, lo + chunk_rows)
        ex = tuple(e[sl] for e in exclude)
        if grad:
            parts.append(checkpoint(_lse_block, anchors[sl], keys, scales, ex, op, use_reentrant=False))
        else:
            parts.append(_lse_block(anchors[sl], keys, scales, ex, op))
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------------------------
# SupCon


def supcon_terms(features: Tensor, labels: Optional[Tensor], temperature: float, base_temperature: float,
                 contrast_mode: str, ctx: Context = LOCAL, chunk_rows: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """(terms, no_positive): SupCon's per-anchor losses of this rank's anchors and how many of them
    have no positive (their term is 0, and they count in the mean, as SupContrast's code does).

    Anchor order as SupContrast: view-major (view v of sample i is v·B + i); "one" takes view 0.
    ℓ_a = −(T/T_b)·[a·(S_c − a)/(T·|P(a)|) − log Σ_{b≠a} exp(a·b/T)], |P(a)| = V·n_c − 1, where
    S_c and n_c are the sum and count of the rows of a's class (of a's sample without labels).
    """
    b, v, d = features.shape
    op = operand_dtype(features)
    glob = ctx.gather(features)                                 # (W·B, V, D)
    m = glob.shape[0]
    u = l2n(glob.transpose(0, 1).reshape(v * m, d))             # view j of sample g is row j·m + g
    lo = ctx.rank * b
    views = v if contrast_mode == "all" else 1
    by_view = u.view(v, m, d)
    anchors = by_view[:views, lo:lo + b].reshape(views * b, d)
    own = torch.arange(lo, lo + b, device=u.device)
    self_col = (torch.arange(views, device=u.device)[:, None] * m + own[None, :]).reshape(-1)
    per_sample = by_view.sum(dim=0)                             # (W·B, D): Σ over views
    if labels is None:  # each sample its own class: S is the sum of its views, |P| = V − 1
        sums, anchor_cls = per_sample, own.repeat(views)
        n_pos = torch.full((views * b,), v - 1, device=u.device, dtype=torch.int64)
    else:
        with torch.no_grad():
            lab = ctx.gather(labels.to(torch.int64))
        classes, inverse = torch.unique(lab, return_inverse=True)
        sums = per_sample.new_zeros(classes.numel(), d).index_add(0, inverse, per_sample)
        counts = torch.bincount(inverse, minlength=classes.numel())
        anchor_cls = inverse[lo:lo + b].repeat(views)
        n_pos = v * counts[anchor_cls] - 1
    pos_sum = (anchors * sums[anchor_cls]).sum(dim=1) - (anchors * anchors).sum(dim=1)
    lse = row_lse(anchors, u, (1.0 / temperature,), (self_col,), op, chunk_rows)[0]
    has = n_pos > 0
    mean_pos = pos_sum / temperature / n_pos.clamp(min=1).to(pos_sum.dtype)
    terms = torch.where(has, -(temperature / base_temperature) * (mean_pos - lse), torch.zeros_like(lse))
    return terms, (~has).sum()


def supcon(features, labels, temperature, base_temperature, contrast_mode, ctx: Context = LOCAL,
           chunk_rows: Optional[int] = None):
    """(loss, {"anchors_without_positive": count}); loss = mean of ``supcon_terms``."""
    terms, none = supcon_terms(features, labels, temperature, base_temperature, contrast_mode, ctx, chunk_rows)
    return terms.mean(), {"anchors_without_positive": none}


# --------------------------------------------------------------------------------------------
# MoCo (and lightly's memory-bank NT-Xent, the same math)


def moco_terms(query: Tensor, key: Tensor, queue: Tensor, temperature: float,
               chunk_rows: Optional[int] = None, normalize_queue: bool = True) -> Tensor:
    """Per-query CE([q̂·k̂, q̂·Q̂ᵀ]/T, 0) = log(e^{s_pos} + Σ_j e^{s_j}) − s_pos; no gradient into ``queue``.
    ``normalize_queue=False`` takes the queue's rows as they are (lightly's memory bank stores
    normalized rows and uses them without normalizing again)."""
    q, k = l2n(query), l2n(key)
    queue = queue.detach()
    keys = l2n(queue) if normalize_queue else queue.to(q.dtype)
    pos = (q * k).sum(dim=1) / temperature
    neg = row_lse(q, keys, (1.0 / temperature,), (), operand_dtype(query), chunk_rows)[0]
    return torch.logaddexp(pos, neg) - pos


def moco(query, key, queue, temperature, reduction: str = "mean", chunk_rows: Optional[int] = None,
         normalize_queue: bool = True) -> Tensor:
    return reduce_terms(moco_terms(query, key, queue, temperature, chunk_rows, normalize_queue), reduction)


# --------------------------------------------------------------------------------------------
# hard-negative NT-Xent (HCL)


def hard_negative_terms(z1: Tensor, z2: Tensor, temperature: float, tau_plus: float, beta: float,
                        ctx: Context = LOCAL, chunk_rows: Optional[int] = None) -> Tensor:
    """Per-anchor HCL "hard" losses of this rank's 2N anchors (its rows of z1, then of z2).

    With s = â·b̂/t over the M = 2·W·N − 2 negatives of anchor a (self and positive excluded):
    reweight = M·Σ e^{(1+β)s} / Σ e^{βs}, Ng = max((reweight − τ⁺·M·e^{s_pos}) / (1 − τ⁺), M·e^{−1/t}),
    ℓ_a = log(1 + Ng·e^{−s_pos}), computed in the log domain (two row log-sum-exps).
    """
    n_local = z1.shape[0]
    op = operand_dtype(z1)
    n1, n2 = l2n(ctx.gather(z1)), l2n(ctx.gather(z2))
    m = n1.shape[0]
    big_m = 2 * m - 2
    lo = ctx.rank * n_local
    a1, a2 = n1[lo:lo + n_local], n2[lo:lo + n_local]
    own = torch.arange(lo, lo + n_local, device=n1.device)
    keys = torch.cat([n1, n2])
    anchors = torch.cat([a1, a2]) if ctx.active else keys
    self_col, pos_col = torch.cat([own, own + m]), torch.cat([own + m, own])
    pos = (a1 * a2).sum(dim=1) / temperature
    pos = torch.cat([pos, pos])
    lse = row_lse(anchors, keys, ((1.0 + beta) / temperature, beta / temperature), (self_col, pos_col), op,
                  chunk_rows)
    y = lse[0] - lse[1] + math.log(big_m) - pos              # log(reweight / e^{s_pos})
    if tau_plus > 0.0:
        # log(e^y − τ⁺M) = y + log(1 − e^{−(y − log τ⁺M)}); no positive value when y ≤ log τ⁺M
        gap = y - math.log(tau_plus * big_m)
        valid = gap > 0
        safe = torch.where(valid, gap, torch.ones_like(gap))
        y = torch.where(valid, y + torch.log(-torch.expm1(-safe)), torch.full_like(y, float("-inf")))
        y = y - math.log1p(-tau_plus)
    floor = math.log(big_m) - 1.0 / temperature - pos          # the clamp M·e^{−1/t}, over e^{s_pos}
    log_x = torch.maximum(y, floor)
    return torch.logaddexp(torch.zeros_like(log_x), log_x)


def hard_negative_ntxent(z1, z2, temperature, tau_plus, beta, ctx: Context = LOCAL,
                         chunk_rows: Optional[int] = None) -> Tensor:
    return hard_negative_terms(z1, z2, temperature, tau_plus, beta, ctx, chunk_rows).mean()


# --------------------------------------------------------------------------------------------
# lightly's weighted DCL


def von_mises_fisher_weights(n0: Tensor, n1: Tensor, sigma: float) -> Tensor:
    """lightly's negative von Mises-Fisher weights of DCLW: 2 − N·softmax_i(n0_i·n1_i/σ), no gradient."""
    with torch.no_grad():
        s = (n0 * n1).sum(dim=1) / sigma
        return 2 - n0.shape[0] * torch.softmax(s, dim=0)


def weighted_dcl_terms(dcl_terms: Tensor, z1: Tensor, z2: Tensor, temperature: float,
                       weight_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """DCL with the positive term scaled by w (Yeh et al. eq. 6): ℓ_a = −w_a·s_pos + lse_neg
    = (lse_neg − s_pos) + (1 − w_a)·s_pos, from the unweighted terms of this rank's 2N anchors.
    ``weight_fn`` gets the L2-normalized local rows, (n0, n1) for z1's anchors, (n1, n0) for z2's."""
    n0 = torch.nn.functional.normalize(z1, dim=1)
    n1 = torch.nn.functional.normalize(z2, dim=1)
    pos = (l2n(z1) * l2n(z2)).sum(dim=1) / temperature
    w = torch.cat([torch.broadcast_to(weight_fn(n0, n1), pos.shape),
                   torch.broadcast_to(weight_fn(n1, n0), pos.shape)]).to(pos.dtype)
    return dcl_terms + (1 - w) * torch.cat([pos, pos])
