"""Cross-cutting rules every public function and every op entry follows (docs/spec.md §8).

Autocast never reaches inside a function of this library: each computes as for its input dtype
(float32 inputs honor torch's matmul precision; bf16/fp16 inputs run their products in the input
dtype with float32 accumulation) and returns what it returns outside autocast: float32 losses and
matrices for fp16/bf16/fp32 inputs, float64 for float64. An autocast context around the call would
otherwise turn float32 products inside an op into bf16 ones that the next kernel does not expect.
"""

import contextlib
import functools

import torch


def autocast_off():
    """A context that disables autocast for CPU and CUDA while inside, or a no-op when it is off."""
    if not (torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cuda", enabled=False))
    stack.enter_context(torch.autocast("cpu", enabled=False))
    return stack


def public(fn):
    """A public function of the package: runs with autocast disabled (module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with autocast_off():
            return fn(*args, **kwargs)

    return wrapper
