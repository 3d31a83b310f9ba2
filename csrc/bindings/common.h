// What every entry point of duality_kernels._C shares (csrc/bindings/): the kernel device and its
// stream, the argument checks, the dtype rules (dtype codes, the accumulation dtype, the dtype of
// the Grams a forward saves) and the host helpers that allocate outputs and scratch and run the
// GEMMs. Only ATen is included here: torch/extension.h (pybind11, the autograd API) is left to
// the files that need it. Host path per step: one call per forward and one per backward, one
// float64 scratch allocation per call, pointers instead of ATen views, no allocation for unused
// gradients (benchmarks/host_overhead.py measures it without a GPU).
//
// c10/cuda/CUDAStream.h and CUDAGuard.h, not ATen/cuda/CUDAContext.h: the latter pulls in
// cuSPARSE/cuBLAS headers that the build machine's CUDA toolkit lacks.
#pragma once

#include <ATen/ATen.h>
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

// Errors of csrc/bindings/ (bad arguments, CUDA errors) are raised as a plain std::runtime_error
// (Python RuntimeError), not through TORCH_CHECK. A c10::Error calls glibc backtrace() when it is
// constructed (gdb here: torchCheckFail -> c10::Error::Error -> get_lazy_backtrace -> backtrace),
// which walks every frame of the process, the Python interpreter's included. On the H200 the first
// argument error of tests/test_cuda_gram.py::test_validation_in_bindings (z1 and z2 of different
// shapes, caught by the very first check, before any allocation or launch) killed the pytest
// worker with SIGSEGV where the simulator raised: the check ran first in both
// builds, so the crash was in raising, and that walk is the only part of raising that leaves our
// frames (libgcc's unwinder crashing in it is known: pytorch/pytorch#117645). Suspected, untested
// on GPU. A std::runtime_error unwinds only our frames, up to pybind11's handler.
#define DK_CHECK(cond, ...)                                                                  \
  do {                                                                                       \
    if (!(cond)) throw std::runtime_error(c10::str(__VA_ARGS__));                            \
  } while (false)


