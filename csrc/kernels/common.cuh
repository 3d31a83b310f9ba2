// Helpers shared by the torch-free kernel files (docs/design.md convention 8): the CUDA headers (or, for
// the test suite's CPU simulator, csrc/sim/cuda_sim.h), the launch macro, accumulator types and
// explicit half/bf16 conversions (torch's nvcc flags disable the implicit ones).
#pragma once

#include <cstdint>
#include <type_traits>

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

// float32 accumulation for float32/float16/bfloat16 inputs, float64 for float64 (docs/spec.md "Notation").
template <typename T>
struct AccType {
  using type = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
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

// The type of the per-element arithmetic of the bandwidth-bound kernels: float64 for float32 and
// float64 inputs (the accuracy rule holds them to twice eager's float32 error, docs/design.md convention 5), float32
// for float16/bfloat16, whose values (and differences, and products of two) are exact in float32
// and whose accuracy is checked relative to their own rounding (gram_ops.h ColStatsArgs).
template <typename T>
struct Inner {
  using type = typename std::conditional<sizeof(T) == 2, float, double>::type;  // fp16/bf16: float
};

// Elements of T per 16-byte vector access.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// N consecutive values of U as one aligned unit: 16-byte (or, below 16 bytes, N * sizeof(U)-byte)
// vector loads and stores where the address is aligned to it (csrc kernels check the alignment
// on the host and fall back to scalar accesses otherwise).
template <typename U, int N>
struct alignas(N * sizeof(U) >= 16 ? 16 : N * sizeof(U)) Arr {
  U v[N];
};

template <typename U, int N>
__device__ __forceinline__ Arr<U, N> load_arr(const U* p) {
  return *reinterpret_cast<const Arr<U, N>*>(p);
}
template <typename U, int N>
__device__ __forceinline__ void store_arr(U* p, const Arr<U, N>& a) {
  *reinterpret_cast<Arr<U, N>*>(p) = a;
}

// Conversions between a storage type U and an arithmetic type W (explicit, see above).
template <typename W, typename U>
__device__ __forceinline__ W cvt_in(U x) {
  return static_cast<W>(to_acc(x));
}
template <typename U, typename W>
__device__ __forceinline__ U cvt_out(W x) {
  return from_acc<U>(static_cast<typename AccType<U>::type>(x));
}

}  // namespace detail
}  // namespace duality_kernels
