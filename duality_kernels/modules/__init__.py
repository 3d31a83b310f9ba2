"""nn.Module wrappers of the functional losses.

The classes lightly also has (VICRegLoss, BarlowTwinsLoss, NTXentLoss, DCLLoss) take lightly 1.6's
constructor names, order and defaults, so they drop into lightly-based training code; the math is
SPEC's (for BarlowTwinsLoss that means the official BatchNorm standardization, which lightly
replaces with an unbiased std and no eps). The others use SPEC's names and defaults. Every class
also takes the keyword-only ``backend`` (and ``side`` where the loss has one).
"""

from __future__ import annotations

from torch import nn

from .. import functional as F
from .. import _backend
from .. import _validation as V
from .. import distributed as _dist


class _Loss(nn.Module):
    def __init__(self, gather_distributed: bool, backend: str):
        super().__init__()
        _dist.check_gather(gather_distributed)
        _backend.requested(backend)  # unknown names fail at construction (SPEC §6)
        self.gather_distributed = gather_distributed
        self.backend = backend


class VICRegLoss(_Loss):
    """VICReg; lightly names: lambda_param = invariance, mu_param = variance, nu_param = covariance weight."""

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0,
                 gather_distributed: bool = False, eps: float = 0.0001, *, gamma: float = 1.0,
                 side: str = "auto", return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.lambda_param, self.mu_param, self.nu_param = lambda_param, mu_param, nu_param
        self.eps, self.gamma, self.side, self.return_terms = eps, gamma, V.check_side(side), return_terms

    def forward(self, z_a, z_b):
        return F.vicreg_loss(z_a, z_b, self.lambda_param, self.mu_param, self.nu_param, self.gamma, self.eps,
                             side=self.side, gather_distributed=self.gather_distributed,
                             return_terms=self.return_terms, backend=self.backend)


class _VICRegVariant(_Loss):
    _fn = None

    def __init__(self, inv_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4, temperature: float = 0.1, *,
                 gather_distributed: bool = False, return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.inv_weight, self.var_weight, self.cov_weight = inv_weight, var_weight, cov_weight
        self.gamma, self.eps, self.return_terms = gamma, eps, return_terms
        self.temperature = V.check_positive(temperature, "temperature")

    def forward(self, z_a, z_b):
        return type(self)._fn(z_a, z_b, self.inv_weight, self.var_weight, self.cov_weight, self.gamma, self.eps,
                              self.temperature, gather_distributed=self.gather_distributed,
                              return_terms=self.return_terms, backend=self.backend)


class VICRegExpLoss(_VICRegVariant):
    """VICReg-exp (paper eq. 11–12)."""

    _fn = staticmethod(F.vicreg_exp_loss)


class VICRegCtrLoss(_VICRegVariant):
    """VICReg-ctr (paper eq. 13)."""

    _fn = staticmethod(F.vicreg_ctr_loss)


class BarlowTwinsLoss(_Loss):
    """Barlow Twins with the official BatchNorm standardization; lightly's default lambda_param."""

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False, *, eps: float = 1e-5,
                 side: str = "auto", return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.lambda_param, self.eps, self.side, self.return_terms = lambda_param, eps, V.check_side(side), return_terms

    def forward(self, z_a, z_b):
        return F.barlow_twins_loss(z_a, z_b, self.lambda_param, self.eps, side=self.side,
                                   gather_distributed=self.gather_distributed,
                                   return_terms=self.return_terms, backend=self.backend)


class NTXentLoss(_Loss):
    """NT-Xent / SimCLR; lightly's default temperature 0.5 (the functional default is SPEC's 0.1).

    lightly's memory bank is not supported: ``memory_bank_size`` must be 0.
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: int = 0, gather_distributed: bool = False, *,
                 similarity: str = "dot", normalization: str = "l2", reduction: str = "mean",
                 backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        if memory_bank_size != 0:
            raise ValueError(f"memory_bank_size must be 0 (no memory bank in duality_kernels), got {memory_bank_size!r}")
        self.temperature = V.check_positive(temperature, "temperature")
        self.similarity = V.check_choice(similarity, "similarity", V.SIMILARITIES)
        self.normalization = V.check_choice(normalization, "normalization", V.NORMALIZATIONS)
        self.reduction = V.check_choice(reduction, "reduction", V.REDUCTIONS)

    def forward(self, out0, out1):
        return F.ntxent_loss(out0, out1, self.temperature, self.similarity, self.normalization, self.reduction,
                             gather_distributed=self.gather_distributed, backend=self.backend)


class DCLLoss(_Loss):
    """Decoupled contrastive loss; lightly's names and default temperature. ``weight_fn`` must be None."""

    def __init__(self, temperature: float = 0.1, weight_fn=None, gather_distributed: bool = False, *,
                 similarity: str = "dot", reduction: str = "mean", backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        if weight_fn is not None:
            raise ValueError(f"weight_fn must be None (weighted DCL is not implemented), got {weight_fn!r}")
        self.temperature = V.check_positive(temperature, "temperature")
        self.similarity = V.check_choice(similarity, "similarity", V.SIMILARITIES)
        self.reduction = V.check_choice(reduction, "reduction", V.REDUCTIONS)

    def forward(self, out0, out1):
        return F.dcl_loss(out0, out1, self.temperature, self.similarity, self.reduction,
                          gather_distributed=self.gather_distributed, backend=self.backend)


class InfoNCELoss(_Loss):
    """Cross-view InfoNCE (CLIP form)."""

    def __init__(self, temperature: float = 0.1, reduction: str = "mean", *, gather_distributed: bool = False,
                 backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.temperature = V.check_positive(temperature, "temperature")
        self.reduction = V.check_choice(reduction, "reduction", V.REDUCTIONS)

    def forward(self, z_a, z_b):
        return F.infonce_loss(z_a, z_b, self.temperature, self.reduction,
                              gather_distributed=self.gather_distributed, backend=self.backend)


class SpectralContrastiveLoss(_Loss):
    """Spectral contrastive loss (HaoChen et al. 2021)."""

    def __init__(self, mu: float = 1.0, *, side: str = "auto", gather_distributed: bool = False,
                 return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.mu, self.side, self.return_terms = V.check_positive(mu, "mu"), V.check_side(side), return_terms

    def forward(self, z_a, z_b):
        return F.spectral_contrastive_loss(z_a, z_b, self.mu, side=self.side,
                                           gather_distributed=self.gather_distributed,
                                           return_terms=self.return_terms, backend=self.backend)
