// The covariance family's column statistics and GEMM operand (gram_ops.h col_stats, col_merge,
// center): the two-stage column reductions (per-chunk float64 partials, then their merge in chunk
// order) and the centering / BatchNorm of the views into a GEMM operand. Bytes and grids per
// kernel below; the totals per headline shape and the layouts are in gram_ops.cu's overview.

#include "gram_launch.cuh"

namespace duality_kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// col_stats (stage 1) and col_merge (stage 2)
//
// VICReg (both views, with R): reads 2 N D sizeof(T) = 64 / 128 / 2 / 128 MiB at VICReg 2048x8192,
// 16384x2048, 2048x256 bf16 and 2048x8192 fp32, writes 5 x chunks x D float64 partials = 5 / 5 /
// 0.3 / 2.8 MiB; grid col_tiles x chunks = 32x16 / 8x64 / 1x32 / 64x9. Barlow 2048x8192 bf16 (no
// R): 64 + 4 MiB, 32x16. col_merge reads the partials again and writes mean and m2 (4 D float64),
// ceil(D / 256) blocks (32 / 8 / 1 / 32).

template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) col_stats_kernel(ColStatsArgs a, ColPlan p) {
  using I = typename Inner<T>::type;
  constexpr int V = kVec<T>;
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  const T* z0 = static_cast<const T*>(a.z[0]);
  const T* z1 = a.views > 1 ? static_cast<const T*>(a.z[1]) : nullptr;
  const bool moments = a.mode == kStatsMoments;
  const bool with_r = moments && a.sqdiff && z1 != nullptr;
  I s0[V], s1[V];
#pragma unroll
  for (int j = 0; j < V; ++j) s0[j] = s1[j] = I(0);
  if (moments) {
    load_row<V, A>(z0, t.c0, lane, d, s0);
    if (z1 != nullptr) load_row<V, A>(z1, t.c0, lane, d, s1);
  }
  I S0[V], Q0[V], S1[V], Q1[V], R[V];
#pragma unroll
  for (int j = 0; j < V; ++j) S0[j] = Q0[j] = S1[j] = Q1[j] = R[j] = I(0);
#pragma unroll 2
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    I u[V];
    load_row<V, A>(z0 + r * d, t.c0, lane, d, u);
    if (z1 != nullptr) {
      I w[V];
      load_row<V, A>(z1 + r * d, t.c0, lane, d, w);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const I e = w[j] - s1[j];
        S1[j] += e;
        Q1[j] += e * e;
        if (with_r) {
          const I f = u[j] - w[j];
          R[j] += f * f;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const I e = u[j] - s0[j];
      S0[j] += e;
      Q0[j] += e * e;
    }
  }
  const int64_t gs = p.chunks * d;  // between groups
  double* part = a.part + t.chunk * d + t.c0;
  int g = 0;
  if (moments) tile_col_sum<V, A>(S0, t.c0, d, part + (g++) * gs);
  tile_col_sum<V, A>(Q0, t.c0, d, part + (g++) * gs);
  if (z1 != nullptr) {
    if (moments) tile_col_sum<V, A>(S1, t.c0, d, part + (g++) * gs);
    tile_col_sum<V, A>(Q1, t.c0, d, part + (g++) * gs);
  }
  if (with_r) tile_col_sum<V, A>(R, t.c0, d, part + g * gs);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) col_merge_kernel(ColMergeArgs a) {
  using acc_t = typename AccType<T>::type;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t gs = a.chunks * a.d;
  double f0 = 0, f1 = 0;
  if (k < a.d) {
    const double n = static_cast<double>(a.n);
    auto total = [&](int g) {
      const double* q = a.part + g * gs + k;
      double s = 0;
      for (int64_t c = 0; c < a.chunks; ++c) s += q[c * a.d];
      return s;
    };
    if (a.mode == kMergeMoments) {
      for (int v = 0; v < a.views; ++v) {
        const double S = total(2 * v), Q = total(2 * v + 1);
        const double shift = static_cast<double>(to_acc(static_cast<const T*>(a.z[v])[k]));
        const double m2 = Q - S * S / n;
        // NaN (a NaN in the column) stays NaN, as the reference's moments and hinge (docs/spec.md §8.3)
        const double m2c = m2 > 0 || m2 != m2 ? m2 : 0.0;
        a.mean[v * a.d + k] = shift + S / n;
        a.m2[v * a.d + k] = m2c;
        if (a.zero != nullptr) a.zero[v * a.d + k] = 0.0;
        if (a.hinge) {
          const double s = sqrt(m2c / (n - 1) + a.eps);
          f1 += a.gamma - s > 0 || s != s ? a.gamma - s : 0.0;
        }
      }
      if (a.sqdiff) f0 = total(2 * a.views);
    } else if (a.mode == kMergeSum) {
      for (int g = 0; g < a.groups; ++g) {
        const double s = total(g);
        a.out[g * a.d + k] = s;
        f0 += s * s;
      }
    } else {  // kMergeBarlowDiag
      const double c = total(0) / n;
      static_cast<acc_t*>(a.cdiag)[k] = static_cast<acc_t>(c);
      f0 = (1 - c) * (1 - c);
      f1 = c * c;
    }
  }
  store_fin2(a.fin, f0, f1);
}

// ---------------------------------------------------------------------------------------------
// center: the GEMM operand of the covariance family
//
// Reads 2 N D sizeof(T) and writes as much: 128 / 256 / 4 / 256 MiB at VICReg 2048x8192,
// 16384x2048, 2048x256 bf16 and 2048x8192 fp32 (Barlow 2048x8192 bf16: 128 MiB), plus the N×N
// side's column partials (VICReg 2 x chunks x D float64 = 2 MiB at 2048x8192 bf16, 1.1 MiB fp32;
// Barlow 1 MiB); grid as col_stats.

