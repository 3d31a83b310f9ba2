"""Backward epilogues (docs/triton_gram.md, step 5), run after the cuBLAS product P' of each view:
elementwise (VICReg, duality terms, covariance, the gathered moments), BatchNorm's Jacobian
(cross_correlation, Barlow Twins) and the row projections (spectral's clamp, l2); the kernels beside
their launchers."""
from __future__ import annotations

import torch

from .._common import scalar as _scalar
from .._common import arch_family, tl, triton
from .helpers import _bn_inv, _chunk_sum, _operand, _pick, _product, _sqrt64, _stripe, _view_ptrs, _view_vectors
from .plan import _APPLY, _CORR_NONE, _FUSED, _RS_NONE, _STATS, _WARPS, _blocks, _cdiv, _chunks, _dummy


@triton.jit
def _elem_bwd_kernel(p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr, mean_ptr, cv_ptr, rv_ptr,
                     rs_ptr, w_ptr, g0_ptr, g1_ptr, g2_ptr, g3_ptr, N, D, RPC, v0,
                     w_inv: tl.float64, w_var: tl.float64, w_cov: tl.float64,
                     gamma: tl.float64, eps: tl.float64,
                     MODE: tl.constexpr, RS: tl.constexpr, CORR: tl.constexpr, OFF: tl.constexpr,
                     BR: tl.constexpr, BD: tl.constexpr):
    """Elementwise epilogues over a stripe of BD columns × a chunk of RPC rows (grid: stripes,
    chunks, views in this launch; view = v0 + axis 2), P from ``_product``.
    _E_VICREG (docs/spec.md §3), with a_t = g_loss·w_t + g_t (device scalars, no sync):
        dz = c_cov·P + x̃∘col_k ± (2a_inv/(N·D))·(z1 − z2),  P = G·x (N×N) or x·G (D×D),
        c_cov = 4a_cov/((N−1)²D), col_k = −a_var·[γ > std_k]/(2D(N−1)std_k) − c_cov·m2_k, and no
        centering Jacobian: every term is a combination of the centered x (its columns sum to 0).
        OFF (dimension side): G has its diagonal zeroed and col_k drops −c_cov·m2_k, since
        x·G − x∘m2 cancels when one column dominates (docs/spec.md §8.2).
    _E_DUALITY (docs/spec.md §2), with P = G_off·z (sample side) or z·G_off (_E_DUALITY_D, dimension side),
        G_off = the Gram without its diagonal (zeroed in the forward): with the diagonal in the
        product it would cancel against r_i (or c_k) computed by another reduction, and two
        equal rows then left 3.5× eager's gradient error (hypothesis). Since
        (G·z)_ik = (G_off·z)_ik + r_i·z_ik and (z·G)_ik = (z·G_off)_ik + c_k·z_ik:
        sample:    dz = 4(g_Lc + g_Lnc)·P + 4z∘((g_r4 + g_Lnc)·r_i + (g_c4 − g_Lnc)·c_k);
        dimension: dz = 4(g_Lc + g_Lnc)·P + 4z∘((g_r4 − g_Lc)·r_i + (g_c4 + g_Lc)·c_k).
    _E_COV: dz = P (the 1/(N − correction) is in the operand).
    _E_MOMENTS (the local moments of ``moments``, docs/spec.md §5), with mean = mean_ptr (float64), g_mean =
        rv_ptr, g_m2 = cv_ptr ((2, D) float64) and g_inv = g1:
        dz = P ± (2g_inv/(N·D))·(z1 − z2) + g_mean_k/N + 2g_m2_k·(z − mean_k); no centering
        Jacobian (every term but g_mean's sums to 0 over the rows). _E_MOMENTS_NOP: without P.
    Bytes per view: P (4 B) + z1, z2 (VICReg) or z read + dz written per element.
    """
    lv = tl.program_id(2)
    v = v0 + lv
    p_ptr = _pick(lv, p0_ptr, p1_ptr)
    dz_ptr = _pick(v, dz0_ptr, dz1_ptr)
    T = dz0_ptr.dtype.element_ty
    ACC = p0_ptr.dtype.element_ty
    cols, cmask, r_lo, r_hi = _stripe(N, D, BD, RPC)
    nf = tl.cast(N, tl.float64)
    df = tl.cast(D, tl.float64)
    rsv, wv = _view_vectors(rs_ptr, w_ptr, v, N, D, RS, CORR)
    meanv = mean_ptr + v * D
    gl = tl.load(g0_ptr).to(tl.float64)
    if MODE == 0:
        a_inv = gl * _scalar(w_inv, tl.float64) + tl.load(g1_ptr).to(tl.float64)
        a_var = gl * _scalar(w_var, tl.float64) + tl.load(g2_ptr).to(tl.float64)
        a_cov = gl * _scalar(w_cov, tl.float64) + tl.load(g3_ptr).to(tl.float64)
        # the scalar float64 divisions (subroutine calls on sm_90) before any vector is loaded: with
        # the columns' vectors live across them, triton 3.6's fp32 variant spilled 8 B
        nm1 = nf - 1.0
        inv_nm1 = 1.0 / nm1
        c_cov = 4.0 * a_cov / (nm1 * nm1 * df)
        c_var = -a_var / (2.0 * df * nm1)
        ci = ((1.0 - 2.0 * v) * 2.0 * a_inv / (nf * df)).to(ACC)
        m2 = tl.load(cv_ptr + v * D + cols, mask=cmask, other=0.0)
        var = m2 * inv_nm1 + _scalar(eps, tl.float64)
        col = tl.where(_scalar(gamma, tl.float64) - _sqrt64(var) > 0, c_var * tl.math.rsqrt(var), 0.0)
        if not OFF:
            col = col - c_cov * m2
        col = col.to(ACC)
        cc = c_cov.to(ACC)
        mean = tl.load(meanv + cols, mask=cmask, other=0.0)
    if MODE == 1 or MODE == 3:
        gnc = tl.load(g1_ptr).to(tl.float64)
        a_fro = (4.0 * (gl + gnc)).to(ACC)
        if MODE == 1:
            a_r = 4.0 * (tl.load(g2_ptr).to(tl.float64) + gnc)
            a_c = 4.0 * (tl.load(g3_ptr).to(tl.float64) - gnc)
        else:
            a_r = 4.0 * (tl.load(g2_ptr).to(tl.float64) - gl)
            a_c = 4.0 * (tl.load(g3_ptr).to(tl.float64) + gl)
        ck = (a_c * tl.load(cv_ptr + cols, mask=cmask, other=0.0)).to(ACC)
    if MODE == 4 or MODE == 5:
        ci = ((1.0 - 2.0 * v) * 2.0 * tl.load(g1_ptr).to(tl.float64) / (nf * df)).to(ACC)
        ca = tl.load(rv_ptr + v * D + cols, mask=cmask, other=0.0) * (1.0 / nf)
        cb = 2.0 * tl.load(cv_ptr + v * D + cols, mask=cmask, other=0.0)
        mean = tl.load(meanv + cols, mask=cmask, other=0.0)
    for r0 in range(r_lo, r_hi, BR):
        rows = r0 + tl.arange(0, BR)
        rmask = rows < r_hi
        mask = rmask[:, None] & cmask[None, :]
        idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
        if MODE != 5:
            p = _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rsv, wv, meanv, RS, CORR)
        if MODE == 0:
            a = tl.load(z1_ptr + idx, mask=mask, other=0.0)
            b = tl.load(z2_ptr + idx, mask=mask, other=0.0)
            x = _operand(_pick(v, a, b), mean[None, :], 1.0, T).to(ACC)
            dz = cc * p + x * col[None, :] + ci * (a.to(ACC) - b.to(ACC))
        if MODE == 1 or MODE == 3:
            z = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(ACC)
            ri = (a_r * tl.load(rv_ptr + rows, mask=rmask, other=0.0)).to(ACC)
            dz = a_fro * p + z * (ri[:, None] + ck[None, :])
        if MODE == 2:
            dz = p
        if MODE == 4 or MODE == 5:
            a = tl.load(z1_ptr + idx, mask=mask, other=0.0)
            b = tl.load(z2_ptr + idx, mask=mask, other=0.0)
            zv = _pick(v, a, b).to(tl.float64)
            dz = (ca[None, :] + cb[None, :] * (zv - mean[None, :])).to(ACC) + ci * (a.to(ACC) - b.to(ACC))
            if MODE == 4:
                dz = dz + p
        tl.store(dz_ptr + idx, dz.to(T), mask=mask)


