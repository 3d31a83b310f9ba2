"""Triton backend of the covariance family (docs/spec.md §1–5): VICReg, Barlow Twins, spectral
contrastive, covariance, cross_correlation, normalized_gram, the duality terms, and the local pieces
of gather_distributed=True (``moments``, ``spectral_rows``).

The Gram products run on cuBLAS; the kernels are the passes around them, one module per pass, each
kernel beside its launcher: ``column`` and ``row`` (statistics and the GEMM operand), ``reduce``
(sums over the Gram and the finalize), ``epilogue`` (the backward after each product). ``plan``
holds the modes and launch plans, ``helpers`` the shared JIT helpers; ``ops_losses``,
``ops_primitives`` and ``ops_gathered`` register the custom ops (``ops_base``), and ``dropin`` the
drop-in Functions. The plan, its numerics and the expected performance: docs/triton_gram.md.
"""
from __future__ import annotations

from ... import registry
from .._common import triton, unavailable_reason

if triton is None:  # pragma: no cover - import guard; functional.py checks availability first
    raise ImportError(unavailable_reason())

# in the order the ops registered before the split
from .ops_losses import _SPEC_BARLOW_TWINS, _SPEC_SPECTRAL, _SPEC_VICREG, barlow_twins, spectral, vicreg  # noqa: E402
from .ops_gathered import (_SPEC_MOMENTS, _SPEC_SPECTRAL_ROWS, MOMENTS_CROSS, MOMENTS_NONE,  # noqa: E402
                           MOMENTS_SELF, moments, spectral_rows)
from .ops_primitives import (_SPEC_COVARIANCE, _SPEC_CROSS_CORRELATION, _SPEC_DUALITY_TERMS,  # noqa: E402
                             _SPEC_NORMALIZED_GRAM, covariance, cross_correlation, duality_terms,
                             normalized_gram)
from .dropin import (BarlowTwinsFunction, CovarianceFunction, CrossCorrelationFunction,  # noqa: E402
                     DualityTermsFunction, NormalizedGramFunction, SpectralContrastiveFunction,
                     VICRegFunction)
from .plan import _OVERRIDES, L2_EPS  # noqa: E402  (_OVERRIDES: the test hooks of tests/test_triton_gram.py)

__all__ = [
    *registry.gram_functions(),
    "barlow_twins",
    "covariance",
    "cross_correlation",
    "duality_terms",
    "normalized_gram",
    "spectral",
    "vicreg",
]
