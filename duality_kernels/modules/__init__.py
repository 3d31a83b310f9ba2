"""nn.Module wrappers of the functional losses.

The classes lightly also has (VICRegLoss, BarlowTwinsLoss, NTXentLoss, DCLLoss, DCLWLoss) take lightly 1.6's
constructor names, order and defaults, so they drop into lightly-based training code; the math is
docs/spec.md's (for BarlowTwinsLoss that means the official BatchNorm standardization, which lightly
replaces with an unbiased std and no eps). The others use docs/spec.md's names and defaults. Every class
also takes the keyword-only ``backend`` (and ``side`` where the loss has one).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import functional as F
from ..functional import supervised as _S
from .. import _backend
from .. import _validation as V
from .. import distributed as _dist
from ._base import _Loss

__all__ = ["VICRegLoss", "VICRegExpLoss", "VICRegCtrLoss", "BarlowTwinsLoss", "NTXentLoss", "DCLLoss", "DCLWLoss",
           "InfoNCELoss", "SpectralContrastiveLoss"]




class VICRegLoss(_Loss):
    """VICReg; lightly names: lambda_param = invariance, mu_param = variance, nu_param = covariance weight.

    Inputs (batch, dim) or, as lightly's, (batch, ..., dim): then the loss is the mean over the middle
    positions of the loss of each (batch, dim) slice (lightly's per-position covariance; invariance
    and variance are means over all entries either way).
    """

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0,
                 gather_distributed: bool = False, eps: float = 0.0001, *, gamma: float = 1.0,
                 side: str = "auto", return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        # validated here, with this class's own argument names (lightly's), not at the first forward
        self.lambda_param = V.check_finite(lambda_param, "lambda_param")
        self.mu_param = V.check_finite(mu_param, "mu_param")
        self.nu_param = V.check_finite(nu_param, "nu_param")
        self.eps, self.gamma = V.check_nonnegative(eps, "eps"), V.check_finite(gamma, "gamma")
        self.side, self.return_terms = V.check_side(side), V.check_flag(return_terms, "return_terms")

    def forward(self, z_a, z_b):
        args = (self.lambda_param, self.mu_param, self.nu_param, self.gamma, self.eps)
        kw = dict(side=self.side, gather_distributed=self.gather_distributed, return_terms=self.return_terms,
                  backend=self.backend)
        if isinstance(z_a, torch.Tensor) and z_a.dim() > 2:
            return _S.vicreg_positions(z_a, z_b, *args, **kw)
        return F.vicreg_loss(z_a, z_b, *args, **kw)


class _VICRegVariant(_Loss):
    _fn = None

    def __init__(self, inv_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4, temperature: float = 0.1, *,
                 gather_distributed: bool = False, return_terms: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        self.inv_weight, self.var_weight, self.cov_weight, self.gamma, self.eps = V.vicreg_weights(
            inv_weight, var_weight, cov_weight, gamma, eps)
        self.return_terms = V.check_flag(return_terms, "return_terms")
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
        self.lambda_param, self.eps = V.check_finite(lambda_param, "lambda_param"), V.check_nonnegative(eps, "eps")
        self.side, self.return_terms = V.check_side(side), V.check_flag(return_terms, "return_terms")

    def forward(self, z_a, z_b):
        return F.barlow_twins_loss(z_a, z_b, self.lambda_param, self.eps, side=self.side,
                                   gather_distributed=self.gather_distributed,
                                   return_terms=self.return_terms, backend=self.backend)


def _bank_size(memory_bank_size) -> tuple:
    """lightly 1.6's ``memory_bank_size``: 0 (no bank) or (num_features, dim); a bare int > 0 is refused."""
    if isinstance(memory_bank_size, bool):
        raise TypeError(f"memory_bank_size must be 0 or a (num_features, dim) tuple, got {memory_bank_size!r}")
    if isinstance(memory_bank_size, int):
        if memory_bank_size != 0:
            raise ValueError(
                f"memory_bank_size must be 0 (no memory bank) or a (num_features, dim) tuple; got "
                f"{memory_bank_size!r}, which does not give the feature dimension: pass ({memory_bank_size}, dim)")
        return (0,)
    try:
        size = tuple(memory_bank_size)
    except TypeError:
        raise TypeError(
            f"memory_bank_size must be 0 or a (num_features, dim) tuple, got {memory_bank_size!r}") from None
    if any(isinstance(x, bool) or not isinstance(x, int) for x in size):
        raise TypeError(f"memory_bank_size must hold ints, got {memory_bank_size!r}")
    if any(x < 0 for x in size):
        raise ValueError(f"memory_bank_size entries must be >= 0, got {memory_bank_size!r}")
    if size == (0,):
        return size
    if len(size) != 2:
        raise ValueError(f"memory_bank_size must be 0 or a (num_features, dim) tuple, got {memory_bank_size!r}")
    if size[0] > 0 and size[1] == 0:
        raise ValueError(f"memory_bank_size's dim must be >= 1, got {memory_bank_size!r}")
    return size


