"""Public SupCon, MoCo and hard-negative NT-Xent (docs/spec.md §7), and the lightly drop-in helpers.

Validate first (docs/spec.md §6), then pick the backend through ``_backend.resolve``: the torch
reference (``reference/supervised.py``), or the Triton ops (``ops/triton/lse/supervised.py``) when
backend="triton" is asked for ("auto" keeps torch: the kernels are untested on GPU); "cuda" raises
BackendUnavailableError saying so. The helpers at the end
(memory-bank NT-Xent, weighted DCL, VICReg on (batch, ..., dim) inputs) serve the lightly-compatible
modules; docs/lightly.md lists where they deliberately differ from lightly.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import _backend
from .._policy import public
from .. import _validation as V
from .. import distributed as _dist
from ..ops import registry
from ..reference import supervised as RS
from . import _out, dcl_loss, vicreg_loss

Tensor = torch.Tensor

__all__ = ["supcon_loss", "moco_loss", "hard_negative_ntxent_loss"]


# --------------------------------------------------------------------------------------------
# the ops: each one's contract (docs/spec.md §6, run by the public function and by the compiled
# entry points) and its description (ops/registry.py); docs/adding_an_op.md

_SUPERVISED = "supervised"  # not an "auto" row (_cost.auto_order): "auto" keeps torch
CONTRAST_MODES = ("all", "one")
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_features(features) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError("features must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got dtype {features.dtype}")
    if features.dim() != 3:
        raise ValueError(f"features must be 3-D [batch, views, dim] (as SupContrast's), got shape "
                         f"{tuple(features.shape)} ({features.dim()}-D)")
    b, v, d = features.shape
    if b < 1 or v < 1 or d < 1:
        raise ValueError(f"features needs at least one sample, view and feature, got shape {tuple(features.shape)}")
    if b * v < 2:
        raise ValueError(f"features needs at least 2 rows (batch·views) so that every anchor has a row to "
                         f"contrast with, got shape {tuple(features.shape)}")


def _check_labels(labels, features: Tensor) -> None:
    """Integer [B] labels on the features' device, none negative. The sign check reads the values:
    one host-device synchronization for CUDA labels (the reference's class count needs one anyway)."""
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class ids or None, got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
    b = features.shape[0]
    if labels.dim() != 1 or labels.shape[0] != b:
        raise ValueError(f"labels must have shape ({b},) (one class id per sample of features "
                         f"{tuple(features.shape)}), got shape {tuple(labels.shape)}")
    if labels.device != features.device:
        raise ValueError(f"labels must be on the features' device, got labels on {labels.device} and features "
                         f"on {features.device}")
    # a value check reads the labels (a host sync); torch.compile's trace and meta tensors cannot
    if labels.numel() and labels.device.type != "meta" and not torch.compiler.is_compiling() \
            and bool((labels < 0).any()):
        raise ValueError(f"labels must be >= 0, got a minimum of {int(labels.min())}")


def _check_rows(x, name: str, min_rows: int = 1) -> None:
    V.check_tensor(x, name, min_rows=min_rows)


def _check_same(a: Tensor, b: Tensor, na: str, nb: str, what: str = "shape") -> None:
    if what == "shape" and a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {na} {tuple(a.shape)} and {nb} {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"{na} and {nb} must have the same dtype, got {na} {a.dtype} and {nb} {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{na} and {nb} must be on the same device, got {na} on {a.device} and {nb} on {b.device}")


def _check_moco(query, key, queue) -> None:
    _check_rows(query, "query")
    _check_rows(key, "key")
    _check_same(query, key, "query", "key")
    _check_rows(queue, "queue")
    if queue.shape[1] != query.shape[1]:
        raise ValueError(f"queue must have the queries' dimension D={query.shape[1]} (one key per row, [K, D]), "
                         f"got queue of shape {tuple(queue.shape)}")
    _check_same(query, queue, "query", "queue", what="dtype")


def check_tau_plus(tau_plus) -> float:
    t = V.check_finite(tau_plus, "tau_plus")
    if not 0.0 <= t < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1) (a class prior), got {tau_plus!r}")
    return t


