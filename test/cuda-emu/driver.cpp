// A CPU stand-in for libcuda.so.1, the CUDA driver API as far as kiln calls it: one device, device memory
// in host memory, one in-order stream that runs work as it is issued, graphs as recorded work, and kernels
// from modules the emulator's NVRTC compiled as host code, each block run as fibers (emu.h).

#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <vector_functions.h>

#include "emu.h"

// ---------------------------------------------------------------------------------------------------------
// Fibers: a context switch saves the callee-saved registers on the old stack and pops them off the new one.

extern "C" void emu_switch(void** save_sp, void* next_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch, .-emu_switch
)");

namespace emu {

thread_local ThreadCtx* current = nullptr;
thread_local uint3 block_idx;
thread_local dim3 block_dim;
thread_local dim3 grid_dim;

namespace {

constexpr size_t STACK_BYTES = 256 << 10;
constexpr size_t PAGE = 4096;

enum class State { Ready, AtBlock, AtWarp, Done };

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // lowest address; the first page is a guard
  ThreadCtx ctx;
  State state = State::Ready;
};

struct Warp {
  uint64_t slots[2][32];
  int parity = 0;
  unsigned live = 0;
};

/** Runs the blocks one OS thread takes, one at a time, each as fibers. */
struct BlockRunner {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  void* scheduler_sp = nullptr;
  Fiber* running = nullptr;
  Invoker invoke = nullptr;
  void** params = nullptr;
  std::vector<unsigned char> shared;

  ~BlockRunner() {
    for (auto& f : fibers) munmap(f.stack, STACK_BYTES);
  }

  void ensure(size_t n) {
    while (fibers.size() < n) {
      Fiber f;
      void* m = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) {
        std::fprintf(stderr, "cuda-emu: cannot map a fiber stack\n");
        std::abort();
      }
      mprotect(m, PAGE, PROT_NONE);
      f.stack = static_cast<char*>(m);
      fibers.push_back(f);
    }
    warps.resize((n + 31) / 32);
  }

  void run(Invoker inv, void** p, uint3 block, dim3 bdim, dim3 gdim, size_t sharedBytes);
};

thread_local BlockRunner* runner = nullptr;
/** The kernel this OS thread runs, for the crash report. */
thread_local const char* running_kernel = nullptr;

// A kernel that touches memory it may not (or overflows its fiber's stack) gets one line naming the kernel,
// block and thread before the process dies, instead of a bare segmentation fault.
void on_fault(int sig) {
  char line[256];
  const int n = running_kernel && current
                    ? std::snprintf(line, sizeof line,
                                    "cuda-emu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n", running_kernel,
                                    block_idx.x, block_idx.y, block_idx.z, current->tid.x, current->tid.y,
                                    current->tid.z, sig == SIGSEGV ? "invalid memory access" : "fault")
                    : std::snprintf(line, sizeof line, "cuda-emu: fault outside a kernel\n");
  if (n > 0) (void)!write(2, line, (size_t)n);
  signal(sig, SIG_DFL);
  raise(sig);
}

BlockRunner& this_runner() {
  if (!runner) {
    runner = new BlockRunner();
    // The handler runs on a stack of its own: a fiber's may be the one that overflowed.
    stack_t alt{};
    alt.ss_size = 64 << 10;
    alt.ss_sp = std::malloc(alt.ss_size);
    sigaltstack(&alt, nullptr);
    struct sigaction sa {};
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
  }
  return *runner;
}

void fiber_entry() {
  BlockRunner* r = runner;
  Fiber* f = r->running;
  r->invoke(r->params);
  f->state = State::Done;
  r->warps[f->ctx.warp].live &= ~(1u << f->ctx.lane);
  emu_switch(&f->sp, r->scheduler_sp);
  __builtin_unreachable();
}

void yield_fiber(State s) {
  BlockRunner* r = runner;
  Fiber* f = r->running;
  f->state = s;
  emu_switch(&f->sp, r->scheduler_sp);
}

