"""What every Triton op file shares: availability, device rules, precision and block choices.

Triton is imported lazily by the op files (``import duality_kernels`` never needs it). Kernels run
on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported), which is how the default test suite checks them on a machine
without a GPU (DESIGN convention 10).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as _exc:  # ImportError, or a broken install
    triton = None
    tl = None
    _IMPORT_ERROR = _exc


def interpreting() -> bool:
    """True under the Triton interpreter (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> bool:
    return triton is not None


def unavailable_reason() -> str:
    if triton is None:
        return (f"triton is not importable ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); "
                "`pip install triton`, or use backend='torch'")
    return ""


def device_problem(z: torch.Tensor) -> str:
    """Why the Triton kernels cannot run on ``z``'s device ("" when they can)."""
    if z.device.type == "cuda":
        return ""
    if interpreting() and z.device.type == "cpu":
        return ""
    return (f"backend='triton' needs CUDA tensors, got tensors on {z.device} "
            "(CPU tensors run only under the Triton interpreter, TRITON_INTERPRET=1)")


def device_guard(z: torch.Tensor):
    """Triton launches on the current CUDA device: make it z's (multi-GPU processes)."""
    return torch.cuda.device(z.device) if z.device.type == "cuda" else contextlib.nullcontext()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """SPEC notation: reductions in float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def input_precision(dtype: torch.dtype) -> str:
    """The ``tl.dot`` input precision that honors torch's float32 matmul setting (DESIGN convention 4).

    float32 under "highest" is IEEE; under "high"/"medium" TF32 is allowed, as for torch matmuls.
    bf16/fp16 use tensor cores with fp32 accumulation (the value is triton's default, ignored for
    them); float64 is IEEE.
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "tf32"  # triton's default; has no effect on bf16/fp16 operands


def dot_block(n: int, cap: int = 64) -> int:
    """A power-of-two block for a ``tl.dot`` dimension: at least 16, at most ``cap``."""
    b = 16
    while b < n and b < cap:
        b *= 2
    return b


if triton is not None:

    @triton.jit
    def scalar(s, ACC: tl.constexpr):
        """A float64 kernel argument (annotated ``tl.float64``) as an ACC scalar. A plain Python
        float argument is passed as float32, which costs float64 inputs ~1e-8 relative accuracy;
        under the interpreter the argument stays a Python float, where ``tl.cast`` would round it
        through float32 first, hence the sum."""
        return tl.sum(tl.zeros((1,), ACC) + s, axis=0).to(ACC)
