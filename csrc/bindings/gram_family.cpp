// The entry points of the covariance family (docs/spec.md §1–3) and the spectral contrastive loss
// (docs/spec.md §4): one call per forward and one per backward. The GEMMs go through ATen (cuBLAS)
// on the side the caller picked (`sample`: the N×N side, else D×D); every other step is a kernel
// of csrc/kernels/*.cu on the current stream (gram_ops.cu's header lists them per op with
// their bytes). Forward outputs past the documented results are what the backward needs.
#include "bindings/ops.h"
#include "bindings/steps.h"

namespace duality_kernels::bind {

// ---- VICReg

void check_vicreg_weights(double inv_w, double var_w, double cov_w, double gamma, double eps,
                          const char* fn) {
  check_number(inv_w, "inv_weight", fn);
  check_number(var_w, "var_weight", fn);
  check_number(cov_w, "cov_weight", fn);
  check_number(gamma, "gamma", fn);
  check_number(eps, "eps", fn, 0.0);
}

// Forward: col_stats + col_merge (moments, Σ(z1 - z2)², the hinge's partials), center (x; on the
// sample side with Σ_i x² per column), [col_merge of those], the Grams (one bmm), gram_pass,
// finalize: 6 kernels + 1 GEMM on the sample side, 5 + 1 on the dimension side.
// stats (2, 2, d) float64: [m2 of both views, Σ_i x² of both views (sample side; 0 otherwise)].
std::vector<at::Tensor> vicreg_fwd(const at::Tensor& z1, const at::Tensor& z2, double inv_w,
                                   double var_w, double cov_w, double gamma, double eps,
                                   bool sample) {
  constexpr const char* fn = "vicreg_fwd";
  check_pair(z1, z2, fn, 2);
  check_vicreg_weights(inv_w, var_w, cov_w, gamma, eps, fn);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1), m = sample ? n : d;
  const at::ScalarType t = z1.scalar_type();
  const int dt = dtype_code(t);
  const dk::ColPlan plan = dk::col_plan(n, d, dt);
  const int64_t mb = dk::col_merge_blocks(d), gb = dk::gram_blocks(2 * m);
  Layout l;
  const int64_t o_moments = l.add(moments_part_elems(n, d, t, 2, true));
  const int64_t o_mean = l.add(2 * d);
  const int64_t o_fin_m = l.add(2 * mb);
  const int64_t o_center = sample ? l.add(2 * plan.chunks * d) : 0;
  const int64_t o_fin_c = sample ? l.add(2 * mb) : 0;
  const int64_t o_fin_g = l.add(4 * gb);
  const Scratch s(l, z1);
  at::Tensor stats = at::empty({2, 2, d}, z1.options().dtype(at::kDouble));
  double* m2 = stats.data_ptr<double>();
  double* sq = m2 + 2 * d;
  Moments mo;
  mo.mean = s.at(o_mean);
  mo.m2 = m2;
  mo.zero = sample ? nullptr : sq;
  mo.fin = s.at(o_fin_m);
  mo.hinge = true;
  mo.gamma = gamma;
  mo.eps = eps;
  column_moments(z1, &z2, true, s.at(o_moments), mo, fn);
  at::Tensor x = at::empty({2, n, d}, z1.options());
  center_views(z1, &z2, x, mo.mean, nullptr, false, 0.0,
               sample ? dk::kCenterSumSq : dk::kCenterNoSum, sample ? s.at(o_center) : nullptr, fn);
  // Σ_i x_ik² of the very x the N×N Grams are made of (gram_ops.h VICRegBwdArgs: sq)
  if (sample)
    merge_sums(z1, n, d, dk::kMergeSum, 2, s.at(o_center), sq, nullptr, s.at(o_fin_c), fn);
  const at::Tensor g = sample ? mm_sum(x, x.transpose(1, 2)) : mm_sum(x.transpose(1, 2), x);
  // Saved without its diagonal on the dimension side, so that the backward's product leaves the
  // diagonal out exactly (gram_ops.h VICRegBwdArgs: sq).
  GramPass gp;
  gp.zero_diag = !sample;
  const at::Tensor gram = gram_pass(g, t, gp, s.at(o_fin_g), fn);
  dk::FinalizeArgs f = finalize_args(dk::kFinVICReg, sample, n, d,
                                     {{s.at(o_fin_g), gb}, {s.at(o_fin_g) + gb, gb}, {s.at(o_fin_m), mb},
                                      {s.at(o_fin_m) + mb, mb}, {sample ? s.at(o_fin_c) : nullptr, sample ? mb : 0}});
  f.w[0] = inv_w;
  f.w[1] = var_w;
  f.w[2] = cov_w;
  std::vector<at::Tensor> outs = run_finalize(f, z1, 4, fn);
  outs.insert(outs.end(), {x, gram, stats});
  return outs;
}

