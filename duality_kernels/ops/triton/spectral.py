"""Triton backend of the spectral functions (docs/spec.md §7.6-7.7): coding_rate_loss (TCR), mcr2_loss,
singular_values and rankme, on the op registry. No custom GEMM or factorization. The losses: per
factorized matrix ONE library GEMM writes the shifted, scaled Gram (addmm / baddbmm with beta=1 on
the shift), cholesky_ex factorizes it (cuSOLVER on CUDA), MCR²'s factors all in one flat buffer,
and ONE launch of ``_logdet_loss_kernel`` reads the diagonals and writes the loss (and the terms).
Their backward: d/dz logdet(I + α z zᵀ) = 2α (I + α z zᵀ)⁻¹ z by cholesky_solve on the saved
factors (the dimension side 2α z (I + α zᵀz)⁻¹), scaled on the device by the terms' weights and
the incoming gradients, MCR²'s class rows accumulated into their rows. The spectrum: the Gram,
eigh, ``_spectrum_kernel`` (σ descending, RankMe and its gradient coefficients); backward on the
eigenvectors. Accumulation, the float64 retry and the Cholesky check are reference/spectrum.py's.
Bytes and flops: docs/triton_spectral.md. Untested on GPU.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

from .. import registry
from ..._numerics import acc_dtype
from ...reference import _MM_OUT_DTYPE
from ...reference import spectrum as S
from .._direct import apply
from ._common import device_guard, device_rule, tl, triton

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)
_TERM_R, _TERM_RC = tl.constexpr(0), tl.constexpr(1)  # the kernel's two term accumulators: R (TCR's only one) and Rc


@triton.jit
def _logdet_loss_kernel(f_ptr, imeta_ptr, fmeta_ptr, loss_ptr, r_ptr, rc_ptr, n_mat, m0, META: tl.constexpr,
                        BLOCK: tl.constexpr):
    """One program: term_j = Σ_{b in j} w_b·(shift_b + 2·Σ_i log L_b,ii) over the factors L_b stored
    row-major at f_ptr + off_b (m_b × m_b), summed in float64; loss = c_0·term_0 + c_1·term_1.
    META: per-matrix (off, m, term) in imeta (3, n_mat), (w, shift) and then (c_0, c_1) in fmeta;
    otherwise one factor of size m0 at f_ptr with TCR's w = −½ (no float arguments: a Python float
    would reach the kernel as float32)."""
    lanes = tl.arange(0, BLOCK)
    acc0 = tl.zeros((BLOCK,), tl.float64)
    acc1 = tl.zeros((BLOCK,), tl.float64)
    for b in range(0, n_mat):
        if META:
            off = tl.load(imeta_ptr + b)
            m = tl.load(imeta_ptr + n_mat + b)
            term = tl.load(imeta_ptr + 2 * n_mat + b)
            w = tl.load(fmeta_ptr + b)
            shift = tl.load(fmeta_ptr + n_mat + b)
        else:
            off = 0
            m = m0
            term = 0
            w = -0.5
            shift = 0.0
        part = tl.zeros((BLOCK,), tl.float64)
        for i0 in range(0, m, BLOCK):
            i = (i0 + lanes).to(tl.int64)
            d = tl.load(f_ptr + off + i * (m + 1), mask=i < m, other=1.0)
            part += tl.log(d).to(tl.float64)
        contrib = w * (2.0 * part + tl.where(lanes == 0, shift, 0.0))
        acc0 += tl.where(term == _TERM_R, contrib, 0.0)
        acc1 += tl.where(term == _TERM_R, 0.0, contrib)
    t0 = tl.sum(acc0, axis=0)
    if META:
        t1 = tl.sum(acc1, axis=0)
        loss = tl.load(fmeta_ptr + 2 * n_mat) * t0 + tl.load(fmeta_ptr + 2 * n_mat + 1) * t1
        tl.store(r_ptr, t0.to(r_ptr.dtype.element_ty))
        tl.store(rc_ptr, t1.to(rc_ptr.dtype.element_ty))
    else:
        loss = t0
    tl.store(loss_ptr, loss.to(loss_ptr.dtype.element_ty))


def _block(sizes: Sequence[int]) -> int:
    return max(16, min(1024, triton.next_power_of_2(max(sizes))))


# --------------------------------------------------------------------------------------------
# the pieces around the library calls


def _pair(x: Tensor, side: str) -> Tuple[Tensor, Tensor]:
    """The GEMM operands of x's Gram on ``side``: (x, xᵀ) gives x xᵀ, (xᵀ, x) gives xᵀx (batched too)."""
    xt = x.transpose(-1, -2)
    return (x, xt) if side == "sample" else (xt, x)


