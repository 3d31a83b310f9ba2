// Per-column mean and centered sum of squares (see column_stats.h), forward and backward.
//
// Only CUDA headers here (DESIGN convention 8). Torch compiles .cu files with
// -D__CUDA_NO_HALF_CONVERSIONS__ / -D__CUDA_NO_BFLOAT16_CONVERSIONS__, so every half/bf16 value is
// converted explicitly (__half2float, __float2bfloat16_rn, ...).
//
// Forward = a deterministic two-stage reduction (DESIGN convention 7, no float atomics):
//   stage 1: grid (column tiles of kCols) x (row chunks of rows_per_chunk). Thread (tx, ty) of a
//            block owns column tile*kCols + tx and the chunk's rows ty, ty + kLanes, ...; a warp
//            therefore reads kCols consecutive elements of one row (coalesced). Each thread
//            computes the exact two-pass statistics of its rows (count, sum, mean and M2 of the
//            rows shifted by the column's first element, see Partial), then the block merges its
//            kLanes partials per column in the fixed order 0, 1, ..., kLanes-1 (Chan et al.) and
//            writes one partial per (chunk, column).
//   stage 2: grid over column tiles; the same thread layout merges the chunk partials of each
//            column (lane ty takes chunks ty, ty + kLanes, ... in order, then the block merges
//            the lanes in order). The count of a chunk is implied by its index, so it is not
//            stored. With one chunk, stage 1 writes the outputs directly and stage 2 is skipped.
//   mean = (merged sum) / n, m2 = merged M2.
// Every index that can reach N*D is int64 (N*D may exceed 2^31, DESIGN convention 6).
//
// Correctness first: later work may vectorize loads and fuse this into the loss kernels.

#include "column_stats.h"

#include "common.cuh"

#include <climits>
#include <cstdint>

namespace duality_kernels {
namespace {

using detail::AccType;
using detail::ceil_div;
using detail::from_acc;
using detail::to_acc;

constexpr int kCols = 32;   // columns per block = one warp across consecutive columns
constexpr int kLanes = 8;   // row lanes per block; kCols * kLanes = 256 threads
constexpr int kThreads = kCols * kLanes;

// Stage-1 sizing: detail::col_plan (common.cuh).
using detail::kMaxGridY;
static_assert(kCols == detail::kPlanCols, "column tiles as in col_plan");
// Backward: a grid-stride elementwise kernel; cap the grid at about this many blocks.
constexpr int64_t kBwdTargetBlocks = 8192;
// Workspace per (chunk, column): sum, shifted mean, m2 (the count follows from the chunk index).
constexpr int64_t kPartialFields = 3;

// Partial statistics of a set of rows of one column. The rows are shifted by the column's first
// element (shift = z[0, col]) before mean/m2 are accumulated: m2 is shift-invariant, and the
// partial means of shifted data are O(spread) instead of O(offset), so the delta^2 term of the
// merge below does not lose digits when |mean| >> std (the classic shifted-data algorithm).
// The mean output comes instead from the plain (unshifted) sum, so it has the accuracy of a
// plain summation even when |mean| << |shift|.
template <typename acc_t>
struct Partial {
  int64_t cnt;  // rows
  acc_t sum;    // sum of x (unshifted)
  acc_t mean;   // mean of (x - shift)
  acc_t m2;     // sum of (x - shift - mean)^2 = sum of (x - mean(x))^2
};

// Chan, Golub & LeVeque's pairwise update: merge b into a. Empty partials (cnt 0) are skipped,
// so lanes or chunks without rows are harmless.
template <typename acc_t>
__device__ __forceinline__ void chan_merge(Partial<acc_t>& a, const Partial<acc_t>& b) {
  if (b.cnt == 0) return;
  if (a.cnt == 0) {
    a = b;
    return;
  }
  const int64_t n = a.cnt + b.cnt;
  const acc_t delta = b.mean - a.mean;
  const acc_t wb = static_cast<acc_t>(b.cnt) / static_cast<acc_t>(n);  // nb / n
  a.mean = a.mean + delta * wb;
  a.m2 = a.m2 + b.m2 + delta * delta * (static_cast<acc_t>(a.cnt) * wb);  // + delta^2 na nb / n
  a.sum = a.sum + b.sum;
  a.cnt = n;
}

// Merge the kLanes partials of each column of a (kCols x kLanes) block in lane order 0..kLanes-1.
// The result is valid in lane 0 (threadIdx.y == 0). Every thread of the block must call this
// (it synchronizes).
template <typename acc_t>
__device__ __forceinline__ Partial<acc_t> block_merge(Partial<acc_t> p) {
  __shared__ int64_t s_cnt[kLanes][kCols];
  __shared__ acc_t s_sum[kLanes][kCols];
  __shared__ acc_t s_mean[kLanes][kCols];
  __shared__ acc_t s_m2[kLanes][kCols];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  s_cnt[ty][tx] = p.cnt;
  s_sum[ty][tx] = p.sum;
  s_mean[ty][tx] = p.mean;
  s_m2[ty][tx] = p.m2;
  __syncthreads();
  if (ty == 0) {
    for (int lane = 1; lane < kLanes; ++lane) {
      const Partial<acc_t> q{s_cnt[lane][tx], s_sum[lane][tx], s_mean[lane][tx], s_m2[lane][tx]};
      chan_merge(p, q);
    }
  }
  return p;
}

// Stage 1: block (blockIdx.x, blockIdx.y) = (column tile, row chunk). With one chunk
// (final == true) it writes mean/m2 directly; otherwise the chunk's partial (sum, shifted mean,
// m2) of each column goes to part_*[chunk * d + col] (chunk-major, so stores are coalesced).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_stats_partial_kernel(const T* __restrict__ z, int64_t n, int64_t d,
                                int64_t rows_per_chunk, bool final,
                                typename AccType<T>::type* __restrict__ out_mean,
                                typename AccType<T>::type* __restrict__ out_m2,
                                typename AccType<T>::type* __restrict__ part_sum,
                                typename AccType<T>::type* __restrict__ part_mean,
                                typename AccType<T>::type* __restrict__ part_m2) {
  using acc_t = typename AccType<T>::type;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t row_begin = chunk * rows_per_chunk;
  const int64_t row_end = min(n, row_begin + rows_per_chunk);

  Partial<acc_t> p{0, acc_t(0), acc_t(0), acc_t(0)};
  if (col < d) {
    const acc_t shift = to_acc(z[col]);  // row 0: the same shift in every block
    // Exact two-pass statistics of this thread's rows: first the sums, then the squared
    // deviations from the thread's own (shifted) mean. The second pass rereads data this block
    // just loaded (L1/L2 hits).
    acc_t sum = 0;
    acc_t sum_shifted = 0;
    int64_t cnt = 0;
    for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kLanes) {
      const acc_t x = to_acc(z[r * d + col]);
      sum += x;
      sum_shifted += x - shift;
      ++cnt;
    }
    if (cnt > 0) {
      const acc_t mean = sum_shifted / static_cast<acc_t>(cnt);
      acc_t m2 = 0;
      for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kLanes) {
        const acc_t dev = (to_acc(z[r * d + col]) - shift) - mean;
        m2 += dev * dev;
      }
      p = Partial<acc_t>{cnt, sum, mean, m2};
    }
  }
  p = block_merge(p);
  if (threadIdx.y == 0 && col < d) {
    if (final) {
      out_mean[col] = p.sum / static_cast<acc_t>(n);
      out_m2[col] = p.m2;
    } else {
      const int64_t i = chunk * d + col;
      part_sum[i] = p.sum;
      part_mean[i] = p.mean;
      part_m2[i] = p.m2;
    }
  }
}

