// The fused kernels of the covariance family's CUDA backend (docs/spec.md §1–3), everything around the
// GEMMs: csrc/bindings/ runs the Gram products through ATen (cuBLAS) on the side of the duality
// that the cost model picks, and these kernels do the rest: column moments, centering / BatchNorm
// / row scaling into a GEMM operand, the deterministic reduction of a Gram to its sums of squares
// (with the copy of it that the backward multiplies), the per-loss finalization on device, and the
// backward epilogues, in csrc/kernels/*.cu. gram_ops.cu's header has the bytes each kernel moves and
// the time budget per headline shape.
//
// Conventions (docs/design.md convention 6–8): torch-free; all matrices row-major contiguous; "T" arrays have the
// input dtype (kFloat32/kFloat64/kFloat16/kBFloat16 codes of api.h), "acc" arrays are float32
// (float64 for float64 inputs); int64 indexing; every reduction is two-stage in a fixed order (no
// atomics): partial sums per block into float64 scratch, then a merge in block order, with a
// block layout that depends on the shape and dtype only, so results do too (docs/design.md convention 7). Upstream
// gradients and saved vectors are read from device memory, never copied to the host: no
// synchronization. An upstream gradient pointer may be null: that output was not used (0).
// Scratch ("part", "fin") is float64 and must be 16-byte aligned.
#pragma once

#include <cstdint>

#include "api.h"

