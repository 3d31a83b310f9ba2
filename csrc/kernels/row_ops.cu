// The covariance family's row passes, one warp per row (gram_ops.h row_scale, row_bwd): the row
// norms, scales and clamps of spectral, normalized_gram and duality_terms, and the row-wise
// backward through them. Bytes and grids per kernel below; the layouts are in gram_ops.cu's
// overview.

#include "gram_launch.cuh"

namespace duality_kernels {
namespace {

// At most this many blocks, striding over the rows beyond (the finalize adds one partial per
// block).
constexpr int64_t kMaxRowBlocks = 2048;

// ---------------------------------------------------------------------------------------------
// row_scale (spectral's clamp, normalized_gram's l2n, duality_terms' row norms)
//
// Spectral 16384x256 bf16: reads both views (16 MiB), writes the clamped rows (16 MiB) and q
// (3 N acc, 0.2 MiB): 32 MiB; each row is read a second time by the same warp right after the first,
// from L1 (8 warps x 2 views x 512 bytes per block). Grid min(ceil(N / 8), 2048) = 2048 blocks.

template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) row_scale_kernel(RowScaleArgs a) {
  using acc_t = typename AccType<T>::type;
  // Row sums and scales in float64 for float32 inputs (Inner), rounded once into q and the
  // rows: a rounded scale would scale a whole row by the same error, biasing every Gram entry
  // of it (spectral's negative term 1.2 ulp off at 132 near-equal rows, and duality_terms' L_c
  // = ‖zᵀz‖² - Σ q_i² 2x eager's error at N = 2 from float32 q_i; tests/test_properties.py long
  // profile, 2026-12-01).
  using I = typename Inner<T>::type;
  constexpr int V = kVec<T>;
  const int lane = lane_id(), warp = warp_id();
  const int64_t n = a.n, d = a.d;
  const T* z0 = static_cast<const T*>(a.z[0]);
  const T* z1 = a.views > 1 ? static_cast<const T*>(a.z[1]) : nullptr;
  T* o0 = static_cast<T*>(a.out[0]);
  T* o1 = static_cast<T*>(a.out[1]);
  acc_t* q = static_cast<acc_t*>(a.q);
  const I radius = static_cast<I>(a.radius);
  double f0 = 0, f1 = 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp; r < n;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* zr0 = z0 + r * d;
    const T* zr1 = z1 != nullptr ? z1 + r * d : nullptr;
    I s1 = 0, s2 = 0, s12 = 0;
#pragma unroll 1
    for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
      I u[V];
      load_row<V, A>(zr0, c0, lane, d, u);
      if (zr1 != nullptr) {
        I w[V];
        load_row<V, A>(zr1, c0, lane, d, w);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          s2 += w[j] * w[j];
          s12 += u[j] * w[j];
        }
      }
#pragma unroll
      for (int j = 0; j < V; ++j) s1 += u[j] * u[j];
    }
    s1 = warp_sum(s1);
    if (zr1 != nullptr) {
      s2 = warp_sum(s2);
      s12 = warp_sum(s12);
    }
    // the scales before the lane-0 stores: computed after them, with the finalize sums live across
    // their sqrt/division slow-path calls, the fp16/bf16 scalar-access variants spilled 16 bytes (sm_86/89)
    const I sc0 = row_scale<I>(a.row_mode, s1, radius);
    const I sc1 = zr1 != nullptr ? row_scale<I>(a.row_mode, s2, radius) : I(0);
    if (lane == 0) {
      if (a.q64) static_cast<double*>(a.q)[r] = static_cast<double>(s1);
      else q[r] = static_cast<acc_t>(s1);
      if (zr1 != nullptr) {
        q[n + r] = static_cast<acc_t>(s2);
        q[2 * n + r] = static_cast<acc_t>(s12);
        if (a.p != nullptr)
          static_cast<acc_t*>(a.p)[r] = static_cast<acc_t>(
              static_cast<double>(row_scale<I>(kRowClamp, s1, radius)) *
              static_cast<double>(row_scale<I>(kRowClamp, s2, radius)) * static_cast<double>(s12));
      }
      if (a.fin_mode == kRowFinSpectral) {
        const double pr = static_cast<double>(row_scale<I>(kRowClamp, s1, radius)) *
                          static_cast<double>(row_scale<I>(kRowClamp, s2, radius)) *
                          static_cast<double>(s12);
        f0 += pr;
        f1 += pr * pr;
      } else if (a.fin_mode == kRowFinSumSq) {
        f0 += static_cast<double>(s1) * static_cast<double>(s1);
      }
    }
    if (o0 != nullptr) {
#pragma unroll 1
    for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
        acc_t u[V];
        load_row<V, A>(zr0, c0, lane, d, u);
#pragma unroll
        for (int j = 0; j < V; ++j) u[j] *= sc0;
        store_row<V, A>(o0 + r * d, c0, lane, d, u);
        if (zr1 != nullptr) {
          load_row<V, A>(zr1, c0, lane, d, u);
#pragma unroll
          for (int j = 0; j < V; ++j) u[j] *= sc1;
          store_row<V, A>(o1 + r * d, c0, lane, d, u);
        }
      }
    }
  }
  store_fin2(a.fin, f0, f1);
}