@triton.jit
def _bn_tile(r0, r_hi, cols, cmask, D, p_ptr, zs, zo, meanp, mean_s, s_s, mean_o, s_o, alpha, beta,
             rsv, wv, RS: tl.constexpr, CORR: tl.constexpr, POST: tl.constexpr, T: tl.constexpr,
             BR: tl.constexpr):
    """Rows [r0, r0 + BR) of ``_bn_bwd_kernel``'s stripe: (idx, mask, da, ã), float64."""
    rows = r0 + tl.arange(0, BR)
    rmask = rows < r_hi
    mask = rmask[:, None] & cmask[None, :]
    idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
    p = _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rsv, wv, meanp, RS, CORR).to(tl.float64)
    if POST:
        p = p * s_s[None, :]
    o = _operand(tl.load(zo + idx, mask=mask, other=0.0), mean_o[None, :], s_o[None, :], T)
    a = _operand(tl.load(zs + idx, mask=mask, other=0.0), mean_s[None, :], s_s[None, :], T)
    return idx, mask, alpha * p + beta[None, :] * o.to(tl.float64), a.to(tl.float64)


@triton.jit
def _bn_bwd_kernel(p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr, mean_ptr, m2_ptr, dv_ptr,
                   rs_ptr, w_ptr, g0_ptr, g1_ptr, g2_ptr, part_ptr, N, D, RPC, v0,
                   lam: tl.float64, eps: tl.float64,
                   BARLOW: tl.constexpr, RS: tl.constexpr, CORR: tl.constexpr, POST: tl.constexpr,
                   PHASE: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Backward through C = aᵀb/N with a, b BatchNorm-standardized (docs/spec.md §1), float64 like the CUDA
    backend's (the result is a residual that cancels when da ∥ a: N = 2, or a ≈ b). Grid: stripes,
    chunks, views in this launch (view 0: self a, other b → dz1; view 1 the reverse).
        da = α·P + β_k·b̃,  dz = s∘(da − mean_i da − (ã − mean_i ã)∘mean_i(da∘ã)),
    ã, b̃ the forward's rounded operands (``_operand``), s = 1/sqrt(var_b + eps).
    cross_correlation: α = 1/N, β = 0, P = b·Goutᵀ / a·Gout. Barlow (docs/spec.md §3): α = 2a_off/N²,
    β_k = (−2a_on(1 − d_k) − 2a_off·d_k)/N, d = C_kk, a_on = g_loss + g_on, a_off = λg_loss + g_off,
    P = (b bᵀ)·a (N×N) or b·(aᵀb)ᵀ (D×D). POST: P'' ∘ s_self (the N×N side's IDENT operand is z).
    _STATS-like PHASE 1 writes per-chunk sums of da, da∘ã, ã into part[(lv, 3, chunk, D)]; PHASE 2
    adds them in chunk order and writes dz; PHASE 0 does both in one program per stripe.
    Bytes per view: P (4 B) + z1, z2 read twice, dz written once per element.
    """
    pid_c = tl.program_id(1)
    lv = tl.program_id(2)
    chunks = tl.num_programs(1)
    v = v0 + lv
    p_ptr, dz_ptr, zs, zo = _view_ptrs(v, lv, p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr)
    T = dz0_ptr.dtype.element_ty
    cols, cmask, r_lo, r_hi = _stripe(N, D, BD, RPC)
    nf = tl.cast(N, tl.float64)
    inv_n = 1.0 / nf
    e64 = _scalar(eps, tl.float64)
    rsv, wv = _view_vectors(rs_ptr, w_ptr, v, N, D, RS, CORR)
    mean_s = tl.load(mean_ptr + v * D + cols, mask=cmask, other=0.0)
    mean_o = tl.load(mean_ptr + (1 - v) * D + cols, mask=cmask, other=0.0)
    s_s = _bn_inv(tl.load(m2_ptr + v * D + cols, mask=cmask, other=0.0), inv_n, e64)
    s_o = _bn_inv(tl.load(m2_ptr + (1 - v) * D + cols, mask=cmask, other=0.0), inv_n, e64)
    if BARLOW:
        gl = tl.load(g0_ptr).to(tl.float64)
        a_on = gl + tl.load(g1_ptr).to(tl.float64)
        a_off = gl * _scalar(lam, tl.float64) + tl.load(g2_ptr).to(tl.float64)
        d = tl.load(dv_ptr + cols, mask=cmask, other=0.0).to(tl.float64)
        alpha = 2.0 * a_off * inv_n * inv_n
        beta = (-2.0 * a_on * (1.0 - d) - 2.0 * a_off * d) * inv_n
    else:
        alpha = inv_n
        beta = tl.zeros([BD], tl.float64)
    sbase = part_ptr + (lv * 3 * chunks).to(tl.int64) * D + cols
    if PHASE != 2:
        t1 = tl.zeros([BD], tl.float64)
        t2 = tl.zeros([BD], tl.float64)
        t3 = tl.zeros([BD], tl.float64)
        for r0 in range(r_lo, r_hi, BR):
            idx, mask, da, a = _bn_tile(r0, r_hi, cols, cmask, D, p_ptr, zs, zo, mean_ptr + v * D,
                                        mean_s, s_s, mean_o, s_o, alpha, beta, rsv, wv,
                                        RS, CORR, POST, T, BR)
            # padding is not 0 after centering: masked out of the sums
            da = tl.where(mask, da, 0.0)
            a = tl.where(mask, a, 0.0)
            t1 += tl.sum(da, axis=0)
            t2 += tl.sum(da * a, axis=0)
            t3 += tl.sum(a, axis=0)
        if PHASE == 1:
            tl.store(sbase + pid_c * D, t1, mask=cmask)
            tl.store(sbase + (chunks + pid_c) * D, t2, mask=cmask)
            tl.store(sbase + (2 * chunks + pid_c) * D, t3, mask=cmask)
    if PHASE != 1:
        if PHASE == 2:
            t1 = _chunk_sum(sbase, 0, cmask, chunks, D, BD)
            t2 = _chunk_sum(sbase + chunks * D, 0, cmask, chunks, D, BD)
            t3 = _chunk_sum(sbase + 2 * chunks * D, 0, cmask, chunks, D, BD)
        m_da = t1 * inv_n
        m_daa = t2 * inv_n
        m_a = t3 * inv_n
        for r0 in range(r_lo, r_hi, BR):
            idx, mask, da, a = _bn_tile(r0, r_hi, cols, cmask, D, p_ptr, zs, zo, mean_ptr + v * D,
                                        mean_s, s_s, mean_o, s_o, alpha, beta, rsv, wv,
                                        RS, CORR, POST, T, BR)
            dz = s_s[None, :] * (da - m_da[None, :] - (a - m_a[None, :]) * m_daa[None, :])
            tl.store(dz_ptr + idx, dz.to(T), mask=mask)


@triton.jit
def _row_tile(c0, rows, rmask, D, p_ptr, zs, zo, t_s, t_o, e, k2, rsv, MODE: tl.constexpr,
              RS: tl.constexpr, POST: tl.constexpr, T: tl.constexpr, ACC: tl.constexpr,
              BD: tl.constexpr):
    """Columns [c0, c0 + BD) of ``_row_bwd_kernel``'s rows: (idx, mask, da, ã) in ACC."""
    cols = c0 + tl.arange(0, BD)
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    idx = rows.to(tl.int64)[:, None] * D + cols[None, :]
    da = _product(p_ptr, idx, mask, rows, cols, rmask, cmask, rsv, rsv, rsv, RS, 0)
    if POST:
        da = da * t_s[:, None]
    a = (tl.load(zs + idx, mask=mask, other=0.0).to(ACC) * t_s[:, None]).to(T)
    if MODE == 0 or MODE == 2:
        o = (tl.load(zo + idx, mask=mask, other=0.0).to(ACC) * t_o[:, None]).to(T)
        da = k2 * da + e[:, None] * o.to(ACC)
    return idx, mask, da, a.to(ACC)


@triton.jit
def _row_bwd_kernel(p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr, info_ptr, rs_ptr,
                    g0_ptr, g1_ptr, g2_ptr, N, D, v0, mu: tl.float64,
                    MODE: tl.constexpr, RS: tl.constexpr, POST: tl.constexpr,
                    BR: tl.constexpr, BD: tl.constexpr):
    """Row epilogues over a block of BR rows (grid: row blocks, views in this launch): a row dot,
    then the projection; P from ``_product`` (POST: times the row's clamp t, D×D side IDENT).
    _R_SPECTRAL (docs/spec.md §4), a = t∘z1 / b = t∘z2 the clamped rows: with a_pos = g_loss + g_pos,
        a_neg = g_loss + g_neg, κ = a_neg/(N(N−1)mu), e_i = −2a_pos/(N·mu) − 2κ·p_i,
        da = 2κ·P + e∘b̃ (P = S·b or a·(bᵀb)),  dz_i = t_i·(da_i − proj_i·ã_i·(ã_i·da_i)),
        proj = 1/mu on clamped rows.
    _R_NGRAM (l2n): dz_i = r_i·(dn_i − f_i·ñ_i·(ñ_i·dn_i)), dn = P = Gout·n2 (Goutᵀ·n1).
    _R_CLAMP (``spectral_rows``, docs/spec.md §5): as _R_SPECTRAL with da = P + e_i·b̃, P the upstream
        gradient of the clamped rows and e = g0 a per-row vector (the upstream gradient of p_i).
    Bytes per view: P (4 B) + z (+ the other view for spectral) read twice, dz written once.
    """
    rb = tl.program_id(0)
    lv = tl.program_id(1)
    v = v0 + lv
    p_ptr, dz_ptr, zs, zo = _view_ptrs(v, lv, p0_ptr, p1_ptr, dz0_ptr, dz1_ptr, z1_ptr, z2_ptr)
    T = dz0_ptr.dtype.element_ty
    ACC = p0_ptr.dtype.element_ty
    rows = rb * BR + tl.arange(0, BR)
    rmask = rows < N
    nf = tl.cast(N, tl.float64)
    ts = tl.load(info_ptr + v * N + rows, mask=rmask, other=1.0)
    t_s = tl.abs(ts)
    rsv, _ = _view_vectors(rs_ptr, rs_ptr, v, N, D, RS, 0)
    if MODE == 2:
        mu_ = _scalar(mu, tl.float64)
        t_o = tl.abs(tl.load(info_ptr + (1 - v) * N + rows, mask=rmask, other=1.0))
        e = tl.load(g0_ptr + rows, mask=rmask, other=0.0).to(ACC)
        k2 = 1.0
        proj = tl.where(ts < 0, 1.0 / mu_, 0.0)
    elif MODE == 0:
        mu_ = _scalar(mu, tl.float64)
        t_o = tl.abs(tl.load(info_ptr + (1 - v) * N + rows, mask=rmask, other=1.0))
        p = tl.load(info_ptr + 2 * N + rows, mask=rmask, other=0.0).to(tl.float64)
        gl = tl.load(g0_ptr).to(tl.float64)
        a_pos = gl + tl.load(g1_ptr).to(tl.float64)
        a_neg = gl + tl.load(g2_ptr).to(tl.float64)
        kappa = a_neg / (nf * (nf - 1.0) * mu_)
        e = (-2.0 * a_pos / (nf * mu_) - 2.0 * kappa * p).to(ACC)
        k2 = (2.0 * kappa).to(ACC)
        proj = tl.where(ts < 0, 1.0 / mu_, 0.0)
    else:
        proj = tl.where(ts > 0, 1.0, 0.0)
        t_o = t_s
        e = tl.zeros([BR], ACC)
        k2 = 1.0
    # The projection ã(ã·da)/‖ã‖² (= proj·ã(ã·da): ‖ã‖² is 1 / mu on projected rows), divided by
    # the rounded row's own ‖ã‖² and subtracted in float64: with proj·ã(ã·da), ã = z·(1/‖z‖)
    # rounded, a one-column row's gradient (0 in exact arithmetic) came out ~2 ulp·|da|/‖z‖
    # (8.9e-6 at ‖z‖ = 0.027, test_properties' FOUND), eager's 0.
    dot = tl.zeros([BR], tl.float64)
    ss = tl.zeros([BR], tl.float64)
    for c0 in range(0, D, BD):
        idx, mask, da, a = _row_tile(c0, rows, rmask, D, p_ptr, zs, zo, t_s, t_o, e, k2, rsv,
                                     MODE, RS, POST, T, ACC, BD)
        a64 = a.to(tl.float64)
        dot += tl.sum(a64 * da.to(tl.float64), axis=1)
        ss += tl.sum(a64 * a64, axis=1)
    q = tl.where((proj != 0) & (ss > 0), dot / tl.where(ss > 0, ss, 1.0), 0.0)
    t64 = t_s.to(tl.float64)
    for c0 in range(0, D, BD):
        idx, mask, da, a = _row_tile(c0, rows, rmask, D, p_ptr, zs, zo, t_s, t_o, e, k2, rsv,
                                     MODE, RS, POST, T, ACC, BD)
        dz = t64[:, None] * (da.to(tl.float64) - q[:, None] * a.to(tl.float64))
        tl.store(dz_ptr + idx, dz.to(T), mask=mask)


def _elem_bwd(mode, ps, group, dz, z1, z2, *, mean=None, cv=None, rv=None, rs=None, w=None,
              gs=(), rsm=_RS_NONE, corr=_CORR_NONE, weights=(), off=False):
    n, d = z1.shape
    br, bd = _blocks(z1.dtype, arch_family(z1)).col
    rpc, chunks = _chunks(n, d, br, bd, fuse=False)
    dm = _dummy(z1)
    g = list(gs) + [gs[0]] * (4 - len(gs)) if gs else [dm] * 4
    wts = [float(x) for x in weights] + [0.0] * (5 - len(weights))
    _elem_bwd_kernel[(_cdiv(d, bd), chunks, len(group))](
        ps[0], ps[-1], dz[0], dz[-1], z1, z2, dm if mean is None else mean, dm if cv is None else cv,
        dm if rv is None else rv, rs if rsm else dm, w if corr else dm, *g, n, d, rpc, group[0], *wts,
        MODE=mode, RS=rsm, CORR=corr, OFF=off, BR=br, BD=bd, num_warps=_WARPS)


def _bn_bwd(ps, group, dz, z1, z2, mean, m2, eps, *, dv=None, gs=(), lam=0.0, rs=None, w=None,
            rsm=_RS_NONE, corr=_CORR_NONE, post=False):
    n, d = z1.shape
    br, bd = _blocks(z1.dtype, arch_family(z1)).bn
    rpc, chunks = _chunks(n, d, br, bd)
    dm = _dummy(z1)
    g = list(gs) if gs else [dm] * 3
    grid = (_cdiv(d, bd), chunks, len(group))
    args = (ps[0], ps[-1], dz[0], dz[-1], z1, z2, mean, m2, dm if dv is None else dv,
            rs if rsm else dm, w if corr else dm, *g)
    flags = dict(BARLOW=dv is not None, RS=rsm, CORR=corr, POST=post, BR=br, BD=bd,
                 num_warps=_WARPS)
    if chunks == 1:
        _bn_bwd_kernel[grid](*args, dm, n, d, rpc, group[0], float(lam), float(eps), PHASE=_FUSED,
                             **flags)
    else:
        part = torch.empty((len(group), 3, chunks, d), dtype=torch.float64, device=z1.device)
        for phase in (_STATS, _APPLY):
            _bn_bwd_kernel[grid](*args, part, n, d, rpc, group[0], float(lam), float(eps),
                                 PHASE=phase, **flags)


def _row_bwd(mode, ps, group, dz, z1, z2, info, *, rs=None, gs=(), mu=1.0, rsm=_RS_NONE,
             post=False):
    n, d = z1.shape
    br, bd = _blocks(z1.dtype, arch_family(z1)).row
    dm = _dummy(z1)
    g = list(gs) if gs else [dm] * 3
    _row_bwd_kernel[(_cdiv(n, br), len(group))](
        ps[0], ps[-1], dz[0], dz[-1], z1, z2, info, rs if rsm else dm, *g, n, d, group[0],
        float(mu), MODE=mode, RS=rsm, POST=post, BR=br, BD=bd, num_warps=_WARPS)
