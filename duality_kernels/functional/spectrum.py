"""Public spectral functions (docs/spec.md §7): singular values, RankMe, and the coding-rate
losses TCR (EMP-SSL), MCR² and MEC, each on the cheaper side of the duality.

Validation (docs/spec.md §6) and backend selection as in the other public functions. The torch
reference implements every one; Triton (ops/triton/spectral.py) all but mec_loss,
whose op contracts and descriptions (family "spectral": "auto" keeps torch) are here; a backend
that lacks a function raises BackendUnavailableError. ``side="auto"``: ``_cost.resolve_side``.
``gather_distributed=True`` (docs/spec.md §5): every rank computes the global batch's value from
all-gathered rows, or, for a dimension-side Gram, from the all-reduced D×D Gram when the cost
model prefers it (``distributed.strategy``); the backward sums over ranks, so DDP's averaged
gradients equal the single-process gradient on the global batch.

The log-determinant losses synchronize with the host once per factorization (a clear error instead
of NaN, see reference/spectrum.py) and MCR² once more for its class sizes.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from .. import _backend, _cost
from .._policy import autocast_off
from .. import _validation as V
from .. import distributed as _dist
from ..ops import registry
from ..ops._checks import OP_SIDES
from ..reference import spectrum as S

Tensor = torch.Tensor

__all__ = ["singular_values", "rankme", "coding_rate_loss", "mcr2_loss", "mec_loss"]


# ---- the ops' contracts (docs/spec.md §6), run by the public functions' checks and the ops' entries


def check_coding_rate(z, eps, side) -> None:
    """The coding_rate op: z (N, D), eps > 0, the resolved side."""
    V.check_tensor(z, "z")
    V.check_positive(eps, "eps")
    V.check_choice(side, "side", OP_SIDES)


def _check_int_list(values, name: str, length: int, lo: int, his) -> None:
    if not isinstance(values, (list, tuple)) or len(values) != length:
        raise TypeError(f"{name} must be a list of {length} ints, got {values!r}")
    for v, hi in zip(values, his):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not lo <= v <= hi:
            raise ValueError(f"{name} must hold ints in [{lo}, {hi}], got {v!r}")


def check_mcr2(z, index, shapes, counts, dims, eps, gamma, side) -> None:
    """The mcr2 op (ops/triton/spectral.py class_plan builds its arguments): ``index`` 1-D int64 on
    z's device, the batches' (classes, m) row indices (padding N; values not read), ``shapes`` their
    (classes, m) pairs, ``counts`` each class's rows (1..m), ``dims`` per batch whether its classes
    use the dimension side; eps > 0, gamma finite."""
    V.check_tensor(z, "z")
    if not isinstance(shapes, (list, tuple)) or len(shapes) % 2:
        raise TypeError(f"shapes must be a list of (classes, rows) pairs, flattened; got {shapes!r}")
    _check_int_list(shapes, "shapes", len(shapes), 1, [z.shape[0]] * len(shapes))
    pairs = list(zip(shapes[::2], shapes[1::2]))
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 1 \
            or index.numel() != sum(k * m for k, m in pairs) or index.device != z.device:
        raise ValueError(f"index must be a 1-D int64 tensor of {sum(k * m for k, m in pairs)} row indices on "
                         f"{z.device}, got {index!r:.80}")
    _check_int_list(counts, "counts", sum(k for k, _ in pairs), 1, [m for k, m in pairs for _ in range(k)])
    if not isinstance(dims, (list, tuple)) or len(dims) != len(pairs) or not all(isinstance(v, bool) for v in dims):
        raise TypeError(f"dims must be a list of {len(pairs)} bools (one per batch), got {dims!r}")
    V.check_positive(eps, "eps")
    V.check_finite(gamma, "gamma")
    V.check_choice(side, "side", OP_SIDES)


def check_spectrum(z, side, eps, rank, vectors) -> None:
    """The singular_values and rankme ops: z (N, D), the resolved side, eps > 0 for RankMe (``rank``),
    ``vectors``: whether the eigenvectors are kept for a backward."""
    V.check_tensor(z, "z")
    V.check_choice(side, "side", OP_SIDES)
    V.check_flag(rank, "rank")
    V.check_flag(vectors, "vectors")
    if rank:
        V.check_positive(eps, "eps")


registry.describe(
    registry.OpDef("singular_values", ("singular_values",), "spectral", check_spectrum, 1, "SingularValuesFunction",
                   "singular values (docs/spec.md §7.6): ``apply(z, side, 0.0, False, vectors)`` -> (σ,); "
                   "vectors=True keeps the eigenvectors a backward needs."),
    registry.OpDef("rankme", ("rankme",), "spectral", check_spectrum, 1, "RankMeFunction",
                   "RankMe (docs/spec.md §7.6): ``apply(z, side, eps, True, vectors)`` -> (RankMe,)."),
    registry.OpDef("coding_rate", ("coding_rate_loss",), "spectral", check_coding_rate, 1, "CodingRateFunction",
                   "TCR (docs/spec.md §7.7): ``apply(z, eps, side)`` -> (loss,); side \"sample\" or \"dimension\"."),
    registry.OpDef("mcr2", ("mcr2_loss",), "spectral", check_mcr2, 3, "MCR2Function",
                   "MCR² (docs/spec.md §7.7): ``apply(z, index, shapes, counts, dims, eps, gamma, side)`` -> "
                   "(loss, R, Rc); (index, shapes, counts, dims) from "
                   "``class_plan(labels, num_classes, D, class_side, device)``."),
)


def _setup(op: str, z: Tensor, side, gather_distributed, backend):
    """(ctx, resolved side, strategy, backend) after the checks every spectral function shares."""
    side = V.check_side(side)
    ctx = _dist.context(gather_distributed, z, op)
    be = _backend.resolve(backend, op, z, ctx.active)
    n, d = z.shape
    return ctx, _cost.resolve_side(side, ctx.world * n, d), _dist.strategy(ctx, n, d), be


def singular_values(z: Tensor, *, side: str = "auto", gather_distributed: bool = False,
                    backend: str = "auto") -> Tensor:
    """The min(N, D) singular values of z (N, D), descending, as sqrt of the eigenvalues of the
    smaller Gram (clamped at 0), accumulated in float32 or float64, never TF32.

    When the spectrum spans more than a factor 4, the Gram is accumulated in float64 so that
    small values are as accurate as an SVD's (reference/spectrum.py). Differentiable:
    dσ_k/dz = u_k v_kᵀ (0 where σ_k = 0).
    """
    V.check_tensor(z, "z")
    ctx, s, strat, be = _setup("singular_values", z, side, gather_distributed, backend)
    with autocast_off():  # docs/design.md convention 18: a bf16-autocast Gram would cost ~3 digits
        if be == "triton":  # the global batch from the all-gathered rows (the reference's "gather")
            from ..ops.triton import spectral as T

            return T.singular_values(ctx.gather(z), s)
        return S.singular_values(z, s, ctx, strat)


def rankme(z: Tensor, eps: float = 1e-7, *, side: str = "auto", gather_distributed: bool = False,
           backend: str = "auto") -> Tensor:
    """RankMe (Garrido et al., ICML 2023), the effective rank of the embeddings: exp(−Σ_k p_k log p_k),
    p_k = σ_k / Σ_j σ_j + eps over exactly min(N, D) singular values. A 0-dim tensor.

    The paper computes it on 25,600 embeddings; ``RankMeMonitor`` accumulates them across steps.
    """
    V.check_tensor(z, "z")
    eps = V.check_positive(eps, "eps")
    ctx, s, strat, be = _setup("rankme", z, side, gather_distributed, backend)
    with autocast_off():
        if be == "triton":
            from ..ops.triton import spectral as T

            return T.rankme(ctx.gather(z), eps, s)
        return S.rankme(z, eps, s, ctx, strat)


def coding_rate_loss(z: Tensor, eps: float = 0.2, *, side: str = "auto", gather_distributed: bool = False,
                     backend: str = "auto") -> Tensor:
    """EMP-SSL's total coding rate loss, −½ logdet(I_D + D/(N·eps) zᵀz) = −½ logdet(I_N + D/(N·eps) z zᵀ)
    (Sylvester), equal to the official ``TotalCodingRate(eps)(z)``: eps as in its code, not squared;
    0.2 is its default. EMP-SSL calls it once per patch chunk (N = 100, D = 1024): a 100×100
    factorization here instead of the official 1024×1024."""
    V.check_tensor(z, "z")
    eps = V.check_positive(eps, "eps")
    ctx, s, strat, be = _setup("coding_rate_loss", z, side, gather_distributed, backend)
    with autocast_off():
        if be == "triton":  # the global batch from the all-gathered rows (the reference's "gather")
            from ..ops.triton import spectral as T

            return T.coding_rate(ctx.gather(z), eps, s)
        return S.coding_rate(z, eps, s, ctx, strat)


def _check_labels(labels, z: Tensor, num_classes) -> Tensor:
    """labels: a 1-D integer tensor of N class indices in [0, num_classes); returns them on the CPU
    (the only host transfer of the check; MCR²'s class sizes need them there anyway)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels must have shape ({z.shape[0]},) (one per row of z), got {tuple(labels.shape)}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"num_classes must be an int or None, got {num_classes!r} ({type(num_classes).__name__})")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    lab = labels.detach().to("cpu", torch.int64)
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0:
        raise ValueError(f"labels must be >= 0 (class indices), got a label {lo}")
    if num_classes is not None and hi >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got a label {hi}")
    return lab


def mcr2_loss(z: Tensor, labels: Tensor, eps: float = 0.5, gamma: float = 1.0, num_classes: Optional[int] = None,
              *, return_terms: bool = False, side: str = "auto", gather_distributed: bool = False,
              backend: str = "auto"):
    """Maximal coding rate reduction (Yu et al. 2020): the official
    ``MaximalCodingRateReduction(eps, gamma)(z, labels)`` total loss −R + γ·Rc with
    R = ½ logdet(I + D/(N·eps) zᵀz) and Rc = Σ_c (n_c+1e-8)/(2N) logdet(I + D/((n_c+1e-8)·eps) z_cᵀz_c).

    Each class term is a logdet of size min(n_c, D) ("auto"), classes batched by size; an empty
    class (num_classes above the labels present) contributes 0, as officially. ``num_classes=None``
    is max(labels) + 1. terms: "R" and "Rc". With gather_distributed labels are gathered with rows.
    """
    V.check_tensor(z, "z")
    eps = V.check_positive(eps, "eps")
    gamma = V.check_finite(gamma, "gamma")
    V.check_flag(return_terms, "return_terms")
    lab = _check_labels(labels, z, num_classes)
    side_arg = V.check_side(side)
    ctx, s, _, be = _setup("mcr2_loss", z, side, gather_distributed, backend)
    k = None if num_classes is None else int(num_classes)
    with autocast_off():
        if be == "triton":
            from ..ops.triton import spectral as T

            lab = S._gather_labels(lab, ctx, z.device).cpu()
            k = int(lab.max()) + 1 if k is None else k
            loss, terms = T.mcr2(ctx.gather(z), lab, eps, gamma, k, s, side_arg)
        else:
            loss, terms = S.mcr2(z, lab, eps, gamma, k, s, side_arg, ctx)
    return (loss, terms) if return_terms else loss


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"order must be an int, got {order!r} ({type(order).__name__})")
    if order < 1:
        raise ValueError(f"order must be >= 1 (terms of the Taylor series of the matrix logarithm), got {order}")
    return int(order)


