"""Shared pieces of the examples: the digits data, batched augmentations, the encoder and projector,
the loss registry, the training loop (single process or torch.distributed) and the two probes.

Everything is plain PyTorch apart from ``sklearn.datasets.load_digits`` (the 1,797 8×8 digit images
ship inside scikit-learn, so nothing is downloaded). Small enough to train in about 30 s on two
CPU cores; the same code runs on a GPU with ``device="cuda"``.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # run from a clone without installing: examples/ sits next to the package
    import duality_kernels as dk
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import duality_kernels as dk

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is optional
    _tqdm = None

NUM_CLASSES = 10

# ------------------------------------------------------------------------------------------------
# data


@dataclass
class Digits:
    x_train: torch.Tensor  # (n, 1, 8, 8) float32 in [0, 1]
    y_train: torch.Tensor  # (n,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device) -> "Digits":
        return Digits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Digits:
    """The scikit-learn digits, split per class (stratified) into train and held-out test.

    The split depends only on ``seed`` (0 by default, for every example), not on the training seed,
    so that accuracies of different runs are measured on the same held-out images.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError("the examples need scikit-learn for its digits data: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    tr, te = [], []
    for c in range(NUM_CLASSES):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * test_fraction))
        te.append(idx[:n_test])
        tr.append(idx[n_test:])
    tr, te = torch.cat(tr).sort().values, torch.cat(te).sort().values
    return Digits(x[tr], y[tr], x[te], y[te])


# ------------------------------------------------------------------------------------------------
# augmentations (batched, any device)


@dataclass
class AugConfig:
    crop_scale: tuple = (0.75, 1.0)  # side of the random crop, as a fraction of the image, resized back to 8×8
    max_shift: float = 1.5  # extra random shift, in pixels
    max_rotate_deg: float = 12.0  # small: a 6 and a 9 differ by a rotation
    max_shear: float = 0.15
    brightness: tuple = (0.7, 1.3)  # multiplicative intensity jitter
    noise_std: float = 0.1  # additive Gaussian noise, in units of the [0, 1] pixel range
    cutout_p: float = 0.3  # probability of zeroing one random 3×3 patch


def augment(x: torch.Tensor, cfg: AugConfig = AugConfig(), generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One random view of every image in ``x`` (n, 1, H, W): random resized crop + shift + rotation
    + shear as one affine warp (``affine_grid`` / ``grid_sample``, bilinear, zero padding), then
    intensity jitter, cutout and Gaussian noise. All batched: a single kernel call per step."""
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype

    def u(lo, hi, *shape):
        return torch.rand(n, *shape, device=dev, dtype=dt, generator=generator) * (hi - lo) + lo

    s = u(*cfg.crop_scale)  # < 1 samples a smaller window = crop, then resize to the full grid
    a = u(-1.0, 1.0) * math.radians(cfg.max_rotate_deg)
    sh = u(-cfg.max_shear, cfg.max_shear)
    # the crop window lies inside the image (|t| <= 1 - s in normalized coordinates), plus a shift
    t = (u(-1.0, 1.0, 2) * (1.0 - s).unsqueeze(1)) + u(-1.0, 1.0, 2) * (2.0 * cfg.max_shift / w)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.stack(
        [torch.stack([s * cos, s * (-sin + sh), t[:, 0]], 1), torch.stack([s * sin, s * cos, t[:, 1]], 1)], 1
    )  # (n, 2, 3): output grid -> input coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out * u(*cfg.brightness).view(n, 1, 1, 1)
    if cfg.cutout_p > 0:
        k = 3
        cy = torch.randint(0, h - k + 1, (n,), device=dev, generator=generator)
        cx = torch.randint(0, w - k + 1, (n,), device=dev, generator=generator)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        patch = ((rows >= cy.view(n, 1, 1)) & (rows < cy.view(n, 1, 1) + k)
                 & (cols >= cx.view(n, 1, 1)) & (cols < cx.view(n, 1, 1) + k))
        on = torch.rand(n, device=dev, generator=generator) < cfg.cutout_p
        out = out.masked_fill((patch & on.view(n, 1, 1)).unsqueeze(1), 0.0)
    if cfg.noise_std > 0:
        out = out + cfg.noise_std * torch.randn(out.shape, device=dev, dtype=dt, generator=generator)
    return out


# ------------------------------------------------------------------------------------------------
# model


class Encoder(nn.Module):
    """Small CNN for 8×8 images: 3 conv blocks, global average pooling -> ``width * 4`` features."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.net = nn.Sequential(
            *block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),  # 8×8 -> 4×4
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 4 * width
        # the digits' pixel statistics (mean ≈ 0.30, std ≈ 0.38 on [0, 1])
        self.register_buffer("mean", torch.tensor(0.30))
        self.register_buffer("std", torch.tensor(0.38))

    def forward(self, x):
        return self.net(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))


