"""nn.Module wrappers of the spectral losses, and ``RankMeMonitor`` for training loops.

Arguments are checked at construction (docs/spec.md §6) and passed to the functions of
``functional/spectrum.py`` unchanged.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .. import _backend
from .. import _validation as V
from .. import distributed as _dist
from ..functional import spectrum as F
from ._base import _Loss

__all__ = ["CodingRateLoss", "MCR2Loss", "MECLoss", "RankMeMonitor"]


class _SpectralLoss(_Loss):
    def __init__(self, side: str, gather_distributed: bool, backend: str):
        side = V.check_side(side)
        super().__init__(gather_distributed, backend)
        self.side = side

    def _kw(self) -> dict:
        return dict(side=self.side, gather_distributed=self.gather_distributed, backend=self.backend)


class CodingRateLoss(_SpectralLoss):
    """EMP-SSL's total coding rate loss −½ logdet(I + D/(N·eps) zᵀz) (``coding_rate_loss``)."""

    def __init__(self, eps: float = 0.2, *, side: str = "auto", gather_distributed: bool = False,
                 backend: str = "auto"):
        super().__init__(side, gather_distributed, backend)
        self.eps = V.check_positive(eps, "eps")

    def forward(self, z):
        return F.coding_rate_loss(z, self.eps, **self._kw())


class MCR2Loss(_SpectralLoss):
    """Maximal coding rate reduction −R + γ·Rc (``mcr2_loss``); forward(z, labels)."""

    def __init__(self, eps: float = 0.5, gamma: float = 1.0, num_classes: Optional[int] = None, *,
                 return_terms: bool = False, side: str = "auto", gather_distributed: bool = False,
                 backend: str = "auto"):
        super().__init__(side, gather_distributed, backend)
        self.eps = V.check_positive(eps, "eps")
        self.gamma = V.check_finite(gamma, "gamma")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise TypeError(f"num_classes must be an int or None, got {num_classes!r} ({type(num_classes).__name__})")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.return_terms = V.check_flag(return_terms, "return_terms")

    def forward(self, z, labels):
        return F.mcr2_loss(z, labels, self.eps, self.gamma, self.num_classes, return_terms=self.return_terms,
                           **self._kw())


class MECLoss(_SpectralLoss):
    """Maximum entropy coding, symmetric form (``mec_loss``); forward(z1, z2)."""

    def __init__(self, eps_sq: float = 64.0, order: int = 4, *, lamda_inv: Optional[float] = None,
                 side: str = "auto", gather_distributed: bool = False, backend: str = "auto"):
        super().__init__(side, gather_distributed, backend)
        self.eps_sq = V.check_positive(eps_sq, "eps_sq")
        self.order = F._check_order(order)
        self.lamda_inv = None if lamda_inv is None else V.check_positive(lamda_inv, "lamda_inv")

    def forward(self, z1, z2):
        return F.mec_loss(z1, z2, self.eps_sq, self.order, lamda_inv=self.lamda_inv, **self._kw())


class RankMeMonitor:
    """RankMe of the most recent embeddings, for logging a training run without labels.

    ``update(z)`` stores a detached copy of z's rows (all ranks' rows with gather_distributed=True:
    every rank must then call it with the same shape, and all hold the same buffer), keeping the
    last ``max_samples`` rows (the paper's 25,600 by default); ``compute()`` returns RankMe of the
    stored rows (a 0-dim float tensor); ``reset()`` empties the buffer. Typical use: update every
    step, compute and reset every epoch.
    """

    def __init__(self, max_samples: int = 25600, eps: float = 1e-7, *, side: str = "auto",
                 gather_distributed: bool = False, backend: str = "auto"):
        if isinstance(max_samples, bool) or not isinstance(max_samples, int):
            raise TypeError(f"max_samples must be an int, got {max_samples!r} ({type(max_samples).__name__})")
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples = max_samples
        self.eps = V.check_positive(eps, "eps")
        self.side = V.check_side(side)
        self.gather_distributed = _dist.check_gather(gather_distributed)
        _backend.requested(backend)
        self.backend = backend
        self._rows: List[torch.Tensor] = []
        self._count = 0

    @property
    def num_samples(self) -> int:
        return self._count

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        V.check_tensor(z, "z")
        if self._rows and (z.shape[1] != self._rows[0].shape[1] or z.dtype != self._rows[0].dtype):
            raise ValueError(f"z must match the stored embeddings' width and dtype ({self._rows[0].shape[1]}, "
                             f"{self._rows[0].dtype}), got shape {tuple(z.shape)} and {z.dtype}")
        ctx = _dist.context(self.gather_distributed, z, "RankMeMonitor.update")
        z = ctx.gather(z.detach()).detach()[-self.max_samples:].clone()
        self._rows.append(z)
        self._count += z.shape[0]
        while self._count - self._rows[0].shape[0] >= self.max_samples:  # drop whole old batches
            self._count -= self._rows.pop(0).shape[0]
        if self._count > self.max_samples:  # and the oldest rows of the oldest kept batch
            extra = self._count - self.max_samples
            self._rows[0] = self._rows[0][extra:]
            self._count -= extra

    @torch.no_grad()
    def compute(self) -> torch.Tensor:
        if not self._rows:
            raise RuntimeError("RankMeMonitor.compute() before any update(): no embeddings stored")
        z = torch.cat(self._rows)
        return F.rankme(z, self.eps, side=self.side, backend=self.backend)

    def reset(self) -> None:
        self._rows, self._count = [], 0
