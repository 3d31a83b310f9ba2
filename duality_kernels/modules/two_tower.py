"""nn.Module forms of the two-tower losses, named and called as open_clip's.

``forward`` takes open_clip's arguments (features, ``logit_scale``, ``logit_bias``,
``output_dict``), so the modules drop into open_clip-style training loops. The constructors do not
take open_clip's distributed plumbing (``local_loss``, ``gather_with_grad``, ``rank``,
``world_size``, ``cache_labels``, ``use_horovod``, ``dist_impl``): ``gather_distributed=True`` is
open_clip's ``local_loss=True, gather_with_grad=True`` with the rank and world size read from the
process group (every SigLipLoss ``dist_impl`` computes that same loss). Rows are L2-normalized
inside, which leaves already normalized features unchanged (to rounding).
"""

from __future__ import annotations


from ..functional import two_tower as F
from ._base import _Loss

__all__ = ["ClipLoss", "SigLipLoss"]


class _TwoTowerLoss(_Loss):
    @staticmethod
    def _out(loss, output_dict):
        return {"contrastive_loss": loss} if output_dict else loss


class ClipLoss(_TwoTowerLoss):
    """CLIP's symmetric cross-entropy (``clip_loss``).

    ``logit_bias`` is accepted for open_clip's call signature and checked, but takes no part: open_clip
    adds it to every logit, and a softmax cross-entropy is unchanged by a constant added to a row, so
    the loss does not depend on it (its true gradient is zero; its ``.grad`` stays None here).
    """

    def __init__(self, *, gather_distributed: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict: bool = False):
        if logit_bias is not None:
            F.check_features(image_features, text_features)
            F.check_scalar(logit_bias, "logit_bias", image_features, positive=False)
        loss = F.clip_loss(image_features, text_features, logit_scale,
                           gather_distributed=self.gather_distributed, backend=self.backend)
        return self._out(loss, output_dict)


class SigLipLoss(_TwoTowerLoss):
    """SigLIP's pairwise sigmoid loss (``siglip_loss``)."""

    def __init__(self, *, gather_distributed: bool = False, backend: str = "auto"):
        super().__init__(gather_distributed, backend)

    def forward(self, image_features, text_features, logit_scale, logit_bias, output_dict: bool = False):
        loss = F.siglip_loss(image_features, text_features, logit_scale, logit_bias,
                             gather_distributed=self.gather_distributed, backend=self.backend)
        return self._out(loss, output_dict)
