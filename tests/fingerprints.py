"""Bit fingerprints of every public function, module and drop-in Function on every backend.

A refactor that must not change behaviour records them before and compares after:

    python tests/fingerprints.py --write /tmp/before.json   # on the old code
    python tests/fingerprints.py --check /tmp/before.json   # on the new code: exit 1 on a difference

Each entry hashes (sha256) the bytes of a call's outputs and of the gradients of a fixed weighted
sum of them, for small float32 and float64 inputs with N < D and N > D. Backends: torch; triton
under the Triton interpreter; cuda in the CPU simulator (duality_kernels/testing/csim.py). The hashes are bitwise,
so they compare runs on one machine (another CPU's BLAS may round differently).
"""

import argparse
import hashlib
import json
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import duality_kernels as dk  # noqa: E402
from duality_kernels.testing import csim  # noqa: E402
from tests.public_cases import DEFAULTS, PUBLIC, backends, call  # noqa: E402

SHAPES = ((5, 7), (9, 4))
DTYPES = (torch.float32, torch.float64)

# Non-default parameter sets, with values float32 cannot represent exactly.
EXTRA = {
    "covariance": [{"correction": 0}],
    "normalized_gram": [{"pair": False}],
    "sample_contrastive_criterion": [{"side": "sample"}, {"side": "dimension"}],
    "duality_terms": [{"side": "sample"}, {"side": "dimension"}],
    "vicreg_loss": [{"side": "sample"}, {"side": "dimension"}],
    "barlow_twins_loss": [{"side": "sample"}, {"side": "dimension"}],
    "spectral_contrastive_loss": [{"mu": 0.7, "side": "sample"}, {"mu": 0.7, "side": "dimension"}],
    "ntxent_loss": [{"temperature": 0.3, "similarity": s, "normalization": n, "reduction": r}
                    for s, n, r in (("abs", "center_l2", "sum"), ("square", "dim_std", "none"),
                                    ("dot", "dim_std", "mean"))],
    "dcl_loss": [{"temperature": 0.3, "similarity": "square", "reduction": "none"}],
    "infonce_loss": [{"temperature": 0.3, "reduction": "none"}],
    "vicreg_exp_loss": [{"temperature": 0.3}],
    "vicreg_ctr_loss": [{"temperature": 0.3}],
}

MODULES = {
    "VICRegLoss": ((), {"gamma": 1.3, "return_terms": True}),
    "VICRegExpLoss": ((), {"return_terms": True}),
    "VICRegCtrLoss": ((), {"return_terms": True}),
    "BarlowTwinsLoss": ((), {"return_terms": True}),
    "NTXentLoss": ((0.3,), {}),
    "DCLLoss": ((0.3,), {}),
    "InfoNCELoss": ((0.3,), {}),
    "SpectralContrastiveLoss": ((0.7,), {"return_terms": True}),
}
MODULE_BACKENDS = {"VICRegLoss": "vicreg_loss", "VICRegExpLoss": "vicreg_exp_loss", "VICRegCtrLoss": "vicreg_ctr_loss",
                   "BarlowTwinsLoss": "barlow_twins_loss", "NTXentLoss": "ntxent_loss", "DCLLoss": "dcl_loss",
                   "InfoNCELoss": "infonce_loss", "SpectralContrastiveLoss": "spectral_contrastive_loss"}

# drop-in Functions: name -> (args after the tensors, number of tensor inputs, backends)
DROPINS = {
    "VICRegFunction": (lambda: (25.0, 25.0, 1.0, 1.3, 1e-4, "sample"), 2, ("triton", "cuda")),
    "BarlowTwinsFunction": (lambda: (0.0051, 1e-5, "dimension"), 2, ("triton", "cuda")),
    "SpectralContrastiveFunction": (lambda: (0.7, "sample"), 2, ("triton", "cuda")),
    "CovarianceFunction": (lambda: (1,), 1, ("triton", "cuda")),
    "CrossCorrelationFunction": (lambda: (1e-5,), 2, ("triton", "cuda")),
    "NormalizedGramFunction": (lambda: (None,), 1, ("triton", "cuda")),
    "DualityTermsFunction": (lambda: ("dimension",), 1, ("triton", "cuda")),
    "NTXentFunction": (lambda: (0.3, "dot", "l2", "mean"), 2, ("triton",)),
    "DCLFunction": (lambda: (0.3, "dot", "mean"), 2, ("triton",)),
    "InfoNCEFunction": (lambda: (0.3, "mean"), 2, ("triton",)),
    "VICRegExpFunction": (lambda: (25.0, 25.0, 1.0, 1.3, 1e-4, 0.3), 2, ("triton",)),
    "VICRegCtrFunction": (lambda: (25.0, 25.0, 1.0, 1.3, 1e-4, 0.3), 2, ("triton",)),
    "CodingRateFunction": (lambda: (0.3, "dimension"), 1, ("triton",)),
}

