// The CUDA extension's host path with every kernel launch replaced by a counter, for
// benchmarks/host_overhead.py: csrc/bindings/ plus the test suite's CPU simulator build
// (csrc/sim/sim_kernels.cpp, which includes the kernel sources unchanged), compiled with
// -DDK_HOST_SIM so that the bindings take CPU tensors. Only the launch macro differs from the
// simulator: DK_LAUNCH counts instead of running the kernel, so the bindings' checks, allocations,
// ATen calls (the GEMMs, on small CPU tensors) and launch bookkeeping all run, and no kernel does.
#include "sim/cuda_sim.h"  // #pragma once: sim_kernels.cpp's own include of it is skipped below

namespace dk_host {
long long launches = 0;
inline cudaError_t count_launch() {
  ++launches;
  return cudaSuccess;
}
}  // namespace dk_host

#undef DK_LAUNCH
#define DK_LAUNCH(...) ::dk_host::count_launch()

#include "sim/sim_kernels.cpp"

// Read through ctypes by host_overhead.py (the pybind11 module is csrc/bindings/module.cpp's, unchanged).
extern "C" __attribute__((visibility("default"))) long long dk_host_launches() {
  return dk_host::launches;
}
