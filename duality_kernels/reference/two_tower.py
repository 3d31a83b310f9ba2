"""Pure-torch math of the two-tower losses (docs/spec.md §7), as open_clip's ClipLoss and SigLipLoss.

clip: ½[CE(s·ÂB̂ᵀ, arange) + CE(s·B̂Âᵀ, arange)]; siglip: −(1/N) Σ_ij log σ(y_ij(s·â_i·b̂_j + t)),
y = 2I − 1. Rows are L2-normalized here; s and t are Python floats or one-element tensors (their
gradients come back through autograd, in their own dtype and shape). Logits are float32 products
of operands in the input dtype for half inputs, float64 for float64 (``mm``, as every reference op).

Memory: past BLOCK_ELEMENTS logits the rows go in blocks, each under a non-reentrant checkpoint
(recomputed in the backward), so autograd keeps no N×M matrix: O(rows·M) logits at a time, plus for
CLIP in one process each block's per-column max and sum of exponentials (2·(N/rows)·N values),
merged exactly into the column direction. One block is the plain code (and no checkpoint).
With W ranks (docs/spec.md §5, open_clip's local loss with gradients through the gather) a rank
scores its own rows against every rank's: CLIP's two directions as two row-wise passes (twice the
products, as open_clip), SigLIP its rows of the global matrix; each over the local N, so the mean
over ranks is the global batch's loss.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..distributed import LOCAL, Context
from . import compute_dtype, l2n, mm, operand_dtype

Tensor = torch.Tensor
Scalar = Union[float, Tensor]

# Logits per block: 2**24 fp32 values (64 MB), so N ≤ 4096 against itself is a single plain block,
# and N = 65536 runs 256-row blocks (256·65536 logits, 2·256·65536 column partials: O(N^1.5) in all).
BLOCK_ELEMENTS = 1 << 24


def block_rows(m: int, rows: Optional[int] = None) -> int:
    """Anchors per block against ``m`` keys (``rows`` overrides, e.g. in tests)."""
    return rows if rows is not None else max(1, BLOCK_ELEMENTS // max(m, 1))


def scalar(value: Scalar, dtype: torch.dtype) -> Scalar:
    """A float as is; a one-element tensor as a 0-dim tensor in the compute dtype (autograd keeps
    the way back to the caller's shape and dtype)."""
    if isinstance(value, Tensor):
        return value.reshape(()).to(dtype)
    return value


def _in_func_transform() -> bool:
    """Inside torch.func.grad/vjp/jacrev/hessian, which refuse the checkpoint's saved-tensor hooks."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _blocked(many: bool, fn, *args):
    """fn(*args) under a checkpoint when there are ``many`` blocks and autograd will need them (the
    block's logits are then not saved but recomputed in the backward), plainly otherwise (and inside
    a torch.func transform: exact still, with the blocks' logits kept for the backward)."""
    if (many and torch.is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in args)
            and not _in_func_transform()):
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)


def _clip_block(a: Tensor, b: Tensor, s: Scalar, lo: int, op):
    """Rows lo..lo+len(a) of L = s·a bᵀ: their cross-entropy terms, L_ii, and per column the max m over
    these rows (a constant for autograd: the merged result does not depend on it) and Σ exp(L − m)."""
    logits = mm(a, b.T, op) * s
    col_max = logits.detach().amax(dim=0)
    return _ce_terms(logits, lo), logits.diagonal(offset=lo), col_max, (logits - col_max).exp().sum(dim=0)


def _ce_terms(logits: Tensor, lo: int) -> Tensor:
    """Per row k: −log softmax(L_k)[lo + k] = (max_j L_kj − L_{k,lo+k}) + log Σ_j exp(L_kj − max), as
    cross_entropy computes it. Not (max + log Σ) − L_kk: that rounds the term to an ulp of the
    logits (7.6e-6 at 100 in fp32) where the loss of a well-separated row is far smaller."""
    return -logits.log_softmax(dim=1).diagonal(offset=lo)


def _lse_block(anchors: Tensor, keys: Tensor, s: Scalar, lo: int, op) -> Tensor:
    """Per anchor k: the cross-entropy term of row k of L = s·anchors keysᵀ, positive key lo + k."""
    return _ce_terms(mm(anchors, keys.T, op) * s, lo)


