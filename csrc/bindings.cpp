// Python bindings of duality_kernels._C: the ONLY translation unit that includes torch headers
// (DESIGN convention 8). It checks tensors, allocates outputs and scratch through torch's caching
// allocator, launches the torch-free kernels in csrc/kernels/ on the current CUDA stream and turns
// their cudaError_t into Python exceptions. duality_kernels/ops/cuda.py wraps these functions in
// torch.library custom ops (DESIGN convention 2); nothing else should call them directly.
//
// c10/cuda/CUDAStream.h and CUDAGuard.h, not ATen/cuda/CUDAContext.h: the latter pulls in
// cuSPARSE/cuBLAS headers that the build machine's CUDA toolkit lacks.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>

#include <tuple>

#include "kernels/column_stats.h"

namespace {

namespace dk = duality_kernels;

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return dk::kFloat32;
    case at::kDouble:
      return dk::kFloat64;
    case at::kHalf:
      return dk::kFloat16;
    case at::kBFloat16:
      return dk::kBFloat16;
    default:
      return -1;
  }
}

// Reductions accumulate, and statistics are returned, in float32 (float64 for float64 inputs).
at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(cudaError_t err, const char* fn) {
  TORCH_CHECK(err == cudaSuccess, "duality_kernels._C.", fn, ": CUDA error ",
              static_cast<int>(err), " (", cudaGetErrorName(err), "): ", cudaGetErrorString(err));
}

void check_z(const at::Tensor& z, const char* fn) {
  TORCH_CHECK(z.is_cuda(), fn, ": z must be a CUDA tensor, got device ", z.device());
  TORCH_CHECK(z.dim() == 2, fn, ": z must be 2-D (N, D), got shape ", z.sizes());
  TORCH_CHECK(z.is_contiguous(), fn, ": z must be contiguous, got strides ", z.strides());
  TORCH_CHECK(dtype_code(z.scalar_type()) >= 0, fn,
              ": z must be float32, float64, float16 or bfloat16, got ", z.scalar_type());
}

// A per-column vector that goes with z: (D,), contiguous, acc dtype, on z's device.
void check_column_vector(const at::Tensor& v, const at::Tensor& z, const char* name,
                         const char* fn) {
  TORCH_CHECK(v.device() == z.device(), fn, ": ", name, " must be on z's device ", z.device(),
              ", got ", v.device());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == z.size(1), fn, ": ", name, " must have shape (",
              z.size(1), ",) to match z of shape ", z.sizes(), ", got ", v.sizes());
  TORCH_CHECK(v.is_contiguous(), fn, ": ", name, " must be contiguous, got strides ", v.strides());
  TORCH_CHECK(v.scalar_type() == acc_dtype(z.scalar_type()), fn, ": ", name, " must be ",
              acc_dtype(z.scalar_type()), " for z of dtype ", z.scalar_type(), ", got ",
              v.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> column_stats_fwd(const at::Tensor& z) {
  constexpr const char* fn = "column_stats_fwd";
  check_z(z, fn);
  const c10::cuda::CUDAGuard device_guard(z.device());
  const int64_t n = z.size(0);
  const int64_t d = z.size(1);
  const auto opts = z.options().dtype(acc_dtype(z.scalar_type()));
  if (n == 0 || d == 0) {
    // Nothing to reduce: never launch an empty grid. Zeros by convention (sum of no squares is 0;
    // the mean of no rows is undefined and public functions reject N < 2 before getting here).
    return {at::zeros({d}, opts), at::zeros({d}, opts)};
  }
  at::Tensor mean = at::empty({d}, opts);
  at::Tensor m2 = at::empty({d}, opts);
  const int64_t ws_elems = dk::column_stats_workspace_elems(n, d);
  // Scratch from the caching allocator: freed at return, but stream-ordered, so safe to reuse.
  at::Tensor workspace = at::empty({ws_elems}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(z.device().index()).stream();
  check_cuda(dk::column_stats_fwd(z.data_ptr(), n, d, dtype_code(z.scalar_type()), mean.data_ptr(),
                                  m2.data_ptr(), ws_elems > 0 ? workspace.data_ptr() : nullptr,
                                  stream),
             fn);
  return {mean, m2};
}

at::Tensor column_stats_bwd(const at::Tensor& z, const at::Tensor& mean,
                            const at::Tensor& grad_mean, const at::Tensor& grad_m2) {
  constexpr const char* fn = "column_stats_bwd";
  check_z(z, fn);
  check_column_vector(mean, z, "mean", fn);
  check_column_vector(grad_mean, z, "grad_mean", fn);
  check_column_vector(grad_m2, z, "grad_m2", fn);
  const c10::cuda::CUDAGuard device_guard(z.device());
  at::Tensor dz = at::empty(z.sizes(), z.options());  // contiguous, z's dtype
  if (z.numel() == 0) return dz;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(z.device().index()).stream();
  check_cuda(dk::column_stats_bwd(z.data_ptr(), mean.data_ptr(), grad_mean.data_ptr(),
                                  grad_m2.data_ptr(), z.size(0), z.size(1),
                                  dtype_code(z.scalar_type()), dz.data_ptr(), stream),
             fn);
  return dz;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "duality_kernels compiled CUDA kernels. Use them through duality_kernels.ops.cuda (torch.library "
      "custom ops duality_kernels::*), not directly.";
  m.def("column_stats_fwd", &column_stats_fwd, pybind11::arg("z"),
        "Per-column (mean, m2) of a contiguous CUDA (N, D) tensor: mean = z.mean(0), "
        "m2 = ((z - mean)**2).sum(0), float32 (float64 for float64 z).");
  m.def("column_stats_bwd", &column_stats_bwd, pybind11::arg("z"), pybind11::arg("mean"),
        pybind11::arg("grad_mean"), pybind11::arg("grad_m2"),
        "dz = grad_mean / N + 2 * (z - mean) * grad_m2, in z's dtype.");
}
