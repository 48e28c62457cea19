// kiln's decoder kernels. One source, compiled per engine dtype with -DKILN_DTYPE=0 (float), 1 (half) or
// 2 (bfloat16): activations, weights and the KV cache are T; all arithmetic is float. Where transformers
// rounds an intermediate to the model dtype (the normalised value before the norm weight, rope's cos/sin,
// silu before the product), these kernels round it too, so bf16 engines track transformers closely.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#if KILN_DTYPE == 0
typedef float T;
__device__ __forceinline__ float tof(T x) { return x; }
__device__ __forceinline__ T fromf(float x) { return x; }
#elif KILN_DTYPE == 1
typedef __half T;
__device__ __forceinline__ float tof(T x) { return __half2float(x); }
__device__ __forceinline__ T fromf(float x) { return __float2half_rn(x); }
#else
typedef __nv_bfloat16 T;
__device__ __forceinline__ float tof(T x) { return __bfloat162float(x); }
__device__ __forceinline__ T fromf(float x) { return __float2bfloat16_rn(x); }
#endif

// NVRTC has no <math.h>: spell infinity out.
#define NEG_INF __int_as_float(0xff800000)

// Rounds through T: what a framework computing in the model dtype stores.
__device__ __forceinline__ float rnd(float x) { return tof(fromf(x)); }

// E4M3: subnormals m·2^-9, normals (1 + m/8)·2^(e−7); 0x7f and 0xff are NaN.
__device__ __forceinline__ float e4m3_value(unsigned int code) {
  const unsigned int e = (code >> 3) & 15, m = code & 7;
  const float mag = (code & 0x7f) == 0x7f ? __int_as_float(0x7fc00000)
                    : e == 0             ? (float)m * 0.001953125f
                                         : __int_as_float((int)((e + 120) << 23 | m << 20));
  return code & 0x80 ? -mag : mag;
}

// x's E4M3 code: rounded to nearest, saturating at ±448.
__device__ __forceinline__ unsigned char e4m3_code(float x) {
  return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

// E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
__device__ __forceinline__ float e2m1_value(unsigned int code) {
  const unsigned int m = code & 7;
  const float mag = m < 4 ? 0.5f * (float)m : (float)(1 << ((m >> 1) - 1)) * (1.f + 0.5f * (float)(m & 1));
  return code & 8 ? -mag : mag;
}

// The KV cache's element, compiled per engine with -DKILN_KV=0 (T), 1 (INT8) or 2 (FP8 E4M3). A quantized
// cache stores x / scale (one scale a layer, TensorRT-LLM's kv_cache_scaling_factor): INT8 rounded half up and
// clamped to ±127, as the cpu backend stores it; FP8 rounded to the nearest E4M3 value, saturating.
#ifndef KILN_KV
#define KILN_KV 0
#endif
#if KILN_KV == 0
typedef T KV;
__device__ __forceinline__ KV kv_put(float x, float) { return fromf(x); }
__device__ __forceinline__ float kv_get(KV v, float) { return tof(v); }
#elif KILN_KV == 1
typedef signed char KV;
__device__ __forceinline__ KV kv_put(float x, float scale) {
  return (KV)fminf(127.f, fmaxf(-127.f, floorf(x * (1.f / scale) + 0.5f)));
}
__device__ __forceinline__ float kv_get(KV v, float scale) { return (float)v * scale; }
#else
typedef unsigned char KV;
__device__ __forceinline__ KV kv_put(float x, float scale) {
  return e4m3_code(x / scale);
}
__device__ __forceinline__ float kv_get(KV v, float scale) { return e4m3_value(v) * scale; }
#endif

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// Sum (or maximum) over the block; every thread gets the result. blockDim.x is a multiple of 32, at most 1024.
template <bool MAX>
__device__ float block_reduce(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = MAX ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? partial[lane] : MAX ? NEG_INF : 0.f;
  return MAX ? warp_max(v) : warp_sum(v);
}

__device__ float block_sum(float v) { return block_reduce<false>(v); }
__device__ float block_max(float v) { return block_reduce<true>(v); }

// Programmatic dependent launch (Hopper): kiln launches its kernels so that each may start while the one
// before it is finishing. pdl_enter waits until that kernel's writes are visible, then lets the next one
// launch; every kernel calls it before it reads anything but the engine's weights and the step's metadata
// (no kernel writes those; the metadata's copy precedes the step's first kernel) and before it writes
// anything. The GEMVs load their first weights before it, which is the point.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// out[r] = table[ids[r]]; grid = rows.
extern "C" __global__ void embed(T* out, const T* table, const int* ids, int hidden) {
  pdl_enter();
  const int r = blockIdx.x;
  const T* src = table + (size_t)ids[r] * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[(size_t)r * hidden + i] = src[i];
}

__device__ void rmsnorm_row(T* out, const T* x, const T* w, int dim, float eps) {
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = tof(x[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = fromf(tof(w[i]) * rnd(tof(x[i]) * inv));
}

// out = rmsnorm(x) · w; grid = rows.
extern "C" __global__ void rmsnorm(T* out, const T* x, const T* w, int dim, float eps) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * dim;
  rmsnorm_row(out + o, x + o, w, dim, eps);
}

// residual += x (rounded to T), then out = rmsnorm(residual) · w; grid = rows.
extern "C" __global__ void add_rmsnorm(T* residual, const T* x, T* out, const T* w, int dim, float eps) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) residual[o + i] = fromf(tof(residual[o + i]) + tof(x[o + i]));
  __syncthreads();
  rmsnorm_row(out + o, residual + o, w, dim, eps);
}

// x += y, elementwise over n values.
extern "C" __global__ void add_inplace(T* x, const T* y, long n) {
  pdl_enter();
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    x[i] = fromf(tof(x[i]) + tof(y[i]));
}

// out[r, c] = x[r, c] (float32 sums) in T, plus b[c] (when given), rounded as a GEMV and add_bias round
// them; grid = rows.
extern "C" __global__ void finish_linear(T* out, const float* x, const T* b, int cols) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    out[o + c] = b != nullptr ? fromf(rnd(x[o + c]) + tof(b[c])) : fromf(x[o + c]);
}

// x[r, c] += b[c]; grid = rows.
extern "C" __global__ void add_bias(T* x, const T* b, int cols) {
  pdl_enter();
  T* row = x + (size_t)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) row[c] = fromf(tof(row[c]) + tof(b[c]));
}

// y[r, o] = Σ_i x[r, i] · w[o, i] for the few rows of a decode step (at most GEMV_MAX_ROWS), where a GEMM
// library's tiles idle: one warp per output, each lane reading 16 bytes of the weight row at a time, every row
// of x accumulated in float from the same loaded weights. Needs in · sizeof(T) a multiple of 16 and 16-byte
// aligned rows (the caller checks). y is float32 when y_f32 (logits), else T. grid = ceil(out · ksplit / 8), 256 threads.
#define GEMV_MAX_ROWS 8
#ifndef GEMV_UNROLL  // (overridable for A/B runs; cuda-tensor.ts sizes the split for 4)
#define GEMV_UNROLL 4
#endif

// U (GEMV_UNROLL unless said) 16-byte loads of a weight row in flight per lane before any is used.
template <int U = GEMV_UNROLL>
__device__ __forceinline__ void gemv_load(uint4 (&wv)[U], const uint4* wrow, int v0, int nvec) {
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int v = v0 + 32 * u;
    wv[u] = v < nvec ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
  }
}

// The first pass of a GEMV's weight loads, then pdl_enter: the loads overlap the end of the kernel before.
// KILN_GEMV_LOADS_AFTER_WAIT=1 waits first (an A/B switch for bench/decode-ops.ts, which measured the plain
// GEMVs slower after this change came in with others).
#ifndef KILN_GEMV_LOADS_AFTER_WAIT
#define KILN_GEMV_LOADS_AFTER_WAIT 0
#endif

// What a plain GEMV loads beside its weights: nothing.
struct NoSide {};

// Streams a lane's share of a weight row from v_first (up to nvec) in passes of GEMV_UNROLL loads, the
// first issued before pdl_enter, and hands each pass, what side(v0) loaded beside it (the quantized GEMVs'
// group scales) and its first index to `pass`. `prologue` runs between pdl_enter and the first pass (the
// quantized GEMVs round their input there).
template <typename Pass, typename Prologue, typename Side>
__device__ __forceinline__ void gemv_stream(const uint4* wrow, int v_first, int nvec, Pass& pass, Prologue& prologue,
                                            Side& side) {
  uint4 first[GEMV_UNROLL];
  if (KILN_GEMV_LOADS_AFTER_WAIT) pdl_enter();
  gemv_load(first, wrow, v_first, nvec);
  const auto first_side = side(v_first);
  if (!KILN_GEMV_LOADS_AFTER_WAIT) pdl_enter();
  prologue();
  pass(first, first_side, v_first);
  for (int v0 = v_first + 32 * GEMV_UNROLL; v0 < nvec; v0 += 32 * GEMV_UNROLL) {
    uint4 wv[GEMV_UNROLL];
    gemv_load(wv, wrow, v0, nvec);
    pass(wv, side(v0), v0);
  }
}

// Sums each row's partial over the ksplit warps that share an output (consecutive warps of one block, ksplit
// dividing 8); true for the one lane that then holds the totals. Every thread of the block must call it.
template <int R>
__device__ __forceinline__ bool split_sum(float (&acc)[R], int ksplit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
  if (ksplit == 1) return lane == 0;
  __shared__ float part[8][GEMV_MAX_ROWS];
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; r++) part[warp][r] = acc[r];
  }
  __syncthreads();
  if (lane != 0 || warp % ksplit != 0) return false;
#pragma unroll
  for (int r = 0; r < R; r++) {
    float t = 0.f;
    for (int j = 0; j < ksplit; j++) t += part[warp + j][r];
    acc[r] = t;
  }
  return true;
}

// The 16-byte loads [begin, end) of an input row that warp part `part` of `ksplit` takes.
__device__ __forceinline__ void split_range(int nvec, int part, int ksplit, int& begin, int& end) {
  const int per = (nvec + ksplit - 1) / ksplit;
  begin = part * per;
  end = min(nvec, begin + per);
}

// ksplit warps an output row (ksplit in 1, 2, 4, 8: long rows and few outputs, where one warp a row would
// leave the GPU's memory system idle), each over its share of the row.
// R is the rows compiled for, rows ≤ R those there are (the rest of the R are skipped: the kernels are compiled
// for 2, 4 and 8 rows, not each count, which would triple their compile time for no speed: they are bound by
// the weights' bytes, not by the arithmetic).
template <int R>
__device__ __forceinline__ void gemv_rows(void* y, int y_f32, const T* x, const T* w, int rows, int in, int out,
                                          int ksplit) {
  const int gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int o = gw / ksplit, lane = threadIdx.x & 31;
  const bool live = o < out;
  constexpr int V = 16 / sizeof(T);
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (size_t)(live ? o : 0) * in);
  int begin, end;
  split_range(in / V, gw % ksplit, ksplit, begin, end);
  if (!live) end = begin;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  // One pass: GEMV_UNROLL weight loads of a lane (in flight together) against every row of x.
  auto pass = [&](const uint4 (&wv)[GEMV_UNROLL], NoSide, int v0) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const int v = v0 + 32 * u;
      if (v >= end) break;
      const T* we = reinterpret_cast<const T*>(&wv[u]);
      float wf[V];
#pragma unroll
      for (int k = 0; k < V; k++) wf[k] = tof(we[k]);
#pragma unroll
      for (int r = 0; r < R; r++) {
        if (R > 1 && r >= rows) break;
        const uint4 xv = *(reinterpret_cast<const uint4*>(x + (size_t)r * in) + v);
        const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int k = 0; k < V; k++) acc[r] += wf[k] * tof(xe[k]);
      }
    }
  };
  auto no_prologue = [] {};
  auto no_side = [](int) { return NoSide{}; };
  gemv_stream(wrow, begin + lane, end, pass, no_prologue, no_side);
  if (!split_sum<R>(acc, ksplit) || !live) return;
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (R > 1 && r >= rows) break;
    if (y_f32) reinterpret_cast<float*>(y)[(size_t)r * out + o] = acc[r];
    else reinterpret_cast<T*>(y)[(size_t)r * out + o] = fromf(acc[r]);
  }
}

extern "C" __global__ void __launch_bounds__(256)
gemv(void* y, int y_f32, const T* x, const T* w, int rows, int in, int out, int ksplit) {
  if (rows <= 2) gemv_rows<2>(y, y_f32, x, w, rows, in, out, ksplit);
  else if (rows <= 4) gemv_rows<4>(y, y_f32, x, w, rows, in, out, ksplit);
  else gemv_rows<8>(y, y_f32, x, w, rows, in, out, ksplit);
}

// The one-row step (batch-1 decode) as a kernel of its own: compiled alone it takes the registers one row
// needs, not the eight-row case's, so more blocks fit an SM. Same arguments as gemv (rows is 1).
extern "C" __global__ void __launch_bounds__(256)
gemv_1(void* y, int y_f32, const T* x, const T* w, int rows, int in, int out, int ksplit) {
  gemv_rows<1>(y, y_f32, x, w, 1, in, out, ksplit);
}

// Element k of the T values packed in a 16-byte load, from shifts on its words (no address taken).
__device__ __forceinline__ unsigned int word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ float t_of(const uint4& v, int k) {
#if KILN_DTYPE == 0
  return __uint_as_float(word_of(v, k));
#elif KILN_DTYPE == 1
  return __half2float(__ushort_as_half((unsigned short)(word_of(v, k >> 1) >> (16 * (k & 1)))));
#else
  return __uint_as_float((word_of(v, k >> 1) >> (16 * (k & 1))) << 16);
#endif
}

// The quantized weights a linear layer may hold, as kiln build lays them out [out, ·] for these kernels
// (backends/cuda/weight-layout.ts): int8 codes; int4 pairs along in (the even element in the low nibble);
// E4M3 bytes; E2M1 pairs (NVFP4) with an E4M3 scale per 16 weights. A weight "unit" is the code's value
// (times its group or block scale); the per-channel scales, the input's scale and ModelOpt's alpha multiply
// the output.
#define QK_INT8 0
#define QK_INT4 1
#define QK_FP8 2
#define QK_FP4 3

