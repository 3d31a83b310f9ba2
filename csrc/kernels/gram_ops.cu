// The covariance family's fused kernels around the GEMMs (see gram_ops.h for the contract of
// each entry point and the math it implements).
//
// Layouts:
// - column kernels (center_scale, col_sum, bn_bwd, vicreg_bwd, duality_bwd): blocks of
//   kCols x kLanes threads; thread (tx, ty) owns column blockIdx.x*kCols + tx and every kLanes-th
//   row of the block's rows, so a warp reads kCols consecutive elements of a row (coalesced).
//   blockIdx.z is the view.
// - column reductions are two-stage (DESIGN 7): per (row chunk, column) partials in a fixed lane
//   order, then a merge over chunks in chunk order; the chunking depends on (n, d) only.
// - row kernels (row_stats, row_bwd): one block of kRowThreads per row, block tree reductions.
// - sum_partials: a grid-stride sum per thread, a tree per block, one float64 partial per block;
//   finalize adds the partials in order on one block.
// All tuning constants are unmeasured starting points (untested on GPU as of 2026-11-30).

#include "gram_ops.h"

#include "common.cuh"

#include <climits>
#include <cstdint>

namespace duality_kernels {
namespace {

using detail::AccType;
using detail::ceil_div;
using detail::from_acc;
using detail::to_acc;

constexpr int kCols = 32;
constexpr int kLanes = 8;
constexpr int kThreads = kCols * kLanes;
constexpr int kRowThreads = 256;
constexpr int64_t kApplyTargetBlocks = 8192;  // elementwise column kernels: grid cap
constexpr int64_t kMaxGridY = 65535;
constexpr int kSumThreads = 256;
constexpr int64_t kSumPerThread = 16;
constexpr int64_t kMaxSumBlocks = 1024;
constexpr int kFinThreads = 256;

// Row chunking of the two-stage column reductions (column tiles of kCols columns x row
// chunks): a function of (n, d) only, so every bit of a reduction is fixed by the shape (DESIGN 7).
// Aim at about kPlanTargetBlocks stage-1 blocks (an H200 holds 132 SMs x 8 blocks of 256 threads)
// with at least kPlanMinRows rows per chunk. Unmeasured starting points. Requires n, d >= 1.
constexpr int64_t kPlanTargetBlocks = 1024;
constexpr int64_t kPlanMinRows = 64;

struct ColPlan {
  int64_t col_tiles, rows_per_chunk, num_chunks;
};

ColPlan col_plan(int64_t n, int64_t d) {
  ColPlan p;
  p.col_tiles = ceil_div(d, kCols);
  int64_t chunks = kPlanTargetBlocks / p.col_tiles;
  if (chunks < 1) chunks = 1;
  const int64_t by_rows = ceil_div(n, kPlanMinRows);
  if (chunks > by_rows) chunks = by_rows;
  if (chunks > kMaxGridY) chunks = kMaxGridY;
  p.rows_per_chunk = ceil_div(n, chunks);
  // Recount so that no chunk is empty: the last one has n - (num_chunks-1)*rows_per_chunk >= 1.
  p.num_chunks = ceil_div(n, p.rows_per_chunk);
  return p;
}

// Block-wide sum of one value per thread (every thread gets the result). All threads of the block
// must call it; `nthreads` is a power of two and the block's size.
template <typename V, int nthreads>
__device__ __forceinline__ V block_sum(V v, int tid) {
  __shared__ V buf[nthreads];
  buf[tid] = v;
  __syncthreads();
  for (int s = nthreads / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] = buf[tid] + buf[tid + s];
    __syncthreads();
  }
  const V r = buf[0];
  __syncthreads();  // buf may be reused by the next call
  return r;
}

template <typename acc_t>
__device__ __forceinline__ acc_t row_scale(int mode, acc_t q, acc_t radius) {
  if (mode == kRowL2) {
    const acc_t nrm = sqrt(q);
    return acc_t(1) / (nrm > acc_t(1e-12) ? nrm : acc_t(1e-12));
  }
  if (mode == kRowClamp) {
    const acc_t nrm = sqrt(q);
    if (nrm < radius) return acc_t(1);
    return radius / (nrm > acc_t(1e-12) ? nrm : acc_t(1e-12));
  }
  return acc_t(1);
}

// Grid of an elementwise column kernel over (n, d) with `views` views.
dim3 apply_grid(int64_t n, int64_t d, int views) {
  const int64_t col_tiles = ceil_div(d, kCols);
  int64_t gy = kApplyTargetBlocks / (col_tiles * views);
  if (gy < 1) gy = 1;
  const int64_t row_tiles = ceil_div(n, kLanes);
  if (gy > row_tiles) gy = row_tiles;
  if (gy > kMaxGridY) gy = kMaxGridY;
  return dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(gy),
              static_cast<unsigned>(views));
}

