// The covariance family's fused kernels around the GEMMs (see gram_ops.h for the contract of
// each entry point and the math it implements). This file: the overview of all of them below,
// and the kernels on the Gram side (gram_pass, finalize, sym_scale). The others: col_stats.cu
// (column statistics, the GEMM operand), row_ops.cu (row passes), col_bwd.cu (backward
// epilogues); shared helpers in gram_device.cuh (device) and gram_launch.cuh (host).
//
// Bytes per forward + backward step at the headline shapes: these kernels only (the GEMMs' own
// traffic is in cuBLAS's time); MiB = 2^20 bytes; µs = bytes / 4.25 TB/s, the H200's measured
// device-copy rate; cuBLAS = the products' time measured there with torch.profiler (2026-11-30).
// Expected, not measured: untested on GPU as of 2026-12-01.
//
//   shape (Gram side)               our bytes  µs at 4.25 TB/s  + cuBLAS     = floor     bar
//   VICReg 2048x8192 bf16 (N×N)        574 MiB      142           363          505 µs    550 µs
//   VICReg 16384x2048 bf16 (D×D)      1082 MiB      267           696          963 µs    950 µs
//   VICReg 2048x256 bf16 (D×D)          17 MiB        4            10           14 µs    150 µs wall
//   Barlow 2048x8192 bf16 (N×N)        706 MiB      174          ~367 (a)     ~541 µs    650 µs
//   Spectral 16384x256 bf16 (D×D)      113 MiB       28           ~43 (a)      ~71 µs    120 µs
//   VICReg 2048x8192 fp32 "high" (N×N) 936 MiB      231          ~770 (b)    ~1001 µs   1000 µs
//
// (a) measured 564 µs (Barlow) and 61 µs (spectral: 26 forward + 2 x 17.5 backward) with the
//     backward's two products as two GEMMs; they are one bmm now, and a bmm of two such products
//     took the time of one mm (VICReg's: 193 µs for two 2048² x 2048 x 8192 products, Barlow's
//     single mm: 197 µs). (b) not profiled: 274 GFLOP at the 356 TFLOP/s TF32 rate measured at
//     8192³.
// Where the budget goes. VICReg 2048x8192 bf16: 550 - 363 = 187 µs for our kernels and the
// launch gaps (~7 launches), so ≥ 76% of the roofline: col_stats 69 MiB, center 130 (+2 partials),
// gram_pass 48, vicreg_bwd 320 MiB (56% of the bytes: cuBLAS writes P in float32 and the epilogue
// reads it back, 128 MiB each way). Barlow: bn_bwd partial 195 + apply 256 MiB of 706. Spectral:
// row_bwd 80 of 113 MiB, and 7 launches: the gaps matter at 28 µs of bytes. VICReg 2048x256: host-
// bound (csrc/bindings/: one C++ call and one C++ autograd node per step). VICReg 16384x2048
// and fp32: the floor meets the bar only at 100%; the largest item left is the float32 P round
// trip (2 x 256 MiB at 16384x2048 bf16): an epilogue fused into the backward GEMM (cuBLAS's β·C
// with the Gram pre-scaled, or a CUTLASS epilogue) would save about 224 MiB = 53 µs there.
//
// Per kernel, bytes and grid at VICReg 2048x8192 / 16384x2048 / 2048x256 bf16 / 2048x8192 fp32
// (Barlow and spectral at their kernels, in the files named above):
//   col_stats     69 / 133 / 2.3 / 131 MiB   32x16 / 8x64 / 1x32 / 64x9 blocks (col tiles x chunks)
//   col_merge    5.2 / 5.1 / 0.3 / 3.1 MiB   ceil(D / 256) blocks (plus 2.1 / - / - / 1.2 MiB for
//                                            the sample side's Σ x² merge)
//   center       130 / 256 / 4.0 / 257 MiB   as col_stats
//   gram_pass     48 /  48 / 0.8 /  32 MiB   512 / 512 / 64 / 512 blocks, one warp per Gram row
//   finalize     < 40 KiB                    1 block
//   vicreg_bwd   320 / 640 /  10 / 512 MiB   as col_stats
//
// Layouts (all blocks 256 threads = 8 warps, 1-D grids):
// - column kernels (col_stats, center, vicreg_bwd, bn_bwd, duality_bwd): a
//   block owns a tile of 32 lanes x V columns (V = 16 bytes of T: 8 for bf16/fp16, 4 fp32,
//   2 fp64) and a chunk of rows (col_plan); warp w takes rows w, w + 8, ... of the chunk, so a
//   warp reads 512 contiguous bytes of a row per access. Rows whose start is 16-byte aligned (D a
//   multiple of V, aligned base pointers) give each lane one 16-byte vector per array and row
//   (template flag A); otherwise each lane takes columns lane + 32 j with scalar accesses, which
//   keeps every warp access contiguous: the same DRAM sectors as the vector path, with more
//   instructions (unaligned sizes fell 3-5x behind in the Triton Gram tiles, docs/measurements.md,
//   2026-11-29; here only the access width changes). Both views of a two-view op are
//   handled by the same thread, so arrays that both views need (z1 - z2, the other view's
//   standardized rows) are read once.
// - column reductions are two-stage (docs/design.md convention 7): per (chunk, column) float64 partials summed over
//   the block's warps in warp order through shared memory, then col_merge adds the chunks in
//   chunk order and also produces the finalize's partials, so that finalize never reads per-row or
//   per-column data on its single block.
// - row kernels (row_scale, row_bwd, gram_pass): one warp per row, 16-byte vectors along the row,
//   warp-shuffle (butterfly) sums, grid-stride over rows with a grid fixed by the shape.
// - finalize: one block that adds at most a few thousand float64 partials.
// All tuning constants are unmeasured starting points (untested on GPU as of 2026-12-01).

