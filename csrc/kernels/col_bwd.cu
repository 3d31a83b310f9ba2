// The covariance family's backward epilogues over the column tiles (gram_ops.h vicreg_bwd,
// duality_bwd, moments_bwd, bn_bwd): each combines the views with P, the product that the bindings
// ran through cuBLAS, into dz. Bytes and grids per kernel below; the totals per headline shape and
// the layouts are in gram_ops.cu's overview.

#include "gram_launch.cuh"

namespace duality_kernels {
namespace {

// VICReg: reads z1, z2, x (2 views) and P (acc, 2 views), writes dz1, dz2: N D (6 sizeof(T) +
// 2 sizeof(acc)) bytes = 320 / 640 / 10 / 512 MiB at VICReg 2048x8192, 16384x2048, 2048x256 bf16
// and 2048x8192 fp32. Grid col_tiles x chunks as col_stats.
// C: the arithmetic and P's type, acc or (p64: float32 inputs whose Grams are float64) float64.
template <typename T, bool A, typename C = typename AccType<T>::type>
__global__ void __launch_bounds__(kThreads) vicreg_bwd_kernel(VICRegBwdArgs a, ColPlan p) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>;
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  const C gl = static_cast<C>(grad_or_zero<acc_t>(a.g[0]));
  const C w_inv = gl * static_cast<C>(a.inv_w) + static_cast<C>(grad_or_zero<acc_t>(a.g[1]));
  const C w_var = gl * static_cast<C>(a.var_w) + static_cast<C>(grad_or_zero<acc_t>(a.g[2]));
  const C w_cov = gl * static_cast<C>(a.cov_w) + static_cast<C>(grad_or_zero<acc_t>(a.g[3]));
  const C n = static_cast<C>(a.n), df = static_cast<C>(a.d);
  const C kappa = C(1) / ((n - 1) * (n - 1) * df);
  const C cp = 4 * w_cov * kappa;
  const C ci = 2 * w_inv / (n * df);
  C cx[2][V], sq[2][V];
  for (int v = 0; v < 2; ++v) {
    double m2[V], s2[V];
    load_row<V, A>(a.m2 + v * d, t.c0, lane, d, m2);
    load_row_or_zero<V, A>(a.sq, v * d, t.c0, lane, d, s2);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const C s = sqrt(static_cast<C>(m2[j]) / (n - 1) + static_cast<C>(a.eps));
      const C h = static_cast<C>(a.gamma) - s > 0 ? C(1) : C(0);
      cx[v][j] = -w_var * h / (2 * df * (n - 1) * s);
      sq[v][j] = static_cast<C>(s2[j]);
    }
  }
  const T* z1 = static_cast<const T*>(a.z[0]);
  const T* z2 = static_cast<const T*>(a.z[1]);
#pragma unroll 1
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    const int64_t o = r * d;
    C df0[V];
    {
      C u[V], w[V];
      load_row<V, A>(z1 + o, t.c0, lane, d, u);
      load_row<V, A>(z2 + o, t.c0, lane, d, w);
#pragma unroll
      for (int j = 0; j < V; ++j) df0[j] = ci * (u[j] - w[j]);
    }
    for (int v = 0; v < 2; ++v) {
      C x[V], pv[V], out[V];
      load_row<V, A>(static_cast<const T*>(a.x[v]) + o, t.c0, lane, d, x);
      load_row<V, A>(static_cast<const C*>(a.p[v]) + o, t.c0, lane, d, pv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        // P's diagonal part cancels against sq x first, at P's magnitude: scaled and added to the
        // other terms, its two halves would leave their rounding behind (26x eager's fp32 error
        // at N = 2, D = 1, tests/test_properties.py, 2026-11-30)
        const C inv = v == 0 ? df0[j] : -df0[j];
        out[j] = inv + cx[v][j] * x[j] + cp * (pv[j] - sq[v][j] * x[j]);
      }
      store_row<V, A>(static_cast<T*>(a.dz[v]) + o, t.c0, lane, d, out);
    }
  }
}

