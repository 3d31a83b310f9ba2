"""The sweep's cases: for each loss its inputs at a grid point (N, D), its official formula, our
function, third-party equivalents and a flop model; and the providers that compute it.

A grid point's N is the number of embedding rows a call processes per view: SupCon's N rows are
B = N/2 samples of V = 2 views ([B, 2, D]); MoCo's N are the queries (and as many keys) against a
queue of K rows (``--queue``); the one-view spectral functions (coding rate, MCR², RankMe) take one
[N, D] matrix. benchmarks/results/README.md lists every loss's inputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

OURS = ("torch", "triton", "cuda")
ALL_PROVIDERS = ("eager", "compile", "torch", "triton", "cuda", "lightly", "infcl", "siglip_kernel")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
DEFAULT_QUEUE = 65536  # MoCo's K: the queue of the MoCo v2 paper (and docs/spec.md's MoCo target)

DEFAULT_GRID = {
    # CPU: the whole default run stays under 3 minutes on 2 cores; N=256, D=8192 is the shape
    # where computing the covariance term on the N x N side (docs/spec.md §2) matters most.
    "cpu": ([64, 256, 1024], [64, 512, 8192]),
    "cuda": ([256, 1024, 2048, 4096, 16384], [256, 1024, 2048, 8192]),
}


class Unavailable(Exception):
    """This provider does not apply here (not installed, wrong device, shape limits)."""


@dataclass
class Case:
    """One grid point's inputs: ``args`` go positionally to every provider, ``grads`` are the
    tensors the backward differentiates against (all of them ``requires_grad``)."""

    args: tuple
    grads: tuple


@dataclass
class LossSpec:
    official: str            # "module:function" in duality_kernels/testing (docs/spec.md defaults)
    ours: str                # function name in duality_kernels
    family: str              # "cov": native D x D; "gram": native N x N (or 2N x 2N); "queue": N x K; "spectral"
    inputs: str              # how a grid point's inputs are built: a key of INPUTS
    # fwd+bwd flops of the eager formula as a function of (N, D, K): ~3x the forward GEMM flops.
    eager_flops: Callable[[int, int, int], float]
    # fwd+bwd flops of ours when it works on a cheaper side (None: as eager).
    ours_flops: Callable[[int, int, int], float] | None = None
    lightly: Callable[[], object] | None = None
    kwargs: dict = field(default_factory=dict)   # keyword arguments given to eager and ours alike
    first_result: bool = False                   # the official function returns (loss, terms...)
    # Check against the eager formula run in float64 (eager's own row included) instead of eager in
    # the input dtype: the official code's D x D logdets are ill-conditioned when N < D or a class
    # has few rows, so its float32 gradients are off by up to ~1e-3 themselves.
    ref_float64: bool = False
    extra: dict = field(default_factory=dict)


def _lightly(name, **kw):
    def make():
        import lightly.loss as L

        return getattr(L, name)(**kw)
    return make


def _mcr2_eager(n, d, k, c=10):
    # one D x D Gram for the whole batch and, per class, W Pi_c (D x N x N) and its D x D product
    return 3.0 * (2 * n * d * d + c * (2 * d * n * n + 2 * n * d * d)) + 2.0 * (c + 1) * d ** 3


def _mcr2_ours(n, d, k, c=10):
    m, mc = min(n, d), min(max(n // c, 1), d)
    return 6.0 * n * d * m + 6.0 * n * d * mc + 2.0 * m ** 3 + 2.0 * c * mc ** 3


LOSSES = {
    "vicreg": LossSpec(
        "official:vicreg_official", "vicreg_loss", "cov", "two_views",
        eager_flops=lambda n, d, k: 12.0 * n * d * d,
        ours_flops=lambda n, d, k: 12.0 * n * d * min(n, d),
        lightly=_lightly("VICRegLoss", lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4),
    ),
    "vicreg_exp": LossSpec("official:vicreg_exp_official", "vicreg_exp_loss", "cov", "two_views",
                           eager_flops=lambda n, d, k: 12.0 * n * d * d),
    "vicreg_ctr": LossSpec("official:vicreg_ctr_official", "vicreg_ctr_loss", "gram", "two_views",
                           eager_flops=lambda n, d, k: 12.0 * n * n * d),
    "barlow": LossSpec(
        "official:barlow_twins_official", "barlow_twins_loss", "cov", "two_views",
        eager_flops=lambda n, d, k: 6.0 * n * d * d,
        ours_flops=lambda n, d, k: 12.0 * n * d * min(n, d) if n < d else 6.0 * n * d * d,
        lightly=_lightly("BarlowTwinsLoss", lambda_param=0.0051),
    ),
    "ntxent": LossSpec("official:ntxent_official", "ntxent_loss", "gram", "two_views",
                       eager_flops=lambda n, d, k: 24.0 * n * n * d,
                       lightly=_lightly("NTXentLoss", temperature=0.1)),
    "dcl": LossSpec("official:dcl_official", "dcl_loss", "gram", "two_views",
                    eager_flops=lambda n, d, k: 24.0 * n * n * d,
                    lightly=_lightly("DCLLoss", temperature=0.1)),
    "infonce": LossSpec("official:infonce_official", "infonce_loss", "gram", "two_views",
                        eager_flops=lambda n, d, k: 6.0 * n * n * d, extra={"temperature": 0.1}),
    "spectral": LossSpec(
        "official:spectral_official", "spectral_contrastive_loss", "gram", "two_views",
        eager_flops=lambda n, d, k: 6.0 * n * n * d,
        ours_flops=lambda n, d, k: 12.0 * n * d * min(n, d),
    ),
    # Supervised and negative-sampling losses (docs/spec.md §5)
    "supcon": LossSpec("official_supervised:supcon", "supcon_loss", "gram", "supcon",
                       eager_flops=lambda n, d, k: 6.0 * n * n * d, extra={"classes": 100}),
    "moco": LossSpec("official_supervised:moco", "moco_loss", "queue", "moco",
                     eager_flops=lambda n, d, k: 6.0 * n * k * d),
    "hard_negative_ntxent": LossSpec("official_supervised:hcl", "hard_negative_ntxent_loss", "gram",
                                     "two_views", eager_flops=lambda n, d, k: 24.0 * n * n * d),
    # Two-tower losses (docs/spec.md §6): open_clip's code as the eager provider
    "clip": LossSpec("official_two_tower:clip_official", "clip_loss", "gram", "clip",
                     eager_flops=lambda n, d, k: 12.0 * n * n * d,
                     ours_flops=lambda n, d, k: 6.0 * n * n * d),
    "siglip": LossSpec("official_two_tower:siglip_official", "siglip_loss", "gram", "siglip",
                       eager_flops=lambda n, d, k: 6.0 * n * n * d),
    # Spectral functions (docs/spec.md §7): the official code works on the D x D side
    "coding_rate": LossSpec(
        "official_spectrum:tcr_official", "coding_rate_loss", "spectral", "one_view",
        eager_flops=lambda n, d, k: 6.0 * n * d * d + 2.0 * d ** 3,
        ours_flops=lambda n, d, k: 6.0 * n * d * min(n, d) + 2.0 * min(n, d) ** 3, ref_float64=True,
    ),
    "mcr2": LossSpec("official_spectrum:mcr2_official", "mcr2_loss", "spectral", "labeled",
                     eager_flops=_mcr2_eager, ours_flops=_mcr2_ours, kwargs={"num_classes": 10},
                     first_result=True, ref_float64=True, extra={"classes": 10}),
    "mec": LossSpec(
        "official_spectrum:mec_official", "mec_loss", "spectral", "two_views",
        eager_flops=lambda n, d, k: 12.0 * n * n * d + 36.0 * n ** 3,
        ours_flops=lambda n, d, k: 12.0 * n * d * min(n, d) + 36.0 * min(n, d) ** 3,
    ),
    "rankme": LossSpec(
        "official_spectrum:rankme_official", "rankme", "spectral", "one_view",
        eager_flops=lambda n, d, k: 12.0 * n * d * min(n, d) + 10.0 * min(n, d) ** 3,
        ours_flops=lambda n, d, k: 6.0 * n * d * min(n, d) + 10.0 * min(n, d) ** 3,
    ),
}


# --------------------------------------------------------------------------------------------
# Inputs of one grid point
# --------------------------------------------------------------------------------------------

def _views(N, D, g):
    a = torch.randn(N, D, generator=g, dtype=torch.float32)
    b = 0.8 * a + 0.6 * torch.randn(N, D, generator=g, dtype=torch.float32)  # correlated views
    return a, b


def _labels(n, classes, g, device):
    return torch.randint(0, classes, (n,), generator=g).to(device)


def _leaf(x, dtype, device, grad=True):
    return x.to(device=device, dtype=dtype).requires_grad_(grad)


def make_inputs(loss, N, D, dtype, device, seed=0, queue=DEFAULT_QUEUE) -> Case:
    """The inputs of ``loss`` at (N, D), from a generator seeded by (seed, N, D)."""
    spec = LOSSES[loss]
    g = torch.Generator(device="cpu").manual_seed(seed + 1000003 * N + D)
    kind = spec.inputs
    if kind == "two_views":
        a, b = _views(N, D, g)
        z1, z2 = _leaf(a, dtype, device), _leaf(b, dtype, device)
        return Case((z1, z2), (z1, z2))
    if kind == "one_view":
        z = _leaf(torch.randn(N, D, generator=g), dtype, device)
        return Case((z,), (z,))
    if kind == "labeled":
        z = _leaf(torch.randn(N, D, generator=g), dtype, device)
        return Case((z, _labels(N, spec.extra["classes"], g, device)), (z,))
    if kind == "supcon":
        if N % 2:
            raise Unavailable(f"supcon takes N = B * 2 views rows: N must be even, got N={N}")
        a, b = _views(N // 2, D, g)
        feats = _leaf(torch.stack([a, b], dim=1), dtype, device)        # [B, V=2, D]
        return Case((feats, _labels(N // 2, spec.extra["classes"], g, device)), (feats,))
    if kind == "moco":
        a, b = _views(N, D, g)
        q = _leaf(a, dtype, device)
        # The key comes from the momentum encoder and the queue from past keys: no gradient to either.
        k = _leaf(b, dtype, device, grad=False)
        bank = _leaf(torch.randn(queue, D, generator=g), dtype, device, grad=False)
        return Case((q, k, bank), (q,))
    if kind in ("clip", "siglip"):
        a, b = _views(N, D, g)
        za, zb = _leaf(a, dtype, device), _leaf(b, dtype, device)
        # open_clip's initial values, as fp32 0-dim parameters that receive gradients: CLIP
        # exp(log(1/0.07)), SigLIP scale 10 and bias -10.
        scale = torch.tensor(10.0 if kind == "siglip" else 1 / 0.07, device=device).requires_grad_(True)
        if kind == "clip":
            return Case((za, zb, scale), (za, zb, scale))
        bias = torch.tensor(-10.0, device=device).requires_grad_(True)
        return Case((za, zb, scale, bias), (za, zb, scale, bias))
    raise ValueError(f"unknown input kind {kind!r} of loss {loss!r}")


def loss_label(loss: str, queue: int) -> str:
    """The CSV's ``loss`` value: MoCo rows at another queue length than the default carry it."""
    return f"{loss}_K{queue}" if loss == "moco" and queue != DEFAULT_QUEUE else loss


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------

