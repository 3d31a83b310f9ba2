"""duality_kernels: self-supervised losses computed on the cheaper side of the duality between
contrastive and non-contrastive criteria (Garrido et al., ICLR 2023). See SPEC in the README."""

from ._backend import BackendUnavailableError
from .functional import (
    barlow_twins_loss,
    covariance,
    cross_correlation,
    dcl_loss,
    dimension_contrastive_criterion,
    duality_terms,
    infonce_loss,
    normalized_gram,
    ntxent_loss,
    sample_contrastive_criterion,
    spectral_contrastive_loss,
    vicreg_ctr_loss,
    vicreg_exp_loss,
    vicreg_loss,
)
from .functional.supervised import (
    hard_negative_ntxent_loss,
    moco_loss,
    supcon_loss,
)
from .functional.two_tower import clip_loss, siglip_loss
from .modules import (
    BarlowTwinsLoss,
    DCLLoss,
    DCLWLoss,
    HardNegativeNTXentLoss,
    InfoNCELoss,
    MoCoLoss,
    NTXentLoss,
    SpectralContrastiveLoss,
    SupConLoss,
    VICRegCtrLoss,
    VICRegExpLoss,
    VICRegLoss,
)
from .modules.two_tower import ClipLoss, SigLipLoss

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "barlow_twins_loss",
    "covariance",
    "cross_correlation",
    "dcl_loss",
    "dimension_contrastive_criterion",
    "duality_terms",
    "hard_negative_ntxent_loss",
    "infonce_loss",
    "moco_loss",
    "normalized_gram",
    "ntxent_loss",
    "sample_contrastive_criterion",
    "spectral_contrastive_loss",
    "supcon_loss",
    "vicreg_ctr_loss",
    "vicreg_exp_loss",
    "vicreg_loss",
    "clip_loss",
    "siglip_loss",
    "BarlowTwinsLoss",
    "DCLLoss",
    "DCLWLoss",
    "HardNegativeNTXentLoss",
    "InfoNCELoss",
    "MoCoLoss",
    "NTXentLoss",
    "SpectralContrastiveLoss",
    "SupConLoss",
    "VICRegCtrLoss",
    "VICRegExpLoss",
    "VICRegLoss",
    "ClipLoss",
    "SigLipLoss",
]
