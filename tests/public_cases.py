"""Every public function of duality_kernels as a function of two views, for the tests that sweep all
of them (test_properties.py, test_determinism.py): its parameters, and the backends implementing it;
and the recipe of the property tests' inputs (Recipe).

``call(name, params, backend)`` returns ``fn(z1, z2)``: the public function with those parameters
on that backend (single-input functions use z1 only), composite losses with ``return_terms=True``
so that every term is compared too.
"""

from typing import NamedTuple

import torch

import duality_kernels as dk
from duality_kernels.ops import registry

# the families as the op registry states them (the covariance family and the primitives; the
# log-sum-exp family; the supervised family: SupCon, MoCo and the hard-negative NT-Xent)
GRAM_FAMILY = tuple(p for p, f in registry.FAMILY.items() if f == registry.GRAM)
LSE_FAMILY = tuple(p for p, f in registry.FAMILY.items() if f == registry.LSE)
SUPERVISED_FAMILY = tuple(p for p, f in registry.FAMILY.items() if f == "supervised")
PUBLIC = GRAM_FAMILY + LSE_FAMILY + SUPERVISED_FAMILY


def backends(name):
    """The backends that implement ``name``: the reference, "torch", and the compiled backends that
    registered it."""
    return ("torch",) + tuple(b for b in ("triton", "cuda") if registry.capability(b, name) is not None)


def min_cols(name):
    """VICReg-exp's off-diagonal terms and VICReg-ctr's row variance need two columns (docs/spec.md §6)."""
    return 2 if name in ("vicreg_exp_loss", "vicreg_ctr_loss") else 1


# A parameter set of each function that the sweeps start from (defaults where docs/spec.md has them).
DEFAULTS = {
    "normalized_gram": {"pair": True},
    "covariance": {"correction": 1},
    "cross_correlation": {},
    "sample_contrastive_criterion": {"side": "auto"},
    "dimension_contrastive_criterion": {"side": "auto"},
    "duality_terms": {"side": "auto"},
    "vicreg_loss": {"side": "auto"},
    "barlow_twins_loss": {"side": "auto"},
    "spectral_contrastive_loss": {"mu": 1.0, "side": "auto"},
    "ntxent_loss": {"temperature": 0.1, "similarity": "dot", "normalization": "l2", "reduction": "mean"},
    "dcl_loss": {"temperature": 0.1, "similarity": "dot", "reduction": "mean"},
    "infonce_loss": {"temperature": 0.1, "reduction": "mean"},
    "vicreg_exp_loss": {"temperature": 0.1},
    "vicreg_ctr_loss": {"temperature": 0.1},
    "clip_loss": {"logit_scale": 14.3},
    "siglip_loss": {"logit_scale": 10.0, "logit_bias": -10.0},
    "supcon_loss": {"temperature": 0.07, "base_temperature": 0.07, "contrast_mode": "all", "classes": 3},
    "moco_loss": {"temperature": 0.2},
    "hard_negative_ntxent_loss": {"temperature": 0.5, "tau_plus": 0.1, "beta": 1.0},
}


def supcon_inputs(z1, z2, classes):
    """SupCon's [B, 2, D] features from the two views (gradients reach both) and B labels in
    ``classes`` classes (0: None, SimCLR's positives)."""
    labels = None if classes == 0 else torch.arange(z1.shape[0], device=z1.device) % classes
    return torch.stack([z1, z2], dim=1), labels


def moco_queue(z1, z2):
    """A queue of 2N + 3 keys that depends on the views' shape alone (a fixed formula, traceable by
    torch.compile): not on their values, which MoCo treats as constants (no gradient flows into its
    queue) and numerical gradients would not."""
    n, d = z1.shape
    k = torch.arange((2 * n + 3) * d, device=z1.device, dtype=z1.dtype).reshape(2 * n + 3, d)
    return torch.sin(0.7 * k + 0.3)


def call(name, params, backend):
    f = getattr(dk, name)
    p = params
    if name == "normalized_gram":
        if p["pair"]:
            return lambda a, b: f(a, b, backend=backend)
        return lambda a, b: f(a, backend=backend)
    if name == "covariance":
        return lambda a, b: f(a, p["correction"], backend=backend)
    if name == "cross_correlation":
        return lambda a, b: f(a, b, backend=backend)
    if name in ("sample_contrastive_criterion", "dimension_contrastive_criterion", "duality_terms"):
        return lambda a, b: f(a, side=p["side"], backend=backend)
    if name in ("vicreg_loss", "barlow_twins_loss"):
        return lambda a, b: f(a, b, side=p["side"], return_terms=True, backend=backend)
    if name == "spectral_contrastive_loss":
        return lambda a, b: f(a, b, mu=p["mu"], side=p["side"], return_terms=True, backend=backend)
    if name in ("vicreg_exp_loss", "vicreg_ctr_loss"):
        return lambda a, b: f(a, b, temperature=p["temperature"], return_terms=True, backend=backend)
    if name == "ntxent_loss":
        return lambda a, b: f(a, b, p["temperature"], p["similarity"], p["normalization"], p["reduction"],
                              backend=backend)
    if name == "dcl_loss":
        return lambda a, b: f(a, b, p["temperature"], p["similarity"], p["reduction"], backend=backend)
    if name == "infonce_loss":
        return lambda a, b: f(a, b, p["temperature"], p["reduction"], backend=backend)
    if name == "clip_loss":
        return lambda a, b: f(a, b, p["logit_scale"], backend=backend)
    if name == "siglip_loss":
        return lambda a, b: f(a, b, p["logit_scale"], p["logit_bias"], backend=backend)
    if name == "supcon_loss":
        return lambda a, b: f(*supcon_inputs(a, b, p["classes"]), p["temperature"], p["base_temperature"],
                              p["contrast_mode"], backend=backend)
    if name == "moco_loss":
        return lambda a, b: f(a, b, moco_queue(a, b), p["temperature"], backend=backend)
    if name == "hard_negative_ntxent_loss":
        return lambda a, b: f(a, b, p["temperature"], p["tau_plus"], p["beta"], backend=backend)
    raise KeyError(name)


class Recipe(NamedTuple):
    """How to build an example's two views (``views``): printed in full when an example fails, so
    that it can be rebuilt exactly (a tensor's repr rounds)."""

    kind: str
    n: int
    d: int
    seed: int
    scale: float
    offset: float
    count: int  # constant columns, zero rows or duplicated rows
    both: bool  # the degeneracy in z2 too

    def views(self):
        """(z1, z2) in float64: two correlated views, made degenerate as ``kind`` says."""
        n, d, count = self.n, self.d, self.count
        gen = torch.Generator().manual_seed(self.seed)
        z1 = torch.randn(n, d, generator=gen, dtype=torch.float64) * self.scale + self.offset
        z2 = 0.6 * z1 + 0.5 * self.scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
        if self.kind == "constant_columns":
            cols = torch.randperm(d, generator=gen)[:count]
            z1[:, cols] = torch.randn(count, generator=gen, dtype=torch.float64)
            if self.both:
                z2[:, cols] = torch.randn(count, generator=gen, dtype=torch.float64)
        elif self.kind == "zero_rows":
            rows = torch.randperm(n, generator=gen)[:count]
            z1[rows] = 0.0
            if self.both:
                z2[rows[: max(1, count // 2)]] = 0.0
        elif self.kind == "duplicate_rows":
            src = torch.randint(0, n, (count,), generator=gen)
            dst = torch.randperm(n, generator=gen)[:count]
            z1[dst], z2[dst] = z1[src].clone(), z2[src].clone()
        return z1, z2
