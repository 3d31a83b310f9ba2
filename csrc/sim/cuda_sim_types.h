// The CUDA runtime types and error helpers that the simulator (cuda_sim.h) stands in for. Also
// included, through csrc/kernels/api.h, by csrc/bindings/ when it is built for the simulator.
#pragma once

typedef int cudaError_t;
enum : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef void* cudaStream_t;

namespace dk_sim {
// The first error since the last call, like cudaGetLastError().
int take_error();
}  // namespace dk_sim

inline cudaError_t cudaGetLastError() { return dk_sim::take_error(); }
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaErrorLaunchFailure";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