void BlockRunner::run(Invoker inv, void** p, uint3 block, dim3 bdim, dim3 gdim, size_t sharedBytes) {
  const size_t n = (size_t)bdim.x * bdim.y * bdim.z;
  ensure(n);
  shared.assign(sharedBytes, 0xff);
  invoke = inv;
  params = p;
  block_idx = block;
  block_dim = bdim;
  grid_dim = gdim;
  for (size_t i = 0; i < n; i++) {
    Fiber& f = fibers[i];
    f.ctx.tid = make_uint3(i % bdim.x, (i / bdim.x) % bdim.y, i / ((size_t)bdim.x * bdim.y));
    f.ctx.lane = (int)(i % 32);
    f.ctx.warp = (int)(i / 32);
    f.state = State::Ready;
    // A fresh frame: six registers to pop, then fiber_entry as the return address (16-byte aligned at entry).
    uintptr_t top = ((uintptr_t)(f.stack + STACK_BYTES)) & ~(uintptr_t)15;
    void** sp = reinterpret_cast<void**>(top) - 2;
    sp[0] = reinterpret_cast<void*>(&fiber_entry);
    sp[1] = nullptr;
    sp -= 6;
    for (int k = 0; k < 6; k++) sp[k] = nullptr;
    f.sp = sp;
  }
  for (size_t w = 0; w < warps.size(); w++) {
    const size_t lanes = std::min<size_t>(32, n - 32 * w);
    warps[w].live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    warps[w].parity = 0;
  }
  for (;;) {
    for (size_t i = 0; i < n; i++) {
      Fiber& f = fibers[i];
      if (f.state != State::Ready) continue;
      running = &f;
      current = &f.ctx;
      emu_switch(&scheduler_sp, f.sp);
    }
    size_t done = 0, atWarp = 0;
    for (size_t i = 0; i < n; i++) {
      done += fibers[i].state == State::Done;
      atWarp += fibers[i].state == State::AtWarp;
    }
    if (done == n) break;
    bool released = false;
    for (size_t w = 0; w < warps.size(); w++) {
      const size_t lo = 32 * w, hi = std::min(n, lo + 32);
      bool any = false, all = true;
      for (size_t i = lo; i < hi; i++) {
        if (fibers[i].state == State::Done) continue;
        any |= fibers[i].state == State::AtWarp;
        all &= fibers[i].state == State::AtWarp;
      }
      if (any && all) {
        for (size_t i = lo; i < hi; i++)
          if (fibers[i].state == State::AtWarp) fibers[i].state = State::Ready;
        warps[w].parity ^= 1;
        released = true;
      }
    }
    if (!released && atWarp == 0) {
      // Every live thread waits at __syncthreads (exited threads do not count, as on the GPU).
      for (size_t i = 0; i < n; i++)
        if (fibers[i].state == State::AtBlock) fibers[i].state = State::Ready;
      released = true;
    }
    if (!released) {
      std::fprintf(stderr,
                   "cuda-emu: deadlock in block (%u,%u,%u): threads wait at a warp operation that lanes of their "
                   "warp never reach\n",
                   block.x, block.y, block.z);
      std::abort();
    }
  }
  current = nullptr;
}

/** Spreads a launch's blocks over OS threads (this one included). */
class Pool {
 public:
  Pool() {
    const unsigned n = std::max(1u, std::min(std::thread::hardware_concurrency(), 16u));
    for (unsigned i = 1; i < n; i++) workers_.emplace_back([this] { work(); });
  }

  void run(size_t blocks, const std::function<void(size_t)>& body) {
    if (blocks <= 1 || workers_.empty()) {
      for (size_t b = 0; b < blocks; b++) body(b);
      return;
    }
    {
      std::lock_guard<std::mutex> g(m_);
      body_ = &body;
      next_ = 0;
      total_ = blocks;
      busy_ = workers_.size();
      generation_++;
    }
    cv_.notify_all();
    drain();
    std::unique_lock<std::mutex> g(m_);
    done_.wait(g, [this] { return busy_ == 0; });
    body_ = nullptr;
  }

 private:
  void drain() {
    for (;;) {
      const size_t b = next_.fetch_add(1);
      if (b >= total_) return;
      (*body_)(b);
    }
  }

  void work() {
    size_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return generation_ != seen; });
        seen = generation_;
      }
      drain();
      {
        std::lock_guard<std::mutex> g(m_);
        busy_--;
      }
      done_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_, done_;
  const std::function<void(size_t)>* body_ = nullptr;
  std::atomic<size_t> next_{0};
  size_t total_ = 0, busy_ = 0, generation_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: workers live as long as the process
  return *p;
}

struct Graph {
  std::vector<std::function<void()>> work;
};
Graph* capturing = nullptr;

}  // namespace

void sync_block() { yield_fiber(State::AtBlock); }
void sync_warp() { yield_fiber(State::AtWarp); }
uint64_t* exchange_slots() {
  Warp& w = runner->warps[current->warp];
  return w.slots[w.parity];
}
unsigned live_lanes() { return runner->warps[current->warp].live; }
unsigned char* dynamic_shared() { return runner->shared.data(); }