@registry.op("supcon", ("supcon_loss",), _SUPERVISED, 2, "SupConFunction",
             "SupCon (docs/spec.md §7): ``apply(features, labels_or_None, temperature, base_temperature, "
             "contrast_mode)`` -> (loss, anchors_without_positive).")
def check_supcon(features, labels, temperature, base_temperature, contrast_mode) -> None:
    _check_features(features)
    _check_labels(labels, features)
    V.check_positive(temperature, "temperature")
    V.check_positive(base_temperature, "base_temperature")
    V.check_choice(contrast_mode, "contrast_mode", CONTRAST_MODES)


@registry.op("moco", ("moco_loss",), _SUPERVISED, 1, "MoCoFunction",
             "MoCo with a queue (docs/spec.md §7): ``apply(query, key, queue, temperature, reduction, "
             "normalize_queue)`` -> (loss,).")
def check_moco(query, key, queue, temperature, reduction, normalize_queue) -> None:
    _check_moco(query, key, queue)
    V.check_positive(temperature, "temperature")
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    V.check_flag(normalize_queue, "normalize_queue")


@registry.op("hard_negative_ntxent", ("hard_negative_ntxent_loss",), _SUPERVISED, 1, "HardNegativeNTXentFunction",
             "Hard-negative NT-Xent (docs/spec.md §7): ``apply(z1, z2, temperature, tau_plus, beta)`` -> (loss,).")
def check_hard_negative_ntxent(z1, z2, temperature, tau_plus, beta) -> None:
    V.check_pair(z1, z2, min_rows=2, what="every anchor needs a negative: M = 2N - 2 > 0")
    V.check_positive(temperature, "temperature")
    check_tau_plus(tau_plus)
    V.check_finite(beta, "beta")



def _supcon_context(gather_distributed, features: Tensor, labels: Optional[Tensor]) -> _dist.Context:
    """distributed.context for 3-D features: B, V, D, dtype, device type and whether labels were given
    must agree on every rank (one small all-gather), so a mismatch raises instead of hanging."""
    if not _dist.check_gather(gather_distributed) or _dist.world_size() == 1:
        return _dist.LOCAL
    _dist.check_consistent(
        "supcon_loss", features, _dist.tensor_meta(features) + [int(labels is not None)],
        lambda row: f"features {_dist.meta_text(row[:3], *row[3:5])}, labels {'given' if row[5] else 'None'}",
        "the same features shape, dtype, device type and labels-or-None")
    dist = torch.distributed
    w = dist.get_world_size()
    return _dist.Context(rank=dist.get_rank(), world=w)


# --------------------------------------------------------------------------------------------
# public functions