namespace duality_kernels {

// Row scale modes of row_scale / row_bwd (s_i from q_i = ‖z_i‖²).
enum RowMode : int {
  kRowNone = 0,   // s = 1 (row statistics only)
  kRowL2 = 1,     // s = 1 / max(‖z_i‖, 1e-12)                     (l2n, docs/spec.md "Notation")
  kRowClamp = 2,  // s = ‖z_i‖ < r ? 1 : r / max(‖z_i‖, 1e-12)      (spectral, docs/spec.md §4)
  kRowClampVec = 3,  // row_bwd only: kRowClamp's s with per-row β (spectral's docs/spec.md §5 rows)
};

// ---------------------------------------------------------------------------------------------
// The row chunking shared by the column kernels: blocks of 256 threads own a tile of tile_cols
// columns (32 lanes x one 16-byte vector of T each) and rows_per_chunk rows; the grid is
// col_tiles * chunks blocks. Every two-stage column reduction writes per-(group, chunk, column)
// float64 partials part[(g * chunks + chunk) * d + col] that col_merge adds in chunk order.
struct ColPlan {
  int64_t tile_cols, col_tiles, rows_per_chunk, chunks;
};
ColPlan col_plan(int64_t n, int64_t d, int dtype);  // n, d >= 1

// Stage 1 of the column statistics of up to two (n x d) views, both read once by the same block.
// kStatsMoments: groups [S_v, Q_v] per view, S = Σ_i (z - s), Q = Σ_i (z - s)² with the shift
// s = z[0, k] (the shifted-data algorithm), then with sqdiff one more group R = Σ_i (z_0 - z_1)².
// kStatsSumSq: one group Q = Σ_i z² per view (no shift).
// Sums run in float64, or for fp16/bf16 in float32 over at most 32 rows per thread before
// the float64 cross-warp and cross-chunk sums: bf16/fp16 values and their differences are exact
// in float32, so the only float32 roundings are those of ≤ 32-term sums (relative 2e-6 at worst,
// far below the inputs' own 4e-3 / 5e-4), and a float64 conversion per element would cost as
// much as the memory traffic (H200: 16 conversions per SM and clock against 15 µs per 64 MB).
enum ColStatsMode : int { kStatsMoments = 0, kStatsSumSq = 1 };
struct ColStatsArgs {
  const void* z[2];
  int64_t n, d;
  int views, mode, sqdiff;
  double* part;  // (groups, chunks, d)
};
int col_stats_groups(int mode, int views, int sqdiff);
cudaError_t col_stats(const ColStatsArgs& a, int dtype, cudaStream_t stream);

// Stage 2: per column k the chunk partials summed in chunk order, then per mode:
// kMergeMoments (part of col_stats kStatsMoments; z = the views, for the shift):
//   mean[v][k] = s + S/n, m2[v][k] = max(Q - S²/n, 0) (float64, the statistics of the
//   centered or standardized views: a rounded per-column statistic would shift or scale a
//   whole column by the same error, which biases every sum over it); zero (views x d), when
//   given, is set to 0; finalize partials: fin slot 0 = Σ_k R_k, slot 1 = Σ_{v,k} relu(gamma -
//   sqrt(m2/(n-1) + eps)) when hinge (VICReg's variance term).
// kMergeSum: out[g][k] = Σ; fin slot 0 = Σ_{g,k} out², slot 1 = 0.
// kMergeBarlowDiag (one group Σ_i a_ik b_ik): C_kk = Σ/n into cdiag (acc); fin slot 0 =
//   Σ_k (1 - C_kk)², slot 1 = Σ_k C_kk².
// fin has 2 slots of col_merge_blocks(d) partials each (slot j at fin + j * blocks); may be null.
enum MergeMode : int { kMergeMoments = 0, kMergeSum = 1, kMergeBarlowDiag = 2 };
struct ColMergeArgs {
  int mode;
  const double* part;
  int64_t n, d, chunks;
  int groups;
  const void* z[2];  // kMergeMoments
  int views, sqdiff, hinge;
  double gamma, eps;
  double *mean, *m2, *zero;  // kMergeMoments
  double* out;               // kMergeSum
  void* cdiag;               // kMergeBarlowDiag (acc)
  double* fin;
};
int col_merge_blocks(int64_t d);
cudaError_t col_merge(const ColMergeArgs& a, int dtype, cudaStream_t stream);

// out_v[i, k] = (z_v[i, k] - mean_v[k]) (* 1/sqrt(m2_v[k]/n + eps) with bn): BatchNorm1d,
// affine=False, train mode), rounded once to T, for views v < views, each element read once.
// float64 arithmetic for float32/float64 inputs; fp16/bf16 in float32 with the mean as a
// float32 pair (hi + lo), whose error is far below the output's rounding. With sums, stage 1 of a
// column reduction of the ROUNDED outputs, the values the GEMM will see (same plan as
// col_stats): kCenterSumSq: one group Σ_i out_v² per view; kCenterSumDot: one group
// Σ_i out_0 out_1.
enum CenterSum : int { kCenterNoSum = 0, kCenterSumSq = 1, kCenterSumDot = 2 };
struct CenterArgs {
  const void* z[2];
  void* out[2];
  const double* mean;  // (views, d)
  const double* m2;    // (views, d), bn
  int64_t n, d;
  int views, bn, sum_mode;
  double eps;
  double* part;  // (groups, chunks, d) with sums
};
cudaError_t center(const CenterArgs& a, int dtype, cudaStream_t stream);

// One warp per row: q1[i] = ‖z1_i‖² (acc), and with two views q2[i] = ‖z2_i‖², q12[i] =
// z1_i · z2_i (q holds q1, q2, q12 as consecutive length-n vectors); then, when out is given,
// out_v[i] = z_v[i] * s(q_v[i]) (row_mode) rounded once to T. Finalize partials (fin: slot j at
// fin + j * row_blocks(n)): kRowFinSpectral: slot 0 = Σ_i p_i, slot 1 = Σ_i p_i² with p_i =
// s(q1_i) s(q2_i) q12_i (the clamped rows' dot products); kRowFinSumSq: slot 0 = Σ_i q1_i².
// p (two views, when given): p_i itself (acc, n), computed as for kRowFinSpectral.
enum RowFin : int { kRowFinNone = 0, kRowFinSpectral = 1, kRowFinSumSq = 2 };
struct RowScaleArgs {
  const void* z[2];
  void* out[2];
  void* q;
  void* p;  // or null
  int64_t n, d;
  int views, row_mode, fin_mode;
  double radius;
  double* fin;
  int q64;
};
int row_blocks(int64_t n);
cudaError_t row_scale(const RowScaleArgs& a, int dtype, cudaStream_t stream);

// The reduction of a GEMM result g (gdtype: kFloat32, or kFloat64 when the Gram was computed in
// float64) of `mats` stacked m x m matrices, read once, float64 from the first product (the
// losses subtract a diagonal from these sums, offsq = ‖G‖² - Σ diag², docs/spec.md §2, which cancels
// most of them; float32 partial sums measured up to 30x eager's error, simulator, 2026-11-30):
// - per block: fin slot 0 = Σ g² (pair: Σ g[0] ⊙ g[1], the first matrix's entries times the
//   second's), slot 1 = the same without the diagonals (r == c) of the matrices;
// - out (odtype), when given: the saved copy of the stacked matrices (the operand of the
//   backward's product, T-typed for bf16 inputs, so that the backward does not convert it), with
//   the diagonals zeroed when zero_diag, and with swap (pair) the two matrices in the other order
//   (the backward's two products as one batched GEMM: P_0 needs the second view's Gram, P_1 the
//   first's); out == g (same dtype, no swap): only the diagonals are written;
// - cdiag (acc of the inputs, cdtype), when given: C_kk = g[0]_kk / cdiv (Barlow, the D×D side)
//   with fin slot 2 = Σ_k (1 - C_kk)², slot 3 = Σ_k C_kk²; else slots 2, 3 are 0.
// fin: 4 slots of gram_blocks(rows) partials each, rows = pair ? m : mats * m.
struct GramPassArgs {
  const void* g;
  void* out;
  void* cdiag;
  int64_t mats, m;
  int gdtype, odtype, cdtype, pair, zero_diag, swap;
  double cdiv;
  double* fin;
};
int gram_blocks(int64_t rows);
cudaError_t gram_pass(const GramPassArgs& a, cudaStream_t stream);

// The losses' scalar outputs (acc 0-dim) on one block from the partial sums of the kernels above
// (never from per-row or per-column data): part[j] holds nparts[j] float64 partials of sum s_j,
// added in order.
//  kFinVICReg: s0/s1 = Σ G² full/off-diagonal (gram_pass over the centered views' Grams), s2 =
//    Σ_k R_k, s3 = Σ hinge (col_merge moments), s4 = Σ_{v,k} sq_vk² (sample side: col_merge of
//    center's Σ x²); w = inv_w, var_w, cov_w; out = loss, invariance, variance, covariance.
//  kFinBarlow: s0 = ⟨a aᵀ, b bᵀ⟩ (sample) or s1 = ‖aᵀb‖² off-diagonal (dimension), s2 = Σ (1-C_kk)²,
//    s3 = Σ C_kk²; w0 = lambda; out = loss, on_diagonal, off_diagonal.
//  kFinSpectral: s0 = ⟨aᵀa, bᵀb⟩ (dimension) or s1 = ‖a bᵀ‖² off-diagonal (sample), s2 = Σ p_i,
//    s3 = Σ p_i²; w0 = mu; out = loss, positive, negative.
//  kFinDuality: s0/s1 = full/off-diagonal Σ G², s2 = Σ_i q_i², s3 = Σ_k c_k²; out = L_c, L_nc,
//    Σ_i ‖z_i‖⁴, Σ_k ‖z_:k‖⁴.
enum FinalizeMode : int { kFinVICReg = 0, kFinBarlow = 1, kFinSpectral = 2, kFinDuality = 3 };
constexpr int kFinSlots = 5;
struct FinalizeArgs {
  int mode;
  int sample;  // the Gram is N×N
  const double* part[kFinSlots];
  int nparts[kFinSlots];
  int64_t n, d;
  double w[3];
  void* out[4];
};
cudaError_t finalize(const FinalizeArgs& a, int dtype, cudaStream_t stream);

// Backward of the local moments of two views (duality_kernels::cuda_moments_fwd: the invariance
// mean((z1 - z2)²), per-view column mean and m2, centered Grams; gather_distributed=True merges
// them across ranks, docs/spec.md §5), both views in one pass (z1 - z2 read once):
//   dz_v = ±2 g_inv (z1 - z2)/(n d) + g_mean_v[k]/n + 2 g_m2_v[k] (z_v - mean_v[k]) + P_v
// with P_v (acc, or null: 0) the Grams' share, x_v (G_v + G_vᵀ) or the other view's product,
// computed by the caller; the centering Jacobian vanishes (every term but g_mean's sums to 0 over
// the rows). mean: float64 (an fp32-rounded mean would shift every (z - mean) of its column by the
// same error, which autograd's re-centering cancels and this closed form would not). Null
// gradients are 0.
struct MomentsBwdArgs {
  const void* z[2];
  const void* p[2];       // acc (n, d) each, or null
  const double* mean;     // (2, d)
  const double* g_mean;   // (2, d) or null
  const double* g_m2;     // (2, d) or null
  const void* g_inv;      // acc 0-dim or null
  void* dz[2];
  int64_t n, d;
};
cudaError_t moments_bwd(const MomentsBwdArgs& a, int dtype, cudaStream_t stream);

// VICReg backward (docs/spec.md §3), both views in one pass (z1 - z2 read once): with x_v the saved
// centered views (T) and P_v = x_v G_v (dimension side) or G_v x_v (sample side) in acc,
//   dz_v = ±W_inv 2 (z1 - z2)/(n d) - x_v ⊙ W_var h_k / (2 d (n-1) s_k)
//          + 4 W_cov κ (P_v - x_v ⊙ sq_k),
// s_k = sqrt(m2_k/(n-1) + eps), h_k = [gamma > s_k], κ = 1/((n-1)² d), W_* = g_loss·w_* + g_*,
// sq_k = Σ_i x_ik² of the views the Grams were made of: the term removes the Gram's diagonal from
// P, so it must be the diagonal P saw (m2, from z in float64, differs from it by x's rounding,
// and the difference is amplified by the cancellation: 43x eager's fp32 gradient error at
// N = 2, D = 1, found by tests/test_properties.py, 2026-11-30). sq = null: P is made of a
// Gram without its diagonal (the dimension side zeroes it) and the term is left out.
// p64 (float32 inputs only): P is float64 (a float64 Gram times the views in float64) and the
// epilogue runs in float64. With one column dominating, P - x ⊙ sq cancels on the sample side:
// a float32 P keeps ~1e-7 of the dominating column's share (docs/spec.md §8.2).
struct VICRegBwdArgs {
  const void* z[2];
  const void* x[2];
  const void* p[2];
  const double* m2;  // (2, d)
  const double* sq;  // (2, d) or null, see above
  const void* g[4];  // g_loss, g_inv, g_var, g_cov (acc 0-dim, or null)
  void* dz[2];
  int64_t n, d;
  double inv_w, var_w, cov_w, gamma, eps;
  int p64;
};
cudaError_t vicreg_bwd(const VICRegBwdArgs& a, int dtype, cudaStream_t stream);

// duality_terms backward, from P = z G° (dimension side) or G° z (sample side) in acc, G° the Gram
// without its diagonal (the forward saves it so; q_i = ‖z_i‖², c_k = ‖z_:k‖²):
//   sample:    dz = 4 (g_lc + g_lnc) P + 4 z ⊙ (g_r4 q_i + g_c4 c_k - g_lnc (c_k - q_i))
//   dimension: dz = 4 (g_lc + g_lnc) P + 4 z ⊙ (g_r4 q_i + g_c4 c_k + g_lc (c_k - q_i))
// (c_k - q_i taken first: see col_bwd.cu).
// With the full Gram the diagonal's share of P would cancel against a q (or c) term computed by
// another reduction, and their rounding difference would remain (3.5x eager's fp32 gradient
// error for two equal rows, found by tests/test_properties.py, 2026-11-30). p64 (float32 inputs
// only): P is float64 and so is the epilogue, as VICRegBwdArgs: with one row (column) dominating,
// P cancels against the z ⊙ (c_k - q_i) term of the other side (docs/spec.md §8.2).
struct DualityBwdArgs {
  const void* z;
  const void* p;
  const void* q;     // (n), acc (float64 with p64)
  const double* c;   // (d), float64
  const void* g[4];  // g_lc, g_lnc, g_r4, g_c4 (or null)
  void* dz;
  int64_t n, d;
  int sample;
  int p64;
};
cudaError_t duality_bwd(const DualityBwdArgs& a, int dtype, cudaStream_t stream);

// BatchNorm backward of cross_correlation and Barlow Twins for both views, with a_v = x_v the
// saved standardized views (T), c_k = 1/sqrt(m2_k/n + eps):
//   da_v = α P_v + β_k x_{1-v},  dz_v = c_k (da_v - mean_i da_v - (x_v - mean_i x_v) mean_i(da_v x_v))
// (mean_i x_v = 0 up to rounding; see col_bwd.cu for why it is kept).
// cross_correlation: α = 1/n, β = 0 (P_0 = b Gᵀ, P_1 = a G). Barlow (barlow = 1):
// α = 2 (λ g_loss + g_off)/n², β_k = (-2 (g_loss + g_on)(1 - C_kk) - 2 (λ g_loss + g_off) C_kk)/n
// with C_kk = cdiag[k] (P_0 = b (aᵀb)ᵀ or (b bᵀ) a, P_1 = a (aᵀb) or (a aᵀ) b).
// Three launches: column sums (both views per block), their merge (more than one chunk), apply.
struct BNBwdArgs {
  const void* x[2];
  const void* p[2];
  const double* m2;   // (2, d)
  const void* cdiag;  // (d), Barlow
  const void* g[3];   // Barlow: g_loss, g_on, g_off (or null)
  void* dz[2];
  int64_t n, d;
  double eps, lambda;
  int barlow;
};
int64_t bn_bwd_workspace_elems(int64_t n, int64_t d, int dtype);  // float64 elements
cudaError_t bn_bwd(const BNBwdArgs& a, int dtype, double* workspace, cudaStream_t stream);

// Row-wise backward through a per-row scaling (normalized_gram's l2n, spectral's norm clamp), one
// warp per row: da_v = α P_v + β_i y_v (y_v = the other view's scaled rows, spectral only), then
//   dz_i = s_i (da_i - [projected] u_i (u_i · da_i)),  u_i = z_i / ‖z_i‖.
// kRowL2: α = 1, β = 0, s = 1/max(‖z‖, 1e-12), projected when ‖z‖ > 1e-12 (a NaN norm: projected,
// s = NaN). ‖z‖ = sqrt(q), or where q overflowed (inf) the norm again, scaled before squaring.
// kRowClamp (spectral): α = 2 W_neg/(n(n-1)µ), β_i = -2 W_pos/(nµ) - 2 W_neg p_i/(n(n-1)µ) with
// p_i = s1_i s2_i q12_i, W_pos = g_loss + g_pos, W_neg = g_loss + g_neg; s = r/‖z‖ and projected
// when ‖z‖ >= r = sqrt(µ).
// kRowClampVec (the clamped rows as an op of their own, gather_distributed=True): α = 1, β_i =
// beta[i] (the upstream gradient of p_i; null: 0), P_v the upstream gradient of the clamped rows;
// s and the projection as kRowClamp.
struct RowBwdArgs {
  const void* z[2];
  const void* p[2];
  const void* y[2];
  const void* q;     // q1, q2, q12 as consecutive length-n acc vectors (q1 only for one view)
  const void* g[3];  // spectral: g_loss, g_pos, g_neg (or null)
  const void* beta;  // kRowClampVec: (n) acc, or null
  void* dz[2];
  int64_t n, d;
  int views, row_mode;
  double mu;
};
cudaError_t row_bwd(const RowBwdArgs& a, int dtype, cudaStream_t stream);

// out = (g + gᵀ) * scale for a square acc matrix g (m x m), written in dtype (T), through
// 32 x 32 shared-memory tiles (both reads and the write coalesced).
cudaError_t sym_scale(const void* g, int64_t m, double scale, int dtype, void* out,
                      cudaStream_t stream);

}  // namespace duality_kernels
