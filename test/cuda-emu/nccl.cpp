// A CPU stand-in for libnccl.so.2, as far as kiln calls it, for ranks that are processes of one host: a
// communicator is a shared-memory segment (named by its unique id) holding a slot per rank for collectives,
// a mailbox per ordered pair of ranks for send/recv, and a barrier. Every call runs in stream order through
// the emulated driver (emu::enqueue), so a captured graph replays its collectives. Sums are taken in rank
// order in float32, so every rank gets the same bits.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "emu.h"

namespace {

enum : int { SUCCESS = 0, SYSTEM_ERROR = 2, INTERNAL_ERROR = 3, INVALID_ARGUMENT = 4, INVALID_USAGE = 5 };
enum : int { F16 = 6, F32 = 7, BF16 = 9 };
constexpr size_t ID_BYTES = 128;
/** The most bytes one rank moves in one call (emulated GPUs hold test fixtures, not models). */
constexpr size_t SLOT_BYTES = 64u << 20;
constexpr int MAX_RANKS = 8;
/** How long a rank waits for its peers before the call fails (a peer that died). */
constexpr auto PEER_TIMEOUT = std::chrono::seconds(120);

struct ncclUniqueId {
  char internal[ID_BYTES];
};

struct Mailbox {
  std::atomic<uint32_t> full;
  uint64_t bytes;
};

struct Shared {
  std::atomic<uint32_t> joined;
  std::atomic<uint32_t> arrived;
  std::atomic<uint32_t> generation;
  Mailbox mail[MAX_RANKS][MAX_RANKS];
};

size_t segment_bytes(int nranks) {
  return 4096 + (size_t)nranks * SLOT_BYTES + (size_t)nranks * nranks * SLOT_BYTES;
}

struct Comm {
  int nranks, rank;
  Shared* shared;
  char* base;
  size_t bytes;
  bool failed = false;

