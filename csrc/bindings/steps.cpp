// The kernel steps shared by the entry points (csrc/bindings/steps.h).
#include "bindings/steps.h"

namespace duality_kernels::bind {

void column_moments(const at::Tensor& z1, const at::Tensor* z2, bool sqdiff, double* part,
                    const Moments& out, const char* fn) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  const int dt = dtype_code(z1.scalar_type());
  const cudaStream_t stream = stream_of(z1);
  const int two = sqdiff && z2;  // Σ(z1 - z2)² as well
  const dk::ColStatsArgs st{.z = {ptr(z1), z2 ? ptr(*z2) : nullptr}, .n = n, .d = d, .views = views,
                            .mode = dk::kStatsMoments, .sqdiff = two, .part = part};
  check_cuda(dk::col_stats(st, dt, stream), fn);
  const dk::ColMergeArgs m{.mode = dk::kMergeMoments, .part = part, .n = n, .d = d,
                           .chunks = dk::col_plan(n, d, dt).chunks,
                           .groups = dk::col_stats_groups(dk::kStatsMoments, views, two),
                           .z = {st.z[0], st.z[1]}, .views = views, .sqdiff = two, .hinge = out.hinge,
                           .gamma = out.gamma, .eps = out.eps, .mean = out.mean, .m2 = out.m2, .zero = out.zero,
                           .fin = out.fin};
  check_cuda(dk::col_merge(m, dt, stream), fn);
}

int64_t moments_part_elems(int64_t n, int64_t d, at::ScalarType t, int views, bool sqdiff) {
  return dk::col_stats_groups(dk::kStatsMoments, views, sqdiff && views == 2) *
         dk::col_plan(n, d, dtype_code(t)).chunks * d;
}

