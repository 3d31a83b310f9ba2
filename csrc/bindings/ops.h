// The entry points of duality_kernels._C, one forward and one backward per op (defined in
// gram_family.cpp and gathered.cpp). Each checks ALL of its arguments first (RuntimeError naming
// the function, the argument and its value), then allocates its outputs and launches; a forward
// returns its documented results followed by what its backward needs. `sample`: the Grams on the
// N×N side, else D×D. Upstream gradients given as None (std::nullopt) count as 0.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace duality_kernels::bind {

std::vector<at::Tensor> vicreg_fwd(const at::Tensor& z1, const at::Tensor& z2, double inv_w, double var_w,
    double cov_w, double gamma, double eps, bool sample);
std::vector<at::Tensor> vicreg_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
    const at::Tensor& gram, const at::Tensor& stats, const std::optional<at::Tensor>& g_loss,
    const std::optional<at::Tensor>& g_inv, const std::optional<at::Tensor>& g_var,
    const std::optional<at::Tensor>& g_cov, double inv_w, double var_w, double cov_w, double gamma, double eps,
    bool sample);
std::vector<at::Tensor> cross_correlation_fwd(const at::Tensor& z1, const at::Tensor& z2, double eps);
std::vector<at::Tensor> cross_correlation_bwd(const at::Tensor& x, const at::Tensor& m2, const at::Tensor& grad,
    double eps);
std::vector<at::Tensor> barlow_twins_fwd(const at::Tensor& z1, const at::Tensor& z2, double lambda, double eps,
    bool sample);
std::vector<at::Tensor> barlow_twins_bwd(const at::Tensor& x, const at::Tensor& grams, const at::Tensor& m2,
    const at::Tensor& cdiag, const std::optional<at::Tensor>& g_loss, const std::optional<at::Tensor>& g_on,
    const std::optional<at::Tensor>& g_off, double lambda, double eps, bool sample);
std::vector<at::Tensor> covariance_fwd(const at::Tensor& z, int64_t correction);
at::Tensor covariance_bwd(const at::Tensor& x, const at::Tensor& grad, int64_t correction);
std::vector<at::Tensor> normalized_gram_fwd(const at::Tensor& z1, const std::optional<at::Tensor>& z2);
std::vector<at::Tensor> normalized_gram_bwd(const at::Tensor& z1, const std::optional<at::Tensor>& z2,
    const at::Tensor& x, const at::Tensor& q, const at::Tensor& grad);
std::vector<at::Tensor> spectral_fwd(const at::Tensor& z1, const at::Tensor& z2, double mu, bool sample);
std::vector<at::Tensor> spectral_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
    const at::Tensor& grams, const at::Tensor& q, const std::optional<at::Tensor>& g_loss,
    const std::optional<at::Tensor>& g_pos, const std::optional<at::Tensor>& g_neg, double mu, bool sample);
std::vector<at::Tensor> duality_terms_fwd(const at::Tensor& z, bool sample);
at::Tensor duality_terms_bwd(const at::Tensor& z, const at::Tensor& gram, const at::Tensor& q, const at::Tensor& c,
    const std::optional<at::Tensor>& g_lc, const std::optional<at::Tensor>& g_lnc,
    const std::optional<at::Tensor>& g_r4, const std::optional<at::Tensor>& g_c4, bool sample);
std::vector<at::Tensor> moments_fwd(const at::Tensor& z1, const at::Tensor& z2, int64_t mode);
std::vector<at::Tensor> moments_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
    const at::Tensor& mean, const std::optional<at::Tensor>& g_inv, const std::optional<at::Tensor>& g_mean,
    const std::optional<at::Tensor>& g_m2, const std::optional<at::Tensor>& g_gram, int64_t mode);
std::vector<at::Tensor> spectral_rows_fwd(const at::Tensor& z1, const at::Tensor& z2, double mu);
std::vector<at::Tensor> spectral_rows_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
    const at::Tensor& q, const std::optional<at::Tensor>& g_x, const std::optional<at::Tensor>& g_p, double mu);

}  // namespace duality_kernels::bind