// Sum over the kLanes lanes of each column of a kCols x kLanes block, in lane order; the result
// is valid in lane 0. Every thread must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t lane_sum(acc_t v) {
  __shared__ acc_t buf[kLanes][kCols];
  buf[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  acc_t r = acc_t(0);
  if (threadIdx.y == 0)
    for (int l = 0; l < kLanes; ++l) r += buf[l][threadIdx.x];
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------------------------------------
// center_scale

template <typename T>
__global__ void __launch_bounds__(kThreads) center_scale_kernel(CenterScaleArgs a) {
  using acc_t = typename AccType<T>::type;
  const int v = blockIdx.z;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= a.d) return;  // no barriers below
  const T* z = static_cast<const T*>(a.z[v]);
  T* out = static_cast<T*>(a.out[v]);
  // Centering and BatchNorm in float64 from float64 statistics, one rounding into T: rounded
  // per-column statistics would scale or shift a whole column by the same error, which biases
  // the sums of squares over it (measured: 2 ulp on Barlow's fp32 off_diagonal, 2026-11-30).
  if (a.col_mode != kColNone) {
    const double n = static_cast<double>(a.n);
    const double mu = a.mean[v][col];
    const double den = a.col_mode == kColBN ? sqrt(a.m2[v][col] / n + a.eps) : 1.0;
    // float64 inputs divide like the reference; narrower ones multiply by the float64 reciprocal
    // (its rounding, 1e-16, is far below theirs, and it spares a float64 division per element).
    const bool divide = sizeof(T) == sizeof(double);
    const double inv = 1.0 / den;
    const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
    for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < a.n; r += step) {
      const int64_t i = r * a.d + col;
      const double c = static_cast<double>(to_acc(z[i])) - mu;
      out[i] = from_acc<T>(static_cast<acc_t>(divide ? c / den : c * inv));
    }
    return;
  }
  const acc_t* rowq = static_cast<const acc_t*>(a.rowq[v]);
  const acc_t radius = static_cast<acc_t>(a.radius);
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < a.n; r += step) {
    const acc_t s = a.row_mode == kRowNone ? acc_t(1) : row_scale<acc_t>(a.row_mode, rowq[r], radius);
    const int64_t i = r * a.d + col;
    out[i] = from_acc<T>(to_acc(z[i]) * s);
  }
}

// ---------------------------------------------------------------------------------------------
// row_stats

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    row_stats_kernel(const T* __restrict__ z1, const T* __restrict__ z2, int64_t d,
                     typename AccType<T>::type* __restrict__ q1,
                     typename AccType<T>::type* __restrict__ q2,
                     typename AccType<T>::type* __restrict__ q12) {
  using acc_t = typename AccType<T>::type;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const T* r1 = z1 + row * d;
  acc_t s1 = 0, s2 = 0, s12 = 0;
  if (z2 == nullptr) {
    for (int64_t k = tid; k < d; k += kRowThreads) {
      const acc_t x = to_acc(r1[k]);
      s1 += x * x;
    }
  } else {
    const T* r2 = z2 + row * d;
    for (int64_t k = tid; k < d; k += kRowThreads) {
      const acc_t x = to_acc(r1[k]);
      const acc_t y = to_acc(r2[k]);
      s1 += x * x;
      s2 += y * y;
      s12 += x * y;
    }
  }
  s1 = block_sum<acc_t, kRowThreads>(s1, tid);
  if (z2 != nullptr) {
    s2 = block_sum<acc_t, kRowThreads>(s2, tid);
    s12 = block_sum<acc_t, kRowThreads>(s12, tid);
  }
  if (tid == 0) {
    q1[row] = s1;
    if (z2 != nullptr) {
      q2[row] = s2;
      q12[row] = s12;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// col_sum (two-stage) and the shared merge kernel

// dst[(view * chunks + chunk) * d + col], view = blockIdx.z.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    col_sum_partial_kernel(ColSumArgs args, int64_t rows_per_chunk, int64_t chunks,
                           double* __restrict__ dst) {
  const int64_t n = args.n, d = args.d;
  const int mode = args.mode;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int view = blockIdx.z;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = min(n, r0 + rows_per_chunk);
  const T* a = static_cast<const T*>(args.a[view]);
  const T* b = static_cast<const T*>(args.b[view]);
  double s = 0;
  if (col < d) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kLanes) {
      const int64_t i = r * d + col;
      const double x = static_cast<double>(to_acc(a[i]));
      if (mode == kColSumSq) {
        s += x * x;
      } else {
        s += x * static_cast<double>(to_acc(b[i]));
      }
    }
  }
  s = lane_sum(s);
  if (threadIdx.y == 0 && col < d) dst[(view * chunks + chunk) * d + col] = s;
}

