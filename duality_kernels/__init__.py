"""duality_kernels: self-supervised losses computed on the cheaper side of the duality between
contrastive and non-contrastive criteria (Garrido et al., ICLR 2023). The contract of every function: docs/spec.md."""

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
from .functional.spectrum import coding_rate_loss, mcr2_loss, mec_loss, rankme, singular_values
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
from .modules.spectrum import CodingRateLoss, MCR2Loss, MECLoss, RankMeMonitor

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
    "singular_values",
    "rankme",
    "coding_rate_loss",
    "mcr2_loss",
    "mec_loss",
    "CodingRateLoss",
    "MCR2Loss",
    "MECLoss",
    "RankMeMonitor",
]
