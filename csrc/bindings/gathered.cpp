// The entry points of gather_distributed=True (docs/spec.md §5): the local pieces whose cross-rank merge
// runs in duality_kernels/ops/gathered.py (collectives and D×D / N-vector algebra between these
// calls): the moments of two views and the spectral loss's clamped rows.
#include "bindings/ops.h"
#include "bindings/steps.h"

namespace duality_kernels::bind {

constexpr int64_t kMomentsNone = 0, kMomentsSelf = 1, kMomentsCross = 2;

void check_moments_mode(int64_t mode, const char* fn) {
  DK_CHECK(mode >= kMomentsNone && mode <= kMomentsCross, fn,
           ": mode must be 0 (no Gram), 1 (each view's) or 2 (x1ᵀx2), got ", mode);
}

// Forward: col_stats + col_merge (float64 moments of both views and Σ(z1 - z2)²), finalize (the
// invariance), and for mode 1/2 center + the Gram(s) (one GEMM): 3 kernels, or 4 + 1 GEMM.
// -> [invariance mean((z1 - z2)²) (acc 0-dim), mean (2, d) float64, m2 (2, d) float64,
//     gram: (0, d, d) / [x1ᵀx1, x2ᵀx2] (2, d, d) / x1ᵀx2 (1, d, d) acc, x (2, n, d) centered views
//     (or (0,) for mode 0)].
std::vector<at::Tensor> moments_fwd(const at::Tensor& z1, const at::Tensor& z2, int64_t mode) {
  constexpr const char* fn = "moments_fwd";
  check_pair(z1, z2, fn, 1);
  check_moments_mode(mode, fn);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  const at::ScalarType t = z1.scalar_type();
  const int64_t mb = dk::col_merge_blocks(d);
  Layout l;
  const int64_t o_moments = l.add(moments_part_elems(n, d, t, 2, true));
  const int64_t o_fin = l.add(2 * mb);
  const Scratch s(l, z1);
  const auto f64 = z1.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({2, d}, f64), m2 = at::empty({2, d}, f64);
  Moments mo;
  mo.mean = mean.data_ptr<double>();
  mo.m2 = m2.data_ptr<double>();
  mo.fin = s.at(o_fin);
  column_moments(z1, &z2, true, s.at(o_moments), mo, fn);
  // kFinVICReg's invariance output from Σ(z1 - z2)² alone (no Gram or hinge partials)
  const double* fin = s.at(o_fin);
  dk::FinalizeArgs f =
      finalize_args(dk::kFinVICReg, false, n, d, {{fin, 0}, {fin, 0}, {fin, mb}, {fin, 0}, {fin, 0}});
  const at::Tensor inv = run_finalize(f, z1, 4, fn)[1];
  at::Tensor x, gram;
  if (mode == kMomentsNone) {
    x = at::empty({0}, z1.options());
    gram = acc_empty({0, d, d}, z1);
  } else {
    x = at::empty({2, n, d}, z1.options());
    center_views(z1, &z2, x, mo.mean, nullptr, false, 0.0, dk::kCenterNoSum, nullptr, fn);
    gram = mode == kMomentsSelf ? mm_acc(x.transpose(1, 2), x)
                                : mm_acc(x[0].t(), x[1]).unsqueeze(0);
  }
  return {inv, mean, m2, gram, x};
}

// Backward: the Grams' products (mode 1: one bmm x_v (G_v + G_vᵀ); mode 2: x2 Gᵀ, x1 G) and
// moments_bwd (gram_ops.h). Upstream gradients may be None (0).
std::vector<at::Tensor> moments_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
                                    const at::Tensor& mean, const std::optional<at::Tensor>& g_inv,
                                    const std::optional<at::Tensor>& g_mean,
                                    const std::optional<at::Tensor>& g_m2,
                                    const std::optional<at::Tensor>& g_gram, int64_t mode) {
  constexpr const char* fn = "moments_bwd";
  check_pair(z1, z2, fn, 1);
  check_moments_mode(mode, fn);
  const int64_t n = z1.size(0), d = z1.size(1);
  const at::ScalarType t = z1.scalar_type();
  if (mode == kMomentsNone) check_aux({{x, "x", {0}, t}}, z1, fn);
  else check_aux({{x, "x", {2, n, d}, t}}, z1, fn);
  check_aux({{mean, "mean", {2, d}, at::kDouble}}, z1, fn);
  check_grads({{&g_inv, "g_inv"}}, z1, fn);
  if (g_mean) check_tensor(*g_mean, "g_mean", fn, {2, d}, at::kDouble, &z1);
  if (g_m2) check_tensor(*g_m2, "g_m2", fn, {2, d}, at::kDouble, &z1);
  const bool products = mode != kMomentsNone && g_gram.has_value();
  if (products)
    check_tensor(*g_gram, "g_gram", fn, {mode == kMomentsSelf ? 2 : 1, d, d}, acc_of(z1), &z1);
  DK_DEVICE_GUARD(z1);
  at::Tensor p, p0, p1;
  dk::MomentsBwdArgs a{};
  if (products) {
    if (mode == kMomentsSelf) {
      const at::Tensor h = at::add(*g_gram, g_gram->transpose(1, 2));
      const Operand o = operand(h, t);
      p = mm_op(x, o.m, o);  // [x1 (G1 + G1ᵀ), x2 (G2 + G2ᵀ)]
      a.p[0] = view_ptr(p, 0);
      a.p[1] = view_ptr(p, 1);
    } else {
      const Operand o = operand((*g_gram)[0], t);
      p0 = mm_op(x[1], o.m.t(), o);  // d(x1ᵀx2)/dx1 = x2 Gᵀ
      p1 = mm_op(x[0], o.m, o);      // d(x1ᵀx2)/dx2 = x1 G
      a.p[0] = ptr(p0);
      a.p[1] = ptr(p1);
    }
  }
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.mean = mean.data_ptr<double>();
  a.g_mean = g_mean ? g_mean->data_ptr<double>() : nullptr;
  a.g_m2 = g_m2 ? g_m2->data_ptr<double>() : nullptr;
  a.g_inv = opt_ptr(g_inv);
  a.dz[0] = ptr(dz1);
  a.dz[1] = ptr(dz2);
  a.n = n;
  a.d = d;
  check_cuda(dk::moments_bwd(a, dtype_code(t), stream_of(z1)), fn);
  return {dz1, dz2};
}

