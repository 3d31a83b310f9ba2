"""The base of every loss module: the arguments each one takes, checked at construction."""

from __future__ import annotations

from torch import nn

from .. import _backend
from .. import distributed as _dist


class _Loss(nn.Module):
    def __init__(self, gather_distributed: bool, backend: str):
        super().__init__()
        _dist.check_gather(gather_distributed)
        _backend.requested(backend)  # unknown names fail at construction (docs/spec.md §6)
        self.gather_distributed = gather_distributed
        self.backend = backend
