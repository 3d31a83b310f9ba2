// Python bindings of duality_kernels._C: the ONLY translation unit that includes torch headers
// (DESIGN convention 8). It checks tensors, allocates outputs and scratch through torch's caching
// allocator, launches the torch-free kernels in csrc/kernels/ on the current CUDA stream and turns
// their cudaError_t into Python exceptions. duality_kernels/ops/cuda.py wraps these functions in
// torch.library custom ops (DESIGN convention 2), and calls the C++ autograd Functions at the end of
// this file (the same entry points, forward and backward) for plain eager tensors; nothing else
// should call them directly. Host path per step: one call per forward and one per backward, one
// float64 scratch allocation per call, pointers instead of ATen views, no allocation for unused
// gradients (benchmarks/host_overhead.py measures it without a GPU).
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

// An optional upstream gradient (None: that output was not used): when given, a 0-dim acc tensor
// on z's device.
void check_grads(std::initializer_list<std::pair<const std::optional<at::Tensor>*, const char*>> gs,
                 const at::Tensor& z, const char* fn) {
  for (const auto& g : gs)
    if (g.first->has_value()) check_tensor(**g.first, g.second, fn, {}, acc_of(z), &z);
}

// ---------------------------------------------------------------------------------------------
// Host helpers. Allocation: the outputs and the tensors the backward needs, plus ONE float64
// scratch tensor per call that the kernels' partial sums share (Layout/Scratch); views are not
// materialized as tensors where a pointer does (each ATen view costs about as much host time as a
// kernel launch at the small shapes, benchmarks/host_overhead.py).

void* ptr(const at::Tensor& t) { return t.data_ptr(); }

// The i-th (N, D) slice of a contiguous (V, N, D) tensor, as a pointer.
void* view_ptr(const at::Tensor& t, int64_t i) {
  return static_cast<char*>(t.data_ptr()) + i * t.stride(0) * static_cast<int64_t>(t.element_size());
}

const void* opt_ptr(const std::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }

at::Tensor acc_empty(at::IntArrayRef size, const at::Tensor& like) {
  return at::empty(size, like.options().dtype(acc_dtype(like.scalar_type())));
}

// Offsets of 16-byte aligned float64 pieces in one scratch allocation.
struct Layout {
  int64_t total = 0;
  int64_t add(int64_t elems) {
    const int64_t at = total;
    total += (elems + 1) / 2 * 2;
    return at;
  }
};

struct Scratch {
  at::Tensor buf;
  double* base;
  Scratch(const Layout& l, const at::Tensor& like)
      : buf(at::empty({l.total > 0 ? l.total : 2}, like.options().dtype(at::kDouble))),
        base(buf.data_ptr<double>()) {}
  double* at(int64_t offset) const { return base + offset; }
};

// `count` new 0-dim acc tensors (the losses' scalar outputs).
std::vector<at::Tensor> scalars(const at::Tensor& z, int count) {
  std::vector<at::Tensor> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) out.push_back(acc_empty({}, z));
  return out;
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

// The dtype in which a forward saves its Grams for the backward's product: bf16 inputs save the
// bf16 operand itself (gram_pass writes it while it reads the Gram, so the backward neither
// re-reads the float32 Gram nor converts it); fp16 saves acc, which operand() scales first (below);
// float32/float64 save acc.
at::ScalarType saved_gram_dtype(at::ScalarType t) { return t == at::kBFloat16 ? t : acc_dtype(t); }

// An acc-typed matrix (a Gram, or an upstream gradient) as a GEMM operand next to T-typed rows:
// rounded to T for fp16/bf16, and for fp16 first scaled so that its largest magnitude is 2^14.
// fp16's largest finite value is 65504, and the Grams of fp16 inputs overflow it long before the
// losses or gradients do (the simulator, 2026-11-30: 8x4096 inputs within ±300 have N×N Gram
// entries up to 1.3e7, and VICReg's and the spectral loss's gradients came back inf/NaN where the
// float64 truth is below 5.3e4). Scaling keeps fp16's relative precision, and lifts small
// entries (upstream gradients of 1e-8) out of its subnormals; the product comes back in acc
// times `unscale` (mm_op). bf16 has float32's exponent range: rounding only. The scale is
// computed on the device (no host synchronization, DESIGN convention 3). A matrix already in T
// (a bf16 forward's saved Gram) is used as it is.
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