// col_moments. Stage 1: per (view, chunk, column) S = Σ(z - s), Q = Σ(z - s)² with the shift
// s = z[0, col], and for view 0 with sqdiff R = Σ(z0 - z1)², into
// part[((view * 3 + j) * chunks + chunk) * d + col]; with one chunk the statistics directly.
template <typename T>
__device__ __forceinline__ void moments_out(const ColMomentsArgs& a, int view, int64_t col,
                                            double shift, double S, double Q, double R) {
  const double n = static_cast<double>(a.n);
  const double m2 = Q - S * S / n;
  a.mean[view * a.d + col] = shift + S / n;
  a.m2[view * a.d + col] = m2 > 0 ? m2 : 0.0;
  if (a.sqdiff && view == 0) a.sq[col] = R;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    col_moments_partial_kernel(ColMomentsArgs a, int64_t rows_per_chunk, int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int view = blockIdx.z;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = min(a.n, r0 + rows_per_chunk);
  const T* z = static_cast<const T*>(a.z[view]);
  const T* other = static_cast<const T*>(a.z[1]);
  const bool with_r = a.sqdiff && view == 0;
  double S = 0, Q = 0, R = 0, shift = 0;
  if (col < a.d) {
    shift = static_cast<double>(to_acc(z[col]));
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kLanes) {
      const int64_t i = r * a.d + col;
      const double x = static_cast<double>(to_acc(z[i]));
      S += x - shift;
      Q += (x - shift) * (x - shift);
      if (with_r) {
        const double y = x - static_cast<double>(to_acc(other[i]));
        R += y * y;
      }
    }
  }
  S = lane_sum(S);
  Q = lane_sum(Q);
  R = lane_sum(R);
  if (threadIdx.y != 0 || col >= a.d) return;
  if (chunks == 1) {
    moments_out<T>(a, view, col, shift, S, Q, R);
    return;
  }
  double* part = a.workspace;
  part[((view * 3 + 0) * chunks + chunk) * a.d + col] = S;
  part[((view * 3 + 1) * chunks + chunk) * a.d + col] = Q;
  part[((view * 3 + 2) * chunks + chunk) * a.d + col] = R;
}

// Stage 2: merge the chunks of each (view, column) in chunk order, then the statistics.
template <typename T>
__global__ void __launch_bounds__(kThreads) col_moments_merge_kernel(ColMomentsArgs a, int64_t chunks) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int view = blockIdx.z;
  double S = 0, Q = 0, R = 0;
  if (col < a.d) {
    const double* part = a.workspace;
    for (int64_t c = threadIdx.y; c < chunks; c += kLanes) {
      S += part[((view * 3 + 0) * chunks + c) * a.d + col];
      Q += part[((view * 3 + 1) * chunks + c) * a.d + col];
      R += part[((view * 3 + 2) * chunks + c) * a.d + col];
    }
  }
  S = lane_sum(S);
  Q = lane_sum(Q);
  R = lane_sum(R);
  if (threadIdx.y != 0 || col >= a.d) return;
  const double shift = static_cast<double>(to_acc(static_cast<const T*>(a.z[view])[col]));
  moments_out<T>(a, view, col, shift, S, Q, R);
}

// out[g][k] = Σ_c part[g][c][k] in chunk order, for groups g = blockIdx.z.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    merge_cols_kernel(const acc_t* __restrict__ part, int64_t chunks, int64_t d,
                      acc_t* __restrict__ out) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t g = blockIdx.z;
  acc_t s = 0;
  if (col < d)
    for (int64_t c = threadIdx.y; c < chunks; c += kLanes) s += part[(g * chunks + c) * d + col];
  s = lane_sum(s);
  if (threadIdx.y == 0 && col < d) out[g * d + col] = s;
}

// ---------------------------------------------------------------------------------------------
// sum_partials

template <typename acc_t>
__global__ void __launch_bounds__(kSumThreads)
    sum_partials_kernel(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t count,
                        int64_t m, double* __restrict__ part) {
  // float64 from the first product: the losses subtract a diagonal from this sum (offsq =
  // ‖G‖² - Σ diag², SPEC §2), which cancels most of it, so its rounding must stay far below
  // the result's; fp32 partial sums here measured up to 30x eager's error (simulator, 2026-11-30).
  const int tid = threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kSumThreads;
  double s = 0, off = 0;  // off: summed separately, never as s minus the diagonal
  if (m == 0) {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kSumThreads + tid; i < count; i += step) {
      const double x = static_cast<double>(a[i]);
      s += b == nullptr ? x * x : x * static_cast<double>(b[i]);
    }
    off = s;
  } else {
    // Row by row (blocks stride over the rows of the stacked m x m matrices, threads over a row's
    // columns): the diagonal column of row r is r % m, one integer division per row, not per
    // element.
    const int64_t rows = count / m;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
      const int64_t diag = r % m;
      const acc_t* ar = a + r * m;
      const acc_t* br = b == nullptr ? nullptr : b + r * m;
      for (int64_t c = tid; c < m; c += kSumThreads) {
        const double x = static_cast<double>(ar[c]);
        const double v = br == nullptr ? x * x : x * static_cast<double>(br[c]);
        s += v;
        if (c != diag) off += v;
      }
    }
  }
  const double t = block_sum<double, kSumThreads>(s, tid);
  const double u = block_sum<double, kSumThreads>(off, tid);
  if (tid == 0) {
    part[blockIdx.x] = t;
    part[gridDim.x + blockIdx.x] = u;
  }
}

// ---------------------------------------------------------------------------------------------
// finalize

// Σ_{i<len} f(i) on one block of kFinThreads, deterministic.
template <typename F>
__device__ __forceinline__ double fin_sum(int64_t len, F f) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < len; i += kFinThreads) s += f(i);
  return block_sum<double, kFinThreads>(s, threadIdx.x);
}

