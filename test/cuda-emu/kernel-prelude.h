// Included before a kernel source the emulator compiles as host C++: CUDA's qualifiers, built-in
// variables, warp and block synchronisation, atomics and intrinsics, in terms of emu.h's fibers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector_functions.h>
#include <vector_types.h>
#include "emu.h"

// Marks kernels in the preprocessed source, where the emulator's NVRTC finds them to register.
#define __global__ __attribute__((used))
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// Shared memory is per block, and a block runs on one OS thread: a static thread_local is exactly that.
#define __shared__ static thread_local
#define __constant__ static

#define threadIdx (::emu::current->tid)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

// Kernel sources declare their extern __shared__ array only when KILN_EMULATED is not defined.
#define KILN_EMULATED 1
inline unsigned char* dynamic_shared() { return ::emu::dynamic_shared(); }

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline unsigned __activemask() { return emu::live_lanes(); }

namespace emu {
/** One warp round: every live lane publishes `v`, the warp meets, each reads lane `src(lane)`'s value. */
template <typename V, typename Src>
inline V exchange(V v, Src src) {
  static_assert(sizeof(V) <= 8, "a warp shuffle moves at most 8 bytes");
  uint64_t* round = exchange_slots();
  const int lane = current->lane;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  round[lane] = bits;
  sync_warp();
  const int from = src(lane);
  if (from < 0 || from > 31) return v;
  V out;
  std::memcpy(&out, &round[from], sizeof(V));
  return out;
}
/** One warp round of predicates: the bits of the live lanes whose predicate holds. */
inline unsigned vote(int pred) {
  uint64_t* round = exchange_slots();
  round[current->lane] = pred ? 1 : 0;
  sync_warp();
  const unsigned live = live_lanes();
  unsigned bits = 0;
  for (int l = 0; l < 32; l++)
    if ((live >> l & 1) && round[l]) bits |= 1u << l;
  return bits;
}
}  // namespace emu

template <typename V>
inline V __shfl_sync(unsigned, V v, int src, int width = 32) {
  return emu::exchange(v, [=](int lane) { return (lane & ~(width - 1)) + (src & (width - 1)); });
}
template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int mask, int width = 32) {
  return emu::exchange(v, [=](int lane) {
    const int to = lane ^ mask;
    return (to & ~(width - 1)) == (lane & ~(width - 1)) ? to : lane;
  });
}
template <typename V>
inline V __shfl_down_sync(unsigned, V v, unsigned delta, int width = 32) {
  return emu::exchange(v, [=](int lane) {
    const int within = lane & (width - 1);
    return within + (int)delta < width ? lane + (int)delta : lane;
  });
}
template <typename V>
inline V __shfl_up_sync(unsigned, V v, unsigned delta, int width = 32) {
  return emu::exchange(v, [=](int lane) {
    const int within = lane & (width - 1);
    return within - (int)delta >= 0 ? lane - (int)delta : lane;
  });
}
inline unsigned __ballot_sync(unsigned, int pred) { return emu::vote(pred); }
inline int __any_sync(unsigned, int pred) { return emu::vote(pred) != 0; }
inline int __all_sync(unsigned, int pred) { return emu::vote(pred) == emu::live_lanes(); }

template <typename V>
inline V __ldg(const V* p) {
  return *p;
}

// Reinterpretations and integer intrinsics.
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
// PTX prmt's default mode: each selector nibble's low three bits pick a byte of y:x (kiln's selectors never set
// the fourth, sign-replicating bit).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = ((unsigned long long)y << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
using std::max;
using std::min;
inline int min(int a, unsigned b) { return a < (int)b ? a : (int)b; }
inline long min(long a, int b) { return a < b ? a : b; }
inline long max(long a, int b) { return a > b ? a : b; }

// Float intrinsics: the emulator computes them exactly (the GPU's approximations are within tolerance).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline int __float2int_rn(float x) { return (int)lrintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }

// Atomics: real ones, since blocks run on several OS threads.
template <typename V>
inline V atomicAdd(V* p, V v) {
  if constexpr (std::is_floating_point_v<V>) {
    V old = *p;
    V next = old + v;
    while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) next = old + v;
    return old;
  } else {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  }
}
template <typename V>
inline V atomicCAS(V* p, V compare, V v) {
  __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
template <typename V>
inline V atomicExch(V* p, V v) {
  return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
template <typename V>
inline V atomicMax(V* p, V v) {
  V old = *p;
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <typename V>
inline V atomicMin(V* p, V v) {
  V old = *p;
  while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <typename V>
inline V atomicOr(V* p, V v) {
  return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}

namespace emu {
template <typename... A, size_t... I>
inline void invoke_with(void (*f)(A...), void** p, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <typename... A>
inline void invoke(void (*f)(A...), void** p) {
  invoke_with(f, p, std::index_sequence_for<A...>{});
}
template <typename... A>
inline Signature signature(void (*)(A...)) {
  static const size_t sizes[sizeof...(A) + 1] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)..., 0};
  return {(int)sizeof...(A), sizes};
}
}  // namespace emu