// ---- the kernel steps shared by the ops

// Stage 1 of the column moments of z1 [, z2] into `part` (col_plan's chunks; with sqdiff also
// Σ(z1 - z2)²), then their merge (gram_ops.h col_merge kMergeMoments).
struct Moments {
  double *mean = nullptr, *m2 = nullptr, *zero = nullptr, *fin = nullptr;
  bool hinge = false;
  double gamma = 0, eps = 0;
};
void column_moments(const at::Tensor& z1, const at::Tensor* z2, bool sqdiff, double* part,
                    const Moments& out, const char* fn) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  const int dt = dtype_code(z1.scalar_type());
  const cudaStream_t stream = stream_of(z1);
  dk::ColStatsArgs st{};
  st.z[0] = ptr(z1);
  st.z[1] = z2 ? ptr(*z2) : nullptr;
  st.n = n;
  st.d = d;
  st.views = views;
  st.mode = dk::kStatsMoments;
  st.sqdiff = sqdiff && z2;
  st.part = part;
  check_cuda(dk::col_stats(st, dt, stream), fn);
  dk::ColMergeArgs m{};
  m.mode = dk::kMergeMoments;
  m.part = part;
  m.n = n;
  m.d = d;
  m.chunks = dk::col_plan(n, d, dt).chunks;
  m.groups = dk::col_stats_groups(dk::kStatsMoments, views, st.sqdiff);
  m.z[0] = st.z[0];
  m.z[1] = st.z[1];
  m.views = views;
  m.sqdiff = st.sqdiff;
  m.hinge = out.hinge;
  m.gamma = out.gamma;
  m.eps = out.eps;
  m.mean = out.mean;
  m.m2 = out.m2;
  m.zero = out.zero;
  m.fin = out.fin;
  check_cuda(dk::col_merge(m, dt, stream), fn);
}

// The float64 elements column_moments needs in `part`.
int64_t moments_part_elems(int64_t n, int64_t d, at::ScalarType t, int views, bool sqdiff) {
  return dk::col_stats_groups(dk::kStatsMoments, views, sqdiff && views == 2) *
         dk::col_plan(n, d, dtype_code(t)).chunks * d;
}