// ---------------------------------------------------------------------------------------------
// row_bwd: the backward of row_scale's scaling

// f(x) for each of this lane's entries x of the row zr (d columns, converted to I), a tile of
// 32 V columns at a time.
template <int V, bool A, typename I, typename T, typename F>
__device__ __forceinline__ void for_row_entries(const T* zr, int64_t d, int lane, F&& f) {
#pragma unroll 1
  for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
    I u[V];
    load_row<V, A>(zr, c0, lane, d, u);
#pragma unroll
    for (int j = 0; j < V; ++j) f(u[j]);
  }
}

// The norm of a row whose sum of squares overflowed: every entry scaled by the power of two 2^-e
// of the largest |entry| first (exact), as torch.linalg.vector_norm scales before squaring
// (docs/spec.md §8.2); Inner arithmetic (float64 for float32). An infinite entry gives inf. Every
// lane of the warp must call it; all get the same value.
template <int V, bool A, typename T>
__device__ __forceinline__ typename Inner<T>::type scaled_row_norm(const T* zr, int64_t d, int lane) {
  using I = typename Inner<T>::type;
  I m = 0;
  for_row_entries<V, A, I>(zr, d, lane, [&](I x) { m = fabs(x) > m ? fabs(x) : m; });
#pragma unroll
  for (int k = 16; k > 0; k >>= 1) {
    const I o = __shfl_xor_sync(0xffffffffu, m, k);
    m = o > m ? o : m;
  }
  if (!(m < I(INFINITY)) || m == I(0)) return m;
  int e;
  frexp(m, &e);
  const I down = ldexp(I(1), -e);
  I s = 0;
  for_row_entries<V, A, I>(zr, d, lane, [&](I x) { s += (x * down) * (x * down); });
  return ldexp(sqrt(warp_sum(s)), e);
}

// row_bwd's operands of this lane's columns: z (float64: u = z / ‖z‖ already, 0 where it does
// not project), P and y (0 without y); row_dir gives u. float64's division has slow-path calls, and
// every value live across them is saved: in float64 the divisions come right after z's load,
// before P and y are loaded (the <double> variants spilled 32-48 bytes otherwise, ptxas
// sm_80-sm_90); float32's stay next to their use (the fp16/bf16/fp32 variants spilled 12-24 bytes
// with them hoisted).
template <typename W>
constexpr bool kDivideFirst = sizeof(W) == 8;

template <int V, bool A, typename T, typename U, typename W>
__device__ __forceinline__ void row_operands(const T* zr, const U* pr, const T* yr, int64_t c0, int lane, int64_t d,
                                             W nrm, bool project, W (&u)[V], W (&pp)[V], W (&yy)[V]) {
  load_row<V, A>(zr, c0, lane, d, u);
  if (kDivideFirst<W>) {
#pragma unroll
    for (int j = 0; j < V; ++j) u[j] = project ? u[j] / nrm : W(0);
  }
  load_row<V, A>(pr, c0, lane, d, pp);
  load_row_or_zero<V, A>(yr, 0, c0, lane, d, yy);
}

template <typename W>
__device__ __forceinline__ W row_dir(W u, W nrm, bool project) {
  if (kDivideFirst<W>) return u;
  return project ? u / nrm : W(0);
}