// Weight k (0 ≤ k < per load) of a 16-byte load of kind K, as a float code value. k is a compile-time
// constant in every caller, so the shifts and selectors are too. No integer-to-float conversions (a quarter
// of the ALUs' rate on Hopper; taking them out sped the fp8 and int4 engines' batch-1 steps by about a tenth
// on an H200, int8_wo's not): the integers go through the 2^23 magic number, FP8 and FP4 through their bits placed in a float's and an exact power-of-two
// product. (E4M3's NaN codes, which kiln's quantizers never write, decode as ±480.)
template <int K>
__device__ __forceinline__ float q_weight(const uint4& v, int k) {
  if (K == QK_INT8) {
    // 0x4B0000bb is 2^23 + bb, bb the code + 128 (the xor's doing).
    const unsigned int b = __byte_perm(word_of(v, k >> 2) ^ 0x80808080u, 0x4B000000u, 0x7440 | (k & 3));
    return __uint_as_float(b) - 8388736.f;
  }
  if (K == QK_FP8) {
    // The code's byte at the top of a word, then its sign, exponent and mantissa into a float's fields:
    // 2^(e−127) · 1.m (or, e = 0, the subnormal m · 2^−149), 2^−120 of E4M3's value.
    const unsigned int x = __byte_perm(word_of(v, k >> 2), 0u, 0x0444 | ((k & 3) << 12));
    return __uint_as_float((x & 0x80000000u) | ((x >> 4) & 0x07f00000u)) * 0x1p120f;
  }
  const unsigned int nib = (word_of(v, k >> 3) >> (4 * (k & 7))) & 15;
  if (K == QK_FP4) return __uint_as_float(((nib & 8u) << 28) | ((nib & 7u) << 22)) * 0x1p126f;  // as FP8's
  return __uint_as_float(0x4B000000u | (nib ^ 8u)) - 8388616.f;  // 2^23 + (code + 8)
}

// Plain weights in the model dtype, as a code kind beside QK_*: the fused decode kernels take either.
#define QK_T 4

// Weights in one 16-byte load of kind K.
template <int K>
struct Codes {
  static constexpr int PER = K == QK_T ? 16 / (int)sizeof(T) : (K == QK_INT8 || K == QK_FP8) ? 16 : 32;
  // Loads a lane has in flight in the fused kernels: as many weights as GEMV_UNROLL plain loads hold, so
  // that the denser codes take fewer registers (more warps an SM) rather than more weights a warp.
  static constexpr int UNROLL = (GEMV_UNROLL * (16 / (int)sizeof(T)) + PER - 1) / PER;
};

// Weight k of a 16-byte load of kind K as a float (a code value for the quantized kinds).
template <int K>
__device__ __forceinline__ float code_at(const uint4& v, int k) {
  if (K == QK_T) return t_of(v, k);
  return q_weight<K>(v, k);
}

// A quantized linear layer as its kernels read it: a kernel parameter passed by value (its fields in
// registers or constant memory, so no load of it stands before the scales' loads; encoded by
// backends/cuda/quantized-linear.ts, which writes this layout): the scales of its codes (whose pointer the
// kernels take as an argument, so that their first loads wait on nothing), and what the format does to the
// layer's input. y = out_scale · row_scale[r] · channel scale · Σ input'(x) · w', where
// input' is x (times prequant, over smoother) rounded as `rounding` says (QIN_*, or -1: used as it is).
struct QLinear {
  const float* scales;  // per channel [out], or group-wise int4 (groups > 0) per group [out, groups]; or null
  const float* zeros;   // GPTQ's group zeros [out, groups], or null
  const unsigned char* blocks;  // NVFP4: the E4M3 scale code of every 16 weights [out, in/16]
  const float* prequant;        // [in] or null
  const float* smoother;        // [in] or null
  int groups;
  int rounding;
  float in_scale;   // the rounding's static scale
  float out_scale;  // the input's unit · weight scale · alpha
};

#ifndef KILN_EMULATED
__device__ __forceinline__ unsigned char* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char kiln_dynamic_shared[];
  return kiln_dynamic_shared;
}
#endif

// What a quantized layer's format does to its input first: x · prequant or x / smoother (when given), then
// the rounding the format applies: none (AWQ), E4M3 or int8 divided by a static scale, int8 times a static
// multiplier (SmoothQuant's scale_to_int), int8 with the row's own scale (amax / 127), or NVFP4 (E2M1 per 16
// inputs under an E4M3 block scale relative to the global scale).
#define QIN_NONE 0
#define QIN_FP8 1
#define QIN_INT8 2
#define QIN_INT8_TOKEN 3
#define QIN_FP4 4
#define QIN_INT8_TIMES 5

__device__ __forceinline__ float e4m3_round(float x) {
  return e4m3_value(e4m3_code(x));
}

// Round to nearest, ties to even, saturating at ±6, on E2M1's grid.
__device__ __forceinline__ float e2m1_round(float x) {
  const float a = fabsf(x);
  const float m = a <= 0.25f ? 0.f : a < 0.75f ? 0.5f : a <= 1.25f ? 1.f : a < 1.75f ? 1.5f : a <= 2.5f ? 2.f
                  : a < 3.5f ? 3.f : a <= 5.f ? 4.f : 6.f;
  return x < 0.f ? -m : m;
}

// a / b rounded to nearest, as IEEE division rounds it, for the finite, nonzero divisors the input roundings,
// the norm and silu see, without the slow path of CUDA's division: a subroutine call, around which the
// GEMVs' live registers (their prefetched weights) spilled to local memory. The quotient is taken in double
// from a reciprocal refined twice by Newton's method (relative error near 2^-52), then rounded to float:
// exactly a / b's float, since the quotient of two floats is never a float midpoint nor within 2^-49
// (relative) of one. (A float imitation of CUDA's fast path, one Newton step and a remainder correction,
// carries no such proof.)
__device__ __forceinline__ float div_rn(float a, float b) {
  const double d = b;
  double y = __fdividef(1.f, b);
  y = fma(fma(-d, y, 1.0), y, y);
  y = fma(fma(-d, y, 1.0), y, y);
  return (float)((double)a * y);
}

// silu(a) = a / (1 + e^-a) with that division as IEEE rounds it (div_rn, kept to its range: a denominator past
// 2^126 is scaled by 2^-64 first, exactly, and an infinite one gives a · 0, as a / inf does).
__device__ __forceinline__ float silu(float a) {
  const float d = 1.f + __expf(-a);
  if (d < 0x1p126f) return div_rn(a, d);
  return d == __int_as_float(0x7f800000) ? a * 0.f : div_rn(a, d * 0x1p-64f) * 0x1p-64f;
}

// C floats from p, 16 bytes a load where C is a multiple of 4 (p + C then 16-byte aligned: the callers' i0 are
// multiples of C): a lane reading its inputs' pre-quant scales a float at a time took four times the sectors.
template <int C>
__device__ __forceinline__ void load_floats(float (&f)[C], const float* p) {
  if (C % 4 == 0) {
#pragma unroll
    for (int j = 0; j < C / 4; j++) {
      const float4 q = reinterpret_cast<const float4*>(p)[j];
      f[4 * j] = q.x;
      f[4 * j + 1] = q.y;
      f[4 * j + 2] = q.z;
      f[4 * j + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < C; k++) f[k] = p[k];
  }
}

// C inputs of row xr from i0, times prequant, over smoother (when given): SmoothQuant divides by its
// smoother where ModelOpt multiplies by a pre-quant scale, each as its reference. C: 1, or the T values of a
// 16-byte load.
template <int C>
__device__ __forceinline__ void load_input(float (&v)[C], const T* xr, int i0, const float* prequant,
                                           const float* smoother) {
  if (C == 1) {
    v[0] = tof(xr[i0]);
  } else {
    const uint4 xv = *reinterpret_cast<const uint4*>(xr + i0);
#pragma unroll
    for (int k = 0; k < C; k++) v[k] = t_of(xv, k);
  }
  if (prequant != nullptr) {
    float f[C];
    load_floats<C>(f, prequant + i0);
#pragma unroll
    for (int k = 0; k < C; k++) v[k] *= f[k];
  }
  if (smoother != nullptr) {
    float f[C];
    load_floats<C>(f, smoother + i0);
#pragma unroll
    for (int k = 0; k < C; k++) v[k] = div_rn(v[k], f[k]);
  }
}

// One input value (already times prequant, over smoother) rounded as MODE says: the code, or with `dequantize`
// what it stands for. mul: int8_times' and int8_token's multiplier (as a double, as the cpu reference takes it).
template <int MODE>
__device__ __forceinline__ float round_one(float v, float scale, double mul, int dequantize) {
  if (MODE == QIN_NONE) return rnd(v);
  if (MODE == QIN_FP8) {
    const float c = e4m3_round(div_rn(v, scale));
    return dequantize ? c * scale : c;
  }
  const double q = fmin(127.0, fmax(-127.0, rint(MODE == QIN_INT8 ? (double)v / (double)scale : (double)v * mul)));
  return dequantize ? (float)(q / mul) : (float)q;
}

// Input i's pre-quant scale and smoother under layer q (1 where q has none, or rounds nothing): weights, so a
// kernel may load them before its PDL wait and hand them to round_static, rather than after its work.
__device__ __forceinline__ float2 static_factors(const QLinear& q, int i) {
  const bool on = q.rounding >= 0;
  return make_float2(on && q.prequant != nullptr ? __ldg(q.prequant + i) : 1.f,
                     on && q.smoother != nullptr ? __ldg(q.smoother + i) : 1.f);
}

// An input of a layer (value x; f: its static_factors) as its format rounds it, in units of the input's scale
// (what round_input_row writes for it), for the roundings that need no other input's value: none, FP8, int8
// and int8_times. -1: x as it is.
__device__ __forceinline__ float round_static(const QLinear& q, float2 f, float x) {
  if (q.rounding < 0) return x;
  if (q.prequant != nullptr) x *= f.x;
  if (q.smoother != nullptr) x = div_rn(x, f.y);
  switch (q.rounding) {
    case QIN_FP8:
      return round_one<QIN_FP8>(x, q.in_scale, 1.0, 0);
    case QIN_INT8:
      return round_one<QIN_INT8>(x, q.in_scale, 1.0, 0);
    case QIN_INT8_TIMES:
      return round_one<QIN_INT8_TIMES>(x, q.in_scale, (double)q.in_scale, 0);
    default:
      return round_one<QIN_NONE>(x, q.in_scale, 1.0, 0);
  }
}

// round_input_row for one rounding MODE, known at compile time: each mode's code alone, with no other mode's
// branches (or their divisions, whose slow paths are subroutine calls) predicated beside it, which had made
// the GEMVs' code large enough to stall on instruction fetches and spill registers. FP4 is round_fp4_row's.
// A rounded input as the kernel after it reads it: in T (the GEMVs, and dequantized for cuBLAS), or as the
// int8 code itself (cuBLASLt's int8 GEMM; the int8 roundings' values are whole numbers in [-127, 127]).
__device__ __forceinline__ void store_rounded(T* p, float v) { *p = fromf(v); }
__device__ __forceinline__ void store_rounded(signed char* p, float v) { *p = (signed char)(int)v; }

template <int C, int MODE, typename Y>
__device__ __forceinline__ void round_row_as(Y* yr, float* row_scale, const T* xr, const float* prequant,
                                             const float* smoother, float scale, int cols, int dequantize) {
  const int n = cols / C;
  // The int8 roundings take the reference's float64 product or quotient, so a code never flips against it:
  // int8 divides by the scale; int8_times multiplies by it (SmoothQuant's static scale_to_int); per token
  // multiplies by 127 / amax (a row of zeros: by 1) and gives amax / 127 as the row's scale.
  double mul = MODE == QIN_INT8_TIMES ? (double)scale : MODE == QIN_INT8 ? 1.0 / (double)scale : 1.0;
  if (MODE == QIN_INT8_TOKEN) {
    float amax = 0.f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      float v[C];
      load_input<C>(v, xr, c * C, prequant, smoother);
#pragma unroll
      for (int k = 0; k < C; k++) amax = fmaxf(amax, fabsf(v[k]));
    }
    amax = block_max(amax);
    mul = amax > 0.f ? 127.0 / (double)amax : 1.0;
    if (threadIdx.x == 0 && row_scale != nullptr) *row_scale = (float)(1.0 / mul);
  }
  auto emit = [&](int i0, const float (&v)[C]) {
#pragma unroll
    for (int k = 0; k < C; k++) store_rounded(yr + i0 + k, round_one<MODE>(v[k], scale, mul, dequantize));
  };
  // Two loads a thread in flight before either's values are written.
  for (int c = threadIdx.x; c < n; c += 2 * blockDim.x) {
    const int c2 = c + blockDim.x;
    float a[C], b[C];
    load_input<C>(a, xr, c * C, prequant, smoother);
    if (c2 < n) load_input<C>(b, xr, c2 * C, prequant, smoother);
    emit(c * C, a);
    if (c2 < n) emit(c2 * C, b);
  }
}

// NVFP4's input rounding: E2M1 per 16 inputs under an E4M3 block scale relative to the global `scale`.
template <int C>
__device__ __forceinline__ void round_fp4_row(T* yr, const T* xr, const float* prequant, const float* smoother,
                                              float scale, int cols, int dequantize) {
  for (int b = threadIdx.x; b < cols / 16; b += blockDim.x) {
    float v[16], amax = 0.f;
#pragma unroll
    for (int j = 0; j < 16 / C; j++) {
      float part[C];
      load_input<C>(part, xr, 16 * b + j * C, prequant, smoother);
#pragma unroll
      for (int k = 0; k < C; k++) v[j * C + k] = part[k];
    }
#pragma unroll
    for (int k = 0; k < 16; k++) amax = fmaxf(amax, fabsf(v[k]));
    const float d = e4m3_round(div_rn(div_rn(amax, 6.f), scale));
    const float effective = d * scale;
#pragma unroll
    for (int k = 0; k < 16; k++) {
      const float q = effective == 0.f ? 0.f : e2m1_round(div_rn(v[k], effective));
      yr[16 * b + k] = fromf(dequantize ? q * effective : q * d);
    }
  }
}

// One row of a layer's input rounded as its format says (mode: QIN_*), by the whole block (every thread must
// call it). Writes the rounded values in units of the input's scale (so a GEMV's output carries it), or,
// with `dequantize`, the values themselves (for a GEMM on dequantized weights); int8_token writes the row's
// scale to *row_scale (when given). y may be x: each thread writes only what it read. C: inputs a load, V
// (16 bytes: the GEMVs' inputs, cols a multiple of 32 and rows 16-byte aligned) or 1 (any row). K: the
// weight kind whose GEMV rounds (its formats' roundings alone are compiled in: FP8 for E4M3 codes, the int8
// roundings for int8 codes, FP4 for E2M1, none or FP8 for int4, as backends/cuda/load.ts requires), or -1
// for every rounding.
template <int C, int K = -1>
__device__ __forceinline__ void round_input_row(T* yr, float* row_scale, const T* xr, const float* prequant,
                                                const float* smoother, int mode, float scale, int cols,
                                                int dequantize) {
  constexpr bool any = K < 0, int8 = any || K == QK_INT8;
  switch (mode) {
    case QIN_NONE:
      if (any || K == QK_INT4)
        round_row_as<C, QIN_NONE>(yr, row_scale, xr, prequant, smoother, scale, cols, dequantize);
      return;
    case QIN_FP8:
      if (any || K == QK_FP8 || K == QK_INT4)
        round_row_as<C, QIN_FP8>(yr, row_scale, xr, prequant, smoother, scale, cols, dequantize);
      return;
    case QIN_INT8:
      if (int8) round_row_as<C, QIN_INT8>(yr, row_scale, xr, prequant, smoother, scale, cols, dequantize);
      return;
    case QIN_INT8_TOKEN:
      if (int8) round_row_as<C, QIN_INT8_TOKEN>(yr, row_scale, xr, prequant, smoother, scale, cols, dequantize);
      return;
    case QIN_INT8_TIMES:
      if (int8) round_row_as<C, QIN_INT8_TIMES>(yr, row_scale, xr, prequant, smoother, scale, cols, dequantize);
      return;
    case QIN_FP4:
      if (any || K == QK_FP4) round_fp4_row<C>(yr, xr, prequant, smoother, scale, cols, dequantize);
      return;
  }
}