class _MemoryBank(nn.Module):
    """lightly 1.6's FIFO bank of past second-view embeddings (``MemoryBankModule`` semantics): ``bank``
    (num_features, dim) float32 starts as L2-normalized Gaussian rows drawn from torch's global
    generator, as lightly's; ``enqueue`` writes a batch at ``bank_ptr`` and wraps to 0 when it
    reaches the end, dropping the rows that do not fit. Buffers are not in the state dict (as lightly)."""

    def __init__(self, size: tuple, gather_distributed: bool):
        super().__init__()
        self.size = size
        self.gather_distributed = gather_distributed
        self.register_buffer("bank", torch.empty(size, dtype=torch.float), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        if len(size) > 1:
            self.bank = torch.nn.functional.normalize(torch.randn(size).type_as(self.bank), dim=-1)

    @property
    def enabled(self) -> bool:
        return self.size[0] > 0

    @torch.no_grad()
    def enqueue(self, batch):
        if self.gather_distributed and _dist.world_size() > 1:
            _dist.context(True, batch, "NTXentLoss memory bank")
            batch = _dist.gather_rows(batch)
        k, n = self.size[0], batch.shape[0]
        ptr = int(self.bank_ptr)
        if ptr + n >= k:
            self.bank[ptr:] = batch[:k - ptr].detach()
            self.bank_ptr.zero_()
        else:
            self.bank[ptr:ptr + n] = batch.detach()
            self.bank_ptr[0] = ptr + n


class NTXentLoss(_Loss):
    """NT-Xent / SimCLR; lightly's default temperature 0.5 (the functional default is docs/spec.md's 0.1).

    ``memory_bank_size=(num_features, dim)`` turns on lightly 1.6's memory bank (MoCo-style): the
    negatives of ``out0`` are the bank's rows instead of the batch, the loss is
    CE([n0·n1, n0·bankᵀ]/T, 0) (``moco_loss``'s math), and when ``out0`` requires grad the normalized
    ``out1`` is enqueued after the loss is computed (gathered from every rank first with
    gather_distributed). The bank is float32 (as lightly) and is cast to the inputs' dtype and device
    when used. With a bank, similarity must be "dot" and normalization "l2". docs/lightly.md lists the
    differences from lightly.
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size=0, gather_distributed: bool = False, *,
                 similarity: str = "dot", normalization: str = "l2", reduction: str = "mean",
                 backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        size = _bank_size(memory_bank_size)
        self.temperature = V.check_positive(temperature, "temperature")
        self.similarity = V.check_choice(similarity, "similarity", V.SIMILARITIES)
        self.normalization = V.check_choice(normalization, "normalization", V.NORMALIZATIONS)
        self.reduction = V.check_choice(reduction, "reduction", V.REDUCTIONS)
        self.memory_bank = _MemoryBank(size, gather_distributed)
        if self.memory_bank.enabled and (similarity != "dot" or normalization != "l2"):
            raise ValueError(f"a memory bank needs similarity='dot' and normalization='l2', got similarity="
                             f"{similarity!r}, normalization={normalization!r}")

    def forward(self, out0, out1):
        bank = self.memory_bank
        if not bank.enabled:
            return F.ntxent_loss(out0, out1, self.temperature, self.similarity, self.normalization, self.reduction,
                                 gather_distributed=self.gather_distributed, backend=self.backend)
        if isinstance(out0, torch.Tensor) and out0.dim() == 2 and out0.shape[1] != bank.size[1]:
            raise ValueError(f"out0 has dim {out0.shape[1]} but the memory bank holds rows of dim {bank.size[1]} "
                             f"(memory_bank_size={bank.size})")
        loss = _S.memory_bank_ntxent(out0, out1, bank.bank, self.temperature, self.reduction, self.backend)
        if out0.requires_grad:
            bank.enqueue(torch.nn.functional.normalize(out1.detach(), dim=1))
        return loss


class DCLLoss(_Loss):
    """Decoupled contrastive loss; lightly's names and default temperature.

    ``weight_fn(out0, out1) -> (N,) weights`` scales each anchor's positive term (the weighted DCL of
    Yeh et al., lightly's semantics): it receives the L2-normalized local rows, (n0, n1) for the
    first view's anchors and (n1, n0) for the second's; its result carries gradient if it has one.
    """

    def __init__(self, temperature: float = 0.1, weight_fn=None, gather_distributed: bool = False, *,
                 similarity: str = "dot", reduction: str = "mean", backend: str = "auto"):
        super().__init__(gather_distributed, backend)
        if weight_fn is not None and not callable(weight_fn):
            raise TypeError(f"weight_fn must be None or a callable (out0, out1) -> weights, got {weight_fn!r}")
        self.weight_fn = weight_fn
        self.temperature = V.check_positive(temperature, "temperature")
        self.similarity = V.check_choice(similarity, "similarity", V.SIMILARITIES)
        self.reduction = V.check_choice(reduction, "reduction", V.REDUCTIONS)

    def forward(self, out0, out1):
        if self.weight_fn is None:
            return F.dcl_loss(out0, out1, self.temperature, self.similarity, self.reduction,
                              gather_distributed=self.gather_distributed, backend=self.backend)
        return _S.weighted_dcl_loss(out0, out1, self.temperature, self.weight_fn, self.similarity, self.reduction,
                                    gather_distributed=self.gather_distributed, backend=self.backend)


class DCLWLoss(DCLLoss):
    """Weighted DCL with lightly's negative von Mises-Fisher weights w_i = 2 − N·softmax_i(n0_i·n1_i/sigma)
    (no gradient through them), lightly's ``DCLWLoss``."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False, *,
                 similarity: str = "dot", reduction: str = "mean", backend: str = "auto"):
        sigma = V.check_positive(sigma, "sigma")
        super().__init__(temperature, functools.partial(_S.von_mises_fisher_weights, sigma=sigma),
                         gather_distributed, similarity=similarity, reduction=reduction, backend=backend)
        self.sigma = sigma


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


from .supervised import HardNegativeNTXentLoss, MoCoLoss, SupConLoss  # noqa: E402,F401  (uses _Loss above)
