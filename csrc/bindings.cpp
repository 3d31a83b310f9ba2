// Python bindings of duality_kernels._C: the ONLY translation unit that includes torch headers
// (DESIGN convention 8). It checks tensors, allocates outputs and scratch through torch's caching
// allocator, launches the torch-free kernels in csrc/kernels/ on the current CUDA stream and turns
// their cudaError_t into Python exceptions. duality_kernels/ops/cuda.py wraps these functions in
// torch.library custom ops (DESIGN convention 2); nothing else should call them directly.
//
// c10/cuda/CUDAStream.h and CUDAGuard.h, not ATen/cuda/CUDAContext.h: the latter pulls in
// cuSPARSE/cuBLAS headers that the build machine's CUDA toolkit lacks.

#include <torch/extension.h>
#include <torch/version.h>

#ifndef DK_HOST_SIM
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_runtime.h>
#endif

#include <optional>
#include <tuple>
#include <vector>

#include "kernels/gram_ops.h"

// Built with -DDK_HOST_SIM (tests/csim.py) the same functions take CPU tensors and run the kernels
// in the CPU simulator (csrc/sim/cuda_sim.h); the GEMMs then run through ATen on the CPU.
#ifdef DK_HOST_SIM
#define DK_DEVICE_GUARD(t) (void)0
#else
#define DK_DEVICE_GUARD(t) const c10::cuda::CUDAGuard dk_device_guard_((t).device())
#endif

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

bool on_kernel_device(const at::Tensor& t) {
#ifdef DK_HOST_SIM
  return t.device().is_cpu();
#else
  return t.is_cuda();
#endif
}

cudaStream_t stream_of(const at::Tensor& t) {
#ifdef DK_HOST_SIM
  (void)t;
  return nullptr;
#else
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
}