template <typename T, bool A, typename C = typename AccType<T>::type>
__global__ void __launch_bounds__(kThreads) duality_bwd_kernel(DualityBwdArgs a, ColPlan p) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>;
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  const C g_lc = static_cast<C>(grad_or_zero<acc_t>(a.g[0]));
  const C g_lnc = static_cast<C>(grad_or_zero<acc_t>(a.g[1]));
  const C g_r4 = static_cast<C>(grad_or_zero<acc_t>(a.g[2]));
  const C g_c4 = static_cast<C>(grad_or_zero<acc_t>(a.g[3]));
  const C cp = 4 * (g_lc + g_lnc);
  // The side's own criterion and the identity's other one enter as g (c_k - q_i) (dimension side:
  // g_lc, sample side: -g_lnc), the difference taken first, in float64 from c's float64: scaled
  // separately into a q term and a c term, they cancel and leave their roundings (12x eager's fp32
  // gradient error at N = 2, D = 1, where c - q is the other row's square; tests/test_properties.py
  // long profile, 2026-12-01).
  const C gx = 4 * (a.sample ? -g_lnc : g_lc);
  const C cq = 4 * g_r4, ccf = 4 * g_c4;
  double c[V];
  C cc[V];
  load_row<V, A>(a.c, t.c0, lane, d, c);
#pragma unroll
  for (int j = 0; j < V; ++j) cc[j] = ccf * static_cast<C>(c[j]);
  const C* q = static_cast<const C*>(a.q);  // float64 with p64
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    const int64_t o = r * d;
    const C qv = q[r];
    const double q64 = static_cast<double>(qv);
    const C qr = cq * qv;
    C z[V], pv[V];
    load_row<V, A>(static_cast<const T*>(a.z) + o, t.c0, lane, d, z);
    load_row<V, A>(static_cast<const C*>(a.p) + o, t.c0, lane, d, pv);
#pragma unroll
    for (int j = 0; j < V; ++j)
      z[j] = cp * pv[j] + z[j] * (qr + cc[j] + gx * static_cast<C>(c[j] - q64));
    store_row<V, A>(static_cast<T*>(a.dz) + o, t.c0, lane, d, z);
  }
}

// The BatchNorm backward's vectors: 16 bytes, but at most 4 elements, i.e. 8-byte accesses for
// fp16/bf16: both views' three running sums and per-column coefficients per element of the
// vector took 173-189 registers per thread at 8 (ptxas, sm_90), one block per SM.
template <typename T>
constexpr int kVecBN = kVec<T> > 4 ? 4 : kVec<T>;

// moments_bwd (gram_ops.h MomentsBwdArgs): reads z1, z2 and P (acc, when given) of both views,
// writes dz1, dz2: N D (4 sizeof(T) + 2 sizeof(acc)) bytes; grid as bn_bwd (kVecBN columns per
// thread). The centered value (z - mean) is taken from the float64 mean (gram_ops.h MomentsBwdArgs).
template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) moments_bwd_kernel(MomentsBwdArgs a, ColPlan p) {
  using acc_t = typename AccType<T>::type;
  using I = typename Inner<T>::type;
  constexpr int V = kVecBN<T>;
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  const acc_t ci = 2 * grad_or_zero<acc_t>(a.g_inv) / (static_cast<acc_t>(a.n) * static_cast<acc_t>(d));
  // dz_v = P_v ± ci (z1 - z2) + g_mean/n + 2 g_m2 (z_v - mean): with mean = mh + ml (mh its
  // rounding to I), the last two terms are c0 + c1 (z_v - mh), c0 = g_mean/n - c1 ml folded in
  // float64, so that (z_v - mh) stays exact near the mean with two per-column vectors per view
  // instead of three. Registers (ptxas sm_90, 2026-12-01), fp16/bf16: three vectors at V = 8,
  // 130-152 (8 warps per SM); two at V = 8, 115-121 (16); two at kVecBN's V = 4 (8-byte
  // accesses of z and dz), 64-72 (24-32; vicreg_bwd_kernel: 16-24). Not yet timed on a GPU.
  I mh[2][V];
  acc_t c0[2][V], c1[2][V];
  for (int v = 0; v < 2; ++v) {
    // g_mean / n first, before the other vectors are loaded: float64's division has slow-path
    // calls, and the values live across them are saved (8 bytes spilled on sm_86/89 otherwise)
    double mu[V], gm[V], g2[V];
    if (a.g_mean != nullptr) {
      load_row<V, A>(a.g_mean + v * d, t.c0, lane, d, gm);
#pragma unroll
      for (int j = 0; j < V; ++j) gm[j] = gm[j] / static_cast<double>(a.n);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) gm[j] = 0.0;
    }
    load_row<V, A>(a.mean + v * d, t.c0, lane, d, mu);
    load_row_or_zero<V, A>(a.g_m2, v * d, t.c0, lane, d, g2);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      mh[v][j] = static_cast<I>(mu[j]);
      const double ml = mu[j] - static_cast<double>(mh[v][j]);
      c0[v][j] = static_cast<acc_t>(gm[j] - 2 * g2[j] * ml);
      c1[v][j] = static_cast<acc_t>(2 * g2[j]);
    }
  }
  const T* z1 = static_cast<const T*>(a.z[0]);
  const T* z2 = static_cast<const T*>(a.z[1]);