def _lse_terms(anchors: Tensor, keys: Tensor, s: Scalar, lo: int, op, rows: int) -> Tensor:
    """_lse_block over blocks of ``rows`` anchors; anchor k's positive is key lo + k."""
    n = anchors.shape[0]
    many = rows < n
    return torch.cat([_blocked(many, _lse_block, anchors[i:i + rows], keys, s, lo + i, op) for i in range(0, n, rows)])


def clip(image_features: Tensor, text_features: Tensor, logit_scale: Scalar, ctx: Context = LOCAL,
         rows: Optional[int] = None) -> Tensor:
    """open_clip's ClipLoss on the normalized rows; with ``ctx`` active, its local loss (module docstring)."""
    op = operand_dtype(image_features)
    s = scalar(logit_scale, compute_dtype(image_features.dtype))
    n = image_features.shape[0]
    if ctx.active:
        a_all, b_all = l2n(ctx.gather(image_features)), l2n(ctx.gather(text_features))
        lo = ctx.rank * n
        rows = block_rows(a_all.shape[0], rows)
        per_image = _lse_terms(a_all[lo:lo + n], b_all, s, lo, op, rows)
        per_text = _lse_terms(b_all[lo:lo + n], a_all, s, lo, op, rows)
        return (per_image.mean() + per_text.mean()) / 2
    a, b = l2n(image_features), l2n(text_features)
    rows = block_rows(n, rows)
    if rows >= n:  # one block: both directions from one matrix, as cross_entropy computes them
        logits = mm(a, b.T, op) * s
        return (_ce_terms(logits, 0).mean() + _ce_terms(logits.T, 0).mean()) / 2
    blocks = [_blocked(True, _clip_block, a[i:i + rows], b, s, i, op) for i in range(0, n, rows)]
    per_image = torch.cat([blk[0] for blk in blocks])
    diag = torch.cat([blk[1] for blk in blocks])
    # the columns' cross-entropy terms (M − L_jj) + log Σ_i exp(L_ij − M), merged over the blocks
    maxes = torch.stack([blk[2] for blk in blocks])
    col_max = maxes.amax(dim=0)
    col_sum = (torch.stack([blk[3] for blk in blocks]) * (maxes - col_max).exp()).sum(dim=0)
    per_text = (col_max - diag) + col_sum.log()
    return (per_image.mean() + per_text.mean()) / 2


def _siglip_block(a: Tensor, b: Tensor, s: Scalar, t: Scalar, lo: int, op) -> Tensor:
    """Σ over rows lo..lo+len(a) of the global matrix of log σ(y·(s·a bᵀ + t)); y = +1 at (k, lo+k)."""
    logits = mm(a, b.T, op) * s + t
    k = torch.arange(a.shape[0], device=a.device)
    positive = torch.arange(b.shape[0], device=a.device)[None, :] == (k + lo)[:, None]
    # the sign as a select, not a multiply by ±1: log σ(−z) of the negatives directly, as open_clip
    return F.logsigmoid(torch.where(positive, logits, -logits)).sum()


def siglip(image_features: Tensor, text_features: Tensor, logit_scale: Scalar, logit_bias: Scalar,
           ctx: Context = LOCAL, rows: Optional[int] = None) -> Tensor:
    """open_clip's SigLipLoss on the normalized rows; with ``ctx`` active, this rank's rows of the
    global matrix over the local N (open_clip's distributed SigLipLoss, every dist_impl)."""
    op = operand_dtype(image_features)
    dtype = compute_dtype(image_features.dtype)
    s, t = scalar(logit_scale, dtype), scalar(logit_bias, dtype)
    n = image_features.shape[0]
    a = l2n(image_features)
    b = l2n(ctx.gather(text_features))
    lo = ctx.rank * n
    rows = block_rows(b.shape[0], rows)
    many = rows < n
    total = sum(_blocked(many, _siglip_block, a[i:i + rows], b, s, t, lo + i, op) for i in range(0, n, rows))
    return -total / n