void enqueue(std::function<void()> fn) {
  if (capturing) capturing->work.push_back(std::move(fn));
  else fn();
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------------------
// The driver API.

namespace {

enum : int {
  OK = 0,
  INVALID_VALUE = 1,
  OUT_OF_MEMORY = 2,
  INVALID_IMAGE = 200,
  NOT_FOUND = 500,
  INVALID_HANDLE = 400,
  LAUNCH_OUT_OF_RESOURCES = 701,
};

struct Module {
  void* dl;
};
struct Function {
  emu::Invoker invoke;
  emu::Signature sig;
  std::string name;
};
struct Event {
  std::chrono::steady_clock::time_point at;
};

std::mutex memory_mutex;
std::unordered_map<uintptr_t, size_t> allocations;
size_t allocated = 0;

size_t total_memory() {
  const char* mb = std::getenv("KILN_CUDA_EMU_MEMORY_MB");
  return (size_t)(mb ? std::atol(mb) : 4096) << 20;
}

int context_token, stream_token;

}  // namespace

extern "C" {

int cuInit(unsigned) { return OK; }
int cuDriverGetVersion(int* v) {
  *v = 13000;
  return OK;
}

int cuGetErrorString(int error, const char** str) {
  switch (error) {
    case OK: *str = "no error"; break;
    case INVALID_VALUE: *str = "invalid argument"; break;
    case OUT_OF_MEMORY: *str = "out of memory"; break;
    case INVALID_IMAGE: *str = "device kernel image is invalid"; break;
    case NOT_FOUND: *str = "named symbol not found"; break;
    case INVALID_HANDLE: *str = "invalid resource handle"; break;
    case LAUNCH_OUT_OF_RESOURCES: *str = "too many resources requested for launch"; break;
    default: *str = "unknown error";
  }
  return OK;
}

// KILN_EMU_GPUS=n makes the driver report n GPUs (default 1), so that ranks that would each have a GPU of
// their own (and exchange through NCCL, test/cuda-emu/nccl.cpp) can be tested; every one is this process's.
int emu_gpus() {
  const char* v = std::getenv("KILN_EMU_GPUS");
  const int n = v ? std::atoi(v) : 1;
  return n >= 1 && n <= 8 ? n : 1;
}

int cuDeviceGetCount(int* count) {
  *count = emu_gpus();
  return OK;
}
int cuDeviceGet(int* device, int ordinal) {
  if (ordinal < 0 || ordinal >= emu_gpus()) return INVALID_VALUE;
  *device = ordinal;
  return OK;
}
int cuDeviceGetAttribute(int* value, int attrib, int) {
  switch (attrib) {
    case 16: *value = 132; break;  // multiprocessors, as an H100 SXM
    case 75: *value = 9; break;    // compute capability 9.0
    case 76: *value = 0; break;
    case 1: *value = 1024; break;  // max threads per block
    default: *value = 0;
  }
  return OK;
}
int cuDeviceGetName(char* name, int len, int) {
  std::snprintf(name, len, "kiln CUDA emulator (CPU)");
  return OK;
}
int cuDevicePrimaryCtxRetain(void** ctx, int) {
  *ctx = &context_token;
  return OK;
}
int cuCtxSetCurrent(void*) { return OK; }
int cuCtxSynchronize() { return OK; }

int cuMemGetInfo_v2(size_t* free, size_t* total) {
  std::lock_guard<std::mutex> g(memory_mutex);
  *total = total_memory();
  *free = *total > allocated ? *total - allocated : 0;
  return OK;
}

int cuMemAlloc_v2(uint64_t* dptr, size_t bytes) {
  const size_t size = (bytes + 255) / 256 * 256;
  {
    std::lock_guard<std::mutex> g(memory_mutex);
    if (allocated + size > total_memory()) return OUT_OF_MEMORY;
  }
  void* p = std::aligned_alloc(256, size);
  if (!p) return OUT_OF_MEMORY;
  // Fresh device memory is not zero on a GPU either: poison it so that a read before a write shows (NaN).
  std::memset(p, 0xff, size);
  std::lock_guard<std::mutex> g(memory_mutex);
  allocations[(uintptr_t)p] = size;
  allocated += size;
  *dptr = (uint64_t)(uintptr_t)p;
  return OK;
}

int cuMemFree_v2(uint64_t dptr) {
  std::lock_guard<std::mutex> g(memory_mutex);
  auto it = allocations.find((uintptr_t)dptr);
  if (it == allocations.end()) return INVALID_VALUE;
  allocated -= it->second;
  allocations.erase(it);
  std::free((void*)(uintptr_t)dptr);
  return OK;
}

int cuMemAllocHost_v2(void** pp, size_t bytes) {
  *pp = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  return *pp ? OK : OUT_OF_MEMORY;
}
int cuMemFreeHost(void* p) {
  std::free(p);
  return OK;
}

int cuMemcpyHtoD_v2(uint64_t dst, const void* src, size_t bytes) {
  std::memcpy((void*)(uintptr_t)dst, src, bytes);
  return OK;
}
int cuMemcpyDtoH_v2(void* dst, uint64_t src, size_t bytes) {
  std::memcpy(dst, (const void*)(uintptr_t)src, bytes);
  return OK;
}
// Asynchronous copies read their source when they run: a replayed graph copies what pinned memory holds then.
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t bytes, void*) {
  emu::enqueue([=] { std::memcpy((void*)(uintptr_t)dst, src, bytes); });
  return OK;
}
int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t bytes, void*) {
  emu::enqueue([=] { std::memcpy(dst, (const void*)(uintptr_t)src, bytes); });
  return OK;
}
int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void*) {
  emu::enqueue([=] { std::memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, bytes); });
  return OK;
}
// CUDA_MEMCPY2D as the driver lays it out; only device-to-device copies are emulated.
struct Memcpy2D {
  size_t srcXInBytes, srcY;
  int srcMemoryType;
  const void* srcHost;
  uint64_t srcDevice;
  void* srcArray;
  size_t srcPitch;
  size_t dstXInBytes, dstY;
  int dstMemoryType;
  void* dstHost;
  uint64_t dstDevice;
  void* dstArray;
  size_t dstPitch;
  size_t WidthInBytes, Height;
};
static_assert(sizeof(Memcpy2D) == 128, "CUDA_MEMCPY2D is 128 bytes");