// The rows of a layer's input x (rows · in values) as its format rounds them, into xs (shared memory; x
// itself is fine), and int8_token's row scales into row_scale; ends with a barrier. Every thread must call it.
template <int K>
__device__ __forceinline__ void round_input_rows(T* xs, float* row_scale, const T* x, const QLinear& q, int rows,
                                                 int in) {
  for (int r = 0; r < rows; r++)
    round_input_row<16 / sizeof(T), K>(xs + (size_t)r * in, row_scale + r, x + (size_t)r * in, q.prequant, q.smoother,
                                    q.rounding, q.in_scale, in, 0);
  __syncthreads();
}

// The format's input rounding alone, one block a row (for steps too wide for the GEMV: their GEMM takes the
// values dequantized), written to out; int8_token's row scales to row_scale (when not dequantizing).
extern "C" __global__ void quantize_rows(T* out, float* row_scale, const T* x, const float* prequant,
                                         const float* smoother, int mode, float scale, int cols, int dequantize) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * cols;
  round_input_row<1>(out + o, dequantize ? nullptr : row_scale + blockIdx.x, x + o, prequant, smoother, mode, scale,
                     cols, dequantize);
}

// The FP8 GEMM's input (backends/cuda/cublas-lt.ts): each value's E4M3 code of x / scale, rounded as
// round_row_as<QIN_FP8> rounds it; one block a row.
extern "C" __global__ void quantize_rows_fp8(unsigned char* out, const T* x, float scale, int cols) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x)
    out[o + i] = e4m3_code(div_rn(tof(x[o + i]), scale));
}

// SmoothQuant's int8 GEMM input (backends/cuda/cublas-lt.ts): each row's int8 codes, smoothed (or times its
// pre-quant scale) and rounded as the layer's GEMV rounds it (mode: QIN_INT8, QIN_INT8_TIMES or, with the row's
// scale to row_scale, QIN_INT8_TOKEN), in one pass over the row; one block a row.
extern "C" __global__ void quantize_rows_int8(signed char* out, float* row_scale, const T* x, const float* prequant,
                                              const float* smoother, int mode, float scale, int cols) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * cols;
  signed char* yr = out + o;
  if (mode == QIN_INT8)
    round_row_as<1, QIN_INT8>(yr, nullptr, x + o, prequant, smoother, scale, cols, 0);
  else if (mode == QIN_INT8_TIMES)
    round_row_as<1, QIN_INT8_TIMES>(yr, nullptr, x + o, prequant, smoother, scale, cols, 0);
  else
    round_row_as<1, QIN_INT8_TOKEN>(yr, row_scale + blockIdx.x, x + o, prequant, smoother, scale, cols, 0);
}

// The int8 GEMM's int32 sums acc [rows, cols] as the layer's output, scaled as its GEMV scales its own:
// y = acc · (channel scale · out_scale) · row scale (int8_token's; else none), plus the bias; y float32 when
// y_f32, else T, rounded as the GEMV rounds; grid = rows.
extern "C" __global__ void finish_int8_gemm(void* y, int y_f32, const int* acc, const float* row_scale,
                                            const float* scales, float out_scale, const T* bias, int cols) {
  pdl_enter();
  const size_t o = (size_t)blockIdx.x * cols;
  const float rs = row_scale != nullptr ? row_scale[blockIdx.x] : 1.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float channel = (scales != nullptr ? scales[c] : 1.f) * out_scale;
    const float s = (float)acc[o + c] * channel * rs;
    const float b = bias != nullptr ? tof(bias[c]) : 0.f;
    if (y_f32) reinterpret_cast<float*>(y)[o + c] = s + b;
    else reinterpret_cast<T*>(y)[o + c] = bias != nullptr ? fromf(rnd(s) + b) : fromf(s);
  }
}

// One 16-byte load of codes of kind K (load v of its row) against the step's rows of x (rows ≤ R, rows of
// `in` values): dot[r] = Σ w · x, and, with `zeros`, sum[r] = Σ x (for GPTQ's group zeros). blocks: NVFP4's
// two E4M3 block codes of the load's 32 weights (the first 16 in the low byte).
template <int R, int K>
__device__ __forceinline__ void load_dot(float (&dot)[R], float (&sum)[R], const uint4& wv, const T* x, int in,
                                         int rows, int v, bool zeros, unsigned int blocks) {
  constexpr int PER = Codes<K>::PER;
  constexpr int XV = 16 / sizeof(T);  // x values in one 16-byte load
#pragma unroll
  for (int r = 0; r < R; r++) dot[r] = sum[r] = 0.f;
#pragma unroll
  for (int j = 0; j < PER / XV; j++) {
    float wf[XV];
#pragma unroll
    for (int k = 0; k < XV; k++) wf[k] = code_at<K>(wv, j * XV + k);
    if (K == QK_FP4) {
      const float bs = e4m3_value((blocks >> (8 * ((j * XV) / 16))) & 255);
#pragma unroll
      for (int k = 0; k < XV; k++) wf[k] *= bs;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (R > 1 && r >= rows) break;
      const uint4 xv = reinterpret_cast<const uint4*>(x + (size_t)r * in + (size_t)v * PER)[j];
#pragma unroll
      for (int k = 0; k < XV; k++) {
        const float xk = t_of(xv, k);
        dot[r] += wf[k] * xk;
        if (zeros) sum[r] += xk;
      }
    }
  }
}

// The group scales and zeros (group-wise int4) or the two E4M3 block codes (NVFP4) of row `row`'s U loads from
// v0 (32 apart, a lane's), for loading beside the weights, not after them: a second round trip to memory.
template <int K, int U>
__device__ __forceinline__ void load_row_scales(float (&gs)[U], float (&gz)[U], unsigned int (&blocks)[U],
                                                const QLinear& q, int row, int v0, int nvec, int in) {
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int v = min(v0 + 32 * u, nvec - 1);
    if (K == QK_INT4) {
      const int groups = q.groups;
      const size_t at = groups > 0 ? (size_t)row * groups + v / (nvec / groups) : 0;
      gs[u] = groups > 0 ? q.scales[at] : 0.f;
      gz[u] = groups > 0 && q.zeros != nullptr ? q.zeros[at] : 0.f;
    }
    if (K == QK_FP4) {
      // A load's 32 weights span blocks 2v and 2v + 1 of the row: two adjacent bytes.
      const unsigned char* b = q.blocks + ((size_t)row * in) / 16 + 2 * (size_t)v;
      blocks[u] = b[0] | (unsigned int)b[1] << 8;
    }
  }
}

// y[r, o] = q.out_scale · row_scale[r] · scales[o] · Σ_i x'[r, i] · w[o, i] (+ bias[o]) for a decode step's
// rows, w decoded from its codes as it streams (one warp an output row, GEMV_UNROLL 16-byte loads in flight
// per lane; only registers: the loaded words are read by shifts, never through their address), x' the
// input as the layer's format rounds it (in shared memory, rows · in values, after the first weight loads).
// Group-wise int4 (groups > 0): w = q · gs[o, g] (+ gz[o, g] where zeros are given) over groups of
// in / groups inputs, a multiple of a load's 32; FP4: w = e2m1 · e4m3(block[o, i / 16]). bias may be null.
// Needs in a multiple of 32 and 16-byte aligned x rows. grid = ceil(out · ksplit / 8), 256 threads. R and rows
// as gemv_rows takes them.
template <int R, int K>
__device__ __forceinline__ void gemv_q_rows(void* y, int y_f32, const T* x, const unsigned char* w, const QLinear& q,
                                            int rows, int in, int out, const T* bias, int ksplit) {
  const int gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int o = gw / ksplit, lane = threadIdx.x & 31;
  const bool live = o < out;
  constexpr int PER = Codes<K>::PER;
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (size_t)(live ? o : 0) * (PER == 16 ? in : in / 2));
  const int nvec = in / PER;
  int begin, end;
  split_range(nvec, gw % ksplit, ksplit, begin, end);
  if (!live) end = begin;
  const bool grouped = K == QK_INT4 && q.groups > 0;
  __shared__ float row_scale[GEMV_MAX_ROWS];
  const bool per_token = q.rounding == QIN_INT8_TOKEN;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  // Beside each pass's weights: their group scales and zeros, or NVFP4 block codes.
  struct Scales {
    float gs[GEMV_UNROLL], gz[GEMV_UNROLL];
    unsigned int blocks[GEMV_UNROLL];
  };
  auto side = [&](int v0) {
    Scales sc;
    if (K == QK_INT4 || K == QK_FP4)
      load_row_scales<K, GEMV_UNROLL>(sc.gs, sc.gz, sc.blocks, q, live ? o : 0, v0, nvec, in);
    return sc;
  };
  // One pass: GEMV_UNROLL loads of a lane, decoded and dotted with every row of x.
  auto pass = [&](const uint4 (&wv)[GEMV_UNROLL], const Scales& sc, int v0) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const int v = v0 + 32 * u;
      if (v >= end) break;
      float dot[R], sum[R];
      load_dot<R, K>(dot, sum, wv[u], x, in, rows, v, grouped && q.zeros != nullptr, K == QK_FP4 ? sc.blocks[u] : 0u);
      if (grouped) {
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] += sc.gs[u] * dot[r] + sc.gz[u] * sum[r];
      } else {
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] += dot[r];
      }
    }
  };
  // With the first weight loads in flight: the layer's output scale for this row, and the format's rounding
  // of the input.
  float channel = 1.f;
  auto prologue = [&]() {
    channel = (!grouped && q.scales != nullptr && live ? q.scales[o] : 1.f) * q.out_scale;
    if (q.rounding < 0) return;
    T* xs = reinterpret_cast<T*>(dynamic_shared());
    round_input_rows<K>(xs, row_scale, x, q, rows, in);
    x = xs;
  };
  gemv_stream(wrow, begin + lane, end, pass, prologue, side);
  if (!split_sum<R>(acc, ksplit) || !live) return;
  const float b = bias != nullptr ? tof(bias[o]) : 0.f;
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (R > 1 && r >= rows) break;
    const float s = acc[r] * channel * (per_token ? row_scale[r] : 1.f);
    if (y_f32) reinterpret_cast<float*>(y)[(size_t)r * out + o] = s + b;
    else reinterpret_cast<T*>(y)[(size_t)r * out + o] = bias != nullptr ? fromf(rnd(s) + b) : fromf(s);
  }
}

// One kernel a weight kind, so that each gets the registers its own decoding needs. Dynamic shared memory:
// rows · in values of T where the layer rounds its input.
#define GEMV_Q_ARGS y, y_f32, x, w, q, rows, in, out, bias, ksplit
#define GEMV_Q_KERNEL(NAME, K)                                                                                   \
  extern "C" __global__ void __launch_bounds__(256)                                                             \
  NAME(void* y, int y_f32, const T* x, const unsigned char* w, const QLinear q, int rows, int in, int out, \
       const T* bias, int ksplit) {                                                                              \
    if (rows <= 2) gemv_q_rows<2, K>(GEMV_Q_ARGS);                                                               \
    else if (rows <= 4) gemv_q_rows<4, K>(GEMV_Q_ARGS);                                                          \
    else gemv_q_rows<8, K>(GEMV_Q_ARGS);                                                                         \
  }                                                                                                              \
  /* The one-row step's kernel, as gemv_1 is gemv's (same arguments; rows is 1). */                             \
  extern "C" __global__ void __launch_bounds__(256)                                                             \
  NAME##_1(void* y, int y_f32, const T* x, const unsigned char* w, const QLinear q, int rows, int in, \
           int out,                                                                                             \
           const T* bias, int ksplit) {                                                                          \
    gemv_q_rows<1, K>(GEMV_Q_ARGS);                                                                              \
  }

GEMV_Q_KERNEL(gemv_q_int8, QK_INT8)
GEMV_Q_KERNEL(gemv_q_int4, QK_INT4)
GEMV_Q_KERNEL(gemv_q_fp8, QK_FP8)
GEMV_Q_KERNEL(gemv_q_fp4, QK_FP4)

// A quantized weight dequantized to T [out, in] for steps too wide for the GEMV: its code values times its
// per-channel, group or block scale and `weight_scale` (the input's scale and alpha go to the GEMM).
extern "C" __global__ void dequant_q(T* out, const unsigned char* w, const float* scales, const float* zeros,
                                     const unsigned char* blocks, int groups, int kind, int in, long n,
                                     float weight_scale) {
  pdl_enter();
  for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
    const long o = e / in;
    float q;
    if (kind == QK_INT8) q = (float)(signed char)w[e];
    else if (kind == QK_FP8) q = e4m3_value(w[e]);
    else {
      const unsigned int nib = (e & 1) ? (w[e >> 1] >> 4) : (w[e >> 1] & 15);
      q = kind == QK_FP4 ? e2m1_value(nib) : (float)(nib >= 8 ? (int)nib - 16 : (int)nib);
    }
    float v;
    if (kind == QK_FP4) v = q * e4m3_value(blocks[e / 16]);
    else if (kind == QK_INT4 && groups > 0) {
      const long g = (e % in) / (in / groups);
      v = q * scales[o * groups + g] + (zeros != nullptr ? zeros[o * groups + g] : 0.f);
    } else v = scales != nullptr ? q * scales[o] : q;
    out[e] = fromf(v * weight_scale);
  }
}

// out[r, i] = silu(fg[r, i]) · fg[r, inter + i]: the fused fc|gate GEMM's two halves. One thread an
// element over the whole grid: a row-per-block loop would serialise its loads.
extern "C" __global__ void silu_mul(T* out, const T* fg, int inter, long n) {
  pdl_enter();
  for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
    const long r = e / inter, i = e % inter;
    const T* row = fg + r * 2 * inter;
    const float a = tof(row[i]);
    const float s = rnd(silu(a));
    out[e] = fromf(s * tof(row[inter + i]));
  }
}

