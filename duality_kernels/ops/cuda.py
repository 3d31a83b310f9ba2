"""torch.library custom ops over the compiled extension ``duality_kernels._C`` (docs/design.md convention 2, 9).

The extension is optional: a missing or broken ``_C`` never breaks ``import duality_kernels``.
The ops are registered either way, so their fake (meta) implementations work for tracing and
shape propagation on any install; running one for real without ``_C`` raises RuntimeError with
:func:`unavailable_reason`, which says how to rebuild.

Forward and backward are separate ops; autograd of the forward calls the backward op, so
``torch.compile(fullgraph=True)`` sees only custom ops.

Kernels trust their inputs (docs/design.md convention 6). The public functions validate before calling
here; on plain eager tensors the functions below (``vicreg`` & co.) then call the extension's C++
autograd Functions (``_C.vicreg_autograd`` & co., csrc/bindings/autograd.cpp), which run the same forward
and backward entry points as the custom ops without Python in the autograd graph, and while
tracing or compiling they call the custom ops. The forward custom ops and the drop-in Functions
below check their own arguments first (the ops' contracts: the public functions' errors), and the C++
entry points check every tensor again (RuntimeError naming the argument).
"""

from typing import Dict, List, Optional, Tuple

import torch

from .._numerics import acc_dtype as _acc_dtype
from . import registry
from ._checks import MOMENTS_CROSS, MOMENTS_NONE, MOMENTS_SELF  # noqa: F401 (this backend's names for them)
from ._cuda_ext import (  # noqa: F401 (the loader's names, re-exported for callers of this module)
    REBUILD_COMMAND,
    _set_simulator,
    device_rule,
    is_available,
    simulating,
    unavailable_reason,
)
from ._cuda_ext import ext as _ext
from ._direct import apply, refuse_transforms

__all__ = [*registry.gram_functions(), "REBUILD_COMMAND", "is_available", "unavailable_reason"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(tensors) -> bool:
    """Plain eager tensors (None allowed): not compiling, no torch.func transform, no tensor subclass
    (ops/_direct.py's test, for the few tensor arguments of these ops). Tracing and compiling need
    the custom ops and their fakes; the C++ autograd path would call _C on fake tensors."""
    refuse_transforms(tensors)
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active())


# --------------------------------------------------------------------------------------------
# The covariance family as single-call ops (csrc/bindings/ + csrc/kernels/*.cu): each
# forward and each backward is ONE call into _C: GEMMs through ATen/cuBLAS on the side of the
# duality the caller picked, everything else in our kernels. Forward ops return, after the
# documented results, the tensors their backward needs; autograd saves them.
# --------------------------------------------------------------------------------------------

Tensor = torch.Tensor


def _acc_of(z: Tensor) -> torch.dtype:
    return _acc_dtype(z.dtype)


