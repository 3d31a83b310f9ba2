// Host-side launch helpers shared by the covariance family's kernel files: the dtype dispatch, the
// choice between a kernel's vector (16-byte) and scalar access variants, grid checks, and the
// column plan (col_plan, gram_ops.h) that the column kernels' grids follow. Included by the
// csrc/kernels/*.cu files only (internal to each translation unit).
#pragma once

#include "gram_device.cuh"

#include <climits>
#include <cstdint>
#include <type_traits>

namespace duality_kernels {
namespace {

// Column plan: about four resident 256-thread blocks on each of the H200's 132 SMs, at least
// kMinChunkRows rows per chunk (fewer rows per block would mostly add float64 partials to write and
// merge: 5 groups x 16 chunks x 8192 columns = 5 MiB at VICReg 2048 x 8192, already 7% of the
// pass; the wide shapes get their blocks from the column tiles), and for fp16/bf16 at most 32 rows
// per thread (the float32 sums, gram_ops.h).
constexpr int64_t kTargetBlocks = 4 * 132;
constexpr int64_t kMinChunkRows = 64;
constexpr int64_t kMaxChunkRowsF32 = 32 * kWarps;

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

// A public entry point's body: cudaSuccess when the problem is `empty` (nothing to launch), else
// DK_DISPATCH.
#define DK_DISPATCH_UNLESS(empty, dtype, FN, ...) \
  if (empty) return cudaSuccess;                  \
  DK_DISPATCH(dtype, FN, __VA_ARGS__)

inline int dtype_size(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

// 16-byte vector accesses: rows of d elements of T start at 16-byte boundaries, and so do the
// arrays (null pointers do not count).
inline bool aligned_ptr(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
template <typename T, typename... P>
bool vectorizable(int64_t d, P... ptrs) {
  return d % kVec<T> == 0 && (aligned_ptr(ptrs) && ...);
}

inline bool grid_ok(int64_t blocks) { return blocks >= 1 && blocks <= INT_MAX; }

inline int64_t plan_blocks(const ColPlan& p) { return p.col_tiles * p.chunks; }

// T's dtype code (api.h).
template <typename T>
constexpr int dtype_of() {
  return std::is_same<T, double>::value ? kFloat64
         : std::is_same<T, float>::value ? kFloat32
         : std::is_same<T, __half>::value ? kFloat16
                                          : kBFloat16;
}

// The grid of a kernel that runs one warp per row over `rows` rows: ceil(rows / 8) blocks, at
// least 1 and at most max_blocks (the rows beyond are strided over).
inline int warp_row_blocks(int64_t rows, int64_t max_blocks) {
  int64_t b = ceil_div(rows, kWarps);
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return static_cast<int>(b);
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

// The plan for tiles of 32 x vec columns; f32_inner: fp16/bf16 inputs, summed in float32.
inline ColPlan make_plan(int64_t n, int64_t d, int64_t vec, bool f32_inner) {
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

}  // namespace
}  // namespace duality_kernels