def _size(rows: int, d: int, side: str) -> int:
    return rows if side == "sample" else d


def _shifted_gram(shift: Tensor, x: Tensor, side: str, alpha: float) -> Tensor:
    """shift + α·(x's Gram) by ONE addmm/baddbmm, accumulated in shift's dtype (reference/spectrum.py's
    accumulation_dtype): half operands on CUDA stay half (tensor cores, float32 result, as
    reference._mm_fp32) through baddbmm's out_dtype form, which takes a float32 shift (addmm's
    wants the shift in the operands' dtype); everything else is upcast first (exact products on the CPU)."""
    a, b = _pair(x, side)
    if x.dtype in _HALF and x.is_cuda and shift.dtype == torch.float32 and _MM_OUT_DTYPE:
        if x.dim() == 2:
            return torch.baddbmm(shift[None], a[None], b[None], out_dtype=torch.float32, beta=1, alpha=alpha)[0]
        return torch.baddbmm(shift, a, b, out_dtype=torch.float32, beta=1, alpha=alpha)
    gemm = torch.baddbmm if x.dim() == 3 else torch.addmm
    return gemm(shift, a.to(shift.dtype), b.to(shift.dtype), beta=1, alpha=alpha)


def _check(info: Tensor, z: Tensor, side: str, alpha, what: str) -> None:
    """reference/spectrum.py's check and message (one synchronization, none while capturing); its
    Gram, for the message, only on failure."""
    if S._capturing(info) or not bool(info.ne(0).any()):
        return
    S._check_cholesky(info, S._gram_of(z, side), alpha, what)


def _solve(x: Tensor, chol: Tensor, side: str) -> Tensor:
    """A⁻¹x (sample side, A = I + αx xᵀ factored as chol) or x A⁻¹ (dimension side), batched too."""
    if side == "sample":
        return torch.cholesky_solve(x, chol)
    return torch.cholesky_solve(x.transpose(-1, -2), chol).transpose(-1, -2)


def _out(z: Tensor, *shape) -> Tensor:
    return torch.empty(shape, dtype=acc_dtype(z.dtype), device=z.device)


# --------------------------------------------------------------------------------------------
# coding_rate_loss: −½ logdet(I + α G), α = D/(N·eps)


def _tcr_fwd_impl(z: Tensor, eps: float, side: str) -> Tuple[Tensor, Tensor]:
    """-> (loss, the Cholesky factor of I + αG on ``side``)."""
    n, d = z.shape
    m = _size(n, d, side)
    alpha = d / (n * eps)
    with device_guard(z):
        eye = torch.eye(m, dtype=S.accumulation_dtype(z), device=z.device)
        chol, info = torch.linalg.cholesky_ex(_shifted_gram(eye, z, side, alpha))
        _check(info, z, side, alpha, "coding_rate_loss")
        loss = _out(z)
        _logdet_loss_kernel[(1,)](chol, chol, chol, loss, loss, loss, 1, m, META=False, BLOCK=_block((m,)))
    return loss, chol


def _tcr_fwd_fake(z, eps, side):
    n, d = z.shape
    m = _size(n, d, side)
    # cholesky_ex returns its factor column-major (LAPACK's and cuSOLVER's layout, torch's meta too)
    return _out(z), z.new_empty_strided((m, m), (1, m), dtype=S.accumulation_dtype(z))


