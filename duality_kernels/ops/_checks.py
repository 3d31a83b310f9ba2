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
import numbers
import inspect
from typing import Callable

import torch

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


# ---- the supervised family (docs/spec.md §7): the public functions' contracts, run by the ops' entries too


Tensor = torch.Tensor
CONTRAST_MODES = ("all", "one")
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_features(features) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError("features must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got dtype {features.dtype}")
    if features.dim() != 3:
        raise ValueError(f"features must be 3-D [batch, views, dim] (as SupContrast's), got shape "
                         f"{tuple(features.shape)} ({features.dim()}-D)")
    b, v, d = features.shape
    if b < 1 or v < 1 or d < 1:
        raise ValueError(f"features needs at least one sample, view and feature, got shape {tuple(features.shape)}")
    if b * v < 2:
        raise ValueError(f"features needs at least 2 rows (batch·views) so that every anchor has a row to "
                         f"contrast with, got shape {tuple(features.shape)}")


def _check_labels(labels, features: Tensor) -> None:
    """Integer [B] labels on the features' device, none negative. The sign check reads the values:
    one host-device synchronization for CUDA labels (the reference's class count needs one anyway)."""
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class ids or None, got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise TypeError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
    b = features.shape[0]
    if labels.dim() != 1 or labels.shape[0] != b:
        raise ValueError(f"labels must have shape ({b},) (one class id per sample of features "
                         f"{tuple(features.shape)}), got shape {tuple(labels.shape)}")
    if labels.device != features.device:
        raise ValueError(f"labels must be on the features' device, got labels on {labels.device} and features "
                         f"on {features.device}")
    # a value check reads the labels (a host sync); torch.compile's trace and meta tensors cannot
    if labels.numel() and labels.device.type != "meta" and not torch.compiler.is_compiling() \
            and bool((labels < 0).any()):
        raise ValueError(f"labels must be >= 0, got a minimum of {int(labels.min())}")


def _check_rows(x, name: str, min_rows: int = 1) -> None:
    V.check_tensor(x, name, min_rows=min_rows)


def _check_same(a: Tensor, b: Tensor, na: str, nb: str, what: str = "shape") -> None:
    if what == "shape" and a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {na} {tuple(a.shape)} and {nb} {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"{na} and {nb} must have the same dtype, got {na} {a.dtype} and {nb} {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{na} and {nb} must be on the same device, got {na} on {a.device} and {nb} on {b.device}")


def _check_moco(query, key, queue) -> None:
    _check_rows(query, "query")
    _check_rows(key, "key")
    _check_same(query, key, "query", "key")
    _check_rows(queue, "queue")
    if queue.shape[1] != query.shape[1]:
        raise ValueError(f"queue must have the queries' dimension D={query.shape[1]} (one key per row, [K, D]), "
                         f"got queue of shape {tuple(queue.shape)}")
    _check_same(query, queue, "query", "queue", what="dtype")


def check_tau_plus(tau_plus) -> float:
    t = V.check_finite(tau_plus, "tau_plus")
    if not 0.0 <= t < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1) (a class prior), got {tau_plus!r}")
    return t


def supcon(features, labels, temperature, base_temperature, contrast_mode) -> None:
    _check_features(features)
    _check_labels(labels, features)
    V.check_positive(temperature, "temperature")
    V.check_positive(base_temperature, "base_temperature")
    V.check_choice(contrast_mode, "contrast_mode", CONTRAST_MODES)


def moco(query, key, queue, temperature, reduction, normalize_queue) -> None:
    _check_moco(query, key, queue)
    V.check_positive(temperature, "temperature")
    V.check_choice(reduction, "reduction", V.REDUCTIONS)
    V.check_flag(normalize_queue, "normalize_queue")


def hard_negative_ntxent(z1, z2, temperature, tau_plus, beta) -> None:
    V.check_pair(z1, z2, min_rows=2, what="every anchor needs a negative: M = 2N - 2 > 0")
    V.check_positive(temperature, "temperature")
    check_tau_plus(tau_plus)
    V.check_finite(beta, "beta")


# ---- the two-tower losses (docs/spec.md §7.4-§7.5): the public functions' contracts, run by the ops' entries too


_IMAGE, _TEXT = "image_features", "text_features"


def check_two_tower_features(image_features, text_features) -> None:
    """Two (N, D) floating tensors of one shape, dtype and device (open_clip pairs row i with row i)."""
    V.check_tensor(image_features, _IMAGE)
    V.check_tensor(text_features, _TEXT)
    a, b = image_features, text_features
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{_IMAGE} and {_TEXT} must have the same number of rows (row i of one pairs with row i of the "
            f"other), got {_IMAGE} {tuple(a.shape)} and {_TEXT} {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{_IMAGE} and {_TEXT} must have the same feature dimension, got {_IMAGE} {tuple(a.shape)} "
            f"and {_TEXT} {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"{_IMAGE} and {_TEXT} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{_IMAGE} and {_TEXT} must be on the same device, got {a.device} and {b.device}")


def check_two_tower_scalar(value, name: str, features: Tensor, positive: bool):
    """A Python real (finite; > 0 when ``positive``) as a float, or a one-element floating tensor on
    the features' device as given (its value is not read: see the module docstring)."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor or a Python float, got a tensor of dtype {value.dtype}")
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a Python float or a tensor with one element (0-dim), got a tensor of shape "
                f"{tuple(value.shape)}")
        if value.device != features.device:
            raise ValueError(
                f"{name} must be on the features' device {features.device}, got a tensor on {value.device}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a Python float or a one-element tensor, got {value!r} ({type(value).__name__})")
    return V.check_positive(value, name) if positive else V.check_finite(value, name)


def clip(image_features, text_features, logit_scale) -> None:
    check_two_tower_features(image_features, text_features)
    check_two_tower_scalar(logit_scale, "logit_scale", image_features, positive=True)


def siglip(image_features, text_features, logit_scale, logit_bias, offset) -> None:
    """``text_features`` may hold more rows than ``image_features`` (the gathered form: this rank's
    images against every rank's texts); image row i's positive is text row offset + i."""
    V.check_tensor(image_features, "image_features")
    V.check_tensor(text_features, "text_features")
    n, m = image_features.shape[0], text_features.shape[0]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + n > m:
        raise ValueError(f"offset must be an int with 0 <= offset <= {m - n} (text rows {m}, image rows {n}), "
                         f"got {offset!r}")
    check_two_tower_features(image_features, text_features[offset:offset + n])
    check_two_tower_scalar(logit_scale, "logit_scale", image_features, positive=True)
    check_two_tower_scalar(logit_bias, "logit_bias", image_features, positive=False)
