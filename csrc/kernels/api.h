// What the kernel headers need from the CUDA runtime API (cudaError_t, cudaStream_t), without the
// device-side definitions of common.cuh: these headers are also included by csrc/bindings/.
#pragma once

#ifdef DK_HOST_SIM
#include "../sim/cuda_sim_types.h"
#else
#include <cuda_runtime.h>
#endif

namespace duality_kernels {

// dtype codes shared with csrc/bindings/. The accumulator/output type ("acc") is float for
// kFloat32/kFloat16/kBFloat16 and double for kFloat64 (docs/spec.md "Notation": reductions accumulate in
// float32, float64 for float64 inputs).
enum DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
};

}  // namespace duality_kernels
