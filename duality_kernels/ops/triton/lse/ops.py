"""The log-sum-exp family's custom ops (docs/design.md conventions 1–3: forward and backward
separate, fakes, registered autograd), their eager Specs, the drop-in ``torch.autograd.Function``
subclasses, and the functions functional.py calls (inputs validated there).

Ops: ``ntxent_fwd/_bwd``, ``dcl_fwd/_bwd``, ``infonce_fwd/_bwd``, ``vicreg_exp_fwd/_bwd``,
``vicreg_ctr_fwd/_bwd`` (the losses, reduced inside the op) and ``anchor_lse_fwd/_bwd``
(gather_distributed, docs/spec.md §5: the anchors' pass and the keys' pass with the masks read
column-wise).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import registry
from ..._direct import apply
from .._common import acc_dtype, device_rule
from .contrastive import (_anchor_lse_bwd_impl, _anchor_lse_fwd_impl, _dcl_bwd_impl, _dcl_fwd_impl,
                          _infonce_bwd_impl, _infonce_fwd_impl, _ntxent_bwd_impl, _ntxent_fwd_impl)
from .plan import Tensor, _grad_vector, _op_buffer
from .vicreg import _vicreg_ctr_bwd_impl, _vicreg_ctr_fwd_impl, _vicreg_exp_bwd_impl, _vicreg_exp_fwd_impl


# --------------------------------------------------------------------------------------------
# NT-Xent and DCL on one process: the 2N rows [z1; z2] against themselves (docs/spec.md §4)


def _pair_outputs_fake(z1, reduction, normalization):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    m = 2 * n
    loss = z1.new_empty((m,) if reduction == "none" else (), dtype=acc)
    stats = 0 if normalization == "l2" else d
    norm = normalization != "dim_std"
    return (loss, _op_buffer(m, d, z1.dtype, z1.device), z1.new_empty((3, m), dtype=acc), z1.new_empty((m,), dtype=acc),
            z1.new_empty((m if norm else 0,), dtype=acc), z1.new_empty((m if norm else 0,), dtype=acc),
            z1.new_empty((2 if stats else 0, stats) if stats else (0,), dtype=acc),
            z1.new_empty((2 if stats else 0, stats) if stats else (0,), dtype=torch.float64))


def _ntxent_fwd_fake(z1, z2, temperature, similarity, normalization, reduction):
    return _pair_outputs_fake(z1, reduction, normalization)


def _ntxent_setup(ctx, inputs, output):
    z1, z2, temperature, similarity, normalization, reduction = inputs
    ctx.save_for_backward(z1, z2, *output[1:])
    ctx.args = (temperature, similarity, normalization, reduction)
    ctx.mark_non_differentiable(*output[1:])


def _ntxent_backward(ctx, run_bwd, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = run_bwd(z1, z2, *saved, _zeros_if_none(g_loss, saved[2], ctx.args[-1]), *ctx.args)
    return dz[:z1.shape[0]], dz[z1.shape[0]:], None, None, None, None


def _grad_fake(z1: Tensor, *_args) -> Tensor:
    return torch.empty(2 * z1.shape[0], z1.shape[1], dtype=z1.dtype, device=z1.device)


def _two_grads_fake(a: Tensor, b: Tensor, *_args) -> Tuple[Tensor, Tensor]:
    return (torch.empty(a.shape, dtype=a.dtype, device=a.device),
            torch.empty(b.shape, dtype=b.dtype, device=b.device))


def _register(name, fwd, fwd_fake, bwd, bwd_fake, setup, backward, gathers=False):
    """Registers this backend's op ``name`` (ops/registry.py): custom ops, eager Spec, drop-in, capability."""
    return registry.register(name, "triton", fwd=fwd, fwd_fake=fwd_fake, bwd=bwd, bwd_fake=bwd_fake, setup=setup,
                             backward=backward, device=device_rule, gathers=gathers)


def _zeros_if_none(g: Optional[Tensor], like: Tensor, reduction: str) -> Tensor:
    if g is not None:
        return g
    return like.new_zeros(like.shape if reduction == "none" else ())


_NTXENT = _register("ntxent", _ntxent_fwd_impl, _ntxent_fwd_fake, _ntxent_bwd_impl, _grad_fake, _ntxent_setup,
                    _ntxent_backward, gathers=True)
ntxent_fwd, ntxent_bwd, _SPEC_NTXENT = _NTXENT.fwd, _NTXENT.bwd, _NTXENT.spec


def _dcl_fwd_fake(z1, z2, temperature, similarity, reduction):
    return _pair_outputs_fake(z1, reduction, "l2")[:6]