def _tcr_bwd_impl(z: Tensor, chol: Tensor, g: Tensor, eps: float, side: str) -> Tensor:
    """∂/∂z of −½ logdet(I + αG) times g: −α·g·A⁻¹z (sample side) or −α·g·z A⁻¹."""
    n, d = z.shape
    alpha = d / (n * eps)
    with device_guard(z):
        # the scaling writes the row-major result in z's dtype (a sample-side solve is column-major)
        dz = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        return torch.mul(_solve(z.to(chol.dtype), chol, side), g.to(chol.dtype) * -alpha, out=dz)


def _tcr_setup(ctx, inputs, output):
    z, eps, side = inputs
    ctx.save_for_backward(z, output[1])
    ctx.args = (eps, side)
    ctx.mark_non_differentiable(output[1])


def _tcr_backward(ctx, run_bwd, g_loss, *unused):
    z, chol = ctx.saved_tensors
    g = g_loss if g_loss is not None else z.new_zeros((), dtype=acc_dtype(z.dtype))
    return run_bwd(z, chol, g, *ctx.args), None, None


_TCR = registry.register("coding_rate", "triton", fwd=_tcr_fwd_impl, fwd_fake=_tcr_fwd_fake, bwd=_tcr_bwd_impl,
                         bwd_fake=lambda z, *rest: torch.empty_like(z), setup=_tcr_setup, backward=_tcr_backward,
                         device=device_rule, gathers=True)
coding_rate_fwd, coding_rate_bwd, _SPEC_TCR, CodingRateFunction = _TCR.fwd, _TCR.bwd, _TCR.spec, _TCR.function


# --------------------------------------------------------------------------------------------
# mcr2_loss: −R + γ·Rc, the class terms batched by (side, padded size)


def _class_weights(counts: Sequence[int], n: int, d: int, eps: float):
    """(α_c, w_c) per class (float64, host) from the official trace tr = n_c + 1e-8: α_c = D/(tr·eps),
    w_c = tr/(2N)."""
    tr = [c + S.CLASS_COUNT_EPS for c in counts]
    return [d / (t * eps) for t in tr], [t / (2 * n) for t in tr]


def _layout(n: int, d: int, shapes: Sequence[int], dims: Sequence[bool], side: str):
    """(sizes of the factors: R's, then each batch's; offsets of each batch's factors in the flat buffer;
    total elements) for the batches (classes, padded rows) = shapes[2k], shapes[2k + 1]."""
    pairs = list(zip(shapes[::2], shapes[1::2]))
    sizes = [_size(n, d, side)] + [d if dim else m for (_, m), dim in zip(pairs, dims)]
    offs, total = [], sizes[0] ** 2
    for (k, _), m in zip(pairs, sizes[1:]):
        offs.append(total)
        total += k * m * m
    return sizes, offs, total


def _batches(z: Tensor, index: Tensor, shapes: Sequence[int], dims: Sequence[bool]):
    """(index (classes, m), rows (classes, m, D) with zero padding rows, side) of every batch of classes."""
    padded = torch.cat([z, z.new_zeros(1, z.shape[1])])
    pairs = list(zip(shapes[::2], shapes[1::2]))
    parts = index.split([k * m for k, m in pairs])
    return [(idx.view(k, m), padded[idx.view(k, m)], "dimension" if dim else "sample")
            for idx, (k, m), dim in zip(parts, pairs, dims)]


