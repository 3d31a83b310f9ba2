"""gather_distributed support (SPEC §5).

This version implements the single-process case: without an initialized process group (or with a
group of one rank) ``gather_distributed=True`` behaves as W = 1, as SPEC §5 says. With W > 1 it
raises NotImplementedError rather than return a loss with the wrong semantics; the all-gather with
a gradient-summing backward is the distributed issue's work.
"""

from __future__ import annotations

import torch


def is_supported() -> bool:
    return torch.distributed.is_available()


def check_gather(gather_distributed) -> bool:
    if not isinstance(gather_distributed, bool):
        raise TypeError(
            f"gather_distributed must be a bool, got {gather_distributed!r} ({type(gather_distributed).__name__})"
        )
    if gather_distributed and not is_supported():
        raise ValueError(
            "gather_distributed=True needs torch.distributed, which this torch build does not have "
            "(torch.distributed.is_available() is False)"
        )
    return gather_distributed


def world_size() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def require_single_rank(op: str) -> None:
    """Called when gather_distributed=True: fine for W = 1, refused (for now) for W > 1."""
    w = world_size()
    if w > 1:
        raise NotImplementedError(
            f"{op}(gather_distributed=True) across {w} ranks is not implemented in this version; "
            "call it with gather_distributed=False (each rank's local batch) for now"
        )