template <typename acc_t>
__global__ void __launch_bounds__(kFinThreads) finalize_kernel(FinalizeArgs a) {
  const double full = fin_sum(a.nparts, [&](int64_t i) { return a.part[i]; });
  const double off = fin_sum(a.nparts, [&](int64_t i) { return a.part[a.nparts + i]; });
  const double n = static_cast<double>(a.n);
  const double d = static_cast<double>(a.d);
  const acc_t* v0 = static_cast<const acc_t*>(a.v[0]);
  const acc_t* v1 = static_cast<const acc_t*>(a.v[1]);
  const acc_t* v2 = static_cast<const acc_t*>(a.v[2]);
  const double* dv0 = a.dv[0];
  const double* dv1 = a.dv[1];
  double out[4] = {0, 0, 0, 0};
  if (a.mode == kFinVICReg) {
    const double gamma = a.w[3], eps = a.w[4];
    const double inv = fin_sum(a.d, [&](int64_t k) { return dv0[k]; }) / (n * d);
    const double hinge = fin_sum(2 * a.d, [&](int64_t k) {
      const double s = sqrt(a.dv[2][k] / (n - 1) + eps);
      return gamma - s > 0 ? gamma - s : 0.0;
    });
    // offsq(xᵀx) of both views: the D×D Grams without their diagonals, or ‖x xᵀ‖² - Σ_k (Σ_i x²)²
    const double offsq = a.sample ? full - fin_sum(2 * a.d, [&](int64_t k) { return dv1[k] * dv1[k]; })
                                  : off;
    const double var = hinge / d / 2;
    const double cov = offsq / ((n - 1) * (n - 1) * d);
    out[0] = a.w[0] * inv + a.w[1] * var + a.w[2] * cov;
    out[1] = inv;
    out[2] = var;
    out[3] = cov;
  } else if (a.mode == kFinBarlow) {
    auto c = [&](int64_t k) {
      return (dv0 ? dv0[k] : static_cast<double>(v0[k * a.stride])) / n;
    };
    acc_t* cdiag = static_cast<acc_t*>(a.out[3]);
    for (int64_t k = threadIdx.x; k < a.d; k += kFinThreads) cdiag[k] = static_cast<acc_t>(c(k));
    const double on = fin_sum(a.d, [&](int64_t k) { return (1 - c(k)) * (1 - c(k)); });
    const double offsq = a.sample ? full / (n * n) - fin_sum(a.d, [&](int64_t k) { return c(k) * c(k); })
                                  : off / (n * n);
    out[0] = on + a.w[0] * offsq;
    out[1] = on;
    out[2] = offsq;
  } else if (a.mode == kFinSpectral) {
    const double mu = a.w[0];
    const acc_t r = static_cast<acc_t>(sqrt(mu));
    auto p = [&](int64_t i) {
      return static_cast<double>(row_scale<acc_t>(kRowClamp, v0[i], r)) *
             static_cast<double>(row_scale<acc_t>(kRowClamp, v1[i], r)) *
             static_cast<double>(v2[i]);
    };
    const double psum = fin_sum(a.n, p);
    // offsq(a bᵀ): the N×N product without its diagonal, or ⟨aᵀa, bᵀb⟩ - Σ_i p_i²
    const double offsq = a.sample ? off : full - fin_sum(a.n, [&](int64_t i) {
      const double x = p(i);
      return x * x;
    });
    const double pos = -2.0 * psum / n / mu;
    const double neg = offsq / (n * (n - 1)) / mu;
    out[0] = pos + neg;
    out[1] = pos;
    out[2] = neg;
  } else {  // kFinDuality: the side's own criterion is the off-diagonal sum, the other one the
            // identity of paper Thm 3.3 (full sum minus the other side's diagonal)
    const double r4 = fin_sum(a.n, [&](int64_t i) {
      const double q = static_cast<double>(v0[i]);
      return q * q;
    });
    const double c4 = fin_sum(a.d, [&](int64_t k) { return dv0[k] * dv0[k]; });
    out[0] = a.sample ? off : full - r4;
    out[1] = a.sample ? full - c4 : off;
    out[2] = r4;
    out[3] = c4;
  }
  if (threadIdx.x == 0) {
    const int nout = (a.mode == kFinVICReg || a.mode == kFinDuality) ? 4 : 3;
    for (int j = 0; j < nout; ++j) static_cast<acc_t*>(a.out[j])[0] = static_cast<acc_t>(out[j]);
  }
}

// ---------------------------------------------------------------------------------------------
// backward epilogues

