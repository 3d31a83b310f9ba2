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

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/gram_ops.h"

// Built with -DDK_HOST_SIM (tests/csim.py) the same functions take CPU tensors and run the kernels
// in the CPU simulator (csrc/sim/cuda_sim.h); the GEMMs then run through ATen on the CPU.
#ifdef DK_HOST_SIM
#define DK_DEVICE_GUARD(t) (void)0
#define DK_KERNEL_DEVICE "CPU (the simulator's)"
#else
#define DK_DEVICE_GUARD(t) const c10::cuda::CUDAGuard dk_device_guard_((t).device())
#define DK_KERNEL_DEVICE "CUDA"
#endif

// Errors of this file (bad arguments, CUDA errors) are raised as a plain std::runtime_error
// (Python RuntimeError), not through TORCH_CHECK. A c10::Error calls glibc backtrace() when it is
// constructed (gdb here: torchCheckFail -> c10::Error::Error -> get_lazy_backtrace -> backtrace),
// which walks every frame of the process, the Python interpreter's included. On the H200 the first
// argument error of tests/test_cuda_gram.py::test_validation_in_bindings (z1 and z2 of different
// shapes, caught by the very first check, before any allocation or launch) killed the pytest
// worker with SIGSEGV where the simulator raised (2026-11-30): the check ran first in both
// builds, so the crash was in raising, and that walk is the only part of raising that leaves our
// frames (libgcc's unwinder crashing in it is known: pytorch/pytorch#117645). Suspected, untested
// on GPU. A std::runtime_error unwinds only our frames, up to pybind11's handler.
#define DK_CHECK(cond, ...)                                                                  \
  do {                                                                                       \
    if (!(cond)) throw std::runtime_error(c10::str(__VA_ARGS__));                            \
  } while (false)

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
  DK_CHECK(err == cudaSuccess, "duality_kernels._C.", fn, ": CUDA error ", static_cast<int>(err),
           " (", cudaGetErrorName(err), "): ", cudaGetErrorString(err));
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

// ---------------------------------------------------------------------------------------------
// Argument checks: every entry point below checks ALL of its arguments first, before any
// allocation, GEMM or launch (the kernels trust their inputs, DESIGN convention 6). Each failure
// names the function, the argument and the offending value. The public functions validate
// earlier with ValueError/TypeError (SPEC §6); these checks guard direct and custom-op calls.

constexpr int64_t kAny = -1;  // a size check_tensor leaves free
// N and D up to 2^31 - 1: the row kernels launch one block per row (gridDim.x), the column
// kernels ceil(D / 32) blocks, and cuBLAS takes int dimensions.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

std::string shape_str(std::initializer_list<int64_t> shape) {
  std::ostringstream os;
  os << '[';
  const char* sep = "";
  for (int64_t s : shape) {
    os << sep;
    if (s == kAny) os << '*';
    else os << s;
    sep = ", ";
  }
  os << ']';
  return os.str();
}

// One tensor argument: on the kernel device (and on `like`'s device when given), of the given
// shape (kAny: any size), of dtype `dtype` (Undefined: one of the four the kernels take),
// contiguous.
void check_tensor(const at::Tensor& t, const char* name, const char* fn,
                  std::initializer_list<int64_t> shape,
                  at::ScalarType dtype = at::ScalarType::Undefined,
                  const at::Tensor* like = nullptr) {
  DK_CHECK(on_kernel_device(t), fn, ": ", name, " must be a ", DK_KERNEL_DEVICE,
           " tensor, got device ", t.device());
  DK_CHECK(like == nullptr || t.device() == like->device(), fn, ": ", name, " must be on ",
           like->device(), " with the input, got device ", t.device());
  bool ok = t.dim() == static_cast<int64_t>(shape.size());
  int64_t i = 0;
  for (int64_t s : shape) ok = ok && (s == kAny || t.size(i++) == s);
  DK_CHECK(ok, fn, ": ", name, " must have shape ", shape_str(shape), ", got ", t.sizes());
  if (dtype == at::ScalarType::Undefined) {
    DK_CHECK(dtype_code(t.scalar_type()) >= 0, fn, ": ", name,
             " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  } else {
    DK_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must be ", dtype, ", got ",
             t.scalar_type());
  }
  DK_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous, got strides ", t.strides(),
           " for shape ", t.sizes());
}