// Centered (bn: standardized) views of z1 [, z2] into x (views, n, d), from the float64 moments,
// with the column partial sums of `sum_mode` into part.
void center_views(const at::Tensor& z1, const at::Tensor* z2, const at::Tensor& x,
                  const double* mean, const double* m2, bool bn, double eps, int sum_mode,
                  double* part, const char* fn) {
  dk::CenterArgs c{};
  c.z[0] = ptr(z1);
  c.z[1] = z2 ? ptr(*z2) : nullptr;
  c.out[0] = view_ptr(x, 0);
  c.out[1] = z2 ? view_ptr(x, 1) : nullptr;
  c.mean = mean;
  c.m2 = m2;
  c.n = z1.size(0);
  c.d = z1.size(1);
  c.views = z2 ? 2 : 1;
  c.bn = bn;
  c.eps = eps;
  c.sum_mode = sum_mode;
  c.part = part;
  check_cuda(dk::center(c, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
}

// col_merge kMergeSum / kMergeBarlowDiag of `groups` chunked column partials of an (n, d) input.
void merge_sums(const at::Tensor& like, int64_t n, int64_t d, int mode, int groups,
                const double* part, double* out, void* cdiag, double* fin, const char* fn) {
  const int dt = dtype_code(like.scalar_type());
  dk::ColMergeArgs m{};
  m.mode = mode;
  m.part = part;
  m.n = n;
  m.d = d;
  m.chunks = dk::col_plan(n, d, dt).chunks;
  m.groups = groups;
  m.out = out;
  m.cdiag = cdiag;
  m.fin = fin;
  check_cuda(dk::col_merge(m, dt, stream_of(like)), fn);
}

// gram_pass over the GEMM result g ((mats, m, m), acc or float64) of inputs of dtype t: the
// partial sums into fin (4 x gram_blocks slots); returns the Grams to save: a copy in
// saved_gram_dtype(t) when that or g's dtype asks for one (bf16 inputs; float64 Grams of float32
// inputs) or when swap does, else g itself (its diagonals zeroed in place with zero_diag).
// swap (pair): the copy holds [g[1], g[0]], so that the backward's two products P_0 = G_1-side
// and P_1 = G_0-side run as ONE batched GEMM. On the H200 one bmm of two 2048² x 2048 x 8192
// products took 193 µs where a single such mm took 197 µs (torch.profiler, 2026-11-30): the
// batch fills the GPU, so the copy (32 MB at Barlow 2048 x 8192 fp32, less for bf16, where it is
// written anyway) buys about one GEMM.
struct GramPass {
  bool pair = false, zero_diag = false, save = true, swap = false;
  void* cdiag = nullptr;
  double cdiv = 1;
};
at::Tensor gram_pass(const at::Tensor& g, at::ScalarType t, const GramPass& o, double* fin,
                     const char* fn) {
  const at::ScalarType saved = saved_gram_dtype(t);
  at::Tensor gram;
  void* out = nullptr;
  if (o.save) {
    gram = g.scalar_type() == saved && !o.swap ? g : at::empty(g.sizes(), g.options().dtype(saved));
    if (gram.data_ptr() != g.data_ptr() || o.zero_diag) out = ptr(gram);
  }
  dk::GramPassArgs a{};
  a.g = ptr(g);
  a.out = out;
  a.cdiag = o.cdiag;
  a.mats = g.size(0);
  a.m = g.size(1);
  a.gdtype = dtype_code(g.scalar_type());
  a.odtype = out ? dtype_code(saved) : a.gdtype;
  a.cdtype = dtype_code(acc_dtype(t));
  a.pair = o.pair;
  a.zero_diag = o.zero_diag;
  a.swap = o.swap;
  a.cdiv = o.cdiv;
  a.fin = fin;
  check_cuda(dk::gram_pass(a, stream_of(g)), fn);
  return gram;
}

// The finalize kernel into `count` new scalars; f.part/f.nparts filled by the caller.
std::vector<at::Tensor> run_finalize(dk::FinalizeArgs& f, const at::Tensor& z, int count,
                                     const char* fn) {
  std::vector<at::Tensor> outs = scalars(z, count);
  for (int i = 0; i < count; ++i) f.out[i] = ptr(outs[i]);
  check_cuda(dk::finalize(f, dtype_code(z.scalar_type()), stream_of(z)), fn);
  return outs;
}

// ---------------------------------------------------------------------------------------------
// The covariance family (SPEC §1–3): one call per forward and one per backward. The GEMMs go
// through ATen (cuBLAS) on the side the caller picked (`sample`: the N×N side, else D×D); every
// other step is a kernel of csrc/kernels/gram_ops.cu on the current stream (gram_ops.cu's header
// lists them per op with their bytes). Forward outputs past the documented results are what the
// backward needs (saved by duality_kernels/ops/cuda.py).

// ---- VICReg

// Forward: col_stats + col_merge (moments, Σ(z1 - z2)², the hinge's partials), center (x; on the
// sample side with Σ_i x² per column), [col_merge of those], the Grams (one bmm), gram_pass,
// finalize: 6 kernels + 1 GEMM on the sample side, 5 + 1 on the dimension side.
// stats (2, 2, d) float64: [m2 of both views, Σ_i x² of both views (sample side; 0 otherwise)].
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
  dk::FinalizeArgs f{};
  f.mode = dk::kFinVICReg;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.part[0] = s.at(o_fin_g);
  f.part[1] = s.at(o_fin_g) + gb;
  f.part[2] = s.at(o_fin_m);
  f.part[3] = s.at(o_fin_m) + mb;
  f.part[4] = sample ? s.at(o_fin_c) : nullptr;
  f.nparts[0] = f.nparts[1] = static_cast<int>(gb);
  f.nparts[2] = f.nparts[3] = static_cast<int>(mb);
  f.nparts[4] = sample ? static_cast<int>(mb) : 0;
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
  check_number(inv_w, "inv_weight", fn);
  check_number(var_w, "var_weight", fn);
  check_number(cov_w, "cov_weight", fn);
  check_number(gamma, "gamma", fn);
  check_number(eps, "eps", fn, 0.0);
  DK_DEVICE_GUARD(z1);
  const Operand g = operand(gram, z1.scalar_type());
  const at::Tensor p = sample ? mm_op(g.m, x, g) : mm_op(x, g.m, g);  // both symmetric Grams
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  dk::VICRegBwdArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.x[0] = view_ptr(x, 0);
  a.x[1] = view_ptr(x, 1);
  a.p[0] = view_ptr(p, 0);
  a.p[1] = view_ptr(p, 1);
  a.m2 = stats.data_ptr<double>();
  // sample side: the Gram's diagonal is in P; the forward's column sums of squares of the same x
  // remove it
  a.sq = sample ? stats.data_ptr<double>() + 2 * d : nullptr;
  a.g[0] = opt_ptr(g_loss);
  a.g[1] = opt_ptr(g_inv);
  a.g[2] = opt_ptr(g_var);
  a.g[3] = opt_ptr(g_cov);
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

// ---- the standardized views of cross_correlation and Barlow Twins

// The scratch of standardized_views, in the caller's Layout.
struct StdScratch {
  int64_t moments, mean;
  StdScratch(Layout& l, const at::Tensor& z)
      : moments(l.add(moments_part_elems(z.size(0), z.size(1), z.scalar_type(), 2, false))),
        mean(l.add(2 * z.size(1))) {}
};

// col_stats + col_merge + center (bn) into x (2, n, d), m2 (2, d) float64; with the sample side's
// Σ_i a_ik b_ik partials into part_c.
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

// ---- BatchNorm backward shared by cross_correlation and Barlow Twins

std::vector<at::Tensor> bn_backward(const at::Tensor& x, const void* p0, const void* p1,
                                    const at::Tensor& m2, const at::Tensor* cdiag,
                                    const std::optional<at::Tensor>* g, double eps, double lambda,
                                    const char* fn) {
  const int64_t n = x.size(1), d = x.size(2);
  at::Tensor dz1 = at::empty({n, d}, x.options()), dz2 = at::empty({n, d}, x.options());
  Layout l;
  const int64_t o_work = l.add(dk::bn_bwd_workspace_elems(n, d, dtype_code(x.scalar_type())));
  const Scratch s(l, x);
  dk::BNBwdArgs a{};
  a.x[0] = view_ptr(x, 0);
  a.x[1] = view_ptr(x, 1);
  a.p[0] = p0;
  a.p[1] = p1;
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
    for (int i = 0; i < 3; ++i) a.g[i] = opt_ptr(g[i]);
  }
  check_cuda(dk::bn_bwd(a, dtype_code(x.scalar_type()), s.at(o_work), stream_of(x)), fn);
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
    // ‖aᵀb‖² = ⟨a aᵀ, b bᵀ⟩ (SPEC §2); the diagonal Σ_i a_ik b_ik by columns.
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
  dk::FinalizeArgs f{};
  f.mode = dk::kFinBarlow;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.part[0] = s.at(o_fin_g);
  f.part[1] = s.at(o_fin_g) + gb;
  f.part[2] = sample ? s.at(o_fin_c) : s.at(o_fin_g) + 2 * gb;
  f.part[3] = sample ? s.at(o_fin_c) + mb : s.at(o_fin_g) + 3 * gb;
  f.nparts[0] = f.nparts[1] = static_cast<int>(gb);
  f.nparts[2] = f.nparts[3] = static_cast<int>(sample ? mb : gb);
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

// ---- the row-scaled views of normalized_gram and the spectral loss

// row_scale of z1 [, z2] into x (views, n, d) and q ((1 or 3), n): one launch.
std::tuple<at::Tensor, at::Tensor> row_scaled_views(const at::Tensor& z1, const at::Tensor* z2,
                                                    int row_mode, double radius, int fin_mode,
                                                    double* fin, const char* fn) {
  const int views = z2 ? 2 : 1;
  const int64_t n = z1.size(0), d = z1.size(1);
  at::Tensor q = acc_empty({views == 1 ? 1 : 3, n}, z1);
  at::Tensor x = at::empty({views, n, d}, z1.options());
  dk::RowScaleArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = z2 ? ptr(*z2) : nullptr;
  a.out[0] = view_ptr(x, 0);
  a.out[1] = z2 ? view_ptr(x, 1) : nullptr;
  a.q = ptr(q);
  a.n = n;
  a.d = d;
  a.views = views;
  a.row_mode = row_mode;
  a.fin_mode = fin_mode;
  a.radius = radius;
  a.fin = fin;
  check_cuda(dk::row_scale(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {x, q};
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
  dk::RowBwdArgs a{};
  a.z[0] = ptr(z1);
  a.p[0] = ptr(p0);
  a.q = ptr(q);
  a.dz[0] = ptr(dz1);
  if (z2) {
    a.z[1] = ptr(*z2);
    a.p[1] = ptr(p1);
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
  dk::FinalizeArgs f{};
  f.mode = dk::kFinSpectral;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.part[0] = s.at(o_fin_g);
  f.part[1] = s.at(o_fin_g) + gb;
  f.part[2] = s.at(o_fin_r);
  f.part[3] = s.at(o_fin_r) + rb;
  f.nparts[0] = f.nparts[1] = static_cast<int>(gb);
  f.nparts[2] = f.nparts[3] = static_cast<int>(rb);
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
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  dk::RowBwdArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.p[0] = sample ? ptr(p0) : view_ptr(p, 0);
  a.p[1] = sample ? ptr(p1) : view_ptr(p, 1);
  a.y[0] = view_ptr(x, 1);
  a.y[1] = view_ptr(x, 0);
  a.q = ptr(q);
  a.g[0] = opt_ptr(g_loss);
  a.g[1] = opt_ptr(g_pos);
  a.g[2] = opt_ptr(g_neg);
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

// ---- gather_distributed=True (SPEC §5): the local pieces whose cross-rank merge runs in
// duality_kernels/ops/gathered.py (collectives and D×D / N-vector algebra between these calls)

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
  dk::FinalizeArgs f{};
  f.mode = dk::kFinVICReg;
  f.n = n;
  f.d = d;
  for (int j = 0; j < dk::kFinSlots; ++j) f.part[j] = s.at(o_fin);
  f.nparts[2] = static_cast<int>(mb);
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
  const int64_t n = z1.size(0), d = z1.size(1);
  at::Tensor q = acc_empty({3, n}, z1), p = acc_empty({n}, z1);
  at::Tensor x = at::empty({2, n, d}, z1.options());
  dk::RowScaleArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.out[0] = view_ptr(x, 0);
  a.out[1] = view_ptr(x, 1);
  a.q = ptr(q);
  a.p = ptr(p);
  a.n = n;
  a.d = d;
  a.views = 2;
  a.row_mode = dk::kRowClamp;
  a.fin_mode = dk::kRowFinNone;
  a.radius = std::sqrt(mu);
  check_cuda(dk::row_scale(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
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
  at::Tensor dz1 = at::empty({n, d}, z1.options()), dz2 = at::empty({n, d}, z1.options());
  dk::RowBwdArgs a{};
  a.z[0] = ptr(z1);
  a.z[1] = ptr(z2);
  a.p[0] = view_ptr(gx, 0);
  a.p[1] = view_ptr(gx, 1);
  a.y[0] = view_ptr(x, 1);
  a.y[1] = view_ptr(x, 0);
  a.q = ptr(q);
  a.beta = opt_ptr(g_p);
  a.dz[0] = ptr(dz1);
  a.dz[1] = ptr(dz2);
  a.n = n;
  a.d = d;
  a.views = 2;
  a.row_mode = dk::kRowClampVec;
  a.mu = mu;
  check_cuda(dk::row_bwd(a, dtype_code(z1.scalar_type()), stream_of(z1)), fn);
  return {dz1, dz2};
}

// ---- duality_terms (the paper's two criteria, SPEC §2)

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
  dk::RowScaleArgs r{};
  r.z[0] = ptr(z);
  r.q = ptr(q);
  r.n = n;
  r.d = d;
  r.views = 1;
  r.row_mode = dk::kRowNone;
  r.fin_mode = dk::kRowFinSumSq;
  r.fin = s.at(o_fin_r);
  check_cuda(dk::row_scale(r, dt, stream_of(z)), fn);
  at::Tensor c = at::empty({d}, z.options().dtype(at::kDouble));  // Σ_i z_ik², float64
  dk::ColStatsArgs st{};
  st.z[0] = ptr(z);
  st.n = n;
  st.d = d;
  st.views = 1;
  st.mode = dk::kStatsSumSq;
  st.part = s.at(o_cols);
  check_cuda(dk::col_stats(st, dt, stream_of(z)), fn);
  merge_sums(z, n, d, dk::kMergeSum, 1, s.at(o_cols), c.data_ptr<double>(), nullptr,
             s.at(o_fin_c), fn);
  const at::Tensor g = (sample ? mm_sum(z, z.t()) : mm_sum(z.t(), z)).unsqueeze(0);
  GramPass gp;
  gp.zero_diag = true;  // saved without it (gram_ops.h DualityBwdArgs)
  const at::Tensor gram = gram_pass(g, t, gp, s.at(o_fin_g), fn)[0];
  dk::FinalizeArgs f{};
  f.mode = dk::kFinDuality;
  f.sample = sample;
  f.n = n;
  f.d = d;
  f.part[0] = s.at(o_fin_g);
  f.part[1] = s.at(o_fin_g) + gb;
  f.part[2] = s.at(o_fin_r);
  f.part[3] = s.at(o_fin_c);
  f.nparts[0] = f.nparts[1] = static_cast<int>(gb);
  f.nparts[2] = static_cast<int>(rb);
  f.nparts[3] = static_cast<int>(mb);
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
  const Operand g = operand(gram, z.scalar_type());
  const at::Tensor p = sample ? mm_op(g.m, z, g) : mm_op(z, g.m, g);
  at::Tensor dz = at::empty({n, d}, z.options());
  dk::DualityBwdArgs a{};
  a.z = ptr(z);
  a.p = ptr(p);
  a.q = ptr(q);
  a.c = c.data_ptr<double>();
  a.g[0] = opt_ptr(g_lc);
  a.g[1] = opt_ptr(g_lnc);
  a.g[2] = opt_ptr(g_r4);
  a.g[3] = opt_ptr(g_c4);
  a.dz = ptr(dz);
  a.n = n;
  a.d = d;
  a.sample = sample;
  check_cuda(dk::duality_bwd(a, dtype_code(z.scalar_type()), stream_of(z)), fn);
  return dz;
}

// ---------------------------------------------------------------------------------------------
// The eager autograd path: each forward/backward pair above as a C++ torch::autograd::Function,
// which ops/cuda.py calls for plain eager tensors (tracing and torch.compile take the custom ops,
// whose forward and backward are the same entry points, DESIGN convention 2). The graph node, the
// saved tensors and the backward stay in C++: no Python autograd.Function (about 4 µs of host time
// per forward on the development machine) and no Python backward (about 5 µs, and a GIL
// acquisition in the autograd engine's device thread on a GPU). Unused outputs' gradients arrive
// undefined (set_materialize_grads(false)): the backward entry points take them as 0, with no
// zeros allocated.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

variable_list with_undefined(std::vector<at::Tensor> dz, size_t inputs) {
  dz.resize(inputs);
  return dz;
}

struct VICRegFn : torch::autograd::Function<VICRegFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2,
                               double inv_w, double var_w, double cov_w, double gamma, double eps,
                               bool sample) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = vicreg_fwd(z1, z2, inv_w, var_w, cov_w, gamma, eps, sample);
    ctx->save_for_backward({z1, z2, out[4], out[5], out[6]});
    ctx->saved_data["w"] = std::vector<double>{inv_w, var_w, cov_w, gamma, eps, sample ? 1.0 : 0.0};
    out.resize(4);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<double> w = ctx->saved_data["w"].toDoubleVector();
    return with_undefined(vicreg_bwd(s[0], s[1], s[2], s[3], s[4], grad_at(g, 0), grad_at(g, 1),
                                     grad_at(g, 2), grad_at(g, 3), w[0], w[1], w[2], w[3], w[4],
                                     w[5] != 0),
                          8);
  }
};

struct BarlowTwinsFn : torch::autograd::Function<BarlowTwinsFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2,
                               double lambda, double eps, bool sample) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = barlow_twins_fwd(z1, z2, lambda, eps, sample);
    ctx->save_for_backward({out[3], out[4], out[5], out[6]});
    ctx->saved_data["w"] = std::vector<double>{lambda, eps, sample ? 1.0 : 0.0};
    out.resize(3);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<double> w = ctx->saved_data["w"].toDoubleVector();
    return with_undefined(barlow_twins_bwd(s[0], s[1], s[2], s[3], grad_at(g, 0), grad_at(g, 1),
                                           grad_at(g, 2), w[0], w[1], w[2] != 0),
                          5);
  }
};