def mec_loss(z1: Tensor, z2: Tensor, eps_sq: float = 64.0, order: int = 4, *, lamda_inv: Optional[float] = None,
             side: str = "auto", gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """Maximum entropy coding (Liu et al. 2022, xinliu20/MEC), symmetric form:
    −λ⁻¹·[f(z1, z2) + f(z2, z1)]/(2N), f(p, z) = tr Σ_{k=1}^{order} (−1)^{k+1} C^k/k, C = p̂ẑᵀ/λ⁻¹ on
    L2-normalized rows, λ⁻¹ = N·eps_sq/D unless ``lamda_inv`` is given (N the global batch).

    The trace is taken on the D×D side when D < N (tr((p̂ẑᵀ)^k) = tr((ẑᵀp̂)^k)). Gradients reach
    both inputs; MEC's step with predictors p and a momentum teacher z is
    ½[mec_loss(p1, z2.detach()) + mec_loss(p2, z1.detach())] (each call: −λ⁻¹ f(p, z)/N).
    """
    V.check_pair(z1, z2)
    eps_sq = V.check_positive(eps_sq, "eps_sq")
    order = _check_order(order)
    if lamda_inv is not None:
        lamda_inv = V.check_positive(lamda_inv, "lamda_inv")
    ctx, s, strat, _ = _setup("mec_loss", z1, side, gather_distributed, backend)
    with autocast_off():
        return S.mec(z1, z2, eps_sq, order, lamda_inv, s, ctx, strat)
