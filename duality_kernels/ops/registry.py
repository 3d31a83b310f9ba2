"""The op registry: every compiled op described once, every backend registered into it.

An :class:`OpDef` states what an op is for all backends: its name, the public functions it serves,
its family (the "auto" table's key, ``_cost.auto_order``), its argument contract
(``ops/_checks.py``), how many leading outputs callers receive (the rest is saved for the
backward), and its drop-in ``torch.autograd.Function``. A backend calls :func:`register` with its
forward and backward implementations, their fakes and its autograd glue; that one call makes the
custom ops ``duality_kernels::<prefix><name>_fwd`` / ``_bwd`` with their fakes and registered
autograd, the eager fast path (``_direct.Spec``), the drop-in Function, and the capability entry
that ``_backend`` reads (which public functions, dtypes, and whether the distributed form exists).
How to add an op: docs/adding_an_op.md.
"""

from __future__ import annotations

import importlib
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
    check: Optional[Callable]   # argument contract of the forward op (ops/_checks.py), None: unchecked
    results: int                # leading outputs returned to callers; the rest is saved for backward
    function: str = ""          # the drop-in torch.autograd.Function's class name ("" for none)
    doc: str = ""               # its docstring: the apply() signature and results


def _defs(*defs: OpDef) -> Dict[str, OpDef]:
    return {d.name: d for d in defs}


_C = _checks
OPS: Dict[str, OpDef] = _defs(
    OpDef("vicreg", ("vicreg_loss",), GRAM, _C.vicreg, 4, "VICRegFunction",
          "VICReg (docs/spec.md §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side)`` -> "
          "(loss, invariance, variance, covariance)."),
    OpDef("barlow_twins", ("barlow_twins_loss",), GRAM, _C.barlow_twins, 3, "BarlowTwinsFunction",
          "Barlow Twins (docs/spec.md §3): ``apply(z1, z2, lambda_param, eps, side)`` -> "
          "(loss, on_diagonal, off_diagonal)."),
    OpDef("spectral", ("spectral_contrastive_loss",), GRAM, _C.spectral, 3, "SpectralContrastiveFunction",
          "Spectral contrastive loss (docs/spec.md §4): ``apply(z1, z2, mu, side)`` -> (loss, positive, negative)."),
    OpDef("covariance", ("covariance",), GRAM, _C.covariance, 1, "CovarianceFunction",
          "covariance (docs/spec.md §1): ``apply(z, correction)`` -> (C,)."),
    OpDef("cross_correlation", ("cross_correlation",), GRAM, _C.cross_correlation, 1, "CrossCorrelationFunction",
          "cross_correlation (docs/spec.md §1): ``apply(z1, z2, eps)`` -> (C,)."),
    OpDef("normalized_gram", ("normalized_gram",), GRAM, _C.normalized_gram, 1, "NormalizedGramFunction",
          "normalized_gram (docs/spec.md §1): ``apply(z1, z2_or_None)`` -> (K,)."),
    OpDef("duality_terms", ("duality_terms", "sample_contrastive_criterion", "dimension_contrastive_criterion"),
          GRAM, _C.duality_terms, 4, "DualityTermsFunction",
          "duality_terms (docs/spec.md §2): ``apply(z, side)`` -> (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴)."),
    OpDef("moments", (), INTERNAL, _C.moments, 4),
    OpDef("spectral_rows", (), INTERNAL, _C.spectral_rows, 2),
    OpDef("ntxent", ("ntxent_loss",), LSE, _C.ntxent, 1, "NTXentFunction",
          "NT-Xent (docs/spec.md §4): ``apply(z1, z2, temperature, similarity, normalization, reduction)`` -> "
          "(loss,)."),
    OpDef("dcl", ("dcl_loss",), LSE, _C.dcl, 1, "DCLFunction",
          "DCL (docs/spec.md §4): ``apply(z1, z2, temperature, similarity, reduction)`` -> (loss,)."),
    OpDef("infonce", ("infonce_loss",), LSE, _C.infonce, 1, "InfoNCEFunction",
          "InfoNCE, CLIP form (docs/spec.md §4): ``apply(z1, z2, temperature, reduction)`` -> (loss,)."),
    OpDef("vicreg_exp", ("vicreg_exp_loss",), LSE, _C.vicreg_exp, 4, "VICRegExpFunction",
          "VICReg-exp (docs/spec.md §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, "
          "temperature)`` -> (loss, invariance, variance, covariance)."),
    OpDef("vicreg_ctr", ("vicreg_ctr_loss",), LSE, _C.vicreg_ctr, 4, "VICRegCtrFunction",
          "VICReg-ctr (docs/spec.md §3): ``apply(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, "
          "temperature)`` -> (loss, invariance, variance, covariance)."),
    OpDef("anchor_lse", (), INTERNAL, None, 1),
    # the supervised family (docs/spec.md §7): not an "auto" row (_cost.auto_order), auto keeps torch
    OpDef("moco", ("moco_loss",), "supervised", _C.moco, 1, "MoCoFunction",
          "MoCo with a queue (docs/spec.md §7): ``apply(query, key, queue, temperature, reduction, "
          "normalize_queue)`` -> (loss,)."),
    OpDef("hard_negative_ntxent", ("hard_negative_ntxent_loss",), "supervised", _C.hard_negative_ntxent, 1,
          "HardNegativeNTXentFunction",
          "Hard-negative NT-Xent (docs/spec.md §7): ``apply(z1, z2, temperature, tau_plus, beta)`` -> (loss,)."),
    OpDef("supcon", ("supcon_loss",), "supervised", _C.supcon, 2, "SupConFunction",
          "SupCon (docs/spec.md §7): ``apply(features, labels_or_None, temperature, base_temperature, "
          "contrast_mode)`` -> (loss, anchors_without_positive)."),
    OpDef("clip", ("clip_loss",), LSE, _C.clip, 1, "ClipFunction",
          "CLIP (docs/spec.md §7.4): ``apply(image_features, text_features, logit_scale)`` -> (loss,); "
          "logit_scale a one-element tensor."),
    OpDef("siglip", ("siglip_loss",), LSE, _C.siglip, 1, "SigLipFunction",
          "SigLIP (docs/spec.md §7.5): ``apply(image_features, text_features, logit_scale, logit_bias, offset)`` "
          "-> (loss,); scale and bias one-element tensors, text rows offset..offset+N the positives."),
)

# the drop-in Functions of the covariance family, which both compiled backends export
GRAM_FUNCTIONS = tuple(sorted(d.function for d in OPS.values() if d.family == GRAM and d.function))
# public function -> its family (read without importing any backend)
FAMILY: Dict[str, str] = {p: d.family for d in OPS.values() for p in d.provides}


def describe(*defs: OpDef) -> None:
    """Adds op descriptions to ``OPS`` (a name is described once); the module that defines an op's public
    function and contract calls it at import, before any backend registers the op."""
    for d in defs:
        if d.name in OPS:
            raise ValueError(f"op {d.name!r} is already described")
        OPS[d.name] = d
        FAMILY.update({p: d.family for p in d.provides})


class Backend(NamedTuple):
    prefix: str                 # custom op name prefix
    modules: Tuple[str, ...]    # importing these registers the backend's ops


BACKENDS: Dict[str, Backend] = {
    "triton": Backend("", ("duality_kernels.ops.triton.gram", "duality_kernels.ops.triton.lse",
                           "duality_kernels.ops.triton.spectral")),
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
            for mod in BACKENDS[backend].modules:
                importlib.import_module(mod)
            ok = True
        except ImportError:
            ok = False
        _LOADED[backend] = ok
    return ok


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