template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) center_kernel(CenterArgs a, ColPlan p) {
  using I = typename Inner<T>::type;
  constexpr int V = kVec<T>;
  // float64 inputs divide like the reference; float32 ones multiply by the float64 reciprocal
  // (its rounding, 1e-16, is far below theirs, and it spares a float64 division per element).
  constexpr bool kDivide = sizeof(T) == sizeof(double);
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  const double n = static_cast<double>(a.n);
  I mh[2][V], sc[2][V];
  for (int v = 0; v < 2; ++v) {
    double mu[V], m2[V];
#pragma unroll
    for (int j = 0; j < V; ++j) mu[j] = m2[j] = 0.0;
    if (v < a.views) {
      load_row<V, A>(a.mean + v * d, t.c0, lane, d, mu);
      if (a.bn) load_row<V, A>(a.m2 + v * d, t.c0, lane, d, m2);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const double den = a.bn ? sqrt(m2[j] / n + a.eps) : 1.0;
      mh[v][j] = static_cast<I>(mu[j]);
      sc[v][j] = static_cast<I>(kDivide ? den : 1.0 / den);
    }
  }
  const bool two = a.views > 1;
  I acc0[V], acc1[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc0[j] = acc1[j] = I(0);
  // two rows per iteration, but one for the 16-bit scalar-access variants: their 2 x 8 columns' values
  // and addresses twice took 128 registers and spilled 32 bytes on sm_100
  constexpr int kRowUnroll = sizeof(T) == 2 && !A ? 1 : 2;
#pragma unroll kRowUnroll
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    T o[2][V];
    for (int v = 0; v < 2; ++v) {
      if (v == 1 && !two) break;
      I u[V];
      load_row<V, A>(static_cast<const T*>(a.z[v]) + r * d, t.c0, lane, d, u);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const I c = u[j] - mh[v][j];
        o[v][j] = cvt_out<T>(kDivide ? c / sc[v][j] : c * sc[v][j]);
      }
      store_raw<V, A, T>(static_cast<T*>(a.out[v]) + r * d, t.c0, lane, d, o[v]);
    }
    if (a.sum_mode == kCenterSumSq) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const I x0 = cvt_in<I>(o[0][j]);
        acc0[j] += x0 * x0;
        if (two) {
          const I x1 = cvt_in<I>(o[1][j]);
          acc1[j] += x1 * x1;
        }
      }
    } else if (a.sum_mode == kCenterSumDot) {
#pragma unroll
      for (int j = 0; j < V; ++j) acc0[j] += cvt_in<I>(o[0][j]) * cvt_in<I>(o[1][j]);
    }
  }
  if (a.sum_mode == kCenterNoSum) return;  // the same for the whole block: no barrier skipped
  const int64_t gs = p.chunks * d;
  double* part = a.part + t.chunk * d + t.c0;
  tile_col_sum<V, A>(acc0, t.c0, d, part);
  if (a.sum_mode == kCenterSumSq && two) tile_col_sum<V, A>(acc1, t.c0, d, part + gs);
}

// ---------------------------------------------------------------------------------------------
// launchers

template <typename T>
cudaError_t launch_col_stats(const ColStatsArgs& a, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d, dtype_of<T>());
  if (!grid_ok(plan_blocks(p)) || a.part == nullptr) return cudaErrorInvalidConfiguration;
  const bool vec = vectorizable<T>(a.d, a.z[0], a.views > 1 ? a.z[1] : nullptr, a.part);
  DK_LAUNCH_A(vec, col_stats_kernel, dim3(static_cast<unsigned>(plan_blocks(p))), dim3(kThreads),
              stream, a, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_col_merge(const ColMergeArgs& a, cudaStream_t stream) {
  DK_LAUNCH(col_merge_kernel<T>, dim3(static_cast<unsigned>(col_merge_blocks(a.d))),
            dim3(kThreads), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_center(const CenterArgs& a, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d, dtype_of<T>());
  if (!grid_ok(plan_blocks(p))) return cudaErrorInvalidConfiguration;
  if (a.sum_mode != kCenterNoSum && a.part == nullptr) return cudaErrorInvalidValue;
  const bool two = a.views > 1;
  const bool vec = vectorizable<T>(a.d, a.z[0], a.out[0], two ? a.z[1] : nullptr,
                                   two ? a.out[1] : nullptr, a.mean, a.m2, a.part);
  DK_LAUNCH_A(vec, center_kernel, dim3(static_cast<unsigned>(plan_blocks(p))), dim3(kThreads),
              stream, a, p);
  return cudaGetLastError();
}

}  // namespace

ColPlan col_plan(int64_t n, int64_t d, int dtype) {
  return make_plan(n, d, 16 / dtype_size(dtype), dtype_size(dtype) == 2);
}

int col_stats_groups(int mode, int views, int sqdiff) {
  return (mode == kStatsMoments ? 2 : 1) * views + (mode == kStatsMoments && sqdiff && views == 2);
}

cudaError_t col_stats(const ColStatsArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_col_stats, a, stream)
}

int col_merge_blocks(int64_t d) { return static_cast<int>(ceil_div(d > 0 ? d : 1, kThreads)); }

cudaError_t col_merge(const ColMergeArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.d <= 0, dtype, launch_col_merge, a, stream)
}

cudaError_t center(const CenterArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_center, a, stream)
}

}  // namespace duality_kernels
