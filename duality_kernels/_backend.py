"""Backend selection: "auto" | "torch" | "triton" | "cuda", and the DUALITY_KERNELS_BACKEND override.

Rules (decided from shapes, dtypes and devices only, so no host-device synchronization):

- An explicit ``backend=`` argument other than "auto" is used as given; a backend that cannot run
  the op there raises ``BackendUnavailableError`` (a RuntimeError) saying why and what to do, or
  ValueError for tensors on the wrong device. An unknown name raises ValueError (docs/spec.md §6).
- ``backend="auto"`` takes the value of the environment variable DUALITY_KERNELS_BACKEND when it
  is set (a compiled backend named there is used as if given explicitly), else the automatic
  choice: the torch reference on CPU tensors; on CUDA tensors the first backend of the one table,
  ``_cost.auto_order``, that is available, registered the op for the input dtype
  (ops/registry.py) and, inside a process group with gather_distributed=True, its distributed
  form; the torch reference ends every order, so "auto" never raises for a missing backend.
- "triton" runs on CUDA tensors, and on CPU tensors under the Triton interpreter; "cuda" on CUDA
  tensors, and on CPU tensors in the test suite's simulator of the same C++ source (duality_kernels/testing/csim.py).
"""

from __future__ import annotations

import os

import torch

from . import _cost
from ._errors import BackendUnavailableError
from .ops import _cuda_ext, registry

BACKENDS = ("auto", "torch", "triton", "cuda")
ENV_VAR = "DUALITY_KERNELS_BACKEND"

# What each compiled backend implements (ops, dtypes, distributed forms) is what it registered in
# ops/registry.py; the torch reference implements every public function.


def _check_name(value, source: str) -> str:
    if not isinstance(value, str) or value not in BACKENDS:
        raise ValueError(
            f"{source} must be one of {', '.join(repr(b) for b in BACKENDS)}; got {value!r}"
        )
    return value


def requested(backend) -> str:
    """The backend asked for, after the environment override of "auto"."""
    backend = _check_name(backend, "backend")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            backend = _check_name(env, f"environment variable {ENV_VAR}")
    return backend


def _triton_available() -> bool:
    from .ops.triton import _common

    return _common.is_available()


def available(backend: str) -> bool:
    """Whether a compiled backend can be imported in this process."""
    return _triton_available() if backend == "triton" else _cuda_ext.is_available()


def _implements(backend: str, op: str, z: torch.Tensor, distributed: bool) -> bool:
    cap = registry.capability(backend, op)
    return cap is not None and z.dtype in cap.dtypes and (cap.gathers or not distributed)


def _auto(op: str, z: torch.Tensor, distributed: bool) -> str:
    """The automatic choice (module docstring): shapes, dtype and device only."""
    if z.device.type != "cuda":
        return "torch"
    n, d = z.shape
    for be in _cost.auto_order(registry.FAMILY.get(op), op, n, d, z.dtype):
        if be == "torch":
            break
        if available(be) and _implements(be, op, z, distributed):
            return be
    return "torch"


def resolve(backend, op: str, z: torch.Tensor, distributed: bool = False) -> str:
    """The concrete backend ("torch", "triton" or "cuda") that runs ``op`` on tensor ``z``;
    ``distributed``: the call computes the global-batch form of docs/spec.md §5 across ranks."""
    choice = requested(backend)
    if choice == "auto":
        return _auto(op, z, distributed)
    if choice == "torch":
        return choice
    if choice == "triton" and not _triton_available():
        from .ops.triton import _common

        raise BackendUnavailableError(f"backend='triton' is unavailable: {_common.unavailable_reason()}")
    if registry.capability(choice, op) is None:
        have = sorted(registry.implemented(choice))
        raise BackendUnavailableError(
            f"backend={choice!r} does not implement {op} in this version"
            + (f" (it implements: {', '.join(have)})" if have else "")
            + "; use backend='torch' or 'auto'"
        )
    if choice == "triton":
        from .ops.triton import _common

        _common.device_rule(z)
    else:
        _cuda_ext.device_rule(z)
    return choice


def require_single_process(backend: str, op: str, ctx) -> None:
    """Compiled ops without a gathered form compute one process's batch; docs/spec.md §5 stays with torch."""
    cap = registry.capability(backend, op) if backend in ("triton", "cuda") else None
    if cap is not None and ctx.active and not cap.gathers:
        raise BackendUnavailableError(
            f"backend={backend!r} does not implement {op} with gather_distributed=True across "
            f"{ctx.world} processes in this version; use backend='torch' or 'auto'"
        )