#pragma unroll 1
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    const int64_t o = r * d;
    I u[2][V];
    load_row<V, A>(z1 + o, t.c0, lane, d, u[0]);
    load_row<V, A>(z2 + o, t.c0, lane, d, u[1]);
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      acc_t pv[V], out[V];
      load_row_or_zero<V, A>(static_cast<const acc_t*>(a.p[v]), o, t.c0, lane, d, pv);
      const acc_t sgn = v == 0 ? ci : -ci;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const acc_t x = static_cast<acc_t>(u[v][j] - mh[v][j]);
        out[j] = sgn * static_cast<acc_t>(u[0][j] - u[1][j]) + c0[v][j] + c1[v][j] * x + pv[j];
      }
      store_row<V, A>(static_cast<T*>(a.dz[v]) + o, t.c0, lane, d, out);
    }
  }
}

// BatchNorm backward coefficients (see BNBwdArgs), in float64 like the whole BatchNorm backward
// of float32/float64 inputs: its result is a residual that cancels to O(eps/var) of its terms
// when da is nearly parallel to a (N = 2, or a ≈ b near convergence), so every rounding inside it
// is amplified (fp16/bf16: Inner = float32, see gram_ops.h ColStatsArgs).
template <typename acc_t>
__device__ __forceinline__ void bn_coef(const BNBwdArgs& a, int v, int64_t col, double* alpha,
                                        double* beta, double* c) {
  const double n = static_cast<double>(a.n);
  *c = col < a.d ? 1.0 / sqrt(a.m2[v * a.d + col] / n + a.eps) : 0.0;
  if (a.barlow) {
    const double gl = static_cast<double>(grad_or_zero<acc_t>(a.g[0]));
    const double w_on = gl + static_cast<double>(grad_or_zero<acc_t>(a.g[1]));
    const double w_off = a.lambda * gl + static_cast<double>(grad_or_zero<acc_t>(a.g[2]));
    const double cd = col < a.d ? static_cast<double>(static_cast<const acc_t*>(a.cdiag)[col]) : 0.0;
    *alpha = 2 * w_off / (n * n);
    *beta = (-2 * w_on * (1 - cd) - 2 * w_off * cd) / n;
  } else {
    *alpha = 1.0 / n;
    *beta = 0;
  }
}

// Stage 1: per (chunk, column) and view the sums of da, da * a and a, into groups v * 3 + j
// (mean_i a is 0 in exact arithmetic, but subtracting the rounded a's own mean keeps the final
// residual's cancellation consistent: the Triton twin of this kernel measured ~1x eager's fp32
// error at N = 2 with the term, up to 4.4x without, 2026-11-30). Reads x and P (acc) of both views:
// 2 N D (sizeof(T) + sizeof(acc)) = 192 MiB at Barlow 2048x8192 bf16, and writes 6 x chunks x D
// float64 = 3.4 MiB; grid 64 x 9 blocks (tiles of 128 columns, kVecBN). col_merge adds the chunks
// (3.8 MiB, 32 blocks); the apply stage reads the same 192 MiB and writes dz (2 N D sizeof(T) =
// 64 MiB): 256 MiB, same grid.
template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) bn_bwd_partial_kernel(BNBwdArgs a, ColPlan p,
                                                                  double* part) {
  using acc_t = typename AccType<T>::type;
  using I = typename Inner<T>::type;
  constexpr int V = kVecBN<T>;
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  I alpha = 0, beta[2][V];
  for (int v = 0; v < 2; ++v) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      double al, be, c;
      bn_coef<acc_t>(a, v, tcol<V, A>(t.c0, lane, j), &al, &be, &c);
      alpha = static_cast<I>(al);
      beta[v][j] = static_cast<I>(be);
    }
  }
  I s[2][3][V];
  for (int v = 0; v < 2; ++v)
    for (int k = 0; k < 3; ++k)
