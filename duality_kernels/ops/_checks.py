"""How an op's argument contract (docs/spec.md §6) guards its compiled entry points.

An op's contract is a function of its forward arguments that raises ValueError/TypeError naming the
argument and its value, before any kernel runs; it is defined beside the op's public function and
description (functional/<family>.py) and called by that function. The compiled ops' own entry
points, the forward custom ops and the drop-in Functions, run it through :func:`checked` (the
registry wires it), followed by the backend's device rule. Backward ops take the forward's saved
tensors, which the C++ entry points check again.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable


from .. import _validation as V
from .._policy import autocast_off

OP_SIDES = ("sample", "dimension")


def _rule(device):
    """A device rule: a callable, or (during the move to the registry) a backend's name."""
    if not isinstance(device, str):
        return device
    if device == "cuda":
        from ._cuda_ext import device_rule
    else:
        from .triton._common import device_rule
    return device_rule


def checked(check: Callable, device, fn: Callable) -> Callable:
    """``fn`` behind ``check(*args)`` and then ``device(first tensor)``: the entry of a forward custom
    op (its implementation) or of a drop-in Function (its op). functools.wraps keeps fn's
    signature, from which torch.library infers the op's schema."""
    rule = _rule(device)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        check(*args, **kwargs)
        rule(args[0])
        with autocast_off():  # docs/spec.md §8: autocast never reaches inside an op
            return fn(*args, **kwargs)

    # the signature with fn's annotations evaluated in fn's module (they may be strings there,
    # which torch.library would otherwise evaluate here, where the names are missing)
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)
    return wrapper


def dropin(spec, check: Callable, device, name: str, doc: str) -> type:
    """The drop-in torch.autograd.Function ``name`` over an op's Spec (ops/_direct.py) whose
    forward runs the contract and the device rule before the op."""
    from ._direct import function

    return function(spec._replace(op=checked(check, device, spec.op)), name, doc)


def check_side(side) -> None:
    """An op's resolved side: "sample" or "dimension" (the public functions resolve "auto" first)."""
    V.check_choice(side, "side", OP_SIDES)


MOMENTS_NONE, MOMENTS_SELF, MOMENTS_CROSS = MOMENTS_MODES = (0, 1, 2)  # ops/gathered.py's moments modes
