"""The op registry: every compiled op described once, every backend registered into it.

An :class:`OpDef` states what an op is for all backends: its name, the public functions it serves,
its family (the "auto" table's key, ``_cost.auto_order``), its argument contract, how many leading
outputs callers receive (the rest is saved for the backward), and its drop-in
``torch.autograd.Function``; it is written beside the op's public function (:func:`describe`). A
backend calls :func:`register` with its
forward and backward implementations, their fakes and its autograd glue; that one call makes the
custom ops ``duality_kernels::<prefix><name>_fwd`` / ``_bwd`` with their fakes and registered
autograd, the eager fast path (``_direct.Spec``), the drop-in Function, and the capability entry
that ``_backend`` reads (which public functions, dtypes, and whether the distributed form exists).
How to add an op: docs/adding_an_op.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from . import _checks
from ._direct import Spec, function, once_differentiable, remember_inputs

GRAM, LSE, INTERNAL = "gram", "lse", "internal"
FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class OpDef(NamedTuple):
    name: str                   # custom ops duality_kernels::<backend prefix><name>_fwd / _bwd
    provides: Tuple[str, ...]   # the public functions it implements
    family: str                 # GRAM, LSE (the auto table's rows) or INTERNAL (a piece of another op)
    check: Optional[Callable]   # argument contract of the forward op (beside its public function), None: unchecked
    results: int                # leading outputs returned to callers; the rest is saved for backward
    function: str = ""          # the drop-in torch.autograd.Function's class name ("" for none)
    doc: str = ""               # its docstring: the apply() signature and results


# op name -> its description, filled by ``describe`` where each op's public function and contract are
# defined (functional/<family>.py; the backends' internal pieces in ops/gathered.py)
OPS: Dict[str, OpDef] = {}
# public function -> its family (read without importing any backend)
FAMILY: Dict[str, str] = {}


def gram_functions() -> Tuple[str, ...]:
    """The drop-in Functions of the covariance family, which both compiled backends export."""
    return tuple(sorted(d.function for d in OPS.values() if d.family == GRAM and d.function))


def describe(*defs: OpDef) -> None:
    """Adds op descriptions to ``OPS`` (a name is described once). The module that defines an op's public
    function and contract calls it at import; ``import duality_kernels`` imports every such module before
    any backend module can register an op."""
    for d in defs:
        if d.name in OPS:
            raise ValueError(f"op {d.name!r} is already described")
        OPS[d.name] = d
        FAMILY.update({p: d.family for p in d.provides})


def op(name: str, provides: Tuple[str, ...], family: str, results: int, function: str = "", doc: str = ""):
    """Decorates an op's contract with the op's description: ``describe(OpDef(name, provides, family,
    contract, results, function, doc))``; the contract is returned unchanged."""
    def deco(check: Callable) -> Callable:
        describe(OpDef(name, provides, family, check, results, function, doc))
        return check
    return deco


class Backend(NamedTuple):
    prefix: str                 # custom op name prefix
    modules: Tuple[str, ...]    # importing these, and every module of these packages, registers the ops


BACKENDS: Dict[str, Backend] = {
    "triton": Backend("", ("duality_kernels.ops.triton",)),
    "cuda": Backend("cuda_", ("duality_kernels.ops.cuda",)),
}


class Capability(NamedTuple):
    op: str                     # the OpDef that implements it
    dtypes: frozenset           # input dtypes it runs
    gathers: bool               # it has the distributed (gather_distributed=True) form of docs/spec.md §5


class Registered(NamedTuple):
    spec: Spec                  # the eager fast path (_direct.apply)
    fwd: Callable               # the forward custom op
    bwd: Callable               # the backward custom op
    function: Optional[type]    # the drop-in torch.autograd.Function, or None


_CAPS: Dict[str, Dict[str, Capability]] = {b: {} for b in BACKENDS}
_REGISTERED: Dict[Tuple[str, str], Registered] = {}
_LOADED: Dict[str, bool] = {}


def register(name: str, backend: str, *, fwd: Callable, fwd_fake: Callable, bwd: Callable, bwd_fake: Callable,
             setup: Callable, backward: Callable, device: Callable, listed: bool = False, gathers: bool = False,
             dtypes: frozenset = FLOAT_DTYPES) -> Registered:
    """Registers ``backend``'s implementation of op ``name`` (see the module docstring).

    ``backward(ctx, run_bwd, *grads)`` (``(ctx, run_bwd, grads)`` when ``listed``) receives the
    backward op to call: the custom op while tracing, its implementation on the eager fast path.
    ``device(z)`` raises for a tensor the backend cannot run on (the forward op and the drop-in
    Function check their arguments with the op's contract, then the device, before any kernel)."""
    d = OPS[name]
    qual = f"duality_kernels::{BACKENDS[backend].prefix}{name}"
    entry = _checks.checked(d.check, device, fwd) if d.check is not None else fwd
    fwd_op = torch.library.custom_op(f"{qual}_fwd", mutates_args=())(entry)
    fwd_op.register_fake(fwd_fake)
    bwd_op = torch.library.custom_op(f"{qual}_bwd", mutates_args=())(bwd)
    bwd_op.register_fake(bwd_fake)

    # the backward is not differentiable again: under create_graph=True its results raise when they
    # are differentiated (docs/spec.md §8), and the backward itself runs without building a graph
    if listed:
        def autograd_backward(ctx, grads):
            with torch.no_grad():
                dx = backward(ctx, bwd if getattr(ctx, "direct", False) else bwd_op, grads)
            return once_differentiable(ctx, tuple(dx))
    else:
        def autograd_backward(ctx, *grads):
            with torch.no_grad():
                dx = backward(ctx, bwd if getattr(ctx, "direct", False) else bwd_op, *grads)
            return once_differentiable(ctx, tuple(dx))

    def autograd_setup(ctx, inputs, output):
        setup(ctx, inputs, output)
        remember_inputs(ctx, inputs)

    # an op returning List[Tensor] gets its gradients as one list, from torch.library and _direct alike
    fwd_op.register_autograd(autograd_backward, setup_context=autograd_setup)
    spec = Spec(fwd_op, fwd, autograd_setup, autograd_backward, d.results, listed)
    fn = None
    if d.function:
        checked_op = _checks.checked(d.check, device, fwd_op)
        fn = function(spec._replace(op=checked_op), d.function, d.doc)
    reg = Registered(spec, fwd_op, bwd_op, fn)
    _REGISTERED[(backend, name)] = reg
    declare(backend, name, gathers=gathers, dtypes=dtypes)
    return reg


def declare(backend: str, name: str, *, gathers: bool = False, dtypes: frozenset = FLOAT_DTYPES) -> None:
    """The capability entries of op ``name`` on ``backend`` (``register`` makes them)."""
    for public in OPS[name].provides:
        _CAPS[backend][public] = Capability(name, dtypes, gathers)


@torch.compiler.assume_constant_result
def load(backend: str) -> bool:
    """Imports ``backend``'s op modules (once); False when they cannot be imported here. (torch.compile
    runs it once while tracing and keeps the result: the imports are not traceable.)"""
    ok = _LOADED.get(backend)
    if ok is None:
        try:
            for name in BACKENDS[backend].modules:
                _import_all(name)
            ok = True
        except ImportError:
            ok = False
        _LOADED[backend] = ok
    return ok


def _import_all(name: str) -> None:
    """Imports module ``name`` and, for a package, every module below it: an op's module registers
    its ops at import, so a new one needs no import line elsewhere."""
    mod = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", ()), prefix=f"{name}."):
        importlib.import_module(info.name)


def capability(backend: str, public: str) -> Optional[Capability]:
    """What ``backend`` declares for public function ``public`` (None: it does not implement it)."""
    if backend not in BACKENDS or not load(backend):
        return None
    return _CAPS[backend].get(public)


def implemented(backend: str) -> Dict[str, Capability]:
    """Every public function ``backend`` implements, with its capability."""
    return dict(_CAPS[backend]) if backend in BACKENDS and load(backend) else {}


def registered(backend: str, name: str) -> Registered:
    """The registration of op ``name`` on ``backend`` (its spec, custom ops and drop-in Function)."""
    if (backend, name) not in _REGISTERED:
        load(backend)
    return _REGISTERED[(backend, name)]
