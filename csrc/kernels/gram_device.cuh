// Device helpers shared by the covariance family's kernel files (col_stats.cu, row_ops.cu,
// col_bwd.cu, gram_ops.cu): block shape, warp and block sums, the column tiles' row loads, stores
// and in-block column sums (the layouts are described in gram_ops.cu's overview), and the row
// scale of row_scale / row_bwd. Included by those .cu files only: everything is internal to
// each file's translation unit, as the kernels are.
#pragma once

#include "gram_ops.h"

#include "common.cuh"

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

// Slots 0 and 1 of a kernel's finalize partials (slot j at fin + j * gridDim.x, one partial per
// block): the block's sums of f0 and f1. fin may be null (no partials), the same for the whole
// grid; every thread of the block must call it. fin by reference: read where the caller's is (a copy
// took 12 more registers in col_merge_kernel, ptxas sm_86-sm_90).
__device__ __forceinline__ void store_fin2(double* const& fin, double f0, double f1) {
  if (fin != nullptr) {
    f0 = block_sum(f0);
    f1 = block_sum(f1);
    if (threadIdx.x == 0) {
      fin[blockIdx.x] = f0;
      fin[gridDim.x + blockIdx.x] = f1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Column tiles (see the layouts in gram_ops.cu): this thread's j-th column, and row loads/stores.

template <int V, bool A>
__device__ __forceinline__ int64_t tcol(int64_t c0, int lane, int j) {
  return A ? c0 + static_cast<int64_t>(lane) * V + j : c0 + static_cast<int64_t>(j) * 32 + lane;
}

// v[j] = row[tcol(j)] for the columns below d: converted to W, past d W(0); Raw: the storage values
// themselves (W = U), past d untouched.
template <int V, bool A, bool Raw, typename W, typename U>
__device__ __forceinline__ void load_cols(const U* row, int64_t c0, int lane, int64_t d, W (&v)[V]) {
  const auto in = [](U x) -> W {
    if constexpr (Raw) return x;
    else return cvt_in<W>(x);
  };
  if (A) {
    const int64_t c = c0 + static_cast<int64_t>(lane) * V;
    if (c < d) {
      const Arr<U, V> t = load_arr<U, V>(row + c);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = in(t.v[j]);
    } else if (!Raw) {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = W(0);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t c = c0 + static_cast<int64_t>(j) * 32 + lane;
      if (Raw) {
        if (c < d) v[j] = in(row[c]);
      } else {
        v[j] = c < d ? in(row[c]) : W(0);
      }
    }
  }
}

// v[j] = row[tcol(j)] converted to W, 0 past d.
template <int V, bool A, typename W, typename U>
__device__ __forceinline__ void load_row(const U* row, int64_t c0, int lane, int64_t d, W (&v)[V]) {
  load_cols<V, A, false>(row, c0, lane, d, v);
}

// load_row of the row at base + off, or zeros where base is null (an optional operand).
template <int V, bool A, typename W, typename U>
__device__ __forceinline__ void load_row_or_zero(const U* base, int64_t off, int64_t c0, int lane, int64_t d,
                                                 W (&v)[V]) {
  if (base != nullptr) {
    load_row<V, A>(base + off, c0, lane, d, v);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = W(0);
  }
}

// The same without conversion (raw storage values; past d: untouched).
template <int V, bool A, typename U>
__device__ __forceinline__ void load_raw(const U* row, int64_t c0, int lane, int64_t d, U (&v)[V]) {
  load_cols<V, A, true>(row, c0, lane, d, v);
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

// The start of every column-tile kernel: this thread's lane and warp, and the block's TileRows
// (`const auto [lane, warp, t] = tile_thread(p, n);`).
struct TileThread {
  int lane, warp;
  TileRows t;
};
__device__ __forceinline__ TileThread tile_thread(const ColPlan& p, int64_t n) {
  const int lane = lane_id(), warp = warp_id();
  return {lane, warp, tile_rows(p, n)};
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

}  // namespace
}  // namespace duality_kernels
