"""Bitwise determinism (docs/design.md convention 7): every public function on every backend, and every
drop-in autograd Function, called three times on the same inputs, returns the same bits, values
and gradients.

Here: the torch reference on CPU, the CUDA backend in its CPU simulator and Triton in its
interpreter; on a GPU the same tests run on CUDA tensors (marked ``cuda``, so benchmarks/
gpu_check.sh runs them), at shapes with several blocks per reduction. The kernels reduce in a fixed
order (two-stage reductions, no float atomics), so any difference is a bug.
"""

import pytest
import torch

from duality_kernels.ops import cuda as cuda_ops

from duality_kernels.testing import csim
from . import public_cases as P
from .accuracy import _flat, views

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
pytestmark = [pytest.mark.cuda] if ON_GPU else []

# GPU: many blocks per reduction, N > D and N < D. Here: the simulator's column reductions split
# 140 rows into 3 chunks; the interpreter runs 37x29 in seconds.
SHAPES = {"cpu": {"torch": (37, 29), "triton": (37, 29), "cuda": (140, 40)},
          "cuda": {b: (1031, 257) for b in ("torch", "triton", "cuda")}}
GPU_WIDE = (130, 2049)
RUNS = 3


# without a GPU, the CUDA backend runs this module's CPU tensors in its simulator (duality_kernels/testing/csim.py)
_simulator = csim.module_fixture()


def _bits(fn, z1, z2):
    """Outputs and input gradients of fn on fresh leaves, for a fixed weighting of the outputs."""
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    outs = _flat(fn(a, b))
    total = sum((o.double() * torch.linspace(-1, 1, o.numel(), dtype=torch.float64, device=o.device)
                 .reshape(o.shape)).sum() for o in outs)
    grads = torch.autograd.grad(total, (a, b), allow_unused=True)
    return [o.detach() for o in outs] + [g for g in grads if g is not None]


def _assert_deterministic(fn, z1, z2, what):
    first = _bits(fn, z1, z2)
    for run in range(1, RUNS):
        again = _bits(fn, z1, z2)
        assert len(again) == len(first)
        for i, (x, y) in enumerate(zip(first, again)):
            assert torch.equal(x, y), f"{what}: item {i} differs between run 0 and run {run}"


def _param_sets(name):
    """The defaults, each forced side, and the modes of the contrastive losses."""
    base = P.DEFAULTS[name]
    sets = [base]
    if "side" in base:
        sets += [dict(base, side="sample"), dict(base, side="dimension")]
    if name == "normalized_gram":
        sets.append({"pair": False})
    if name == "ntxent_loss":
        sets += [dict(base, similarity="abs", normalization="center_l2", reduction="none"),
                 dict(base, similarity="square", normalization="dim_std", reduction="sum")]
    if name == "dcl_loss":
        sets.append(dict(base, similarity="square", reduction="none"))
    if name == "infonce_loss":
        sets.append(dict(base, reduction="none"))
    return sets


def _cases():
    return [pytest.param(name, backend, id=f"{backend}-{name}")
            for name in P.PUBLIC for backend in P.backends(name)]


@pytest.mark.parametrize("name,backend", _cases())
def test_public_functions(name, backend):
    shapes = [SHAPES[DEVICE][backend]] + ([GPU_WIDE] if ON_GPU else [])
    for shape in shapes:
        z1, z2 = views(*shape, torch.float32, 3, DEVICE)
        for params in _param_sets(name):
            _assert_deterministic(P.call(name, params, backend), z1, z2, f"{shape} {params}")


def _function_cases(module, mu):
    """(name, fn(z1, z2)) of each drop-in Function of an ops module, on both sides."""
    v = (25.0, 25.0, 1.0, 1.0, 1e-4)
    out = []
    for side in ("sample", "dimension"):
        out += [
            (f"VICRegFunction {side}", lambda a, b, s=side: module.VICRegFunction.apply(a, b, *v, s)),
            (f"BarlowTwinsFunction {side}", lambda a, b, s=side: module.BarlowTwinsFunction.apply(a, b, 0.0051, 1e-5,
                                                                                                  s)),
            (f"SpectralContrastiveFunction {side}",
             lambda a, b, s=side: module.SpectralContrastiveFunction.apply(a, b, mu, s)),
            (f"DualityTermsFunction {side}", lambda a, b, s=side: module.DualityTermsFunction.apply(a, s)),
        ]
    return out + [
        ("CovarianceFunction", lambda a, b: module.CovarianceFunction.apply(a, 1)),
        ("CrossCorrelationFunction", lambda a, b: module.CrossCorrelationFunction.apply(a, b, 1e-5)),
        ("NormalizedGramFunction pair", lambda a, b: module.NormalizedGramFunction.apply(a, b)),
        ("NormalizedGramFunction", lambda a, b: module.NormalizedGramFunction.apply(a, None)),
    ]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_autograd_functions(backend):
    if backend == "cuda":
        module = cuda_ops
    else:
        from duality_kernels.ops.triton import gram as module
    z1, z2 = views(*SHAPES[DEVICE][backend], torch.float32, 4, DEVICE)
    for what, fn in _function_cases(module, mu=2.0):
        _assert_deterministic(fn, z1, z2, what)
