"""Two-tower contrastive losses (docs/spec.md §7): CLIP's and SigLIP's, with open_clip's semantics.

N paired rows (image_features[i] with text_features[i]), L2-normalized inside; the logit scale
(and SigLIP's bias) a Python number or a one-element tensor that receives its gradient (in CLIP,
``model.logit_scale.exp()``). A Python scale must be finite and > 0; a tensor scale's value is not
read (a host-device synchronization per call, docs/design.md convention 3), so its positivity is
the caller's, as in open_clip. Scale and bias tensors may have any floating dtype (an fp32
parameter with bf16 features under AMP) and must be on the features' device.

``gather_distributed=True`` (docs/spec.md §5) is open_clip's ``local_loss=True,
gather_with_grad=True``: each rank scores its own rows against every rank's, so the mean of the
ranks' losses is the global batch's loss and DDP-averaged gradients (features, scale and bias) are
its gradients.
"""

from __future__ import annotations

import numbers

import torch

from .. import _backend
from .._policy import public
from .. import distributed as _dist
from .. import _validation as V
from ..ops import registry
from ..ops.registry import LSE
from ..reference import two_tower as R

Tensor = torch.Tensor

__all__ = ["clip_loss", "siglip_loss"]

# --------------------------------------------------------------------------------------------
# the ops: each one's contract (docs/spec.md §6, run by the public function and by the compiled
# entry points) and its description (ops/registry.py); docs/adding_an_op.md


_IMAGE, _TEXT = "image_features", "text_features"


def check_features(image_features, text_features) -> None:
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


def check_scalar(value, name: str, features: Tensor, positive: bool):
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


@registry.op("clip", ("clip_loss",), LSE, 1, "ClipFunction",
             "CLIP (docs/spec.md §7.4): ``apply(image_features, text_features, logit_scale)`` -> (loss,); "
             "logit_scale a one-element tensor.")
def check_clip(image_features, text_features, logit_scale) -> None:
    check_features(image_features, text_features)
    check_scalar(logit_scale, "logit_scale", image_features, positive=True)


@registry.op("siglip", ("siglip_loss",), LSE, 1, "SigLipFunction",
             "SigLIP (docs/spec.md §7.5): ``apply(image_features, text_features, logit_scale, logit_bias, "
             "offset)`` -> (loss,); scale and bias one-element tensors, text rows offset..offset+N the positives.")
def check_siglip(image_features, text_features, logit_scale, logit_bias, offset) -> None:
    """``text_features`` may hold more rows than ``image_features`` (the gathered form: this rank's
    images against every rank's texts); image row i's positive is text row offset + i."""
    V.check_tensor(image_features, "image_features")
    V.check_tensor(text_features, "text_features")
    n, m = image_features.shape[0], text_features.shape[0]
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + n > m:
        raise ValueError(f"offset must be an int with 0 <= offset <= {m - n} (text rows {m}, image rows {n}), "
                         f"got {offset!r}")
    check_features(image_features, text_features[offset:offset + n])
    check_scalar(logit_scale, "logit_scale", image_features, positive=True)
    check_scalar(logit_bias, "logit_bias", image_features, positive=False)





@public
def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale, *, gather_distributed: bool = False,
              backend: str = "auto") -> Tensor:
    """CLIP's symmetric loss ½[CE(s·ÂB̂ᵀ, arange) + CE(s·B̂Âᵀ, arange)] on L2-normalized rows
    (docs/spec.md §7).

    Equal to open_clip's ``ClipLoss()(l2n(image_features), l2n(text_features), logit_scale)``.
    Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    check_features(image_features, text_features)
    s = check_scalar(logit_scale, "logit_scale", image_features, positive=True)
    ctx = _dist.context(gather_distributed, image_features, "clip_loss")
    if _backend.resolve(backend, "clip_loss", image_features, ctx.active) == "triton":
        from ..ops.triton.lse import two_tower as T

        if ctx.active:
            return T.clip_gathered(ctx, image_features, text_features, s)
        return T.clip(image_features, text_features, s)
    return R.clip(image_features, text_features, s, ctx=ctx)


@public
def siglip_loss(image_features: Tensor, text_features: Tensor, logit_scale, logit_bias, *,
                gather_distributed: bool = False, backend: str = "auto") -> Tensor:
    """SigLIP's loss −(1/N) Σ_ij log σ(y_ij(s·â_i·b̂_j + t)), y = 2I − 1, on L2-normalized rows
    (docs/spec.md §7).

    Equal to open_clip's ``SigLipLoss()(l2n(image_features), l2n(text_features), logit_scale, logit_bias)``;
    ``logit_bias=None`` means no bias, as there. Returns a 0-dim float32 tensor (float64 for float64 inputs).
    """
    check_features(image_features, text_features)
    s = check_scalar(logit_scale, "logit_scale", image_features, positive=True)
    t = 0.0 if logit_bias is None else check_scalar(logit_bias, "logit_bias", image_features, positive=False)
    ctx = _dist.context(gather_distributed, image_features, "siglip_loss")
    if _backend.resolve(backend, "siglip_loss", image_features, ctx.active) == "triton":
        from ..ops.triton.lse import two_tower_siglip as T

        if ctx.active:
            return T.siglip_gathered(ctx, image_features, text_features, s, t)
        return T.siglip(image_features, text_features, s, t)
    return R.siglip(image_features, text_features, s, t, ctx=ctx)