def projector(in_dim: int, dim: int, hidden: int = 256) -> nn.Module:
    """Linear-BN-ReLU-Linear head (the SimCLR / VICReg shape); the loss sees its output."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))


class SSLModel(nn.Module):
    """Encoder (probed) + projector (whose output ``dim``-dimensional embeddings the loss sees)."""

    def __init__(self, dim: int = 128, width: int = 32, hidden: int = 256):
        super().__init__()
        self.encoder = Encoder(width)
        self.projector = projector(self.encoder.out_dim, dim, hidden)
        # channels-last convolutions are 2-20x faster on CPU (oneDNN) for these tiny 8×8 maps, and
        # as fast or faster on GPU; .to() converts only the 4-D conv weights
        self.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.projector(self.encoder(x))


# ------------------------------------------------------------------------------------------------
# losses


@dataclass
class LossSpec:
    name: str
    family: str  # "dimension" (covariance / non-contrastive) or "sample" (Gram / contrastive)
    make: Callable[[int], Callable]  # dim -> fn(z1, z2, gather_distributed) -> scalar
    hparams: str  # what we chose, for the printout / README


def _registry() -> Dict[str, LossSpec]:
    """Hyper-parameters for this scale (D = 128, N = 256, 8×8 digits), chosen by short sweeps
    (25-40 epochs, seed 0, scored by the 5-labels-per-class linear probe; the percentages below).
    Where a sweep was flat we kept the method's official value. Differences under ~1 point are
    within seed noise."""
    r = {}

    def add(name, family, hparams, make):
        r[name] = LossSpec(name, family, make, hparams)

    # The official 25 / 25 / 1 learns slowly here (the invariance term wins early): 89.7% after 25
    # epochs at D = 128 against 92.9% with inv 10 (inv 5 → 91.6%). The covariance term
    # c(z) = Σ_{k≠l} C_kl² / D grows like D, so at fixed weight it fades at small D: at D = 16,
    # cov 1 → 89.7%, 8 → 91.8% (inv 10); at D = 32 cov 4 → 92.6%; at D = 512 cov 0.25 / 1 → 92.6 /
    # 92.0%. Hence cov = 128 / D (1 at D = 128).
    add("vicreg", "dimension", "inv 10, var 25, cov = 128 / D (1 at D = 128)",
        lambda d: lambda a, b, g: dk.vicreg_loss(a, b, 10.0, 25.0, 128.0 / d, gather_distributed=g))
    # the log-sum-exp covariance term of the paper's eq. 11-12 is a mean over D rows of a softmax
    # over D-1 entries: its gradient per covariance entry is ~1/(temperature·D²), so with weight 1
    # the invariance term dominates. cov weight 1 → 90.0%, 5 → 91.5%, 20 → 92.2%. Its
    # sample-contrastive twin (eq. 13) gets the same values (5 → 91.8%, 20 → 92.1%). Unlike VICReg,
    # neither gained from inv 10 (25 epochs: exp 91.2 vs 91.6%, ctr 91.0 vs 91.3%), so inv stays 25.
    add("vicreg_exp", "dimension", "inv 25, var 25, cov_exp 20, temperature 0.1",
        lambda d: lambda a, b, g: dk.vicreg_exp_loss(a, b, 25.0, 25.0, 20.0, temperature=0.1, gather_distributed=g))
    add("vicreg_ctr", "sample", "inv 25, var 25, cov_ctr 20, temperature 0.1 (twin of vicreg_exp)",
        lambda d: lambda a, b, g: dk.vicreg_ctr_loss(a, b, 25.0, 25.0, 20.0, temperature=0.1, gather_distributed=g))
    # Barlow Twins' 0.0051 was tuned for D = 8192. At D = 128: 0.002 → 86.5%, 0.0078 → 88.0%,
    # 0.02 → 90.3%, 0.05 → 91.6%, 0.15 → 90.5%. The off-diagonal sum has D-1 terms per diagonal
    # one, so we keep lambda·D fixed at 6.4 when D changes (lambda = 0.05 at D = 128).
    add("barlow", "dimension", "lambda = 6.4 / D (0.05 at D = 128)",
        lambda d: lambda a, b, g: dk.barlow_twins_loss(a, b, lambda_param=6.4 / d, gather_distributed=g))
    # Gram family: the temperature barely matters here (NT-Xent 0.1 / 0.2 / 0.5 → 93.8 / 93.5 / 93.2%)
    add("ntxent", "sample", "temperature 0.2, cosine similarity",
        lambda d: lambda a, b, g: dk.ntxent_loss(a, b, 0.2, gather_distributed=g))
    add("dcl", "sample", "temperature 0.2",
        lambda d: lambda a, b, g: dk.dcl_loss(a, b, 0.2, gather_distributed=g))
    add("infonce", "sample", "temperature 0.2 (CLIP-style cross-view)",
        lambda d: lambda a, b, g: dk.infonce_loss(a, b, 0.2, gather_distributed=g))
    # mu bounds the row norms (sqrt(mu)); 0.25 → 77%, 1 (official) → 89.8%, 4 → 94.1%, 16 → 92.4%
    add("spectral", "sample", "mu 4 (official 1)",
        lambda d: lambda a, b, g: dk.spectral_contrastive_loss(a, b, mu=4.0, gather_distributed=g))
    return r


LOSSES: Dict[str, LossSpec] = _registry()


def make_loss(name: str, dim: int) -> Callable:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name].make(dim)


# ------------------------------------------------------------------------------------------------
# progress bar (tqdm when installed and wanted, a line every few epochs otherwise)


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.enabled, self.total, self.desc = enabled, total, desc
        self.bar = _tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if (enabled and _tqdm) else None
        self.n, self.t0, self._last = 0, time.perf_counter(), 0.0

    def update(self, **postfix):
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)
        else:
            now = time.perf_counter()
            if now - self._last > 5.0 or self.n == self.total:
                self._last = now
                pf = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
                print(f"{self.desc}: {self.n}/{self.total} ({now - self.t0:.0f}s) {pf}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------
# training


def training_args(description: str, batch_help: str):
    """The command-line arguments both training examples take; each adds its own."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", required=True, choices=sorted(LOSSES))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256, help=batch_help)
    p.add_argument("--dim", type=int, default=128, help="embedding (projector output) dimension D")
    p.add_argument("--width", type=int, default=32, help="CNN width (features = 4·width)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dist():
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def duality_log(z: torch.Tensor) -> Dict[str, float]:
    """The paper's four quantities on one view's embeddings, via ``dk.duality_terms``.

    z is centered per dimension (the mean embedding otherwise dominates every similarity and hides
    the spread; VICReg's covariance is centered too) and rescaled by one scalar so that its mean
    squared row norm is 1 (loss scales differ by orders of magnitude between methods; one scalar
    multiplies all four terms by the same c⁴, so the identity L_nc + Σ_k‖z_:,k‖⁴ = L_c + Σ_i‖z_i‖⁴
    holds exactly for the logged matrix). Also returns the relative residual of that identity and
    the effective rank N² / (L_c + Σ_i‖z_i‖⁴) that the terms give."""
    z = z.detach().float()
    z = z - z.mean(0, keepdim=True)
    z = z * torch.rsqrt(z.pow(2).sum(1).mean().clamp_min(1e-12))
    lc, lnc, rows4, cols4 = (float(t) for t in dk.duality_terms(z))
    n = z.shape[0]  # = Σ_i‖z_i‖² = trace of either Gram after the rescaling
    return {"L_c": lc, "L_nc": lnc, "rows4": rows4, "cols4": cols4,
            "identity_residual": abs((lnc + cols4) - (lc + rows4)) / max(lc + rows4, 1e-30),
            # ‖z zᵀ‖²_F = L_c + Σ_i‖z_i‖⁴ = L_nc + Σ_k‖z_:,k‖⁴ = Σ σ⁴, so (Σσ²)² / Σσ⁴ is the participation
            # ratio of the spectrum: the number of dimensions the embeddings effectively use
            "effective_rank": n * n / max(lc + rows4, 1e-30)}


@dataclass
class TrainResult:
    model: SSLModel
    random_model: SSLModel  # the same architecture and init, never trained (the baseline)
    losses: List[float] = field(default_factory=list)
    duality: List[Dict[str, float]] = field(default_factory=list)  # with "step"
    seconds: float = 0.0
    steps: int = 0


def train(loss: str, data: Digits, *, epochs: int = 40, batch_size: int = 256, dim: int = 128,
          lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0, device: str = "cpu",
          width: int = 32, aug: AugConfig = AugConfig(), progress: bool = True,
          duality_every: int = 0, loss_fn: Optional[Callable] = None, model_wrapper: Optional[Callable] = None,
          desc: Optional[str] = None) -> TrainResult:
    """Train encoder + projector with ``loss`` on two augmented views of ``data.x_train``.

    ``batch_size`` is the GLOBAL batch. Under an initialized torch.distributed group of W ranks,
    every rank draws the same permutation, keeps its own contiguous B/W rows of each batch (equal
    shard sizes, incomplete batches dropped), and the loss is called with gather_distributed=True so
    that batch statistics and negatives span the global batch; ``model_wrapper`` (e.g. DDP) wraps the
    model for the optimisation. ``duality_every`` > 0 logs ``duality_log`` of view 1's embeddings on
    the local rows every that many steps. ``loss_fn`` overrides the registry (for experiments).
    """
    rank, world = _dist()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world}")
    local = batch_size // world
    n_train = data.x_train.shape[0]
    if batch_size > n_train:
        raise ValueError(f"batch_size {batch_size} exceeds the {n_train} training images")
    torch.manual_seed(seed)  # the same init on every rank (DDP broadcasts rank 0's anyway)
    model = SSLModel(dim, width).to(device)
    random_model = copy.deepcopy(model)
    fn = loss_fn if loss_fn is not None else make_loss(loss, dim)
    gather = world > 1
    net = model_wrapper(model) if model_wrapper is not None else model
    steps_per_epoch = n_train // batch_size
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(total // 10, 5 * steps_per_epoch))
    def lr_factor(s):
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    perm_gen = torch.Generator().manual_seed(seed + 1)  # identical on all ranks
    aug_gen = torch.Generator(device=device).manual_seed(seed + 2 + 1000 * rank)  # distinct per rank
    x_all = data.x_train.to(device)
    res = TrainResult(model, random_model)
    bar = Progress(total, desc or f"{loss}", enabled=progress and rank == 0)
    net.train()
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=perm_gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size + rank * local: b * batch_size + (rank + 1) * local].to(device)
            x = x_all[idx]
            v = torch.cat([augment(x, aug, aug_gen), augment(x, aug, aug_gen)])
            z = net(v)  # both views in one pass (BatchNorm statistics over both)
            z1, z2 = z[:local], z[local:]
            l = fn(z1, z2, gather)
            opt.zero_grad(set_to_none=True)
            l.backward()
            opt.step()
            sched.step()
            step += 1
            lv = float(l.detach())
            res.losses.append(lv)
            if duality_every and (step % duality_every == 0 or step == 1 or step == total):
                d = duality_log(z1)
                d["step"] = step
                res.duality.append(d)
            bar.update(loss=lv)
    bar.close()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    res.seconds = time.perf_counter() - t0
    res.steps = step
    return res


