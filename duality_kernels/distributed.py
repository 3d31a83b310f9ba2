"""gather_distributed (docs/spec.md §5): autograd-correct collectives and the per-rank context.

With W ranks of N rows each, the mean over ranks of the returned losses equals the single-process
loss on the concatenated batch, and after DDP's 1/W averaging the gradients equal its gradient:
every collective's backward sums the incoming gradients over ranks, and a rank's loss is its share
of the global loss times W (the covariance family computes the global terms on every rank, the Gram
family the terms of its own anchors). Inputs are checked across ranks first (a mismatch raises on
every rank), and the covariance family gathers rows or all-reduces D×D statistics, whichever the
cost model prefers (``strategy``; DUALITY_KERNELS_DIST_STRATEGY=gather|allreduce forces one).
docs/design.md, "Distributed forms", has the reasoning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

STRATEGY_ENV = "DUALITY_KERNELS_DIST_STRATEGY"
_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def is_supported() -> bool:
    return torch.distributed.is_available()


def check_gather(gather_distributed) -> bool:
    if not isinstance(gather_distributed, bool):
        raise TypeError(
            f"gather_distributed must be a bool, got {gather_distributed!r} ({type(gather_distributed).__name__})"
        )
    if gather_distributed and not is_supported():
        raise ValueError(
            "gather_distributed=True needs torch.distributed, which this torch build does not have "
            "(torch.distributed.is_available() is False)"
        )
    return gather_distributed


def world_size() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _backend_name() -> str:
    return str(torch.distributed.get_backend())


# --------------------------------------------------------------------------------------------
# autograd-aware collectives (backward sums over ranks)


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0; backward: the sum over ranks of the gradients of this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        dist = torch.distributed
        w = dist.get_world_size()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(w)]
        dist.all_gather(parts, x)  # the list form: every backend, every torch version we support
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        dist = torch.distributed
        grad = grad.contiguous()
        n = ctx.rows
        if _backend_name() == "nccl":
            out = grad.new_empty((n,) + tuple(grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out
        # gloo has no reduce-scatter: all-reduce the whole gradient, keep this rank's slice
        grad = grad.clone()
        dist.all_reduce(grad)
        r = dist.get_rank()
        return grad[r * n:(r + 1) * n]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


# Functional collectives trace under torch.compile; their gather's backward is a reduce-scatter.
# torch 2.14 renamed all_gather_tensor_autograd (deprecated there) to all_gather_single_autograd.
try:
    import torch.distributed._functional_collectives as _fc

    _fc_gather = getattr(_fc, "all_gather_single_autograd", None) or getattr(_fc, "all_gather_tensor_autograd", None)
except ImportError:  # pragma: no cover - torch without distributed support
    _fc_gather = None


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, rank order; the backward sums each slice's gradient over ranks."""
    if _fc_gather is not None:
        return _ContiguousGrad.apply(_fc_gather(x.contiguous(), 0, torch.distributed.group.WORLD))
    return _GatherRows.apply(x)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: torch 2.11's functional all-gather
    backward (a reduce-scatter) rejects a non-contiguous one, e.g. the expanded gradient of a sum."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks; the backward sums the gradients over ranks."""
    if _fc_gather is not None:
        # a gather + sum: W·|x| traffic instead of |x|, paid only on the small D×D side
        return gather_rows(x[None]).sum(dim=0)
    return _AllReduceSum.apply(x)


# --------------------------------------------------------------------------------------------
# the per-call context


