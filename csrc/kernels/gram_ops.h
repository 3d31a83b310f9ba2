// The fused kernels of the covariance family's CUDA backend (SPEC §1–3), everything around the
// GEMMs: csrc/bindings.cpp runs the Gram products through ATen (cuBLAS) on the side of the duality
// that the cost model picks, and these kernels do the rest: centering / BatchNorm / row scaling
// into a GEMM operand, row and column reductions, the deterministic reduction of a Gram to its
// sum of squares, the per-loss finalization on device, and the backward epilogues.
//
// Conventions (DESIGN 6–8): torch-free; all matrices row-major contiguous; "T" arrays have the
// input dtype (kFloat32/kFloat64/kFloat16/kBFloat16 codes of api.h), "acc" arrays are
// float32 (float64 for float64 inputs); int64 indexing; every reduction is two-stage in a fixed
// order (no atomics), so results depend on the shape only. Upstream gradients and saved vectors
// are read from device memory, never copied to the host: no synchronization.
#pragma once

#include <cstdint>

#include "api.h"

namespace duality_kernels {

// Row scale modes of center_scale / row_bwd (s_i from q_i = ‖z_i‖²).
enum RowMode : int {
  kRowNone = 0,   // s = 1
  kRowL2 = 1,     // s = 1 / max(‖z_i‖, 1e-12)                     (l2n, SPEC notation)
  kRowClamp = 2,  // s = ‖z_i‖ < r ? 1 : r / max(‖z_i‖, 1e-12)      (spectral, SPEC §4)
};

// Column modes of center_scale.
enum ColMode : int {
  kColNone = 0,    // no centering
  kColCenter = 1,  // z - mean
  kColBN = 2,      // (z - mean) / sqrt(m2 / n + eps)  (BatchNorm1d, affine=False, train mode)
};

// out_v[i, k] = (z_v[i, k] - mean_v[k]) / c_v[k] * s_v[i] for views v < views, computed in
// float64 when the column statistics are given and rounded once to T
// (c = sqrt(m2 / n + eps) for kColBN, else 1).
struct CenterScaleArgs {
  const void* z[2];
  void* out[2];
  const double* mean[2];  // column means (d), kColCenter / kColBN
  const double* m2[2];    // centered column sums of squares (d), kColBN
  const void* rowq[2];  // acc (n), kRowL2 / kRowClamp
  int64_t n, d;
  int views, col_mode, row_mode;
  double eps, radius;
};
cudaError_t center_scale(const CenterScaleArgs& a, int dtype, cudaStream_t stream);

// Per row i: q1[i] = ‖z1_i‖², and when z2 is given q2[i] = ‖z2_i‖², q12[i] = z1_i · z2_i (acc).
cudaError_t row_stats(const void* z1, const void* z2, int64_t n, int64_t d, int dtype, void* q1,
                      void* q2, void* q12, cudaStream_t stream);

// Per-column float64 moments of up to two (n x d) views in one pass over the rows (two-stage,
// the shifted-data algorithm with each column's first element as the shift):
// mean[v][k], m2[v][k] = Σ_i (z_v[i, k] - mean[v][k])², and with sqdiff sq[k] = Σ_i (z_0 - z_1)².
// float64 so that the centered or standardized views round only once (a rounded per-column
// statistic would shift or scale a whole column by the same error).
struct ColMomentsArgs {
  const void* z[2];
  int64_t n, d;
  int views, sqdiff;
  double *mean, *m2, *sq;  // (views, d), (views, d), (d)
  double* workspace;       // col_moments_workspace_elems
};
int64_t col_moments_workspace_elems(int64_t n, int64_t d, int views);  // float64 elements
cudaError_t col_moments(const ColMomentsArgs& a, int dtype, cudaStream_t stream);

// Backward of the column statistics (mean = z.mean(0), m2 = Σ_i (z - mean)², the primitive
// duality_kernels::column_stats_fwd, whose forward is col_moments), given the float64 mean (from
// col_moments: an fp32-rounded mean would shift every (z - mean) of its column by the same
// error, which autograd's re-centering cancels and this closed form would not) and acc-typed
// upstream gradients (d each): dz[i, k] = grad_mean[k] / n + 2 (z[i, k] - mean[k]) grad_m2[k],
// written in z's dtype (m2's dependence through mean vanishes: Σ_i (z - mean) = 0).
cudaError_t column_stats_bwd(const void* z, const double* mean, const void* grad_mean,
                             const void* grad_m2, int64_t n, int64_t d, int dtype, void* dz,
                             cudaStream_t stream);

// Per-column sums over rows of f(a_v[i, k], b_v[i, k]) for T arrays (n x d), accumulated and
// written in float64 (out: views x d): the losses subtract these (or their squares) from Gram
// sums that cancel to a small remainder.
enum ColSumMode : int {
  kColSumSq = 0,   // a^2
  kColSumDot = 1,  // a * b
};
struct ColSumArgs {
  const void* a[2];
  const void* b[2];
  int64_t n, d;
  int views, mode;
  double* out;        // (views, d)
  double* workspace;  // col_sum_workspace_elems
};
int64_t col_sum_workspace_elems(int64_t n, int64_t d, int views);  // float64 elements
cudaError_t col_sum(const ColSumArgs& a, int dtype, cudaStream_t stream);

// Sum over count elements (dtype acc, or float64) of a^2 (b == null) or a*b, as per-block float64
// partials: part has 2 * sum_parts(count) elements, the full sums then the sums without the
// diagonals of the stacked m x m matrices that a holds (m == 0: no diagonal, both the same).
// The finalize kernels add them up in order.
int sum_parts(int64_t count);
cudaError_t sum_partials(const void* a, const void* b, int64_t count, int64_t m, int dtype,
                         double* part, cudaStream_t stream);

// The losses' scalar outputs from the partials of sum_partials (F = full sum, O = the sum
// without the diagonals) and per-row or per-column vectors, on one block. v: acc vectors,
// dv: float64 vectors; outputs acc 0-dim. Off-diagonal sums come from O where the Gram is on the
// side whose diagonal is excluded (no cancellation), else F minus the float64 diagonal.
enum FinalizeMode : int {
  // dv2 = m2 (2, d); dv0 = per-column Σ(z1 - z2)²; dv1 = per-column Σ x² of the two centered
  // views (2, d), sample side only; w = inv_w, var_w, cov_w, gamma, eps; Grams of the centered
  // views; out = loss, invariance, variance, covariance.
  kFinVICReg = 0,
  // Diagonal Σ_i a_ik b_ik: dv0 (sample side) or v0 with stride `stride` (the D×D Gram);
  // w0 = lambda; out = loss, on_diagonal, off_diagonal, and out3 = the vector C_kk (d).
  kFinBarlow = 1,
  // v0, v1, v2 = q1, q2, q12 (n) of the raw rows; w0 = mu; Gram(s) of the clamped rows;
  // out = loss, positive, negative.
  kFinSpectral = 2,
  // v0 = q (n) row sums of squares, dv0 = column sums of squares (d); out = L_c, L_nc,
  // Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴.
  kFinDuality = 3,
};
struct FinalizeArgs {
  int mode;
  int sample;  // the Gram is N×N
  const double* part;
  int nparts;  // per half of part
  int64_t n, d, stride;
  const void* v[3];
  const double* dv[3];
  void* out[4];
  double w[5];
};
cudaError_t finalize(const FinalizeArgs& a, int dtype, cudaStream_t stream);

// VICReg backward (SPEC §3), both views: with x_v the saved centered views (T) and P_v = x_v G_v
// (dimension side) or G_v x_v (sample side) in acc,
//   dz_v = ±W_inv 2 (z1 - z2)/(n d) - x_v ⊙ W_var h_k / (2 d (n-1) s_k)
//          + 4 W_cov κ (P_v - x_v ⊙ sq_k),
// s_k = sqrt(m2_k/(n-1) + eps), h_k = [gamma > s_k], κ = 1/((n-1)² d), W_* = g_loss·w_* + g_*,
// sq_k = Σ_i x_ik² of the views the Grams were made of: the term removes the Gram's diagonal from
// P, so it must be the diagonal P saw (m2, from z in float64, differs from it by x's rounding,
// and the difference is amplified by the cancellation: 43x eager's fp32 gradient error at
// N = 2, D = 1, found by tests/test_properties.py, 2026-11-30). sq = null: P is made of a
// Gram without its diagonal (the dimension side zeroes it) and the term is left out.
struct VICRegBwdArgs {
  const void* z[2];
  const void* x[2];
  const void* p[2];
  const double* m2;  // (2, d)
  const double* sq;  // (2, d) or null, see above
  const void* g[4];  // g_loss, g_inv, g_var, g_cov (acc 0-dim)
  void* dz[2];
  int64_t n, d;
  double inv_w, var_w, cov_w, gamma, eps;
};
cudaError_t vicreg_bwd(const VICRegBwdArgs& a, int dtype, cudaStream_t stream);

// duality_terms backward, from P = z G° (dimension side) or G° z (sample side) in acc, G° the Gram
// without its diagonal (the forward saves it so; q_i = ‖z_i‖², c_k = ‖z_:k‖²):
//   sample:    dz = 4 (g_lc + g_lnc) P + 4 z ⊙ ((g_lnc + g_r4) q_i + (g_c4 - g_lnc) c_k)
//   dimension: dz = 4 (g_lc + g_lnc) P + 4 z ⊙ ((g_r4 - g_lc) q_i + (g_c4 + g_lc) c_k).
// With the full Gram the diagonal's share of P would cancel against a q (or c) term computed by
// another reduction, and their rounding difference would remain (3.5x eager's fp32 gradient
// error for two equal rows, found by tests/test_properties.py, 2026-11-30).
struct DualityBwdArgs {
  const void* z;
  const void* p;
  const void* q;  // (n)
  const double* c;  // (d), float64
  const void* g[4];  // g_lc, g_lnc, g_r4, g_c4
  void* dz;
  int64_t n, d;
  int sample;
};
cudaError_t duality_bwd(const DualityBwdArgs& a, int dtype, cudaStream_t stream);

// BatchNorm backward of cross_correlation and Barlow Twins for both views, with a_v = x_v the
// saved standardized views (T), c_k = 1/sqrt(m2_k/n + eps):
//   da_v = α P_v + β_k x_{1-v},  dz_v = c_k (da_v - mean_i da_v - (x_v - mean_i x_v) mean_i(da_v x_v))
// (mean_i x_v = 0 up to rounding; see gram_ops.cu for why it is kept).
// cross_correlation: α = 1/n, β = 0 (P_0 = b Gᵀ, P_1 = a G). Barlow (barlow = 1):
// α = 2 (λ g_loss + g_off)/n², β_k = (-2 (g_loss + g_on)(1 - C_kk) - 2 (λ g_loss + g_off) C_kk)/n
// with C_kk = cdiag[k] (P_0 = b (aᵀb)ᵀ or (b bᵀ) a, P_1 = a (aᵀb) or (a aᵀ) b).
struct BNBwdArgs {
  const void* x[2];
  const void* p[2];
  const double* m2;   // (2, d)
  const void* cdiag;  // (d), Barlow
  const void* g[3];   // Barlow: g_loss, g_on, g_off
  void* dz[2];
  int64_t n, d;
  double eps, lambda;
  int barlow;
};
int64_t bn_bwd_workspace_elems(int64_t n, int64_t d);  // float64 elements
cudaError_t bn_bwd(const BNBwdArgs& a, int dtype, void* workspace, cudaStream_t stream);

// Row-wise backward through a per-row scaling (normalized_gram's l2n, spectral's norm clamp), both
// views: da_v = α P_v + β_i y_v (y_v = the other view's scaled rows, spectral only), then
//   dz_i = s_i (da_i - [projected] u_i (u_i · da_i)),  u_i = z_i / ‖z_i‖.
// kRowL2: α = 1, β = 0, s = 1/max(‖z‖, 1e-12), projected when ‖z‖ > 1e-12.
// kRowClamp (spectral): α = 2 W_neg/(n(n-1)µ), β_i = -2 W_pos/(nµ) - 2 W_neg p_i/(n(n-1)µ) with
// p_i = s1_i s2_i q12_i, W_pos = g_loss + g_pos, W_neg = g_loss + g_neg; s = r/‖z‖ and projected
// when ‖z‖ >= r = sqrt(µ).
struct RowBwdArgs {
  const void* z[2];
  const void* p[2];
  const void* y[2];
  const void* q[3];  // q1, q2, q12 (n); q2 may be null for one view
  const void* g[3];  // spectral: g_loss, g_pos, g_neg
  void* dz[2];
  int64_t n, d;
  int views, row_mode;
  double mu;
};
cudaError_t row_bwd(const RowBwdArgs& a, int dtype, cudaStream_t stream);

// out = (g + gᵀ) * scale for a square acc matrix g (m x m), written in dtype (T).
cudaError_t sym_scale(const void* g, int64_t m, double scale, int dtype, void* out,
                      cudaStream_t stream);

}  // namespace duality_kernels
