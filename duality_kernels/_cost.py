"""The one cost model of the library (DESIGN.md, "The idea that shapes the code").

A sum of squared entries of a Gram-type matrix can be computed on either side of the duality
(SPEC §2): the sample side (N×N, about N²·D flops and N² memory) or the dimension side
(D×D, about N·D² flops and D² memory). Every op asks this module which side to use.
"""

from __future__ import annotations

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
