// A CPU simulator for the CUDA kernels in csrc/kernels/, used only by the test suite
// (tests/csim.py builds csrc/bindings/*.cpp + csrc/sim/sim_kernels.cpp with -DDK_HOST_SIM into a
// CPU extension and runs the same tests as on a GPU, on CPU tensors).
//
// Why: the development machine has nvcc but no GPU, so without this the kernels would only be
// compiled, never run, before a GPU session. The simulator runs the real kernel source: every CUDA
// thread of a block is a user-space fiber (ucontext), the fibers of a block run one after another
// in thread order 0, 1, ..., and __syncthreads() switches to the next fiber until all of them have
// arrived. Blocks run one after another; `__shared__` becomes `static`, which is per block because
// blocks never overlap. What it checks: the arithmetic, the indexing, the grid/block bookkeeping,
// launch limits (block size, grid dimensions), and barriers that not every thread reaches
// (reported as an error instead of a hang). What it cannot check: races that only show under real
// concurrency, performance, and cuBLAS (the GEMMs run through ATen on CPU tensors). Warp
// shuffles (__shfl_xor_sync with the full mask, the only warp-level operation the kernels use)
// are a barrier over the 32 threads of the warp with an exchange through per-thread slots: a
// shuffle that not every thread of a full warp reaches is reported like a divergent barrier.
// Results are deterministic.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict

#include "cuda_sim_types.h"

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace dk_sim {
// The current fiber's coordinates and the current launch's shape.
extern dim3 thread_idx, block_idx, block_dim, grid_dim;
// Called by __syncthreads(): yields to the scheduler until every thread of the block arrives.
void syncthreads();
// A barrier over the current thread's warp (its 32 threads; blocks are whole warps).
void syncwarp();
// The current thread's slot of the warp-exchange buffer, and another thread's (by block index).
uint64_t& exchange_slot(unsigned thread);
unsigned linear_thread();
// Runs body once per (block, thread), as described above; returns a CUDA-like error code
// (invalid configuration for CUDA's launch limits, launch failure for a divergent barrier).
cudaError_t launch(dim3 grid, dim3 block, const std::function<void()>& body);
}  // namespace dk_sim

#define threadIdx (::dk_sim::thread_idx)
#define blockIdx (::dk_sim::block_idx)
#define blockDim (::dk_sim::block_dim)
#define gridDim (::dk_sim::grid_dim)

inline void __syncthreads() { dk_sim::syncthreads(); }

// Butterfly shuffle over a full warp: every thread publishes v, waits for its warp, reads the
// value of lane ^ lane_mask, and waits again so that no slot is overwritten before it is read.
template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "shuffle of a value wider than 64 bits");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "dk_sim: __shfl_xor_sync with a partial mask is not simulated\n");
    std::abort();
  }
  const unsigned me = dk_sim::linear_thread();
  std::memcpy(&dk_sim::exchange_slot(me), &v, sizeof(V));
  dk_sim::syncwarp();
  V r;
  std::memcpy(&r, &dk_sim::exchange_slot((me & ~31u) | ((me & 31u) ^ static_cast<unsigned>(lane_mask & 31))),
              sizeof(V));
  dk_sim::syncwarp();
  return r;
}

using std::sqrt;

// CUDA's device-side min/max accept mixed integer types of equal width; so do these.
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// Half and bfloat16 with the conversions the kernels use (explicit only, as under torch's nvcc
// flags). bf16: round to nearest even, NaN kept quiet. half: the compiler's _Float16.
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  _Float16 v;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }

#define DK_LAUNCH(kernel, grid, block, stream, ...) \
  ::dk_sim::launch((grid), (block), [&]() { kernel(__VA_ARGS__); })
