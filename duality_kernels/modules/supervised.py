"""nn.Module forms of SupCon, MoCo and the hard-negative NT-Xent (docs/spec.md §7).

Constructors validate their arguments (errors name the constructor's argument); SupConLoss takes
SupContrast's constructor order (temperature, contrast_mode, base_temperature).
"""

from __future__ import annotations

from ..functional import supervised as _S
from .. import _validation as V
from . import _Loss

__all__ = ["SupConLoss", "MoCoLoss", "HardNegativeNTXentLoss"]


class SupConLoss(_Loss):
    """Supervised contrastive loss; ``forward(features [B, V, D], labels [B] or None)`` as SupContrast's.

    SupContrast's ``mask`` argument is not supported (labels or None only). ``return_terms=True``
    makes forward return ``(loss, {"anchors_without_positive": count})``.
    """

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07, *,
                 gather_distributed: bool = False, return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.temperature = V.check_positive(temperature, "temperature")
        self.base_temperature = V.check_positive(base_temperature, "base_temperature")
        self.contrast_mode = V.check_choice(contrast_mode, "contrast_mode", _S.CONTRAST_MODES)
        self.return_terms = V.check_flag(return_terms, "return_terms")

    def forward(self, features, labels=None, mask=None):
        if mask is not None:
            raise ValueError("mask is not supported (only labels or None): an arbitrary [B, B] mask has no class "
                             "sums; pass labels")
        return _S.supcon_loss(features, labels, self.temperature, self.base_temperature, self.contrast_mode,
                              gather_distributed=self.gather_distributed, return_terms=self.return_terms,
                              backend=self.backend)


class MoCoLoss(_Loss):
    """MoCo's queue loss; ``forward(query [N, D], key [N, D], queue [K, D])``. The module keeps no queue:
    the caller owns it (no gradient flows into it)."""

    def __init__(self, temperature: float = 0.2, *, backend: str = "auto"):
        super().__init__(False, backend)
        self.temperature = V.check_positive(temperature, "temperature")

    def forward(self, query, key, queue):
        return _S.moco_loss(query, key, queue, self.temperature, backend=self.backend)


class HardNegativeNTXentLoss(_Loss):
    """NT-Xent with hard-negative sampling (HCL's "hard" estimator); ``beta=0``: debiased contrastive loss."""

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1, beta: float = 1.0, *,
                 gather_distributed: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.temperature = V.check_positive(temperature, "temperature")
        self.tau_plus = _S.check_tau_plus(tau_plus)
        self.beta = V.check_finite(beta, "beta")

    def forward(self, z1, z2):
        return _S.hard_negative_ntxent_loss(z1, z2, self.temperature, self.tau_plus, self.beta,
                                            gather_distributed=self.gather_distributed, backend=self.backend)