#pragma unroll
      for (int j = 0; j < V; ++j) s[v][k][j] = I(0);
  const T* x0 = static_cast<const T*>(a.x[0]);
  const T* x1 = static_cast<const T*>(a.x[1]);
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    const int64_t o = r * d;
    I u[V], w[V];
    load_row<V, A>(x0 + o, t.c0, lane, d, u);
    load_row<V, A>(x1 + o, t.c0, lane, d, w);
    for (int v = 0; v < 2; ++v) {
      I pv[V];
      load_row<V, A>(static_cast<const acc_t*>(a.p[v]) + o, t.c0, lane, d, pv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const I xa = v == 0 ? u[j] : w[j];
        const I y = v == 0 ? w[j] : u[j];
        const I da = alpha * pv[j] + beta[v][j] * y;
        s[v][0][j] += da;
        s[v][1][j] += da * xa;
        s[v][2][j] += xa;
      }
    }
  }
  const int64_t gs = p.chunks * d;
  double* dst = part + t.chunk * d + t.c0;
  for (int v = 0; v < 2; ++v)
    for (int k = 0; k < 3; ++k) tile_col_sum<V, A>(s[v][k], t.c0, d, dst + (v * 3 + k) * gs);
}

// Stage 2: dz = c (da - mean da - (a - mean a) mean(da a)) from da (recomputed bit for bit) and
// the column sums sums[(v * 3 + j) * d + col].
template <typename T, bool A>
__global__ void __launch_bounds__(kThreads) bn_bwd_apply_kernel(BNBwdArgs a, ColPlan p,
                                                                const double* __restrict__ sums) {
  using acc_t = typename AccType<T>::type;
  using I = typename Inner<T>::type;
  constexpr int V = kVecBN<T>;
  const auto [lane, warp, t] = tile_thread(p, a.n);
  const int64_t d = a.d;
  const double n = static_cast<double>(a.n);
  I alpha = 0, beta[2][V], cs[2][V], m1[2][V], m2[2][V], ma[2][V];
  for (int v = 0; v < 2; ++v) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t col = tcol<V, A>(t.c0, lane, j);
      double al, be, c;
      bn_coef<acc_t>(a, v, col, &al, &be, &c);
      alpha = static_cast<I>(al);
      beta[v][j] = static_cast<I>(be);
      cs[v][j] = static_cast<I>(c);
      const bool in = col < d;
      m1[v][j] = in ? static_cast<I>(sums[(v * 3 + 0) * d + col] / n) : I(0);
      m2[v][j] = in ? static_cast<I>(sums[(v * 3 + 1) * d + col] / n) : I(0);
      ma[v][j] = in ? static_cast<I>(sums[(v * 3 + 2) * d + col] / n) : I(0);
    }
  }
  const T* x0 = static_cast<const T*>(a.x[0]);
  const T* x1 = static_cast<const T*>(a.x[1]);
  for (int64_t r = t.r0 + warp; r < t.r1; r += kWarps) {
    const int64_t o = r * d;
    I u[V], w[V];
    load_row<V, A>(x0 + o, t.c0, lane, d, u);
    load_row<V, A>(x1 + o, t.c0, lane, d, w);
    for (int v = 0; v < 2; ++v) {
      I pv[V];
      load_row<V, A>(static_cast<const acc_t*>(a.p[v]) + o, t.c0, lane, d, pv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const I xa = v == 0 ? u[j] : w[j];
        const I y = v == 0 ? w[j] : u[j];
        const I da = alpha * pv[j] + beta[v][j] * y;
        pv[j] = cs[v][j] * (da - m1[v][j] - (xa - ma[v][j]) * m2[v][j]);
      }
      store_row<V, A>(static_cast<T*>(a.dz[v]) + o, t.c0, lane, d, pv);
    }
  }
}

// The BatchNorm backward's plan (kVecBN).
ColPlan bn_plan(int64_t n, int64_t d, int dtype) {
  const int size = dtype_size(dtype);
  return make_plan(n, d, 16 / size > 4 ? 4 : 16 / size, size == 2);
}

// ---------------------------------------------------------------------------------------------
// launchers