def _mcr2_fwd_impl(z: Tensor, index: Tensor, shapes: List[int], counts: List[int], dims: List[bool], eps: float,
                   gamma: float, side: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, R, Rc, every factor in one flat buffer: R's, then each batch's).

    R's matrix is I + αG (addmm, alpha=α). A batch's classes have different α_c, which one baddbmm
    cannot take as its alpha, so it factors A_c = I/α_c + G_c instead (the shift a batch of
    scaled identities): logdet(I + α_c G_c) = m·log α_c + logdet A_c, exactly, and the gradient
    2α_c(I + α_c G_c)⁻¹ x = 2 A_c⁻¹ x needs no α_c at all."""
    n, d = z.shape
    acc = S.accumulation_dtype(z)
    sizes, offs, total = _layout(n, d, shapes, dims, side)
    alphas, weights = _class_weights(counts, n, d, eps)
    with device_guard(z):
        flat = torch.empty(total, dtype=acc, device=z.device)
        info = torch.empty(1 + len(counts), dtype=torch.int32, device=z.device)
        m = sizes[0]
        eye = torch.eye(m, dtype=acc, device=z.device)
        torch.linalg.cholesky_ex(_shifted_gram(eye, z, side, d / (n * eps)), out=(flat[:m * m].view(m, m), info[0]))
        offsets, ms, terms, ws, shifts = [0], [m], [_TERM_R], [0.5], [0.0]
        c = 0
        for (_, x, s), off, m in zip(_batches(z, index, shapes, dims), offs, sizes[1:]):
            k = x.shape[0]
            inv = torch.tensor([1 / a for a in alphas[c:c + k]], dtype=torch.float64).to(z.device, acc)
            shift = torch.diag_embed(inv[:, None].expand(k, m))
            torch.linalg.cholesky_ex(_shifted_gram(shift, x, s, 1.0),
                                     out=(flat[off:off + k * m * m].view(k, m, m), info[1 + c:1 + c + k]))
            offsets += [off + j * m * m for j in range(k)]
            ms += [m] * k
            terms += [_TERM_RC] * k
            ws += weights[c:c + k]
            shifts += [m * math.log(a) for a in alphas[c:c + k]]
            c += k
        _check(info, z, side, torch.tensor([d / (n * eps)] + alphas, dtype=torch.float64), "mcr2_loss")
        imeta = torch.tensor([offsets, ms, terms], dtype=torch.int64).to(z.device)
        fmeta = torch.tensor(ws + shifts + [-1.0, float(gamma)], dtype=torch.float64).to(z.device)
        loss, r, rc = _out(z), _out(z), _out(z)
        _logdet_loss_kernel[(1,)](flat, imeta, fmeta, loss, r, rc, len(ms), 0, META=True, BLOCK=_block(ms))
    return loss, r, rc, flat


def _mcr2_fwd_fake(z, index, shapes, counts, dims, eps, gamma, side):
    n, d = z.shape
    total = _layout(n, d, shapes, dims, side)[2]
    return _out(z), _out(z), _out(z), z.new_empty((total,), dtype=S.accumulation_dtype(z))


def _mcr2_bwd_impl(z: Tensor, index: Tensor, flat: Tensor, g_loss: Tensor, g_r: Tensor, g_rc: Tensor,
                   shapes: List[int], counts: List[int], dims: List[bool], eps: float, gamma: float,
                   side: str) -> Tensor:
    """∂/∂z: R's ½·2α(−g_loss + g_R)·A⁻¹z plus each class's 2·w_c·(γ·g_loss + g_Rc)·A_c⁻¹z_c in its
    rows (every row is in exactly one class; padding rows land in row N, dropped)."""
    n, d = z.shape
    acc = flat.dtype
    sizes, offs, _ = _layout(n, d, shapes, dims, side)
    _, weights = _class_weights(counts, n, d, eps)
    g_loss, g_r, g_rc = (g.to(acc) for g in (g_loss, g_r, g_rc))
    with device_guard(z):
        m = sizes[0]
        dz = torch.empty(n + 1, d, dtype=acc, device=z.device)
        dz[:n] = _solve(z.to(acc), flat[:m * m].view(m, m), side) * ((g_r - g_loss) * (d / (n * eps)))
        dz[n] = 0
        g_class = gamma * g_loss + g_rc
        c = 0
        for (idx, x, s), off, m in zip(_batches(z, index, shapes, dims), offs, sizes[1:]):
            k = x.shape[0]
            w = torch.tensor([2 * v for v in weights[c:c + k]], dtype=torch.float64).to(z.device, acc) * g_class
            gx = _solve(x.to(acc), flat[off:off + k * m * m].view(k, m, m), s) * w[:, None, None]
            # a sorted accumulation (deterministic on CUDA too); only the dropped row N receives several
            dz.index_put_((idx.reshape(-1),), gx.reshape(-1, d), accumulate=True)
            c += k
    return dz[:n].to(z.dtype)


def _mcr2_setup(ctx, inputs, output):
    z, index, *args = inputs
    ctx.save_for_backward(z, index, output[3])
    ctx.args = tuple(args)
    ctx.mark_non_differentiable(output[3])


def _mcr2_backward(ctx, run_bwd, g_loss, g_r, g_rc, *unused):
    z, index, flat = ctx.saved_tensors
    zero = z.new_zeros((), dtype=acc_dtype(z.dtype))
    g = [zero if t is None else t for t in (g_loss, g_r, g_rc)]
    return run_bwd(z, index, flat, *g, *ctx.args), None, None, None, None, None, None, None


_MCR2 = registry.register("mcr2", "triton", fwd=_mcr2_fwd_impl, fwd_fake=_mcr2_fwd_fake, bwd=_mcr2_bwd_impl,
                          bwd_fake=lambda z, *rest: torch.empty_like(z), setup=_mcr2_setup, backward=_mcr2_backward,
                          device=device_rule, gathers=True)
mcr2_fwd, mcr2_bwd, _SPEC_MCR2, MCR2Function = _MCR2.fwd, _MCR2.bwd, _MCR2.spec, _MCR2.function


# --------------------------------------------------------------------------------------------
# singular_values and rankme: one GEMM (the Gram), eigh (cuSOLVER syevd), one kernel


@triton.jit
def _sigma_at(lam_ptr, m, k, j):
    """sqrt(max(λ_{m-1-j}, 0)) in float64 (0 for j ≥ k): the j-th largest singular value."""
    return tl.sqrt(tl.maximum(tl.load(lam_ptr + (m - 1 - j), mask=j < k, other=0.0).to(tl.float64), 0.0))


@triton.jit
def _spectrum_kernel(lam_ptr, poison_ptr, eps_ptr, sigma_ptr, coef_ptr, r_ptr, m, k, RANKME: tl.constexpr,
                     BLOCK: tl.constexpr):
    """One program over the Gram's ascending eigenvalues λ (m): σ_j = sqrt(max(λ_{m-1-j}, 0)) + poison,
    j < k, descending (poison: 0, or NaN for a non-finite Gram, docs/spec.md §6). RANKME: in float64,
    p_j = σ_j/S + eps (S = Σσ), R = exp(−Σ p log p) and dR/dσ_j = R·(T/S² − (log p_j + 1)/S) with
    T = Σ (log p + 1)·σ, for the backward. Each pass recomputes σ from λ (no barrier between passes)."""
    lanes = tl.arange(0, BLOCK)
    poison = tl.load(poison_ptr).to(tl.float64)
    acc = tl.zeros((BLOCK,), tl.float64)
    for j0 in range(0, k, BLOCK):
        j = j0 + lanes
        s = _sigma_at(lam_ptr, m, k, j) + poison
        tl.store(sigma_ptr + j, s.to(sigma_ptr.dtype.element_ty), mask=j < k)
        acc += tl.where(j < k, s, 0.0)
    if RANKME:
        eps = tl.load(eps_ptr)
        total = tl.sum(acc, axis=0)
        h = tl.zeros((BLOCK,), tl.float64)
        t = tl.zeros((BLOCK,), tl.float64)
        for j0 in range(0, k, BLOCK):
            j = j0 + lanes
            s = _sigma_at(lam_ptr, m, k, j)
            p = (s + poison) / total + eps
            lp = tl.log(p)
            h += tl.where(j < k, -p * lp, 0.0)
            t += tl.where(j < k, (lp + 1.0) * (s + poison), 0.0)
        r = tl.exp(tl.sum(h, axis=0))
        tt = tl.sum(t, axis=0)
        for j0 in range(0, k, BLOCK):
            j = j0 + lanes
            s = _sigma_at(lam_ptr, m, k, j)
            lp = tl.log((s + poison) / total + eps)
            tl.store(coef_ptr + j, r * (tt / (total * total) - (lp + 1.0) / total), mask=j < k)
        tl.store(r_ptr, r.to(r_ptr.dtype.element_ty))


def _eig(z: Tensor, side: str, dtype: torch.dtype, vectors: bool):
    """(λ ascending, eigenvectors or None, 0·ΣG) of z's Gram accumulated in ``dtype`` (the reference's
    eig_poisoned: NaN/Inf inputs reach σ)."""
    return S.eig_poisoned(S._gram_of(z, side, dtype), vectors)


def _spectrum(z: Tensor, side: str, k: int, vectors: bool):
    """reference/spectrum.py singular_values' precision rule: the Gram in accumulation_dtype, again
    in float64 when σ_k < SQRT_EIG_MIN_RATIO·σ_max (one host read; float64 directly under capture)."""
    first = S.accumulation_dtype(z)
    if first != torch.float64 and not S._capturing(z):
        lam, vec, poison = _eig(z, side, first, vectors)
        top = torch.sqrt(lam[[-k, -1]].clamp_min(0)) + poison
        if not (k > 1 and bool(top[0] < S.SQRT_EIG_MIN_RATIO * top[1])):
            return lam, vec, poison
    return _eig(z, side, torch.float64, vectors)


def _svals_fwd_impl(z: Tensor, side: str, eps: float, rank: bool, vectors: bool
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (σ (k,) or RankMe (), the top-k eigenvectors (m, k) descending (empty unless ``vectors``),
    dR/dσ (k,) float64 and σ for RankMe (empty for the singular values))."""
    n, d = z.shape
    k, m = min(n, d), _size(n, d, side)
    with device_guard(z):
        lam, vec, poison = _spectrum(z, side, k, vectors)
        sigma, coef, r = _out(z, k), torch.empty(k if rank else 0, dtype=torch.float64, device=z.device), _out(z)
        eps_t = torch.full((), eps, dtype=torch.float64, device=z.device)
        _spectrum_kernel[(1,)](lam, poison, eps_t, sigma, coef, r, m, k, RANKME=rank, BLOCK=_block((min(k, 1024),)))
        # in accumulation_dtype whichever Gram served (the fake cannot know the float64 retry)
        acc = S.accumulation_dtype(z)
        vec = vec.flip(-1)[:, :k].to(acc).contiguous() if vectors else z.new_empty((0, 0), dtype=acc)
    if rank:
        return r, vec, coef, sigma
    return sigma, vec, coef, z.new_empty((0,), dtype=sigma.dtype)


