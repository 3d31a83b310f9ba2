// Fused per-column statistics of an (N, D) row-major matrix: the column means and centered sums
// of squares that every covariance-family loss (SPEC §3: VICReg's center(z) and var_u, Barlow
// Twins' BatchNorm standardization) starts from.
//
// Torch-free on purpose (DESIGN convention 8): this header and its .cu see only CUDA headers, so
// they compile in seconds; csrc/bindings.cpp is the one file that talks to torch.
#pragma once

#include <cstdint>

#include "api.h"

namespace duality_kernels {

// dtype codes: see api.h.

// Number of acc-typed elements of scratch memory that column_stats_fwd needs for this shape
// (0 when a single pass suffices). Depends on (n, d) only, never on the device, so a given shape
// always takes the same reduction order and gives bit-identical results (DESIGN convention 7).
int64_t column_stats_workspace_elems(int64_t n, int64_t d);

// Forward: for z (n x d, row-major contiguous, element type given by `dtype`)
//   mean[k] = (1/n) sum_i z[i, k]
//   m2[k]   = sum_i (z[i, k] - mean[k])^2
// mean and m2 are acc-typed arrays of d elements; `workspace` holds
// column_stats_workspace_elems(n, d) acc elements (may be null when that is 0). No float atomics:
// a two-stage reduction merges per-chunk (count, mean, M2) partials with Chan et al.'s formula in
// a fixed order. n == 0 or d == 0 launches nothing and leaves the outputs untouched.
// Returns the first CUDA error seen (launch configuration or cudaGetLastError after each launch).
cudaError_t column_stats_fwd(const void* z, int64_t n, int64_t d, int dtype, void* mean, void* m2,
                             void* workspace, cudaStream_t stream);

// Backward of the forward above, given the upstream gradients of mean and m2 (acc-typed, d each):
//   dz[i, k] = grad_mean[k] / n + 2 * (z[i, k] - mean[k]) * grad_m2[k]
// computed in acc type and written in z's dtype. (m2's dependence through mean vanishes because
// sum_i (z[i, k] - mean[k]) = 0.) n == 0 or d == 0 launches nothing.
cudaError_t column_stats_bwd(const void* z, const void* mean, const void* grad_mean,
                             const void* grad_m2, int64_t n, int64_t d, int dtype, void* dz,
                             cudaStream_t stream);

}  // namespace duality_kernels