template <typename T>
cudaError_t launch_vicreg_bwd(const VICRegBwdArgs& a, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d, dtype_of<T>());
  if (!grid_ok(plan_blocks(p))) return cudaErrorInvalidConfiguration;
  const bool vec = vectorizable<T>(a.d, a.z[0], a.z[1], a.x[0], a.x[1], a.p[0], a.p[1], a.m2,
                                   a.sq, a.dz[0], a.dz[1]);
  DK_LAUNCH_AW(a.p64, vec, vicreg_bwd_kernel, dim3(static_cast<unsigned>(plan_blocks(p))), dim3(kThreads),
              stream, a, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_moments_bwd(const MomentsBwdArgs& a, cudaStream_t stream) {
  const ColPlan p = bn_plan(a.n, a.d, dtype_of<T>());  // kVecBN's column tiles
  if (!grid_ok(plan_blocks(p))) return cudaErrorInvalidConfiguration;
  const bool vec = a.d % kVecBN<T> == 0 && aligned_ptr(a.z[0]) && aligned_ptr(a.z[1]) &&
                   aligned_ptr(a.p[0]) && aligned_ptr(a.p[1]) && aligned_ptr(a.mean) &&
                   aligned_ptr(a.g_mean) && aligned_ptr(a.g_m2) && aligned_ptr(a.dz[0]) &&
                   aligned_ptr(a.dz[1]);
  DK_LAUNCH_A(vec, moments_bwd_kernel, dim3(static_cast<unsigned>(plan_blocks(p))), dim3(kThreads),
              stream, a, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_duality_bwd(const DualityBwdArgs& a, cudaStream_t stream) {
  const ColPlan p = col_plan(a.n, a.d, dtype_of<T>());
  if (!grid_ok(plan_blocks(p))) return cudaErrorInvalidConfiguration;
  const bool vec = vectorizable<T>(a.d, a.z, a.p, a.c, a.dz);
  DK_LAUNCH_AW(a.p64, vec, duality_bwd_kernel, dim3(static_cast<unsigned>(plan_blocks(p))), dim3(kThreads),
              stream, a, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bn_bwd(const BNBwdArgs& a, double* workspace, cudaStream_t stream) {
  const ColPlan p = bn_plan(a.n, a.d, dtype_of<T>());
  if (!grid_ok(plan_blocks(p)) || workspace == nullptr) return cudaErrorInvalidConfiguration;
  // workspace: the partials (6 x chunks x d), then their merge (6 x d) when chunks > 1; with one
  // chunk the partials are the sums.
  double* part = workspace;
  double* sums = p.chunks > 1 ? workspace + 6 * p.chunks * a.d : workspace;
  const bool vec = a.d % kVecBN<T> == 0 && aligned_ptr(a.x[0]) && aligned_ptr(a.x[1]) &&
                   aligned_ptr(a.p[0]) && aligned_ptr(a.p[1]) && aligned_ptr(a.dz[0]) &&
                   aligned_ptr(a.dz[1]);
  const dim3 grid(static_cast<unsigned>(plan_blocks(p)));
  DK_LAUNCH_A(vec, bn_bwd_partial_kernel, grid, dim3(kThreads), stream, a, p, part);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (p.chunks > 1) {
    ColMergeArgs m{};
    m.mode = kMergeSum;
    m.part = part;
    m.n = a.n;
    m.d = a.d;
    m.chunks = p.chunks;
    m.groups = 6;
    m.out = sums;
    err = col_merge(m, dtype_of<T>(), stream);  // col_stats.cu
    if (err != cudaSuccess) return err;
  }
  DK_LAUNCH_A(vec, bn_bwd_apply_kernel, grid, dim3(kThreads), stream, a, p,
              static_cast<const double*>(sums));
  return cudaGetLastError();
}

}  // namespace

cudaError_t vicreg_bwd(const VICRegBwdArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_vicreg_bwd, a, stream)
}

cudaError_t moments_bwd(const MomentsBwdArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_moments_bwd, a, stream)
}

cudaError_t duality_bwd(const DualityBwdArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_duality_bwd, a, stream)
}

int64_t bn_bwd_workspace_elems(int64_t n, int64_t d, int dtype) {
  if (n <= 0 || d <= 0) return 0;
  const ColPlan p = bn_plan(n, d, dtype);
  return 6 * p.chunks * d + (p.chunks > 1 ? 6 * d : 0);
}

cudaError_t bn_bwd(const BNBwdArgs& a, int dtype, double* workspace, cudaStream_t stream) {
  DK_DISPATCH_UNLESS(a.n <= 0 || a.d <= 0, dtype, launch_bn_bwd, a, workspace, stream)
}

}  // namespace duality_kernels