int cuMemcpy2DAsync_v2(const Memcpy2D* c, void*) {
  constexpr int DEVICE = 2;
  if (!c || c->srcMemoryType != DEVICE || c->dstMemoryType != DEVICE) return INVALID_VALUE;
  if (c->WidthInBytes > c->srcPitch || c->WidthInBytes > c->dstPitch) return INVALID_VALUE;
  const Memcpy2D k = *c;
  emu::enqueue([k] {
    auto* src = (const char*)(uintptr_t)k.srcDevice + k.srcY * k.srcPitch + k.srcXInBytes;
    auto* dst = (char*)(uintptr_t)k.dstDevice + k.dstY * k.dstPitch + k.dstXInBytes;
    for (size_t r = 0; r < k.Height; r++) std::memmove(dst + r * k.dstPitch, src + r * k.srcPitch, k.WidthInBytes);
  });
  return OK;
}

int cuMemsetD8Async(uint64_t dst, unsigned char value, size_t n, void*) {
  emu::enqueue([=] { std::memset((void*)(uintptr_t)dst, value, n); });
  return OK;
}
int cuMemsetD32Async(uint64_t dst, unsigned value, size_t n, void*) {
  emu::enqueue([=] {
    auto* p = (unsigned*)(uintptr_t)dst;
    for (size_t i = 0; i < n; i++) p[i] = value;
  });
  return OK;
}

int cuStreamCreate(void** stream, unsigned) {
  *stream = &stream_token;
  return OK;
}
int cuStreamDestroy_v2(void*) { return OK; }
int cuStreamSynchronize(void*) { return OK; }

int cuEventCreate(void** event, unsigned) {
  *event = new Event();
  return OK;
}
int cuEventDestroy_v2(void* event) {
  delete static_cast<Event*>(event);
  return OK;
}
int cuEventRecord(void* event, void*) {
  auto* e = static_cast<Event*>(event);
  emu::enqueue([e] { e->at = std::chrono::steady_clock::now(); });
  return OK;
}
int cuEventSynchronize(void*) { return OK; }
int cuEventElapsedTime(float* ms, void* start, void* end) {
  *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(end)->at - static_cast<Event*>(start)->at)
            .count();
  return OK;
}