// Backward: the products P = G x (one bmm; fp16 scales the Grams first) and vicreg_bwd (both
// views, one launch).
std::vector<at::Tensor> vicreg_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
                                   const at::Tensor& gram, const at::Tensor& stats,
                                   const std::optional<at::Tensor>& g_loss,
                                   const std::optional<at::Tensor>& g_inv,
                                   const std::optional<at::Tensor>& g_var,
                                   const std::optional<at::Tensor>& g_cov, double inv_w,
                                   double var_w, double cov_w, double gamma, double eps,
                                   bool sample) {
  constexpr const char* fn = "vicreg_bwd";
  check_pair(z1, z2, fn, 2);
  const int64_t n = z1.size(0), d = z1.size(1), m = sample ? n : d;
  check_aux({{x, "x", {2, n, d}, z1.scalar_type()},
             {gram, "gram", {2, m, m}, saved_gram_dtype(z1.scalar_type())},
             {stats, "stats", {2, 2, d}, at::kDouble}},
            z1, fn);
  check_grads({{&g_loss, "g_loss"}, {&g_inv, "g_inv"}, {&g_var, "g_var"}, {&g_cov, "g_cov"}}, z1, fn);
  check_vicreg_weights(inv_w, var_w, cov_w, gamma, eps, fn);
  DK_DEVICE_GUARD(z1);
  // p64: the sample side's G x cancels against x ⊙ sq when one column dominates (VICRegBwdArgs)
  const bool p64 = sample && wide_sums(z1.scalar_type());
  at::Tensor p;
  if (p64) {
    p = wide_gram_product(x, true, false);
  } else {
    const Operand g = operand(gram, z1.scalar_type());
    p = sample ? mm_op(g.m, x, g) : mm_op(x, g.m, g);  // both symmetric Grams
  }
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  // sq, sample side: the Gram's diagonal is in P; the forward's column sums of squares of the same
  // x remove it
  const dk::VICRegBwdArgs a{.z = {ptr(z1), ptr(z2)}, .x = {view_ptr(x, 0), view_ptr(x, 1)},
                            .p = {view_ptr(p, 0), view_ptr(p, 1)}, .m2 = stats.data_ptr<double>(),
                            .sq = sample ? stats.data_ptr<double>() + 2 * d : nullptr,
                            .g = {opt_ptr(g_loss), opt_ptr(g_inv), opt_ptr(g_var), opt_ptr(g_cov)},
                            .dz = {ptr(dz1), ptr(dz2)}, .n = n, .d = d, .inv_w = inv_w, .var_w = var_w,
                            .cov_w = cov_w, .gamma = gamma, .eps = eps, .p64 = p64};
  check_cuda(dk::vicreg_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {dz1, dz2};
}

// ---- cross_correlation

std::vector<at::Tensor> cross_correlation_fwd(const at::Tensor& z1, const at::Tensor& z2,
                                              double eps) {
  constexpr const char* fn = "cross_correlation_fwd";
  check_pair(z1, z2, fn, 2);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(z1);
  Layout l;
  const StdScratch o(l, z1);
  const Scratch s(l, z1);
  auto [x, m2] = standardized_views(z1, z2, eps, s, o, nullptr, fn);
  at::Tensor c = mm_acc(x[0].t(), x[1]);
  c.mul_(1.0 / static_cast<double>(z1.size(0)));
  return {c, x, m2};
}

std::vector<at::Tensor> cross_correlation_bwd(const at::Tensor& x, const at::Tensor& m2,
                                              const at::Tensor& grad, double eps) {
  constexpr const char* fn = "cross_correlation_bwd";
  check_rows(x, "x", fn, 2, 1, 2);
  const int64_t d = x.size(2);
  check_aux({{m2, "m2", {2, d}, at::kDouble}, {grad, "grad", {d, d}, acc_of(x)}}, x, fn);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(x);
  const Operand g = operand(grad, x.scalar_type());
  // C = aᵀb/N: dL/da = b Gᵀ/N, dL/db = a G/N (the 1/N is α in the kernel).
  const at::Tensor p0 = mm_op(x[1], g.m.t(), g), p1 = mm_op(x[0], g.m, g);
  return bn_backward(x, ptr(p0), ptr(p1), m2, nullptr, nullptr, eps, 0.0, fn);
}

// ---- Barlow Twins

// Forward: col_stats + col_merge, center (bn; on the sample side with Σ_i a_ik b_ik per column),
// [col_merge of those into C_kk], the Gram(s), gram_pass (the D×D side: C_kk from the diagonal),
// finalize: 6 kernels + 1 GEMM (sample side: one bmm of both views' N×N Grams).
std::vector<at::Tensor> barlow_twins_fwd(const at::Tensor& z1, const at::Tensor& z2,
                                         double lambda, double eps, bool sample) {
  constexpr const char* fn = "barlow_twins_fwd";
  check_pair(z1, z2, fn, 2);
  check_number(lambda, "lambda_param", fn);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  const at::ScalarType t = z1.scalar_type();
  const dk::ColPlan plan = dk::col_plan(n, d, dtype_code(t));
  const int64_t mb = dk::col_merge_blocks(d);
  const int64_t gb = dk::gram_blocks(sample ? n : d);
  Layout l;
  const StdScratch o(l, z1);
  const int64_t o_center = sample ? l.add(plan.chunks * d) : 0;
  const int64_t o_fin_c = sample ? l.add(2 * mb) : 0;
  const int64_t o_fin_g = l.add(4 * gb);
  const Scratch s(l, z1);
  auto [x, m2] = standardized_views(z1, z2, eps, s, o, sample ? s.at(o_center) : nullptr, fn);
  at::Tensor cdiag = acc_empty({d}, z1);
  GramPass gp;
  at::Tensor g;
  if (sample) {
    // ‖aᵀb‖² = ⟨a aᵀ, b bᵀ⟩ (docs/spec.md §2); the diagonal Σ_i a_ik b_ik by columns.
    merge_sums(z1, n, d, dk::kMergeBarlowDiag, 1, s.at(o_center), nullptr, ptr(cdiag),
               s.at(o_fin_c), fn);
    g = mm_sum(x, x.transpose(1, 2));
    gp.pair = true;
    gp.swap = true;  // saved [b bᵀ, a aᵀ]: the backward's one bmm
  } else {
    g = mm_sum(x[0].t(), x[1]).unsqueeze(0);  // raw aᵀb (1, D, D)
    gp.cdiag = ptr(cdiag);
    gp.cdiv = static_cast<double>(n);
  }
  const at::Tensor grams = gram_pass(g, t, gp, s.at(o_fin_g), fn);
  // the diagonal's partial sums: the sample side's column merge, else gram_pass's slots 2 and 3
  double* diag = sample ? s.at(o_fin_c) : s.at(o_fin_g) + 2 * gb;
  const int64_t nd = sample ? mb : gb;
  dk::FinalizeArgs f = finalize_args(dk::kFinBarlow, sample, n, d,
                                     {{s.at(o_fin_g), gb}, {s.at(o_fin_g) + gb, gb}, {diag, nd}, {diag + nd, nd}});
  f.w[0] = lambda;
  std::vector<at::Tensor> outs = run_finalize(f, z1, 3, fn);
  outs.insert(outs.end(), {x, grams, m2, cdiag});
  return outs;
}

std::vector<at::Tensor> barlow_twins_bwd(const at::Tensor& x, const at::Tensor& grams,
                                         const at::Tensor& m2, const at::Tensor& cdiag,
                                         const std::optional<at::Tensor>& g_loss,
                                         const std::optional<at::Tensor>& g_on,
                                         const std::optional<at::Tensor>& g_off, double lambda,
                                         double eps, bool sample) {
  constexpr const char* fn = "barlow_twins_bwd";
  check_rows(x, "x", fn, 2, 1, 2);
  const int64_t n = x.size(1), d = x.size(2), m = sample ? n : d;
  const at::ScalarType acc = acc_of(x);
  check_aux({{m2, "m2", {2, d}, at::kDouble},
             {grams, "grams", {sample ? 2 : 1, m, m}, saved_gram_dtype(x.scalar_type())},
             {cdiag, "cdiag", {d}, acc}},
            x, fn);
  check_grads({{&g_loss, "g_loss"}, {&g_on, "g_on"}, {&g_off, "g_off"}}, x, fn);
  check_number(lambda, "lambda_param", fn);
  check_number(eps, "eps", fn, 0.0);
  const std::optional<at::Tensor> g[3] = {g_loss, g_on, g_off};
  DK_DEVICE_GUARD(x);
  const Operand gm = operand(grams, x.scalar_type());
  if (sample) {
    // grams = [b bᵀ, a aᵀ] (swapped by the forward): P = [(b bᵀ) a, (a aᵀ) b] in one bmm
    const at::Tensor p = mm_op(gm.m, x, gm);
    return bn_backward(x, view_ptr(p, 0), view_ptr(p, 1), m2, &cdiag, g, eps, lambda, fn);
  }
  const at::Tensor c = gm.m[0];
  const at::Tensor p0 = mm_op(x[1], c.t(), gm);  // b (aᵀb)ᵀ
  const at::Tensor p1 = mm_op(x[0], c, gm);      // a (aᵀb)
  return bn_backward(x, ptr(p0), ptr(p1), m2, &cdiag, g, eps, lambda, fn);
}

// ---- covariance

// 0 <= correction < N: the divisor N - correction is at least 1.
void check_correction(int64_t correction, int64_t n, const char* fn) {
  DK_CHECK(correction >= 0 && correction < n, fn, ": correction must be in [0, N - 1] = [0, ",
           n - 1, "], got ", correction);
}

std::vector<at::Tensor> covariance_fwd(const at::Tensor& z, int64_t correction) {
  constexpr const char* fn = "covariance_fwd";
  check_rows(z, "z", fn, 1);
  check_correction(correction, z.size(0), fn);
  DK_DEVICE_GUARD(z);
  const int64_t n = z.size(0), d = z.size(1);
  Layout l;
  const int64_t o_moments = l.add(moments_part_elems(n, d, z.scalar_type(), 1, false));
  const int64_t o_mean = l.add(d);
  const int64_t o_m2 = l.add(d);
  const Scratch s(l, z);
  Moments mo;
  mo.mean = s.at(o_mean);
  mo.m2 = s.at(o_m2);
  column_moments(z, nullptr, false, s.at(o_moments), mo, fn);
  at::Tensor x = at::empty({n, d}, z.options());
  center_views(z, nullptr, x, mo.mean, nullptr, false, 0.0, dk::kCenterNoSum, nullptr, fn);
  at::Tensor c = mm_acc(x.t(), x);
  c.mul_(1.0 / static_cast<double>(n - correction));
  return {c, x};
}

at::Tensor covariance_bwd(const at::Tensor& x, const at::Tensor& grad, int64_t correction) {
  constexpr const char* fn = "covariance_bwd";
  check_rows(x, "x", fn, 1);
  const int64_t n = x.size(0), d = x.size(1);
  check_aux({{grad, "grad", {d, d}, acc_of(x)}}, x, fn);
  check_correction(correction, n, fn);
  DK_DEVICE_GUARD(x);
  // dz = x (G + Gᵀ)/(N - correction); the centering Jacobian vanishes since x's columns sum to 0.
  const Operand s =
      sym_operand(grad, 1.0 / static_cast<double>(n - correction), x.scalar_type(), fn);
  if (!s.unscale.defined()) return at::mm(x, s.m);  // rounded once into x's dtype
  return mm_op(x, s.m, s).to(x.scalar_type());
}

// ---- normalized_gram

std::vector<at::Tensor> normalized_gram_fwd(const at::Tensor& z1,
                                            const std::optional<at::Tensor>& z2) {
  constexpr const char* fn = "normalized_gram_fwd";
  if (z2) check_pair(z1, *z2, fn, 1);
  else check_rows(z1, "z1", fn, 1);
  DK_DEVICE_GUARD(z1);
  auto [x, q] = row_scaled_views(z1, z2 ? &*z2 : nullptr, dk::kRowL2, 0.0, dk::kRowFinNone,
                                 nullptr, fn);
  const at::Tensor k = mm_acc(x[0], x[z2 ? 1 : 0].t());
  return {k, x, q};
}

std::vector<at::Tensor> normalized_gram_bwd(const at::Tensor& z1,
                                            const std::optional<at::Tensor>& z2,
                                            const at::Tensor& x, const at::Tensor& q,
                                            const at::Tensor& grad) {
  constexpr const char* fn = "normalized_gram_bwd";
  if (z2) check_pair(z1, *z2, fn, 1);
  else check_rows(z1, "z1", fn, 1);
  const int64_t n = z1.size(0), d = z1.size(1);
  const int views = z2 ? 2 : 1;
  const at::ScalarType acc = acc_of(z1);
  check_aux({{x, "x", {views, n, d}, z1.scalar_type()}, {q, "q", {views == 1 ? 1 : 3, n}, acc},
             {grad, "grad", {n, n}, acc}},
            z1, fn);
  DK_DEVICE_GUARD(z1);
  at::Tensor p0, p1;
  if (z2) {
    const Operand g = operand(grad, z1.scalar_type());
    p0 = mm_op(g.m, x[1], g);      // dK/dn1 = G n2
    p1 = mm_op(g.m.t(), x[0], g);  // dK/dn2 = Gᵀ n1
  } else {
    const Operand s = sym_operand(grad, 1.0, z1.scalar_type(), fn);  // G + Gᵀ
    p0 = mm_op(s.m, x[0], s);
  }
  at::Tensor dz1 = at::empty({n, d}, z1.options());
  at::Tensor dz2 = z2 ? at::empty({n, d}, z1.options()) : at::Tensor();
  const dk::RowBwdArgs a{.z = {ptr(z1), z2 ? ptr(*z2) : nullptr}, .p = {ptr(p0), z2 ? ptr(p1) : nullptr},
                         .q = ptr(q), .dz = {ptr(dz1), z2 ? ptr(dz2) : nullptr}, .n = n, .d = d, .views = views,
                         .row_mode = dk::kRowL2};
  check_cuda(dk::row_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  if (z2) return {dz1, dz2};
  return {dz1};
}

// ---- spectral contrastive

// Forward: row_scale (clamped rows, q, Σ p_i and Σ p_i²), the Gram(s), gram_pass, finalize:
// 3 kernels + 1 GEMM.
std::vector<at::Tensor> spectral_fwd(const at::Tensor& z1, const at::Tensor& z2, double mu,
                                     bool sample) {
  constexpr const char* fn = "spectral_fwd";
  check_pair(z1, z2, fn, 2);
  check_number(mu, "mu", fn, 0.0, true);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  const int64_t rb = dk::row_blocks(n), gb = dk::gram_blocks(sample ? n : d);
  Layout l;
  const int64_t o_fin_r = l.add(2 * rb);
  const int64_t o_fin_g = l.add(4 * gb);
  const Scratch s(l, z1);
  auto [x, q] = row_scaled_views(z1, &z2, dk::kRowClamp, std::sqrt(mu), dk::kRowFinSpectral,
                                 s.at(o_fin_r), fn);
  GramPass gp;
  at::Tensor g;
  if (sample) {
    g = mm_sum(x[0], x[1].t()).unsqueeze(0);  // a bᵀ (1, N, N)
  } else {
    g = mm_sum(x.transpose(1, 2), x);  // [aᵀa, bᵀb]: ‖a bᵀ‖² = ⟨aᵀa, bᵀb⟩
    gp.pair = true;
    gp.swap = true;  // saved [bᵀb, aᵀa]: the backward's one bmm
  }
  const at::Tensor grams = gram_pass(g, z1.scalar_type(), gp, s.at(o_fin_g), fn);
  dk::FinalizeArgs f = finalize_args(dk::kFinSpectral, sample, n, d,
                                     {{s.at(o_fin_g), gb}, {s.at(o_fin_g) + gb, gb}, {s.at(o_fin_r), rb},
                                      {s.at(o_fin_r) + rb, rb}});
  f.w[0] = mu;
  std::vector<at::Tensor> outs = run_finalize(f, z1, 3, fn);
  outs.insert(outs.end(), {x, grams, q});
  return outs;
}

std::vector<at::Tensor> spectral_bwd(const at::Tensor& z1, const at::Tensor& z2,
                                     const at::Tensor& x, const at::Tensor& grams,
                                     const at::Tensor& q, const std::optional<at::Tensor>& g_loss,
                                     const std::optional<at::Tensor>& g_pos,
                                     const std::optional<at::Tensor>& g_neg, double mu,
                                     bool sample) {
  constexpr const char* fn = "spectral_bwd";
  check_pair(z1, z2, fn, 2);
  const int64_t n = z1.size(0), d = z1.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_of(z1);
  check_aux({{x, "x", {2, n, d}, z1.scalar_type()},
             {grams, "grams", {sample ? 1 : 2, m, m}, saved_gram_dtype(z1.scalar_type())},
             {q, "q", {3, n}, acc}},
            z1, fn);
  check_grads({{&g_loss, "g_loss"}, {&g_pos, "g_pos"}, {&g_neg, "g_neg"}}, z1, fn);
  check_number(mu, "mu", fn, 0.0, true);
  DK_DEVICE_GUARD(z1);
  const Operand gm = operand(grams, z1.scalar_type());
  at::Tensor p0, p1, p;
  if (sample) {
    p0 = mm_op(gm.m[0], x[1], gm);      // (a bᵀ) b
    p1 = mm_op(gm.m[0].t(), x[0], gm);  // (b aᵀ) a
  } else {
    p = mm_op(x, gm.m, gm);  // grams = [bᵀb, aᵀa] (swapped by the forward): [a (bᵀb), b (aᵀa)]
  }
  const RowGrads g{.g = {opt_ptr(g_loss), opt_ptr(g_pos), opt_ptr(g_neg)}};
  return clamped_rows_bwd(z1, z2, x, q, sample ? ptr(p0) : view_ptr(p, 0), sample ? ptr(p1) : view_ptr(p, 1), g,
                          dk::kRowClamp, mu, fn);
}

// ---- duality_terms (the paper's two criteria, docs/spec.md §2)

std::vector<at::Tensor> duality_terms_fwd(const at::Tensor& z, bool sample) {
  constexpr const char* fn = "duality_terms_fwd";
  check_rows(z, "z", fn, 1);
  DK_DEVICE_GUARD(z);
  const int64_t n = z.size(0), d = z.size(1), m = sample ? n : d;
  const at::ScalarType t = z.scalar_type();
  const int dt = dtype_code(t);
  const dk::ColPlan plan = dk::col_plan(n, d, dt);
  const int64_t rb = dk::row_blocks(n), mb = dk::col_merge_blocks(d), gb = dk::gram_blocks(m);
  Layout l;
  const int64_t o_fin_r = l.add(2 * rb);
  const int64_t o_cols = l.add(plan.chunks * d);
  const int64_t o_fin_c = l.add(2 * mb);
  const int64_t o_fin_g = l.add(4 * gb);
  const Scratch s(l, z);
  at::Tensor q = acc_empty({n}, z);
  const dk::RowScaleArgs r{.z = {ptr(z), nullptr}, .q = ptr(q), .n = n, .d = d, .views = 1,
                           .row_mode = dk::kRowNone, .fin_mode = dk::kRowFinSumSq, .fin = s.at(o_fin_r)};
  check_cuda(dk::row_scale(r, dt, stream_of(z)), fn);
  at::Tensor c = at::empty({d}, z.options().dtype(at::kDouble));  // Σ_i z_ik², float64
  const dk::ColStatsArgs st{.z = {ptr(z), nullptr}, .n = n, .d = d, .views = 1, .mode = dk::kStatsSumSq,
                            .part = s.at(o_cols)};
  check_cuda(dk::col_stats(st, dt, stream_of(z)), fn);
  merge_sums(z, n, d, dk::kMergeSum, 1, s.at(o_cols), c.data_ptr<double>(), nullptr,
             s.at(o_fin_c), fn);
  const at::Tensor g = (sample ? mm_sum(z, z.t()) : mm_sum(z.t(), z)).unsqueeze(0);
  GramPass gp;
  gp.zero_diag = true;  // saved without it (gram_ops.h DualityBwdArgs)
  const at::Tensor gram = gram_pass(g, t, gp, s.at(o_fin_g), fn)[0];
  dk::FinalizeArgs f = finalize_args(dk::kFinDuality, sample, n, d,
                                     {{s.at(o_fin_g), gb}, {s.at(o_fin_g) + gb, gb}, {s.at(o_fin_r), rb},
                                      {s.at(o_fin_c), mb}});
  std::vector<at::Tensor> outs = run_finalize(f, z, 4, fn);
  outs.insert(outs.end(), {gram, q, c});
  return outs;
}

at::Tensor duality_terms_bwd(const at::Tensor& z, const at::Tensor& gram, const at::Tensor& q,
                             const at::Tensor& c, const std::optional<at::Tensor>& g_lc,
                             const std::optional<at::Tensor>& g_lnc,
                             const std::optional<at::Tensor>& g_r4,
                             const std::optional<at::Tensor>& g_c4, bool sample) {
  constexpr const char* fn = "duality_terms_bwd";
  check_rows(z, "z", fn, 1);
  const int64_t n = z.size(0), d = z.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_of(z);
  check_aux({{gram, "gram", {m, m}, saved_gram_dtype(z.scalar_type())}, {q, "q", {n}, acc},
             {c, "c", {d}, at::kDouble}},
            z, fn);
  check_grads({{&g_lc, "g_lc"}, {&g_lnc, "g_lnc"}, {&g_r4, "g_r4"}, {&g_c4, "g_c4"}}, z, fn);
  DK_DEVICE_GUARD(z);
  // p64: G° z (z G°) cancels against z ⊙ (c_k - q_i) when one row (column) dominates, so q is
  // needed in float64 too (DualityBwdArgs)
  const bool p64 = wide_sums(z.scalar_type());
  at::Tensor p, q64;
  if (p64) {
    p = wide_gram_product(z, sample, true);
    q64 = at::empty({n}, z.options().dtype(at::kDouble));
    const dk::RowScaleArgs r{.z = {ptr(z), nullptr}, .q = ptr(q64), .n = n, .d = d, .views = 1,
                             .row_mode = dk::kRowNone, .fin_mode = dk::kRowFinNone, .q64 = 1};
    check_cuda(dk::row_scale(r, dtype_code(z.scalar_type()), stream_of(z)), fn);
  } else {
    const Operand g = operand(gram, z.scalar_type());
    p = sample ? mm_op(g.m, z, g) : mm_op(z, g.m, g);
  }
  at::Tensor dz = at::empty({n, d}, z.options());
  const dk::DualityBwdArgs a{.z = ptr(z), .p = ptr(p), .q = ptr(p64 ? q64 : q), .c = c.data_ptr<double>(),
                             .g = {opt_ptr(g_lc), opt_ptr(g_lnc), opt_ptr(g_r4), opt_ptr(g_c4)}, .dz = ptr(dz),
                             .n = n, .d = d, .sample = sample, .p64 = p64};
  check_cuda(dk::duality_bwd(a, dtype_code(z.scalar_type()), stream_of(z)), fn);
  return dz;
}

}  // namespace duality_kernels::bind
