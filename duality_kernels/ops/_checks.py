"""The argument contract of every op (docs/spec.md §6), shared by the public functions and the ops.

Each function takes an op's arguments and raises ValueError/TypeError naming the argument and its
value (through _validation), before any kernel runs. The public functions (functional/) call the
shared parts (``vicreg_args`` & co.); the compiled ops' own entry points, the forward custom ops and
the drop-in Functions, run the whole contract through :func:`checked` (the registry wires it),
followed by the backend's device rule. ``side`` is the resolved side, "sample" or "dimension".
Backward ops take the forward's saved tensors, which the C++ entry points check again.
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


_TWO_ROWS = "a batch variance needs two rows"


def _side(side) -> None:
    V.check_choice(side, "side", OP_SIDES)


# ---- the covariance family, the spectral loss, the primitives (docs/spec.md §1-§4)


def vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, min_cols=1, what=_TWO_ROWS):
    """-> the five weights as floats."""
    V.check_pair(z1, z2, min_rows=2, min_cols=min_cols, what=what)
    return V.vicreg_weights(inv_weight, var_weight, cov_weight, gamma, eps)


def vicreg(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, side) -> None:
    vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps)
    _side(side)


def barlow_twins_args(z1, z2, lambda_param, eps):
    """-> (lambda_param, eps) as floats."""
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    return V.check_finite(lambda_param, "lambda_param"), V.check_nonnegative(eps, "eps")


def barlow_twins(z1, z2, lambda_param, eps, side) -> None:
    barlow_twins_args(z1, z2, lambda_param, eps)
    _side(side)


def spectral_args(z1, z2, mu) -> float:
    V.check_pair(z1, z2, min_rows=2, what="the off-diagonal term needs two rows")
    return V.check_positive(mu, "mu")


def spectral(z1, z2, mu, side) -> None:
    spectral_args(z1, z2, mu)
    _side(side)


def covariance(z, correction) -> None:
    V.check_tensor(z, "z")
    V.check_correction(correction, z.shape[0])


def cross_correlation(z1, z2, eps) -> float:
    V.check_pair(z1, z2, min_rows=2, what=_TWO_ROWS)
    return V.check_nonnegative(eps, "eps")


def normalized_gram(z1, z2) -> None:
    if z2 is None:
        V.check_tensor(z1, "z1")
    else:
        V.check_pair(z1, z2)


def duality_terms(z, side) -> None:
    V.check_tensor(z, "z")
    _side(side)


MOMENTS_NONE, MOMENTS_SELF, MOMENTS_CROSS = MOMENTS_MODES = (0, 1, 2)  # ops/gathered.py's moments modes


def moments(z1, z2, mode) -> None:
    V.check_pair(z1, z2)
    if type(mode) is not int:
        raise TypeError(f"mode must be an int, got {mode!r} ({type(mode).__name__})")
    if mode not in MOMENTS_MODES:
        raise ValueError(f"mode must be one of 0, 1, 2; got {mode!r}")


def spectral_rows(z1, z2, mu) -> None:
    V.check_pair(z1, z2)
    V.check_positive(mu, "mu")


# ---- the log-sum-exp family (docs/spec.md §3-§4)


def ntxent(z1, z2, temperature, similarity, normalization, reduction) -> float:
    """-> the temperature as a float."""
    V.check_pair(z1, z2)
    t = V.check_positive(temperature, "temperature")
    V.check_choice(similarity, "similarity", V.SIMILARITIES)
    V.check_choice(normalization, "normalization", V.NORMALIZATIONS)
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    return t


def dcl(z1, z2, temperature, similarity, reduction) -> float:
    V.check_pair(z1, z2, min_rows=2, what="every anchor needs at least one negative")
    t = V.check_positive(temperature, "temperature")
    V.check_choice(similarity, "similarity", V.SIMILARITIES)
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    return t


def infonce(z1, z2, temperature, reduction) -> float:
    V.check_pair(z1, z2)
    t = V.check_positive(temperature, "temperature")
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    return t


VICREG_EXP_ROWS = "a batch variance needs two rows and an off-diagonal term two columns"
VICREG_CTR_ROWS = "a row variance needs two columns and the sample term two rows"


def vicreg_lse_args(what, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature):
    """-> (the five weights, the temperature) as floats."""
    w = vicreg_args(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, min_cols=2, what=what)
    return w, V.check_positive(temperature, "temperature")


def vicreg_exp(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    vicreg_lse_args(VICREG_EXP_ROWS, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)


def vicreg_ctr(z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature) -> None:
    vicreg_lse_args(VICREG_CTR_ROWS, z1, z2, inv_weight, var_weight, cov_weight, gamma, eps, temperature)


# ---- the two-tower losses (docs/spec.md §7.4-§7.5): the public checks of functional/two_tower.py


def clip(image_features, text_features, logit_scale) -> None:
    from ..functional.two_tower import check_features, check_scalar

    check_features(image_features, text_features)
    check_scalar(logit_scale, "logit_scale", image_features, positive=True)


def siglip(image_features, text_features, logit_scale, logit_bias, offset) -> None:
    """``text_features`` may hold more rows than ``image_features`` (the gathered form: this rank's
    images against every rank's texts); image row i's positive is text row offset + i."""
    from ..functional.two_tower import check_features, check_scalar

    V.check_tensor(image_features, "image_features")
    V.check_tensor(text_features, "text_features")
    n, m = image_features.shape[0], text_features.shape[0]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + n > m:
        raise ValueError(f"offset must be an int with 0 <= offset <= {m - n} (text rows {m}, image rows {n}), "
                         f"got {offset!r}")
    check_features(image_features, text_features[offset:offset + n])
    check_scalar(logit_scale, "logit_scale", image_features, positive=True)
    check_scalar(logit_bias, "logit_bias", image_features, positive=False)