struct SpectralFn : torch::autograd::Function<SpectralFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2,
                               double mu, bool sample) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = spectral_fwd(z1, z2, mu, sample);
    ctx->save_for_backward({z1, z2, out[3], out[4], out[5]});
    ctx->saved_data["w"] = std::vector<double>{mu, sample ? 1.0 : 0.0};
    out.resize(3);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const std::vector<double> w = ctx->saved_data["w"].toDoubleVector();
    return with_undefined(spectral_bwd(s[0], s[1], s[2], s[3], s[4], grad_at(g, 0), grad_at(g, 1),
                                       grad_at(g, 2), w[0], w[1] != 0),
                          4);
  }
};

struct DualityTermsFn : torch::autograd::Function<DualityTermsFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, bool sample) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = duality_terms_fwd(z, sample);
    ctx->save_for_backward({z, out[4], out[5], out[6]});
    ctx->saved_data["sample"] = sample;
    out.resize(4);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    return with_undefined({duality_terms_bwd(s[0], s[1], s[2], s[3], grad_at(g, 0), grad_at(g, 1),
                                             grad_at(g, 2), grad_at(g, 3),
                                             ctx->saved_data["sample"].toBool())},
                          2);
  }
};

struct CovarianceFn : torch::autograd::Function<CovarianceFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, int64_t correction) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = covariance_fwd(z, correction);
    ctx->save_for_backward({out[1]});
    ctx->saved_data["correction"] = correction;
    out.resize(1);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor grad = matrix_grad(g, acc_of(s[0]));
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};
    return {covariance_bwd(s[0], grad, ctx->saved_data["correction"].toInt()), at::Tensor()};
  }
};