@dataclass(frozen=True)
class Context:
    """rank and world size of a call; W = 1 without a group or without gather_distributed."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return gather_rows(x) if self.active else x

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(x) if self.active else x


LOCAL = Context()


def check_consistent(op: str, z: torch.Tensor, meta, describe, what: str) -> None:
    """``meta`` (a list of ints describing this rank's call, ``z`` its first input) equal on every
    rank, by one small all-gather; otherwise a ValueError listing ``describe(row)`` per rank: "{op}
    (gather_distributed=True) needs {what} on every rank (equal per-rank batch sizes)"."""
    dist = torch.distributed
    w = dist.get_world_size()
    dev = z.device if _backend_name() == "nccl" else torch.device("cpu")
    mine = torch.tensor(meta, dtype=torch.int64, device=dev)
    parts = [torch.empty_like(mine) for _ in range(w)]
    try:
        dist.all_gather(parts, mine)
    except RuntimeError as err:  # a timeout (the group's) or a peer that left
        raise RuntimeError(
            f"{op}(gather_distributed=True): the input check across {w} ranks failed; every rank must "
            f"call the loss with gather_distributed=True at the same point. Cause: {err}"
        ) from err
    everyone = torch.stack(parts).cpu()
    if not bool((everyone == mine.cpu()).all()):
        rows = [f"rank {r}: {describe(row)}" for r, row in enumerate(everyone.tolist())]
        raise ValueError(f"{op}(gather_distributed=True) needs {what} on every rank (equal per-rank batch sizes); "
                         "got " + "; ".join(rows))


def tensor_meta(z: torch.Tensor) -> list:
    """z's shape, dtype code and whether it is on CUDA, for ``check_consistent``."""
    return [*z.shape, _DTYPE_CODES[z.dtype], int(z.device.type == "cuda")]


def meta_text(shape, code: int, on_cuda: int) -> str:
    """A ``tensor_meta`` row as text: "(N, D), dtype, device type"."""
    names = {v: k for k, v in _DTYPE_CODES.items()}
    return f"({', '.join(map(str, shape))}), {names[int(code)]}, {'cuda' if on_cuda else 'cpu'}"


def _check_consistent(z: torch.Tensor, op: str) -> None:
    """Shapes, dtype and device type equal on every rank."""
    check_consistent(op, z, tensor_meta(z), lambda row: f"shape {meta_text(row[:2], *row[2:])}",
                     "the same input shape, dtype and device type")


def context(gather_distributed: bool, z: torch.Tensor, op: str) -> Context:
    """Validate the flag and, with a group of several ranks, the inputs across ranks."""
    if not check_gather(gather_distributed):
        return LOCAL
    w = world_size()
    if w == 1:
        return LOCAL
    _check_consistent(z, op)
    return Context(rank=torch.distributed.get_rank(), world=w)


def strategy(ctx: Context, n_local: int, d: int) -> str:
    """'gather' or 'allreduce' for the covariance family (see the module docstring)."""
    forced = os.environ.get(STRATEGY_ENV, "").strip()
    if forced:
        if forced not in ("gather", "allreduce"):
            raise ValueError(f"environment variable {STRATEGY_ENV} must be 'gather' or 'allreduce'; got {forced!r}")
        return forced
    from ._cost import cheaper_side

    return "allreduce" if cheaper_side(ctx.world * n_local, d) == "dimension" else "gather"


def merged_moments(ctx: Context, mean: torch.Tensor, m2: torch.Tensor, n_local: int,
                   gram: Optional[torch.Tensor] = None):
    """Global (mean, m2[, centered Gram]) from each rank's local ones (Chan's parallel formulas).

    mean, m2: this rank's column mean and centered sum of squares; gram: its centered xᵀx (D×D).
    Returns the global mean, m2 and centered Gram of the W·N rows, differentiable.
    """
    means = ctx.gather(mean[None])           # (W, D)
    m2s = ctx.gather(m2[None])               # (W, D)
    g_mean = means.mean(dim=0)
    delta = means - g_mean                   # (W, D)
    g_m2 = m2s.sum(dim=0) + n_local * (delta * delta).sum(dim=0)
    if gram is None:
        return g_mean, g_m2, None
    g_gram = ctx.all_reduce(gram) + n_local * (delta.T @ delta)
    return g_mean, g_m2, g_gram
