"""The drop-in ``torch.autograd.Function`` subclasses of the covariance family on Triton, made by the op
registry (docs/design.md §2): contiguous inputs, side already "sample" or "dimension"; their forward
checks the arguments (the op's contract, defined beside its public function) before the custom op, as
the public functions do."""
from __future__ import annotations

from ... import registry
from . import ops_losses, ops_primitives  # noqa: F401 (they register the ops)

VICRegFunction = registry.registered("triton", "vicreg").function
BarlowTwinsFunction = registry.registered("triton", "barlow_twins").function
SpectralContrastiveFunction = registry.registered("triton", "spectral").function
CovarianceFunction = registry.registered("triton", "covariance").function
CrossCorrelationFunction = registry.registered("triton", "cross_correlation").function
NormalizedGramFunction = registry.registered("triton", "normalized_gram").function
DualityTermsFunction = registry.registered("triton", "duality_terms").function