// The decode-step fusions (steps of at most GEMV_MAX_ROWS rows, where launches cost more than bytes). Each
// kernel opens a pre-norm block: it adds the previous block's output to the residual and normalizes the
// rows into shared memory (every block for itself: no grid-wide barrier), then runs a GEMV whose warps each
// compute a pair of output rows that the epilogue combines: RoPE's two halves with the qkv bias and the KV
// write (norm_qkv_rope), or SiLU's two halves (norm_gated_mlp). Block 0 writes the updated residual to a
// second buffer, since the other blocks still read the first. Each rounds to T where the unfused ops do.


// xs[r] = rmsnorm(residual[r] + delta[r]) · w for the step's rows (rows ≤ R), by the whole block, 16 bytes a
// load (each thread's loads, every row's, issued before their sums are used: the kernel's opening is
// latency, not bytes); residual_out[r] = the sum (block 0, when delta is given). Needs in · sizeof(T) a
// multiple of 16. Ends with a barrier.
template <int R>
__device__ void norm_rows(T* xs, const T* residual, const T* delta, T* residual_out, const T* w, int rows, int in,
                          float eps) {
  constexpr int V = 16 / sizeof(T);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int nvec = in / V;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // The norm's weight, this thread's first load of it, for the second pass.
  const uint4 w0 = threadIdx.x < nvec ? reinterpret_cast<const uint4*>(w)[threadIdx.x] : zero;
  float ss[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    ss[r] = 0.f;
    if (R > 1 && r >= rows) continue;
    const uint4* res = reinterpret_cast<const uint4*>(residual + (size_t)r * in);
    const uint4* del = reinterpret_cast<const uint4*>(delta + (size_t)r * in);
    for (int c = threadIdx.x; c < nvec; c += blockDim.x) {
      const uint4 a = res[c];
      const uint4 d = delta ? del[c] : zero;
      uint4 sum;
      T* e = reinterpret_cast<T*>(&sum);
#pragma unroll
      for (int k = 0; k < V; k++) {
        const float v = delta ? rnd(t_of(a, k) + t_of(d, k)) : t_of(a, k);
        e[k] = fromf(v);
        ss[r] += v * v;
      }
      reinterpret_cast<uint4*>(xs + (size_t)r * in)[c] = sum;
      if (delta && blockIdx.x == 0) reinterpret_cast<uint4*>(residual_out + (size_t)r * in)[c] = sum;
    }
    ss[r] = warp_sum(ss[r]);
  }
  __shared__ float part[GEMV_MAX_ROWS][32];
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; r++) part[r][warp] = ss[r];
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; r++) {
    if (R > 1 && r >= rows) break;
    float t = 0.f;
    for (int j = 0; j < nwarps; j++) t += part[r][j];
    const float inv = rsqrtf(div_rn(t, (float)in) + eps);
    // Each thread rewrites the elements it wrote above: no barrier needed in between.
    uint4* row = reinterpret_cast<uint4*>(xs + (size_t)r * in);
    for (int c = threadIdx.x; c < nvec; c += blockDim.x) {
      const uint4 wv = c == threadIdx.x ? w0 : reinterpret_cast<const uint4*>(w)[c];
      uint4 x = row[c];
      T* e = reinterpret_cast<T*>(&x);
#pragma unroll
      for (int k = 0; k < V; k++) e[k] = fromf(t_of(wv, k) * rnd(tof(e[k]) * inv));
      row[c] = x;
    }
  }
  __syncthreads();
}

// The weights a warp of a fused kernel streams: P rows (rows[p] of the weight at w[p], whose codes are of
// kind K; for the quantized kinds q[p] is the layer: scales, zeros, NVFP4 blocks), each dotted with its own
// input rows xs[p] (the same input for every p where the layers round it alike).
template <int P>
struct PairRows {
  const unsigned char* w[P];
  const QLinear* q[P];  // null for QK_T
  const T* xs[P];
  int rows[P];
  // The quantized layers' per-row output scale (channel scale · out_scale) and whether the row's int8_token
  // scale multiplies it too: read with the first weights, so their latency hides behind the norm's.
  float out_scale[P];
  bool per_token[P];
};

// The group scales and zeros (group-wise int4) or the two E4M3 block codes (NVFP4) a lane's U loads of P
// rows need: loaded beside the weights (as soon as their addresses are known), not after them.
template <int P, int U>
struct LoadScales {
  float gs[P][U], gz[P][U];
  unsigned int blocks[P][U];
};

template <int P, int K>
__device__ __forceinline__ void load_scales(LoadScales<P, Codes<K>::UNROLL>& sc, const PairRows<P>& pr, int v0,
                                            int nvec, int in) {
#pragma unroll
  for (int p = 0; p < P; p++)
    load_row_scales<K, Codes<K>::UNROLL>(sc.gs[p], sc.gz[p], sc.blocks[p], *pr.q[p], pr.rows[p], v0, nvec, in);
}

// Bytes of a weight row of `in` values of kind K.
template <int K>
__device__ __forceinline__ size_t row_bytes(int in) {
  return (size_t)in * 16 / Codes<K>::PER;
}

// The first pass of pair_dot's weight loads for a warp's P rows, issued before the block normalises its
// input (they do not depend on it), so that the norm's latency hides behind theirs.
template <int P, int K>
__device__ __forceinline__ void pair_prefetch(uint4 (&wv)[P][Codes<K>::UNROLL], const PairRows<P>& pr, int in,
                                              bool live) {
  const int lane = threadIdx.x & 31, nvec = live ? in / Codes<K>::PER : 0;
#pragma unroll
  for (int p = 0; p < P; p++)
    gemv_load<Codes<K>::UNROLL>(
        wv[p], reinterpret_cast<const uint4*>(pr.w[p] + (live ? pr.rows[p] : 0) * row_bytes<K>(in)), lane, nvec);
}

// acc[p][r] = Σ_i xs[p][r, i] · w_p[rows[p], i] for a warp's P weight rows (rows < R of the inputs), their
// loads in flight together (the first pass's already loaded by pair_prefetch), group and NVFP4 block scales
// applied (per-channel scales are the caller's); every lane gets the sums. Needs in · sizeof(T) a multiple
// of 16, in a multiple of 32 for the quantized kinds, and 16-byte aligned rows.
template <int R, int P, int K>
__device__ __forceinline__ void pair_dot(float (&acc)[P][R], const PairRows<P>& pr, int rows, int in,
                                         const uint4 (&first)[P][Codes<K>::UNROLL],
                                         const LoadScales<P, Codes<K>::UNROLL>& first_scales) {
  constexpr int PER = Codes<K>::PER, U = Codes<K>::UNROLL;
  const int lane = threadIdx.x & 31;
  const int nvec = in / PER;
#pragma unroll
  for (int p = 0; p < P; p++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[p][r] = 0.f;
  auto pass = [&](const uint4 (&wv)[P][U], const LoadScales<P, U>& sc, int v0) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int v = v0 + 32 * u;
      if (v >= nvec) break;
#pragma unroll
      for (int p = 0; p < P; p++) {
        const QLinear* q = pr.q[p];
        const bool grouped = K == QK_INT4 && q->groups > 0;
        float dot[R], sum[R];
        load_dot<R, K>(dot, sum, wv[p][u], pr.xs[p], in, rows, v, grouped && q->zeros != nullptr,
                       K == QK_FP4 ? sc.blocks[p][u] : 0u);
        if (grouped) {
#pragma unroll
          for (int r = 0; r < R; r++) acc[p][r] += sc.gs[p][u] * dot[r] + sc.gz[p][u] * sum[r];
        } else {
#pragma unroll
          for (int r = 0; r < R; r++) acc[p][r] += dot[r];
        }
      }
    }
  };
  pass(first, first_scales, lane);
  for (int v0 = lane + 32 * U; v0 < nvec; v0 += 32 * U) {
    uint4 wv[P][U];
#pragma unroll
    for (int p = 0; p < P; p++)
      gemv_load<U>(wv[p], reinterpret_cast<const uint4*>(pr.w[p] + pr.rows[p] * row_bytes<K>(in)), v0, nvec);
    LoadScales<P, U> sc;
    if (K == QK_INT4 || K == QK_FP4) load_scales<P, K>(sc, pr, v0, nvec, in);
    pass(wv, sc, v0);
  }
#pragma unroll
  for (int p = 0; p < P; p++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[p][r] = warp_sum(acc[p][r]);
}

// The plain-weight pair dot over one input with its first pass loaded right away (no prologue to hide).
template <int R, int P>
__device__ __forceinline__ void gemv_pair_dot(float (&acc)[P][R], const T* xs, const T* w, const int (&rows)[P],
                                              int in) {
  PairRows<P> pr;
#pragma unroll
  for (int p = 0; p < P; p++) {
    pr.w[p] = reinterpret_cast<const unsigned char*>(w);
    pr.q[p] = nullptr;
    pr.xs[p] = xs;
    pr.rows[p] = rows[p];
  }
  uint4 first[P][Codes<QK_T>::UNROLL];
  pair_prefetch<P, QK_T>(first, pr, in, true);
  LoadScales<P, Codes<QK_T>::UNROLL> none;
  pair_dot<R, P, QK_T>(acc, pr, R, in, first, none);
}

// Whether two quantized layers round their input alike (then they share one rounded copy).
__device__ __forceinline__ bool same_input(const QLinear* a, const QLinear* b) {
  return a == b || (a->rounding == b->rounding && a->prequant == b->prequant && a->smoother == b->smoother &&
                    a->in_scale == b->in_scale);
}

// Output p of row r of a warp's rows: the sum times the layer's per-channel scale, output scale and
// (int8_token) the row's scale, rounded to T as a GEMV stores it, plus the bias (when given) rounded again.
// Selected by unrolled compares, since indexing the accumulators by a lane-dependent r would move them to
// local memory. The odd p are the pair's second layer (its input the second copy, unless the two share one).
template <int R, int K, int P>
__device__ __forceinline__ float pair_value(const float (&acc)[P][R], int p, int r, const PairRows<P>& pr,
                                            const float* row_scale, const T* bias, int bias_row) {
  float a = 0.f;
#pragma unroll
  for (int k = 0; k < R; k++)
    if (k == r) a = acc[p][k];
  if (K != QK_T) {
    a *= pr.out_scale[p];
    const int slot = (p & 1) && !same_input(pr.q[0], pr.q[1]) ? 1 : 0;  // the shared copy's scales are p 0's
    if (pr.per_token[p]) a *= row_scale[slot * GEMV_MAX_ROWS + r];
  }
  a = rnd(a);
  return bias != nullptr ? rnd(a + tof(bias[bias_row])) : a;
}

// A fused kernel's opening: the warp's first weight loads, pdl_enter, the block's norm of its rows into
// shared memory, each quantized layer's input rounding of them (a second copy where the pair's two layers
// round differently), then the warp's dot products of its P rows (pairs of the two layers: p even the
// first's, odd the second's). false for a warp past the last pair (after the barriers, which every thread
// must reach). Dynamic shared memory: 2 · rows · in values of T.
template <int R, int K, int P>
__device__ __forceinline__ bool norm_then_pair_dot(float (&acc)[P][R], PairRows<P>& pr, float* row_scale, bool live,
                                                   int rows, const T* residual, const T* delta, T* residual_out,
                                                   const T* norm_w, int in, float eps) {
  uint4 first[P][Codes<K>::UNROLL];
  pair_prefetch<P, K>(first, pr, in, live);
  LoadScales<P, Codes<K>::UNROLL> first_scales;
  if (K != QK_T) {
    const int nvec = in / Codes<K>::PER;
    if (live && (K == QK_INT4 || K == QK_FP4)) load_scales<P, K>(first_scales, pr, threadIdx.x & 31, nvec, in);
#pragma unroll
    for (int p = 0; p < P; p++) {
      const QLinear* q = pr.q[p];
      const bool grouped = K == QK_INT4 && q->groups > 0;
      pr.out_scale[p] = (!grouped && q->scales != nullptr && live ? q->scales[pr.rows[p]] : 1.f) * q->out_scale;
      pr.per_token[p] = q->rounding == QIN_INT8_TOKEN;
    }
  }
  pdl_enter();
  T* xs = reinterpret_cast<T*>(dynamic_shared());
  norm_rows<R>(xs, residual, delta, residual_out, norm_w, rows, in, eps);
#pragma unroll
  for (int p = 0; p < P; p++) pr.xs[p] = xs;
  if (K != QK_T) {
    const QLinear* a = pr.q[0];
    const QLinear* b = pr.q[1];
    if (!same_input(a, b) && b->rounding >= 0) {
      T* xb = xs + (size_t)rows * in;
#pragma unroll
      for (int p = 1; p < P; p += 2) pr.xs[p] = xb;
      // Its closing barrier also keeps a's rounding in place below from rewriting what this copy reads.
      round_input_rows<K>(xb, row_scale + GEMV_MAX_ROWS, xs, *b, rows, in);
    }
    if (a->rounding >= 0) round_input_rows<K>(xs, row_scale, xs, *a, rows, in);
  }
  if (!live) return false;
  pair_dot<R, P, K>(acc, pr, rows, in, first, first_scales);
  return true;
}

// A warp's P / 2 pairs of rows of a fused kernel's two weights: w and w_b (plain weights of T, or quantized
// codes; kernel arguments, so that the first loads wait on nothing), and for quantized ones their layers qa
// and qb; pair m is rows row_a + m of w and row_b + m of w_b.
template <int P>
__device__ __forceinline__ PairRows<P> pair_of(const void* w, const void* w_b, const QLinear* qa, const QLinear* qb,
                                               int row_a, int row_b) {
  PairRows<P> pr;
#pragma unroll
  for (int m = 0; m < P / 2; m++) {
    pr.q[2 * m] = qa;
    pr.q[2 * m + 1] = qb;
    pr.w[2 * m] = reinterpret_cast<const unsigned char*>(w);
    pr.w[2 * m + 1] = reinterpret_cast<const unsigned char*>(w_b);
    pr.rows[2 * m] = row_a + m;
    pr.rows[2 * m + 1] = row_b + m;
  }
  return pr;
}

