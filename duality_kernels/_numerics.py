"""Numerical constants and dtype rules every backend shares (docs/spec.md, "Notation")."""

import torch

# l2n(z): each row divided by max(‖row‖₂, L2_EPS), torch.nn.functional.normalize's default eps
L2_EPS = 1e-12


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation (and result) dtype of reductions: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
