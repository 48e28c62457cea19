// The CUDA emulator's core, shared by its fake driver, cuBLAS and the kernels it compiles: a CUDA block runs
// on one OS thread as cooperative fibers, one a CUDA thread, switching at __syncthreads and at warp
// operations; the blocks of a launch spread over a pool of OS threads. Test tooling only: never shipped.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector_types.h>

namespace emu {

/** What a kernel module exports per kernel: its invoker and the byte size of each parameter. */
using Invoker = void (*)(void** params);
struct Signature {
  int count;
  const size_t* sizes;
};

/** The CUDA thread the calling fiber runs. */
struct ThreadCtx {
  uint3 tid;
  int lane, warp;
};

extern thread_local ThreadCtx* current;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;

/** __syncthreads: waits for every thread of the block that has not exited. */
void sync_block();
/** Waits until every live lane of the caller's warp arrives. */
void sync_warp();
/** The caller's warp's exchange buffer for this round (32 slots; the next round uses the other one). */
uint64_t* exchange_slots();
/** Lanes of the caller's warp that have not exited (a bit per lane). */
unsigned live_lanes();
/** The block's dynamic shared memory (the launch's sharedMemBytes, poisoned with 0xff at block start). */
unsigned char* dynamic_shared();

/** Runs `fn` in stream order: now, or at each replay while a graph is being captured. */
void enqueue(std::function<void()> fn);

}  // namespace emu