#include "gram_launch.cuh"

namespace duality_kernels {
namespace {

// gram_pass: at most this many blocks, striding over the rows beyond (the finalize adds one
// partial per block).
constexpr int64_t kMaxGramBlocks = 1024;

// ---------------------------------------------------------------------------------------------
// gram_pass: the sums of squares of a GEMM result, and the copy the backward multiplies
//
// VICReg 2048x8192 and 16384x2048 bf16 (2 x 2048² float32 Grams): reads 32 MiB, writes the bf16
// operand, 16 MiB (its diagonals zeroed on the D×D side); 2048x8192 fp32 "high": reads 32 MiB, no
// copy (the N×N side keeps its diagonals); 2048x256 bf16: 0.5 + 0.25 MiB. Barlow 2048x8192 bf16
// (pair, swapped copy): 32 + 16 MiB. Spectral 16384x256 bf16 (pair, swapped copy): 0.5 + 0.25 MiB.
// Grid min(ceil(rows / 8), 1024) blocks, one warp per Gram row: 512 / 512 / 64 / 512, Barlow 256,
// spectral 32.

template <typename G, typename O, bool A>
__global__ void __launch_bounds__(kThreads) gram_pass_kernel(GramPassArgs a) {
  constexpr int V = kVec<G>;
  const int lane = lane_id(), warp = warp_id();
  const int64_t m = a.m, mm = m * m;
  const int64_t rows = a.pair ? m : a.mats * m;
  const G* g = static_cast<const G*>(a.g);
  O* out = static_cast<O*>(a.out);
  const bool in_place = a.out == a.g;
  double full = 0, off = 0, on = 0, csq = 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t dg = r % m;
    const G* gr = g + r * m;
    const G* br = a.pair ? gr + mm : nullptr;
    double diag = 0;  // g[r][r], in the thread that reads it
    bool has_diag = false;
#pragma unroll 1
    for (int64_t c0 = 0; c0 < m; c0 += 32 * V) {
      has_diag = has_diag || (dg >= c0 && dg < c0 + 32 * V &&
                              (A ? (dg - c0) / V == lane : (dg - c0) % 32 == lane));
      G u[V], w[V];
#pragma unroll
      for (int j = 0; j < V; ++j) u[j] = w[j] = G(0);
      load_raw<V, A>(gr, c0, lane, m, u);
      if (br != nullptr) load_raw<V, A>(br, c0, lane, m, w);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int64_t c = tcol<V, A>(c0, lane, j);
        const double x = static_cast<double>(u[j]);
        const double v = br != nullptr ? x * static_cast<double>(w[j]) : x * x;
        full += v;  // 0 past m
        if (c != dg) off += v;
        else diag = x;
      }
      if (out == nullptr) continue;
      if (in_place) {
        // Only the diagonal, by the thread that read it (program order keeps the read first).
        if (a.zero_diag) {
#pragma unroll
          for (int j = 0; j < V; ++j)
            if (tcol<V, A>(c0, lane, j) == dg) out[r * m + dg] = cvt_out<O>(0.0f);
        }
        continue;
      }
      // pair with swap: the copy holds the two matrices in the other order
      O* o0 = out + (a.swap ? mm : 0) + r * m;
      O o[V];
#pragma unroll
      for (int j = 0; j < V; ++j)
        o[j] = a.zero_diag && tcol<V, A>(c0, lane, j) == dg ? cvt_out<O>(0.0f) : cvt_out<O>(u[j]);
      store_raw<V, A, O>(o0, c0, lane, m, o);
      if (br != nullptr) {
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = a.zero_diag && tcol<V, A>(c0, lane, j) == dg ? cvt_out<O>(0.0f) : cvt_out<O>(w[j]);
        store_raw<V, A, O>(out + (a.swap ? 0 : mm) + r * m, c0, lane, m, o);
      }
    }
    if (has_diag && a.cdiag != nullptr && r < m) {  // Barlow's C_kk, k = r
      const double cv = diag / a.cdiv;
      if (a.cdtype == kFloat64) static_cast<double*>(a.cdiag)[r] = cv;
      else static_cast<float*>(a.cdiag)[r] = static_cast<float>(cv);
      on += (1 - cv) * (1 - cv);
      csq += cv * cv;
    }
  }
  full = block_sum(full);
  off = block_sum(off);
  on = block_sum(on);
  csq = block_sum(csq);
  if (threadIdx.x == 0) {
    const int64_t b = blockIdx.x, nb = gridDim.x;
    a.fin[b] = full;
    a.fin[nb + b] = off;
    a.fin[2 * nb + b] = on;
    a.fin[3 * nb + b] = csq;
  }
}