struct CrossCorrelationFn : torch::autograd::Function<CrossCorrelationFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1, const at::Tensor& z2,
                               double eps) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = cross_correlation_fwd(z1, z2, eps);
    ctx->save_for_backward({out[1], out[2]});
    ctx->saved_data["eps"] = eps;
    out.resize(1);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor grad = matrix_grad(g, acc_of(s[0]));
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    return with_undefined(cross_correlation_bwd(s[0], s[1], grad, ctx->saved_data["eps"].toDouble()),
                          3);
  }
};

struct NormalizedGramFn : torch::autograd::Function<NormalizedGramFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z1,
                               const std::optional<at::Tensor>& z2) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = normalized_gram_fwd(z1, z2);
    ctx->save_for_backward({z1, z2 ? *z2 : at::Tensor(), out[1], out[2]});
    out.resize(1);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor grad = matrix_grad(g, acc_of(s[0]));
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};
    const std::optional<at::Tensor> z2 =
        s[1].defined() ? std::optional<at::Tensor>(s[1]) : std::nullopt;
    return with_undefined(normalized_gram_bwd(s[0], z2, s[2], s[3], grad), 2);
  }
};

variable_list vicreg_autograd(const at::Tensor& z1, const at::Tensor& z2, double inv_w,
                              double var_w, double cov_w, double gamma, double eps, bool sample) {
  return VICRegFn::apply(z1, z2, inv_w, var_w, cov_w, gamma, eps, sample);
}
variable_list barlow_twins_autograd(const at::Tensor& z1, const at::Tensor& z2, double lambda,
                                    double eps, bool sample) {
  return BarlowTwinsFn::apply(z1, z2, lambda, eps, sample);
}
variable_list spectral_autograd(const at::Tensor& z1, const at::Tensor& z2, double mu,
                                bool sample) {
  return SpectralFn::apply(z1, z2, mu, sample);
}
variable_list duality_terms_autograd(const at::Tensor& z, bool sample) {
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