template <typename T>
__global__ void __launch_bounds__(kThreads) vicreg_bwd_kernel(VICRegBwdArgs a) {
  using acc_t = typename AccType<T>::type;
  const int v = blockIdx.z;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= a.d) return;
  const acc_t gl = *static_cast<const acc_t*>(a.g[0]);
  const acc_t w_inv = gl * static_cast<acc_t>(a.inv_w) + *static_cast<const acc_t*>(a.g[1]);
  const acc_t w_var = gl * static_cast<acc_t>(a.var_w) + *static_cast<const acc_t*>(a.g[2]);
  const acc_t w_cov = gl * static_cast<acc_t>(a.cov_w) + *static_cast<const acc_t*>(a.g[3]);
  const acc_t n = static_cast<acc_t>(a.n), d = static_cast<acc_t>(a.d);
  const acc_t m2 = static_cast<acc_t>(a.m2[v * a.d + col]);
  const acc_t s = sqrt(m2 / (n - 1) + static_cast<acc_t>(a.eps));
  const acc_t h = static_cast<acc_t>(a.gamma) - s > 0 ? acc_t(1) : acc_t(0);
  const acc_t kappa = acc_t(1) / ((n - 1) * (n - 1) * d);
  const acc_t sq = a.sq != nullptr ? static_cast<acc_t>(a.sq[v * a.d + col]) : acc_t(0);
  const acc_t cx = -w_var * h / (2 * d * (n - 1) * s);
  const acc_t cp = 4 * w_cov * kappa;
  const acc_t ci = (v == 0 ? acc_t(2) : acc_t(-2)) * w_inv / (n * d);
  const T* z1 = static_cast<const T*>(a.z[0]);
  const T* z2 = static_cast<const T*>(a.z[1]);
  const T* x = static_cast<const T*>(a.x[v]);
  const acc_t* p = static_cast<const acc_t*>(a.p[v]);
  T* dz = static_cast<T*>(a.dz[v]);
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < a.n; r += step) {
    const int64_t i = r * a.d + col;
    const acc_t xi = to_acc(x[i]);
    // P's diagonal part cancels against sq x first, at P's magnitude: scaled and added to the
    // other terms, its two halves would leave their rounding behind (26x eager's fp32 error at
    // N = 2, D = 1, tests/test_properties.py, 2026-11-30)
    dz[i] = from_acc<T>(ci * (to_acc(z1[i]) - to_acc(z2[i])) + cx * xi + cp * (p[i] - sq * xi));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) duality_bwd_kernel(DualityBwdArgs a) {
  using acc_t = typename AccType<T>::type;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= a.d) return;
  const acc_t g_lc = *static_cast<const acc_t*>(a.g[0]);
  const acc_t g_lnc = *static_cast<const acc_t*>(a.g[1]);
  const acc_t g_r4 = *static_cast<const acc_t*>(a.g[2]);
  const acc_t g_c4 = *static_cast<const acc_t*>(a.g[3]);
  const acc_t cp = 4 * (g_lc + g_lnc);
  const acc_t cq = 4 * (a.sample ? g_lnc + g_r4 : g_r4 - g_lc);
  const acc_t cc = 4 * (a.sample ? g_c4 - g_lnc : g_c4 + g_lc) * static_cast<acc_t>(a.c[col]);
  const acc_t* q = static_cast<const acc_t*>(a.q);
  const T* z = static_cast<const T*>(a.z);
  const acc_t* p = static_cast<const acc_t*>(a.p);
  T* dz = static_cast<T*>(a.dz);
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < a.n; r += step) {
    const int64_t i = r * a.d + col;
    dz[i] = from_acc<T>(cp * p[i] + to_acc(z[i]) * (cq * q[r] + cc));
  }
}

// BatchNorm backward coefficients (see BNBwdArgs), in float64 like the whole BatchNorm backward:
// its result is a residual that cancels to O(eps/var) of its terms when da is nearly parallel to
// a (N = 2, or a ≈ b near convergence), so every rounding inside it is amplified.
struct BNCoef {
  double alpha, beta, c;
};

template <typename acc_t>
__device__ __forceinline__ BNCoef bn_coef(const BNBwdArgs& a, int v, int64_t col) {
  const double n = static_cast<double>(a.n);
  BNCoef k;
  k.c = 1.0 / sqrt(a.m2[v * a.d + col] / n + a.eps);
  if (a.barlow) {
    const double gl = static_cast<double>(*static_cast<const acc_t*>(a.g[0]));
    const double w_on = gl + static_cast<double>(*static_cast<const acc_t*>(a.g[1]));
    const double w_off = a.lambda * gl + static_cast<double>(*static_cast<const acc_t*>(a.g[2]));
    const double cd = static_cast<double>(static_cast<const acc_t*>(a.cdiag)[col]);
    k.alpha = 2 * w_off / (n * n);
    k.beta = (-2 * w_on * (1 - cd) - 2 * w_off * cd) / n;
  } else {
    k.alpha = 1.0 / n;
    k.beta = 0;
  }
  return k;
}

// Stage 1 of the BatchNorm backward: per (chunk, column, view) the sums of da, da * a and a, into
// dst[(v * 3 + j) * chunks + chunk][col]. mean_i a is 0 in exact arithmetic, but subtracting the
// rounded a's own mean keeps the final residual's cancellation consistent (the Triton twin of this
// kernel measured ~1x eager's fp32 error at N = 2 with the term, up to 4.4x without, 2026-11-30).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bn_bwd_partial_kernel(BNBwdArgs a, int64_t rows_per_chunk, int64_t chunks,
                          double* __restrict__ dst) {
  using acc_t = typename AccType<T>::type;
  const int v = blockIdx.z;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = min(a.n, r0 + rows_per_chunk);
  double s1 = 0, s2 = 0, s3 = 0;
  if (col < a.d) {
    const BNCoef k = bn_coef<acc_t>(a, v, col);
    const T* x = static_cast<const T*>(a.x[v]);
    const T* y = static_cast<const T*>(a.x[1 - v]);
    const acc_t* p = static_cast<const acc_t*>(a.p[v]);
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kLanes) {
      const int64_t i = r * a.d + col;
      const double da = k.alpha * static_cast<double>(p[i]) + k.beta * static_cast<double>(to_acc(y[i]));
      const double xa = static_cast<double>(to_acc(x[i]));
      s1 += da;
      s2 += da * xa;
      s3 += xa;
    }
  }
  s1 = lane_sum(s1);
  s2 = lane_sum(s2);
  s3 = lane_sum(s3);
  if (threadIdx.y == 0 && col < a.d) {
    dst[((v * 3 + 0) * chunks + chunk) * a.d + col] = s1;
    dst[((v * 3 + 1) * chunks + chunk) * a.d + col] = s2;
    dst[((v * 3 + 2) * chunks + chunk) * a.d + col] = s3;
  }
}