void check_z(const at::Tensor& z, const char* fn) {
  TORCH_CHECK(on_kernel_device(z), fn, ": z must be a CUDA tensor, got device ", z.device());
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

// Per-column float64 moments of z1 [, z2] in one pass (gram_ops.cu col_moments): mean and m2,
// (views, d) each, and with sqdiff the per-column Σ(z1 - z2)² (d), else an empty tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> column_moments(const at::Tensor& z1,
                                                              const at::Tensor* z2, bool sqdiff,
                                                              const char* fn) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  const auto f64 = z1.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({views, d}, f64), m2 = at::empty({views, d}, f64);
  at::Tensor sq = sqdiff ? at::empty({d}, f64) : at::Tensor();
  const int64_t ws = dk::col_moments_workspace_elems(n, d, views);
  at::Tensor work = at::empty({ws > 0 ? ws : 1}, f64);
  dk::ColMomentsArgs st{};
  st.z[0] = z1.data_ptr();
  st.z[1] = z2 ? z2->data_ptr() : nullptr;
  st.n = n;
  st.d = d;
  st.views = views;
  st.sqdiff = sqdiff && z2;
  st.mean = mean.data_ptr<double>();
  st.m2 = m2.data_ptr<double>();
  st.sq = sqdiff ? sq.data_ptr<double>() : nullptr;
  st.workspace = ws > 0 ? work.data_ptr<double>() : nullptr;
  check_cuda(dk::col_moments(st, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {mean, m2, sq};
}

std::tuple<at::Tensor, at::Tensor> column_stats_fwd(const at::Tensor& z) {
  constexpr const char* fn = "column_stats_fwd";
  check_z(z, fn);
  DK_DEVICE_GUARD(z);
  const int64_t n = z.size(0);
  const int64_t d = z.size(1);
  const auto opts = z.options().dtype(acc_dtype(z.scalar_type()));
  if (n == 0 || d == 0) {
    // Nothing to reduce: never launch an empty grid. Zeros by convention (sum of no squares is 0;
    // the mean of no rows is undefined and public functions reject N < 2 before getting here).
    return {at::zeros({d}, opts), at::zeros({d}, opts)};
  }
  // The float64 moments of the covariance-family ops, in acc.
  auto [mean, m2, sq] = column_moments(z, nullptr, false, fn);
  return {mean[0].to(opts.dtype()), m2[0].to(opts.dtype())};
}

at::Tensor column_stats_bwd(const at::Tensor& z, const at::Tensor& mean,
                            const at::Tensor& grad_mean, const at::Tensor& grad_m2) {
  constexpr const char* fn = "column_stats_bwd";
  check_z(z, fn);
  check_column_vector(mean, z, "mean", fn);
  check_column_vector(grad_mean, z, "grad_mean", fn);
  check_column_vector(grad_m2, z, "grad_m2", fn);
  DK_DEVICE_GUARD(z);
  at::Tensor dz = at::empty(z.sizes(), z.options());  // contiguous, z's dtype
  if (z.numel() == 0) return dz;
  const cudaStream_t stream = stream_of(z);
  // `mean` is the forward's output rounded to acc; the kernel wants it in float64 (see
  // gram_ops.h column_stats_bwd), so it is derived again, unless it already is float64.
  const at::Tensor mean64 = mean.scalar_type() == at::kDouble
                                ? mean
                                : std::get<0>(column_moments(z, nullptr, false, fn))[0];
  check_cuda(dk::column_stats_bwd(z.data_ptr(), mean64.data_ptr<double>(), grad_mean.data_ptr(),
                                  grad_m2.data_ptr(), z.size(0), z.size(1),
                                  dtype_code(z.scalar_type()), dz.data_ptr(), stream),
             fn);
  return dz;
}

// ---------------------------------------------------------------------------------------------
// The covariance family (SPEC §1–3): one call per forward and one per backward. The GEMMs go
// through ATen (cuBLAS) on the side the caller picked (`sample`: the N×N side, else D×D); every
// other step is a kernel of csrc/kernels/gram_ops.cu on the current stream. Forward outputs past
// the documented results are what the backward needs (saved by duality_kernels/ops/cuda.py).

void* ptr(const at::Tensor& t) { return t.data_ptr(); }

at::Tensor acc_empty(at::IntArrayRef size, const at::Tensor& like) {
  return at::empty(size, like.options().dtype(acc_dtype(like.scalar_type())));
}

void check_pair(const at::Tensor& z1, const at::Tensor& z2, const char* fn) {
  check_z(z1, fn);
  check_z(z2, fn);
  TORCH_CHECK(z1.sizes() == z2.sizes() && z1.scalar_type() == z2.scalar_type() &&
                  z1.device() == z2.device(),
              fn, ": z1 and z2 must match in shape, dtype and device, got ", z1.sizes(), " ",
              z1.scalar_type(), " ", z1.device(), " and ", z2.sizes(), " ", z2.scalar_type(), " ",
              z2.device());
}

// A saved or upstream tensor that goes with z: on z's device, contiguous, of dtype `dtype`.
void check_aux(const at::Tensor& t, const at::Tensor& z, at::ScalarType dtype, const char* name,
               const char* fn) {
  TORCH_CHECK(t.device() == z.device(), fn, ": ", name, " must be on ", z.device(), ", got ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name, const char* fn) {
  TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

// a @ b (2-D or batched 3-D) with an acc-typed result; a and b share a dtype.
at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b) {
  const at::ScalarType acc = acc_dtype(a.scalar_type());
  if (a.scalar_type() == acc) return a.dim() == 3 ? at::bmm(a, b) : at::mm(a, b);
#ifdef DK_HOST_SIM
  const at::Tensor a32 = a.to(acc), b32 = b.to(acc);
  return a.dim() == 3 ? at::bmm(a32, b32) : at::mm(a32, b32);
#elif TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  // cuBLAS with fp32 accumulation and an fp32 result for fp16/bf16 operands (mm.dtype/bmm.dtype).
  return a.dim() == 3 ? at::bmm(a, b, acc) : at::mm(a, b, acc);
#else
  const at::Tensor a32 = a.to(acc), b32 = b.to(acc);
  return a.dim() == 3 ? at::bmm(a32, b32) : at::mm(a32, b32);
#endif
}

// A Gram-type product whose squared entries a loss sums (forward only): float64 for float32 inputs
// under matmul precision "highest". The losses subtract a diagonal from that sum (offsq =
// ‖G‖² - Σ diag², SPEC §2), which cancels most of it and amplifies the GEMM's rounding; with
// fp32 Grams the simulator measured up to 30x eager's error on single fp32 outputs (2026-11-30).
// On Hopper a DGEMM runs on the FP64 tensor cores at about the FP32 (non-TF32) GEMM's rate.
at::Tensor mm_sum(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kFloat &&
      at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST) {
    const at::Tensor a64 = a.to(at::kDouble), b64 = b.to(at::kDouble);
    return a.dim() == 3 ? at::bmm(a64, b64) : at::mm(a64, b64);
  }
  return mm_acc(a, b);
}

// An acc-typed matrix as a GEMM operand next to T-typed rows (rounded to T for fp16/bf16).
at::Tensor operand(const at::Tensor& g, at::ScalarType t) {
  return g.scalar_type() == t ? g : g.to(t);
}

// Partial sums of a² (or a·b) over count elements of the acc or float64 matrix a: the full sums,
// then the sums without the diagonals of the m x m matrices in a (m = 0: none).
at::Tensor sum_of(const at::Tensor& a, const at::Tensor* b, int64_t count, int64_t m,
                  const char* fn) {
  at::Tensor part = at::empty({2 * dk::sum_parts(count)}, a.options().dtype(at::kDouble));
  check_cuda(dk::sum_partials(ptr(a), b ? ptr(*b) : nullptr, count, m, dtype_code(a.scalar_type()),
                              part.data_ptr<double>(), stream_of(a)),
             fn);
  return part;
}

// Per-column float64 sums over rows of f(a_v, b_v) for views v (see gram_ops.h col_sum); a and
// b hold the views' (n, d) matrices. Returns (views, d), or (d) for one view.
at::Tensor col_sums(std::vector<at::Tensor> a, std::vector<at::Tensor> b, int mode,
                    const char* fn) {
  const int views = static_cast<int>(a.size());
  const int64_t n = a[0].size(0), d = a[0].size(1);
  at::Tensor out = at::empty(views == 1 ? std::vector<int64_t>{d} : std::vector<int64_t>{views, d},
                             a[0].options().dtype(at::kDouble));
  const int64_t ws = dk::col_sum_workspace_elems(n, d, views);
  at::Tensor work = at::empty({ws > 0 ? ws : 1}, a[0].options().dtype(at::kDouble));
  dk::ColSumArgs c{};
  for (int v = 0; v < views; ++v) {
    c.a[v] = ptr(a[v]);
    c.b[v] = b.empty() ? nullptr : ptr(b[v]);
  }
  c.n = n;
  c.d = d;
  c.views = views;
  c.mode = mode;
  c.out = out.data_ptr<double>();
  c.workspace = ws > 0 ? work.data_ptr<double>() : nullptr;
  check_cuda(dk::col_sum(c, dtype_code(a[0].scalar_type()), stream_of(a[0])), fn);
  return out;
}

// Runs the finalize kernel into `scalars` new 0-dim acc tensors (and f.out[scalars], when the
// mode writes a vector there); returns them followed by `saved`, the forward op's outputs.
std::vector<at::Tensor> run_finalize(dk::FinalizeArgs f, const at::Tensor& part,
                                     const at::Tensor& z, int scalars,
                                     std::initializer_list<at::Tensor> saved, const char* fn) {
  std::vector<at::Tensor> outs;
  for (int i = 0; i < scalars; ++i) {
    outs.push_back(acc_empty({}, z));
    f.out[i] = ptr(outs.back());
  }
  f.part = part.data_ptr<double>();
  f.nparts = static_cast<int>(part.numel() / 2);
  check_cuda(dk::finalize(f, dtype_code(z.scalar_type()), stream_of(z)), fn);
  outs.insert(outs.end(), saved);
  return outs;
}

// The checks of a backward op's upstream gradients: 0-dim, acc dtype, on z's device.
void check_scalar_grads(std::initializer_list<const at::Tensor*> grads, const at::Tensor& z,
                        const char* fn) {
  for (const at::Tensor* g : grads) {
    check_aux(*g, z, acc_dtype(z.scalar_type()), "an upstream gradient", fn);
    check_shape(*g, {}, "an upstream gradient", fn);
  }
}

// Centered (or standardized) views of z1 [, z2] into x (views, n, d) in z's dtype, from float64
// column statistics (column_moments); returns (x, m2 (views, d) float64, and with sqdiff
// the per-column Σ(z1 - z2)² (d) float64, else an empty tensor).
std::tuple<at::Tensor, at::Tensor, at::Tensor> centered_views(const at::Tensor& z1,
                                                              const at::Tensor* z2, bool bn,
                                                              double eps, bool sqdiff,
                                                              const char* fn) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  auto [mean, m2, sq] = column_moments(z1, z2, sqdiff, fn);
  at::Tensor x = at::empty({views, n, d}, z1.options());
  dk::CenterScaleArgs c{};
  for (int v = 0; v < views; ++v) {
    c.z[v] = v == 0 ? ptr(z1) : ptr(*z2);
    c.out[v] = ptr(x[v]);
    c.mean[v] = mean.data_ptr<double>() + v * d;
    c.m2[v] = m2.data_ptr<double>() + v * d;
  }
  c.n = n;
  c.d = d;
  c.views = views;
  c.col_mode = bn ? dk::kColBN : dk::kColCenter;
  c.row_mode = dk::kRowNone;
  c.eps = eps;
  check_cuda(dk::center_scale(c, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {x, m2, sq};
}

// Rows of z1 [, z2] scaled by a per-row factor (l2n or the spectral clamp) into x (views, n, d);
// q = (views == 1 ? [q1] : [q1, q2, q12]).
std::tuple<at::Tensor, at::Tensor> row_scaled_views(const at::Tensor& z1, const at::Tensor* z2,
                                                    int row_mode, double radius, const char* fn) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  at::Tensor q = acc_empty({views == 1 ? 1 : 3, n}, z1);
  check_cuda(dk::row_stats(ptr(z1), z2 ? ptr(*z2) : nullptr, n, d, dtype_code(z1.scalar_type()),
                           ptr(q[0]), z2 ? ptr(q[1]) : nullptr, z2 ? ptr(q[2]) : nullptr,
                           stream_of(z1)),
             fn);
  at::Tensor x = at::empty({views, n, d}, z1.options());
  dk::CenterScaleArgs c{};
  for (int v = 0; v < views; ++v) {
    c.z[v] = ptr(v == 0 ? z1 : *z2);
    c.out[v] = ptr(x[v]);
    c.rowq[v] = ptr(q[v]);
  }
  c.n = n;
  c.d = d;
  c.views = views;
  c.col_mode = dk::kColNone;
  c.row_mode = row_mode;
  c.radius = radius;
  check_cuda(dk::center_scale(c, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {x, q};
}

// ---- VICReg

std::vector<at::Tensor> vicreg_fwd(const at::Tensor& z1, const at::Tensor& z2, double inv_w,
                                   double var_w, double cov_w, double gamma, double eps,
                                   bool sample) {
  constexpr const char* fn = "vicreg_fwd";
  check_pair(z1, z2, fn);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  auto [x, m2, sq] = centered_views(z1, &z2, false, 0.0, true, fn);
  const at::Tensor g = sample ? mm_sum(x, x.transpose(1, 2)) : mm_sum(x.transpose(1, 2), x);
  const at::Tensor part = sum_of(g, nullptr, g.numel(), sample ? n : d, fn);
  const at::Tensor gram = g.to(acc_dtype(z1.scalar_type()));
  dk::FinalizeArgs f{};
  f.mode = dk::kFinVICReg;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.dv[2] = m2.data_ptr<double>();
  f.dv[0] = sq.data_ptr<double>();
  at::Tensor diag;  // Σ_i x_ik² of the very x the N×N Grams were made of
  if (sample) {
    diag = col_sums({x[0], x[1]}, {}, dk::kColSumSq, fn);
    f.dv[1] = diag.data_ptr<double>();
  }
  f.w[0] = inv_w;
  f.w[1] = var_w;
  f.w[2] = cov_w;
  f.w[3] = gamma;
  f.w[4] = eps;
  return run_finalize(f, part, z1, 4, {x, gram, m2}, fn);
}

std::vector<at::Tensor> vicreg_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
                                   const at::Tensor& gram, const at::Tensor& m2,
                                   const at::Tensor& g_loss, const at::Tensor& g_inv,
                                   const at::Tensor& g_var, const at::Tensor& g_cov, double inv_w,
                                   double var_w, double cov_w, double gamma, double eps,
                                   bool sample) {
  constexpr const char* fn = "vicreg_bwd";
  check_pair(z1, z2, fn);
  const int64_t n = z1.size(0), d = z1.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_dtype(z1.scalar_type());
  check_aux(x, z1, z1.scalar_type(), "x", fn);
  check_shape(x, {2, n, d}, "x", fn);
  check_aux(gram, z1, acc, "gram", fn);
  check_shape(gram, {2, m, m}, "gram", fn);
  check_aux(m2, z1, at::kDouble, "m2", fn);
  check_shape(m2, {2, d}, "m2", fn);
  check_scalar_grads({&g_loss, &g_inv, &g_var, &g_cov}, z1, fn);
  DK_DEVICE_GUARD(z1);
  const at::Tensor g = operand(gram, z1.scalar_type());
  const at::Tensor p = sample ? mm_acc(g, x) : mm_acc(x, g);  // both symmetric Grams
  at::Tensor dz1 = at::empty_like(z1, at::MemoryFormat::Contiguous);
  at::Tensor dz2 = at::empty_like(z2, at::MemoryFormat::Contiguous);
  dk::VICRegBwdArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.x[0] = ptr(x[0]);
  a.x[1] = ptr(x[1]);
  a.p[0] = ptr(p[0]);
  a.p[1] = ptr(p[1]);
  a.m2 = m2.data_ptr<double>();
  a.g[0] = ptr(g_loss);
  a.g[1] = ptr(g_inv);
  a.g[2] = ptr(g_var);
  a.g[3] = ptr(g_cov);
  a.dz[0] = ptr(dz1);
  a.dz[1] = ptr(dz2);
  a.n = n;
  a.d = d;
  a.inv_w = inv_w;
  a.var_w = var_w;
  a.cov_w = cov_w;
  a.gamma = gamma;
  a.eps = eps;
  check_cuda(dk::vicreg_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {dz1, dz2};
}

// ---- BatchNorm backward shared by cross_correlation and Barlow Twins

std::vector<at::Tensor> bn_backward(const at::Tensor& x, const at::Tensor& p0, const at::Tensor& p1,
                                    const at::Tensor& m2, const at::Tensor* cdiag,
                                    const at::Tensor* g, double eps, double lambda,
                                    const char* fn) {
  const int64_t n = x.size(1), d = x.size(2);
  at::Tensor dz1 = at::empty({n, d}, x.options()), dz2 = at::empty({n, d}, x.options());
  const int64_t ws = dk::bn_bwd_workspace_elems(n, d);
  at::Tensor work = at::empty({ws > 0 ? ws : 1}, x.options().dtype(at::kDouble));
  dk::BNBwdArgs a{};
  a.x[0] = ptr(x[0]);
  a.x[1] = ptr(x[1]);
  a.p[0] = ptr(p0);
  a.p[1] = ptr(p1);
  a.m2 = m2.data_ptr<double>();
  a.dz[0] = ptr(dz1);
  a.dz[1] = ptr(dz2);
  a.n = n;
  a.d = d;
  a.eps = eps;
  a.lambda = lambda;
  a.barlow = cdiag != nullptr;
  if (cdiag) {
    a.cdiag = ptr(*cdiag);
    for (int i = 0; i < 3; ++i) a.g[i] = ptr(g[i]);
  }
  check_cuda(dk::bn_bwd(a, dtype_code(x.scalar_type()), ptr(work), stream_of(x)), fn);
  return {dz1, dz2};
}

void check_saved_views(const at::Tensor& x, const at::Tensor& m2, const char* fn) {
  TORCH_CHECK(on_kernel_device(x) && x.dim() == 3 && x.size(0) == 2 && x.is_contiguous(), fn,
              ": x must be a contiguous (2, N, D) tensor on the kernel device, got ", x.sizes());
  TORCH_CHECK(dtype_code(x.scalar_type()) >= 0, fn, ": x has unsupported dtype ",
              x.scalar_type());
  check_aux(m2, x, at::kDouble, "m2", fn);
  check_shape(m2, {2, x.size(2)}, "m2", fn);
}

// ---- cross_correlation

std::vector<at::Tensor> cross_correlation_fwd(const at::Tensor& z1, const at::Tensor& z2,
                                              double eps) {
  constexpr const char* fn = "cross_correlation_fwd";
  check_pair(z1, z2, fn);
  DK_DEVICE_GUARD(z1);
  auto [x, m2, unused] = centered_views(z1, &z2, true, eps, false, fn);
  at::Tensor c = mm_acc(x[0].t(), x[1]);
  c.mul_(1.0 / static_cast<double>(z1.size(0)));
  return {c, x, m2};
}

std::vector<at::Tensor> cross_correlation_bwd(const at::Tensor& x, const at::Tensor& m2,
                                              const at::Tensor& grad, double eps) {
  constexpr const char* fn = "cross_correlation_bwd";
  check_saved_views(x, m2, fn);
  const int64_t d = x.size(2);
  check_aux(grad, x, acc_dtype(x.scalar_type()), "grad", fn);
  check_shape(grad, {d, d}, "grad", fn);
  DK_DEVICE_GUARD(x);
  const at::Tensor g = operand(grad, x.scalar_type());
  // C = aᵀb/N: dL/da = b Gᵀ/N, dL/db = a G/N (the 1/N is α in the kernel).
  const at::Tensor p0 = mm_acc(x[1], g.t()), p1 = mm_acc(x[0], g);
  return bn_backward(x, p0, p1, m2, nullptr, nullptr, eps, 0.0, fn);
}

// ---- Barlow Twins

std::vector<at::Tensor> barlow_twins_fwd(const at::Tensor& z1, const at::Tensor& z2,
                                         double lambda, double eps, bool sample) {
  constexpr const char* fn = "barlow_twins_fwd";
  check_pair(z1, z2, fn);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  auto [x, m2, unused] = centered_views(z1, &z2, true, eps, false, fn);
  dk::FinalizeArgs f{};
  f.mode = dk::kFinBarlow;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.w[0] = lambda;
  at::Tensor grams, part, diag;
  if (sample) {
    // ‖aᵀb‖² = ⟨a aᵀ, b bᵀ⟩ (SPEC §2); the diagonal Σ_i a_ik b_ik by columns.
    const at::Tensor g = mm_sum(x, x.transpose(1, 2));
    const at::Tensor b = g[1];
    part = sum_of(g[0], &b, n * n, 0, fn);
    grams = g.to(acc_dtype(z1.scalar_type()));
    diag = col_sums({x[0]}, {x[1]}, dk::kColSumDot, fn);
    f.dv[0] = diag.data_ptr<double>();
  } else {
    const at::Tensor g = mm_sum(x[0].t(), x[1]).unsqueeze(0);  // raw aᵀb (1, D, D)
    part = sum_of(g, nullptr, d * d, d, fn);
    grams = g.to(acc_dtype(z1.scalar_type()));
    f.v[0] = ptr(grams);
    f.stride = d + 1;
  }
  at::Tensor cdiag = acc_empty({d}, z1);
  f.out[3] = ptr(cdiag);
  return run_finalize(f, part, z1, 3, {x, grams, m2, cdiag}, fn);
}

std::vector<at::Tensor> barlow_twins_bwd(const at::Tensor& x, const at::Tensor& grams,
                                         const at::Tensor& m2, const at::Tensor& cdiag,
                                         const at::Tensor& g_loss, const at::Tensor& g_on,
                                         const at::Tensor& g_off, double lambda, double eps,
                                         bool sample) {
  constexpr const char* fn = "barlow_twins_bwd";
  check_saved_views(x, m2, fn);
  const int64_t n = x.size(1), d = x.size(2);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  check_aux(grams, x, acc, "grams", fn);
  if (sample) check_shape(grams, {2, n, n}, "grams", fn);
  else check_shape(grams, {1, d, d}, "grams", fn);
  check_aux(cdiag, x, acc, "cdiag", fn);
  check_shape(cdiag, {d}, "cdiag", fn);
  const at::Tensor g[3] = {g_loss, g_on, g_off};
  check_scalar_grads({&g_loss, &g_on, &g_off}, x, fn);
  DK_DEVICE_GUARD(x);
  const at::Tensor gm = operand(grams, x.scalar_type());
  at::Tensor p0, p1;
  if (sample) {
    p0 = mm_acc(gm[1], x[0]);  // (b bᵀ) a
    p1 = mm_acc(gm[0], x[1]);  // (a aᵀ) b
  } else {
    p0 = mm_acc(x[1], gm[0].t());  // b (aᵀb)ᵀ
    p1 = mm_acc(x[0], gm[0]);      // a (aᵀb)
  }
  return bn_backward(x, p0, p1, m2, &cdiag, g, eps, lambda, fn);
}

// ---- covariance

std::vector<at::Tensor> covariance_fwd(const at::Tensor& z, int64_t correction) {
  constexpr const char* fn = "covariance_fwd";
  check_z(z, fn);
  DK_DEVICE_GUARD(z);
  auto [x, m2, unused] = centered_views(z, nullptr, false, 0.0, false, fn);
  at::Tensor c = mm_acc(x[0].t(), x[0]);
  c.mul_(1.0 / static_cast<double>(z.size(0) - correction));
  return {c, x[0]};
}

at::Tensor covariance_bwd(const at::Tensor& x, const at::Tensor& grad, int64_t correction) {
  constexpr const char* fn = "covariance_bwd";
  check_z(x, fn);
  const int64_t n = x.size(0), d = x.size(1);
  check_aux(grad, x, acc_dtype(x.scalar_type()), "grad", fn);
  check_shape(grad, {d, d}, "grad", fn);
  DK_DEVICE_GUARD(x);
  // dz = x (G + Gᵀ)/(N - correction); the centering Jacobian vanishes since x's columns sum to 0.
  at::Tensor s = at::empty({d, d}, x.options());
  check_cuda(dk::sym_scale(ptr(grad), d, 1.0 / static_cast<double>(n - correction),
                           dtype_code(x.scalar_type()), ptr(s), stream_of(x)),
             fn);
  return at::mm(x, s);
}

// ---- normalized_gram

std::vector<at::Tensor> normalized_gram_fwd(const at::Tensor& z1,
                                            const std::optional<at::Tensor>& z2) {
  constexpr const char* fn = "normalized_gram_fwd";
  if (z2) check_pair(z1, *z2, fn);
  else check_z(z1, fn);
  DK_DEVICE_GUARD(z1);
  auto [x, q] = row_scaled_views(z1, z2 ? &*z2 : nullptr, dk::kRowL2, 0.0, fn);
  const at::Tensor k = mm_acc(x[0], x[z2 ? 1 : 0].t());
  return {k, x, q};
}

std::vector<at::Tensor> normalized_gram_bwd(const at::Tensor& z1,
                                            const std::optional<at::Tensor>& z2,
                                            const at::Tensor& x, const at::Tensor& q,
                                            const at::Tensor& grad) {
  constexpr const char* fn = "normalized_gram_bwd";
  if (z2) check_pair(z1, *z2, fn);
  else check_z(z1, fn);
  const int64_t n = z1.size(0), d = z1.size(1);
  const int views = z2 ? 2 : 1;
  const at::ScalarType acc = acc_dtype(z1.scalar_type());
  check_aux(x, z1, z1.scalar_type(), "x", fn);
  check_shape(x, {views, n, d}, "x", fn);
  check_aux(q, z1, acc, "q", fn);
  check_shape(q, {views == 1 ? 1 : 3, n}, "q", fn);
  check_aux(grad, z1, acc, "grad", fn);
  check_shape(grad, {n, n}, "grad", fn);
  DK_DEVICE_GUARD(z1);
  at::Tensor p0, p1;
  if (z2) {
    const at::Tensor g = operand(grad, z1.scalar_type());
    p0 = mm_acc(g, x[1]);      // dK/dn1 = G n2
    p1 = mm_acc(g.t(), x[0]);  // dK/dn2 = Gᵀ n1
  } else {
    at::Tensor s = at::empty({n, n}, z1.options());  // G + Gᵀ in z's dtype
    check_cuda(dk::sym_scale(ptr(grad), n, 1.0, dtype_code(z1.scalar_type()), ptr(s),
                             stream_of(z1)),
               fn);
    p0 = mm_acc(s, x[0]);
  }
  at::Tensor dz1 = at::empty({n, d}, z1.options());
  at::Tensor dz2 = z2 ? at::empty({n, d}, z1.options()) : at::Tensor();
  dk::RowBwdArgs a{};
  a.z[0] = ptr(z1);
  a.p[0] = ptr(p0);
  a.q[0] = ptr(q[0]);
  a.dz[0] = ptr(dz1);
  if (z2) {
    a.z[1] = ptr(*z2);
    a.p[1] = ptr(p1);
    a.q[1] = ptr(q[1]);
    a.q[2] = ptr(q[2]);
    a.dz[1] = ptr(dz2);
  }
  a.n = n;
  a.d = d;
  a.views = views;
  a.row_mode = dk::kRowL2;
  check_cuda(dk::row_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  if (z2) return {dz1, dz2};
  return {dz1};
}

// ---- spectral contrastive

std::vector<at::Tensor> spectral_fwd(const at::Tensor& z1, const at::Tensor& z2, double mu,
                                     bool sample) {
  constexpr const char* fn = "spectral_fwd";
  check_pair(z1, z2, fn);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  auto [x, q] = row_scaled_views(z1, &z2, dk::kRowClamp, std::sqrt(mu), fn);
  at::Tensor grams, part;
  if (sample) {
    const at::Tensor g = mm_sum(x[0], x[1].t()).unsqueeze(0);  // a bᵀ (1, N, N)
    part = sum_of(g, nullptr, n * n, n, fn);
    grams = g.to(acc_dtype(z1.scalar_type()));
  } else {
    const at::Tensor g = mm_sum(x.transpose(1, 2), x);  // [aᵀa, bᵀb]: ‖a bᵀ‖² = ⟨aᵀa, bᵀb⟩
    const at::Tensor b = g[1];
    part = sum_of(g[0], &b, d * d, 0, fn);
    grams = g.to(acc_dtype(z1.scalar_type()));
  }
  dk::FinalizeArgs f{};
  f.mode = dk::kFinSpectral;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.v[0] = ptr(q[0]);
  f.v[1] = ptr(q[1]);
  f.v[2] = ptr(q[2]);
  f.w[0] = mu;
  return run_finalize(f, part, z1, 3, {x, grams, q}, fn);
}

std::vector<at::Tensor> spectral_bwd(const at::Tensor& z1, const at::Tensor& z2,
                                     const at::Tensor& x, const at::Tensor& grams,
                                     const at::Tensor& q, const at::Tensor& g_loss,
                                     const at::Tensor& g_pos, const at::Tensor& g_neg, double mu,
                                     bool sample) {
  constexpr const char* fn = "spectral_bwd";
  check_pair(z1, z2, fn);
  const int64_t n = z1.size(0), d = z1.size(1);
  const at::ScalarType acc = acc_dtype(z1.scalar_type());
  check_aux(x, z1, z1.scalar_type(), "x", fn);
  check_shape(x, {2, n, d}, "x", fn);
  check_aux(grams, z1, acc, "grams", fn);
  if (sample) check_shape(grams, {1, n, n}, "grams", fn);
  else check_shape(grams, {2, d, d}, "grams", fn);
  check_aux(q, z1, acc, "q", fn);
  check_shape(q, {3, n}, "q", fn);
  check_scalar_grads({&g_loss, &g_pos, &g_neg}, z1, fn);
  DK_DEVICE_GUARD(z1);
  const at::Tensor gm = operand(grams, z1.scalar_type());
  at::Tensor p0, p1;
  if (sample) {
    p0 = mm_acc(gm[0], x[1]);      // (a bᵀ) b
    p1 = mm_acc(gm[0].t(), x[0]);  // (b aᵀ) a
  } else {
    p0 = mm_acc(x[0], gm[1]);  // a (bᵀb)
    p1 = mm_acc(x[1], gm[0]);  // b (aᵀa)
  }
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  dk::RowBwdArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.p[0] = ptr(p0);
  a.p[1] = ptr(p1);
  a.y[0] = ptr(x[1]);
  a.y[1] = ptr(x[0]);
  for (int i = 0; i < 3; ++i) a.q[i] = ptr(q[i]);
  a.g[0] = ptr(g_loss);
  a.g[1] = ptr(g_pos);
  a.g[2] = ptr(g_neg);
  a.dz[0] = ptr(dz1);
  a.dz[1] = ptr(dz2);
  a.n = n;
  a.d = d;
  a.views = 2;
  a.row_mode = dk::kRowClamp;
  a.mu = mu;
  check_cuda(dk::row_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {dz1, dz2};
}

// ---- duality_terms (the paper's two criteria, SPEC §2)

std::vector<at::Tensor> duality_terms_fwd(const at::Tensor& z, bool sample) {
  constexpr const char* fn = "duality_terms_fwd";
  check_z(z, fn);
  DK_DEVICE_GUARD(z);
  const int64_t n = z.size(0), d = z.size(1);
  const int dt = dtype_code(z.scalar_type());
  at::Tensor q = acc_empty({n}, z);
  check_cuda(dk::row_stats(ptr(z), nullptr, n, d, dt, ptr(q), nullptr, nullptr, stream_of(z)), fn);
  const at::Tensor c = col_sums({z}, {}, dk::kColSumSq, fn);  // float64 (d)
  const at::Tensor g = sample ? mm_sum(z, z.t()) : mm_sum(z.t(), z);
  const at::Tensor part = sum_of(g, nullptr, g.numel(), sample ? n : d, fn);
  const at::Tensor gram = g.to(acc_dtype(z.scalar_type()));
  dk::FinalizeArgs f{};
  f.mode = dk::kFinDuality;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.v[0] = ptr(q);
  f.dv[0] = c.data_ptr<double>();
  return run_finalize(f, part, z, 4, {gram, q, c}, fn);
}

at::Tensor duality_terms_bwd(const at::Tensor& z, const at::Tensor& gram, const at::Tensor& q,
                             const at::Tensor& c, const at::Tensor& g_lc, const at::Tensor& g_lnc,
                             const at::Tensor& g_r4, const at::Tensor& g_c4, bool sample) {
  constexpr const char* fn = "duality_terms_bwd";
  check_z(z, fn);
  const int64_t n = z.size(0), d = z.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_dtype(z.scalar_type());
  check_aux(gram, z, acc, "gram", fn);
  check_shape(gram, {m, m}, "gram", fn);
  check_aux(q, z, acc, "q", fn);
  check_shape(q, {n}, "q", fn);
  check_aux(c, z, at::kDouble, "c", fn);
  check_shape(c, {d}, "c", fn);
  check_scalar_grads({&g_lc, &g_lnc, &g_r4, &g_c4}, z, fn);
  DK_DEVICE_GUARD(z);
  const at::Tensor g = operand(gram, z.scalar_type());
  const at::Tensor p = sample ? mm_acc(g, z) : mm_acc(z, g);
  at::Tensor dz = at::empty({n, d}, z.options());
  dk::DualityBwdArgs a{};
  a.z = ptr(z);
  a.p = ptr(p);
  a.q = ptr(q);
  a.c = c.data_ptr<double>();
  a.g[0] = ptr(g_lc);
  a.g[1] = ptr(g_lnc);
  a.g[2] = ptr(g_r4);
  a.g[3] = ptr(g_c4);
  a.dz = ptr(dz);
  a.n = n;
  a.d = d;
  check_cuda(dk::duality_bwd(a, dtype_code(z.scalar_type()), stream_of(z)), fn);
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
  using pybind11::arg;
  m.def("vicreg_fwd", &vicreg_fwd, arg("z1"), arg("z2"), arg("inv_weight"), arg("var_weight"),
        arg("cov_weight"), arg("gamma"), arg("eps"), arg("sample"),
        "VICReg forward: [loss, invariance, variance, covariance, x (2,N,D), gram, m2 (2,D)].");
  m.def("vicreg_bwd", &vicreg_bwd, "VICReg backward: [dz1, dz2].");
  m.def("cross_correlation_fwd", &cross_correlation_fwd, "[C (D,D), x (2,N,D), m2 (2,D)].");
  m.def("cross_correlation_bwd", &cross_correlation_bwd, "[dz1, dz2].");
  m.def("barlow_twins_fwd", &barlow_twins_fwd,
        "Barlow Twins forward: [loss, on, off, x, grams, m2, cdiag].");
  m.def("barlow_twins_bwd", &barlow_twins_bwd, "[dz1, dz2].");
  m.def("covariance_fwd", &covariance_fwd, "[C (D,D), x (N,D)].");
  m.def("covariance_bwd", &covariance_bwd, "dz.");
  m.def("normalized_gram_fwd", &normalized_gram_fwd, arg("z1"), arg("z2") = pybind11::none(),
        "[K (N,N), x (V,N,D), q].");
  m.def("normalized_gram_bwd", &normalized_gram_bwd, "[dz1] or [dz1, dz2].");
  m.def("spectral_fwd", &spectral_fwd, "[loss, positive, negative, x, grams, q (3,N)].");
  m.def("spectral_bwd", &spectral_bwd, "[dz1, dz2].");
  m.def("duality_terms_fwd", &duality_terms_fwd, "[L_c, L_nc, rows4, cols4, gram, q, c].");
  m.def("duality_terms_bwd", &duality_terms_bwd, "dz.");
}
