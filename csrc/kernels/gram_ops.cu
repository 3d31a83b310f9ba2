// The covariance family's fused kernels around the GEMMs (see gram_ops.h for the contract of
// each entry point and the math it implements).
//
// Bytes per forward + backward step at the headline shapes: these kernels only (the GEMMs' own
// traffic is in cuBLAS's time); MiB = 2^20 bytes; µs = bytes / 4.25 TB/s, the H200's measured
// device-copy rate; cuBLAS = the products' time measured there with torch.profiler (2026-11-30).
// Expected, not measured: untested on GPU as of 2026-12-01.
//
//   shape (Gram side)               our bytes  µs at 4.25 TB/s  + cuBLAS     = floor     bar
//   VICReg 2048x8192 bf16 (N×N)        574 MiB      142           363          505 µs    550 µs
//   VICReg 16384x2048 bf16 (D×D)      1082 MiB      267           696          963 µs    950 µs
//   VICReg 2048x256 bf16 (D×D)          17 MiB        4            10           14 µs    150 µs wall
//   Barlow 2048x8192 bf16 (N×N)        706 MiB      174          ~367 (a)     ~541 µs    650 µs
//   Spectral 16384x256 bf16 (D×D)      113 MiB       28           ~43 (a)      ~71 µs    120 µs
//   VICReg 2048x8192 fp32 "high" (N×N) 936 MiB      231          ~770 (b)    ~1001 µs   1000 µs
//
// (a) measured 564 µs (Barlow) and 61 µs (spectral: 26 forward + 2 x 17.5 backward) with the
//     backward's two products as two GEMMs; they are one bmm now, and a bmm of two such products
//     took the time of one mm (VICReg's: 193 µs for two 2048² x 2048 x 8192 products, Barlow's
//     single mm: 197 µs). (b) not profiled: 274 GFLOP at the 356 TFLOP/s TF32 rate measured at
//     8192³.
// Where the budget goes. VICReg 2048x8192 bf16: 550 - 363 = 187 µs for our kernels and the
// launch gaps (~7 launches), so ≥ 76% of the roofline: col_stats 69 MiB, center 130 (+2 partials),
// gram_pass 48, vicreg_bwd 320 MiB (56% of the bytes: cuBLAS writes P in float32 and the epilogue
// reads it back, 128 MiB each way). Barlow: bn_bwd partial 195 + apply 256 MiB of 706. Spectral:
// row_bwd 80 of 113 MiB, and 7 launches: the gaps matter at 28 µs of bytes. VICReg 2048x256: host-
// bound (csrc/bindings/: one C++ call and one C++ autograd node per step). VICReg 16384x2048
// and fp32: the floor meets the bar only at 100%; the largest item left is the float32 P round
// trip (2 x 256 MiB at 16384x2048 bf16): an epilogue fused into the backward GEMM (cuBLAS's β·C
// with the Gram pre-scaled, or a CUTLASS epilogue) would save about 224 MiB = 53 µs there.
//
// Per kernel, bytes and grid at VICReg 2048x8192 / 16384x2048 / 2048x256 bf16 / 2048x8192 fp32
// (Barlow and spectral at their kernels below):
//   col_stats     69 / 133 / 2.3 / 131 MiB   32x16 / 8x64 / 1x32 / 64x9 blocks (col tiles x chunks)
//   col_merge    5.2 / 5.1 / 0.3 / 3.1 MiB   ceil(D / 256) blocks (plus 2.1 / - / - / 1.2 MiB for
//                                            the sample side's Σ x² merge)
//   center       130 / 256 / 4.0 / 257 MiB   as col_stats
//   gram_pass     48 /  48 / 0.8 /  32 MiB   512 / 512 / 64 / 512 blocks, one warp per Gram row
//   finalize     < 40 KiB                    1 block
//   vicreg_bwd   320 / 640 /  10 / 512 MiB   as col_stats
//
// Layouts (all blocks 256 threads = 8 warps, 1-D grids):
// - column kernels (col_stats, center, vicreg_bwd, bn_bwd, duality_bwd): a
//   block owns a tile of 32 lanes x V columns (V = 16 bytes of T: 8 for bf16/fp16, 4 fp32,
//   2 fp64) and a chunk of rows (col_plan); warp w takes rows w, w + 8, ... of the chunk, so a
//   warp reads 512 contiguous bytes of a row per access. Rows whose start is 16-byte aligned (D a
//   multiple of V, aligned base pointers) give each lane one 16-byte vector per array and row
//   (template flag A); otherwise each lane takes columns lane + 32 j with scalar accesses, which
//   keeps every warp access contiguous: the same DRAM sectors as the vector path, with more
//   instructions (unaligned sizes fell 3-5x behind in the Triton Gram tiles, docs/measurements.md,
//   2026-11-29; here only the access width changes). Both views of a two-view op are
//   handled by the same thread, so arrays that both views need (z1 - z2, the other view's
//   standardized rows) are read once.
// - column reductions are two-stage (docs/design.md convention 7): per (chunk, column) float64 partials summed over
//   the block's warps in warp order through shared memory, then col_merge adds the chunks in
//   chunk order and also produces the finalize's partials, so that finalize never reads per-row or
//   per-column data on its single block.
// - row kernels (row_scale, row_bwd, gram_pass): one warp per row, 16-byte vectors along the row,
//   warp-shuffle (butterfly) sums, grid-stride over rows with a grid fixed by the shape.
// - finalize: one block that adds at most a few thousand float64 partials.
// All tuning constants are unmeasured starting points (untested on GPU as of 2026-12-01).