@public
def supcon_loss(features: Tensor, labels: Optional[Tensor] = None, temperature: float = 0.07,
                base_temperature: float = 0.07, contrast_mode: str = "all", *, gather_distributed: bool = False,
                return_terms: bool = False, backend: str = "auto"):
    """Supervised contrastive loss (Khosla et al. 2020), equal to SupContrast's ``SupConLoss`` on
    L2-normalized features (docs/spec.md §7).

    features [B, V, D] (V ≥ 1 views, B·V ≥ 2); labels [B] integer class ids ≥ 0, or None (then only the
    other views of the same sample are positives: SimCLR). contrast_mode "all" (every view anchors)
    or "one" (view 0 anchors, all views are contrasted). The positive sum of an anchor a of class c is
    a·(S_c − a) from the class sums S_c, with no (V·B)² mask. An anchor without a positive (a singleton
    class with V = 1, or V = 1 without labels) contributes 0 and still counts in the mean, as in
    SupContrast's code. ``return_terms=True`` returns ``(loss, terms)`` with
    terms["anchors_without_positive"], an int64 0-dim tensor: how many of this call's anchors (this
    rank's, with gather_distributed) had no positive.
    """
    _check_features(features)
    _check_labels(labels, features)
    t = V.check_positive(temperature, "temperature")
    bt = V.check_positive(base_temperature, "base_temperature")
    V.check_choice(contrast_mode, "contrast_mode", CONTRAST_MODES)
    V.check_flag(return_terms, "return_terms")
    ctx = _supcon_context(gather_distributed, features, labels)
    be = _backend.resolve(backend, "supcon_loss", features[:, 0], ctx.active)  # a 2-D view: the rules read (N, D)
    if be == "triton":
        from ..ops.triton.lse import supervised as TS

        if ctx.active:
            loss, none = TS.supcon_gathered(ctx, features, labels, t, bt, contrast_mode)
        else:
            loss, none = TS.supcon(features, labels, t, bt, contrast_mode)
        return _out(loss, {"anchors_without_positive": none}, return_terms)
    loss, terms = RS.supcon(features, labels, t, bt, contrast_mode, ctx=ctx)
    return _out(loss, terms, return_terms)


@public
def moco_loss(query: Tensor, key: Tensor, queue: Tensor, temperature: float = 0.2, *,
              backend: str = "auto") -> Tensor:
    """MoCo's loss with a queue of negatives (He et al. 2020; solo-learn's ``moco_loss_func`` with the
    queue stored as rows), docs/spec.md §7: the mean over the N queries of the cross-entropy of
    [q̂·k̂, q̂·Q̂ᵀ]/T against target 0. query, key [N, D]; queue [K, D], one key per row, same dtype and
    device. All rows are L2-normalized inside; no gradient flows into the queue (the key gets one
    when it requires it).
    """
    return _moco(query, key, queue, temperature, "mean", backend)


def _moco(query, key, queue, temperature, reduction, backend, normalize_queue=True) -> Tensor:
    _check_moco(query, key, queue)
    t = V.check_positive(temperature, "temperature")
    if _backend.resolve(backend, "moco_loss", query) == "triton":
        from ..ops.triton.lse import supervised as TS

        return TS.moco(query, key, queue, t, reduction, normalize_queue)
    return RS.moco(query, key, queue, t, reduction, normalize_queue=normalize_queue)


@public
def hard_negative_ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, tau_plus: float = 0.1,
                              beta: float = 1.0, *, gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """NT-Xent with hard-negative sampling (Robinson et al. 2021), equal to joshr17/HCL's ``criterion``
    with estimator "hard" on L2-normalized rows (docs/spec.md §7).

    Over the M = 2N − 2 negatives of each of the 2N anchors: importance weights e^{β s}, the debiasing
    with the positive-class prior ``tau_plus`` ∈ [0, 1), and the clamp of the negative term at
    M·e^{−1/t}; the mean over anchors. ``beta=0`` is the debiased contrastive loss of Chuang et al.
    2020; ``beta`` may be any finite number. With gather_distributed, M counts the global batch.
    """
    V.check_pair(z1, z2, min_rows=2, what="every anchor needs a negative: M = 2N - 2 > 0")
    t = V.check_positive(temperature, "temperature")
    tp = check_tau_plus(tau_plus)
    b = V.check_finite(beta, "beta")
    ctx = _dist.context(gather_distributed, z1, "hard_negative_ntxent_loss")
    if _backend.resolve(backend, "hard_negative_ntxent_loss", z1, ctx.active) == "triton":
        from ..ops.triton.lse import supervised as TS

        if ctx.active:
            return TS.hard_negative_gathered(ctx, z1, z2, t, tp, b)
        return TS.hard_negative_ntxent(z1, z2, t, tp, b)
    return RS.hard_negative_ntxent(z1, z2, t, tp, b, ctx=ctx)