// Forward: row_scale (spectral's clamp, with p_i = a_i·b_i): 1 kernel.
// -> [x (2, n, d) the clamped rows a, b; p (n) acc; q (3, n) acc (row_scale's, for the backward)].
std::vector<at::Tensor> spectral_rows_fwd(const at::Tensor& z1, const at::Tensor& z2, double mu) {
  constexpr const char* fn = "spectral_rows_fwd";
  check_pair(z1, z2, fn, 1);
  check_number(mu, "mu", fn, 0.0, true);
  DK_DEVICE_GUARD(z1);
  at::Tensor p = acc_empty({z1.size(0)}, z1);
  auto [x, q] = row_scaled_views(z1, &z2, dk::kRowClamp, std::sqrt(mu), dk::kRowFinNone, nullptr, fn,
                                 ptr(p));
  return {x, p, q};
}

// Backward: row_bwd kRowClampVec: da_v = g_x[v] + g_p_i · (the other view's clamped row), then
// the clamp's Jacobian. g_x: acc (2, n, d) (None: 0); g_p: acc (n) (None: 0).
std::vector<at::Tensor> spectral_rows_bwd(const at::Tensor& z1, const at::Tensor& z2,
                                          const at::Tensor& x, const at::Tensor& q,
                                          const std::optional<at::Tensor>& g_x,
                                          const std::optional<at::Tensor>& g_p, double mu) {
  constexpr const char* fn = "spectral_rows_bwd";
  check_pair(z1, z2, fn, 1);
  const int64_t n = z1.size(0), d = z1.size(1);
  const at::ScalarType acc = acc_of(z1);
  check_aux({{x, "x", {2, n, d}, z1.scalar_type()}, {q, "q", {3, n}, acc}}, z1, fn);
  if (g_x) check_tensor(*g_x, "g_x", fn, {2, n, d}, acc, &z1);
  if (g_p) check_tensor(*g_p, "g_p", fn, {n}, acc, &z1);
  check_number(mu, "mu", fn, 0.0, true);
  DK_DEVICE_GUARD(z1);
  const at::Tensor gx = g_x ? *g_x : at::zeros({2, n, d}, z1.options().dtype(acc));
  return clamped_rows_bwd(z1, z2, x, q, view_ptr(gx, 0), view_ptr(gx, 1), RowGrads{.beta = opt_ptr(g_p)},
                          dk::kRowClampVec, mu, fn);
}

}  // namespace duality_kernels::bind