#include "gram_ops.h"

#include "common.cuh"

#include <climits>
#include <cstdint>
#include <type_traits>

namespace duality_kernels {
namespace {

using detail::AccType;
using detail::Arr;
using detail::ceil_div;
using detail::cvt_in;
using detail::cvt_out;
using detail::from_acc;
using detail::Inner;
using detail::kVec;
using detail::load_arr;
using detail::store_arr;
using detail::to_acc;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Column plan: about four resident 256-thread blocks on each of the H200's 132 SMs, at least
// kMinChunkRows rows per chunk (fewer rows per block would mostly add float64 partials to write and
// merge: 5 groups x 16 chunks x 8192 columns = 5 MiB at VICReg 2048 x 8192, already 7% of the
// pass; the wide shapes get their blocks from the column tiles), and for fp16/bf16 at most 32 rows
// per thread (the float32 sums, gram_ops.h).
constexpr int64_t kTargetBlocks = 4 * 132;
constexpr int64_t kMinChunkRows = 64;
constexpr int64_t kMaxChunkRowsF32 = 32 * kWarps;
// Row kernels (a warp per row) and gram_pass: at most this many blocks, striding over the rows
// beyond (the finalize adds one partial per block).
constexpr int64_t kMaxRowBlocks = 2048;
constexpr int64_t kMaxGramBlocks = 1024;

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) & 31; }
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x) >> 5; }

template <typename W>
__device__ __forceinline__ W warp_sum(W v) {
  // Butterfly: every lane ends with the same bits (each step adds the same two values).
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Block-wide float64 sum, the same bits in every thread: warp butterflies, then the warps' sums in
// warp order. Every thread of the block must call it.
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double buf[kWarps];
  v = warp_sum(v);
  if (lane_id() == 0) buf[warp_id()] = v;
  __syncthreads();
  double r = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) r += buf[w];
  __syncthreads();  // buf may be reused by the next call
  return r;
}

// ---------------------------------------------------------------------------------------------
// Column tiles (see the layout note above): this thread's j-th column, and row loads/stores.

template <int V, bool A>
__device__ __forceinline__ int64_t tcol(int64_t c0, int lane, int j) {
  return A ? c0 + static_cast<int64_t>(lane) * V + j : c0 + static_cast<int64_t>(j) * 32 + lane;
}

