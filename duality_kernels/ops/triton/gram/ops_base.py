"""What every op of the covariance family shares: custom-op registration with fakes and autograd
(``_register``), the incoming gradients, and the fakes' shapes."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from ... import registry
from ..._direct import Spec
from .._common import acc_dtype, device_rule
from .plan import _Plan

Tensor = torch.Tensor


_ZEROS: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}


def _grads(like: Tensor, dtype: torch.dtype, gs, cached: bool) -> List[Tensor]:
    """Incoming 0-dim gradients in ``dtype``, a zero for each unused output (None). ``cached``
    (eager calls): one read-only zero per device and dtype, kept, so no fill launch per call;
    traced backwards create theirs (a kept tensor would become a graph constant)."""
    zero = None
    out = []
    for g in gs:
        if g is None:
            if zero is None:
                key = (like.device, dtype)
                zero = _ZEROS.get(key) if cached else None
                if zero is None:
                    zero = torch.zeros((), dtype=dtype, device=like.device)
                    # not from inside a CUDA graph capture: its fill would run only on replay
                    if cached and not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
                        _ZEROS[key] = zero
            out.append(zero)
        else:
            out.append(g.to(dtype).contiguous())
    return out


def _new(z: Tensor) -> Tensor:
    """A contiguous tensor like z (the gradients, and the fp32/fp64 products written into them)."""
    return torch.empty(z.shape, dtype=z.dtype, device=z.device)


def _none(z: Tensor, dtype=torch.float32) -> Tensor:
    return torch.empty((0,), dtype=dtype, device=z.device)


def _e(z: Tensor, shape, dtype=None) -> Tensor:
    return z.new_empty(shape, dtype=z.dtype if dtype is None else dtype)


def _fake_saved(z: Tensor, pl: _Plan, m: int, views: int, full_views: int, x_views: int, vec: bool,
                wide_gram: bool = False):
    """Fakes of (x, gram, rs, w) as the forward ops save them (see each op's impl); ``wide_gram``:
    a float64 Gram saved under ``pl.wide``."""
    n, d = z.shape
    x = _e(z, (0,)) if pl.ident else _e(z, (x_views, n, d))
    gacc = torch.float64 if (wide_gram and pl.wide) else pl.acc
    gram = _e(z, (views, m, m)) if pl.ident else _e(z, (full_views, m, m), gacc)
    rs = _e(z, (views, m) if pl.scale else (0,), torch.float32)
    w = _e(z, (views, m) if (pl.ident and vec) else (0,), torch.float32)
    return x, gram, rs, w


def _scalars(z: Tensor, pl: _Plan, k: int) -> List[Tensor]:
    return [_e(z, (), pl.acc) for _ in range(k)]


# ============================================================================================
# The ops (docs/design.md §1–3): duality_kernels::<op>_fwd / _bwd custom ops with fakes; the
# forward's registered autograd saves the tensor inputs and the forward's outputs past the results,
# and calls the backward op with them, the incoming gradients and the non-tensor inputs.


def _register(name: str, fwd_impl, fwd_fake, bwd_impl, bwd_fake, nz: int, nres: int,
              scalar: bool, gathers: bool = False) -> Spec:
    """Registers this backend's op ``name`` in ops/registry.py (custom ops ``duality_kernels::<name>_fwd``
    / ``_bwd``, eager Spec, drop-in Function, capability) and returns its Spec. nz: leading tensor
    inputs (None allowed: normalized_gram's z2); nres: results returned to the caller (the rest is
    saved for the backward); scalar: the results are 0-dim (their gradients arrive as 0-dim
    tensors, or None when unused) rather than one matrix; gathers: ops/gathered.py builds the
    distributed form of docs/spec.md §5 on this backend's pieces."""

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:nz], *output[nres:])
        ctx.args = tuple(inputs[nz:])

    def backward(ctx, run_bwd, *grads):
        saved = ctx.saved_tensors
        none = (None,) * (nz + len(ctx.args))
        if scalar:
            gs = _grads(saved[0], acc_dtype(saved[0].dtype), grads[:nres], getattr(ctx, "direct", False))
        elif grads[0] is None:
            return none
        else:
            gs = [grads[0]]
        dz = run_bwd(*saved, *gs, *ctx.args)
        dz = (dz,) if isinstance(dz, Tensor) else tuple(dz)
        return dz + none[len(dz):]

    return registry.register(name, "triton", fwd=fwd_impl, fwd_fake=fwd_fake, bwd=bwd_impl, bwd_fake=bwd_fake,
                             setup=setup, backward=backward, device=device_rule, gathers=gathers).spec


def _bwd_fake2(z1, z2, *_args):
    return _new(z1), _new(z2)