// ---------------------------------------------------------------------------------------------
// finalize: the scalar outputs, on one block, from at most a few thousand float64 partials

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finalize_kernel(FinalizeArgs a) {
  double s[kFinSlots];
#pragma unroll
  for (int j = 0; j < kFinSlots; ++j) {
    double t = 0;
    for (int i = static_cast<int>(threadIdx.x); i < a.nparts[j]; i += kThreads) t += a.part[j][i];
    s[j] = block_sum(t);
  }
  if (threadIdx.x != 0) return;
  const double n = static_cast<double>(a.n);
  const double d = static_cast<double>(a.d);
  acc_t* o0 = static_cast<acc_t*>(a.out[0]);
  acc_t* o1 = static_cast<acc_t*>(a.out[1]);
  acc_t* o2 = static_cast<acc_t*>(a.out[2]);
  acc_t* o3 = static_cast<acc_t*>(a.out[3]);
  if (a.mode == kFinVICReg) {
    const double inv = s[2] / (n * d);
    const double var = s[3] / d / 2;
    // offsq(xᵀx) of both views: the D×D Grams without their diagonals, or ‖x xᵀ‖² - Σ_k (Σ_i x²)²
    const double offsq = a.sample ? s[0] - s[4] : s[1];
    const double cov = offsq / ((n - 1) * (n - 1) * d);
    *o0 = static_cast<acc_t>(a.w[0] * inv + a.w[1] * var + a.w[2] * cov);
    *o1 = static_cast<acc_t>(inv);
    *o2 = static_cast<acc_t>(var);
    *o3 = static_cast<acc_t>(cov);
  } else if (a.mode == kFinBarlow) {
    const double on = s[2];
    const double offsq = a.sample ? s[0] / (n * n) - s[3] : s[1] / (n * n);
    *o0 = static_cast<acc_t>(on + a.w[0] * offsq);
    *o1 = static_cast<acc_t>(on);
    *o2 = static_cast<acc_t>(offsq);
  } else if (a.mode == kFinSpectral) {
    const double mu = a.w[0];
    // offsq(a bᵀ): the N×N product without its diagonal, or ⟨aᵀa, bᵀb⟩ - Σ_i p_i²
    const double offsq = a.sample ? s[1] : s[0] - s[3];
    const double pos = -2.0 * s[2] / n / mu;
    const double neg = offsq / (n * (n - 1)) / mu;
    *o0 = static_cast<acc_t>(pos + neg);
    *o1 = static_cast<acc_t>(pos);
    *o2 = static_cast<acc_t>(neg);
  } else {  // kFinDuality: the side's own criterion is the off-diagonal sum, the other one the
            // identity of paper Thm 3.3 (full sum minus the other side's diagonal)
    *o0 = static_cast<acc_t>(a.sample ? s[1] : s[0] - s[2]);
    *o1 = static_cast<acc_t>(a.sample ? s[0] - s[3] : s[1]);
    *o2 = static_cast<acc_t>(s[2]);
    *o3 = static_cast<acc_t>(s[3]);
  }
}