// Stage 2: one block per column tile merges the num_chunks partials of each of its columns.
// Chunk c holds min(rows_per_chunk, n - c * rows_per_chunk) rows (every chunk is non-empty).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    column_stats_merge_kernel(const acc_t* __restrict__ part_sum,
                              const acc_t* __restrict__ part_mean,
                              const acc_t* __restrict__ part_m2, int64_t n, int64_t d,
                              int64_t rows_per_chunk, int64_t num_chunks,
                              acc_t* __restrict__ out_mean, acc_t* __restrict__ out_m2) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  Partial<acc_t> p{0, acc_t(0), acc_t(0), acc_t(0)};
  if (col < d) {
    for (int64_t c = threadIdx.y; c < num_chunks; c += kLanes) {
      const int64_t i = c * d + col;
      const Partial<acc_t> q{min(rows_per_chunk, n - c * rows_per_chunk), part_sum[i],
                             part_mean[i], part_m2[i]};
      chan_merge(p, q);
    }
  }
  p = block_merge(p);
  if (threadIdx.y == 0 && col < d) {
    out_mean[col] = p.sum / static_cast<acc_t>(n);
    out_m2[col] = p.m2;
  }
}

// Backward: dz = grad_mean / n + 2 (z - mean) grad_m2, elementwise with a grid-stride loop
// over rows; thread (tx, ty) keeps its column's three coefficients in registers.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_stats_bwd_kernel(const T* __restrict__ z,
                            const typename AccType<T>::type* __restrict__ mean,
                            const typename AccType<T>::type* __restrict__ grad_mean,
                            const typename AccType<T>::type* __restrict__ grad_m2, int64_t n,
                            int64_t d, T* __restrict__ dz) {
  using acc_t = typename AccType<T>::type;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  if (col >= d) return;  // no shared memory or barriers below: early exit is safe
  const acc_t mu = mean[col];
  const acc_t a = grad_mean[col] / static_cast<acc_t>(n);
  const acc_t b = static_cast<acc_t>(2) * grad_m2[col];
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * kLanes;
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y; r < n;
       r += row_step) {
    const int64_t i = r * d + col;
    dz[i] = from_acc<T>(a + b * (to_acc(z[i]) - mu));
  }
}