void center_views(const at::Tensor& z1, const at::Tensor* z2, const at::Tensor& x,
                  const double* mean, const double* m2, bool bn, double eps, int sum_mode,
                  double* part, const char* fn) {
  const dk::CenterArgs c{.z = {ptr(z1), z2 ? ptr(*z2) : nullptr},
                         .out = {view_ptr(x, 0), z2 ? view_ptr(x, 1) : nullptr}, .mean = mean, .m2 = m2,
                         .n = z1.size(0), .d = z1.size(1), .views = z2 ? 2 : 1, .bn = bn, .sum_mode = sum_mode,
                         .eps = eps, .part = part};
  check_cuda(dk::center(c, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
}

void merge_sums(const at::Tensor& like, int64_t n, int64_t d, int mode, int groups,
                const double* part, double* out, void* cdiag, double* fin, const char* fn) {
  const int dt = dtype_code(like.scalar_type());
  const dk::ColMergeArgs m{.mode = mode, .part = part, .n = n, .d = d, .chunks = dk::col_plan(n, d, dt).chunks,
                           .groups = groups, .out = out, .cdiag = cdiag, .fin = fin};
  check_cuda(dk::col_merge(m, dt, stream_of(like)), fn);
}

at::Tensor gram_pass(const at::Tensor& g, at::ScalarType t, const GramPass& o, double* fin,
                     const char* fn) {
  const at::ScalarType saved = saved_gram_dtype(t);
  at::Tensor gram;
  void* out = nullptr;
  if (o.save) {
    gram = g.scalar_type() == saved && !o.swap ? g : at::empty(g.sizes(), g.options().dtype(saved));
    if (gram.data_ptr() != g.data_ptr() || o.zero_diag) out = ptr(gram);
  }
  const int gdtype = dtype_code(g.scalar_type());
  const dk::GramPassArgs a{.g = ptr(g), .out = out, .cdiag = o.cdiag, .mats = g.size(0), .m = g.size(1),
                           .gdtype = gdtype, .odtype = out ? dtype_code(saved) : gdtype,
                           .cdtype = dtype_code(acc_dtype(t)), .pair = o.pair, .zero_diag = o.zero_diag,
                           .swap = o.swap, .cdiv = o.cdiv, .fin = fin};
  check_cuda(dk::gram_pass(a, stream_of(g)), fn);
  return gram;
}

dk::FinalizeArgs finalize_args(int mode, bool sample, int64_t n, int64_t d,
                               std::initializer_list<Part> parts) {
  dk::FinalizeArgs f{.mode = mode, .sample = sample, .n = n, .d = d};
  int j = 0;
  for (const Part& p : parts) {
    f.part[j] = p.part;
    f.nparts[j++] = static_cast<int>(p.count);
  }
  return f;
}

std::vector<at::Tensor> run_finalize(dk::FinalizeArgs& f, const at::Tensor& z, int count,
                                     const char* fn) {
  std::vector<at::Tensor> outs = scalars(z, count);
  for (int i = 0; i < count; ++i) f.out[i] = ptr(outs[i]);
  check_cuda(dk::finalize(f, dtype_code(z.scalar_type()), stream_of(z)), fn);
  return outs;
}

std::tuple<at::Tensor, at::Tensor> standardized_views(const at::Tensor& z1, const at::Tensor& z2,
                                                      double eps, const Scratch& s,
                                                      const StdScratch& o, double* part_c,
                                                      const char* fn) {
  const int64_t n = z1.size(0), d = z1.size(1);
  at::Tensor m2 = at::empty({2, d}, z1.options().dtype(at::kDouble));
  Moments mo;
  mo.mean = s.at(o.mean);
  mo.m2 = m2.data_ptr<double>();
  column_moments(z1, &z2, false, s.at(o.moments), mo, fn);
  at::Tensor x = at::empty({2, n, d}, z1.options());
  center_views(z1, &z2, x, mo.mean, mo.m2, true, eps,
               part_c ? dk::kCenterSumDot : dk::kCenterNoSum, part_c, fn);
  return {x, m2};
}

std::vector<at::Tensor> bn_backward(const at::Tensor& x, const void* p0, const void* p1,
                                    const at::Tensor& m2, const at::Tensor* cdiag,
                                    const std::optional<at::Tensor>* g, double eps, double lambda,
                                    const char* fn) {
  const int64_t n = x.size(1), d = x.size(2);
  at::Tensor dz1 = at::empty({n, d}, x.options()), dz2 = at::empty({n, d}, x.options());
  Layout l;
  const int64_t o_work = l.add(dk::bn_bwd_workspace_elems(n, d, dtype_code(x.scalar_type())));
  const Scratch s(l, x);
  dk::BNBwdArgs a{.x = {view_ptr(x, 0), view_ptr(x, 1)}, .p = {p0, p1}, .m2 = m2.data_ptr<double>(),
                  .dz = {ptr(dz1), ptr(dz2)}, .n = n, .d = d, .eps = eps, .lambda = lambda, .barlow = cdiag != nullptr};
  if (cdiag) {
    a.cdiag = ptr(*cdiag);
    for (int i = 0; i < 3; ++i) a.g[i] = opt_ptr(g[i]);
  }
  check_cuda(dk::bn_bwd(a, dtype_code(x.scalar_type()), s.at(o_work), stream_of(x)), fn);
  return {dz1, dz2};
}

std::tuple<at::Tensor, at::Tensor> row_scaled_views(const at::Tensor& z1, const at::Tensor* z2,
                                                    int row_mode, double radius, int fin_mode,
                                                    double* fin, const char* fn, void* p) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  at::Tensor q = acc_empty({views == 1 ? 1 : 3, n}, z1);
  at::Tensor x = at::empty({views, n, d}, z1.options());
  const dk::RowScaleArgs a{.z = {ptr(z1), z2 ? ptr(*z2) : nullptr},
                           .out = {view_ptr(x, 0), z2 ? view_ptr(x, 1) : nullptr}, .q = ptr(q), .p = p, .n = n,
                           .d = d, .views = views, .row_mode = row_mode, .fin_mode = fin_mode, .radius = radius,
                           .fin = fin};
  check_cuda(dk::row_scale(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {x, q};
}

std::vector<at::Tensor> clamped_rows_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
                                         const at::Tensor& q, const void* p0, const void* p1, const RowGrads& g,
                                         int row_mode, double mu, const char* fn) {
  const int64_t n = z1.size(0), d = z1.size(1);
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  // y: each view's partner, the other view's clamped rows
  const dk::RowBwdArgs a{.z = {ptr(z1), ptr(z2)}, .p = {p0, p1}, .y = {view_ptr(x, 1), view_ptr(x, 0)},
                         .q = ptr(q), .g = {g.g[0], g.g[1], g.g[2]}, .beta = g.beta, .dz = {ptr(dz1), ptr(dz2)},
                         .n = n, .d = d, .views = 2, .row_mode = row_mode, .mu = mu};
  check_cuda(dk::row_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {dz1, dz2};
}

}  // namespace duality_kernels::bind