// The (N, D) input of an entry point (with views > 0: the (views, N, D) saved views that stand
// for it): check_tensor's checks, N and D within kMaxSize, at least min_rows rows and min_cols
// columns (the divisions by N - 1 and the off-diagonal terms).
void check_rows(const at::Tensor& z, const char* name, const char* fn, int64_t min_rows,
                int64_t min_cols = 1, int64_t views = 0) {
  if (views > 0) check_tensor(z, name, fn, {views, kAny, kAny});
  else check_tensor(z, name, fn, {kAny, kAny});
  const int64_t n = z.size(-2), d = z.size(-1);
  DK_CHECK(n <= kMaxSize && d <= kMaxSize, fn, ": ", name, " has shape ", z.sizes(),
           "; the kernels take N and D up to ", kMaxSize);
  DK_CHECK(n >= min_rows && d >= min_cols, fn, ": ", name, " needs at least ", min_rows,
           " rows and ", min_cols, " columns, got shape ", z.sizes());
}

// Two views: each as check_rows, and the same shape, dtype and device.
void check_pair(const at::Tensor& z1, const at::Tensor& z2, const char* fn, int64_t min_rows) {
  check_rows(z1, "z1", fn, min_rows);
  check_rows(z2, "z2", fn, min_rows);
  DK_CHECK(z1.sizes() == z2.sizes() && z1.scalar_type() == z2.scalar_type() &&
               z1.device() == z2.device(),
           fn, ": z1 and z2 must match in shape, dtype and device, got ", z1.sizes(), " ",
           z1.scalar_type(), " ", z1.device(), " and ", z2.sizes(), " ", z2.scalar_type(), " ",
           z2.device());
}

// Tensors that go with the input z (saved by the forward, or upstream gradients), each
// {tensor, name, shape, dtype}: on z's device, contiguous, of that shape and dtype.
struct Aux {
  const at::Tensor& t;
  const char* name;
  std::initializer_list<int64_t> shape;
  at::ScalarType dtype;
};
void check_aux(std::initializer_list<Aux> args, const at::Tensor& z, const char* fn) {
  for (const Aux& a : args) check_tensor(a.t, a.name, fn, a.shape, a.dtype, &z);
}

// A scalar argument: finite, and >= lo (> lo when strict).
void check_number(double v, const char* name, const char* fn,
                  double lo = -std::numeric_limits<double>::infinity(), bool strict = false) {
  DK_CHECK(std::isfinite(v) && (strict ? v > lo : v >= lo), fn, ": ", name, " must be finite",
           std::isinf(lo) ? "" : (strict ? " and > " : " and >= "),
           std::isinf(lo) ? std::string() : c10::str(lo), ", got ", v);
}

// Reductions accumulate in acc (float32, float64 for float64 inputs): the dtype of the statistics
// and upstream gradients that go with z.
at::ScalarType acc_of(const at::Tensor& z) { return acc_dtype(z.scalar_type()); }

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
  check_rows(z, "z", fn, 0, 0);  // empty z: zeros, below
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
  check_rows(z, "z", fn, 0, 0);
  const int64_t d = z.size(1);
  check_aux({{mean, "mean", {d}, acc_of(z)}, {grad_mean, "grad_mean", {d}, acc_of(z)},
             {grad_m2, "grad_m2", {d}, acc_of(z)}},
            z, fn);
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

// An acc-typed matrix (a Gram, or an upstream gradient) as a GEMM operand next to T-typed rows:
// rounded to T for fp16/bf16, and for fp16 first scaled so that its largest magnitude is 2^14.
// fp16's largest finite value is 65504, and the Grams of fp16 inputs overflow it long before the
// losses or gradients do (the simulator, 2026-11-30: 8x4096 inputs within ±300 have N×N Gram
// entries up to 1.3e7, and VICReg's and the spectral loss's gradients came back inf/NaN where the
// float64 truth is below 5.3e4). Scaling keeps fp16's relative precision, and lifts small
// entries (upstream gradients of 1e-8) out of its subnormals; the product comes back in acc
// times `unscale` (mm_op). bf16 has float32's exponent range: rounding only. The scale is
// computed on the device (no host synchronization, DESIGN convention 3).
struct Operand {
  at::Tensor m;        // the matrix in dtype T (scaled for fp16)
  at::Tensor unscale;  // 0-dim acc factor of the products (fp16), else undefined
};

constexpr double kOperandMax = 16384.0;  // 2^14: headroom below 65504 for the rounding

Operand operand(const at::Tensor& g, at::ScalarType t) {
  if (g.scalar_type() == t) return {g, at::Tensor()};
  if (t != at::kHalf) return {g.to(t), at::Tensor()};
  // amax = 0: any scale; a NaN or inf in g turns every product NaN, as the reference's would be.
  const at::Tensor amax = g.abs().amax().clamp_min_(std::numeric_limits<float>::min());
  return {g.mul(at::reciprocal(amax).mul_(kOperandMax)).to(t), amax.mul(1.0 / kOperandMax)};
}

