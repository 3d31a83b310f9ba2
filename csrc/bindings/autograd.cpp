// The eager autograd path: each forward/backward pair of entry points (bindings/ops.h) as a C++
// torch::autograd::Function, which ops/cuda.py calls for plain eager tensors (tracing and
// torch.compile take the custom ops, whose forward and backward are the same entry points,
// docs/design.md convention 2). The graph node, the saved tensors and the backward stay in C++: no
// Python autograd.Function (about 4 µs of host time per forward on the development machine) and
// no Python backward (about 5 µs, and a GIL acquisition in the autograd engine's device thread on
// a GPU). Unused outputs' gradients arrive undefined (set_materialize_grads(false)): the backward
// entry points take them as 0, with no zeros allocated. What a node saves is the same for every
// op: the inputs it names, then every forward output past the public results.
#include "bindings/autograd.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "bindings/common.h"
#include "bindings/ops.h"

namespace duality_kernels::bind {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward's public results; saves `inputs` and the outputs past them for the backward.
variable_list keep(AutogradContext* ctx, std::vector<at::Tensor> out, size_t results,
                   std::vector<at::Tensor> inputs = {}) {
  ctx->set_materialize_grads(false);
  inputs.insert(inputs.end(), out.begin() + static_cast<std::ptrdiff_t>(results), out.end());
  ctx->save_for_backward(inputs);
  out.resize(results);
  return out;
}

std::optional<at::Tensor> grad_at(const variable_list& g, size_t i) {
  if (i < g.size() && g[i].defined()) return g[i];
  return std::nullopt;
}

// A matrix output's gradient as the contiguous acc tensor the backward entry points take (it may
// come expanded, e.g. from .sum()), or undefined.
at::Tensor matrix_grad(const variable_list& g, at::ScalarType acc) {
  if (g.empty() || !g[0].defined()) return at::Tensor();
  return g[0].to(acc).contiguous();
}

// The gradients of a node with `inputs` inputs: dz first, none for the scalar arguments. The backward
// is not itself differentiable (docs/spec.md §8): under create_graph=True (grad mode on in the
// backward) its gradients would carry no graph and a second derivative would silently lose this
// op's terms, so it raises instead, naming the backend that supports it.
variable_list with_undefined(std::vector<at::Tensor> dz, size_t inputs) {
  TORCH_CHECK(!c10::GradMode::is_enabled(),
              "duality_kernels' compiled backends (triton, cuda) compute a backward that is not itself "
              "differentiable: double backward (create_graph=True, Hessian-vector products, gradient penalties) "
              "needs backend='torch' (docs/spec.md section 8)");
  dz.resize(inputs);
  return dz;
}

struct VICRegFn : torch::autograd::Function<VICRegFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2, double inv_w,
                               double var_w, double cov_w, double gamma, double eps, bool sample) {
    ctx->saved_data["w"] = std::vector<double>{inv_w, var_w, cov_w, gamma, eps, sample ? 1.0 : 0.0};
    return keep(ctx, vicreg_fwd(z1, z2, inv_w, var_w, cov_w, gamma, eps, sample), 4, {z1, z2});
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<double> w = ctx->saved_data["w"].toDoubleVector();
    return with_undefined(vicreg_bwd(s[0], s[1], s[2], s[3], s[4], grad_at(g, 0), grad_at(g, 1), grad_at(g, 2),
                                     grad_at(g, 3), w[0], w[1], w[2], w[3], w[4], w[5] != 0),
                          8);
  }
};

struct BarlowTwinsFn : torch::autograd::Function<BarlowTwinsFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2, double lambda,
                               double eps, bool sample) {
    ctx->saved_data["w"] = std::vector<double>{lambda, eps, sample ? 1.0 : 0.0};
    return keep(ctx, barlow_twins_fwd(z1, z2, lambda, eps, sample), 3);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<double> w = ctx->saved_data["w"].toDoubleVector();
    return with_undefined(
        barlow_twins_bwd(s[0], s[1], s[2], s[3], grad_at(g, 0), grad_at(g, 1), grad_at(g, 2), w[0], w[1], w[2] != 0),
        5);
  }
};