// v[j] = row[tcol(j)] converted to W, 0 past d.
template <int V, bool A, typename W, typename U>
__device__ __forceinline__ void load_row(const U* row, int64_t c0, int lane, int64_t d, W (&v)[V]) {
  if (A) {
    const int64_t c = c0 + static_cast<int64_t>(lane) * V;
    if (c < d) {
      const Arr<U, V> t = load_arr<U, V>(row + c);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = cvt_in<W>(t.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = W(0);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t c = c0 + static_cast<int64_t>(j) * 32 + lane;
      v[j] = c < d ? cvt_in<W>(row[c]) : W(0);
    }
  }
}

// The same without conversion (raw storage values; past d: untouched).
template <int V, bool A, typename U>
__device__ __forceinline__ void load_raw(const U* row, int64_t c0, int lane, int64_t d, U (&v)[V]) {
  if (A) {
    const int64_t c = c0 + static_cast<int64_t>(lane) * V;
    if (c < d) {
      const Arr<U, V> t = load_arr<U, V>(row + c);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = t.v[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t c = c0 + static_cast<int64_t>(j) * 32 + lane;
      if (c < d) v[j] = row[c];
    }
  }
}

// row[tcol(j)] = v[j] (storage values) for the columns below d.
template <int V, bool A, typename U>
__device__ __forceinline__ void store_raw(U* row, int64_t c0, int lane, int64_t d, const U (&v)[V]) {
  if (A) {
    const int64_t c = c0 + static_cast<int64_t>(lane) * V;
    if (c < d) {
      Arr<U, V> t;
#pragma unroll
      for (int j = 0; j < V; ++j) t.v[j] = v[j];
      store_arr<U, V>(row + c, t);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t c = c0 + static_cast<int64_t>(j) * 32 + lane;
      if (c < d) row[c] = v[j];
    }
  }
}

// row[tcol(j)] = v[j] rounded once to U.
template <int V, bool A, typename U, typename W>
__device__ __forceinline__ void store_row(U* row, int64_t c0, int lane, int64_t d, const W (&v)[V]) {
  U t[V];
#pragma unroll
  for (int j = 0; j < V; ++j) t[j] = cvt_out<U>(v[j]);
  store_raw<V, A, U>(row, c0, lane, d, t);
}

// The tile's column sums of v (this thread's V values) over the block's 8 warps, in warp order,
// float64: tile column s (= tcol - c0) goes to dst[s] (dst = the partials' row + c0), for the
// columns below d. Every thread of the block must call it.
template <int V, bool A, typename W>
__device__ __forceinline__ void tile_col_sum(const W (&v)[V], int64_t c0, int64_t d, double* dst) {
  __shared__ double buf[kWarps][32 * V];
  const int lane = lane_id(), warp = warp_id();
#pragma unroll
  for (int j = 0; j < V; ++j) buf[warp][A ? lane * V + j : j * 32 + lane] = static_cast<double>(v[j]);
  __syncthreads();
  const int s = static_cast<int>(threadIdx.x);
  if (s < 32 * V && c0 + s < d) {
    double t = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += buf[w][s];
    dst[s] = t;
  }
  __syncthreads();
}

// The block's (tile, chunk) and its rows [r0, r1) under plan p.
struct TileRows {
  int64_t c0, chunk, r0, r1;
};
__device__ __forceinline__ TileRows tile_rows(const ColPlan& p, int64_t n) {
  TileRows t;
  const int64_t b = blockIdx.x;
  t.c0 = (b % p.col_tiles) * p.tile_cols;
  t.chunk = b / p.col_tiles;
  t.r0 = t.chunk * p.rows_per_chunk;
  t.r1 = min(n, t.r0 + p.rows_per_chunk);
  return t;
}

// max(nrm, 1e-12) that keeps a NaN norm (a row with a NaN): the row's scale and gradients are
// then NaN, as the reference's (docs/spec.md §8.3); `nrm > 1e-12 ? nrm : 1e-12` made it 1e12.
template <typename acc_t>
__device__ __forceinline__ acc_t clamp_norm(acc_t nrm) {
  return nrm <= acc_t(1e-12) ? acc_t(1e-12) : nrm;
}

template <typename acc_t>
__device__ __forceinline__ acc_t row_scale(int mode, acc_t q, acc_t radius) {
  if (mode == kRowL2) {
    const acc_t nrm = sqrt(q);
    return acc_t(1) / clamp_norm(nrm);
  }
  if (mode == kRowClamp) {
    const acc_t nrm = sqrt(q);
    if (nrm < radius) return acc_t(1);
    return radius / clamp_norm(nrm);
  }
  return acc_t(1);
}

// An optional 0-dim acc upstream gradient (null: the output was not used).
template <typename acc_t>
__device__ __forceinline__ acc_t grad_or_zero(const void* g) {
  return g != nullptr ? *static_cast<const acc_t*>(g) : acc_t(0);
}

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
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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
  if (a.fin != nullptr) {  // the same for the whole grid
    f0 = block_sum(f0);
    f1 = block_sum(f1);
    if (threadIdx.x == 0) {
      a.fin[blockIdx.x] = f0;
      a.fin[gridDim.x + blockIdx.x] = f1;
    }
  }
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
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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
  if (a.fin != nullptr) {
    f0 = block_sum(f0);
    f1 = block_sum(f1);
    if (threadIdx.x == 0) {
      a.fin[blockIdx.x] = f0;
      a.fin[gridDim.x + blockIdx.x] = f1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// gram_pass: the sums of squares of a GEMM result, and the copy the backward multiplies
//
// VICReg 2048x8192 and 16384x2048 bf16 (2 x 2048² float32 Grams): reads 32 MiB, writes the bf16
// operand, 16 MiB (its diagonals zeroed on the D×D side); 2048x8192 fp32 "high": reads 32 MiB, no
// copy (the N×N side keeps its diagonals); 2048x256 bf16: 0.5 + 0.25 MiB. Barlow 2048x8192 bf16
// (pair, swapped copy): 32 + 16 MiB. Spectral 16384x256 bf16 (pair, swapped copy): 0.5 + 0.25 MiB.
// Grid min(ceil(rows / 8), 1024) blocks, one warp per Gram row: 512 / 512 / 64 / 512, Barlow 256,
// spectral 32.

template <typename G, typename O, bool A>
__global__ void __launch_bounds__(kThreads) gram_pass_kernel(GramPassArgs a) {
  constexpr int V = kVec<G>;
  const int lane = lane_id(), warp = warp_id();
  const int64_t m = a.m, mm = m * m;
  const int64_t rows = a.pair ? m : a.mats * m;
  const G* g = static_cast<const G*>(a.g);
  O* out = static_cast<O*>(a.out);
  const bool in_place = a.out == a.g;
  double full = 0, off = 0, on = 0, csq = 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t dg = r % m;
    const G* gr = g + r * m;
    const G* br = a.pair ? gr + mm : nullptr;
    double diag = 0;  // g[r][r], in the thread that reads it
    bool has_diag = false;
#pragma unroll 1
    for (int64_t c0 = 0; c0 < m; c0 += 32 * V) {
      has_diag = has_diag || (dg >= c0 && dg < c0 + 32 * V &&
                              (A ? (dg - c0) / V == lane : (dg - c0) % 32 == lane));
      G u[V], w[V];
#pragma unroll
      for (int j = 0; j < V; ++j) u[j] = w[j] = G(0);
      load_raw<V, A>(gr, c0, lane, m, u);
      if (br != nullptr) load_raw<V, A>(br, c0, lane, m, w);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int64_t c = tcol<V, A>(c0, lane, j);
        const double x = static_cast<double>(u[j]);
        const double v = br != nullptr ? x * static_cast<double>(w[j]) : x * x;
        full += v;  // 0 past m
        if (c != dg) off += v;
        else diag = x;
      }
      if (out == nullptr) continue;
      if (in_place) {
        // Only the diagonal, by the thread that read it (program order keeps the read first).
        if (a.zero_diag) {
#pragma unroll
          for (int j = 0; j < V; ++j)
            if (tcol<V, A>(c0, lane, j) == dg) out[r * m + dg] = cvt_out<O>(0.0f);
        }
        continue;
      }
      // pair with swap: the copy holds the two matrices in the other order
      O* o0 = out + (a.swap ? mm : 0) + r * m;
      O o[V];
#pragma unroll
      for (int j = 0; j < V; ++j)
        o[j] = a.zero_diag && tcol<V, A>(c0, lane, j) == dg ? cvt_out<O>(0.0f) : cvt_out<O>(u[j]);
      store_raw<V, A, O>(o0, c0, lane, m, o);
      if (br != nullptr) {
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = a.zero_diag && tcol<V, A>(c0, lane, j) == dg ? cvt_out<O>(0.0f) : cvt_out<O>(w[j]);
        store_raw<V, A, O>(out + (a.swap ? 0 : mm) + r * m, c0, lane, m, o);
      }
    }
    if (has_diag && a.cdiag != nullptr && r < m) {  // Barlow's C_kk, k = r
      const double cv = diag / a.cdiv;
      if (a.cdtype == kFloat64) static_cast<double*>(a.cdiag)[r] = cv;
      else static_cast<float*>(a.cdiag)[r] = static_cast<float>(cv);
      on += (1 - cv) * (1 - cv);
      csq += cv * cv;
    }
  }
  full = block_sum(full);
  off = block_sum(off);
  on = block_sum(on);
  csq = block_sum(csq);
  if (threadIdx.x == 0) {
    const int64_t b = blockIdx.x, nb = gridDim.x;
    a.fin[b] = full;
    a.fin[nb + b] = off;
    a.fin[2 * nb + b] = on;
    a.fin[3 * nb + b] = csq;
  }
}

// ---------------------------------------------------------------------------------------------
// finalize: the scalar outputs, on one block, from at most a few thousand float64 partials

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finalize_kernel(FinalizeArgs a) {
  double s[kFinSlots];
#pragma unroll
  for (int j = 0; j < kFinSlots; ++j) {
    double t = 0;
    for (int i = static_cast<int>(threadIdx.x); i < a.nparts[j]; i += kThreads) t += a.part[j][i];
    s[j] = block_sum(t);
  }
  if (threadIdx.x != 0) return;
  const double n = static_cast<double>(a.n);
  const double d = static_cast<double>(a.d);
  acc_t* o0 = static_cast<acc_t*>(a.out[0]);
  acc_t* o1 = static_cast<acc_t*>(a.out[1]);
  acc_t* o2 = static_cast<acc_t*>(a.out[2]);
  acc_t* o3 = static_cast<acc_t*>(a.out[3]);
  if (a.mode == kFinVICReg) {
    const double inv = s[2] / (n * d);
    const double var = s[3] / d / 2;
    // offsq(xᵀx) of both views: the D×D Grams without their diagonals, or ‖x xᵀ‖² - Σ_k (Σ_i x²)²
    const double offsq = a.sample ? s[0] - s[4] : s[1];
    const double cov = offsq / ((n - 1) * (n - 1) * d);
    *o0 = static_cast<acc_t>(a.w[0] * inv + a.w[1] * var + a.w[2] * cov);
    *o1 = static_cast<acc_t>(inv);
    *o2 = static_cast<acc_t>(var);
    *o3 = static_cast<acc_t>(cov);
  } else if (a.mode == kFinBarlow) {
    const double on = s[2];
    const double offsq = a.sample ? s[0] / (n * n) - s[3] : s[1] / (n * n);
    *o0 = static_cast<acc_t>(on + a.w[0] * offsq);
    *o1 = static_cast<acc_t>(on);
    *o2 = static_cast<acc_t>(offsq);
  } else if (a.mode == kFinSpectral) {
    const double mu = a.w[0];
    // offsq(a bᵀ): the N×N product without its diagonal, or ⟨aᵀa, bᵀb⟩ - Σ_i p_i²
    const double offsq = a.sample ? s[1] : s[0] - s[3];
    const double pos = -2.0 * s[2] / n / mu;
    const double neg = offsq / (n * (n - 1)) / mu;
    *o0 = static_cast<acc_t>(pos + neg);
    *o1 = static_cast<acc_t>(pos);
    *o2 = static_cast<acc_t>(neg);
  } else {  // kFinDuality: the side's own criterion is the off-diagonal sum, the other one the
            // identity of paper Thm 3.3 (full sum minus the other side's diagonal)
    *o0 = static_cast<acc_t>(a.sample ? s[1] : s[0] - s[2]);
    *o1 = static_cast<acc_t>(a.sample ? s[0] - s[3] : s[1]);
    *o2 = static_cast<acc_t>(s[2]);
    *o3 = static_cast<acc_t>(s[3]);
  }
}

// ---------------------------------------------------------------------------------------------
// backward epilogues

// VICReg: reads z1, z2, x (2 views) and P (acc, 2 views), writes dz1, dz2: N D (6 sizeof(T) +
// 2 sizeof(acc)) bytes = 320 / 640 / 10 / 512 MiB at VICReg 2048x8192, 16384x2048, 2048x256 bf16
// and 2048x8192 fp32. Grid col_tiles x chunks as col_stats.
// C: the arithmetic and P's type, acc or (p64: float32 inputs whose Grams are float64) float64.
template <typename T, bool A, typename C = typename AccType<T>::type>
__global__ void __launch_bounds__(kThreads) vicreg_bwd_kernel(VICRegBwdArgs a, ColPlan p) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>;
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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
    if (a.sq != nullptr) {
      load_row<V, A>(a.sq + v * d, t.c0, lane, d, s2);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) s2[j] = 0.0;
    }
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
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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
    if (a.g_m2 != nullptr) {
      load_row<V, A>(a.g_m2 + v * d, t.c0, lane, d, g2);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) g2[j] = 0.0;
    }
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
      if (a.p[v] != nullptr) {
        load_row<V, A>(static_cast<const acc_t*>(a.p[v]) + o, t.c0, lane, d, pv);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) pv[j] = acc_t(0);
      }
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
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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
  const int lane = lane_id(), warp = warp_id();
  const TileRows t = tile_rows(p, a.n);
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