# --------------------------------------------------------------------------------------------
# lightly drop-in helpers (modules/__init__.py)


def memory_bank_ntxent(out0: Tensor, out1: Tensor, bank: Tensor, temperature: float, reduction: str,
                       backend: str) -> Tensor:
    """lightly's NT-Xent with a memory bank: CE([n0·n1, n0·bankᵀ]/T, 0), the MoCo loss with the bank as
    the queue (cast to the inputs' dtype and device; its rows were normalized when stored and are
    used as they are, as lightly does)."""
    # a copy: the module enqueues into the bank in place after this, and the backward reads it
    bank = bank.detach().to(device=out0.device, dtype=out0.dtype, copy=True)
    return _moco(out0, out1, bank, temperature, reduction, backend, normalize_queue=False)


def von_mises_fisher_weights(out0: Tensor, out1: Tensor, sigma: float = 0.5) -> Tensor:
    """DCLW's weights (lightly's ``negative_mises_fisher_weights``): 2 − N·softmax(out0_i·out1_i/σ), no gradient."""
    return RS.von_mises_fisher_weights(out0, out1, sigma)


def weighted_dcl_loss(out0: Tensor, out1: Tensor, temperature: float, weight_fn: Callable[[Tensor, Tensor], Tensor],
                      similarity: str = "dot", reduction: str = "mean", *, gather_distributed: bool = False,
                      backend: str = "auto") -> Tensor:
    """lightly's DCLLoss(weight_fn=...): DCL whose positive term of anchor i is scaled by
    weight_fn(n0, n1)_i (z1's anchors) or weight_fn(n1, n0)_i (z2's), n = the local L2-normalized rows."""
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    if not callable(weight_fn):
        raise TypeError(f"weight_fn must be a callable (out0, out1) -> weights, got {weight_fn!r}")
    terms = dcl_loss(out0, out1, temperature, similarity, "none", gather_distributed=gather_distributed,
                     backend=backend)
    n = out0.shape[0]

    def checked(a, b):
        w = weight_fn(a, b)
        if not isinstance(w, torch.Tensor) or w.dim() > 1 or (w.dim() == 1 and w.shape[0] not in (1, n)):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"weight_fn must return a tensor of shape ({n},) (one weight per sample), got {got}")
        return w

    terms = RS.weighted_dcl_terms(terms, out0, out1, temperature, checked)
    if reduction == "mean":
        return terms.mean()
    return terms.sum() if reduction == "sum" else terms


def vicreg_positions(z_a: Tensor, z_b: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                     gamma: float, eps: float, *, side: str = "auto", gather_distributed: bool = False,
                     return_terms: bool = False, backend: str = "auto"):
    """lightly's VICReg on (batch, ..., dim) inputs: the mean over the middle positions p of VICReg on
    the (batch, dim) slices z[:, p]. (Invariance and variance are means over all entries, equal to the
    mean of the per-position ones; the covariance is lightly's per-position D×D mean.)"""
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() < 2:
            raise ValueError(f"{name} must have shape (batch, ..., dim), got shape {tuple(z.shape)}")
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape, got z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)}")
    b, d = z_a.shape[0], z_a.shape[-1]
    a3, b3 = z_a.reshape(b, -1, d), z_b.reshape(b, -1, d)
    positions = a3.shape[1]
    if positions == 0:
        raise ValueError(f"z_a has no positions between batch and dim, got shape {tuple(z_a.shape)}")
    losses, terms = [], {}
    for p in range(positions):
        loss, t = vicreg_loss(a3[:, p], b3[:, p], inv_weight, var_weight, cov_weight, gamma, eps, side=side,
                              gather_distributed=gather_distributed, return_terms=True, backend=backend)
        losses.append(loss)
        for k, v in t.items():
            terms.setdefault(k, []).append(v)
    loss = torch.stack(losses).mean()
    return _out(loss, {k: torch.stack(v).mean() for k, v in terms.items()}, return_terms)
