// The CPU simulator's scheduler (see cuda_sim.h) and the kernel sources it runs, compiled as one
// C++ translation unit with -DDK_HOST_SIM (tests/csim.py). The .cu files are included unchanged.
#include "cuda_sim.h"

#include <ucontext.h>

#include <memory>
#include <vector>

namespace dk_sim {

dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  dim3 idx;
  bool waiting = false;
  bool done = false;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
};

Block* g_block = nullptr;
cudaError_t g_error = cudaSuccess;

void record(cudaError_t e) {
  if (g_error == cudaSuccess) g_error = e;
}

void fiber_entry() {
  Fiber* f = g_block->current;
  (*g_block->body)();
  f->done = true;
  // Returning from the entry function resumes uc_link (the scheduler).
}

}  // namespace

void syncthreads() {
  Fiber* f = g_block->current;
  f->waiting = true;
  swapcontext(&f->ctx, &g_block->scheduler);
}

cudaError_t take_error() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}

cudaError_t launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  // CUDA's limits (compute capability 9.0).
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    record(cudaErrorInvalidConfiguration);
    return cudaErrorInvalidConfiguration;
  }
  Block b;
  b.body = &body;
  b.fibers.resize(threads);
  for (auto& f : b.fibers) f.stack.reset(new char[kStackBytes]);
  Block* saved = g_block;
  g_block = &b;
  grid_dim = grid;
  block_dim = block;
  cudaError_t result = cudaSuccess;
  for (unsigned bz = 0; bz < grid.z && result == cudaSuccess; ++bz)
    for (unsigned by = 0; by < grid.y && result == cudaSuccess; ++by)
      for (unsigned bx = 0; bx < grid.x && result == cudaSuccess; ++bx) {
        block_idx = dim3(bx, by, bz);
        size_t t = 0;
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx, ++t) {
              Fiber& f = b.fibers[t];
              f.idx = dim3(tx, ty, tz);
              f.waiting = false;
              f.done = false;
              getcontext(&f.ctx);
              f.ctx.uc_stack.ss_sp = f.stack.get();
              f.ctx.uc_stack.ss_size = kStackBytes;
              f.ctx.uc_link = &b.scheduler;
              makecontext(&f.ctx, fiber_entry, 0);
            }
        // Barrier phases: run every live fiber until it waits or ends; then either all wait
        // (release them), all ended (next block), or some of each (a divergent __syncthreads,
        // which hangs or corrupts a real GPU: report it).
        for (;;) {
          size_t waiting = 0, done = 0;
          for (auto& f : b.fibers) {
            if (f.done) {
              ++done;
              continue;
            }
            f.waiting = false;
            b.current = &f;
            thread_idx = f.idx;
            swapcontext(&b.scheduler, &f.ctx);
            if (f.done) ++done; else ++waiting;
          }
          if (waiting == 0) break;
          if (done != 0) {
            std::fprintf(stderr,
                         "dk_sim: __syncthreads() reached by %zu of %zu threads of block "
                         "(%u, %u, %u)\n",
                         waiting, waiting + done, block_idx.x, block_idx.y, block_idx.z);
            result = cudaErrorLaunchFailure;
            break;
          }
        }
      }
  g_block = saved;
  if (result != cudaSuccess) record(result);
  return result;
}

}  // namespace dk_sim

#include "../kernels/gram_ops.cu"