// The norm of a row whose sum of squares overflowed: every entry scaled by the power of two 2^-e
// of the largest |entry| first (exact), as torch.linalg.vector_norm scales before squaring
// (docs/spec.md §8.2); Inner arithmetic (float64 for float32). An infinite entry gives inf. Every
// lane of the warp must call it; all get the same value.
template <int V, bool A, typename T>
__device__ __forceinline__ typename Inner<T>::type scaled_row_norm(const T* zr, int64_t d, int lane) {
  using I = typename Inner<T>::type;
  I m = 0;
#pragma unroll 1
  for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
    I u[V];
    load_row<V, A>(zr, c0, lane, d, u);
#pragma unroll
    for (int j = 0; j < V; ++j) m = fabs(u[j]) > m ? fabs(u[j]) : m;
  }
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
#pragma unroll 1
  for (int64_t c0 = 0; c0 < d; c0 += 32 * V) {
    I u[V];
    load_row<V, A>(zr, c0, lane, d, u);
#pragma unroll
    for (int j = 0; j < V; ++j) s += (u[j] * down) * (u[j] * down);
  }
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
  if (yr != nullptr) {
    load_row<V, A>(yr, c0, lane, d, yy);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) yy[j] = 0;
  }
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

// (g + gᵀ) * scale through a 32 x 33 shared tile: the transposed read is coalesced too.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sym_scale_kernel(const typename AccType<T>::type* __restrict__ g, int64_t m, double scale,
                     T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t tile[32][33];
  const int lane = lane_id(), warp = warp_id();
  const int64_t rb = static_cast<int64_t>(blockIdx.y) * 32, cb = static_cast<int64_t>(blockIdx.x) * 32;
  // tile[j][l] = g[cb + j][rb + l] (the block of gᵀ)
  for (int j = warp; j < 32; j += kWarps) {
    const int64_t r = cb + j, c = rb + lane;
    tile[j][lane] = r < m && c < m ? g[r * m + c] : acc_t(0);
  }
  __syncthreads();
  const acc_t sc = static_cast<acc_t>(scale);
  for (int j = warp; j < 32; j += kWarps) {
    const int64_t r = rb + j, c = cb + lane;
    if (r < m && c < m) out[r * m + c] = from_acc<T>((g[r * m + c] + tile[lane][j]) * sc);
  }
}