// Stage 2: dz = c (da - mean da - (a - mean a) mean(da a)) from da (recomputed bit for bit) and
// the column sums sums[(v * 3 + j) * d + col].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bn_bwd_apply_kernel(BNBwdArgs a, const double* __restrict__ sums) {
  using acc_t = typename AccType<T>::type;
  const int v = blockIdx.z;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= a.d) return;
  const BNCoef k = bn_coef<acc_t>(a, v, col);
  const double n = static_cast<double>(a.n);
  const double m1 = sums[(v * 3 + 0) * a.d + col] / n;
  const double m2 = sums[(v * 3 + 1) * a.d + col] / n;
  const double ma = sums[(v * 3 + 2) * a.d + col] / n;
  const T* x = static_cast<const T*>(a.x[v]);
  const T* y = static_cast<const T*>(a.x[1 - v]);
  const acc_t* p = static_cast<const acc_t*>(a.p[v]);
  T* dz = static_cast<T*>(a.dz[v]);
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < a.n; r += step) {
    const int64_t i = r * a.d + col;
    const double da = k.alpha * static_cast<double>(p[i]) + k.beta * static_cast<double>(to_acc(y[i]));
    const double xa = static_cast<double>(to_acc(x[i]));
    dz[i] = from_acc<T>(static_cast<acc_t>(k.c * (da - m1 - (xa - ma) * m2)));
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads) row_bwd_kernel(RowBwdArgs a) {
  using acc_t = typename AccType<T>::type;
  const int v = blockIdx.y;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const acc_t* q1 = static_cast<const acc_t*>(a.q[0]);
  const acc_t* qv = static_cast<const acc_t*>(a.q[v]);
  const acc_t nrm = sqrt(qv[row]);
  acc_t alpha = 1, beta = 0, s, project;
  if (a.row_mode == kRowClamp) {
    const acc_t n = static_cast<acc_t>(a.n);
    const acc_t mu = static_cast<acc_t>(a.mu);
    const acc_t r = sqrt(mu);
    const acc_t gl = *static_cast<const acc_t*>(a.g[0]);
    const acc_t w_pos = gl + *static_cast<const acc_t*>(a.g[1]);
    const acc_t w_neg = gl + *static_cast<const acc_t*>(a.g[2]);
    const acc_t* q2 = static_cast<const acc_t*>(a.q[1]);
    const acc_t* q12 = static_cast<const acc_t*>(a.q[2]);
    const acc_t p = row_scale<acc_t>(kRowClamp, q1[row], r) *
                    row_scale<acc_t>(kRowClamp, q2[row], r) * q12[row];
    alpha = 2 * w_neg / (n * (n - 1) * mu);
    beta = -2 * w_pos / (n * mu) - 2 * w_neg * p / (n * (n - 1) * mu);
    project = nrm < r ? acc_t(0) : acc_t(1);
    s = nrm < r ? acc_t(1) : r / nrm;
  } else {
    project = nrm > acc_t(1e-12) ? acc_t(1) : acc_t(0);
    s = acc_t(1) / (nrm > acc_t(1e-12) ? nrm : acc_t(1e-12));
  }
  const T* z = static_cast<const T*>(a.z[v]) + row * a.d;
  const acc_t* p = static_cast<const acc_t*>(a.p[v]) + row * a.d;
  const T* y = a.row_mode == kRowClamp ? static_cast<const T*>(a.y[v]) + row * a.d : nullptr;
  T* dz = static_cast<T*>(a.dz[v]) + row * a.d;
  // The projection da - u (u · da) with u = z / ‖z‖ divided out per element (nrm > 0 wherever
  // it projects): for one column u = ±1 exactly and the projection is exactly 0, as the
  // reference's; z (z · da) / ‖z‖² instead left ~1 ulp of da, times 1/‖z‖ (115x eager's fp32
  // error at D = 1, found by tests/test_properties.py, 2026-11-30).
  acc_t dot = 0;
  if (project != 0) {
    for (int64_t k = tid; k < a.d; k += kRowThreads) {
      const acc_t da = alpha * p[k] + (y ? beta * to_acc(y[k]) : acc_t(0));
      dot += to_acc(z[k]) / nrm * da;
    }
  }
  dot = block_sum<acc_t, kRowThreads>(dot, tid);
  for (int64_t k = tid; k < a.d; k += kRowThreads) {
    const acc_t da = alpha * p[k] + (y ? beta * to_acc(y[k]) : acc_t(0));
    const acc_t u = project != 0 ? to_acc(z[k]) / nrm : acc_t(0);
    dz[k] = from_acc<T>(s * (da - u * dot));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_stats_bwd_kernel(const T* __restrict__ z, const double* __restrict__ mean,
                            const typename AccType<T>::type* __restrict__ grad_mean,
                            const typename AccType<T>::type* __restrict__ grad_m2, int64_t n,
                            int64_t d, T* __restrict__ dz) {
  using acc_t = typename AccType<T>::type;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= d) return;
  const double mu = mean[col];
  const acc_t a = grad_mean[col] / static_cast<acc_t>(n);
  const acc_t b = static_cast<acc_t>(2) * grad_m2[col];
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < n; r += step) {
    const int64_t i = r * d + col;
    dz[i] = from_acc<T>(a + b * static_cast<acc_t>(static_cast<double>(to_acc(z[i])) - mu));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sym_scale_kernel(const typename AccType<T>::type* __restrict__ g, int64_t m, double scale,
                     T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= m) return;
  const acc_t sc = static_cast<acc_t>(scale);
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < m; r += step)
    out[r * m + col] = from_acc<T>((g[r * m + col] + g[col * m + r]) * sc);
}

