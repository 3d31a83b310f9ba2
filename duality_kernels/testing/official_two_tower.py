"""Eager transcriptions of open_clip's ClipLoss and SigLipLoss forward math (one process, and the
distributed forms written out on the concatenated batch), independent of ``duality_kernels``.

As open_clip (``open_clip/loss.py``) computes them: the full N×N logits ``logit_scale * a @ b.T``
(the scale multiplies the left operand, as Python's left-to-right ``*``/``@`` does there), the
bias added to them, labels built as a matrix, torch's cross-entropy / log-sigmoid. The features
are L2-normalized first with ``F.normalize(x, dim=-1)``, as open_clip's models do before the loss.
Every function computes in its inputs' dtype, keeps autograd and validates nothing: called with
float64 inputs it is the test oracle; in the test dtype it is "the eager code" of the accuracy rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _normalized(image_features, text_features):
    return F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)


def clip_official(image_features, text_features, logit_scale):
    """open_clip ClipLoss (world_size=1): (CE(logits_per_image, arange) + CE(logits_per_text, arange)) / 2."""
    a, b = _normalized(image_features, text_features)
    logits_per_image = logit_scale * a @ b.T
    logits_per_text = logit_scale * b @ a.T
    labels = torch.arange(logits_per_image.shape[0], device=a.device, dtype=torch.long)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_official(image_features, text_features, logit_scale, logit_bias):
    """open_clip SigLipLoss (world_size=1): −Σ logsigmoid(labels ⊙ logits) / N, labels = 2I − 1."""
    a, b = _normalized(image_features, text_features)
    logits = logit_scale * a @ b.T
    if logit_bias is not None:
        logits = logits + logit_bias
    n = a.shape[0]
    labels = 2 * torch.eye(n, device=a.device, dtype=a.dtype) - torch.ones((n, n), device=a.device, dtype=a.dtype)
    return -F.logsigmoid(labels * logits).sum() / n


def clip_local_official(image_features, text_features, logit_scale, rank, world):
    """open_clip ClipLoss(local_loss=True, gather_with_grad=True) on rank ``rank`` of ``world``, written
    on the concatenated batch: this rank's rows against all columns, labels offset by rank·N."""
    a, b = _normalized(image_features, text_features)
    n = a.shape[0] // world
    own = slice(rank * n, (rank + 1) * n)
    logits_per_image = logit_scale * a[own] @ b.T
    logits_per_text = logit_scale * b[own] @ a.T
    labels = torch.arange(n, device=a.device, dtype=torch.long) + n * rank
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_local_official(image_features, text_features, logit_scale, logit_bias, rank, world):
    """open_clip SigLipLoss on rank ``rank`` of ``world`` (dist_impl="gather"), on the concatenated
    batch: the positive block with itself plus the negative-only blocks against every other rank."""
    a, b = _normalized(image_features, text_features)
    n = a.shape[0] // world
    mine = a[rank * n:(rank + 1) * n]
    loss = 0
    for j in range(world):
        logits = logit_scale * mine @ b[j * n:(j + 1) * n].T + logit_bias
        labels = -torch.ones((n, n), device=a.device, dtype=a.dtype)
        if j == rank:
            labels = 2 * torch.eye(n, device=a.device, dtype=a.dtype) + labels
        loss = loss + -F.logsigmoid(labels * logits).sum() / n
    return loss
