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

enum Wait { kRunning = 0, kBlockBarrier = 1, kWarpBarrier = 2 };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  dim3 idx;
  unsigned linear = 0;
  Wait wait = kRunning;
  bool done = false;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> slots;  // warp-exchange buffer, one slot per thread
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
  f->wait = kBlockBarrier;
  swapcontext(&f->ctx, &g_block->scheduler);
}

void syncwarp() {
  Fiber* f = g_block->current;
  f->wait = kWarpBarrier;
  swapcontext(&f->ctx, &g_block->scheduler);
}

uint64_t& exchange_slot(unsigned thread) { return g_block->slots[thread]; }

unsigned linear_thread() { return g_block->current->linear; }

cudaError_t take_error() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}

long long launches = 0;  // every launch, counted for the tests (dk_sim_launches below)

cudaError_t launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  ++launches;
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
  b.slots.assign(threads, 0);
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
              f.linear = static_cast<unsigned>(t);
              f.wait = kRunning;
              f.done = false;
              getcontext(&f.ctx);
              f.ctx.uc_stack.ss_sp = f.stack.get();
              f.ctx.uc_stack.ss_size = kStackBytes;
              f.ctx.uc_link = &b.scheduler;
              makecontext(&f.ctx, fiber_entry, 0);
            }
        // Barrier phases: run every runnable fiber until it waits or ends. Then release the
        // warps whose 32 threads all wait at a warp barrier (a shuffle); when none is, either
        // every live thread waits at __syncthreads() (release them all), all ended (next
        // block), or the barriers diverge (a __syncthreads() or a shuffle that not every
        // thread reaches, which hangs or corrupts a real GPU): report it.
        for (;;) {
          for (auto& f : b.fibers) {
            if (f.done || f.wait != kRunning) continue;
            b.current = &f;
            thread_idx = f.idx;
            swapcontext(&b.scheduler, &f.ctx);
          }
          bool released = false;
          if (threads % 32 == 0) {
            for (size_t w = 0; w < threads; w += 32) {
              bool all = true;
              for (size_t l = w; l < w + 32 && all; ++l) all = b.fibers[l].wait == kWarpBarrier;
              if (!all) continue;
              for (size_t l = w; l < w + 32; ++l) b.fibers[l].wait = kRunning;
              released = true;
            }
          }
          if (released) continue;
          size_t at_block = 0, at_warp = 0, done = 0;
          for (auto& f : b.fibers) {
            if (f.done) ++done;
            else if (f.wait == kBlockBarrier) ++at_block;
            else ++at_warp;
          }
          if (done == threads) break;
          if (at_warp == 0 && done == 0) {
            for (auto& f : b.fibers) f.wait = kRunning;
            continue;
          }
          std::fprintf(stderr,
                       "dk_sim: divergent barrier in block (%u, %u, %u): %zu threads at "
                       "__syncthreads(), %zu at a warp shuffle, %zu ended (of %zu)\n",
                       block_idx.x, block_idx.y, block_idx.z, at_block, at_warp, done,
                       static_cast<size_t>(threads));
          result = cudaErrorLaunchFailure;
          break;
        }
      }
  g_block = saved;
  if (result != cudaSuccess) record(result);
  return result;
}

}  // namespace dk_sim

// Kernel launches so far, read through ctypes by the tests (tests/csim.py launches()).
extern "C" __attribute__((visibility("default"))) long long dk_sim_launches() {
  return dk_sim::launches;
}

// Every kernel file, in one translation unit here (in the extension each is its own): the names in
// their anonymous namespaces must differ from file to file.
#include "../kernels/col_bwd.cu"
#include "../kernels/col_stats.cu"
#include "../kernels/gram_ops.cu"
#include "../kernels/row_ops.cu"