// qkv = (rmsnorm(residual + delta) · w_norm) · wᵀ + bias, q and k rotated (gpt-neox halves), k and v written to
// each row's cache slot (none for slot < 0). A warp takes one pair of a head's dims: RoPE's (p, p + rotary/2),
// or, past the rotary dims, two plain ones. The weight: w (plain, K = QK_T) or the quantized layer q.
// grid = ceil(heads · head/2 / 8), 256 threads, dynamic shared memory as norm_then_pair_dot says.
template <int R, int K>
__device__ void norm_qkv_rope_rows(T* qkv, T* residual_out, const T* residual, const T* delta, const T* norm_w,
                                   float eps, const void* w, const QLinear* q, const T* bias, const int* positions,
                                   const int* slots, KV* kcache, KV* vcache, float kv_scale, const float* inv_freq,
                                   int rows, int in, int num_heads, int num_kv, int head, int rotary) {
  const int heads = num_heads + 2 * num_kv;
  const int pair = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const bool live = pair < heads * (head / 2);
  const int h = pair / (head / 2), p = pair % (head / 2), rh = rotary / 2;
  const int da = p < rh ? p : rotary + (p - rh);
  const int db = p < rh ? p + rh : rotary + (p - rh) + (head - rotary) / 2;
  PairRows<2> pr = pair_of<2>(w, w, q, q, h * head + da, h * head + db);
  __shared__ float row_scale[2 * GEMV_MAX_ROWS];
  float acc[2][R];
  if (!norm_then_pair_dot<R, K, 2>(acc, pr, row_scale, live, rows, residual, delta, residual_out, norm_w, in, eps))
    return;
  const int r = threadIdx.x & 31;  // lane r finishes step row r
  if (r >= rows) return;
  float a = pair_value<R, K, 2>(acc, 0, r, pr, row_scale, bias, pr.rows[0]);
  float b = pair_value<R, K, 2>(acc, 1, r, pr, row_scale, bias, pr.rows[1]);
  if (p < rh && h < num_heads + num_kv) {
    float s, c;
    sincosf((float)positions[r] * inv_freq[p], &s, &c);
    c = rnd(c);
    s = rnd(s);
    const float ra = rnd(rnd(a * c) - rnd(b * s));
    b = rnd(rnd(b * c) + rnd(a * s));
    a = ra;
  }
  T* row = qkv + (size_t)r * heads * head;
  row[pr.rows[0]] = fromf(a);
  row[pr.rows[1]] = fromf(b);
  const int slot = slots[r];
  if (h < num_heads || slot < 0) return;
  const bool isK = h < num_heads + num_kv;
  KV* cache = (isK ? kcache : vcache) + (size_t)slot * num_kv * head + (h - num_heads - (isK ? 0 : num_kv)) * head;
  cache[da] = kv_put(a, kv_scale);
  cache[db] = kv_put(b, kv_scale);
}

// Pairs of the MLP's fc and gate rows a warp computes: more than one for the quantized kinds, whose rows are
// few loads a lane, so that fewer blocks repeat the norm and the input's rounding (608 blocks of one pair a
// warp for Qwen2.5-0.5B: two waves at four blocks an SM). backends/cuda/fused-decode.ts sizes the grid by
// the same numbers (mlpPairs).
#ifndef KILN_MLP_PAIRS
#define KILN_MLP_PAIRS 1
#endif
#ifndef KILN_MLP_PAIRS_Q
#define KILN_MLP_PAIRS_Q 2
#endif
// Blocks an SM the quantized ones are compiled to fit (their registers held to 80 for three: Qwen2.5-0.5B's
// 304 blocks of two pairs a warp in one wave on 132 SMs).
#ifndef KILN_MLP_Q_BLOCKS
#define KILN_MLP_Q_BLOCKS 3
#endif

// out = silu(g) · u where g and u are row i of (rmsnorm(residual + delta) · w_norm) · wᵀ + bias for the MLP's
// fc and gate: plain, w is the fused fc|gate weight [2 · inter, in] (rows i and inter + i, bias likewise);
// quantized, qa and qb are the two layers (the same fused layer, its rows i and b_row + i), bias_a and bias_b
// their biases. A warp takes M consecutive i. qn: the layer that reads out (the down projection), whose
// static input rounding (round_static) out then holds, in units of its input's scale; rounding -1: out as it
// is. grid = ceil(inter / (8 · M)), 256 threads, dynamic shared memory as norm_then_pair_dot says.
template <int R, int K, int M>
__device__ void norm_gated_mlp_rows(T* out, T* residual_out, const T* residual, const T* delta, const T* norm_w,
                                    float eps, const void* w, const void* w_b, const QLinear* qa, const QLinear* qb,
                                    int b_row, const T* bias_a, const T* bias_b, const QLinear* qn, int rows, int in,
                                    int inter) {
  const int i0 = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * M;
  const bool live = i0 < inter;
  // Rows past inter (when M does not divide it) load the last one's weights and store nothing.
  const int clamp = max(0, min(i0, inter - M));
  PairRows<2 * M> pr = pair_of<2 * M>(w, w_b, qa, qb, clamp, b_row + clamp);
  __shared__ float row_scale[2 * GEMV_MAX_ROWS];
  float acc[2 * M][R];
  if (!norm_then_pair_dot<R, K, 2 * M>(acc, pr, row_scale, live, rows, residual, delta, residual_out, norm_w, in,
                                       eps))
    return;
  const int r = threadIdx.x & 31;
  if (r >= rows) return;
#pragma unroll
  for (int m = 0; m < M; m++) {
    const int i = clamp + m;
    if (i < i0) continue;
    const float a = pair_value<R, K, 2 * M>(acc, 2 * m, r, pr, row_scale, bias_a, pr.rows[2 * m]);
    const float b = pair_value<R, K, 2 * M>(acc, 2 * m + 1, r, pr, row_scale, bias_b, pr.rows[2 * m + 1]);
    const T h = fromf(rnd(silu(a)) * b);
    // (qn's factors loaded here, not at the start: held across the dot products they made the kernel spill.)
    out[(size_t)r * inter + i] = K == QK_T ? h : fromf(round_static(*qn, static_factors(*qn, i), tof(h)));
  }
}

// The kernels of each weight kind: steps of 2–8 rows (compiled for 2, 4 and 8, rows rounding up) and a
// one-row build (`_1`, in the registers one row needs, as gemv_1 is gemv's). w is the weight (plain) or its
// codes, q its QLinear (plain: null); for the MLP, w_b and qb are the gate's (a fused [fc | gate]: w and qa).
#define FUSED_ROWS(CALL, K)      \
  if (rows <= 2) CALL(2, K);     \
  else if (rows <= 4) CALL(4, K); \
  else CALL(8, K)

#define QKV_PARAMS                                                                                              \
  T *qkv, T *residual_out, const T *residual, const T *delta, const T *norm_w, float eps, const void *w,        \
      const QLinear q, const T *bias, const int *positions, const int *slots, KV *kcache, KV *vcache, float kv_scale,            \
      const float *inv_freq, int rows, int in, int num_heads, int num_kv, int head, int rotary
#define QKV_CALL(R, K)                                                                                          \
  norm_qkv_rope_rows<R, K>(qkv, residual_out, residual, delta, norm_w, eps, w, &q, bias, positions, slots, kcache, \
                           vcache, kv_scale, inv_freq, rows, in, num_heads, num_kv, head, rotary)
#define MLP_PARAMS                                                                                              \
  T *out, T *residual_out, const T *residual, const T *delta, const T *norm_w, float eps, const void *w,        \
      const void *w_b, const QLinear qa, const QLinear qb, int b_row, const T *bias_a, const T *bias_b,         \
      const QLinear qn, int rows, int in, int inter
#define MLP_CALL(R, K)                                                                                          \
  norm_gated_mlp_rows<R, K, K == QK_T ? KILN_MLP_PAIRS : KILN_MLP_PAIRS_Q>(                                     \
      out, residual_out, residual, delta, norm_w, eps, w, w_b, &qa, &qb, b_row, bias_a, bias_b, &qn, rows, in, inter)

#define FUSED_KERNELS_OF(SUFFIX, K)                                                                             \
  extern "C" __global__ void __launch_bounds__(256) norm_qkv_rope##SUFFIX(QKV_PARAMS) { FUSED_ROWS(QKV_CALL, K); } \
  extern "C" __global__ void __launch_bounds__(256) norm_qkv_rope##SUFFIX##_1(QKV_PARAMS) { QKV_CALL(1, K); }  \
  extern "C" __global__ void __launch_bounds__(256) norm_gated_mlp##SUFFIX(MLP_PARAMS) { FUSED_ROWS(MLP_CALL, K); } \
  extern "C" __global__ void __launch_bounds__(256) norm_gated_mlp##SUFFIX##_1(MLP_PARAMS) { MLP_CALL(1, K); }
// The quantized kinds' fusions come for one row alone (batch-1 decode, where launches cost the most): their
// decoding made each multi-row instance a minute of compile time. Wider decode steps take the quantized GEMV.
#define FUSED_KERNELS_Q(SUFFIX, K)                                                                              \
  extern "C" __global__ void __launch_bounds__(256) norm_qkv_rope##SUFFIX##_1(QKV_PARAMS) { QKV_CALL(1, K); }  \
  extern "C" __global__ void __launch_bounds__(256, KILN_MLP_Q_BLOCKS) norm_gated_mlp##SUFFIX##_1(MLP_PARAMS) {  \
    MLP_CALL(1, K);                                                                                             \
  }

FUSED_KERNELS_OF(, QK_T)
FUSED_KERNELS_Q(_q_int8, QK_INT8)
FUSED_KERNELS_Q(_q_int4, QK_INT4)
FUSED_KERNELS_Q(_q_fp8, QK_FP8)
FUSED_KERNELS_Q(_q_fp4, QK_FP4)

// out = silu(a) · b elementwise, for fc and gate held as two layers (formats that round each one's input).
extern "C" __global__ void silu_mul_pair(T* out, const T* a, const T* b, long n) {
  pdl_enter();
  for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
    const float v = tof(a[e]);
    out[e] = fromf(rnd(silu(v)) * tof(b[e]));
  }
}

// Mixture of experts, one rank's share (experts first .. first + local): routing (moe_route), then each
// row's chosen experts as GEMVs on expert-indexed weights (moe_expert_act, moe_expert_out), the shared
// expert through the same kernels (experts == nullptr: expert 0, weight 1) and its sigmoid gate
// (moe_add_gated). TensorRT-LLM's layout: fc [E, 2·inter, hidden] as [up ; gate], proj [E, hidden, inter],
// the router [E, hidden] in float32.
#define MOE_MAX_EXPERTS 256

// experts[r, j], weights[r, j]: row r's top_k experts by router softmax (float64), highest first, ties to the
// lower index, renormalized over the k when asked. grid = rows, 256 threads.
extern "C" __global__ void moe_route(int* experts, float* weights, const T* x, const float* router, int hidden,
                                     int num_experts, int top_k, int renormalize) {
  pdl_enter();
  __shared__ float logits[MOE_MAX_EXPERTS];
  const int r = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* xr = x + (size_t)r * hidden;
  for (int e = warp; e < num_experts; e += blockDim.x >> 5) {
    float s = 0.f;
    for (int i = lane; i < hidden; i += 32) s += tof(xr[i]) * router[(size_t)e * hidden + i];
    s = warp_sum(s);
    if (lane == 0) logits[e] = s;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  double mx = -1e300, sum = 0.0;
  for (int e = 0; e < num_experts; e++) mx = fmax(mx, (double)logits[e]);
  for (int e = 0; e < num_experts; e++) sum += exp((double)logits[e] - mx);
  unsigned long long taken[MOE_MAX_EXPERTS / 64] = {0, 0, 0, 0};
  double picked[16], total = 0.0;
  for (int j = 0; j < top_k; j++) {
    int best = -1;
    for (int e = 0; e < num_experts; e++)
      if (!(taken[e >> 6] >> (e & 63) & 1) && (best < 0 || logits[e] > logits[best])) best = e;
    taken[best >> 6] |= 1ull << (best & 63);
    picked[j] = exp((double)logits[best] - mx) / sum;
    total += picked[j];
    experts[r * top_k + j] = best;
  }
  for (int j = 0; j < top_k; j++) weights[r * top_k + j] = (float)(renormalize ? picked[j] / total : picked[j]);
}

// act[r·k + j, i] = silu(gate_e · x_r) · (up_e · x_r) for expert e = experts[r, j] (skipped: zeros, when another
// rank holds it). grid = (rows · top_k, ceil(inter / 8)) (rows on x, whose limit is 2^31 − 1), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
moe_expert_act(T* act, const T* x, const T* fc, const int* experts, int first, int local, int hidden, int inter,
               int top_k) {
  pdl_enter();
  const int i = (blockIdx.y * blockDim.x + threadIdx.x) >> 5, rj = blockIdx.x;
  if (i >= inter) return;
  const int e = (experts != nullptr ? experts[rj] : 0) - first;
  T* out = act + (size_t)rj * inter + i;
  if (e < 0 || e >= local) {
    if ((threadIdx.x & 31) == 0) *out = fromf(0.f);
    return;
  }
  const int rows[2] = {(e * 2 * inter) + i, (e * 2 * inter) + inter + i};
  float acc[2][1];
  gemv_pair_dot<1, 2>(acc, x + (size_t)(rj / top_k) * hidden, fc, rows, hidden);
  if ((threadIdx.x & 31) == 0) {
    const float up = rnd(acc[0][0]), gate = rnd(acc[1][0]);
    *out = fromf(rnd(silu(gate)) * up);
  }
}

// out[r, h] = Σ_j weights[r, j] · proj_e[h] · act[r·k + j] over row r's experts (this rank's). grid =
// (rows, ceil(hidden / 8)), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
moe_expert_out(T* out, const T* act, const T* proj, const int* experts, const float* weights, int first, int local,
               int hidden, int inter, int top_k) {
  pdl_enter();
  const int h = (blockIdx.y * blockDim.x + threadIdx.x) >> 5, r = blockIdx.x;
  if (h >= hidden) return;
  float y = 0.f;
  for (int j = 0; j < top_k; j++) {
    const int e = (experts != nullptr ? experts[r * top_k + j] : 0) - first;
    if (e < 0 || e >= local) continue;
    const int rows[1] = {e * hidden + h};
    float acc[1][1];
    gemv_pair_dot<1, 1>(acc, act + (size_t)(r * top_k + j) * inter, proj, rows, inter);
    y += (weights != nullptr ? weights[r * top_k + j] : 1.f) * acc[0][0];
  }
  if ((threadIdx.x & 31) == 0) out[(size_t)r * hidden + h] = fromf(y);
}

// out[r] += sigmoid(gate · x_r) · shared[r]: the shared expert behind its gate. grid = rows, 256 threads.
extern "C" __global__ void moe_add_gated(T* out, const T* shared, const T* x, const T* gate, int hidden) {
  pdl_enter();
  const int r = blockIdx.x;
  float s = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) s += tof(x[(size_t)r * hidden + i]) * tof(gate[i]);
  const float g = 1.f / (1.f + __expf(-block_sum(s)));
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const size_t at = (size_t)r * hidden + i;
    out[at] = fromf(tof(out[at]) + g * tof(shared[at]));
  }
}