def _scalar_grad(g: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """An incoming 0-dim gradient as an acc tensor, or None for an unused output: the _C backward
    entry points take None as 0, so that no zeros are allocated (nor filled) for it. Autograd
    hands a gradient in its output's dtype, and a 0-dim tensor is contiguous: the conversion is
    for other callers of the backward ops."""
    if g is None or g.dtype == dtype:
        return g
    return g.to(dtype)


def _gram_dtype(z: Tensor) -> torch.dtype:
    """The dtype of the Grams a forward saves for its backward (csrc/bindings/common.h saved_gram_dtype): the
    bf16 GEMM operand itself for bf16 inputs, acc otherwise."""
    return torch.bfloat16 if z.dtype == torch.bfloat16 else _acc_of(z)


def _scalars(z: Tensor, count: int) -> List[Tensor]:
    return [z.new_empty((), dtype=_acc_of(z)) for _ in range(count)]


def _register(name, fwd, fwd_fake, bwd, bwd_fake, setup, backward, gathers=False):
    """Registers this backend's op ``name`` (ops/registry.py); every op here returns List[Tensor]."""
    return registry.register(name, "cuda", fwd=fwd, fwd_fake=fwd_fake, bwd=bwd, bwd_fake=bwd_fake, setup=setup,
                             backward=backward, device=device_rule, listed=True, gathers=gathers)


# ---- VICReg (docs/spec.md §3)


def _vicreg_fwd_impl(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
                    gamma: float, eps: float, side: str) -> List[Tensor]:
    """-> [loss, invariance, variance, covariance, x (2, N, D), gram (2, M, M), stats (2, 2, D)
    float64]; gram = the centered views' Grams (bf16 for bf16 inputs, else acc), without their
    diagonal on the dimension side; stats = [m2 of both views, Σ_i x² of both views (sample
    side; 0 on the dimension side)]."""
    return _ext(z1).vicreg_fwd(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side == "sample")




def _vicreg_fwd_fake(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side):
    n, d = z1.shape
    m = n if side == "sample" else d
    return [*_scalars(z1, 4), z1.new_empty((2, n, d)), z1.new_empty((2, m, m), dtype=_gram_dtype(z1)),
            z1.new_empty((2, 2, d), dtype=torch.float64)]


def _vicreg_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, gram: Tensor, stats: Tensor,
                    g_loss: Optional[Tensor], g_inv: Optional[Tensor], g_var: Optional[Tensor],
                    g_cov: Optional[Tensor], inv_weight: float, var_weight: float,
                    cov_weight: float, gamma: float, eps: float, side: str) -> List[Tensor]:
    return _ext(z1).vicreg_bwd(z1, z2, x, gram, stats, g_loss, g_inv, g_var, g_cov, inv_weight, var_weight,
                               cov_weight, gamma, eps, side == "sample")




def _vicreg_bwd_fake(z1, z2, *_args):
    return [torch.empty_like(z1, memory_format=torch.contiguous_format),
            torch.empty_like(z2, memory_format=torch.contiguous_format)]


def _vicreg_setup(ctx, inputs, output):
    z1, z2, *args = inputs
    ctx.save_for_backward(z1, z2, *output[4:])
    ctx.args = tuple(args)


def _vicreg_backward(ctx, run_bwd, grads):
    z1, z2, x, gram, stats = ctx.saved_tensors
    acc = _acc_of(z1)
    gs = [_scalar_grad(g, acc) for g in grads[:4]]
    dz1, dz2 = run_bwd(z1, z2, x, gram, stats, *gs, *ctx.args)
    return dz1, dz2, None, None, None, None, None, None


_VICREG = _register("vicreg", _vicreg_fwd_impl, _vicreg_fwd_fake, _vicreg_bwd_impl, _vicreg_bwd_fake, _vicreg_setup,
                    _vicreg_backward, gathers=True)
cuda_vicreg_fwd, cuda_vicreg_bwd = _VICREG.fwd, _VICREG.bwd


