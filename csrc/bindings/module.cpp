// The Python module duality_kernels._C: the only translation unit that includes
// torch/extension.h (pybind11; docs/design.md convention 8). duality_kernels/ops/cuda.py wraps the entry
// points in torch.library custom ops (docs/design.md convention 2) and calls the autograd functions for
// plain eager tensors; nothing else should call them directly.
#include <torch/extension.h>

#include "bindings/autograd.h"
#include "bindings/ops.h"

namespace {
using namespace duality_kernels::bind;
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "duality_kernels compiled CUDA kernels. Use them through duality_kernels.ops.cuda (torch.library "
      "custom ops duality_kernels::*), not directly.";
  using pybind11::arg;
  m.def("vicreg_fwd", &vicreg_fwd, arg("z1"), arg("z2"), arg("inv_weight"), arg("var_weight"),
        arg("cov_weight"), arg("gamma"), arg("eps"), arg("sample"),
        "VICReg forward: [loss, invariance, variance, covariance, x (2,N,D), gram, "
        "stats (2,2,D)].");
  m.def("vicreg_bwd", &vicreg_bwd,
        "VICReg backward: [dz1, dz2]; the upstream gradients may be None (unused outputs).");
  m.def("cross_correlation_fwd", &cross_correlation_fwd, "[C (D,D), x (2,N,D), m2 (2,D)].");
  m.def("cross_correlation_bwd", &cross_correlation_bwd, "[dz1, dz2].");
  m.def("barlow_twins_fwd", &barlow_twins_fwd,
        "Barlow Twins forward: [loss, on, off, x, grams, m2, cdiag].");
  m.def("barlow_twins_bwd", &barlow_twins_bwd, "[dz1, dz2]; upstream gradients may be None.");
  m.def("covariance_fwd", &covariance_fwd, "[C (D,D), x (N,D)].");
  m.def("covariance_bwd", &covariance_bwd, "dz.");
  m.def("normalized_gram_fwd", &normalized_gram_fwd, arg("z1"), arg("z2") = pybind11::none(),
        "[K (N,N), x (V,N,D), q].");
  m.def("normalized_gram_bwd", &normalized_gram_bwd, "[dz1] or [dz1, dz2].");
  m.def("spectral_fwd", &spectral_fwd, "[loss, positive, negative, x, grams, q (3,N)].");
  m.def("spectral_bwd", &spectral_bwd, "[dz1, dz2]; upstream gradients may be None.");
  m.def("moments_fwd", &moments_fwd, arg("z1"), arg("z2"), arg("mode"),
        "[invariance, mean (2,D) f64, m2 (2,D) f64, gram, x] (gather_distributed's local moments).");
  m.def("moments_bwd", &moments_bwd, "[dz1, dz2]; upstream gradients may be None.");
  m.def("spectral_rows_fwd", &spectral_rows_fwd, arg("z1"), arg("z2"), arg("mu"),
        "[x (2,N,D) clamped rows, p (N), q (3,N)].");
  m.def("spectral_rows_bwd", &spectral_rows_bwd, "[dz1, dz2]; upstream gradients may be None.");
  m.def("duality_terms_fwd", &duality_terms_fwd, "[L_c, L_nc, rows4, cols4, gram, q, c].");
  m.def("duality_terms_bwd", &duality_terms_bwd, "dz; upstream gradients may be None.");
  // The eager path (C++ autograd Functions over the same entry points): the public results only.
  m.def("vicreg_autograd", &vicreg_autograd, "[loss, invariance, variance, covariance].");
  m.def("barlow_twins_autograd", &barlow_twins_autograd, "[loss, on, off].");
  m.def("spectral_autograd", &spectral_autograd, "[loss, positive, negative].");
  m.def("duality_terms_autograd", &duality_terms_autograd, "[L_c, L_nc, rows4, cols4].");
  m.def("covariance_autograd", &covariance_autograd, "C (D,D).");
  m.def("cross_correlation_autograd", &cross_correlation_autograd, "C (D,D).");
  m.def("normalized_gram_autograd", &normalized_gram_autograd, arg("z1"), arg("z2") = pybind11::none(),
        "K (N,N).");
}