# the spectral functions that a compiled backend registers (docs/spec.md §7.7): key -> (public name, fn(backend))
SPECTRAL = {
    "coding_rate_loss/sample": ("coding_rate_loss",
                                lambda be: lambda a, b: dk.coding_rate_loss(a, 0.3, side="sample", backend=be)),
    "coding_rate_loss/dimension": ("coding_rate_loss",
                                   lambda be: lambda a, b: dk.coding_rate_loss(a, 0.3, side="dimension", backend=be)),
    "mcr2_loss/auto": ("mcr2_loss", lambda be: lambda a, b: dk.mcr2_loss(
        a, torch.arange(a.shape[0]) % 3, 0.4, 0.7, 4, return_terms=True, backend=be)),
    "singular_values/auto": ("singular_values", lambda be: lambda a, b: dk.singular_values(a, backend=be)),
    "rankme/dimension": ("rankme", lambda be: lambda a, b: dk.rankme(a, 1e-3, side="dimension", backend=be)),
}


def dropin_class(backend, name):
    """The drop-in Function ``name`` of ``backend``, wherever the package keeps it."""
    import importlib

    places = {"cuda": ("duality_kernels.ops.cuda",),
              "triton": ("duality_kernels.ops.triton.gram", "duality_kernels.ops.triton.lse",
                         "duality_kernels.ops.triton", "duality_kernels.ops.triton.spectral")}
    for mod in places[backend]:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, name):
            return getattr(m, name)
    raise LookupError(f"{backend}.{name}")


def views(n, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.7 + 0.3
    z2 = 0.6 * z1 + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return []


def digest(fn, inputs):
    """sha256 of fn(*inputs)'s outputs and of the gradients of Σ w·out (w fixed per output)."""
    outs = _flat(fn(*inputs))
    h = hashlib.sha256()
    gen = torch.Generator().manual_seed(1234)
    total = 0
    for o in outs:
        h.update(o.detach().contiguous().cpu().numpy().tobytes())
        if o.requires_grad:
            w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
            total = total + (o * w).sum()
    leaves = [t for t in inputs if isinstance(t, torch.Tensor)]
    if isinstance(total, torch.Tensor):
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        for g in grads:
            h.update(b"none" if g is None else g.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def fingerprints():
    torch.set_num_threads(1)
    csim.enable()
    out = {}
    for dtype in DTYPES:
        dt = str(dtype).split(".")[-1]
        for si, (n, d) in enumerate(SHAPES):
            shape = f"{n}x{d}"
            for name in PUBLIC:
                sets = [DEFAULTS[name]] + EXTRA.get(name, [])
                for pi, params in enumerate(sets):
                    for be in backends(name):
                        z1, z2 = views(n, d, dtype, 10 * si + pi)
                        out[f"fn/{name}/{pi}/{be}/{dt}/{shape}"] = digest(call(name, params, be), (z1, z2))
            for key, (name, fn) in SPECTRAL.items():
                for be in backends(name):
                    z1, z2 = views(n, d, dtype, 300 + si)
                    out[f"spectral/{key}/{be}/{dt}/{shape}"] = digest(fn(be), (z1, z2))
            for cls, (args, kw) in MODULES.items():
                for be in backends(MODULE_BACKENDS[cls]):
                    z1, z2 = views(n, d, dtype, 100 + si)
                    mod = getattr(dk, cls)(*args, backend=be, **kw)
                    out[f"module/{cls}/{be}/{dt}/{shape}"] = digest(mod, (z1, z2))
            for name, (args, k, bes) in DROPINS.items():
                for be in bes:
                    z1, z2 = views(n, d, dtype, 200 + si)
                    f = dropin_class(be, name)
                    out[f"dropin/{name}/{be}/{dt}/{shape}"] = digest(
                        lambda *t, f=f, a=args(): f.apply(*t, *a), (z1, z2)[:k])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="JSON")
    g.add_argument("--check", metavar="JSON")
    a = p.parse_args()
    fp = fingerprints()
    if a.write:
        with open(a.write, "w") as f:
            json.dump(fp, f, indent=0, sort_keys=True)
        print(f"{len(fp)} fingerprints written to {a.write}")
        return 0
    with open(a.check) as f:
        ref = json.load(f)
    missing = sorted(set(ref) - set(fp))
    changed = sorted(k for k in ref if k in fp and fp[k] != ref[k])
    new = sorted(set(fp) - set(ref))
    for k in changed:
        print("changed:", k)
    for k in missing:
        print("missing:", k)
    print(f"{len(ref)} recorded, {len(changed)} changed, {len(missing)} missing, {len(new)} new")
    return 1 if changed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