def vicreg(z1: Tensor, z2: Tensor, inv_weight: float, var_weight: float, cov_weight: float,
           gamma: float, eps: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §3 VICReg: (loss, {"invariance", "variance", "covariance"})."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    w = (float(inv_weight), float(var_weight), float(cov_weight), float(gamma), float(eps))
    if _plain_eager((z1, z2)):
        loss, inv, var, cov = _ext(z1).vicreg_autograd(z1, z2, *w, side == "sample")
    else:
        loss, inv, var, cov, *_ = cuda_vicreg_fwd(z1, z2, *w, side)
    return loss, {"invariance": inv, "variance": var, "covariance": cov}


# ---- Barlow Twins (docs/spec.md §3)


def _barlow_twins_fwd_impl(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                          ) -> List[Tensor]:
    """-> [loss, on_diagonal, off_diagonal, x (2, N, D) standardized views, grams,
    m2 (2, D) float64, cdiag (D)]; grams = aᵀb (1, D, D) on the dimension side, [b bᵀ, a aᵀ] (2, N, N) on the
    sample side (swapped: the backward's products as one bmm); bf16 for bf16 inputs, else acc."""
    return _ext(z1).barlow_twins_fwd(z1, z2, lambda_param, eps, side == "sample")




def _barlow_twins_fwd_fake(z1, z2, lambda_param, eps, side):
    n, d = z1.shape
    acc = _acc_of(z1)
    grams = (2, n, n) if side == "sample" else (1, d, d)
    return [*_scalars(z1, 3), z1.new_empty((2, n, d)), z1.new_empty(grams, dtype=_gram_dtype(z1)),
            z1.new_empty((2, d), dtype=torch.float64), z1.new_empty((d,), dtype=acc)]


def _barlow_twins_bwd_impl(x: Tensor, grams: Tensor, m2: Tensor, cdiag: Tensor, g_loss: Optional[Tensor],
                          g_on: Optional[Tensor], g_off: Optional[Tensor], lambda_param: float, eps: float,
                          side: str) -> List[Tensor]:
    return _ext(x).barlow_twins_bwd(x, grams, m2, cdiag, g_loss, g_on, g_off, lambda_param, eps,
                                    side == "sample")




def _barlow_twins_bwd_fake(x, *_args):
    return [x.new_empty(x.shape[1:]), x.new_empty(x.shape[1:])]


def _barlow_setup(ctx, inputs, output):
    _, _, lambda_param, eps, side = inputs
    ctx.save_for_backward(*output[3:])
    ctx.args = (lambda_param, eps, side)


def _barlow_backward(ctx, run_bwd, grads):
    x, grams, m2, cdiag = ctx.saved_tensors
    gs = [_scalar_grad(g, cdiag.dtype) for g in grads[:3]]
    dz1, dz2 = run_bwd(x, grams, m2, cdiag, *gs, *ctx.args)
    return dz1, dz2, None, None, None


_BARLOW_TWINS = _register("barlow_twins", _barlow_twins_fwd_impl, _barlow_twins_fwd_fake, _barlow_twins_bwd_impl,
                          _barlow_twins_bwd_fake, _barlow_setup, _barlow_backward, gathers=True)
cuda_barlow_twins_fwd, cuda_barlow_twins_bwd = _BARLOW_TWINS.fwd, _BARLOW_TWINS.bwd


def barlow_twins(z1: Tensor, z2: Tensor, lambda_param: float, eps: float, side: str
                 ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §3 Barlow Twins: (loss, {"on_diagonal", "off_diagonal"})."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    if _plain_eager((z1, z2)):
        loss, on, off = _ext(z1).barlow_twins_autograd(z1, z2, float(lambda_param), float(eps), side == "sample")
    else:
        loss, on, off, *_ = cuda_barlow_twins_fwd(z1, z2, float(lambda_param), float(eps), side)
    return loss, {"on_diagonal": on, "off_diagonal": off}


# ---- spectral contrastive (docs/spec.md §4)


def _spectral_fwd_impl(z1: Tensor, z2: Tensor, mu: float, side: str) -> List[Tensor]:
    """-> [loss, positive, negative, x (2, N, D) clamped rows, grams, q (3, N)];
    grams = a bᵀ (1, N, N) on the sample side, [bᵀb, aᵀa] (2, D, D) on the dimension side (swapped: the
    backward's products as one bmm); bf16 for bf16 inputs, else acc."""
    return _ext(z1).spectral_fwd(z1, z2, mu, side == "sample")




def _spectral_fwd_fake(z1, z2, mu, side):
    n, d = z1.shape
    acc = _acc_of(z1)
    grams = (1, n, n) if side == "sample" else (2, d, d)
    return [*_scalars(z1, 3), z1.new_empty((2, n, d)), z1.new_empty(grams, dtype=_gram_dtype(z1)),
            z1.new_empty((3, n), dtype=acc)]


def _bwd_fake2(z1, z2, *_args):
    """The fake of a two-view backward op: [dz1, dz2] shaped as the views."""
    return [z1.new_empty(z1.shape), z2.new_empty(z2.shape)]


def _spectral_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, grams: Tensor, q: Tensor, g_loss: Optional[Tensor],
                      g_pos: Optional[Tensor], g_neg: Optional[Tensor], mu: float, side: str) -> List[Tensor]:
    return _ext(z1).spectral_bwd(z1, z2, x, grams, q, g_loss, g_pos, g_neg, mu, side == "sample")






def _spectral_setup(ctx, inputs, output):
    z1, z2, mu, side = inputs
    ctx.save_for_backward(z1, z2, *output[3:])
    ctx.args = (mu, side)


def _spectral_backward(ctx, run_bwd, grads):
    z1, z2, x, grams, q = ctx.saved_tensors
    gs = [_scalar_grad(g, q.dtype) for g in grads[:3]]
    dz1, dz2 = run_bwd(z1, z2, x, grams, q, *gs, *ctx.args)
    return dz1, dz2, None, None


_SPECTRAL = _register("spectral", _spectral_fwd_impl, _spectral_fwd_fake, _spectral_bwd_impl, _bwd_fake2,
                      _spectral_setup, _spectral_backward, gathers=True)
cuda_spectral_fwd, cuda_spectral_bwd = _SPECTRAL.fwd, _SPECTRAL.bwd


def spectral(z1: Tensor, z2: Tensor, mu: float, side: str) -> Tuple[Tensor, Dict[str, Tensor]]:
    """docs/spec.md §4 spectral contrastive loss: (loss, {"positive", "negative"})."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    if _plain_eager((z1, z2)):
        loss, pos, neg = _ext(z1).spectral_autograd(z1, z2, float(mu), side == "sample")
    else:
        loss, pos, neg, *_ = cuda_spectral_fwd(z1, z2, float(mu), side)
    return loss, {"positive": pos, "negative": neg}


# ---- covariance (docs/spec.md §1)


def _covariance_fwd_impl(z: Tensor, correction: int) -> List[Tensor]:
    """-> [C (D, D), x (N, D) centered]."""
    return _ext(z).covariance_fwd(z, correction)




def _covariance_fwd_fake(z, correction):
    d = z.shape[1]
    return [z.new_empty((d, d), dtype=_acc_of(z)), z.new_empty(z.shape)]


def _covariance_bwd_impl(x: Tensor, grad: Tensor, correction: int) -> Tensor:
    return _ext(x).covariance_bwd(x, grad, correction)




def _covariance_bwd_fake(x, grad, correction):
    return x.new_empty(x.shape)


def _covariance_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.correction = inputs[1]


def _covariance_backward(ctx, run_bwd, grads):
    (x,) = ctx.saved_tensors
    grad = grads[0]
    if grad is None:
        return None, None
    return run_bwd(x, grad.to(_acc_of(x)).contiguous(), ctx.correction), None


_COVARIANCE = _register("covariance", _covariance_fwd_impl, _covariance_fwd_fake, _covariance_bwd_impl,
                        _covariance_bwd_fake, _covariance_setup, _covariance_backward)
cuda_covariance_fwd, cuda_covariance_bwd = _COVARIANCE.fwd, _COVARIANCE.bwd


def covariance(z: Tensor, correction: int = 1) -> Tensor:
    """docs/spec.md §1 covariance: center(z)ᵀ center(z) / (N − correction), (D, D)."""
    z = z.contiguous()
    if _plain_eager((z,)):
        return _ext(z).covariance_autograd(z, int(correction))
    return cuda_covariance_fwd(z, int(correction))[0]


# ---- cross_correlation (docs/spec.md §1)


def _cross_correlation_fwd_impl(z1: Tensor, z2: Tensor, eps: float) -> List[Tensor]:
    """-> [C (D, D), x (2, N, D) standardized views, m2 (2, D) float64]."""
    return _ext(z1).cross_correlation_fwd(z1, z2, eps)




def _cross_correlation_fwd_fake(z1, z2, eps):
    n, d = z1.shape
    acc = _acc_of(z1)
    return [z1.new_empty((d, d), dtype=acc), z1.new_empty((2, n, d)),
            z1.new_empty((2, d), dtype=torch.float64)]


def _cross_correlation_bwd_impl(x: Tensor, m2: Tensor, grad: Tensor, eps: float) -> List[Tensor]:
    return _ext(x).cross_correlation_bwd(x, m2, grad, eps)




def _cross_correlation_bwd_fake(x, m2, grad, eps):
    return [x.new_empty(x.shape[1:]), x.new_empty(x.shape[1:])]


def _xcorr_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], output[2])
    ctx.eps = inputs[2]


def _xcorr_backward(ctx, run_bwd, grads):
    x, m2 = ctx.saved_tensors
    grad = grads[0]
    if grad is None:
        return None, None, None
    dz1, dz2 = run_bwd(x, m2, grad.to(_acc_of(x)).contiguous(), ctx.eps)
    return dz1, dz2, None


_CROSS_CORRELATION = _register("cross_correlation", _cross_correlation_fwd_impl, _cross_correlation_fwd_fake,
                               _cross_correlation_bwd_impl, _cross_correlation_bwd_fake, _xcorr_setup, _xcorr_backward)
cuda_cross_correlation_fwd, cuda_cross_correlation_bwd = _CROSS_CORRELATION.fwd, _CROSS_CORRELATION.bwd


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """docs/spec.md §1 cross_correlation: s(z1)ᵀ s(z2) / N with BatchNorm standardization, (D, D)."""
    z1, z2 = z1.contiguous(), z2.contiguous()
    if _plain_eager((z1, z2)):
        return _ext(z1).cross_correlation_autograd(z1, z2, float(eps))
    return cuda_cross_correlation_fwd(z1, z2, float(eps))[0]


# ---- normalized_gram (docs/spec.md §1)


def _normalized_gram_fwd_impl(z1: Tensor, z2: Optional[Tensor]) -> List[Tensor]:
    """-> [K (N, N), x (V, N, D) normalized rows, q (1 or 3, N) row sums of squares]."""
    return _ext(z1).normalized_gram_fwd(z1, z2)




def _normalized_gram_fwd_fake(z1, z2):
    n, d = z1.shape
    acc = _acc_of(z1)
    v = 1 if z2 is None else 2
    return [z1.new_empty((n, n), dtype=acc), z1.new_empty((v, n, d)),
            z1.new_empty((1 if v == 1 else 3, n), dtype=acc)]


def _normalized_gram_bwd_impl(z1: Tensor, z2: Optional[Tensor], x: Tensor, q: Tensor, grad: Tensor
                             ) -> List[Tensor]:
    """-> [dz1] without z2, [dz1, dz2] with it."""
    return _ext(z1).normalized_gram_bwd(z1, z2, x, q, grad)




def _normalized_gram_bwd_fake(z1, z2, x, q, grad):
    return [z1.new_empty(z1.shape)] if z2 is None else [z1.new_empty(z1.shape), z2.new_empty(z2.shape)]


def _ngram_setup(ctx, inputs, output):
    z1, z2 = inputs
    ctx.single = z2 is None
    ctx.save_for_backward(z1, z1 if z2 is None else z2, output[1], output[2])


def _ngram_backward(ctx, run_bwd, grads):
    z1, z2, x, q = ctx.saved_tensors
    grad = grads[0]
    if grad is None:
        return None, None
    grad = grad.to(q.dtype).contiguous()
    if ctx.single:
        return run_bwd(z1, None, x, q, grad)[0], None
    dz1, dz2 = run_bwd(z1, z2, x, q, grad)
    return dz1, dz2


_NORMALIZED_GRAM = _register("normalized_gram", _normalized_gram_fwd_impl, _normalized_gram_fwd_fake,
                             _normalized_gram_bwd_impl, _normalized_gram_bwd_fake, _ngram_setup, _ngram_backward)
cuda_normalized_gram_fwd, cuda_normalized_gram_bwd = _NORMALIZED_GRAM.fwd, _NORMALIZED_GRAM.bwd


def normalized_gram(z1: Tensor, z2: Optional[Tensor] = None) -> Tensor:
    """docs/spec.md §1 normalized_gram: l2n(z1) · l2n(z2 or z1)ᵀ, (N, N)."""
    z1 = z1.contiguous()
    z2 = None if z2 is None else z2.contiguous()
    if _plain_eager((z1, z2)):
        return _ext(z1).normalized_gram_autograd(z1, z2)
    return cuda_normalized_gram_fwd(z1, z2)[0]


# ---- duality_terms (docs/spec.md §2)


def _duality_terms_fwd_impl(z: Tensor, side: str) -> List[Tensor]:
    """-> [L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴, gram (M, M) without its diagonal (bf16 for bf16 inputs,
    else acc), q (N), c (D) float64]."""
    return _ext(z).duality_terms_fwd(z, side == "sample")




def _duality_terms_fwd_fake(z, side):
    n, d = z.shape
    m = n if side == "sample" else d
    acc = _acc_of(z)
    return [*_scalars(z, 4), z.new_empty((m, m), dtype=_gram_dtype(z)), z.new_empty((n,), dtype=acc),
            z.new_empty((d,), dtype=torch.float64)]


def _duality_terms_bwd_impl(z: Tensor, gram: Tensor, q: Tensor, c: Tensor, g_lc: Optional[Tensor],
                           g_lnc: Optional[Tensor], g_r4: Optional[Tensor], g_c4: Optional[Tensor],
                           side: str) -> Tensor:
    return _ext(z).duality_terms_bwd(z, gram, q, c, g_lc, g_lnc, g_r4, g_c4, side == "sample")




def _duality_terms_bwd_fake(z, *_args):
    return z.new_empty(z.shape)


def _duality_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output[4:])
    ctx.side = inputs[1]


def _duality_backward(ctx, run_bwd, grads):
    z, gram, q, c = ctx.saved_tensors
    gs = [_scalar_grad(g, q.dtype) for g in grads[:4]]
    return run_bwd(z, gram, q, c, *gs, ctx.side), None


_DUALITY_TERMS = _register("duality_terms", _duality_terms_fwd_impl, _duality_terms_fwd_fake, _duality_terms_bwd_impl,
                           _duality_terms_bwd_fake, _duality_setup, _duality_backward)
cuda_duality_terms_fwd, cuda_duality_terms_bwd = _DUALITY_TERMS.fwd, _DUALITY_TERMS.bwd


def duality_terms(z: Tensor, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """docs/spec.md §2: (L_c, L_nc, Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴) from one Gram on ``side``."""
    z = z.contiguous()
    if _plain_eager((z,)):
        out = _ext(z).duality_terms_autograd(z, side == "sample")
    else:
        out = cuda_duality_terms_fwd(z, side)
    return out[0], out[1], out[2], out[3]


# ---- gather_distributed=True (docs/spec.md §5): the local pieces that ops/gathered.py merges across ranks
# (csrc/bindings/gathered.cpp). Inputs come validated from functional.py.



def _moments_fwd_impl(z1: Tensor, z2: Tensor, mode: int) -> List[Tensor]:
    """-> [invariance mean((z1 − z2)²) (acc), mean (2, D) float64, m2 (2, D) float64, gram, x];
    gram: (0, D, D) for mode 0, the centered views' [x1ᵀx1, x2ᵀx2] (2, D, D) for mode 1, x1ᵀx2
    (1, D, D) for mode 2, acc; x (2, N, D) the centered views (empty for mode 0)."""
    return _ext(z1).moments_fwd(z1, z2, mode)




def _moments_fwd_fake(z1, z2, mode):
    n, d = z1.shape
    f64 = torch.float64
    grams = (0, 2, 1)[mode]
    return [z1.new_empty((), dtype=_acc_of(z1)), z1.new_empty((2, d), dtype=f64), z1.new_empty((2, d), dtype=f64),
            z1.new_empty((grams, d, d), dtype=_acc_of(z1)), z1.new_empty((2, n, d) if mode else (0,))]


def _moments_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, mean: Tensor, g_inv: Optional[Tensor],
                      g_mean: Optional[Tensor], g_m2: Optional[Tensor], g_gram: Optional[Tensor],
                      mode: int) -> List[Tensor]:
    return _ext(z1).moments_bwd(z1, z2, x, mean, g_inv, g_mean, g_m2, g_gram, mode)






def _moments_setup(ctx, inputs, output):
    z1, z2, mode = inputs
    ctx.save_for_backward(z1, z2, output[4], output[1])
    ctx.mode = mode


def _vec_grad(g: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """An incoming non-scalar gradient as a contiguous tensor of ``dtype`` (None stays None)."""
    return None if g is None else g.to(dtype).contiguous()


def _moments_backward(ctx, run_bwd, grads):
    z1, z2, x, mean = ctx.saved_tensors
    acc = _acc_of(z1)
    g_inv = _scalar_grad(grads[0], acc)
    g_mean, g_m2 = _vec_grad(grads[1], torch.float64), _vec_grad(grads[2], torch.float64)
    g_gram = _vec_grad(grads[3], acc) if ctx.mode else None
    dz1, dz2 = run_bwd(z1, z2, x, mean, g_inv, g_mean, g_m2, g_gram, ctx.mode)
    return dz1, dz2, None


_MOMENTS = _register("moments", _moments_fwd_impl, _moments_fwd_fake, _moments_bwd_impl, _bwd_fake2, _moments_setup,
                     _moments_backward)
cuda_moments_fwd, cuda_moments_bwd = _MOMENTS.fwd, _MOMENTS.bwd


def moments(z1: Tensor, z2: Tensor, mode: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(invariance, mean, m2, gram) of this process's rows, differentiable (see _moments_fwd_impl)."""
    out = apply(_MOMENTS.spec, z1.contiguous(), z2.contiguous(), int(mode))
    return out[0], out[1], out[2], out[3]


def _spectral_rows_fwd_impl(z1: Tensor, z2: Tensor, mu: float) -> List[Tensor]:
    """-> [x (2, N, D) the clamped rows a, b (docs/spec.md §4), p = a_i·b_i (N) acc, q (3, N) acc]."""
    return _ext(z1).spectral_rows_fwd(z1, z2, mu)




def _spectral_rows_fwd_fake(z1, z2, mu):
    n, d = z1.shape
    acc = _acc_of(z1)
    return [z1.new_empty((2, n, d)), z1.new_empty((n,), dtype=acc), z1.new_empty((3, n), dtype=acc)]


def _spectral_rows_bwd_impl(z1: Tensor, z2: Tensor, x: Tensor, q: Tensor, g_x: Optional[Tensor],
                            g_p: Optional[Tensor], mu: float) -> List[Tensor]:
    return _ext(z1).spectral_rows_bwd(z1, z2, x, q, g_x, g_p, mu)






def _spectral_rows_setup(ctx, inputs, output):
    z1, z2, mu = inputs
    ctx.save_for_backward(z1, z2, output[0], output[2])
    ctx.mu = mu


def _spectral_rows_backward(ctx, run_bwd, grads):
    z1, z2, x, q = ctx.saved_tensors
    g_x, g_p = _vec_grad(grads[0], q.dtype), _vec_grad(grads[1], q.dtype)
    dz1, dz2 = run_bwd(z1, z2, x, q, g_x, g_p, ctx.mu)
    return dz1, dz2, None


_SPECTRAL_ROWS = _register("spectral_rows", _spectral_rows_fwd_impl, _spectral_rows_fwd_fake, _spectral_rows_bwd_impl,
                           _bwd_fake2, _spectral_rows_setup, _spectral_rows_backward)
cuda_spectral_rows_fwd, cuda_spectral_rows_bwd = _SPECTRAL_ROWS.fwd, _SPECTRAL_ROWS.bwd


def spectral_rows(z1: Tensor, z2: Tensor, mu: float) -> Tuple[Tensor, Tensor]:
    """(x, p): the clamped rows (2, N, D) of both views and their row dots p_i = a_i·b_i,
    differentiable (docs/spec.md §4's clamp; ops/gathered.py builds the distributed loss on them)."""
    out = apply(_SPECTRAL_ROWS.spec, z1.contiguous(), z2.contiguous(), float(mu))
    return out[0], out[1]


# ---- the drop-in torch.autograd.Function subclasses (docs/design.md convention 2), made by the registry

VICRegFunction = _VICREG.function
BarlowTwinsFunction = _BARLOW_TWINS.function
SpectralContrastiveFunction = _SPECTRAL.function
CovarianceFunction = _COVARIANCE.function
CrossCorrelationFunction = _CROSS_CORRELATION.function
NormalizedGramFunction = _NORMALIZED_GRAM.function
DualityTermsFunction = _DUALITY_TERMS.function