_compiled: dict = {}


def official_fn(loss: str) -> Callable:
    """The eager official formula of ``loss`` as f(*case.args) -> loss tensor."""
    spec = LOSSES[loss]
    module, name = spec.official.split(":")
    f = getattr(importlib.import_module(f"duality_kernels.testing.{module}"), name)
    if not spec.kwargs and not spec.first_result:
        return f

    def eager(*args):
        out = f(*args, **spec.kwargs)
        return out[0] if spec.first_result else out
    eager.__name__ = f"{name}_eager"
    return eager


def make_provider(name: str, loss: str, device: torch.device, N: int, D: int) -> Callable:
    """Return f(*case.args) -> loss tensor, or raise Unavailable."""
    spec = LOSSES[loss]
    if name == "eager":
        return official_fn(loss)
    if name == "compile":
        if loss not in _compiled:
            import torch._dynamo as dynamo

            for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                         "accumulated_recompile_limit"):
                if hasattr(dynamo.config, knob):
                    setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 256))
            # One static graph per shape: the best compile can do, as a user with fixed shapes gets.
            _compiled[loss] = torch.compile(official_fn(loss), dynamic=False)
        return _compiled[loss]
    if name in OURS:
        if name != "torch" and device.type != "cuda":
            raise Unavailable(f"backend={name!r} needs a CUDA device")
        import duality_kernels as dk

        fn = getattr(dk, spec.ours, None)
        if fn is None:
            raise Unavailable(f"duality_kernels has no {spec.ours}")
        # A backend that lacks this op raises BackendUnavailableError at the call: an "unavailable" row.
        return lambda *args: fn(*args, **spec.kwargs, backend=name)
    if name == "lightly":
        if spec.lightly is None:
            raise Unavailable(f"lightly has no {loss} loss")
        try:
            module = spec.lightly()
        except ImportError as e:
            raise Unavailable(f"lightly not importable ({e})") from None
        return module
    if name == "infcl":
        return _infcl(loss, device, D)
    if name == "siglip_kernel":
        return _siglip_kernel(loss, device)
    raise ValueError(f"unknown provider {name!r}")


