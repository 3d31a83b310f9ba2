"""Every nn.Module against its function, table-driven: the module forwards each of its constructor
arguments to the right parameter (non-default values, each distinct, so a swapped or dropped
argument changes the result), and a bad constructor argument raises at construction, naming the
module's own argument."""

import math

import pytest
import torch

import duality_kernels as dk


def _views(n=9, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z2 = 0.6 * z1 + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z1, z2


def _features(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 2, 5, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 0, 2, 1, 1, 0, 2])


W = dict(inv_weight=3.3, var_weight=7.1, cov_weight=0.45, gamma=1.3, eps=3e-3)

# module constructor (args, kwargs) -> the function call it must equal, on views (z1, z2)
TWO_VIEW = [
    ("VICRegLoss", ((3.3, 7.1, 0.45), dict(eps=3e-3, gamma=1.3, side="sample")),
     lambda a, b: dk.vicreg_loss(a, b, **W, side="sample")),
    ("VICRegExpLoss", ((3.3, 7.1, 0.45, 1.3, 3e-3, 0.37), {}),
     lambda a, b: dk.vicreg_exp_loss(a, b, **W, temperature=0.37)),
    ("VICRegCtrLoss", ((3.3, 7.1, 0.45, 1.3, 3e-3, 0.37), {}),
     lambda a, b: dk.vicreg_ctr_loss(a, b, **W, temperature=0.37)),
    ("BarlowTwinsLoss", ((0.013,), dict(eps=2e-4, side="dimension")),
     lambda a, b: dk.barlow_twins_loss(a, b, 0.013, 2e-4, side="dimension")),
    ("NTXentLoss", ((0.37,), dict(similarity="abs", normalization="center_l2", reduction="sum")),
     lambda a, b: dk.ntxent_loss(a, b, 0.37, "abs", "center_l2", "sum")),
    ("DCLLoss", ((0.37,), dict(similarity="square", reduction="sum")),
     lambda a, b: dk.dcl_loss(a, b, 0.37, "square", "sum")),
    ("InfoNCELoss", ((0.37, "sum"), {}), lambda a, b: dk.infonce_loss(a, b, 0.37, "sum")),
    ("SpectralContrastiveLoss", ((0.7,), dict(side="sample")),
     lambda a, b: dk.spectral_contrastive_loss(a, b, 0.7, side="sample")),
    ("HardNegativeNTXentLoss", ((0.37, 0.17, 0.8), {}),
     lambda a, b: dk.hard_negative_ntxent_loss(a, b, 0.37, 0.17, 0.8)),
]


@pytest.mark.parametrize("cls,ctor,fn", TWO_VIEW, ids=[c[0] for c in TWO_VIEW])
def test_module_equals_function(cls, ctor, fn):
    z1, z2 = _views()
    args, kw = ctor
    got = getattr(dk, cls)(*args, **kw)(z1, z2)
    want = fn(z1, z2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_supcon_module_equals_function():
    f, labels = _features()
    got = dk.SupConLoss(0.37, "one", 0.11)(f, labels)
    torch.testing.assert_close(got, dk.supcon_loss(f, labels, 0.37, 0.11, "one"), rtol=0, atol=0)


def test_moco_module_equals_function():
    q, k = _views(seed=2)
    queue = _views(n=13, seed=3)[0]
    torch.testing.assert_close(dk.MoCoLoss(0.37)(q, k, queue), dk.moco_loss(q, k, queue, 0.37), rtol=0, atol=0)


BAD = [
    ("VICRegLoss", dict(mu_param=math.inf), "mu_param"),
    ("VICRegLoss", dict(lambda_param=math.nan), "lambda_param"),
    ("VICRegLoss", dict(nu_param="1"), "nu_param"),
    ("VICRegLoss", dict(eps=-1.0), "eps"),
    ("VICRegLoss", dict(gamma=math.inf), "gamma"),
    ("VICRegLoss", dict(return_terms=1), "return_terms"),
    ("VICRegExpLoss", dict(var_weight=math.inf), "var_weight"),
    ("VICRegCtrLoss", dict(temperature=0.0), "temperature"),
    ("BarlowTwinsLoss", dict(lambda_param=math.inf), "lambda_param"),
    ("BarlowTwinsLoss", dict(eps=-1e-5), "eps"),
    ("NTXentLoss", dict(temperature=-0.5), "temperature"),
    ("DCLLoss", dict(similarity="cos"), "similarity"),
    ("InfoNCELoss", dict(reduction="avg"), "reduction"),
    ("SpectralContrastiveLoss", dict(mu=0.0), "mu"),
    ("SpectralContrastiveLoss", dict(side="both"), "side"),
    ("HardNegativeNTXentLoss", dict(tau_plus=1.0), "tau_plus"),
    ("SupConLoss", dict(contrast_mode="some"), "contrast_mode"),
    ("MoCoLoss", dict(temperature=math.nan), "temperature"),
]


@pytest.mark.parametrize("cls,kw,name", BAD, ids=[f"{c}-{n}" for c, _, n in BAD])
def test_module_validates_at_construction(cls, kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        getattr(dk, cls)(**kw)


def test_two_tower_modules_equal_functions():
    a, b = _views(seed=4)
    torch.testing.assert_close(dk.ClipLoss()(a, b, 14.3), dk.clip_loss(a, b, 14.3), rtol=0, atol=0)
    torch.testing.assert_close(dk.SigLipLoss()(a, b, 7.3, -3.1), dk.siglip_loss(a, b, 7.3, -3.1), rtol=0, atol=0)


def test_spectral_modules_equal_functions():
    z1, z2 = _views(seed=5)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2, 2])
    torch.testing.assert_close(dk.CodingRateLoss(0.37, side="sample")(z1), dk.coding_rate_loss(z1, 0.37, side="sample"),
                               rtol=0, atol=0)
    torch.testing.assert_close(dk.MCR2Loss(0.37, 0.61, 5)(z1, labels), dk.mcr2_loss(z1, labels, 0.37, 0.61, 5),
                               rtol=0, atol=0)
    torch.testing.assert_close(dk.MECLoss(13.0, 3, lamda_inv=0.9)(z1, z2), dk.mec_loss(z1, z2, 13.0, 3, lamda_inv=0.9),
                               rtol=0, atol=0)
    monitor = dk.RankMeMonitor(max_samples=100, eps=1e-5)
    monitor.update(z1)
    torch.testing.assert_close(monitor.compute(), dk.rankme(z1, 1e-5).to(monitor.compute().dtype), rtol=1e-12, atol=0)


BAD_WAVE3 = [
    ("CodingRateLoss", dict(eps=0.0), "eps"),
    ("MCR2Loss", dict(gamma=math.inf), "gamma"),
    ("MECLoss", dict(order=0), "order"),
    ("ClipLoss", dict(backend="gpu"), "backend"),
    ("SigLipLoss", dict(gather_distributed="yes"), "gather_distributed"),
]


@pytest.mark.parametrize("cls,kw,name", BAD_WAVE3, ids=[f"{c}-{n}" for c, _, n in BAD_WAVE3])
def test_wave3_module_validates_at_construction(cls, kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        getattr(dk, cls)(**kw)
