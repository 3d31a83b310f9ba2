"""Pure-PyTorch spectral functions of docs/spec.md §7 on the cheaper side of the duality.

Every function of the nonzero eigenvalues of zᵀz equals the same function of those of z zᵀ: the
singular values, RankMe, and log-determinants by Sylvester's identity
logdet(I_D + α zᵀz) = logdet(I_N + α z zᵀ). So each factorization here runs on the min(N, D)
side (``side`` as resolved by the caller; MCR²'s class terms pick theirs per class).

Precision: Grams are accumulated in float32 (float64 for float64 inputs), never TF32, and
factorized in that dtype; singular values switch to a float64 Gram when float32 would be less
accurate than an SVD (see ``singular_values``). Gradients are closed forms (custom autograd
Functions, once differentiable): d logdet(I + αG)/dG = α(I + αG)⁻¹ and a Gram's backward
(Ḡ + Ḡᵀ)x compose to d/dz logdet(I_N + α z zᵀ) = 2α(I_N + α z zᵀ)⁻¹ z.
``ctx``/``strategy`` give docs/spec.md §5's global batch: rows all-gathered, or the D×D Gram
all-reduced when the dimension side is used; every rank computes the global value.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .. import _cost
from .._numerics import acc_dtype as compute_dtype
from ..distributed import LOCAL, Context
from . import _mm_fp32, l2n

Tensor = torch.Tensor

CLASS_COUNT_EPS = 1e-8  # the official MCR² code adds it to every class count (trace of Π_c)
_HALF = (torch.float16, torch.bfloat16)


def tf32_enabled() -> bool:
    """Whether float32 CUDA products may use TF32 (torch's setting, through either of its APIs)."""
    try:
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    except (AttributeError, RuntimeError):  # an older torch, or the two APIs mixed: ask the legacy one
        try:
            return bool(torch.backends.cuda.matmul.allow_tf32)
        except RuntimeError:
            return True


def accumulation_dtype(x: Tensor) -> torch.dtype:
    """float32 (float64 for float64 inputs), or float64 for float32 CUDA inputs while TF32 is
    enabled: a log-determinant or an eigenvalue of I + αG loses ~3 digits per TF32-rounded Gram
    entry (10-bit mantissa), unlike a loss that only sums Gram entries, so these Grams never use
    TF32; float64 avoids changing the process-wide flag (torch refuses reads of its legacy flag once
    the new one was set), and runs at the IEEE float32 rate on H100/H200-class GPUs."""
    cd = compute_dtype(x.dtype)
    if cd == torch.float32 and x.dtype == torch.float32 and x.device.type == "cuda" and tf32_enabled():
        return torch.float64
    return cd


def _matmul(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """a @ b accumulated in ``out_dtype`` (float32 or float64). Half 2-D operands on CUDA stay half
    (tensor cores with a float32 result); everything else is upcast first (on the CPU a product of
    half values is exact in float32, so that is the same arithmetic)."""
    if a.dtype in _HALF and a.dim() == 2 and b.dim() == 2 and a.device.type == "cuda" and out_dtype == torch.float32:
        return _mm_fp32(a, b)
    return torch.matmul(a.to(out_dtype), b.to(out_dtype))


# A CPU Gram that only eigh/eigvalsh read (they read its lower triangle): computed in this many row
# panels of that triangle, 10/16 of the full product's flops (the singular values' cost on the CPU is
# this product: RankMe of 25600×256 in float32 on one core, 38 ms of which 37 were the full Gram).
_PANELS = 4
_PANEL_MIN = 128  # below this Gram size the product is too small to gain from panels


def _gram_of(x: Tensor, side: str, out_dtype: Optional[torch.dtype] = None, lower: bool = False) -> Tensor:
    xt = x.transpose(-1, -2)
    cd = out_dtype or accumulation_dtype(x)
    if lower and x.dim() == 2 and x.device.type == "cpu" and x.shape[0 if side == "sample" else 1] >= _PANEL_MIN:
        return _lower_gram(x.to(cd) if side == "sample" else xt.to(cd))
    return _matmul(x, xt, cd) if side == "sample" else _matmul(xt, x, cd)


def _lower_gram(a: Tensor) -> Tensor:
    """a aᵀ right on and below the diagonal, row panel by row panel (above it: the diagonal
    blocks' entries, 0 elsewhere); each entry the same dot product as in the full a aᵀ; a may be a
    transposed view (BLAS reads it in place)."""
    m = a.shape[0]
    h = -(-m // _PANELS)
    g = a.new_zeros(m, m)
    for i in range(0, m, h):
        g[i:i + h, :i + h] = a[i:i + h] @ a[:i + h].transpose(0, 1)
    return g


class _Gram(torch.autograd.Function):
    """x xᵀ ("sample", (.., m, m)) or xᵀx ("dimension", (.., D, D)) of x (.., m, D), accumulated in
    ``accumulation_dtype``; backward (Ḡ + Ḡᵀ) x or x (Ḡ + Ḡᵀ), in the input dtype."""

    @staticmethod
    def forward(ctx, x, side, out_dtype=None, lower=False):
        ctx.save_for_backward(x)
        ctx.side = side
        return _gram_of(x, side, out_dtype, lower)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        sym = g + g.transpose(-1, -2)
        cd = sym.dtype
        dx = _matmul(sym, x, cd) if ctx.side == "sample" else _matmul(x, sym, cd)
        return dx.to(x.dtype), None, None, None


def gram(x: Tensor, side: str, out_dtype: Optional[torch.dtype] = None, lower: bool = False) -> Tensor:
    """``lower``: only the lower triangle needs to be right (an input of eigh), see ``_PANELS``."""
    return _Gram.apply(x, side, out_dtype, lower)


def global_gram(z: Tensor, side: str, ctx: Context = LOCAL, strategy: str = "gather") -> Tensor:
    """The Gram of the global batch on ``side``: the all-reduced D×D Gram ("allreduce" strategy on
    the dimension side; its backward sums over ranks), or the Gram of the all-gathered rows."""
    if ctx.active and side == "dimension" and strategy == "allreduce":
        return ctx.all_reduce(gram(z, "dimension"))
    return gram(ctx.gather(z), side)


# --------------------------------------------------------------------------------------------
# factorization


def _capturing(t: Tensor) -> bool:
    # nor while torch.compile traces (reading a value would break the graph), nor for meta tensors
    # (no values: the kernel report records launches on them)
    return torch.compiler.is_compiling() or t.device.type == "meta" or (
        t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _check_cholesky(info: Tensor, g: Tensor, alpha, what: str) -> None:
    """Raise instead of returning NaN when I + αG was not factorized.

    I + αG with α > 0 and G = xᵀx (or x xᵀ) positive semi-definite has every eigenvalue ≥ 1, so
    with finite inputs Cholesky succeeds in any precision unless rounding moves an eigenvalue by
    more than 1: the Gram's rounding error is ~u·α·‖G‖ (u = 2⁻²⁴ in float32), i.e. only when
    α‖G‖ reaches ~10⁷. A failure therefore means NaN/Inf inputs or such an extreme scale.

    Reading ``info`` is a host-device synchronization, the one torch.linalg.cholesky itself makes
    on CUDA to raise its error; we pay it for a clear message, once per (batched) factorization.
    Under CUDA-graph capture, where a synchronization is illegal, the check is skipped and a
    failed factorization gives NaN.
    """
    if _capturing(info) or not bool(info.ne(0).any()):
        return
    if not bool(torch.isfinite(g).all()):
        raise ValueError(f"{what}: the input contains NaN or Inf, or its Gram matrix overflows {g.dtype}")
    a = alpha.max().item() if isinstance(alpha, Tensor) else alpha
    raise torch.linalg.LinAlgError(
        f"{what}: I + αG (α = {a:.6g}, largest Gram entry {g.abs().max().item():.6g}) is not positive "
        f"definite in {g.dtype}; it is in exact arithmetic, so the inputs' scale exceeds this precision "
        f"(α·‖G‖ ≳ 1/eps of {g.dtype}): rescale the embeddings or use float64"
    )


class _ShiftedLogdet(torch.autograd.Function):
    """logdet(I + αG) over the last two dims of a symmetric PSD G, by Cholesky; α a float or a
    tensor of G's batch shape. Backward: α·(I + αG)⁻¹ times the incoming gradient."""

    @staticmethod
    def forward(ctx, g, alpha, what):
        scale = alpha[..., None, None] if isinstance(alpha, Tensor) else alpha
        eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
        chol, info = torch.linalg.cholesky_ex(eye + scale * g)
        _check_cholesky(info, g, alpha, what)
        ctx.save_for_backward(chol)
        ctx.alpha = alpha
        return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        (chol,) = ctx.saved_tensors
        a = ctx.alpha * g_out
        return a[..., None, None] * torch.cholesky_inverse(chol), None, None


def shifted_logdet(g: Tensor, alpha, what: str) -> Tensor:
    return _ShiftedLogdet.apply(g, alpha, what)


def eig_poisoned(g: Tensor, vectors: bool):
    """(λ ascending, eigenvectors or None, 0·ΣG) of a symmetric G. eigh raises on a NaN entry (on the
    CPU; eigvalsh returned finite values there), while docs/spec.md §6 wants NaN/Inf inputs to reach
    the output: a finite stand-in is factored, and the poison 0·ΣG is NaN exactly when G is not
    finite. Without ``vectors`` only the eigenvalues (2-3x faster than eigh on the CPU at 256×256)."""
    finite = torch.where(torch.isfinite(g), g, 0)
    if vectors:
        lam, vec = torch.linalg.eigh(finite)
        return lam, vec, g.sum() * 0
    return torch.linalg.eigvalsh(finite), None, g.sum() * 0


class _SqrtEigvals(torch.autograd.Function):
    """The k largest sqrt(max(λ, 0)) of a symmetric PSD G, descending. Backward: Σ_j g_j v_j v_jᵀ /
    (2σ_j), 0 for σ_j = 0 (a zero singular value's one-sided derivative); through the Gram's
    backward that is Σ_j g_j u_j v_jᵀ, the derivative of z's singular values."""

    @staticmethod
    def forward(ctx, g, k):
        lam, vec, poison = eig_poisoned(g, ctx.needs_input_grad[0])
        if vec is not None:
            vec = vec.flip(-1)[..., :k]
        sigma = torch.sqrt(lam.flip(-1)[..., :k].clamp_min(0)) + poison
        ctx.save_for_backward(vec, sigma)
        return sigma

    @staticmethod
    @once_differentiable
    def backward(ctx, g_sigma):
        vec, sigma = ctx.saved_tensors
        w = torch.where(sigma > 0, g_sigma / (2 * sigma).clamp_min(torch.finfo(sigma.dtype).tiny), 0)
        return (vec * w[..., None, :]) @ vec.transpose(-1, -2), None


# Below this ratio σ_k/σ_max a square root of a float32 Gram's eigenvalue is no longer as accurate
# as an SVD's singular value: the Gram's rounding moves every eigenvalue by ~u·λ_max, i.e. σ_k by
# ~u·σ_max²/(2σ_k), against ~u·σ_max for an SVD. Measured (float32, vs float64): 25600×256
# Gaussian, σ_min/σ_max = 0.8: 3.7e-7 relative, svdvals 3.6e-6; 33×33 Gaussian: 7.8e-5, svdvals 8.0e-6
# (RankMe of rank-5 25600×256 embeddings: 5.15 instead of 4.99).
SQRT_EIG_MIN_RATIO = 0.25


# --------------------------------------------------------------------------------------------
# the functions


def singular_values(z: Tensor, side: str, ctx: Context = LOCAL, strategy: str = "gather") -> Tensor:
    """The min(N, D) singular values of the (global) z, descending: sqrt of the eigenvalues of its
    Gram on ``side``, clamped at 0.

    The Gram is accumulated in float32 (TF32 off) when its smallest kept singular value is at
    least SQRT_EIG_MIN_RATIO·σ_max, where that is as accurate as an SVD; otherwise (ill-conditioned
    or collapsed embeddings, the case RankMe is meant to catch) it is recomputed in float64, whose
    rounding (~1e-16·λ_max) is below float32 singular values' own. Deciding reads one number on the
    host; eigh already synchronizes on CUDA. Under CUDA-graph capture float64 is used directly.
    """
    n, d = ctx.world * z.shape[0], z.shape[1]
    k = min(n, d)
    allreduce = ctx.active and side == "dimension" and strategy == "allreduce"
    rows = z if allreduce else ctx.gather(z)

    def spectrum(dtype):
        g = gram(rows, side, dtype, lower=True)
        return _SqrtEigvals.apply(ctx.all_reduce(g) if allreduce else g, k)

    cd, first = compute_dtype(z.dtype), accumulation_dtype(z)
    if first == torch.float64 or _capturing(z):
        return spectrum(torch.float64).to(cd)
    sigma = spectrum(first)
    if k > 1 and bool(sigma[-1] < SQRT_EIG_MIN_RATIO * sigma[0]):
        sigma = spectrum(torch.float64).to(cd)
    return sigma


def rankme(z: Tensor, eps: float, side: str, ctx: Context = LOCAL, strategy: str = "gather") -> Tensor:
    """exp(−Σ p log p), p = σ/Σσ + eps over exactly min(N, D) singular values (Garrido et al. 2023)."""
    s = singular_values(z, side, ctx, strategy)
    p = s / s.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum())


def coding_rate(z: Tensor, eps: float, side: str, ctx: Context = LOCAL, strategy: str = "gather") -> Tensor:
    """EMP-SSL's total coding rate loss −½ logdet(I + D/(N·eps) G), G = zᵀz or z zᵀ (Sylvester)."""
    n, d = ctx.world * z.shape[0], z.shape[1]
    g = global_gram(z, side, ctx, strategy)
    return (-0.5 * shifted_logdet(g, d / (n * eps), "coding_rate_loss")).to(compute_dtype(z.dtype))


def _gather_labels(labels: Tensor, ctx: Context, device: torch.device) -> Tensor:
    if not ctx.active:
        return labels
    dist = torch.distributed
    lab = labels.to(device=device if dist.get_backend() == "nccl" else "cpu", dtype=torch.int64).contiguous()
    parts = [torch.empty_like(lab) for _ in range(ctx.world)]
    dist.all_gather(parts, lab)
    return torch.cat(parts)


def _class_buckets(counts, d: int, side: str):
    """Classes grouped by (side, padded size): each class's term is a logdet of size min(n_c, D)
    ("auto") on its side, padded with zero rows to the next power of two so that one batched
    product and one batched Cholesky serve a bucket. Zero rows add an identity block to I + αG
    (logdet 0): the padding is exact and costs at most twice the rows. Empty classes are skipped:
    their official term is (1e-8/2N)·logdet(I) = 0."""
    buckets: Dict[Tuple[str, int], list] = {}
    for c, n_c in enumerate(counts):
        if n_c == 0:
            continue
        s = _cost.cheaper_side(n_c, d) if side == "auto" else side
        buckets.setdefault((s, 1 << (n_c - 1).bit_length()), []).append(c)
    return buckets


def class_batches(labels: Tensor, counts, d: int, class_side: str):
    """[(side, classes, index)] of ``_class_buckets``, in a fixed order: ``index`` (classes, m) holds
    each class's rows (labels' order) padded with N, the index of a zero row appended to z."""
    n = labels.shape[0]
    order = torch.argsort(labels, stable=True)
    starts = [0]
    for n_c in counts:
        starts.append(starts[-1] + n_c)
    out = []
    for (s, m), classes in sorted(_class_buckets(counts, d, class_side).items()):
        idx = torch.full((len(classes), m), n, dtype=torch.int64)
        for j, c in enumerate(classes):
            idx[j, :counts[c]] = order[starts[c]:starts[c + 1]]
        out.append((s, classes, idx))
    return out


def mcr2(z: Tensor, labels: Tensor, eps: float, gamma: float, num_classes: Optional[int], side: str,
         class_side: str, ctx: Context = LOCAL):
    """The official MaximalCodingRateReduction(eps, gamma)(z, labels) total loss −R + γ·Rc:
    R = ½ logdet(I + D/(N·eps) zᵀz) on ``side``, Rc = Σ_c (n_c+1e-8)/(2N) logdet(I + D/((n_c+1e-8)·eps)
    z_cᵀz_c), the class terms batched on ``class_side`` ("auto": each class on its cheaper side).

    ``labels``: int64 class indices validated by the caller. With W ranks rows and labels are
    all-gathered (the class terms need every row of a class). One host transfer of the labels
    (the class sizes fix the batched shapes) and one per factorization batch for its check.
    """
    z = ctx.gather(z)
    labels = _gather_labels(labels, ctx, z.device).cpu()
    n, d = z.shape
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = torch.bincount(labels, minlength=k).tolist()
    cd, acc = compute_dtype(z.dtype), accumulation_dtype(z)
    r = (0.5 * shifted_logdet(gram(z, side), d / (n * eps), "mcr2_loss")).to(cd)
    padded = torch.cat([z, z.new_zeros(1, d)])  # row n is the zero padding row
    rc = None
    for s, classes, idx in class_batches(labels, counts, d, class_side):
        xc = padded[idx.to(z.device)]  # (classes, m, D)
        tr = torch.tensor([counts[c] + CLASS_COUNT_EPS for c in classes], dtype=torch.float64)
        alpha = (d / (tr * eps)).to(device=z.device, dtype=acc)
        weight = (tr / (2 * n)).to(device=z.device, dtype=acc)
        term = (weight * shifted_logdet(gram(xc, s), alpha, "mcr2_loss")).sum().to(cd)
        rc = term if rc is None else rc + term
    if rc is None:  # pragma: no cover - N >= 1 gives at least one nonempty class
        rc = r * 0
    return -r + gamma * rc, {"R": r, "Rc": rc}


def trace_power_series(m: Tensor, order: int) -> Tensor:
    """tr Σ_{k=1}^{order} (−1)^{k+1} M^k / k with ⌈order/2⌉ − 1 products: tr(M^k) = ⟨M^a, (M^b)ᵀ⟩_F
    for a + b = k, a = ⌈k/2⌉ (the official code forms all `order` powers)."""
    powers = [None, m]
    for _ in range(2, (order + 1) // 2 + 1):
        powers.append(powers[-1] @ m)
    total = torch.diagonal(m).sum()
    for k in range(2, order + 1):
        a = (k + 1) // 2
        t = (powers[a] * powers[k - a].T).sum()
        total = total + t / k if k % 2 else total - t / k
    return total


def mec(z1: Tensor, z2: Tensor, eps_sq: float, order: int, lamda_inv: Optional[float], side: str,
        ctx: Context = LOCAL, strategy: str = "gather") -> Tensor:
    """MEC (Liu et al. 2022): −λ⁻¹·[f(z1, z2) + f(z2, z1)]/(2N), f(p, z) = tr Σ_k (−1)^{k+1} C^k/k,
    C = p̂ẑᵀ/λ⁻¹ (N×N), λ⁻¹ = N·eps_sq/D unless given, N the global batch.

    f(z2, z1) = f(z1, z2) (C of (z2, z1) is Cᵀ of (z1, z2), tr((Cᵀ)^k) = tr(C^k)), so one f is
    computed. On the dimension side M = ẑ2ᵀẑ1/λ⁻¹ (D×D) by the cyclic trace
    tr((ẑ1ẑ2ᵀ)^k) = tr((ẑ2ᵀẑ1)^k); with W ranks M is a sum over ranks ("allreduce") or the
    rows are all-gathered.
    """
    n, d = ctx.world * z1.shape[0], z1.shape[1]
    lam_inv = n * eps_sq / d if lamda_inv is None else lamda_inv
    if ctx.active and side == "dimension" and strategy == "allreduce":
        m = ctx.all_reduce(l2n(z2).T @ l2n(z1)) / lam_inv
    else:
        a, b = l2n(ctx.gather(z1)), l2n(ctx.gather(z2))
        m = (a @ b.T if side == "sample" else b.T @ a) / lam_inv
    return -lam_inv * trace_power_series(m, order) / n


__all__ = ["singular_values", "rankme", "coding_rate", "mcr2", "mec", "gram", "shifted_logdet", "class_batches",
           "trace_power_series", "accumulation_dtype", "CLASS_COUNT_EPS"]