# the third-party fused kernels: which losses each computes, and the function it is called through
THIRD_PARTY = {"infcl": (("infonce", "clip"), "inf_cl", "cal_inf_loss"),
               "siglip_kernel": (("siglip",), "siglip_kernel", "fused_siglip_loss")}


def _third_party(name: str, loss: str, device) -> Callable:
    """The third-party provider's function, or Unavailable: another loss, no GPU, or not installed."""
    losses, module, fn = THIRD_PARTY[name]
    if loss not in losses:
        raise Unavailable(f"{name} computes {' / '.join(losses)} only")
    if device.type != "cuda":
        raise Unavailable(f"{name} needs a CUDA device")
    try:
        return getattr(importlib.import_module(module), fn)
    except Exception as e:  # noqa: BLE001 - any import failure means "not here"
        raise Unavailable(f"{module} not importable ({type(e).__name__}: {e})") from None


def _siglip_kernel(loss, device):
    fused_siglip_loss = _third_party("siglip_kernel", loss, device)
    F = torch.nn.functional

    # siglip-kernel takes L2-normalized rows and the log of the scale (its log_temp): the scale
    # tensor gets its gradient through the log, the bias directly, as open_clip's parameters do
    def siglip_kernel(a, b, scale, bias):
        return fused_siglip_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), scale.log(), bias)
    return siglip_kernel


