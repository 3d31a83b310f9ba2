// Helpers shared by the torch-free kernel files (DESIGN convention 8): the CUDA headers (or, for
// the test suite's CPU simulator, csrc/sim/cuda_sim.h), the launch macro, accumulator types and
// explicit half/bf16 conversions (torch's nvcc flags disable the implicit ones).
#pragma once

#include <cstdint>

#ifdef DK_HOST_SIM
#include "../sim/cuda_sim.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
// kernel<<<grid, block, 0, stream>>>(args...), spelled so that the simulator can run it too.
#define DK_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace duality_kernels {
namespace detail {

// float32 accumulation for float32/float16/bfloat16 inputs, float64 for float64 (SPEC notation).
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccType<T>::type x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace detail
}  // namespace duality_kernels
