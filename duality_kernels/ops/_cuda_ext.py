"""The CUDA extension ``duality_kernels._C``: loading it, why it is missing, and its device rule.

The extension is optional: a missing or broken ``_C`` never breaks ``import duality_kernels``;
``backend="cuda"`` then raises with :func:`unavailable_reason`, which says how to rebuild. The test
suite can route CPU tensors to a CPU simulator of the same C++ source (duality_kernels/testing/csim.py).
"""

import importlib
from typing import Optional

import torch

from .._errors import BackendUnavailableError

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


# The CPU simulator of the extension (duality_kernels/testing/csim.py), used for CPU tensors when set.
_SIM = None


def _set_simulator(module) -> None:
    """Test hook: run these ops on CPU tensors through ``module`` (csrc/ built with
    -DDK_HOST_SIM, see duality_kernels/testing/csim.py); None turns it off."""
    global _SIM
    _SIM = module


def simulating() -> bool:
    """True when the CPU simulator is enabled (tests only)."""
    return _SIM is not None


def ext(t: Optional[torch.Tensor] = None):
    if _SIM is not None and t is not None and t.device.type == "cpu":
        return _SIM
    if _C is None:
        raise RuntimeError(unavailable_reason())
    return _C


def device_rule(z: torch.Tensor) -> None:
    """Raises unless the extension can run on ``z``: CUDA tensors (CPU tensors in the simulator)."""
    if _C is None:
        raise BackendUnavailableError(f"backend='cuda' is unavailable: {unavailable_reason()}")
    kind = z.device.type
    if kind != "cuda" and not (kind == "cpu" and _SIM is not None):
        raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {z.device}")