  char* slot(int r) const { return base + 4096 + (size_t)r * SLOT_BYTES; }
  char* mailbox(int from, int to) const {
    return base + 4096 + (size_t)nranks * SLOT_BYTES + ((size_t)from * nranks + to) * SLOT_BYTES;
  }
};

/** Spins (yielding) until `done` holds; false after PEER_TIMEOUT. */
template <typename F>
bool wait_for(F done) {
  const auto deadline = std::chrono::steady_clock::now() + PEER_TIMEOUT;
  for (unsigned i = 0; !done(); i++) {
    if ((i & 1023) == 0 && std::chrono::steady_clock::now() > deadline) return false;
    sched_yield();
  }
  return true;
}

/** Every rank of the communicator arrives before any leaves (sense by generation). */
bool barrier(Comm* c) {
  Shared* s = c->shared;
  const uint32_t gen = s->generation.load();
  if (s->arrived.fetch_add(1) + 1 == (uint32_t)c->nranks) {
    s->arrived.store(0);
    s->generation.fetch_add(1);
    return true;
  }
  return wait_for([&] { return s->generation.load() != gen; });
}

size_t type_bytes(int type) {
  switch (type) {
    case 0: case 1: return 1;
    case 2: case 3: case 7: return 4;
    case 4: case 5: case 8: return 8;
    case F16: case BF16: return 2;
    default: return 0;
  }
}

float load(const void* p, size_t i, int type) {
  switch (type) {
    case F32: return static_cast<const float*>(p)[i];
    case F16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

void store(void* p, size_t i, int type, float v) {
  switch (type) {
    case F32: static_cast<float*>(p)[i] = v; break;
    case F16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  }
}

/** Runs a collective's body in stream order; a peer that never came marks the communicator failed. */
void in_stream(Comm* c, std::function<bool()> body) {
  emu::enqueue([c, body] {
    if (!c->failed && !body()) {
      c->failed = true;
      std::fprintf(stderr, "emulated NCCL: rank %d of %d timed out waiting for its peers\n", c->rank, c->nranks);
    }
  });
}

thread_local int group_depth = 0;

}  // namespace

extern "C" {

int ncclGetVersion(int* version) {
  *version = 22605;  // what it stands in for: NCCL 2.26.5
  return SUCCESS;
}

const char* ncclGetErrorString(int result) {
  switch (result) {
    case SUCCESS: return "no error";
    case SYSTEM_ERROR: return "unhandled system error (emulated NCCL)";
    case INTERNAL_ERROR: return "internal error: a peer timed out (emulated NCCL)";
    case INVALID_ARGUMENT: return "invalid argument (emulated NCCL)";
    case INVALID_USAGE: return "invalid usage (emulated NCCL)";
    default: return "unknown result (emulated NCCL)";
  }
}

int ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id->internal, 0, ID_BYTES);
  std::random_device rd;
  std::snprintf(id->internal, ID_BYTES, "/kiln-emu-nccl-%d-%08x%08x", (int)getpid(), rd(), rd());
  return SUCCESS;
}

int ncclCommInitRank(void** out, int nranks, ncclUniqueId id, int rank) {
  if (nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks) return INVALID_ARGUMENT;
  if (id.internal[0] != '/' || std::memchr(id.internal, 0, ID_BYTES) == nullptr) return INVALID_ARGUMENT;
  const size_t bytes = segment_bytes(nranks);
  const int fd = shm_open(id.internal, O_CREAT | O_RDWR, 0600);
  if (fd < 0) return SYSTEM_ERROR;
  // Every rank sizes the segment alike; pages are zero until written, and only written pages take memory.
  if (ftruncate(fd, (off_t)bytes) != 0) {
    close(fd);
    return SYSTEM_ERROR;
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return SYSTEM_ERROR;
  auto* c = new Comm{nranks, rank, static_cast<Shared*>(p), static_cast<char*>(p), bytes};
  c->shared->joined.fetch_add(1);
  if (!wait_for([&] { return c->shared->joined.load() == (uint32_t)nranks; }) || !barrier(c)) {
    munmap(p, bytes);
    delete c;
    return INTERNAL_ERROR;
  }
  if (rank == 0) shm_unlink(id.internal);  // everyone has it mapped: the name is no longer needed
  *out = c;
  return SUCCESS;
}

int ncclCommDestroy(void* comm) {
  auto* c = static_cast<Comm*>(comm);
  if (!c) return INVALID_ARGUMENT;
  munmap(c->base, c->bytes);
  delete c;
  return SUCCESS;
}

int ncclAllReduce(uint64_t send, uint64_t recv, size_t count, int type, int op, void* comm, void*) {
  auto* c = static_cast<Comm*>(comm);
  if (!c || op != 0 || (type != F32 && type != F16 && type != BF16)) return INVALID_ARGUMENT;
  if (count * type_bytes(type) > SLOT_BYTES) return INVALID_USAGE;
  in_stream(c, [=] {
    std::memcpy(c->slot(c->rank), (const void*)(uintptr_t)send, count * type_bytes(type));
    if (!barrier(c)) return false;
    for (size_t i = 0; i < count; i++) {
      float sum = 0;
      for (int r = 0; r < c->nranks; r++) sum += load(c->slot(r), i, type);
      store((void*)(uintptr_t)recv, i, type, sum);
    }
    return barrier(c);  // nobody writes its slot again before everyone has read every slot
  });
  return c->failed ? INTERNAL_ERROR : SUCCESS;
}

int ncclAllGather(uint64_t send, uint64_t recv, size_t count, int type, void* comm, void*) {
  auto* c = static_cast<Comm*>(comm);
  const size_t bytes = count * type_bytes(type);
  if (!c || type_bytes(type) == 0) return INVALID_ARGUMENT;
  if (bytes > SLOT_BYTES) return INVALID_USAGE;
  in_stream(c, [=] {
    std::memcpy(c->slot(c->rank), (const void*)(uintptr_t)send, bytes);
    if (!barrier(c)) return false;
    for (int r = 0; r < c->nranks; r++) std::memcpy((char*)(uintptr_t)recv + r * bytes, c->slot(r), bytes);
    return barrier(c);
  });
  return c->failed ? INTERNAL_ERROR : SUCCESS;
}

// Sends complete once the data is in the peer's mailbox (one message in flight per ordered pair), so the
// order in which kiln issues its point-to-point calls cannot deadlock here where it would not on NCCL.
int ncclSend(uint64_t send, size_t count, int type, int peer, void* comm, void*) {
  auto* c = static_cast<Comm*>(comm);
  const size_t bytes = count * type_bytes(type);
  if (!c || type_bytes(type) == 0 || peer < 0 || peer >= c->nranks) return INVALID_ARGUMENT;
  if (group_depth == 0) return INVALID_USAGE;  // kiln always groups them
  if (bytes > SLOT_BYTES) return INVALID_USAGE;
  in_stream(c, [=] {
    Mailbox& m = c->shared->mail[c->rank][peer];
    if (!wait_for([&] { return m.full.load() == 0; })) return false;
    std::memcpy(c->mailbox(c->rank, peer), (const void*)(uintptr_t)send, bytes);
    m.bytes = bytes;
    m.full.store(1);
    return true;
  });
  return c->failed ? INTERNAL_ERROR : SUCCESS;
}

int ncclRecv(uint64_t recv, size_t count, int type, int peer, void* comm, void*) {
  auto* c = static_cast<Comm*>(comm);
  const size_t bytes = count * type_bytes(type);
  if (!c || type_bytes(type) == 0 || peer < 0 || peer >= c->nranks) return INVALID_ARGUMENT;
  if (group_depth == 0) return INVALID_USAGE;
  in_stream(c, [=] {
    Mailbox& m = c->shared->mail[peer][c->rank];
    if (!wait_for([&] { return m.full.load() == 1; })) return false;
    if (m.bytes != bytes) {
      std::fprintf(stderr, "emulated NCCL: rank %d expected %zu bytes from %d, got %zu\n", c->rank, bytes, peer,
                   (size_t)m.bytes);
      return false;
    }
    std::memcpy((void*)(uintptr_t)recv, c->mailbox(peer, c->rank), bytes);
    m.full.store(0);
    return true;
  });
  return c->failed ? INTERNAL_ERROR : SUCCESS;
}

int ncclGroupStart() {
  group_depth++;
  return SUCCESS;
}

int ncclGroupEnd() {
  if (group_depth == 0) return INVALID_USAGE;
  group_depth--;
  return SUCCESS;
}

}  // extern "C"
