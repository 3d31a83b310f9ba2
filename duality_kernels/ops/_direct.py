"""The eager path of the compiled ops: a ``torch.autograd.Function`` over each custom op's own
implementation, so that eager calls skip torch.library's Python dispatch.

Every compiled entry point is a ``torch.library.custom_op`` with a fake and a registered autograd
(docs/design.md convention 2), which is what ``torch.compile(fullgraph=True)`` needs. Calling those ops
eagerly goes through torch.library's Python dispatch, which costs more than the kernels at small
sizes (a do-nothing custom op forward + backward: about 4× the host time of the same work in a
``torch.autograd.Function``; docs/measurements.md). So outside
``torch.compile``, :func:`apply` runs the op's implementation, setup_context and backward (the
very functions registered with the op) inside :class:`Direct`, and the backward calls the backward
op's implementation (:func:`pick`); while compiling it calls the custom op. Both paths run the same
code on the same tensors, so they agree bit for bit (tests check it).
"""

from typing import Callable, NamedTuple

import torch

from .._policy import autocast_off


class Spec(NamedTuple):
    op: Callable        # the custom op (the torch.compile path)
    impl: Callable      # its implementation
    setup: Callable     # its setup_context(ctx, inputs, output)
    backward: Callable  # its registered backward
    results: int        # how many leading outputs the callers use (the rest is saved for backward)
    listed: bool = False  # the op returns List[Tensor]: backward(ctx, grads) instead of (ctx, *grads)


class Direct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, *inputs):
        # Unused outputs' gradients arrive as None instead of materialized zeros: every backward
        # here handles None, and the zeros would be one fill launch per unused term.
        ctx.set_materialize_grads(False)
        with autocast_off():
            out = spec.impl(*inputs)
        spec.setup(ctx, inputs, out)
        ctx.direct = True
        ctx.spec = spec
        ctx.outputs = len(out)
        return tuple(out[:spec.results])

    @staticmethod
    def backward(ctx, *grads):
        spec = ctx.spec
        gs = list(grads) + [None] * (ctx.outputs - spec.results)  # outputs nobody received
        dx = spec.backward(ctx, gs) if spec.listed else spec.backward(ctx, *gs)
        return (None, *dx)


UNSUPPORTED_TRANSFORM = (
    "duality_kernels' compiled backends (triton, cuda) do not support forward-mode AD or torch.func transforms "
    "(jvp, jacfwd, hessian, grad, jacrev, vmap); use backend='torch', which does (docs/spec.md §8)")
UNSUPPORTED_DOUBLE_BACKWARD = (
    "duality_kernels' compiled backends (triton, cuda) compute a backward that is not itself differentiable: "
    "double backward (create_graph=True, Hessian-vector products, gradient penalties) needs backend='torch' "
    "(docs/spec.md §8)")


def _refuse_duals(inputs) -> None:
    """Forward-mode AD: inside a dual level, raise for a dual tensor among ``inputs``."""
    if torch.autograd.forward_ad._current_level >= 0:
        for t in inputs:
            if isinstance(t, torch.Tensor) and torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
                raise NotImplementedError(UNSUPPORTED_TRANSFORM)


def refuse_transforms(inputs) -> None:
    """Raises for forward-mode AD (dual tensors) and torch.func transforms, which the compiled ops do
    not implement (they would otherwise give zeros or torch's internal errors). torch.compile's
    tracing is not a transform."""
    if torch.compiler.is_compiling():
        return
    if torch._C._are_functorch_transforms_active():
        raise NotImplementedError(UNSUPPORTED_TRANSFORM)
    _refuse_duals(inputs)


class _NotDifferentiableAgain(torch.autograd.Function):
    """value, tied to the op's inputs by a node whose backward raises UNSUPPORTED_DOUBLE_BACKWARD."""

    @staticmethod
    def forward(ctx, value, *inputs):
        return value.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(UNSUPPORTED_DOUBLE_BACKWARD)


def remember_inputs(ctx, inputs) -> None:
    """Keeps the forward's inputs for once_differentiable (a reference: most ops save them anyway)."""
    ctx.dk_inputs = inputs


def once_differentiable(ctx, grads: tuple) -> tuple:
    """A backward's gradients, marked as not differentiable again. Under create_graph=True (grad mode
    on in the backward) each becomes the output of a node tied to the forward's inputs whose backward
    raises, so differentiating the gradient fails clearly instead of dropping this op's second
    derivative (a gradient with no graph would count as a constant)."""
    if not torch.is_grad_enabled():
        return grads
    inputs = [t for t in getattr(ctx, "dk_inputs", ()) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not inputs:
        return grads
    return tuple(_NotDifferentiableAgain.apply(g, *inputs) if isinstance(g, torch.Tensor) else g for g in grads)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def apply(spec: Spec, *inputs):
    """The op's outputs: all of them through the custom op when tracing or compiling (or for a tensor
    subclass: fake, functional and other tracing tensors need the custom op and its fake), the first
    ``spec.results`` through Direct for plain eager tensors. torch.func transforms and dual tensors
    raise (refuse_transforms)."""
    if torch.compiler.is_compiling():
        return spec.op(*inputs)
    if torch._C._are_functorch_transforms_active():
        raise NotImplementedError(UNSUPPORTED_TRANSFORM)
    _refuse_duals(inputs)
    if all(type(t) in _PLAIN for t in inputs if isinstance(t, torch.Tensor)):
        return Direct.apply(spec, *inputs)
    return spec.op(*inputs)


def pick(ctx, op: Callable, impl: Callable) -> Callable:
    """The backward op to call from a registered backward: its implementation under Direct."""
    return impl if getattr(ctx, "direct", False) else op


def function(spec: Spec, name: str, doc: str) -> type:
    """A drop-in ``torch.autograd.Function`` subclass for ``spec`` (docs/design.md convention 2, the
    flash-attention pattern): ``name.apply(*inputs)`` returns the op's results; its forward and
    backward call only the custom ops, so torch.compile(fullgraph=True) traces it. (The library's
    own eager calls take the cheaper :class:`Direct` path through :func:`apply`.)"""

    def forward(ctx, *inputs):
        out = spec.op(*inputs)
        spec.setup(ctx, inputs, out)
        ctx.outputs = len(out)
        return tuple(out[:spec.results])

    def backward(ctx, *grads):
        gs = list(grads) + [None] * (ctx.outputs - spec.results)
        return spec.backward(ctx, gs) if spec.listed else spec.backward(ctx, *gs)

    return type(name, (torch.autograd.Function,), {
        "__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward),
        "__module__": spec.impl.__module__,
    })