// Adds the qkv bias (when given), rotates q and k of each qkv row (gpt-neox halves) at its position and writes k and v to the row's KV cache
// slot (skipped for slot < 0: padding). Cache layout: [slot][kv head][head dim]. grid = rows.
extern "C" __global__ void rope_cache(T* qkv, const T* bias, const int* positions, const int* slots, KV* kcache,
                                      KV* vcache, float kv_scale, const float* inv_freq, int num_heads, int num_kv,
                                      int head, int rotary) {
  pdl_enter();
  const int r = blockIdx.x;
  const int stride = (num_heads + 2 * num_kv) * head;
  T* row = qkv + (size_t)r * stride;
  if (bias != nullptr) {  // the qkv bias, fused here to save a launch
    for (int i = threadIdx.x; i < stride; i += blockDim.x) row[i] = fromf(tof(row[i]) + tof(bias[i]));
    __syncthreads();
  }
  const int half = rotary / 2;
  const float pos = (float)positions[r];
  for (int t = threadIdx.x; t < (num_heads + num_kv) * half; t += blockDim.x) {
    const int h = t / half, i = t % half;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);  // pos·inv_freq rounded to float, as transformers' float32 matmul
    c = rnd(c);
    s = rnd(s);
    T* v = row + h * head;
    const float a = tof(v[i]), b = tof(v[i + half]);
    v[i] = fromf(rnd(a * c) - rnd(b * s));
    v[i + half] = fromf(rnd(b * c) + rnd(a * s));
  }
  __syncthreads();
  const int slot = slots[r];
  if (slot < 0) return;
  const int kv = num_kv * head;
  const T* k = row + num_heads * head;
  const T* vv = k + kv;
  for (int i = threadIdx.x; i < kv; i += blockDim.x) {
    kcache[(size_t)slot * kv + i] = kv_put(tof(k[i]), kv_scale);
    vcache[(size_t)slot * kv + i] = kv_put(tof(vv[i]), kv_scale);
  }
}

#define ATT_WARPS 16
// Keys a warp loads together before using any, for PL head dims a lane: 8 for heads of up to 64 (eight
// keys' loads in flight took an H200's batch-1 step from 0.700 to 0.685 ms at contexts of 128–256, where
// four had left each warp two to four dependent rounds), 4 for larger heads, whose registers would spill.
// ATT_GROUP overrides it (an A/B switch).
#ifdef ATT_GROUP
#define ATT_KEYS(PL) ATT_GROUP
#else
#define ATT_KEYS(PL) ((PL) <= 2 ? 8 : 4)
#endif
#define MAX_HEAD 256

// Online softmax of one query row and head over keys [t_begin, t_end) of its paged KV cache, by one block of
// 32 × ATT_WARPS threads: each warp takes every ATT_WARPS-th group of ATT_KEYS(PL) keys, lanes split the head
// dimension (PL dims a lane), the group's keys and values all loaded before any is used, and the warps'
// results are merged in shared memory. On return (after a barrier) ml[0] is the block's maximum score (−∞
// when the range is empty), ml[1] the sum of exp(score − max) and acc[d] the sum of exp(score − max) · v[d].
template <int PL>
__device__ void attend_lanes(const T* q, const KV* kcache, const KV* vcache, float kv_scale, const int* table,
                             int t_begin, int t_end, int kvh, int num_kv, int head, int tpb, float scale, float* ml,
                             float* acc_out, float* sm, float* sl, float (*sacc)[MAX_HEAD]) {
  constexpr int GROUP = ATT_KEYS(PL);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float qv[PL], acc[PL];
#pragma unroll
  for (int j = 0; j < PL; j++) {
    const int d = lane + 32 * j;
    qv[j] = d < head ? tof(q[d]) : 0.f;
    acc[j] = 0.f;
  }
  float m = NEG_INF, l = 0.f;
  const int kv_stride = num_kv * head;
  for (int t0 = t_begin + warp * GROUP; t0 < t_end; t0 += ATT_WARPS * GROUP) {
    float kx[GROUP][PL], vx[GROUP][PL], s[GROUP];
#pragma unroll
    for (int u = 0; u < GROUP; u++) {
      const int t = min(t0 + u, t_end - 1);
      const size_t base = ((size_t)table[t / tpb] * tpb + t % tpb) * kv_stride + kvh * head;
#pragma unroll
      for (int j = 0; j < PL; j++) {
        const int d = lane + 32 * j;
        kx[u][j] = d < head ? kv_get(kcache[base + d], kv_scale) : 0.f;
        vx[u][j] = d < head ? kv_get(vcache[base + d], kv_scale) : 0.f;
      }
    }
    float m2 = m;
#pragma unroll
    for (int u = 0; u < GROUP; u++) {
      s[u] = 0.f;
#pragma unroll
      for (int j = 0; j < PL; j++) s[u] += qv[j] * kx[u][j];
      s[u] = t0 + u < t_end ? warp_sum(s[u]) * scale : NEG_INF;
      m2 = fmaxf(m2, s[u]);
    }
    const float correction = __expf(m - m2);
    float p[GROUP];
    l *= correction;
#pragma unroll
    for (int u = 0; u < GROUP; u++) {
      p[u] = __expf(s[u] - m2);
      l += p[u];
    }
#pragma unroll
    for (int j = 0; j < PL; j++) {
      float a = acc[j] * correction;
#pragma unroll
      for (int u = 0; u < GROUP; u++) a += p[u] * vx[u][j];
      acc[j] = a;
    }
    m = m2;
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < PL; j++) {
    const int d = lane + 32 * j;
    if (d < head) sacc[warp][d] = acc[j];
  }
  __syncthreads();
  float mall = NEG_INF;
  for (int w = 0; w < ATT_WARPS; w++) mall = fmaxf(mall, sm[w]);
  if (threadIdx.x == 0) {
    float lall = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) lall += sm[w] == NEG_INF ? 0.f : sl[w] * __expf(sm[w] - mall);
    ml[0] = mall;
    ml[1] = lall;
  }
  for (int d = threadIdx.x; d < head; d += blockDim.x) {
    float v = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) v += sm[w] == NEG_INF ? 0.f : sacc[w][d] * __expf(sm[w] - mall);
    acc_out[d] = v;
  }
  __syncthreads();
}

// attend_lanes for the head size at hand (≤ MAX_HEAD): as few dims a lane as cover it. kiln build compiles
// the engine's size alone (KILN_HEAD_LANES), so that attention takes the registers that size needs; without
// it (op tests) every size is compiled in.
__device__ void attend(const T* q, const KV* kcache, const KV* vcache, float kv_scale, const int* table, int t_begin,
                       int t_end, int kvh, int num_kv, int head, int tpb, float scale, float* ml, float* acc_out) {
  // The warps' partial results, declared here once (in the template each head size would get its own).
  __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
  __shared__ float sacc[ATT_WARPS][MAX_HEAD];
#define ATTEND(PL)                                                                                              \
  attend_lanes<PL>(q, kcache, vcache, kv_scale, table, t_begin, t_end, kvh, num_kv, head, tpb, scale, ml, acc_out, sm, \
                   sl, sacc)
#ifdef KILN_HEAD_LANES
  ATTEND(KILN_HEAD_LANES);
#else
  if (head <= 32) ATTEND(1);
  else if (head <= 64) ATTEND(2);
  else if (head <= 128) ATTEND(4);
  else ATTEND(8);
#endif
#undef ATTEND
}

// Attention's output value in T, then, for qn (the dense layer that reads it; rounding -1: none; f: the
// column's static_factors), as that layer's format rounds its input (round_static), in units of its scale.
// Zero (padding rows) stays zero either way.
__device__ __forceinline__ T attention_out(float v, const QLinear& qn, float2 f) {
  const T t = fromf(v);
  return qn.rounding < 0 ? t : fromf(round_static(qn, f, tof(t)));
}

// A thread's factors for column h · head + threadIdx.x (the one it writes, heads being at most a block's
// threads), before the PDL wait.
__device__ __forceinline__ float2 attention_factors(const QLinear& qn, int h, int head) {
  return threadIdx.x < head ? static_factors(qn, h * head + threadIdx.x) : make_float2(1.f, 1.f);
}

// Causal attention of each query row and head over its sequence: row_seq[r] is the row's sequence (-1:
// padding), row_pos[r] its position (it sees keys 0..pos). qn: as attention_out takes it. grid = rows ·
// num_heads, a row's heads adjacent so that the heads sharing a KV head run together and read its keys and
// values from L2 after the first. block = 32 × ATT_WARPS.
extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
attention(T* out, const T* qkv, const KV* kcache, const KV* vcache, float kv_scale, const int* row_seq, const int* row_pos,
          const int* block_tables, int max_blocks, int num_heads, int num_kv, int head, int tpb, float scale,
          const QLinear qn) {
  const int r = blockIdx.x / num_heads, h = blockIdx.x % num_heads;
  const int seq = row_seq[r];  // step metadata, copied before the step's first kernel: read before the wait
  const int pos = row_pos[r];
  const float2 f = attention_factors(qn, h, head);
  pdl_enter();
  T* o = out + ((size_t)r * num_heads + h) * head;
  if (seq < 0) {
    for (int d = threadIdx.x; d < head; d += blockDim.x) o[d] = fromf(0.f);
    return;
  }
  __shared__ float ml[2], acc[MAX_HEAD];
  const T* q = qkv + (size_t)r * (num_heads + 2 * num_kv) * head + h * head;
  attend(q, kcache, vcache, kv_scale, block_tables + (size_t)seq * max_blocks, 0, pos + 1, h / (num_heads / num_kv), num_kv,
         head, tpb, scale, ml, acc);
  if (threadIdx.x < head) o[threadIdx.x] = attention_out(acc[threadIdx.x] / ml[1], qn, f);
}

// out[i] = x[rows[i]]; grid = number of rows gathered.
extern "C" __global__ void gather_rows(T* out, const T* x, const int* rows, int cols) {
  pdl_enter();
  const T* src = x + (size_t)rows[blockIdx.x] * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(size_t)blockIdx.x * cols + c] = src[c];
}

// Greedy choice per logits row, in one launch of grid (rows, ARGMAX_SPLIT) so that a 152k-entry row is read
// by many blocks at once: each block's slice gives its maximum (first index on ties) and the sum of
// exp(x − that maximum); the last block of a row to finish merges the slices into the token and its
// log-softmax (the threadfence-reduction pattern, as attention_split merges: one launch, not two).
#define ARGMAX_SPLIT 128

// (best, sum of exp(x − best), first index of best) of two parts, merged: the running state of the greedy
// choice. A part that saw only −∞ (or nothing) has best −∞ and sum 0.
struct ArgmaxState {
  float best, sum;
  int arg;
};

__device__ __forceinline__ ArgmaxState argmax_merge(ArgmaxState a, ArgmaxState b) {
  const float m = fmaxf(a.best, b.best);
  if (m == NEG_INF) return {NEG_INF, 0.f, min(a.arg, b.arg)};
  const float sa = a.best == NEG_INF ? 0.f : a.sum * __expf(a.best - m);
  const float sb = b.best == NEG_INF ? 0.f : b.sum * __expf(b.best - m);
  const int arg = b.best > a.best || (b.best == a.best && b.arg < a.arg) ? b.arg : a.arg;
  return {m, sa + sb, arg};
}

__device__ __forceinline__ ArgmaxState argmax_warp(ArgmaxState s) {
  for (int o = 16; o > 0; o >>= 1) {
    const ArgmaxState other = {__shfl_xor_sync(0xffffffff, s.best, o), __shfl_xor_sync(0xffffffff, s.sum, o),
                               __shfl_xor_sync(0xffffffff, s.arg, o)};
    s = argmax_merge(s, other);
  }
  return s;
}

// Each thread reads eight values at a time, all loads in flight before the maximum and the exponentials
// (no chain of exponentials through the loop); the block's threads merge by shuffles, then across warps.
// `arrivals` (one counter a row) is left at zero for the next launch.
extern "C" __global__ void argmax_rows(int* tokens, float* logprobs, float* partial, unsigned* arrivals,
                                       const float* logits, int vocab, int stride) {
  pdl_enter();
  const float* row = logits + (size_t)blockIdx.x * stride;
  const int per = (vocab + ARGMAX_SPLIT - 1) / ARGMAX_SPLIT;
  const int lo = blockIdx.y * per, hi = min(vocab, lo + per);
  ArgmaxState st = {NEG_INF, 0.f, 0x7fffffff};
  for (int base = lo + threadIdx.x; base < hi; base += 8 * blockDim.x) {
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int i = base + k * blockDim.x;
      v[k] = i < hi ? row[i] : NEG_INF;
    }
    ArgmaxState chunk = {NEG_INF, 0.f, 0x7fffffff};
#pragma unroll
    for (int k = 0; k < 8; k++) {
      if (v[k] > chunk.best) {
        chunk.best = v[k];
        chunk.arg = base + k * blockDim.x;  // ascending k: the first index of a tie is kept
      }
    }
    if (chunk.best != NEG_INF) {
#pragma unroll
      for (int k = 0; k < 8; k++) chunk.sum += __expf(v[k] - chunk.best);
    }
    st = argmax_merge(st, chunk);
  }
  st = argmax_warp(st);
  __shared__ ArgmaxState warps[32];
  __shared__ bool last;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warps[warp] = st;
  __syncthreads();
  float* mine = partial + (size_t)blockIdx.x * ARGMAX_SPLIT * 3;
  if (warp == 0) {
    st = lane < (blockDim.x >> 5) ? warps[lane] : ArgmaxState{NEG_INF, 0.f, 0x7fffffff};
    st = argmax_warp(st);
    if (lane == 0) {
      float* out = mine + blockIdx.y * 3;
      out[0] = st.best;
      out[1] = st.sum;
      out[2] = __int_as_float(st.arg);
      __threadfence();  // this slice is visible to the other blocks before it is counted
      const unsigned n = atomicAdd(arrivals + blockIdx.x, 1u);
      last = n == gridDim.y - 1;
      if (last) arrivals[blockIdx.x] = 0;
    }
  }
  __syncthreads();
  if (!last || warp != 0) return;
  // Read through volatile: the other blocks' slices must come from memory, not a stale cache line.
  const volatile float* p = mine;
  st = {NEG_INF, 0.f, 0x7fffffff};
  for (int k = lane; k < gridDim.y; k += 32)
    st = argmax_merge(st, {p[3 * k], p[3 * k + 1], __float_as_int(p[3 * k + 2])});
  st = argmax_warp(st);
  if (lane == 0) {
    tokens[blockIdx.x] = st.arg;
    logprobs[blockIdx.x] = -logf(st.sum);
  }
}

// Sampling on the GPU, one block (1024 threads) a logits row: temperature, then top-k, top-p and min-p as one
// threshold on the logits (found by bisection, so ties at the threshold are all kept), then a draw from the
// kept mass with a counter-based random number: splitmix64(seed, counter), so a request's draws depend only
// on its own seed and position. The log probability reported is under the temperature-scaled distribution
// before truncation, as the cpu sampler reports it.
#define SAMPLE_THREADS 1024