def _infcl(loss, device, D):
    cal_inf_loss = _third_party("infcl", loss, device)
    if D % 256:
        raise Unavailable(f"inf-cl needs D a multiple of 256 (head_dim), got D={D}")
    F = torch.nn.functional

    # Both directions, rows L2-normalized first (inf-cl expects it), the scale folded into the
    # query exactly as cal_inf_loss(scale=) does: InfoNCE's 1/temperature (docs/spec.md §4) or
    # CLIP's logit_scale tensor, which then receives its gradient through the product.
    if loss == "infonce":
        inv_t = 1.0 / LOSSES[loss].extra["temperature"]

        def infcl(z1, z2):
            q, k = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
            return 0.5 * (cal_inf_loss(q * inv_t, k) + cal_inf_loss(k * inv_t, q))
        return infcl

    def infcl_clip(a, b, scale):
        q, k = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return 0.5 * (cal_inf_loss(q * scale, k) + cal_inf_loss(k * scale, q))
    return infcl_clip


def provider_flops(name: str, loss: str, N: int, D: int, K: int = DEFAULT_QUEUE) -> float:
    spec = LOSSES[loss]
    if name in OURS and spec.ours_flops is not None:
        return spec.ours_flops(N, D, K)
    return spec.eager_flops(N, D, K)


def est_seconds(flops: float, device: torch.device, dtype: torch.dtype, precision: str) -> float:
    """Rough time of fwd+bwd from flops at an optimistic sustained rate (for skipping only)."""
    if device.type == "cuda":   # H200-class: measured GEMM ceilings, de-rated
        rate = {torch.float64: 3e13, torch.bfloat16: 4e14, torch.float16: 4e14}.get(
            dtype, 3e13 if precision == "highest" else 2e14)
    else:
        # The 2-core dev machine: 50-90 GFLOP/s fp32 GEMM, but the eager covariance formulas spend
        # most of their time in passes over D x D temporaries: VICReg N=256 D=8192 fwd+bwd took
        # 10-25 s with other jobs running, i.e. ~2e10 "flop/s" in this model.
        rate = {torch.float64: 1e10, torch.bfloat16: 5e9, torch.float16: 2.5e9}.get(dtype, 2e10)
    return flops / rate
