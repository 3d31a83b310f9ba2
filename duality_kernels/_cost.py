"""The one cost model of the library (docs/design.md, "The idea that shapes the code").

A sum of squared entries of a Gram-type matrix can be computed on either side of the duality
(docs/spec.md §2): the sample side (N×N, about N²·D flops and N² memory) or the dimension side
(D×D, about N·D² flops and D² memory). Every op asks this module which side to use.
"""

from __future__ import annotations

import torch

SIDES = ("auto", "sample", "dimension")


def gram_flops(n: int, d: int, side: str) -> int:
    """Multiply-adds of one Gram matrix on ``side`` for an (n, d) input."""
    return n * n * d if side == "sample" else n * d * d


def cheaper_side(n: int, d: int) -> str:
    """The side with fewer flops and less memory; ties go to the dimension side."""
    return "sample" if n < d else "dimension"


def resolve_side(side: str, n: int, d: int) -> str:
    """``side`` as validated by the caller: "auto" becomes the cheaper side."""
    return cheaper_side(n, d) if side == "auto" else side


# --------------------------------------------------------------------------------------------
# Which backend "auto" runs on CUDA tensors (``_backend.resolve``): the one table, read from the
# project's H200 measurement (docs/measurements.md; the rows are in
# benchmarks/results/h200_2026-11-30_headline.csv). Each entry is an order of
# preference; "auto" takes the first backend that is available there and implements the op
# (with gather_distributed inside a process group), ending with the torch reference.
#
# - covariance family, spectral, primitives, criteria: the CUDA extension was the fastest
#   provider at every bf16 headline shape (VICReg 2048×8192 0.85 ms vs triton 1.95, eager 5.09,
#   compile 2.87; 16384×2048 1.38 vs 3.60; Barlow 0.85-1.03; spectral 16384×256 0.38 vs 0.55) and
#   at 19 of the 20 points of the fp32 grid; Triton is the fallback when _C was not built.
# - NT-Xent and DCL: Triton beat eager in bf16 at N = 2048 and 16384, D = 256 (0.49 vs 1.00 ms,
#   11.3 vs 22.4 ms, DCL 11.9 vs 26.9 ms) and at no unaligned size (N or D not a multiple of
#   16); fp16 takes the same kernels. Elsewhere (fp32, D > 256, unaligned) the reference.
# - InfoNCE (TF32: triton 70.2 ms vs eager 43.4), VICReg-exp (6.54 vs 2.22) and VICReg-ctr
#   (60.9 vs 2.93): the reference.

_PAIR_LSE = frozenset({"ntxent_loss", "dcl_loss"})
_HALF = (torch.bfloat16, torch.float16)


def auto_order(family: str, op: str, n: int, d: int, dtype: torch.dtype) -> tuple:
    """Backends "auto" tries, in order, for public function ``op`` of ``family`` (ops/registry.py:
    "gram", "lse", or None for a function no compiled backend registers) on CUDA tensors of shape
    (n, d) and ``dtype``."""
    if family == "gram":
        return ("cuda", "triton", "torch")
    if op in _PAIR_LSE and dtype in _HALF and n % 16 == 0 and d % 16 == 0 and d <= 256:
        return ("triton", "torch")
    return ("torch",)