__device__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows(int* tokens, float* logprobs, const float* logits, int vocab, int stride, const float* temperature,
            const int* top_k, const float* top_p, const float* min_p, const unsigned* seeds, const int* counters) {
  pdl_enter();
  const int r = blockIdx.x;
  const float* row = logits + (size_t)r * stride;
  const float t = temperature[r];
  float mx = NEG_INF, mn = -NEG_INF;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    mx = fmaxf(mx, row[i]);
    mn = fminf(mn, row[i]);
  }
  mx = block_max(mx);
  // Logits more than 80 temperatures below the maximum weigh under e^-80: the bisection need not look lower
  // (and must not start from −∞ or a −1e30 mask).
  mn = fmaxf(-block_max(-mn), mx - 80.f * t);
  // z_i = (x_i − max) / t; Z = Σ exp(z_i)
  float s = 0.f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += __expf((row[i] - mx) / t);
  const float Z = block_sum(s);
  // Threshold on the logits: keep x_i ≥ tau. Each criterion's tau is found by bisection on [mn, mx].
  float tau = mn;
  const int k = top_k[r];
  if (k > 0 && k < vocab) {
    float lo = mn, hi = mx;
    for (int it = 0; it < 30; it++) {
      const float mid = 0.5f * (lo + hi);
      float c = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) c += row[i] >= mid ? 1.f : 0.f;
      c = block_sum(c);
      if (c >= k) lo = mid; else hi = mid;
    }
    tau = fmaxf(tau, lo);
  }
  // Top-p measures against what top-k kept, as the cpu sampler's masks do: each sees what the last left.
  const float p = top_p[r];
  if (p > 0.f && p < 1.f) {
    float kept_z = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) kept_z += row[i] >= tau ? __expf((row[i] - mx) / t) : 0.f;
    kept_z = block_sum(kept_z);
    float lo = tau, hi = mx;
    for (int it = 0; it < 30; it++) {
      const float mid = 0.5f * (lo + hi);
      float m = 0.f;
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) m += row[i] >= mid ? __expf((row[i] - mx) / t) : 0.f;
      m = block_sum(m);
      if (m >= p * kept_z * (1.f - 1e-6f)) lo = mid; else hi = mid;  // float sums: reaching p within 1e-6 counts
    }
    tau = fmaxf(tau, lo);
  }
  if (min_p[r] > 0.f) tau = fmaxf(tau, mx + t * logf(min_p[r]));  // p_i ≥ min_p · p_max
  // Kept mass per thread over a contiguous slice of the vocabulary, then a block scan to find the slice
  // where the drawn point falls.
  const int per = (vocab + blockDim.x - 1) / blockDim.x;
  const int lo_i = threadIdx.x * per, hi_i = min(vocab, lo_i + per);
  float mine = 0.f;
  for (int i = lo_i; i < hi_i; i++) mine += row[i] >= tau ? __expf((row[i] - mx) / t) : 0.f;
  __shared__ float scan[SAMPLE_THREADS];
  scan[threadIdx.x] = mine;
  __syncthreads();
  for (int off = 1; off < blockDim.x; off <<= 1) {
    const float add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0.f;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  const float kept = scan[blockDim.x - 1];
  const unsigned long long bits = splitmix64(((unsigned long long)seeds[r] << 32) ^ (unsigned long long)(unsigned)counters[r]);
  const float u = (float)((bits >> 11) * (1.0 / 9007199254740992.0));
  const float target = u * kept;
  const float before = threadIdx.x > 0 ? scan[threadIdx.x - 1] : 0.f;
  __shared__ int chosen;
  if (threadIdx.x == 0) chosen = -1;
  __syncthreads();
  if (mine > 0.f && target >= before && (target < scan[threadIdx.x] || threadIdx.x == blockDim.x - 1 || scan[threadIdx.x] >= kept)) {
    float acc = before;
    int pick = -1;
    for (int i = lo_i; i < hi_i; i++) {
      if (row[i] < tau) continue;
      pick = i;
      acc += __expf((row[i] - mx) / t);
      if (acc > target) break;
    }
    atomicCAS(&chosen, -1, pick);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int tok = chosen;
    if (tok < 0) {  // rounding left the point past the last kept token: take the most likely one
      for (int i = 0; i < vocab; i++) if (row[i] == mx) { tok = i; break; }
    }
    tokens[r] = tok;
    logprobs[r] = (row[tok] - mx) / t - logf(Z);
  }
}

// Decode attention split over the sequence (flash-decoding): with few query rows, one block per (row, head)
// leaves most of the GPU idle on long contexts, so each (row, head) is also split into chunks of ATT_CHUNK
// keys, each block writing a partial (max, sum, weighted values). The last block of a (row, head) to finish
// merges the partials (the threadfence-reduction pattern: one launch, not two); `arrivals` counts them and is
// left at zero for the next launch. grid = (rows, heads, chunks), block = 32 × ATT_WARPS. A graph's grid
// covers max_seq_len, so most chunks lie past their row's context: those return at once, uncounted, and a
// row whose keys fit one chunk has that chunk write its output directly (no partial, counter or merge,
// whose round trips through L2 had made a batch-1 step's attention the slowest op of its layer).
#define ATT_CHUNK 256

extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
attention_split(T* out, float* partial, unsigned* arrivals, const T* qkv, const KV* kcache, const KV* vcache,
                float kv_scale, const int* row_seq, const int* row_pos, const int* block_tables, int max_blocks,
                int num_heads, int num_kv, int head, int tpb, float scale, const QLinear qn) {
  const int r = blockIdx.x, h = blockIdx.y, c = blockIdx.z, chunks = gridDim.z;
  // The step's metadata came by a copy before the step's first kernel, so it is read before the wait.
  const int seq = row_seq[r];
  const int visible = seq < 0 ? 0 : row_pos[r] + 1;
  const int used = (visible + ATT_CHUNK - 1) / ATT_CHUNK;  // the chunks holding keys
  const float2 f = attention_factors(qn, h, head);
  pdl_enter();
  T* o = out + ((size_t)r * num_heads + h) * head;
  if (c >= max(used, 1)) return;
  const T* q = qkv + (size_t)r * (num_heads + 2 * num_kv) * head + h * head;
  const int t_begin = c * ATT_CHUNK, t_end = min(visible, t_begin + ATT_CHUNK);
  if (used <= 1) {
    __shared__ float ml[2], acc[MAX_HEAD];
    if (used == 0) {  // a padding row
      for (int d = threadIdx.x; d < head; d += blockDim.x) o[d] = fromf(0.f);
      return;
    }
    attend(q, kcache, vcache, kv_scale, block_tables + (size_t)seq * max_blocks, t_begin, t_end,
           h / (num_heads / num_kv), num_kv, head, tpb, scale, ml, acc);
    if (threadIdx.x < head) o[threadIdx.x] = attention_out(acc[threadIdx.x] / ml[1], qn, f);
    return;
  }
  float* mine = partial + ((size_t)r * num_heads + h) * chunks * (head + 2);
  float* part = mine + (size_t)c * (head + 2);
  attend(q, kcache, vcache, kv_scale, block_tables + (size_t)seq * max_blocks, t_begin, t_end,
         h / (num_heads / num_kv), num_kv, head, tpb, scale, part, part + 2);
  __shared__ int last;
  __threadfence();  // this block's partial is visible to the others before it is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned* count = arrivals + (size_t)r * num_heads + h;
    last = atomicAdd(count, 1u) == (unsigned)used - 1;
    if (last) *count = 0;
  }
  __syncthreads();
  if (!last) return;
  // Read through volatile: the other blocks' partials must come from memory, not a stale cache line.
  const volatile float* all = mine;
  float mall = NEG_INF;
  for (int k = 0; k < used; k++) mall = fmaxf(mall, all[k * (head + 2)]);
  const int d = threadIdx.x;  // heads fit a block: a thread a dim, the one its factors f are for
  if (d >= head) return;
  float num = 0.f, den = 0.f;
  for (int k = 0; k < used; k++) {
    const volatile float* p = all + k * (head + 2);
    const float w = __expf(p[0] - mall);
    num += p[2 + d] * w;
    den += p[1] * w;
  }
  o[d] = attention_out(den > 0.f ? num / den : 0.f, qn, f);
}

// Context attention on tensor cores (flash attention) for steps that carry prompt chunks, in half and
// bfloat16 engines (float32 ones keep `attention`: tensor cores would round their scores to TF32). A block
// takes a tile of up to FMHA_ROWS consecutive query rows of one sequence and one head, FMHA_WARPS warps of 16
// rows each; it walks the sequence's cached keys FMHA_KEYS at a time, each key tile and its values (stored
// transposed) staged once in shared memory for all the tile's rows. Scores and the output accumulate in float
// (mma.m16n8k16); the probabilities are rounded to T for the product with the values, as transformers rounds
// its softmax to the model dtype before that product.
#if KILN_DTYPE != 0
#define FMHA_WARPS 4
#define FMHA_ROWS (16 * FMHA_WARPS)
#define FMHA_KEYS 64
// The head size the kernel is compiled for: the engine's (a multiple of 16, at most 128), or, in op tests,
// every such size up to 128 (a smaller head skips the unused steps at run time).
#if defined(KILN_HEAD_SIZE) && KILN_HEAD_SIZE % 16 == 0 && KILN_HEAD_SIZE <= 128
#define FMHA_HEAD_MAX KILN_HEAD_SIZE
#else
#define FMHA_HEAD_MAX 128
#endif

// The bits of x rounded to T.
__device__ __forceinline__ unsigned t_bits(float x) {
#if KILN_DTYPE == 1
  return __half_as_ushort(__float2half_rn(x));
#else
  const unsigned u = __float_as_uint(x);
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
#endif
}

__device__ __forceinline__ float t_from_bits(unsigned b) {
#if KILN_DTYPE == 1
  return __half2float(__ushort_as_half((unsigned short)b));
#else
  return __uint_as_float(b << 16);
#endif
}

__device__ __forceinline__ unsigned pack_t2(float lo, float hi) { return t_bits(lo) | t_bits(hi) << 16; }

// d += a · b for one warp: a 16 × 16 (rows), b 16 × 8 (columns), d 16 × 8 in float, in the fragments of the
// PTX ISA's mma.m16n8k16 (g = lane / 4, t = lane % 4; a word holds two T, the lower index in the low half):
// a = {a[g][2t..], a[g+8][2t..], a[g][2t+8..], a[g+8][2t+8..]}, b = {b[2t..][g], b[2t+8..][g]},
// d = {d[g][2t], d[g][2t+1], d[g+8][2t], d[g+8][2t+1]}.
__device__ __forceinline__ void mma16816(float* d, const unsigned* a, const unsigned* b) {
#ifdef KILN_EMULATED
  // The same product from the fragments' definition, gathered by shuffles.
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  for (int k = 0; k < 4; k++) {
    float A[4][2];
    for (int i = 0; i < 4; i++) {
      const unsigned w = __shfl_sync(0xffffffffu, a[i], g * 4 + k);
      A[i][0] = t_from_bits(w & 0xffffu);
      A[i][1] = t_from_bits(w >> 16);
    }
    for (int c = 0; c < 2; c++) {
      const unsigned w0 = __shfl_sync(0xffffffffu, b[0], (2 * t + c) * 4 + k);
      const unsigned w1 = __shfl_sync(0xffffffffu, b[1], (2 * t + c) * 4 + k);
      const float B0[2] = {t_from_bits(w0 & 0xffffu), t_from_bits(w0 >> 16)};
      const float B1[2] = {t_from_bits(w1 & 0xffffu), t_from_bits(w1 >> 16)};
      d[c] += A[0][0] * B0[0] + A[0][1] * B0[1] + A[2][0] * B1[0] + A[2][1] * B1[1];
      d[2 + c] += A[1][0] * B0[0] + A[1][1] * B0[1] + A[3][0] * B1[0] + A[3][1] * B1[1];
    }
  }
#else
#if KILN_DTYPE == 1
#define MMA_T "f16"
#else
#define MMA_T "bf16"
#endif
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_T "." MMA_T ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#undef MMA_T
#endif
}

// Eight cached values (8 aligned consecutive dims) as four words of T pairs, dequantized where the cache is.
__device__ __forceinline__ void kv_load8(const KV* p, float scale, unsigned* w) {
#if KILN_KV == 0
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  w[0] = v.x;
  w[1] = v.y;
  w[2] = v.z;
  w[3] = v.w;
#else
  const uint2 v = *reinterpret_cast<const uint2*>(p);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const unsigned src = i < 2 ? v.x : v.y;
    const unsigned lo = (src >> (16 * (i & 1))) & 255, hi = (src >> (16 * (i & 1) + 8)) & 255;
    w[i] = pack_t2(kv_get((KV)lo, scale), kv_get((KV)hi, scale));
  }
#endif
}

// Keys [k0, k0 + KEYS) of a sequence (those past `last` as zeros) staged in shared memory by threads tid of
// nthreads: ks[j] the key's words, vt[d] dim d's values over the keys (transposed, two keys a word).
template <int KEYS, int KW, int VW>
__device__ __forceinline__ void stage_kv(unsigned (*ks)[KW], unsigned (*vt)[VW], const KV* kcache, const KV* vcache,
                                         float kv_scale, const int* table, int k0, int last, int kv_offset,
                                         int kv_stride, int chunks, int tpb, int tid, int nthreads) {
  for (int i = tid; i < KEYS * chunks; i += nthreads) {
    const int j = i % KEYS, c = i / KEYS, key = k0 + j;
    unsigned w[4] = {0u, 0u, 0u, 0u};
    if (key <= last)
      kv_load8(kcache + ((size_t)table[key / tpb] * tpb + key % tpb) * kv_stride + kv_offset + 8 * c, kv_scale, w);
#pragma unroll
    for (int e = 0; e < 4; e++) ks[j][4 * c + e] = w[e];
  }
  // Values by pairs of keys, so that each transposed word (two keys of one dim) is written whole.
  for (int i = tid; i < (KEYS / 2) * chunks; i += nthreads) {
    const int jp = i % (KEYS / 2), c = i / (KEYS / 2), key = k0 + 2 * jp;
    unsigned a[4] = {0u, 0u, 0u, 0u}, b[4] = {0u, 0u, 0u, 0u};
    if (key <= last)
      kv_load8(vcache + ((size_t)table[key / tpb] * tpb + key % tpb) * kv_stride + kv_offset + 8 * c, kv_scale, a);
    if (key + 1 <= last)
      kv_load8(vcache + ((size_t)table[(key + 1) / tpb] * tpb + (key + 1) % tpb) * kv_stride + kv_offset + 8 * c,
               kv_scale, b);
#pragma unroll
    for (int e = 0; e < 8; e++) {
      const unsigned lo = (a[e >> 1] >> (16 * (e & 1))) & 0xffffu, hi = (b[e >> 1] >> (16 * (e & 1))) & 0xffffu;
      vt[8 * c + e][jp] = lo | hi << 16;
    }
  }
}