def _dcl_setup(ctx, inputs, output):
    z1, z2, temperature, similarity, reduction = inputs
    ctx.save_for_backward(z1, z2, *output[1:])
    ctx.args = (temperature, similarity, reduction)
    ctx.mark_non_differentiable(*output[1:])


def _dcl_backward(ctx, run_bwd, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = run_bwd(z1, z2, *saved, _zeros_if_none(g_loss, saved[2], ctx.args[-1]), *ctx.args)
    return dz[:z1.shape[0]], dz[z1.shape[0]:], None, None, None


_DCL = _register("dcl", _dcl_fwd_impl, _dcl_fwd_fake, _dcl_bwd_impl, _grad_fake, _dcl_setup, _dcl_backward,
                 gathers=True)
dcl_fwd, dcl_bwd, _SPEC_DCL = _DCL.fwd, _DCL.bwd, _DCL.spec


# --------------------------------------------------------------------------------------------
# InfoNCE (CLIP form): rows of S, then rows of Sᵀ (docs/spec.md §4)


def _infonce_fwd_fake(z1, z2, temperature, reduction):
    return _pair_outputs_fake(z1, reduction, "l2")[:6]


def _infonce_setup(ctx, inputs, output):
    z1, z2, temperature, reduction = inputs
    ctx.save_for_backward(z1, z2, *output[1:])
    ctx.args = (temperature, reduction)
    ctx.mark_non_differentiable(*output[1:])


def _infonce_backward(ctx, run_bwd, g_loss, *unused):
    z1, z2, *saved = ctx.saved_tensors
    dz = run_bwd(z1, z2, *saved, _zeros_if_none(g_loss, saved[2], ctx.args[-1]), *ctx.args)
    return dz[:z1.shape[0]], dz[z1.shape[0]:], None, None


_INFONCE = _register("infonce", _infonce_fwd_impl, _infonce_fwd_fake, _infonce_bwd_impl, _grad_fake, _infonce_setup,
                     _infonce_backward, gathers=True)
infonce_fwd, infonce_bwd, _SPEC_INFONCE = _INFONCE.fwd, _INFONCE.bwd, _INFONCE.spec


# --------------------------------------------------------------------------------------------
# VICReg-exp and VICReg-ctr (docs/spec.md §3)


def _vicreg_lse_fake(z1, ctr):
    n, d = z1.shape
    acc = acc_dtype(z1.dtype)
    m = n if ctr else d
    scalars = [z1.new_empty((), dtype=acc) for _ in range(4)]
    op = _op_buffer(2 * n, d, z1.dtype, z1.device) if ctr else _op_buffer(2 * d, n, z1.dtype, z1.device)
    info = z1.new_empty((2, 2 * n), dtype=acc) if ctr else z1.new_empty((2, d), dtype=torch.float64)
    return (*scalars, op, z1.new_empty((3, 2 * m), dtype=acc), z1.new_empty((2, d), dtype=acc), info)


def _vicreg_lse_setup(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # unused terms: None, not three zero-fill launches
    ctx.save_for_backward(inputs[0], inputs[1], *output[4:])
    ctx.args = tuple(inputs[2:])
    ctx.mark_non_differentiable(*output[4:])


def _vicreg_lse_backward(ctx, run_bwd, g_loss, g_inv, g_var, g_cov, *unused):
    z1, z2, *saved = ctx.saved_tensors
    gs = [g_loss, g_inv, g_var, g_cov]
    if any(g is None for g in gs):  # outputs nobody used: one fill for all of them
        zero = saved[1].new_zeros(())
        gs = [zero if g is None else g for g in gs]
    dz1, dz2 = run_bwd(z1, z2, *saved, *gs, *ctx.args)
    return (dz1, dz2) + (None,) * len(ctx.args)


_VICREG_EXP = _register("vicreg_exp", _vicreg_exp_fwd_impl, lambda z1, z2, *args: _vicreg_lse_fake(z1, False),
                        _vicreg_exp_bwd_impl, _two_grads_fake, _vicreg_lse_setup, _vicreg_lse_backward)
_VICREG_CTR = _register("vicreg_ctr", _vicreg_ctr_fwd_impl, lambda z1, z2, *args: _vicreg_lse_fake(z1, True),
                        _vicreg_ctr_bwd_impl, _two_grads_fake, _vicreg_lse_setup, _vicreg_lse_backward,
                        gathers=True)  # ops/gathered.py over anchor_lse
_SPEC_VICREG_EXP, vicreg_exp_fwd, vicreg_exp_bwd = _VICREG_EXP.spec, _VICREG_EXP.fwd, _VICREG_EXP.bwd
_SPEC_VICREG_CTR, vicreg_ctr_fwd, vicreg_ctr_bwd = _VICREG_CTR.spec, _VICREG_CTR.fwd, _VICREG_CTR.bwd


# --------------------------------------------------------------------------------------------
# anchor_lse: this rank's anchors against the keys of all ranks (docs/spec.md §5, gather_distributed)


def _anchor_lse_fwd_fake(anchors, keys, temperature, normalize, half_a, half_b, off, self_mask, pos, drop_positive,
                         transform):
    acc = acc_dtype(anchors.dtype)
    (m, k), mb = anchors.shape, keys.shape[0]
    ra = m if normalize else 0
    rb = mb if normalize else 0
    e = anchors.new_empty
    return (e((m,), dtype=acc), _op_buffer(m, k, anchors.dtype, anchors.device),
            _op_buffer(mb, k, anchors.dtype, anchors.device), e((3, m), dtype=acc), e((m,), dtype=acc),
            e((ra,), dtype=acc), e((ra,), dtype=acc), e((rb,), dtype=acc), e((rb,), dtype=acc))


def _anchor_lse_setup(ctx, inputs, output):
    anchors, keys, *args = inputs
    ctx.save_for_backward(anchors, keys, *output[1:])
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(*output[1:])


def _anchor_lse_backward(ctx, run_bwd, g_terms, *unused):
    anchors, keys, *saved = ctx.saved_tensors
    q = saved[3]
    d_anchors, d_keys = run_bwd(anchors, keys, *saved, _grad_vector(g_terms, q, "none"), *ctx.args)
    return (d_anchors, d_keys) + (None,) * len(ctx.args)


_ANCHOR_LSE = _register("anchor_lse", _anchor_lse_fwd_impl, _anchor_lse_fwd_fake, _anchor_lse_bwd_impl,
                        _two_grads_fake, _anchor_lse_setup, _anchor_lse_backward)
anchor_lse_fwd, anchor_lse_bwd, _SPEC_ANCHOR_LSE = _ANCHOR_LSE.fwd, _ANCHOR_LSE.bwd, _ANCHOR_LSE.spec


# drop-in torch.autograd.Function subclasses (docs/design.md convention 2), made by the registry: forward and
# backward call only the custom ops, and the forward checks the arguments first (the op's contract)
NTXentFunction = _NTXENT.function
DCLFunction = _DCL.function
InfoNCEFunction = _INFONCE.function
VICRegExpFunction = _VICREG_EXP.function
VICRegCtrFunction = _VICREG_CTR.function


# --------------------------------------------------------------------------------------------
# losses (inputs validated by functional.py)


def ntxent(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str, reduction: str
           ) -> Tensor:
    """NT-Xent (docs/spec.md §4) of one process's batch, reduced (the distributed form: ops/gathered.py)."""
    return apply(_SPEC_NTXENT, z1, z2, float(temperature), similarity, normalization, reduction)[0]


def dcl(z1: Tensor, z2: Tensor, temperature: float, similarity: str, reduction: str) -> Tensor:
    """DCL (docs/spec.md §4) of one process's batch, reduced."""
    return apply(_SPEC_DCL, z1, z2, float(temperature), similarity, reduction)[0]


def infonce(z1: Tensor, z2: Tensor, temperature: float, reduction: str) -> Tensor:
    """InfoNCE, CLIP form (docs/spec.md §4), of one process's batch, reduced."""
    return apply(_SPEC_INFONCE, z1, z2, float(temperature), reduction)[0]


def ntxent_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str, normalization: str) -> Tensor:
    """Per-anchor NT-Xent terms (docs/spec.md §4)."""
    return ntxent(z1, z2, temperature, similarity, normalization, "none")


def dcl_terms(z1: Tensor, z2: Tensor, temperature: float, similarity: str) -> Tensor:
    """Per-anchor DCL terms (docs/spec.md §4)."""
    return dcl(z1, z2, temperature, similarity, "none")


def infonce_terms(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """InfoNCE's 2N per-row terms (rows of S, then of Sᵀ; docs/spec.md §4)."""
    return infonce(z1, z2, temperature, "none")


def _terms_dict(loss, inv, var, cov, *saved):
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


def vicreg_exp(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """docs/spec.md §3 VICReg-exp: (loss, {"invariance", "variance", "covariance"})."""
    return _terms_dict(*apply(_SPEC_VICREG_EXP, z1, z2, float(inv_weight), float(var_weight), float(cov_weight),
                              float(gamma), float(eps), float(temperature)))


def vicreg_ctr(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """docs/spec.md §3 VICReg-ctr: (loss, {"invariance", "variance", "covariance"})."""
    return _terms_dict(*apply(_SPEC_VICREG_CTR, z1, z2, float(inv_weight), float(var_weight), float(cov_weight),
                              float(gamma), float(eps), float(temperature)))