// ---------------------------------------------------------------------------------------------
// launchers

#define DK_DISPATCH(dtype, FN, ...)          \
  switch (dtype) {                           \
    case kFloat32:                           \
      return FN<float>(__VA_ARGS__);         \
    case kFloat64:                           \
      return FN<double>(__VA_ARGS__);        \
    case kFloat16:                           \
      return FN<__half>(__VA_ARGS__);        \
    case kBFloat16:                          \
      return FN<__nv_bfloat16>(__VA_ARGS__); \
    default:                                 \
      return cudaErrorInvalidValue;          \
  }

int dtype_size(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

// 16-byte vector accesses: rows of d elements of T start at 16-byte boundaries, and so do the
// arrays (null pointers do not count).
bool aligned_ptr(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
template <typename T, typename... P>
bool vectorizable(int64_t d, P... ptrs) {
  return d % kVec<T> == 0 && (aligned_ptr(ptrs) && ...);
}

bool grid_ok(int64_t blocks) { return blocks >= 1 && blocks <= INT_MAX; }

int64_t plan_blocks(const ColPlan& p) { return p.col_tiles * p.chunks; }

ColPlan make_plan(int64_t n, int64_t d, int64_t vec, bool f32_inner);
ColPlan bn_plan(int64_t n, int64_t d, int dtype);

// A dtype code with T's size (all that col_plan needs).
template <typename T>
constexpr int dtype_of() {
  return sizeof(T) == 8 ? kFloat64 : sizeof(T) == 4 ? kFloat32 : kFloat16;
}

// Launch kernel<T, true> when `vec`, else kernel<T, false>.
#define DK_LAUNCH_A(vec, KERNEL, grid, block, stream, ...)                   \
  do {                                                                       \
    if (vec) DK_LAUNCH((KERNEL<T, true>), grid, block, stream, __VA_ARGS__); \
    else DK_LAUNCH((KERNEL<T, false>), grid, block, stream, __VA_ARGS__);    \
  } while (false)

// The same with float64 arithmetic (kernel<T, A, double>) for float32 inputs when `wide` (p64:
// float64 products of the cancelling side); other dtypes ignore it.
#define DK_LAUNCH_AW(wide, vec, KERNEL, grid, block, stream, ...)                      \
  do {                                                                                 \
    if constexpr (std::is_same<T, float>::value) {                                     \
      if (wide) {                                                                      \
        if (vec) DK_LAUNCH((KERNEL<T, true, double>), grid, block, stream, __VA_ARGS__); \
        else DK_LAUNCH((KERNEL<T, false, double>), grid, block, stream, __VA_ARGS__);    \
        break;                                                                         \
      }                                                                                \
    }                                                                                  \
    DK_LAUNCH_A(vec, KERNEL, grid, block, stream, __VA_ARGS__);                        \
  } while (false)

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

template <typename T>
cudaError_t launch_row_scale(const RowScaleArgs& a, cudaStream_t stream) {
  const bool two = a.views > 1;
  const bool vec = vectorizable<T>(a.d, a.z[0], a.out[0], two ? a.z[1] : nullptr,
                                   two ? a.out[1] : nullptr);
  DK_LAUNCH_A(vec, row_scale_kernel, dim3(static_cast<unsigned>(row_blocks(a.n))), dim3(kThreads),
              stream, a);
  return cudaGetLastError();
}

template <typename G, typename O>
cudaError_t launch_gram_pass(const GramPassArgs& a, cudaStream_t stream) {
  const int64_t rows = a.pair ? a.m : a.mats * a.m;
  // Vector accesses need every row aligned for G (4 floats or 2 doubles) and for O.
  const bool vec = a.m % 8 == 0 && aligned_ptr(a.g) && (a.out == nullptr || aligned_ptr(a.out));
  const dim3 grid(static_cast<unsigned>(gram_blocks(rows)));
  if (vec) DK_LAUNCH((gram_pass_kernel<G, O, true>), grid, dim3(kThreads), stream, a);
  else DK_LAUNCH((gram_pass_kernel<G, O, false>), grid, dim3(kThreads), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_finalize(const FinalizeArgs& a, cudaStream_t stream) {
  DK_LAUNCH(finalize_kernel<typename AccType<T>::type>, dim3(1), dim3(kThreads), stream, a);
  return cudaGetLastError();
}

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
    err = launch_col_merge<T>(m, stream);
    if (err != cudaSuccess) return err;
  }
  DK_LAUNCH_A(vec, bn_bwd_apply_kernel, grid, dim3(kThreads), stream, a, p,
              static_cast<const double*>(sums));
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

template <typename T>
cudaError_t launch_sym_scale(const void* g, int64_t m, double scale, void* out,
                             cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const int64_t tiles = ceil_div(m, 32);
  if (tiles > 65535) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(sym_scale_kernel<T>, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles)),
            dim3(kThreads), stream, static_cast<const acc_t*>(g), m, scale, static_cast<T*>(out));
  return cudaGetLastError();
}

// The plan for tiles of 32 x vec columns; f32_inner: fp16/bf16 inputs, summed in float32.
ColPlan make_plan(int64_t n, int64_t d, int64_t vec, bool f32_inner) {
  ColPlan p;
  p.tile_cols = 32 * vec;
  p.col_tiles = ceil_div(d, p.tile_cols);
  int64_t chunks = ceil_div(kTargetBlocks, p.col_tiles);
  const int64_t by_rows = ceil_div(n, kMinChunkRows);
  if (chunks > by_rows) chunks = by_rows;
  if (chunks < 1) chunks = 1;
  int64_t rows = ceil_div(ceil_div(n, chunks), kWarps) * kWarps;
  if (f32_inner && rows > kMaxChunkRowsF32) rows = kMaxChunkRowsF32;
  p.rows_per_chunk = rows;
  // Recount so that no chunk is empty: the last one has n - (chunks-1)*rows >= 1 rows.
  p.chunks = ceil_div(n, rows);
  return p;
}

// The BatchNorm backward's plan (kVecBN).
ColPlan bn_plan(int64_t n, int64_t d, int dtype) {
  const int size = dtype_size(dtype);
  return make_plan(n, d, 16 / size > 4 ? 4 : 16 / size, size == 2);
}

}  // namespace

