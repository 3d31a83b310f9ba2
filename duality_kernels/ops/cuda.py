"""torch.library custom ops over the compiled extension ``duality_kernels._C`` (DESIGN conventions 2, 9).

The extension is optional: a missing or broken ``_C`` never breaks ``import duality_kernels``.
The ops are registered either way, so their fake (meta) implementations work for tracing and
shape propagation on any install; running one for real without ``_C`` raises RuntimeError with
:func:`unavailable_reason`, which says how to rebuild.

Ops (forward and backward are separate ops; autograd of the forward calls the backward op, so
``torch.compile(fullgraph=True)`` sees only custom ops):

- ``duality_kernels::column_stats_fwd(Tensor z) -> (Tensor mean, Tensor m2)``:
  per-column mean and centered sum of squares of a contiguous CUDA (N, D) tensor,
  ``mean = z.mean(0)``, ``m2 = ((z - mean) ** 2).sum(0)``, float32 (float64 for float64 z).
- ``duality_kernels::column_stats_bwd(Tensor z, Tensor mean, Tensor grad_mean, Tensor grad_m2) -> Tensor``:
  ``dz = grad_mean / N + 2 * (z - mean) * grad_m2`` in z's dtype.

Kernels trust their inputs (DESIGN convention 6): public functions validate before calling here.
"""

import importlib
from typing import Optional, Tuple

import torch

__all__ = [
    "REBUILD_COMMAND",
    "column_stats",
    "column_stats_bwd",
    "column_stats_fwd",
    "is_available",
    "unavailable_reason",
]

REBUILD_COMMAND = "DUALITY_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation -e ."

try:  # torch must be imported first: _C links against its shared libraries.
    _C = importlib.import_module("duality_kernels._C")

    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as _exc:  # ImportError, OSError (ABI/symbol mismatch), anything a broken build raises
    _C = None
    _IMPORT_ERROR = _exc


def is_available() -> bool:
    """True when the compiled extension ``duality_kernels._C`` was built and imports.

    Says nothing about a GPU being visible (the extension imports without one);
    ``torch.cuda.is_available()`` answers that.
    """
    return _C is not None


def unavailable_reason() -> str:
    """Why ``backend="cuda"`` cannot be used, with the command that rebuilds the extension
    ("" when the extension is available)."""
    if _C is not None:
        return ""
    if torch.version.cuda is None:
        why = (
            f"torch {torch.__version__} is not a CUDA build, so the extension was not built; "
            "install a CUDA build of torch, then"
        )
    elif isinstance(_IMPORT_ERROR, ModuleNotFoundError) and _IMPORT_ERROR.name == "duality_kernels._C":
        why = (
            "it was not built (nvcc or CUDA torch missing at install time, or "
            "DUALITY_KERNELS_BUILD_CUDA=0)"
        )
    else:
        why = f"importing it failed: {type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}"
    return (
        f"duality_kernels' CUDA extension (duality_kernels._C) is unavailable: {why}. "
        f"Rebuild it from the source checkout with `{REBUILD_COMMAND}` (torch and nvcc must be "
        "installed; DUALITY_KERNELS_BUILD_CUDA=1 makes the build fail loudly instead of skipping), "
        "or use backend='triton' or backend='torch'."
    )


def _ext():
    if _C is None:
        raise RuntimeError(unavailable_reason())
    return _C


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # SPEC notation: accumulate in float32, float64 for float64 inputs.
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# column_stats: per-column mean and centered sum of squares (csrc/kernels/column_stats.cu)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("duality_kernels::column_stats_fwd", mutates_args=())
def column_stats_fwd(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _ext().column_stats_fwd(z)


@column_stats_fwd.register_fake
def _column_stats_fwd_fake(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(z.dtype)
    d = z.shape[1]
    return z.new_empty((d,), dtype=acc), z.new_empty((d,), dtype=acc)


@torch.library.custom_op("duality_kernels::column_stats_bwd", mutates_args=())
def column_stats_bwd(
    z: torch.Tensor, mean: torch.Tensor, grad_mean: torch.Tensor, grad_m2: torch.Tensor
) -> torch.Tensor:
    return _ext().column_stats_bwd(z, mean, grad_mean, grad_m2)


@column_stats_bwd.register_fake
def _column_stats_bwd_fake(
    z: torch.Tensor, mean: torch.Tensor, grad_mean: torch.Tensor, grad_m2: torch.Tensor
) -> torch.Tensor:
    return z.new_empty(z.shape)  # contiguous, z's dtype, like the real op


def _column_stats_setup_context(ctx, inputs, output) -> None:
    (z,) = inputs
    mean, _ = output
    ctx.save_for_backward(z, mean)


def _column_stats_backward(ctx, grad_mean: Optional[torch.Tensor], grad_m2: Optional[torch.Tensor]):
    z, mean = ctx.saved_tensors
    # Unused outputs may come back as None; upstream gradients may be expanded (stride 0, e.g. from
    # .sum()) or of another layout: the kernel wants contiguous acc-dtype vectors.
    if grad_mean is None:
        grad_mean = torch.zeros_like(mean)
    if grad_m2 is None:
        grad_m2 = torch.zeros_like(mean)
    grad_mean = grad_mean.to(mean.dtype).contiguous()
    grad_m2 = grad_m2.to(mean.dtype).contiguous()
    return column_stats_bwd(z, mean, grad_mean, grad_m2)


column_stats_fwd.register_autograd(_column_stats_backward, setup_context=_column_stats_setup_context)


def column_stats(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-column ``(mean, m2)`` of a CUDA (N, D) tensor, differentiable.

    ``mean = z.mean(0)`` and ``m2 = ((z - mean) ** 2).sum(0)`` (so ``var_u = m2 / (N - 1)``,
    ``var_b = m2 / N``), accumulated and returned in float32 (float64 for float64 z). Accepts any
    strides (copies to contiguous when needed); other validation is the caller's job.
    """
    return column_stats_fwd(z.contiguous())