// a @ b in acc (mm_acc) for an `o.m` among a and b: times o's unscale.
at::Tensor mm_op(const at::Tensor& a, const at::Tensor& b, const Operand& o) {
  at::Tensor p = mm_acc(a, b);
  if (o.unscale.defined()) p.mul_(o.unscale);
  return p;
}

// (g + gᵀ) * scale of a square acc matrix g as an operand next to T-typed rows: sym_scale writes
// it in T in one pass; fp16 goes through acc and operand()'s scaling.
Operand sym_operand(const at::Tensor& g, double scale, at::ScalarType t, const char* fn) {
  if (t == at::kHalf) return operand(at::add(g, g.t()).mul_(scale), t);
  const int64_t m = g.size(0);
  at::Tensor s = at::empty({m, m}, g.options().dtype(t));
  check_cuda(dk::sym_scale(ptr(g), m, scale, dtype_code(t), ptr(s), stream_of(g)), fn);
  return {s, at::Tensor()};
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
  check_pair(z1, z2, fn, 2);
  check_number(inv_w, "inv_weight", fn);
  check_number(var_w, "var_weight", fn);
  check_number(cov_w, "cov_weight", fn);
  check_number(gamma, "gamma", fn);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(z1);
  const int64_t n = z1.size(0), d = z1.size(1);
  auto [x, m2, sq] = centered_views(z1, &z2, false, 0.0, true, fn);
  const at::Tensor g = sample ? mm_sum(x, x.transpose(1, 2)) : mm_sum(x.transpose(1, 2), x);
  const at::Tensor part = sum_of(g, nullptr, g.numel(), sample ? n : d, fn);
  const at::Tensor gram = g.to(acc_dtype(z1.scalar_type()));
  // Saved for the backward without its diagonal on the dimension side, so that its product
  // leaves the diagonal out exactly (gram_ops.h VICRegBwdArgs: sq). In place: `part` was queued
  // before on this stream.
  if (!sample) gram.diagonal(0, -2, -1).zero_();
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
  check_pair(z1, z2, fn, 2);
  const int64_t n = z1.size(0), d = z1.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_of(z1);
  check_aux({{x, "x", {2, n, d}, z1.scalar_type()}, {gram, "gram", {2, m, m}, acc},
             {m2, "m2", {2, d}, at::kDouble}, {g_loss, "g_loss", {}, acc},
             {g_inv, "g_inv", {}, acc}, {g_var, "g_var", {}, acc}, {g_cov, "g_cov", {}, acc}},
            z1, fn);
  check_number(inv_w, "inv_weight", fn);
  check_number(var_w, "var_weight", fn);
  check_number(cov_w, "cov_weight", fn);
  check_number(gamma, "gamma", fn);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(z1);
  const Operand g = operand(gram, z1.scalar_type());
  const at::Tensor p = sample ? mm_op(g.m, x, g) : mm_op(x, g.m, g);  // both symmetric Grams
  // sample side: the Gram's diagonal is in P; the column sums of squares of the same x remove it
  const at::Tensor sq = sample ? col_sums({x[0], x[1]}, {}, dk::kColSumSq, fn) : at::Tensor();
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
  a.sq = sample ? sq.data_ptr<double>() : nullptr;
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

// ---- cross_correlation

std::vector<at::Tensor> cross_correlation_fwd(const at::Tensor& z1, const at::Tensor& z2,
                                              double eps) {
  constexpr const char* fn = "cross_correlation_fwd";
  check_pair(z1, z2, fn, 2);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(z1);
  auto [x, m2, unused] = centered_views(z1, &z2, true, eps, false, fn);
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
  return bn_backward(x, p0, p1, m2, nullptr, nullptr, eps, 0.0, fn);
}

// ---- Barlow Twins

std::vector<at::Tensor> barlow_twins_fwd(const at::Tensor& z1, const at::Tensor& z2,
                                         double lambda, double eps, bool sample) {
  constexpr const char* fn = "barlow_twins_fwd";
  check_pair(z1, z2, fn, 2);
  check_number(lambda, "lambda_param", fn);
  check_number(eps, "eps", fn, 0.0);
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
  check_rows(x, "x", fn, 2, 1, 2);
  const int64_t n = x.size(1), d = x.size(2), m = sample ? n : d;
  const at::ScalarType acc = acc_of(x);
  check_aux({{m2, "m2", {2, d}, at::kDouble}, {grams, "grams", {sample ? 2 : 1, m, m}, acc},
             {cdiag, "cdiag", {d}, acc}, {g_loss, "g_loss", {}, acc}, {g_on, "g_on", {}, acc},
             {g_off, "g_off", {}, acc}},
            x, fn);
  check_number(lambda, "lambda_param", fn);
  check_number(eps, "eps", fn, 0.0);
  const at::Tensor g[3] = {g_loss, g_on, g_off};
  DK_DEVICE_GUARD(x);
  const Operand gm = operand(grams, x.scalar_type());
  at::Tensor p0, p1;
  if (sample) {
    p0 = mm_op(gm.m[1], x[0], gm);  // (b bᵀ) a
    p1 = mm_op(gm.m[0], x[1], gm);  // (a aᵀ) b
  } else {
    p0 = mm_op(x[1], gm.m[0].t(), gm);  // b (aᵀb)ᵀ
    p1 = mm_op(x[0], gm.m[0], gm);      // a (aᵀb)
  }
  return bn_backward(x, p0, p1, m2, &cdiag, g, eps, lambda, fn);
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
  auto [x, m2, unused] = centered_views(z, nullptr, false, 0.0, false, fn);
  at::Tensor c = mm_acc(x[0].t(), x[0]);
  c.mul_(1.0 / static_cast<double>(z.size(0) - correction));
  return {c, x[0]};
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
  auto [x, q] = row_scaled_views(z1, z2 ? &*z2 : nullptr, dk::kRowL2, 0.0, fn);
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
  check_pair(z1, z2, fn, 2);
  check_number(mu, "mu", fn, 0.0, true);
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
  check_pair(z1, z2, fn, 2);
  const int64_t n = z1.size(0), d = z1.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_of(z1);
  check_aux({{x, "x", {2, n, d}, z1.scalar_type()}, {grams, "grams", {sample ? 1 : 2, m, m}, acc},
             {q, "q", {3, n}, acc}, {g_loss, "g_loss", {}, acc}, {g_pos, "g_pos", {}, acc},
             {g_neg, "g_neg", {}, acc}},
            z1, fn);
  check_number(mu, "mu", fn, 0.0, true);
  DK_DEVICE_GUARD(z1);
  const Operand gm = operand(grams, z1.scalar_type());
  at::Tensor p0, p1;
  if (sample) {
    p0 = mm_op(gm.m[0], x[1], gm);      // (a bᵀ) b
    p1 = mm_op(gm.m[0].t(), x[0], gm);  // (b aᵀ) a
  } else {
    p0 = mm_op(x[0], gm.m[1], gm);  // a (bᵀb)
    p1 = mm_op(x[1], gm.m[0], gm);  // b (aᵀa)
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
  check_rows(z, "z", fn, 1);
  DK_DEVICE_GUARD(z);
  const int64_t n = z.size(0), d = z.size(1);
  const int dt = dtype_code(z.scalar_type());
  at::Tensor q = acc_empty({n}, z);
  check_cuda(dk::row_stats(ptr(z), nullptr, n, d, dt, ptr(q), nullptr, nullptr, stream_of(z)), fn);
  const at::Tensor c = col_sums({z}, {}, dk::kColSumSq, fn);  // float64 (d)
  const at::Tensor g = sample ? mm_sum(z, z.t()) : mm_sum(z.t(), z);
  const at::Tensor part = sum_of(g, nullptr, g.numel(), sample ? n : d, fn);
  const at::Tensor gram = g.to(acc_dtype(z.scalar_type()));
  gram.diagonal().zero_();  // saved without it (gram_ops.h DualityBwdArgs); `part` was queued first
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
  check_rows(z, "z", fn, 1);
  const int64_t n = z.size(0), d = z.size(1), m = sample ? n : d;
  const at::ScalarType acc = acc_of(z);
  check_aux({{gram, "gram", {m, m}, acc}, {q, "q", {n}, acc}, {c, "c", {d}, at::kDouble},
             {g_lc, "g_lc", {}, acc}, {g_lnc, "g_lnc", {}, acc}, {g_r4, "g_r4", {}, acc},
             {g_c4, "g_c4", {}, acc}},
            z, fn);
  DK_DEVICE_GUARD(z);
  const Operand g = operand(gram, z.scalar_type());
  const at::Tensor p = sample ? mm_op(g.m, z, g) : mm_op(z, g.m, g);
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
  a.sample = sample;
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