ColPlan col_plan(int64_t n, int64_t d, int dtype) {
  return make_plan(n, d, 16 / dtype_size(dtype), dtype_size(dtype) == 2);
}

int col_stats_groups(int mode, int views, int sqdiff) {
  return (mode == kStatsMoments ? 2 : 1) * views + (mode == kStatsMoments && sqdiff && views == 2);
}

cudaError_t col_stats(const ColStatsArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_col_stats, a, stream)
}

int col_merge_blocks(int64_t d) { return static_cast<int>(ceil_div(d > 0 ? d : 1, kThreads)); }

cudaError_t col_merge(const ColMergeArgs& a, int dtype, cudaStream_t stream) {
  if (a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_col_merge, a, stream)
}

cudaError_t center(const CenterArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_center, a, stream)
}

int row_blocks(int64_t n) {
  int64_t b = ceil_div(n, kWarps);
  if (b < 1) b = 1;
  if (b > kMaxRowBlocks) b = kMaxRowBlocks;
  return static_cast<int>(b);
}

cudaError_t row_scale(const RowScaleArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_row_scale, a, stream)
}

int gram_blocks(int64_t rows) {
  int64_t b = ceil_div(rows, kWarps);
  if (b < 1) b = 1;
  if (b > kMaxGramBlocks) b = kMaxGramBlocks;
  return static_cast<int>(b);
}