def _svals_fwd_fake(z, side, eps, rank, vectors):
    n, d = z.shape
    k, m = min(n, d), _size(n, d, side)
    vec = z.new_empty((m, k) if vectors else (0, 0), dtype=S.accumulation_dtype(z))
    out = _out(z) if rank else _out(z, k)
    return out, vec, z.new_empty((k if rank else 0,), dtype=torch.float64), _out(z, k if rank else 0)


def _svals_bwd_impl(z: Tensor, vec: Tensor, coef: Tensor, sigma: Tensor, g: Tensor, side: str, rank: bool) -> Tensor:
    """Σ_j g_j u_j v_jᵀ through the Gram: V diag(g/σ) Vᵀz (sample side) or z V diag(g/σ) Vᵀ, 0 where
    σ_j = 0 (a zero singular value's one-sided derivative); RankMe's g_j = g·dR/dσ_j. Without saved
    eigenvectors (``vectors=False``) they are computed again here."""
    if vec.numel() == 0:  # the forward kept no eigenvectors (no grad was expected): factor again
        vec = _spectrum(z, side, sigma.shape[0], True)[1].flip(-1)[:, :sigma.shape[0]].to(vec.dtype)
    gs = (g.to(torch.float64) * coef) if rank else g.to(torch.float64)
    w = torch.where(sigma > 0, gs / sigma.to(torch.float64).clamp_min(torch.finfo(sigma.dtype).tiny), 0).to(vec.dtype)
    x = z.to(vec.dtype)
    with device_guard(z):
        if side == "sample":
            dz = (vec * w) @ (vec.T @ x)
        else:
            dz = (x @ vec * w) @ vec.T
    return dz.to(z.dtype)


