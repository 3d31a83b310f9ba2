"""Backend selection: "auto" | "torch" | "triton" | "cuda", and the DUALITY_KERNELS_BACKEND override.

Rules (decided from shapes, dtypes and devices only, so no host-device synchronization):

- An explicit ``backend=`` argument other than "auto" is used as given; a backend that cannot run
  the op there raises ``BackendUnavailableError`` (a RuntimeError) saying why and what to do, or
  ValueError for tensors on the wrong device. An unknown name raises ValueError (SPEC §6).
- ``backend="auto"`` takes the value of the environment variable DUALITY_KERNELS_BACKEND when it
  is set (any of the four names; a compiled one is then used as if given explicitly), otherwise
  the automatic choice.
- The automatic choice: the torch reference on CPU tensors. On CUDA tensors, the first backend of
  ``_cost.auto_order(op, N, D, dtype)`` (the one table, read from H200 measurements) that is
  available (``_C`` imports for "cuda", triton imports for "triton"), implements the op, and,
  inside a process group with gather_distributed=True, implements its SPEC §5 form; the torch
  reference ends every order. "auto" never raises for a missing backend.
- "triton" runs on CUDA tensors, and on CPU tensors under the Triton interpreter
  (TRITON_INTERPRET=1), which is how the test suite checks the kernels without a GPU.
- "cuda" runs on CUDA tensors (duality_kernels._C); the test suite also runs it on CPU tensors
  through a CPU simulator of the same C++ source (tests/csim.py, ``ops.cuda.simulating()``).
- ``gather_distributed`` (SPEC §5) inside an active group: ``_GATHERS`` lists the compiled ops
  that implement it (NT-Xent, DCL, InfoNCE in lse.py's kernels; VICReg, Barlow Twins, the
  spectral loss, and on Triton VICReg-ctr, through ops/gathered.py); the others (VICReg-exp on
  Triton) raise BackendUnavailableError there. The primitives take no gather_distributed. So
  "auto" inside a group runs VICReg, Barlow Twins and the spectral loss on the CUDA extension
  (Triton when _C is missing), as in one process; VICReg-ctr and VICReg-exp stay with the
  reference there, as the table orders them in one process.
"""

from __future__ import annotations

import functools
import os

import torch

from . import _cost

BACKENDS = ("auto", "torch", "triton", "cuda")
ENV_VAR = "DUALITY_KERNELS_BACKEND"

# Which ops each compiled backend implements. The torch reference implements all of them.
_IMPLEMENTED = {
    "triton": frozenset({
        "normalized_gram", "covariance", "cross_correlation", "sample_contrastive_criterion",
        "dimension_contrastive_criterion", "duality_terms", "vicreg_loss", "barlow_twins_loss",
        "spectral_contrastive_loss",  # ops/triton/gram.py
        "ntxent_loss", "dcl_loss", "infonce_loss", "vicreg_exp_loss", "vicreg_ctr_loss",  # ops/triton/lse.py
    }),
    "cuda": frozenset({
        "normalized_gram", "covariance", "cross_correlation", "sample_contrastive_criterion",
        "dimension_contrastive_criterion", "duality_terms", "vicreg_loss", "barlow_twins_loss",
        "spectral_contrastive_loss",  # ops/cuda.py over csrc/bindings.cpp + csrc/kernels/gram_ops.cu
    }),
}


# The ops whose compiled implementation has the SPEC §5 gather_distributed form.
_GATHERS = {
    "triton": frozenset({
        "ntxent_loss", "dcl_loss", "infonce_loss",  # ops/triton/lse.py
        "vicreg_loss", "barlow_twins_loss", "spectral_contrastive_loss",  # ops/gathered.py over gram.py
        "vicreg_ctr_loss",  # ops/gathered.py over lse.py's anchor_lse
    }),
    "cuda": frozenset({"vicreg_loss", "barlow_twins_loss", "spectral_contrastive_loss"}),  # ops/gathered.py
}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this op on this machine or these tensors."""


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


@functools.lru_cache(maxsize=None)
def available(backend: str) -> bool:
    """Whether a compiled backend can be imported in this process (cached: imports do not change)."""
    if backend == "triton":
        from .ops.triton import _common

        return _common.is_available()
    from .ops import cuda as cuda_ops

    return cuda_ops.is_available()


def _auto(op: str, z: torch.Tensor, distributed: bool) -> str:
    """The automatic choice (module docstring): shapes, dtype and device only."""
    if z.device.type != "cuda":
        return "torch"
    n, d = z.shape
    for be in _cost.auto_order(op, n, d, z.dtype):
        if be == "torch":
            break
        if op in _IMPLEMENTED[be] and (not distributed or op in _GATHERS[be]) and available(be):
            return be
    return "torch"


def resolve(backend, op: str, z: torch.Tensor, distributed: bool = False) -> str:
    """The concrete backend ("torch", "triton" or "cuda") that runs ``op`` on tensor ``z``;
    ``distributed``: the call computes SPEC §5's global-batch form across several ranks."""
    choice = requested(backend)
    if choice == "auto":
        return _auto(op, z, distributed)
    if choice == "torch":
        return choice
    if op not in _IMPLEMENTED[choice]:
        have = sorted(_IMPLEMENTED[choice])
        raise BackendUnavailableError(
            f"backend={choice!r} does not implement {op} in this version"
            + (f" (it implements: {', '.join(have)})" if have else "")
            + "; use backend='torch' or 'auto'"
        )
    if choice == "triton":
        from .ops.triton import _common

        if not _common.is_available():
            raise BackendUnavailableError(f"backend='triton' is unavailable: {_common.unavailable_reason()}")
        why = _common.device_problem(z)
        if why:
            raise ValueError(why)
    if choice == "cuda":
        cuda_ops = _cuda_ops()
        if not cuda_ops.is_available():
            raise BackendUnavailableError(f"backend='cuda' is unavailable: {cuda_ops.unavailable_reason()}")
        kind = z.device.type
        if kind != "cuda" and not (kind == "cpu" and cuda_ops.simulating()):
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {z.device}")
    return choice


_CUDA_OPS = None


def _cuda_ops():
    """duality_kernels.ops.cuda, imported once: an import statement on every call costs about a
    microsecond of host time, a sizeable share of a small call (benchmarks/host_overhead.py)."""
    global _CUDA_OPS
    if _CUDA_OPS is None:
        from .ops import cuda as cuda_ops

        _CUDA_OPS = cuda_ops
    return _CUDA_OPS


def require_single_process(backend: str, op: str, ctx) -> None:
    """Compiled ops without a gathered form compute one process's batch; SPEC §5 stays with torch."""
    if backend in ("triton", "cuda") and ctx.active and op not in _GATHERS[backend]:
        raise BackendUnavailableError(
            f"backend={backend!r} does not implement {op} with gather_distributed=True across "
            f"{ctx.world} processes in this version; use backend='torch' or 'auto'"
        )