// (g + gᵀ) * scale through a 32 x 33 shared tile: the transposed read is coalesced too.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sym_scale_kernel(const typename AccType<T>::type* __restrict__ g, int64_t m, double scale,
                     T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t tile[32][33];
  const int lane = lane_id(), warp = warp_id();
  const int64_t rb = static_cast<int64_t>(blockIdx.y) * 32, cb = static_cast<int64_t>(blockIdx.x) * 32;
  // tile[j][l] = g[cb + j][rb + l] (the block of gᵀ)
  for (int j = warp; j < 32; j += kWarps) {
    const int64_t r = cb + j, c = rb + lane;
    tile[j][lane] = r < m && c < m ? g[r * m + c] : acc_t(0);
  }
  __syncthreads();
  const acc_t sc = static_cast<acc_t>(scale);
  for (int j = warp; j < 32; j += kWarps) {
    const int64_t r = rb + j, c = cb + lane;
    if (r < m && c < m) out[r * m + c] = from_acc<T>((g[r * m + c] + tile[lane][j]) * sc);
  }
}

// ---------------------------------------------------------------------------------------------
// launchers

template <typename G, typename O>
cudaError_t launch_gram_pass(const GramPassArgs& a, cudaStream_t stream) {
  const int64_t rows = a.pair ? a.m : a.mats * a.m;
  // Vector accesses need every row aligned for G (4 floats or 2 doubles) and for O.
  const bool vec = a.m % 8 == 0 && aligned_ptr(a.g) && (a.out == nullptr || aligned_ptr(a.out));
  const dim3 grid(static_cast<unsigned>(gram_blocks(rows)));
  if (vec) DK_LAUNCH((gram_pass_kernel<G, O, true>), grid, dim3(kThreads), stream, a);
  else DK_LAUNCH((gram_pass_kernel<G, O, false>), grid, dim3(kThreads), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_finalize(const FinalizeArgs& a, cudaStream_t stream) {
  DK_LAUNCH(finalize_kernel<typename AccType<T>::type>, dim3(1), dim3(kThreads), stream, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sym_scale(const void* g, int64_t m, double scale, void* out,
                             cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const int64_t tiles = ceil_div(m, 32);
  if (tiles > 65535) return cudaErrorInvalidConfiguration;
  DK_LAUNCH(sym_scale_kernel<T>, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles)),
            dim3(kThreads), stream, static_cast<const acc_t*>(g), m, scale, static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

int gram_blocks(int64_t rows) { return warp_row_blocks(rows, kMaxGramBlocks); }

cudaError_t gram_pass(const GramPassArgs& a, cudaStream_t stream) {
  if (a.m <= 0 || a.fin == nullptr) return cudaErrorInvalidValue;
  if (a.out == a.g && (a.odtype != a.gdtype || a.swap)) return cudaErrorInvalidValue;
  if (a.swap && !a.pair) return cudaErrorInvalidValue;
  if (a.gdtype == kFloat32) {
    if (a.odtype == kFloat32) return launch_gram_pass<float, float>(a, stream);
    if (a.odtype == kBFloat16) return launch_gram_pass<float, __nv_bfloat16>(a, stream);
  } else if (a.gdtype == kFloat64) {
    if (a.odtype == kFloat32) return launch_gram_pass<double, float>(a, stream);
    if (a.odtype == kFloat64) return launch_gram_pass<double, double>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t finalize(const FinalizeArgs& a, int dtype, cudaStream_t stream) {
  DK_DISPATCH(dtype, launch_finalize, a, stream)
}

cudaError_t sym_scale(const void* g, int64_t m, double scale, int dtype, void* out,
                      cudaStream_t stream) {
  DK_DISPATCH_UNLESS(m <= 0, dtype, launch_sym_scale, g, m, scale, out, stream)
}

}  // namespace duality_kernels