def _svals_setup(ctx, inputs, output):
    z, side, eps, rank, vectors = inputs
    ctx.save_for_backward(z, *output[1:] if rank else (output[1], output[2], output[0]))
    ctx.args = (side, rank)
    ctx.mark_non_differentiable(*output[1:])


def _svals_backward(ctx, run_bwd, g, *unused):
    z, vec, coef, sigma = ctx.saved_tensors
    g = g if g is not None else sigma.new_zeros(() if ctx.args[1] else sigma.shape)
    return run_bwd(z, vec, coef, sigma, g, *ctx.args), None, None, None, None


def _register_spectrum(name: str) -> registry.Registered:
    return registry.register(name, "triton", fwd=_svals_fwd_impl, fwd_fake=_svals_fwd_fake, bwd=_svals_bwd_impl,
                             bwd_fake=lambda z, *rest: torch.empty_like(z), setup=_svals_setup,
                             backward=_svals_backward, device=device_rule, gathers=True)


_SV, _RANKME = _register_spectrum("singular_values"), _register_spectrum("rankme")
singular_values_fwd, singular_values_bwd, _SPEC_SV, SingularValuesFunction = _SV.fwd, _SV.bwd, _SV.spec, _SV.function
rankme_fwd, rankme_bwd, _SPEC_RANKME, RankMeFunction = _RANKME.fwd, _RANKME.bwd, _RANKME.spec, _RANKME.function


