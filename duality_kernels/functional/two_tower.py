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


import torch

from .. import _backend
from .._policy import public
from .. import distributed as _dist
from ..ops._checks import check_two_tower_features as check_features  # noqa: F401
from ..ops._checks import check_two_tower_scalar as check_scalar  # noqa: F401
from ..reference import two_tower as R

Tensor = torch.Tensor

__all__ = ["clip_loss", "siglip_loss"]


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