// An emulator image: "KILNEMU1", the shared object's byte count (u64), then the shared object.
int cuModuleLoadData(void** module, const void* image) {
  const auto* bytes = static_cast<const unsigned char*>(image);
  if (std::memcmp(bytes, "KILNEMU1", 8) != 0) return INVALID_IMAGE;
  uint64_t size;
  std::memcpy(&size, bytes + 8, 8);
  char path[] = "/tmp/kiln-cuda-emu-module-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return INVALID_IMAGE;
  const bool written = write(fd, bytes + 16, size) == (ssize_t)size;
  close(fd);
  void* dl = written ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : nullptr;
  if (!dl && written) std::fprintf(stderr, "cuda-emu: %s\n", dlerror());
  unlink(path);
  if (!dl) return INVALID_IMAGE;
  *module = new Module{dl};
  return OK;
}

int cuModuleUnload(void* module) {
  auto* m = static_cast<Module*>(module);
  dlclose(m->dl);
  delete m;
  return OK;
}

int cuModuleGetFunction(void** fn, void* module, const char* name) {
  auto* m = static_cast<Module*>(module);
  auto invoke = (emu::Invoker)dlsym(m->dl, (std::string("__emu_invoke_") + name).c_str());
  auto sig = (emu::Signature(*)())dlsym(m->dl, (std::string("__emu_signature_") + name).c_str());
  if (!invoke || !sig) return NOT_FOUND;
  *fn = new Function{invoke, sig(), name};
  return OK;
}

int cuFuncSetAttribute(void*, int, int) { return OK; }

int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned smem, void*, void** params, void** extra) {
  auto* fn = static_cast<Function*>(f);
  if (!fn || extra) return INVALID_VALUE;
  if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) return INVALID_VALUE;
  // Hopper's limits: 1,024 threads, 227 KiB of dynamic shared memory a block.
  if ((size_t)bx * by * bz > 1024 || smem > 227 * 1024) return LAUNCH_OUT_OF_RESOURCES;
  // Parameters are copied at launch, as the driver does: a graph keeps the values it was captured with.
  std::vector<std::vector<char>> values(fn->sig.count);
  for (int i = 0; i < fn->sig.count; i++) {
    values[i].assign(static_cast<char*>(params[i]), static_cast<char*>(params[i]) + fn->sig.sizes[i]);
  }
  const emu::Invoker invoke = fn->invoke;
  const char* name = fn->name.c_str();
  emu::enqueue([invoke, name, values = std::move(values), gx, gy, gz, bx, by, bz, smem]() mutable {
    std::vector<void*> p(values.size());
    for (size_t i = 0; i < values.size(); i++) p[i] = values[i].data();
    const dim3 grid(gx, gy, gz), block(bx, by, bz);
    emu::pool().run((size_t)gx * gy * gz, [&](size_t b) {
      const uint3 idx = make_uint3(b % gx, (b / gx) % gy, b / ((size_t)gx * gy));
      emu::BlockRunner& r = emu::this_runner();
      emu::running_kernel = name;
      r.run(invoke, p.data(), idx, block, grid, smem);
      emu::running_kernel = nullptr;
    });
  });
  return OK;
}

// cuLaunchKernelEx's CUlaunchConfig: grid, block, dynamic shared bytes, stream, attributes. The attributes
// kiln sets (programmatic dependent launch) only let kernels overlap on a GPU; launches here run in order.
struct LaunchConfig {
  unsigned gx, gy, gz, bx, by, bz, smem;
  void* stream;
  void* attrs;
  unsigned num_attrs;
};

int cuLaunchKernelEx(const LaunchConfig* c, void* f, void** params, void** extra) {
  if (!c) return INVALID_VALUE;
  return cuLaunchKernel(f, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->smem, c->stream, params, extra);
}

int cuStreamBeginCapture_v2(void*, int) {
  if (emu::capturing) return INVALID_VALUE;
  emu::capturing = new emu::Graph();
  return OK;
}
int cuStreamEndCapture(void*, void** graph) {
  if (!emu::capturing) return INVALID_VALUE;
  *graph = emu::capturing;
  emu::capturing = nullptr;
  return OK;
}
int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
  *exec = new emu::Graph(*static_cast<emu::Graph*>(graph));
  return OK;
}
int cuGraphLaunch(void* exec, void*) {
  for (auto& w : static_cast<emu::Graph*>(exec)->work) emu::enqueue(w);
  return OK;
}
int cuGraphDestroy(void* graph) {
  delete static_cast<emu::Graph*>(graph);
  return OK;
}
int cuGraphExecDestroy(void* exec) {
  delete static_cast<emu::Graph*>(exec);
  return OK;
}

}  // extern "C"
