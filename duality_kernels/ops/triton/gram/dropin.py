"""The drop-in ``torch.autograd.Function`` subclasses of the covariance family on Triton."""
from __future__ import annotations

from ... import _checks
from ..._direct import Spec
from .ops_losses import _SPEC_BARLOW_TWINS, _SPEC_SPECTRAL, _SPEC_VICREG
from .ops_primitives import _SPEC_COVARIANCE, _SPEC_CROSS_CORRELATION, _SPEC_DUALITY_TERMS, _SPEC_NORMALIZED_GRAM


# Drop-in torch.autograd.Function subclasses (docs/design.md §2): contiguous inputs, side already
# "sample" or "dimension". Their forward checks the arguments (ops/_checks.py, as the CUDA
# backend's Functions) before the custom op, so that they raise the public functions'
# TypeError/ValueError (an unchecked call once reached native code); the public functions
# validate and pick the side themselves.


def _dropin(spec: Spec, op: str, name: str, doc: str) -> type:
    return _checks.dropin(spec, getattr(_checks, op), "triton", name, doc)


VICRegFunction = _dropin(
    _SPEC_VICREG, "vicreg", "VICRegFunction",
    "VICReg (docs/spec.md §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side)`` -> "
    "(loss, invariance, variance, covariance).")
BarlowTwinsFunction = _dropin(
    _SPEC_BARLOW_TWINS, "barlow_twins", "BarlowTwinsFunction",
    "Barlow Twins (docs/spec.md §3): ``apply(z1, z2, lambda_param, eps, side)`` -> (loss, on_diagonal, off_diagonal).")
SpectralContrastiveFunction = _dropin(
    _SPEC_SPECTRAL, "spectral", "SpectralContrastiveFunction",
    "Spectral contrastive loss (docs/spec.md §4): ``apply(z1, z2, mu, side)`` -> (loss, positive, negative).")
CovarianceFunction = _dropin(
    _SPEC_COVARIANCE, "covariance", "CovarianceFunction",
    "covariance (docs/spec.md §1): ``apply(z, correction)`` -> (C,).")
CrossCorrelationFunction = _dropin(
    _SPEC_CROSS_CORRELATION, "cross_correlation", "CrossCorrelationFunction",
    "cross_correlation (docs/spec.md §1): ``apply(z1, z2, eps)`` -> (C,).")
NormalizedGramFunction = _dropin(
    _SPEC_NORMALIZED_GRAM, "normalized_gram", "NormalizedGramFunction",
    "normalized_gram (docs/spec.md §1): ``apply(z1, z2_or_None)`` -> (K,).")
DualityTermsFunction = _dropin(
    _SPEC_DUALITY_TERMS, "duality_terms", "DualityTermsFunction",
    "duality_terms (docs/spec.md §2): ``apply(z, side)`` -> (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴).")