// ---------------------------------------------------------------------------------------------
// launchers

#define DK_DISPATCH(dtype, FN, ...)                   \
  switch (dtype) {                                    \
    case kFloat32:                                    \
      return FN<float>(__VA_ARGS__);                  \
    case kFloat64:                                    \
      return FN<double>(__VA_ARGS__);                 \
    case kFloat16:                                    \
      return FN<__half>(__VA_ARGS__);                 \
    case kBFloat16:                                   \
      return FN<__nv_bfloat16>(__VA_ARGS__);          \
    default:                                          \
      return cudaErrorInvalidValue;                   \
  }

bool grid_ok(int64_t tiles) { return tiles <= INT_MAX; }

template <typename T>
cudaError_t launch_center_scale(const CenterScaleArgs& a, cudaStream_t stream) {
  if (!grid_ok(ceil_div(a.d, kCols))) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(center_scale_kernel<T>, apply_grid(a.n, a.d, a.views), dim3(kCols, kLanes), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_row_stats(const void* z1, const void* z2, int64_t n, int64_t d, void* q1,
                             void* q2, void* q12, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  if (n > INT_MAX) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(row_stats_kernel<T>, dim3(static_cast<unsigned>(n)), dim3(kRowThreads), stream,
            static_cast<const T*>(z1), static_cast<const T*>(z2), d, static_cast<acc_t*>(q1),
            static_cast<acc_t*>(q2), static_cast<acc_t*>(q12));
  return cudaGetLastError();
}

template <typename acc_t>
cudaError_t launch_merge(const acc_t* part, int64_t chunks, int64_t d, int groups, acc_t* out,
                         cudaStream_t stream) {
  DK_LAUNCH(merge_cols_kernel<acc_t>,
            dim3(static_cast<unsigned>(ceil_div(d, kCols)), 1, static_cast<unsigned>(groups)),
            dim3(kCols, kLanes), stream, part, chunks, d, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_col_sum(const ColSumArgs& a, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d);
  if (!grid_ok(p.col_tiles)) return cudaErrorInvalidConfiguration;
  double* dst = p.num_chunks == 1 ? a.out : a.workspace;
  if (dst == nullptr) return cudaErrorInvalidValue;
  DK_LAUNCH(col_sum_partial_kernel<T>,
            dim3(static_cast<unsigned>(p.col_tiles), static_cast<unsigned>(p.num_chunks),
                 static_cast<unsigned>(a.views)),
            dim3(kCols, kLanes), stream, a, p.rows_per_chunk, p.num_chunks, dst);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.num_chunks == 1) return err;
  return launch_merge<double>(dst, p.num_chunks, a.d, a.views, a.out, stream);
}

template <typename T>
cudaError_t launch_col_moments(const ColMomentsArgs& a, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d);
  if (!grid_ok(p.col_tiles)) return cudaErrorInvalidConfiguration;
  if (p.num_chunks > 1 && a.workspace == nullptr) return cudaErrorInvalidValue;
  const dim3 block(kCols, kLanes);
  DK_LAUNCH(col_moments_partial_kernel<T>,
            dim3(static_cast<unsigned>(p.col_tiles), static_cast<unsigned>(p.num_chunks),
                 static_cast<unsigned>(a.views)),
            block, stream, a, p.rows_per_chunk, p.num_chunks);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.num_chunks == 1) return err;
  DK_LAUNCH(col_moments_merge_kernel<T>,
            dim3(static_cast<unsigned>(p.col_tiles), 1, static_cast<unsigned>(a.views)), block,
            stream, a, p.num_chunks);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sum_partials(const void* a, const void* b, int64_t count, int64_t m,
                                double* part, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  DK_LAUNCH(sum_partials_kernel<acc_t>, dim3(static_cast<unsigned>(sum_parts(count))),
            dim3(kSumThreads), stream, static_cast<const acc_t*>(a), static_cast<const acc_t*>(b),
            count, m, part);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_finalize(const FinalizeArgs& a, cudaStream_t stream) {
  DK_LAUNCH(finalize_kernel<typename AccType<T>::type>, dim3(1), dim3(kFinThreads), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_vicreg_bwd(const VICRegBwdArgs& a, cudaStream_t stream) {
  if (!grid_ok(ceil_div(a.d, kCols))) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(vicreg_bwd_kernel<T>, apply_grid(a.n, a.d, 2), dim3(kCols, kLanes), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_duality_bwd(const DualityBwdArgs& a, cudaStream_t stream) {
  if (!grid_ok(ceil_div(a.d, kCols))) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(duality_bwd_kernel<T>, apply_grid(a.n, a.d, 1), dim3(kCols, kLanes), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bn_bwd(const BNBwdArgs& a, void* workspace, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d);
  if (!grid_ok(p.col_tiles) || workspace == nullptr) return cudaErrorInvalidConfiguration;
  double* sums = static_cast<double*>(workspace);  // (2 views x 3) x d
  double* part = sums + 6 * a.d;                   // (2 x 3) x chunks x d, when chunks > 1
  double* dst = p.num_chunks == 1 ? sums : part;
  DK_LAUNCH(bn_bwd_partial_kernel<T>,
            dim3(static_cast<unsigned>(p.col_tiles), static_cast<unsigned>(p.num_chunks), 2),
            dim3(kCols, kLanes), stream, a, p.rows_per_chunk, p.num_chunks, dst);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (p.num_chunks > 1) {
    err = launch_merge<double>(part, p.num_chunks, a.d, 6, sums, stream);
    if (err != cudaSuccess) return err;
  }
  DK_LAUNCH(bn_bwd_apply_kernel<T>, apply_grid(a.n, a.d, 2), dim3(kCols, kLanes), stream, a,
            static_cast<const double*>(sums));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_row_bwd(const RowBwdArgs& a, cudaStream_t stream) {
  if (a.n > INT_MAX) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(row_bwd_kernel<T>, dim3(static_cast<unsigned>(a.n), static_cast<unsigned>(a.views)),
            dim3(kRowThreads), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_column_stats_bwd(const void* z, const double* mean, const void* grad_mean,
                                    const void* grad_m2, int64_t n, int64_t d, void* dz,
                                    cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  if (!grid_ok(ceil_div(d, kCols))) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(column_stats_bwd_kernel<T>, apply_grid(n, d, 1), dim3(kCols, kLanes), stream,
            static_cast<const T*>(z), mean, static_cast<const acc_t*>(grad_mean), static_cast<const acc_t*>(grad_m2), n, d,
            static_cast<T*>(dz));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sym_scale(const void* g, int64_t m, double scale, void* out,
                             cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  if (!grid_ok(ceil_div(m, kCols))) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(sym_scale_kernel<T>, apply_grid(m, m, 1), dim3(kCols, kLanes), stream,
            static_cast<const acc_t*>(g), m, scale, static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t center_scale(const CenterScaleArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_center_scale, a, stream)
}

cudaError_t row_stats(const void* z1, const void* z2, int64_t n, int64_t d, int dtype, void* q1,
                      void* q2, void* q12, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_row_stats, z1, z2, n, d, q1, q2, q12, stream)
}

int64_t col_moments_workspace_elems(int64_t n, int64_t d, int views) {
  if (n <= 0 || d <= 0) return 0;
  const ColPlan p = col_plan(n, d);
  return p.num_chunks > 1 ? 3 * views * p.num_chunks * d : 0;
}

cudaError_t col_moments(const ColMomentsArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_col_moments, a, stream)
}

int64_t col_sum_workspace_elems(int64_t n, int64_t d, int views) {
  if (n <= 0 || d <= 0) return 0;
  const ColPlan p = col_plan(n, d);
  return p.num_chunks > 1 ? views * p.num_chunks * d : 0;
}

cudaError_t col_sum(const ColSumArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_col_sum, a, stream)
}

int sum_parts(int64_t count) {
  int64_t blocks = ceil_div(count, kSumThreads * kSumPerThread);
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxSumBlocks) blocks = kMaxSumBlocks;
  return static_cast<int>(blocks);
}

cudaError_t sum_partials(const void* a, const void* b, int64_t count, int64_t m, int dtype,
                         double* part, cudaStream_t stream) {
  DK_DISPATCH(dtype, launch_sum_partials, a, b, count, m, part, stream)
}

cudaError_t finalize(const FinalizeArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH(dtype, launch_finalize, a, stream)
}

cudaError_t vicreg_bwd(const VICRegBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_vicreg_bwd, a, stream)
}

cudaError_t duality_bwd(const DualityBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_duality_bwd, a, stream)
}

int64_t bn_bwd_workspace_elems(int64_t n, int64_t d) {
  if (n <= 0 || d <= 0) return 0;
  const ColPlan p = col_plan(n, d);
  return 6 * d + (p.num_chunks > 1 ? 6 * p.num_chunks * d : 0);
}

cudaError_t bn_bwd(const BNBwdArgs& a, int dtype, void* workspace, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_bn_bwd, a, workspace, stream)
}

cudaError_t row_bwd(const RowBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_row_bwd, a, stream)
}

cudaError_t column_stats_bwd(const void* z, const double* mean, const void* grad_mean,
                             const void* grad_m2, int64_t n, int64_t d, int dtype, void* dz,
                             cudaStream_t stream) {
  if (n < 0 || d < 0) return cudaErrorInvalidValue;
  if (n == 0 || d == 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_column_stats_bwd, z, mean, grad_mean, grad_m2, n, d, dz, stream)
}

cudaError_t sym_scale(const void* g, int64_t m, double scale, int dtype, void* out,
                      cudaStream_t stream) {
  if (m <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_sym_scale, g, m, scale, out, stream)
}

}  // namespace duality_kernels
