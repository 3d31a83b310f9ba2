// The kernel steps that several entry points of csrc/bindings/ share: the column moments, the
// centered and standardized views, the merges of column partial sums, the pass over a Gram, the
// finalize kernel, the BatchNorm backward and the row-scaled views. Each launches torch-free
// kernels of csrc/kernels/ on the input's stream and checks their cudaError_t.
#pragma once

#include "bindings/common.h"

namespace duality_kernels::bind {

// Stage 1 of the column moments of z1 [, z2] into `part` (col_plan's chunks; with sqdiff also
// Σ(z1 - z2)²), then their merge (gram_ops.h col_merge kMergeMoments).
struct Moments {
  double *mean = nullptr, *m2 = nullptr, *zero = nullptr, *fin = nullptr;
  bool hinge = false;
  double gamma = 0, eps = 0;
};

void column_moments(const at::Tensor& z1, const at::Tensor* z2, bool sqdiff, double* part,
                    const Moments& out, const char* fn);

// The float64 elements column_moments needs in `part`.
int64_t moments_part_elems(int64_t n, int64_t d, at::ScalarType t, int views, bool sqdiff);

// Centered (bn: standardized) views of z1 [, z2] into x (views, n, d), from the float64 moments,
// with the column partial sums of `sum_mode` into part.
void center_views(const at::Tensor& z1, const at::Tensor* z2, const at::Tensor& x,
                  const double* mean, const double* m2, bool bn, double eps, int sum_mode,
                  double* part, const char* fn);

// col_merge kMergeSum / kMergeBarlowDiag of `groups` chunked column partials of an (n, d) input.
void merge_sums(const at::Tensor& like, int64_t n, int64_t d, int mode, int groups,
                const double* part, double* out, void* cdiag, double* fin, const char* fn);

// gram_pass over the GEMM result g ((mats, m, m), acc or float64) of inputs of dtype t: the
// partial sums into fin (4 x gram_blocks slots); returns the Grams to save: a copy in
// saved_gram_dtype(t) when that or g's dtype asks for one (bf16 inputs; float64 Grams of float32
// inputs) or when swap does, else g itself (its diagonals zeroed in place with zero_diag).
// swap (pair): the copy holds [g[1], g[0]], so that the backward's two products P_0 = G_1-side
// and P_1 = G_0-side run as ONE batched GEMM. On the H200 one bmm of two 2048² x 2048 x 8192
// products took 193 µs where a single such mm took 197 µs (torch.profiler): the
// batch fills the GPU, so the copy (32 MB at Barlow 2048 x 8192 fp32, less for bf16, where it is
// written anyway) buys about one GEMM.
struct GramPass {
  bool pair = false, zero_diag = false, save = true, swap = false;
  void* cdiag = nullptr;
  double cdiv = 1;
};

at::Tensor gram_pass(const at::Tensor& g, at::ScalarType t, const GramPass& o, double* fin,
                     const char* fn);

// One input of the finalize kernel: `count` float64 partial sums at `part`.
struct Part {
  const double* part;
  int64_t count;
};

// The finalize kernel's arguments: mode, side, sizes and its partial sums (slot by slot).
dk::FinalizeArgs finalize_args(int mode, bool sample, int64_t n, int64_t d,
                               std::initializer_list<Part> parts);

// The finalize kernel into `count` new scalars.
std::vector<at::Tensor> run_finalize(dk::FinalizeArgs& f, const at::Tensor& z, int count,
                                     const char* fn);

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
                                                      const char* fn);

// ---- BatchNorm backward shared by cross_correlation and Barlow Twins

std::vector<at::Tensor> bn_backward(const at::Tensor& x, const void* p0, const void* p1,
                                    const at::Tensor& m2, const at::Tensor* cdiag,
                                    const std::optional<at::Tensor>* g, double eps, double lambda,
                                    const char* fn);

// ---- the row-scaled views of normalized_gram and the spectral loss

// row_scale of z1 [, z2] into x (views, n, d) and q ((1 or 3), n): one launch (with p: the row
// dots p_i = a_i·b_i of two views into it).
std::tuple<at::Tensor, at::Tensor> row_scaled_views(const at::Tensor& z1, const at::Tensor* z2,
                                                    int row_mode, double radius, int fin_mode,
                                                    double* fin, const char* fn,
                                                    void* p = nullptr);

// The upstream gradients row_bwd takes besides the products: spectral's g_loss, g_pos, g_neg, or
// kRowClampVec's per-row beta (null: 0).
struct RowGrads {
  const void* g[3] = {nullptr, nullptr, nullptr};
  const void* beta = nullptr;
};

// row_bwd of two views over their clamped rows x (2, n, d) and q (spectral's clamp, docs/spec.md §4), with
// the products p0, p1 (acc (n, d) each): [dz1, dz2].
std::vector<at::Tensor> clamped_rows_bwd(const at::Tensor& z1, const at::Tensor& z2, const at::Tensor& x,
                                         const at::Tensor& q, const void* p0, const void* p1, const RowGrads& g,
                                         int row_mode, double mu, const char* fn);

}  // namespace duality_kernels::bind