using Plan = detail::ColPlan;

Plan make_plan(int64_t n, int64_t d) { return detail::col_plan(n, d); }

template <typename T>
cudaError_t launch_fwd(const void* z_, int64_t n, int64_t d, void* mean_, void* m2_,
                       void* workspace_, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const T* z = static_cast<const T*>(z_);
  acc_t* mean = static_cast<acc_t*>(mean_);
  acc_t* m2 = static_cast<acc_t*>(m2_);
  const Plan p = make_plan(n, d);
  if (p.col_tiles > INT_MAX) return cudaErrorInvalidConfiguration;
  const dim3 block(kCols, kLanes);

  if (p.num_chunks == 1) {
    DK_LAUNCH(column_stats_partial_kernel<T>, dim3(static_cast<unsigned>(p.col_tiles), 1), block,
              stream, z, n, d, p.rows_per_chunk, /*final=*/true, mean, m2, nullptr, nullptr,
              nullptr);
    return cudaGetLastError();
  }
  if (workspace_ == nullptr) return cudaErrorInvalidValue;
  acc_t* part_sum = static_cast<acc_t*>(workspace_);
  acc_t* part_mean = part_sum + p.num_chunks * d;
  acc_t* part_m2 = part_mean + p.num_chunks * d;
  DK_LAUNCH(column_stats_partial_kernel<T>,
            dim3(static_cast<unsigned>(p.col_tiles), static_cast<unsigned>(p.num_chunks)), block,
            stream, z, n, d, p.rows_per_chunk, /*final=*/false, nullptr, nullptr, part_sum,
            part_mean, part_m2);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  DK_LAUNCH(column_stats_merge_kernel<acc_t>, dim3(static_cast<unsigned>(p.col_tiles), 1), block,
            stream, part_sum, part_mean, part_m2, n, d, p.rows_per_chunk, p.num_chunks, mean, m2);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const void* z_, const void* mean_, const void* grad_mean_,
                       const void* grad_m2_, int64_t n, int64_t d, void* dz_,
                       cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const int64_t col_tiles = ceil_div(d, kCols);
  if (col_tiles > INT_MAX) return cudaErrorInvalidConfiguration;
  int64_t grid_y = kBwdTargetBlocks / col_tiles;
  if (grid_y < 1) grid_y = 1;
  const int64_t row_tiles = ceil_div(n, kLanes);
  if (grid_y > row_tiles) grid_y = row_tiles;
  if (grid_y > kMaxGridY) grid_y = kMaxGridY;
  DK_LAUNCH(column_stats_bwd_kernel<T>,
            dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(grid_y)),
            dim3(kCols, kLanes), stream, static_cast<const T*>(z_),
            static_cast<const acc_t*>(mean_), static_cast<const acc_t*>(grad_mean_),
            static_cast<const acc_t*>(grad_m2_), n, d, static_cast<T*>(dz_));
  return cudaGetLastError();
}

}  // namespace

int64_t column_stats_workspace_elems(int64_t n, int64_t d) {
  if (n <= 0 || d <= 0) return 0;
  const Plan p = make_plan(n, d);
  return p.num_chunks > 1 ? kPartialFields * p.num_chunks * d : 0;
}

cudaError_t column_stats_fwd(const void* z, int64_t n, int64_t d, int dtype, void* mean, void* m2,
                             void* workspace, cudaStream_t stream) {
  if (n < 0 || d < 0) return cudaErrorInvalidValue;
  if (n == 0 || d == 0) return cudaSuccess;  // never launch an empty grid
  switch (dtype) {
    case kFloat32:
      return launch_fwd<float>(z, n, d, mean, m2, workspace, stream);
    case kFloat64:
      return launch_fwd<double>(z, n, d, mean, m2, workspace, stream);
    case kFloat16:
      return launch_fwd<__half>(z, n, d, mean, m2, workspace, stream);
    case kBFloat16:
      return launch_fwd<__nv_bfloat16>(z, n, d, mean, m2, workspace, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t column_stats_bwd(const void* z, const void* mean, const void* grad_mean,
                             const void* grad_m2, int64_t n, int64_t d, int dtype, void* dz,
                             cudaStream_t stream) {
  if (n < 0 || d < 0) return cudaErrorInvalidValue;
  if (n == 0 || d == 0) return cudaSuccess;
  switch (dtype) {
    case kFloat32:
      return launch_bwd<float>(z, mean, grad_mean, grad_m2, n, d, dz, stream);
    case kFloat64:
      return launch_bwd<double>(z, mean, grad_mean, grad_m2, n, d, dz, stream);
    case kFloat16:
      return launch_bwd<__half>(z, mean, grad_mean, grad_m2, n, d, dz, stream);
    case kBFloat16:
      return launch_bwd<__nv_bfloat16>(z, mean, grad_mean, grad_m2, n, d, dz, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace duality_kernels