cudaError_t gram_pass(const GramPassArgs& a, cudaStream_t stream) {
  if (a.m <= 0 || a.fin == nullptr) return cudaErrorInvalidValue;
  if (a.out == a.g && (a.odtype != a.gdtype || a.swap)) return cudaErrorInvalidValue;
  if (a.swap && !a.pair) return cudaErrorInvalidValue;
  if (a.gdtype == kFloat32) {
    if (a.odtype == kFloat32) return launch_gram_pass<float, float>(a, stream);
    if (a.odtype == kBFloat16) return launch_gram_pass<float, __nv_bfloat16>(a, stream);
  } else if (a.gdtype == kFloat64) {
    if (a.odtype == kFloat32) return launch_gram_pass<double, float>(a, stream);
    if (a.odtype == kFloat64) return launch_gram_pass<double, double>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t finalize(const FinalizeArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH(dtype, launch_finalize, a, stream)
}

cudaError_t vicreg_bwd(const VICRegBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_vicreg_bwd, a, stream)
}

cudaError_t moments_bwd(const MomentsBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_moments_bwd, a, stream)
}

cudaError_t duality_bwd(const DualityBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_duality_bwd, a, stream)
}

int64_t bn_bwd_workspace_elems(int64_t n, int64_t d, int dtype) {
  if (n <= 0 || d <= 0) return 0;
  const ColPlan p = bn_plan(n, d, dtype);
  return 6 * p.chunks * d + (p.chunks > 1 ? 6 * d : 0);
}

cudaError_t bn_bwd(const BNBwdArgs& a, int dtype, double* workspace, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_bn_bwd, a, workspace, stream)
}

cudaError_t row_bwd(const RowBwdArgs& a, int dtype, cudaStream_t stream) {
  if (a.n <= 0 || a.d <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_row_bwd, a, stream)
}

cudaError_t sym_scale(const void* g, int64_t m, double scale, int dtype, void* out,
                      cudaStream_t stream) {
  if (m <= 0) return cudaSuccess;
  DK_DISPATCH(dtype, launch_sym_scale, g, m, scale, out, stream)
}

}  // namespace duality_kernels
