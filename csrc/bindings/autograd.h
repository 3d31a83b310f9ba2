// The eager autograd path of duality_kernels._C (autograd.cpp): a C++ autograd node over each
// forward/backward pair of entry points, returning the op's public results only.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace duality_kernels::bind {

std::vector<at::Tensor> vicreg_autograd(const at::Tensor& z1, const at::Tensor& z2, double inv_w, double var_w,
                                        double cov_w, double gamma, double eps, bool sample);
std::vector<at::Tensor> barlow_twins_autograd(const at::Tensor& z1, const at::Tensor& z2, double lambda, double eps,
                                              bool sample);
std::vector<at::Tensor> spectral_autograd(const at::Tensor& z1, const at::Tensor& z2, double mu, bool sample);
std::vector<at::Tensor> duality_terms_autograd(const at::Tensor& z, bool sample);
at::Tensor covariance_autograd(const at::Tensor& z, int64_t correction);
at::Tensor cross_correlation_autograd(const at::Tensor& z1, const at::Tensor& z2, double eps);
at::Tensor normalized_gram_autograd(const at::Tensor& z1, const std::optional<at::Tensor>& z2);

}  // namespace duality_kernels::bind