# ------------------------------------------------------------------------------------------------
# probes


@torch.no_grad()
def features(encoder: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(x[i:i + batch]) for i in range(0, x.shape[0], batch)]).float()


@torch.no_grad()
def calibrate_bn(encoder: nn.Module, x: torch.Tensor) -> None:
    """Set BatchNorm running statistics to the exact averages over ``x`` (train-mode passes)."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    encoder.train()
    for i in range(0, x.shape[0], 512):
        encoder(x[i:i + 512])
    encoder.eval()


def linear_probe(f_train, y_train, f_test, y_test, weight_decay: float = 1e-3, max_iter: int = 300) -> float:
    """Multinomial logistic regression on standardized frozen features (full-batch L-BFGS); test accuracy."""
    mu, sd = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
    a, b = (f_train - mu) / sd, (f_test - mu) / sd
    with torch.enable_grad():
        lin = nn.Linear(a.shape[1], NUM_CLASSES).to(a.device)
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure():
            opt.zero_grad()
            l = F.cross_entropy(lin(a), y_train) + weight_decay * lin.weight.pow(2).sum()
            l.backward()
            return l

        opt.step(closure)
    with torch.no_grad():
        return float((lin(b).argmax(1) == y_test).float().mean())


@torch.no_grad()
def knn_probe(f_train, y_train, f_test, y_test, k: int = 10, temperature: float = 0.07) -> float:
    """Cosine-similarity kNN with exp(sim / T)-weighted votes (the InstDisc / DINO protocol)."""
    a, b = F.normalize(f_train, dim=1), F.normalize(f_test, dim=1)
    sim, idx = (b @ a.T).topk(k, dim=1)
    votes = torch.zeros(b.shape[0], NUM_CLASSES, device=b.device)
    votes.scatter_add_(1, y_train[idx], (sim / temperature).exp())
    return float((votes.argmax(1) == y_test).float().mean())


def label_subsets(y: torch.Tensor, per_class: int, draws: int, seed: int = 0) -> List[torch.Tensor]:
    """``draws`` index sets of ``per_class`` random labeled images per class (fixed seed, so every
    encoder is probed with the same labels)."""
    g = torch.Generator().manual_seed(seed)
    yc = y.cpu()
    out = []
    for _ in range(draws):
        parts = []
        for c in range(NUM_CLASSES):
            idx = (yc == c).nonzero().flatten()
            parts.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
        out.append(torch.cat(parts).to(y.device))
    return out


def probe_all(ftr, ytr, fte, yte, per_class: int = 5, draws: int = 10) -> Dict[str, float]:
    """Four accuracies on the held-out split: linear and kNN probes trained on all training labels,
    and on ``per_class`` labels per class (mean over ``draws`` label draws; kNN with k = per_class).

    The digits are easy: with all 1,258 labels even raw pixels or a random CNN reach ~98%, so the
    full-label probes saturate. With 5 labels per class the probe has to rely on the geometry of the
    features, which is what self-supervised training changes; that is where the gap shows."""
    res = {"linear": linear_probe(ftr, ytr, fte, yte), "knn": knn_probe(ftr, ytr, fte, yte)}
    if per_class:
        subs = label_subsets(ytr, per_class, draws)
        res[f"linear_{per_class}"] = sum(linear_probe(ftr[i], ytr[i], fte, yte) for i in subs) / draws
        res[f"knn_{per_class}"] = sum(knn_probe(ftr[i], ytr[i], fte, yte, k=per_class) for i in subs) / draws
    return res


def evaluate(encoder: nn.Module, data: Digits, recalibrate_bn: bool = False, per_class: int = 5,
             draws: int = 10) -> Dict[str, float]:
    """``probe_all`` on features of the frozen encoder (eval mode). ``recalibrate_bn`` first sets the
    BatchNorm statistics from the clean train images (done for the random encoder, whose running
    statistics are still the init's 0 / 1)."""
    dev = next(encoder.parameters()).device
    d = data.to(dev)
    if recalibrate_bn:
        calibrate_bn(encoder, d.x_train)
    ftr, fte = features(encoder, d.x_train), features(encoder, d.x_test)
    return probe_all(ftr, d.y_train, fte, d.y_test, per_class, draws)


def pixel_baseline(data: Digits, per_class: int = 5, draws: int = 10) -> Dict[str, float]:
    """The same probes on the 64 raw pixels."""
    return probe_all(data.x_train.flatten(1), data.y_train, data.x_test.flatten(1), data.y_test, per_class, draws)