# --------------------------------------------------------------------------------------------
# the functions functional/spectrum.py calls (inputs validated there; rows already gathered)


def class_plan(labels: Tensor, num_classes: int, d: int, class_side: str, device
               ) -> Tuple[Tensor, List[int], List[int], List[bool]]:
    """The mcr2 op's (index, shapes, counts, dims) for CPU int64 ``labels``: the reference's batches
    of classes (reference/spectrum.py class_batches), so both backends factor the same matrices;
    ``index`` every batch's (classes, m) row indices (padding: N) flattened and concatenated,
    ``shapes`` their (classes, m) pairs, ``counts`` each class's rows, ``dims`` each batch's side."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    index, shapes, sizes, dims = [], [], [], []
    for s, classes, idx in S.class_batches(labels, counts, d, class_side):
        index.append(idx.reshape(-1))
        shapes += list(idx.shape)
        sizes += [counts[c] for c in classes]
        dims.append(s == "dimension")
    return torch.cat(index).to(device), shapes, sizes, dims


def coding_rate(z: Tensor, eps: float, side: str) -> Tensor:
    """−½ logdet(I + D/(N·eps) G) of z's rows (docs/spec.md §7.7)."""
    return apply(_SPEC_TCR, z, float(eps), side)[0]


def mcr2(z: Tensor, labels: Tensor, eps: float, gamma: float, num_classes: int, side: str, class_side: str):
    """(loss, {"R", "Rc"}) of the official MCR² (docs/spec.md §7.7); ``labels`` int64 on the CPU."""
    plan = class_plan(labels, num_classes, z.shape[1], class_side, z.device)
    loss, r, rc = apply(_SPEC_MCR2, z, *plan, float(eps), float(gamma), side)[:3]
    return loss, {"R": r, "Rc": rc}


def _vectors(z: Tensor) -> bool:
    return torch.is_grad_enabled() and z.requires_grad


def singular_values(z: Tensor, side: str) -> Tensor:
    """The min(N, D) singular values of z, descending (docs/spec.md §7.6)."""
    return apply(_SPEC_SV, z, side, 0.0, False, _vectors(z))[0]


def rankme(z: Tensor, eps: float, side: str) -> Tensor:
    """RankMe of z's rows (docs/spec.md §7.6)."""
    return apply(_SPEC_RANKME, z, side, float(eps), True, _vectors(z))[0]