namespace duality_kernels::bind {

namespace dk = ::duality_kernels;

inline int dtype_code(at::ScalarType t) {
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
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_cuda(cudaError_t err, const char* fn) {
  DK_CHECK(err == cudaSuccess, "duality_kernels._C.", fn, ": CUDA error ", static_cast<int>(err),
           " (", cudaGetErrorName(err), "): ", cudaGetErrorString(err));
}

inline bool on_kernel_device(const at::Tensor& t) {
#ifdef DK_HOST_SIM
  return t.device().is_cpu();
#else
  return t.is_cuda();
#endif
}

inline cudaStream_t stream_of(const at::Tensor& t) {
#ifdef DK_HOST_SIM
  (void)t;
  return nullptr;
#else
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
}

// ---------------------------------------------------------------------------------------------
// Argument checks: every entry point below checks ALL of its arguments first, before any
// allocation, GEMM or launch (the kernels trust their inputs, docs/design.md convention 6). Each failure
// names the function, the argument and the offending value. The public functions validate
// earlier with ValueError/TypeError (docs/spec.md §6); these checks guard direct and custom-op calls.

constexpr int64_t kAny = -1;  // a size check_tensor leaves free
// N and D up to 2^31 - 1: the row kernels launch one block per row (gridDim.x), the column
// kernels ceil(D / 32) blocks, and cuBLAS takes int dimensions.
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

inline std::string shape_str(std::initializer_list<int64_t> shape) {
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
inline void check_tensor(const at::Tensor& t, const char* name, const char* fn,
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
inline void check_rows(const at::Tensor& z, const char* name, const char* fn, int64_t min_rows,
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
inline void check_pair(const at::Tensor& z1, const at::Tensor& z2, const char* fn, int64_t min_rows) {
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
inline void check_aux(std::initializer_list<Aux> args, const at::Tensor& z, const char* fn) {
  for (const Aux& a : args) check_tensor(a.t, a.name, fn, a.shape, a.dtype, &z);
}

// A scalar argument: finite, and >= lo (> lo when strict).
inline void check_number(double v, const char* name, const char* fn,
                  double lo = -std::numeric_limits<double>::infinity(), bool strict = false) {
  DK_CHECK(std::isfinite(v) && (strict ? v > lo : v >= lo), fn, ": ", name, " must be finite",
           std::isinf(lo) ? "" : (strict ? " and > " : " and >= "),
           std::isinf(lo) ? std::string() : c10::str(lo), ", got ", v);
}

// Reductions accumulate in acc (float32, float64 for float64 inputs): the dtype of the statistics
// and upstream gradients that go with z.
inline at::ScalarType acc_of(const at::Tensor& z) { return acc_dtype(z.scalar_type()); }

// An optional upstream gradient (None: that output was not used): when given, a 0-dim acc tensor
// on z's device.
inline void check_grads(std::initializer_list<std::pair<const std::optional<at::Tensor>*, const char*>> gs,
                 const at::Tensor& z, const char* fn) {
  for (const auto& g : gs)
    if (g.first->has_value()) check_tensor(**g.first, g.second, fn, {}, acc_of(z), &z);
}

// ---------------------------------------------------------------------------------------------
// Host helpers. Allocation: the outputs and the tensors the backward needs, plus ONE float64
// scratch tensor per call that the kernels' partial sums share (Layout/Scratch); views are not
// materialized as tensors where a pointer does (each ATen view costs about as much host time as a
// kernel launch at the small shapes, benchmarks/host_overhead.py).

inline void* ptr(const at::Tensor& t) { return t.data_ptr(); }

// The i-th (N, D) slice of a contiguous (V, N, D) tensor, as a pointer.
inline void* view_ptr(const at::Tensor& t, int64_t i) {
  return static_cast<char*>(t.data_ptr()) + i * t.stride(0) * static_cast<int64_t>(t.element_size());
}

inline const void* opt_ptr(const std::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }

inline at::Tensor acc_empty(at::IntArrayRef size, const at::Tensor& like) {
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
inline std::vector<at::Tensor> scalars(const at::Tensor& z, int count) {
  std::vector<at::Tensor> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) out.push_back(acc_empty({}, z));
  return out;
}

// a @ b (2-D or batched 3-D) with an acc-typed result; a and b share a dtype.
inline at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b) {
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
// ‖G‖² - Σ diag², docs/spec.md §2), which cancels most of it and amplifies the GEMM's rounding; with
// fp32 Grams the simulator measured up to 30x eager's error on single fp32 outputs.
// On Hopper a DGEMM runs on the FP64 tensor cores at about the FP32 (non-TF32) GEMM's rate.
inline bool wide_sums(at::ScalarType t) {
  return t == at::kFloat &&
         at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST;
}
inline at::Tensor mm_sum(const at::Tensor& a, const at::Tensor& b) {
  if (wide_sums(a.scalar_type())) {
    const at::Tensor a64 = a.to(at::kDouble), b64 = b.to(at::kDouble);
    return a.dim() == 3 ? at::bmm(a64, b64) : at::mm(a64, b64);
  }
  return mm_acc(a, b);
}

// The dtype in which a forward saves its Grams for the backward's product: bf16 inputs save the
// bf16 operand itself (gram_pass writes it while it reads the Gram, so the backward neither
// re-reads the float32 Gram nor converts it); fp16 saves acc, which operand() scales first (below);
// float32/float64 save acc.
inline at::ScalarType saved_gram_dtype(at::ScalarType t) { return t == at::kBFloat16 ? t : acc_dtype(t); }

// The backward's product of a Gram with rows on the side where it cancels against a dominating
// diagonal, for float32 inputs under "highest" (wide_sums): the Gram formed again from the rows in
// float64 (without its diagonal when zero_diag) and multiplied in float64: G y (gram_left) or y G,
// G = y yᵀ (gram_left) or yᵀ y, batched for 3-D rows. The saved float32 Gram keeps ~1e-7·‖G‖ of the
// dominating share, which the cancellation leaves in the gradient (docs/spec.md §8.2); a saved float64
// Gram would change the forward's outputs (their dtypes) with the precision setting.
inline at::Tensor wide_gram_product(const at::Tensor& rows, bool gram_left, bool zero_diag) {
  const at::Tensor y = rows.to(at::kDouble);
  const at::Tensor yt = y.transpose(-2, -1);
  at::Tensor g = gram_left ? at::matmul(y, yt) : at::matmul(yt, y);
  if (zero_diag) g.diagonal(0, -2, -1).zero_();
  return gram_left ? at::matmul(g, y) : at::matmul(y, g);
}

// An acc-typed matrix (a Gram, or an upstream gradient) as a GEMM operand next to T-typed rows:
// rounded to T for fp16/bf16, and for fp16 first scaled so that its largest magnitude is 2^14.
// fp16's largest finite value is 65504, and the Grams of fp16 inputs overflow it long before the
// losses or gradients do (the simulator: 8x4096 inputs within ±300 have N×N Gram
// entries up to 1.3e7, and VICReg's and the spectral loss's gradients came back inf/NaN where the
// float64 truth is below 5.3e4). Scaling keeps fp16's relative precision, and lifts small
// entries (upstream gradients of 1e-8) out of its subnormals; the product comes back in acc
// times `unscale` (mm_op). bf16 has float32's exponent range: rounding only. The scale is
// computed on the device (no host synchronization, docs/design.md convention 3). A matrix already in T
// (a bf16 forward's saved Gram) is used as it is.
struct Operand {
  at::Tensor m;        // the matrix in dtype T (scaled for fp16)
  at::Tensor unscale;  // 0-dim acc factor of the products (fp16), else undefined
};

constexpr double kOperandMax = 16384.0;  // 2^14: headroom below 65504 for the rounding

inline Operand operand(const at::Tensor& g, at::ScalarType t) {
  if (g.scalar_type() == t) return {g, at::Tensor()};
  if (t != at::kHalf) return {g.to(t), at::Tensor()};
  // amax = 0: any scale; a NaN or inf in g turns every product NaN, as the reference's would be.
  const at::Tensor amax = g.abs().amax().clamp_min_(std::numeric_limits<float>::min());
  return {g.mul(at::reciprocal(amax).mul_(kOperandMax)).to(t), amax.mul(1.0 / kOperandMax)};
}

// a @ b in acc (mm_acc) for an `o.m` among a and b: times o's unscale.
inline at::Tensor mm_op(const at::Tensor& a, const at::Tensor& b, const Operand& o) {
  at::Tensor p = mm_acc(a, b);
  if (o.unscale.defined()) p.mul_(o.unscale);
  return p;
}

// (g + gᵀ) * scale of a square acc matrix g as an operand next to T-typed rows: sym_scale writes
// it in T in one pass; fp16 goes through acc and operand()'s scaling.
inline Operand sym_operand(const at::Tensor& g, double scale, at::ScalarType t, const char* fn) {
  if (t == at::kHalf) return operand(at::add(g, g.t()).mul_(scale), t);
  const int64_t m = g.size(0);
  at::Tensor s = at::empty({m, m}, g.options().dtype(t));
  check_cuda(dk::sym_scale(ptr(g), m, scale, dtype_code(t), ptr(s), stream_of(g)), fn);
  return {s, at::Tensor()};
}
}  // namespace duality_kernels::bind