// A warp's query fragments (KSTEPS of the A operand) of two rows of 16: qa and qb point at this lane's rows
// (g and g + 8), read where has_a and has_b say the row is there.
template <int KSTEPS>
__device__ __forceinline__ void load_q(unsigned (*qf)[4], const T* qa, const T* qb, bool has_a, bool has_b,
                                       int head) {
  const int t = threadIdx.x & 3;
  const unsigned* wa = reinterpret_cast<const unsigned*>(qa);
  const unsigned* wb = reinterpret_cast<const unsigned*>(qb);
#pragma unroll
  for (int kk = 0; kk < KSTEPS; kk++) {
    const bool in = kk * 16 < head;
    qf[kk][0] = in && has_a ? wa[kk * 8 + t] : 0u;
    qf[kk][1] = in && has_b ? wb[kk * 8 + t] : 0u;
    qf[kk][2] = in && has_a ? wa[kk * 8 + 4 + t] : 0u;
    qf[kk][3] = in && has_b ? wb[kk * 8 + 4 + t] : 0u;
  }
}

// s = q · kᵀ for a warp's 16 rows and the NS · 8 staged keys.
template <int NS, int KSTEPS, int KW>
__device__ __forceinline__ void tile_scores(float (*s)[4], const unsigned (*qf)[4], const unsigned (*ks)[KW], int head) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int n = 0; n < NS; n++) {
    s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++) {
      if (kk * 16 >= head) break;
      const unsigned b[2] = {ks[n * 8 + g][kk * 8 + t], ks[n * 8 + g][kk * 8 + 4 + t]};
      mma16816(s[n], qf[kk], b);
    }
  }
}

// The online softmax over a tile's (masked, scaled) scores, per row (a row's four lanes share its max): m, l
// and o rescaled to the new maximum, s replaced by exp(s − max); then o += p · v, the score fragments of each
// 16 keys being the A fragment of the product, rounded to T.
template <int NS, int NTILES, int VW>
__device__ __forceinline__ void tile_softmax_pv(float (*s)[4], float* m, float* l, float (*o)[4],
                                                const unsigned (*vt)[VW], int head) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
  for (int n = 0; n < NS; n++) {
#pragma unroll
    for (int e = 0; e < 4; e++) mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
  }
  float ref[2];
#pragma unroll
  for (int i = 0; i < 2; i++) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    const float next = fmaxf(m[i], mx[i]);
    ref[i] = next == NEG_INF ? 0.f : next;  // a row with no key yet: exp(−∞ − 0) = 0
    const float correction = __expf(m[i] - ref[i]);
    l[i] *= correction;
#pragma unroll
    for (int n = 0; n < NTILES; n++) {
      o[n][2 * i] *= correction;
      o[n][2 * i + 1] *= correction;
    }
    m[i] = next;
  }
#pragma unroll
  for (int n = 0; n < NS; n++) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
      s[n][e] = __expf(s[n][e] - ref[e >> 1]);
      l[e >> 1] += s[n][e];
    }
  }
#pragma unroll
  for (int kk = 0; kk < NS / 2; kk++) {
    const unsigned a[4] = {pack_t2(s[2 * kk][0], s[2 * kk][1]), pack_t2(s[2 * kk][2], s[2 * kk][3]),
                           pack_t2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_t2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int n = 0; n < NTILES; n++) {
      if (n * 8 >= head) break;
      const unsigned b[2] = {vt[n * 8 + g][kk * 8 + t], vt[n * 8 + g][kk * 8 + 4 + t]};
      mma16816(o[n], a, b);
    }
  }
}

// Rounded as transformers' eager attention rounds them: q · kᵀ to T, then its product with the scale.
__device__ __forceinline__ float eager_score(float qk, float scale) { return rnd(rnd(qk) * scale); }

// A tile's scores of keys k0 .. for this lane's two rows, scaled, those past a row's last key (last_a, last_b;
// −1 for a row that is not there) masked out.
template <int NS>
__device__ __forceinline__ void mask_scores(float (*s)[4], int k0, int last_a, int last_b, float scale) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int n = 0; n < NS; n++) {
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int key = k0 + n * 8 + 2 * t + (e & 1);
      s[n][e] = key <= (e < 2 ? last_a : last_b) ? eager_score(s[n][e], scale) : NEG_INF;
    }
  }
}

// tile = {sequence, first row, rows, position of the first row}: the rows see keys 0 .. their position.
template <int HD>
__device__ void fmha_tile(T* out, const T* qkv, const KV* kcache, const KV* vcache, float kv_scale, const int* tile,
                          const int* block_tables, int max_blocks, int num_heads, int num_kv, int head, int tpb,
                          float scale) {
  constexpr int KSTEPS = HD / 16;            // k steps of q · kᵀ over the head
  constexpr int NTILES = HD / 8;             // output n tiles of p · v
  constexpr int KWORDS = HD / 2 + 4;         // a staged key's words, padded so fragment loads avoid bank conflicts
  constexpr int VWORDS = FMHA_KEYS / 2 + 4;  // a staged value dim's words (values are stored transposed)
  __shared__ unsigned ks[FMHA_KEYS][KWORDS];
  __shared__ unsigned vt[HD][VWORDS];
  const int seq = tile[0], row0 = tile[1], nrows = tile[2], pos0 = tile[3];
  const int h = blockIdx.y, kvh = h / (num_heads / num_kv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int stride = (num_heads + 2 * num_kv) * head;
  const int* table = block_tables + (size_t)seq * max_blocks;
  const int last = pos0 + nrows - 1;  // the tile's last key
  // This lane's two rows of the warp's 16: ra and ra + 8.
  const int ra = warp * 16 + g, rb = ra + 8;
  const bool has_a = ra < nrows, has_b = rb < nrows;
  const bool warp_rows = warp * 16 < nrows;
  const int warp_last = pos0 + min(nrows - 1, warp * 16 + 15);
  unsigned qf[KSTEPS][4];
  load_q<KSTEPS>(qf, qkv + (size_t)(row0 + ra) * stride + h * head, qkv + (size_t)(row0 + rb) * stride + h * head,
                 has_a, has_b, head);
  float o[NTILES][4];
#pragma unroll
  for (int n = 0; n < NTILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
  for (int k0 = 0; k0 <= last; k0 += FMHA_KEYS) {
    __syncthreads();  // the last tile's fragments are read
    stage_kv<FMHA_KEYS, KWORDS, VWORDS>(ks, vt, kcache, vcache, kv_scale, table, k0, last, kvh * head,
                                        num_kv * head, head / 8, tpb, threadIdx.x, blockDim.x);
    __syncthreads();
    if (!warp_rows || k0 > warp_last) continue;  // every key of this tile lies past the warp's rows
    float s[FMHA_KEYS / 8][4];
    tile_scores<FMHA_KEYS / 8, KSTEPS, KWORDS>(s, qf, ks, head);
    mask_scores<FMHA_KEYS / 8>(s, k0, has_a ? pos0 + ra : -1, has_b ? pos0 + rb : -1, scale);  // causal
    tile_softmax_pv<FMHA_KEYS / 8, NTILES, VWORDS>(s, m, l, o, vt, head);
  }
  if (!warp_rows) return;
#pragma unroll
  for (int i = 0; i < 2; i++) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
  const int row_words = num_heads * head / 2;
  unsigned* oa = reinterpret_cast<unsigned*>(out) + (size_t)(row0 + ra) * row_words + h * head / 2;
  unsigned* ob = reinterpret_cast<unsigned*>(out) + (size_t)(row0 + rb) * row_words + h * head / 2;
#pragma unroll
  for (int n = 0; n < NTILES; n++) {
    if (n * 8 >= head) break;
    if (has_a) oa[n * 4 + t] = pack_t2(o[n][0] / l[0], o[n][1] / l[0]);
    if (has_b) ob[n * 4 + t] = pack_t2(o[n][2] / l[1], o[n][3] / l[1]);
  }
}

// grid = (tiles, heads), block = 32 × FMHA_WARPS; tiles[4 · blockIdx.x ..] as fmha_tile reads them. Every row of
// the step lies in one tile (decode rows too, as tiles of one row). head a multiple of 16, at most FMHA_HEAD_MAX.
extern "C" __global__ void __launch_bounds__(32 * FMHA_WARPS)
attention_fmha(T* out, const T* qkv, const KV* kcache, const KV* vcache, float kv_scale, const int* tiles,
               const int* block_tables, int max_blocks, int num_heads, int num_kv, int head, int tpb, float scale) {
  pdl_enter();
  fmha_tile<FMHA_HEAD_MAX>(out, qkv, kcache, vcache, kv_scale, tiles + 4 * blockIdx.x, block_tables, max_blocks,
                           num_heads, num_kv, head, tpb, scale);
}

// Decode attention on tensor cores (for steps whose blocks fill the GPU; 87 µs where `attention` took 422 for
// 256 rows at context 1000 on an H200): one block a (decode row, KV head), the query heads sharing that KV head as the rows of the mma tile
// (up to 16), so each cached key and value is read once for all of them and the per-key dot products run on
// tensor cores instead of as warp-wide sums. Each of DEC_WARPS warps stages and walks its own share of the
// keys (DEC_KEYS at a time); their partial softmaxes are merged in shared memory at the end. Heads up to
// DEC_HEAD_MAX (the staging of four warps must fit in 48 KB). grid = (rows, num_kv), block = 32 × DEC_WARPS.
#define DEC_WARPS 4
#define DEC_KEYS 32
#define DEC_HEAD_MAX (FMHA_HEAD_MAX < 64 ? FMHA_HEAD_MAX : 64)

template <int HD>
__device__ void decode_tc(T* out, const T* qkv, const KV* kcache, const KV* vcache, float kv_scale, const int* row_seq,
                          const int* row_pos, const int* block_tables, int max_blocks, int num_heads, int num_kv,
                          int head, int tpb, float scale) {
  constexpr int KSTEPS = HD / 16, NTILES = HD / 8, KWORDS = HD / 2 + 4, VWORDS = DEC_KEYS / 2 + 4;
  constexpr int STAGE = DEC_KEYS * KWORDS + HD * VWORDS;  // one warp's staged keys and values, in words
  __shared__ unsigned stage[DEC_WARPS * STAGE];
  const int r = blockIdx.x, kvh = blockIdx.y, group = num_heads / num_kv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int seq = row_seq[r];
  T* o_row = out + ((size_t)r * num_heads + kvh * group) * head;
  if (seq < 0) {
    for (int i = threadIdx.x; i < group * head; i += blockDim.x) o_row[i] = fromf(0.f);
    return;
  }
  const int visible = row_pos[r] + 1;
  const int* table = block_tables + (size_t)seq * max_blocks;
  // This lane's two heads of the group: g and g + 8.
  const bool has_a = g < group, has_b = g + 8 < group;
  const T* q = qkv + (size_t)r * (num_heads + 2 * num_kv) * head + (size_t)kvh * group * head;
  unsigned qf[KSTEPS][4];
  load_q<KSTEPS>(qf, q + (size_t)g * head, q + (size_t)(g + 8) * head, has_a, has_b, head);
  float o[NTILES][4];
#pragma unroll
  for (int n = 0; n < NTILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
  unsigned(*ks)[KWORDS] = reinterpret_cast<unsigned(*)[KWORDS]>(stage + warp * STAGE);
  unsigned(*vt)[VWORDS] = reinterpret_cast<unsigned(*)[VWORDS]>(stage + warp * STAGE + DEC_KEYS * KWORDS);
  for (int k0 = warp * DEC_KEYS; k0 < visible; k0 += DEC_WARPS * DEC_KEYS) {
    __syncwarp();  // the warp's last tile is read
    stage_kv<DEC_KEYS, KWORDS, VWORDS>(ks, vt, kcache, vcache, kv_scale, table, k0, visible - 1, kvh * head,
                                       num_kv * head, head / 8, tpb, lane, 32);
    __syncwarp();
    float s[DEC_KEYS / 8][4];
    tile_scores<DEC_KEYS / 8, KSTEPS, KWORDS>(s, qf, ks, head);
    mask_scores<DEC_KEYS / 8>(s, k0, has_a ? visible - 1 : -1, has_b ? visible - 1 : -1, scale);
    tile_softmax_pv<DEC_KEYS / 8, NTILES, VWORDS>(s, m, l, o, vt, head);
  }
#pragma unroll
  for (int i = 0; i < 2; i++) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
  }
  // The warps' (max, sum, weighted values) per head, over the staging memory, then merged per head.
  __syncthreads();
  float* wm = reinterpret_cast<float*>(stage);  // [DEC_WARPS][16]
  float* wl = wm + DEC_WARPS * 16;              // [DEC_WARPS][16]
  float* wo = wl + DEC_WARPS * 16;              // [DEC_WARPS][16][head]
  if (t == 0) {
    wm[warp * 16 + g] = m[0];
    wl[warp * 16 + g] = l[0];
    wm[warp * 16 + g + 8] = m[1];
    wl[warp * 16 + g + 8] = l[1];
  }
#pragma unroll
  for (int n = 0; n < NTILES; n++) {
    if (n * 8 >= head) break;
    float* a = wo + ((size_t)warp * 16 + g) * head + n * 8 + 2 * t;
    float* b = wo + ((size_t)warp * 16 + g + 8) * head + n * 8 + 2 * t;
    a[0] = o[n][0];
    a[1] = o[n][1];
    b[0] = o[n][2];
    b[1] = o[n][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * head; i += blockDim.x) {
    const int hh = i / head, d = i % head;
    float mall = NEG_INF;
    for (int w = 0; w < DEC_WARPS; w++) mall = fmaxf(mall, wm[w * 16 + hh]);
    float num = 0.f, den = 0.f;
    for (int w = 0; w < DEC_WARPS; w++) {
      const float mw = wm[w * 16 + hh];
      if (mw == NEG_INF) continue;  // a warp that saw no key
      const float f = __expf(mw - mall);
      num += wo[((size_t)w * 16 + hh) * head + d] * f;
      den += wl[w * 16 + hh] * f;
    }
    o_row[i] = fromf(num / den);
  }
}

extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS)
attention_decode_tc(T* out, const T* qkv, const KV* kcache, const KV* vcache, float kv_scale, const int* row_seq,
                    const int* row_pos, const int* block_tables, int max_blocks, int num_heads, int num_kv, int head,
                    int tpb, float scale) {
  pdl_enter();
  decode_tc<DEC_HEAD_MAX>(out, qkv, kcache, vcache, kv_scale, row_seq, row_pos, block_tables, max_blocks, num_heads,
                          num_kv, head, tpb, scale);
}
#endif
