"""Backend selection: "auto" | "torch" | "triton" | "cuda", and the DUALITY_KERNELS_BACKEND override.

Rules (decided from shapes, dtypes and devices only, so no host-device synchronization):

- An explicit ``backend=`` argument other than "auto" is used as given.
- ``backend="auto"`` takes the value of the environment variable DUALITY_KERNELS_BACKEND when it
  is set (any of the four names), otherwise the automatic choice.
- The automatic choice is the torch reference on CPU tensors. On CUDA tensors it is also the torch
  reference in this version: the Triton kernels have only run under the Triton interpreter and the
  CUDA extension has not run on a GPU yet, and "auto" switches only on measured crossovers
  (DESIGN.md). ``benchmarks/gpu_check.sh`` measures them.
- "triton" runs on CUDA tensors, and on CPU tensors under the Triton interpreter
  (TRITON_INTERPRET=1), which is how the test suite checks the kernels without a GPU. NT-Xent, DCL
  and InfoNCE implement ``gather_distributed`` (SPEC §5) in the kernels; the other Triton ops
  compute one process's batch and raise BackendUnavailableError inside an active group.
- "cuda" runs on CUDA tensors (duality_kernels._C); the test suite also runs it on CPU tensors
  through a CPU simulator of the same C++ source (tests/csim.py, ``ops.cuda.simulating()``). Its
  ops compute one process's batch and raise BackendUnavailableError inside an active group.
- A backend that cannot run an op raises ``BackendUnavailableError`` (a RuntimeError) that says
  why and what to do; an unknown name raises ValueError (SPEC §6).
"""

from __future__ import annotations

import os

import torch

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


def resolve(backend, op: str, z: torch.Tensor) -> str:
    """The concrete backend ("torch", "triton" or "cuda") that runs ``op`` on tensor ``z``."""
    choice = requested(backend)
    if choice == "auto":
        return "torch"
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
        from .ops import cuda as cuda_ops

        if not cuda_ops.is_available():
            raise BackendUnavailableError(f"backend='cuda' is unavailable: {cuda_ops.unavailable_reason()}")
        if z.device.type != "cuda" and not (z.device.type == "cpu" and cuda_ops.simulating()):
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {z.device}")
    return choice


def require_single_process(backend: str, op: str, ctx) -> None:
    """Compiled ops without a gathered form compute one process's batch; SPEC §5 stays with torch."""
    if backend in ("triton", "cuda") and ctx.active:
        raise BackendUnavailableError(
            f"backend={backend!r} does not implement {op} with gather_distributed=True across "
            f"{ctx.world} processes in this version; use backend='torch' or 'auto'"
        )
