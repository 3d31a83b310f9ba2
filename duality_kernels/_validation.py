"""Argument checks of the public boundary (docs/spec.md §6).

Everything here runs before any kernel, reads shapes, dtypes, devices and Python scalars only
(no host-device synchronization), and raises ValueError/TypeError naming the argument and value.
"""

from __future__ import annotations

import numbers

import torch

from ._cost import SIDES

SIMILARITIES = ("dot", "abs", "square")
NORMALIZATIONS = ("l2", "center_l2", "dim_std")
REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(z, name: str, min_rows: int = 1, min_cols: int = 1, what: str = "") -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {z.dtype}"
        )
    if z.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (N rows of D features), got shape {tuple(z.shape)} ({z.dim()}-D)"
        )
    n, d = z.shape
    if n < min_rows:
        reason = f" ({what})" if what else ""
        raise ValueError(f"{name} needs at least {min_rows} rows{reason}, got N={n} (shape {tuple(z.shape)})")
    if d < min_cols:
        reason = f" ({what})" if what else ""
        raise ValueError(f"{name} needs at least {min_cols} columns{reason}, got D={d} (shape {tuple(z.shape)})")


def check_pair(z1, z2, min_rows: int = 1, min_cols: int = 1, what: str = "") -> None:
    check_tensor(z1, "z1", min_rows, min_cols, what)
    check_tensor(z2, "z2", min_rows, min_cols, what)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}")
    if z1.dtype != z2.dtype:
        raise ValueError(f"z1 and z2 must have the same dtype, got z1 {z1.dtype} and z2 {z2.dtype}")
    if z1.device != z2.device:
        raise ValueError(f"z1 and z2 must be on the same device, got z1 on {z1.device} and z2 on {z2.device}")


def _number(value, name: str) -> float:
    if type(value) is float:  # the common case, without the ABC check below (~0.3 µs each)
        return value
    if isinstance(value, (torch.SymFloat, torch.SymInt)):  # torch.compile(dynamic=True) traces a symbol
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def _isfinite(v) -> bool:
    """math.isfinite, also for the symbolic floats of torch.compile(dynamic=True) (which cannot trace
    math.isfinite): v − v is 0 for a finite v and NaN for ±inf or NaN."""
    return v - v == 0


def check_finite(value, name: str) -> float:
    v = _number(value, name)
    if not _isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_positive(value, name: str) -> float:
    v = _number(value, name)
    if not _isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_nonnegative(value, name: str) -> float:
    v = _number(value, name)
    if not _isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_side(side) -> str:
    return check_choice(side, "side", SIDES)


def check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def check_correction(correction, n: int) -> int:
    """covariance's ``correction``: an int with 0 <= correction < N (it divides by N − correction)."""
    if isinstance(correction, bool) or not isinstance(correction, int):
        raise TypeError(f"correction must be an int, got {correction!r} ({type(correction).__name__})")
    if correction < 0:
        raise ValueError(f"correction must be >= 0, got {correction}")
    if n - correction < 1:
        raise ValueError(f"z needs more than correction={correction} rows for a covariance, got N={n}")
    return correction


def vicreg_weights(inv_weight, var_weight, cov_weight, gamma, eps) -> tuple:
    """The VICReg family's weights, gamma (finite) and eps (>= 0), as floats."""
    return (
        check_finite(inv_weight, "inv_weight"),
        check_finite(var_weight, "var_weight"),
        check_finite(cov_weight, "cov_weight"),
        check_finite(gamma, "gamma"),
        check_nonnegative(eps, "eps"),
    )