// Row-wise backward: reads z, P (acc) and, for spectral, y per view and writes dz: 2 N D
// (3 sizeof(T) + sizeof(acc)) = 80 MiB at spectral 16384x256 bf16 (the second pass over each row
// comes from L1). One warp per row; grid (min(ceil(N / 8), 2048), views) = 2048 x 2.
template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) row_bwd_kernel(RowBwdArgs a) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>;
  // float64's division is a call: unrolled around it, the calls' saved registers spilled (24
  // bytes at V = 2, ptxas sm_90)
  constexpr int kUnroll = sizeof(acc_t) == 8 ? 1 : V;
  const int lane = lane_id(), warp = warp_id();
  const int v = blockIdx.y;
  const int64_t n = a.n, d = a.d;
  const acc_t* q1 = static_cast<const acc_t*>(a.q);
  const acc_t* q2 = q1 + n;
  const acc_t* q12 = q1 + 2 * n;
  const acc_t* qv = v == 0 ? q1 : q2;
  const bool clamp = a.row_mode == kRowClamp || a.row_mode == kRowClampVec;
  const acc_t* beta_vec = static_cast<const acc_t*>(a.beta);
  // The two clamp modes share one sqrt call site here and one expression for β below: with a
  // sqrt per mode, or a branch or select between the modes' β, the <double, vectorized> variant
  // spilled 32-48 bytes (float64 sqrt and division have slow-path calls; ptxas sm_90, 2026-12-01)
  const acc_t r_mu = clamp ? sqrt(static_cast<acc_t>(a.mu)) : acc_t(0);
  acc_t alpha = 1, beta0 = 0, beta1 = 0;
  if (a.row_mode == kRowClamp) {
    const acc_t nf = static_cast<acc_t>(a.n);
    const acc_t mu = static_cast<acc_t>(a.mu);
    const acc_t gl = grad_or_zero<acc_t>(a.g[0]);
    const acc_t w_pos = gl + grad_or_zero<acc_t>(a.g[1]);
    const acc_t w_neg = gl + grad_or_zero<acc_t>(a.g[2]);
    alpha = 2 * w_neg / (nf * (nf - 1) * mu);
    beta0 = -2 * w_pos / (nf * mu);
    beta1 = 2 * w_neg / (nf * (nf - 1) * mu);
  }
  const T* z = static_cast<const T*>(a.z[v]);
  const acc_t* p = static_cast<const acc_t*>(a.p[v]);
  const T* y = clamp ? static_cast<const T*>(a.y[v]) : nullptr;
  T* dz = static_cast<T*>(a.dz[v]);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp; r < n;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    acc_t nrm = sqrt(qv[r]);
    // q overflowed (float32 norms past ~1.8e19): the norm again, scaled before squaring
    if (nrm == acc_t(INFINITY)) nrm = static_cast<acc_t>(scaled_row_norm<V, A>(z + r * d, d, lane));
    acc_t beta = 0, s, project;
    if (clamp) {
      const acc_t pi = row_scale<acc_t>(kRowClamp, q1[r], r_mu) *
                       row_scale<acc_t>(kRowClamp, q2[r], r_mu) * q12[r];
      // kRowClampVec: beta0 = beta1 = 0, β = beta_vec (see the sqrt above for why one expression)
      beta = beta0 - beta1 * pi + (beta_vec != nullptr ? beta_vec[r] : acc_t(0));
      project = nrm < r_mu ? acc_t(0) : acc_t(1);
      s = nrm < r_mu ? acc_t(1) : r_mu / nrm;
    } else {
      // a NaN norm projects and scales by NaN (clamp_norm)
      project = nrm <= acc_t(1e-12) ? acc_t(0) : acc_t(1);
      s = acc_t(1) / clamp_norm(nrm);
    }
    const T* zr = z + r * d;
    const acc_t* pr = p + r * d;
    const T* yr = y != nullptr ? y + r * d : nullptr;
    // The projection da - u (u · da) with u = z / ‖z‖ divided out per element (nrm > 0 wherever
    // it projects): for one column u = ±1 exactly and the projection is exactly 0, as the
    // reference's; z (z · da) / ‖z‖² instead left ~1 ulp of da, times 1/‖z‖ (115x eager's fp32
    // error at D = 1, found by tests/test_properties.py, 2026-11-30).
    acc_t dot = 0;
    if (project != 0) {  // the same in the whole warp
#pragma unroll 1
      for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
        acc_t u[V], pp[V], yy[V];
        row_operands<V, A>(zr, pr, yr, c0, lane, d, nrm, true, u, pp, yy);
#pragma unroll kUnroll
        for (int j = 0; j < V; ++j) dot += row_dir(u[j], nrm, true) * (alpha * pp[j] + beta * yy[j]);
      }
      dot = warp_sum(dot);
    }
#pragma unroll 1
    for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
      acc_t u[V], pp[V], yy[V];
      row_operands<V, A>(zr, pr, yr, c0, lane, d, nrm, project != 0, u, pp, yy);
#pragma unroll kUnroll
      for (int j = 0; j < V; ++j) {
        const acc_t da = alpha * pp[j] + beta * yy[j];
        u[j] = s * (da - row_dir(u[j], nrm, project != 0) * dot);
      }
      store_row<V, A>(dz + r * d, c0, lane, d, u);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// launchers

template <typename T>
cudaError_t launch_row_scale(const RowScaleArgs& a, cudaStream_t stream) {
  const bool two = a.views > 1;
  const bool vec = vectorizable<T>(a.d, a.z[0], a.out[0], two ? a.z[1] : nullptr,
                                   two ? a.out[1] : nullptr);
  DK_LAUNCH_A(vec, row_scale_kernel, dim3(static_cast<unsigned>(row_blocks(a.n))), dim3(kThreads),
              stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_row_bwd(const RowBwdArgs& a, cudaStream_t stream) {
  const bool two = a.views > 1;
  const bool vec = vectorizable<T>(a.d, a.z[0], a.p[0], a.y[0], a.dz[0], two ? a.z[1] : nullptr,
                                   two ? a.p[1] : nullptr, two ? a.y[1] : nullptr,
                                   two ? a.dz[1] : nullptr);
  DK_LAUNCH_A(vec, row_bwd_kernel,
              dim3(static_cast<unsigned>(row_blocks(a.n)), static_cast<unsigned>(a.views)),
              dim3(kThreads), stream, a);
  return cudaGetLastError();
}

}  // namespace

int row_blocks(int64_t n) { return warp_row_blocks(n, kMaxRowBlocks); }

cudaError_t row_scale(const RowScaleArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0, dtype, launch_row_scale, a, stream)
}

cudaError_t row_bwd(const RowBwdArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_row_bwd, a, stream)
}

}  // namespace duality_kernels