struct SpectralFn : torch::autograd::Function<SpectralFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2, double mu,
                               bool sample) {
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["sample"] = sample;
    return keep(ctx, spectral_fwd(z1, z2, mu, sample), 3, {z1, z2});
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    return with_undefined(spectral_bwd(s[0], s[1], s[2], s[3], s[4], grad_at(g, 0), grad_at(g, 1), grad_at(g, 2),
                                       ctx->saved_data["mu"].toDouble(), ctx->saved_data["sample"].toBool()),
                          4);
  }
};

struct DualityTermsFn : torch::autograd::Function<DualityTermsFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, bool sample) {
    ctx->saved_data["sample"] = sample;
    return keep(ctx, duality_terms_fwd(z, sample), 4, {z});
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    return with_undefined({duality_terms_bwd(s[0], s[1], s[2], s[3], grad_at(g, 0), grad_at(g, 1), grad_at(g, 2),
                                             grad_at(g, 3), ctx->saved_data["sample"].toBool())},
                          2);
  }
};

struct CovarianceFn : torch::autograd::Function<CovarianceFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, int64_t correction) {
    ctx->saved_data["correction"] = correction;
    return keep(ctx, covariance_fwd(z, correction), 1);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor grad = matrix_grad(g, acc_of(s[0]));
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};
    return with_undefined({covariance_bwd(s[0], grad, ctx->saved_data["correction"].toInt())}, 2);
  }
};

struct CrossCorrelationFn : torch::autograd::Function<CrossCorrelationFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2, double eps) {
    ctx->saved_data["eps"] = eps;
    return keep(ctx, cross_correlation_fwd(z1, z2, eps), 1);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor grad = matrix_grad(g, acc_of(s[0]));
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    return with_undefined(cross_correlation_bwd(s[0], s[1], grad, ctx->saved_data["eps"].toDouble()), 3);
  }
};

struct NormalizedGramFn : torch::autograd::Function<NormalizedGramFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const std::optional<at::Tensor>& z2) {
    return keep(ctx, normalized_gram_fwd(z1, z2), 1, {z1, z2 ? *z2 : at::Tensor()});
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor grad = matrix_grad(g, acc_of(s[0]));
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};
    const std::optional<at::Tensor> z2 = s[1].defined() ? std::optional<at::Tensor>(s[1]) : std::nullopt;
    return with_undefined(normalized_gram_bwd(s[0], z2, s[2], s[3], grad), 2);
  }
};

}  // namespace

std::vector<at::Tensor> vicreg_autograd(const at::Tensor& z1, const at::Tensor& z2, double inv_w, double var_w,
                                        double cov_w, double gamma, double eps, bool sample) {
  return VICRegFn::apply(z1, z2, inv_w, var_w, cov_w, gamma, eps, sample);
}
std::vector<at::Tensor> barlow_twins_autograd(const at::Tensor& z1, const at::Tensor& z2, double lambda, double eps,
                                              bool sample) {
  return BarlowTwinsFn::apply(z1, z2, lambda, eps, sample);
}
std::vector<at::Tensor> spectral_autograd(const at::Tensor& z1, const at::Tensor& z2, double mu, bool sample) {
  return SpectralFn::apply(z1, z2, mu, sample);
}
std::vector<at::Tensor> duality_terms_autograd(const at::Tensor& z, bool sample) {
  return DualityTermsFn::apply(z, sample);
}
at::Tensor covariance_autograd(const at::Tensor& z, int64_t correction) {
  return CovarianceFn::apply(z, correction)[0];
}
at::Tensor cross_correlation_autograd(const at::Tensor& z1, const at::Tensor& z2, double eps) {
  return CrossCorrelationFn::apply(z1, z2, eps)[0];
}
at::Tensor normalized_gram_autograd(const at::Tensor& z1, const std::optional<at::Tensor>& z2) {
  return NormalizedGramFn::apply(z1, z2)[0];
}

}  // namespace duality_kernels::bind
