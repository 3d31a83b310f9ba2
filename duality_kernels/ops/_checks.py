"""Argument checks of the compiled ops' own entry points (SPEC §6).

The public functions (functional.py) validate their arguments and then call an op's implementation
directly (ops/_direct.py). Two entry points reach the kernels without them: the forward custom ops
(``torch.ops.duality_kernels.cuda_vicreg_fwd`` & co.) and the drop-in ``torch.autograd.Function``
subclasses (``VICRegFunction.apply`` & co.). They call these checks first, so that a bad argument
raises what the public function raises for it (ValueError/TypeError naming the argument and its
value, through _validation), before any kernel runs; the public path does not run them again.

One function per op, named after the op and taking the op's arguments after the backend
("cuda" or "triton", for the device check):

- ``vicreg(backend, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side)``
- ``barlow_twins(backend, z1, z2, lambda_param, eps, side)``
- ``spectral(backend, z1, z2, mu, side)``
- ``covariance(backend, z, correction)``
- ``cross_correlation(backend, z1, z2, eps)``
- ``normalized_gram(backend, z1, z2)`` (z2 may be None)
- ``duality_terms(backend, z, side)``
- ``moments(backend, z1, z2, mode)`` and ``spectral_rows(backend, z1, z2, mu)``: the local pieces
  of gather_distributed=True (ops/gathered.py); the public losses check what they check.
- ``ntxent(backend, z1, z2, temperature, similarity, normalization, reduction)``
- ``dcl(backend, z1, z2, temperature, similarity, reduction)``
- ``infonce(backend, z1, z2, temperature, reduction)``
- ``vicreg_exp(backend, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)``
- ``vicreg_ctr(backend, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)``

``side`` is the side the op computes on, "sample" or "dimension" (the ops take it resolved; the
public functions resolve "auto"). Backward ops take the forward's saved tensors, which the C++
entry points check (RuntimeError naming the argument).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from .. import _backend
from .. import _validation as V

OP_SIDES = ("sample", "dimension")


def checked(check: Callable, backend: str, fn: Callable) -> Callable:
    """``fn`` behind ``check(backend, *args)``: the entry of a forward custom op (its
    implementation) or of a drop-in Function (its op). functools.wraps keeps fn's signature, from
    which torch.library infers the op's schema."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        check(backend, *args, **kwargs)
        return fn(*args, **kwargs)

    # the signature with fn's annotations evaluated in fn's module (they may be strings there,
    # which torch.library would otherwise evaluate here, where the names are missing)
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)
    return wrapper


def dropin(spec, check: Callable, backend: str, name: str, doc: str) -> type:
    """The drop-in torch.autograd.Function ``name`` over an op's Spec (ops/_direct.py) whose
    forward runs ``check(backend, *args)`` before the op (DESIGN convention 2)."""
    from ._direct import function

    return function(spec._replace(op=checked(check, backend, spec.op)), name, doc)


_TWO_ROWS = "a batch variance needs two rows"


def _device(backend: str, op: str, z) -> None:
    """The public functions' device and availability check for ``backend`` (_backend.resolve)."""
    _backend.resolve(backend, op, z)


def _side(side) -> None:
    V.check_choice(side, "side", OP_SIDES)


def vicreg(backend, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side) -> None:
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    V.vicreg_weights(inv_weight, var_weight, cov_weight, gamma, eps)
    _side(side)
    _device(backend, "vicreg_loss", z1)


def barlow_twins(backend, z1, z2, lambda_param, eps, side) -> None:
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    V.check_finite(lambda_param, "lambda_param")
    V.check_nonnegative(eps, "eps")
    _side(side)
    _device(backend, "barlow_twins_loss", z1)


def spectral(backend, z1, z2, mu, side) -> None:
    V.check_pair(z1, z2, min_rows=2, what="the off-diagonal term needs two rows")
    V.check_positive(mu, "mu")
    _side(side)
    _device(backend, "spectral_contrastive_loss", z1)


def covariance(backend, z, correction) -> None:
    V.check_tensor(z, "z")
    V.check_correction(correction, z.shape[0])
    _device(backend, "covariance", z)


def cross_correlation(backend, z1, z2, eps) -> None:
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    V.check_nonnegative(eps, "eps")
    _device(backend, "cross_correlation", z1)


def normalized_gram(backend, z1, z2) -> None:
    if z2 is None:
        V.check_tensor(z1, "z1")
    else:
        V.check_pair(z1, z2)
    _device(backend, "normalized_gram", z1)


def duality_terms(backend, z, side) -> None:
    V.check_tensor(z, "z")
    _side(side)
    _device(backend, "duality_terms", z)


MOMENTS_MODES = (0, 1, 2)  # no Gram, each view's centered Gram, the cross Gram (ops/gathered.py)


def moments(backend, z1, z2, mode) -> None:
    V.check_pair(z1, z2)
    if type(mode) is not int:
        raise TypeError(f"mode must be an int, got {mode!r} ({type(mode).__name__})")
    if mode not in MOMENTS_MODES:
        raise ValueError(f"mode must be one of 0, 1, 2; got {mode!r}")
    _device(backend, "vicreg_loss", z1)


def spectral_rows(backend, z1, z2, mu) -> None:
    V.check_pair(z1, z2)
    V.check_positive(mu, "mu")
    _device(backend, "spectral_contrastive_loss", z1)


# The log-sum-exp family (ops/triton/lse.py), in the order of the public functions' checks so
# that the first bad argument gives the same message.


def ntxent(backend, z1, z2, temperature, similarity, normalization, reduction) -> None:
    V.check_pair(z1, z2)
    V.check_positive(temperature, "temperature")
    V.check_choice(similarity, "similarity", V.SIMILARITIES)
    V.check_choice(normalization, "normalization", V.NORMALIZATIONS)
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    _device(backend, "ntxent_loss", z1)


def dcl(backend, z1, z2, temperature, similarity, reduction) -> None:
    V.check_pair(z1, z2, min_rows=2, what="every anchor needs at least one negative")
    V.check_positive(temperature, "temperature")
    V.check_choice(similarity, "similarity", V.SIMILARITIES)
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    _device(backend, "dcl_loss", z1)


def infonce(backend, z1, z2, temperature, reduction) -> None:
    V.check_pair(z1, z2)
    V.check_positive(temperature, "temperature")
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    _device(backend, "infonce_loss", z1)


def _vicreg_lse(backend, op, what, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    V.check_pair(z1, z2, min_rows=2, min_cols=2, what=what)
    V.vicreg_weights(inv_weight, var_weight, cov_weight, gamma, eps)
    V.check_positive(temperature, "temperature")
    _device(backend, op, z1)


def vicreg_exp(backend, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    _vicreg_lse(backend, "vicreg_exp_loss", "a batch variance needs two rows and an off-diagonal term two columns",
                z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)


def vicreg_ctr(backend, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    _vicreg_lse(backend, "vicreg_ctr_loss", "a row variance needs two columns and the sample term two rows",
                z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)
