// kiln's decoder kernels. One source, compiled per engine dtype with -DKILN_DTYPE=0 (float), 1 (half) or
// 2 (bfloat16): activations, weights and the KV cache are T; all arithmetic is float. Where transformers
// rounds an intermediate to the model dtype (the normalised value before the norm weight, rope's cos/sin,
// silu before the product), these kernels round it too, so bf16 engines track transformers closely.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

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

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// Sum over the block; every thread gets the result. blockDim.x is a multiple of 32, at most 1024.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? partial[lane] : 0.f;
  return warp_sum(v);
}

// out[r] = table[ids[r]]; grid = rows.
extern "C" __global__ void embed(T* out, const T* table, const int* ids, int hidden) {
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
  const size_t o = (size_t)blockIdx.x * dim;
  rmsnorm_row(out + o, x + o, w, dim, eps);
}

// residual += x (rounded to T), then out = rmsnorm(residual) · w; grid = rows.
extern "C" __global__ void add_rmsnorm(T* residual, const T* x, T* out, const T* w, int dim, float eps) {
  const size_t o = (size_t)blockIdx.x * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) residual[o + i] = fromf(tof(residual[o + i]) + tof(x[o + i]));
  __syncthreads();
  rmsnorm_row(out + o, residual + o, w, dim, eps);
}

// x += y, elementwise over n values.
extern "C" __global__ void add_inplace(T* x, const T* y, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    x[i] = fromf(tof(x[i]) + tof(y[i]));
}

// x[r, c] += b[c]; grid = rows.
extern "C" __global__ void add_bias(T* x, const T* b, int cols) {
  T* row = x + (size_t)blockIdx.x * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) row[c] = fromf(tof(row[c]) + tof(b[c]));
}

// y[r, o] = Σ_i x[r, i] · w[o, i] for the few rows of a decode step (at most GEMV_MAX_ROWS), where a GEMM
// library's tiles idle: one warp per output, each lane reading 16 bytes of the weight row at a time, every row
// of x accumulated in float from the same loaded weights. Needs in · sizeof(T) a multiple of 16 and 16-byte
// aligned rows (the caller checks). y is float32 when y_f32 (logits), else T. grid = ceil(out / 8), 256 threads.
#define GEMV_MAX_ROWS 8
#define GEMV_UNROLL 4

// GEMV_UNROLL 16-byte loads of a weight row in flight per lane before any is used.
__device__ __forceinline__ void gemv_load(uint4 (&wv)[GEMV_UNROLL], const uint4* wrow, int v0, int nvec) {
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; u++) {
    const int v = v0 + 32 * u;
    wv[u] = v < nvec ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
  }
}

// Each row's warp sum, scaled, written by lane 0 as float32 (logits) or T.
template <int R>
__device__ __forceinline__ void gemv_store(void* y, int y_f32, const float (&acc)[R], float scale, int o, int out,
                                           int lane) {
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float s = warp_sum(acc[r]) * scale;
    if (lane == 0) {
      if (y_f32) reinterpret_cast<float*>(y)[(size_t)r * out + o] = s;
      else reinterpret_cast<T*>(y)[(size_t)r * out + o] = fromf(s);
    }
  }
}

template <int R>
__device__ __forceinline__ void gemv_rows(void* y, int y_f32, const T* x, const T* w, int in, int out) {
  const int o = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (o >= out) return;
  constexpr int V = 16 / sizeof(T);
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (size_t)o * in);
  const int nvec = in / V;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  // GEMV_UNROLL weight loads in flight per lane before any is used: one pass covers in ≤ 32·8·UNROLL.
  for (int v0 = lane; v0 < nvec; v0 += 32 * GEMV_UNROLL) {
    uint4 wv[GEMV_UNROLL];
    gemv_load(wv, wrow, v0, nvec);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const int v = v0 + 32 * u;
      if (v >= nvec) break;
      const T* we = reinterpret_cast<const T*>(&wv[u]);
      float wf[V];
#pragma unroll
      for (int k = 0; k < V; k++) wf[k] = tof(we[k]);
#pragma unroll
      for (int r = 0; r < R; r++) {
        const uint4 xv = *(reinterpret_cast<const uint4*>(x + (size_t)r * in) + v);
        const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int k = 0; k < V; k++) acc[r] += wf[k] * tof(xe[k]);
      }
    }
  }
  gemv_store<R>(y, y_f32, acc, 1.f, o, out, lane);
}

extern "C" __global__ void __launch_bounds__(256) gemv(void* y, int y_f32, const T* x, const T* w, int rows, int in, int out) {
  switch (rows) {
    case 1: gemv_rows<1>(y, y_f32, x, w, in, out); break;
    case 2: gemv_rows<2>(y, y_f32, x, w, in, out); break;
    case 3: gemv_rows<3>(y, y_f32, x, w, in, out); break;
    case 4: gemv_rows<4>(y, y_f32, x, w, in, out); break;
    case 5: gemv_rows<5>(y, y_f32, x, w, in, out); break;
    case 6: gemv_rows<6>(y, y_f32, x, w, in, out); break;
    case 7: gemv_rows<7>(y, y_f32, x, w, in, out); break;
    default: gemv_rows<8>(y, y_f32, x, w, in, out); break;
  }
}

// The GEMV above for weight-only int8 or int4 weights, laid out by kiln build as [out, in] int8, or [out, in/2]
// bytes of int4 pairs along in (the even element in the low nibble). Per channel (W8A16, W4A16):
// y = (x · q) · scales[o]. Group-wise (W4A16_GPTQ, groups > 0): w = q · gs[o, g] + gz[o, g] over groups of
// in / groups inputs, a multiple of the 32 weights of one load. Needs in a multiple of 32 and 16-byte aligned
// x rows (the caller checks).
__device__ __forceinline__ unsigned int word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Element k of the T values packed in a 16-byte load, from shifts on its words (no address taken).
__device__ __forceinline__ float t_of(const uint4& v, int k) {
#if KILN_DTYPE == 0
  return __uint_as_float(word_of(v, k));
#elif KILN_DTYPE == 1
  return __half2float(__ushort_as_half((unsigned short)(word_of(v, k >> 1) >> (16 * (k & 1)))));
#else
  return __uint_as_float((word_of(v, k >> 1) >> (16 * (k & 1))) << 16);
#endif
}

template <int R, int BITS, bool GROUPED>
__device__ __forceinline__ void gemv_wo_rows(void* y, int y_f32, const T* x, const unsigned char* w,
                                             const float* scales, const float* zeros, int groups, int in,
                                             int out) {
  const int o = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (o >= out) return;
  constexpr int PER = BITS == 8 ? 16 : 32;  // weights in one 16-byte load
  constexpr int XV = 16 / sizeof(T);        // x values in one 16-byte load
  const uint4* wrow = reinterpret_cast<const uint4*>(w + (size_t)o * in * BITS / 8);
  const int nvec = in / PER;
  const int loadsPerGroup = GROUPED ? nvec / groups : 1;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  for (int v0 = lane; v0 < nvec; v0 += 32 * GEMV_UNROLL) {
    uint4 wv[GEMV_UNROLL];
    gemv_load(wv, wrow, v0, nvec);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const int v = v0 + 32 * u;
      if (v >= nvec) break;
      float dot[R], sum[R];
#pragma unroll
      for (int r = 0; r < R; r++) dot[r] = sum[r] = 0.f;
#pragma unroll
      for (int j = 0; j < PER / XV; j++) {
        // XV weights decoded at a time, so few are live at once.
        float wf[XV];
#pragma unroll
        for (int k = 0; k < XV; k++) {
          const int e = j * XV + k;
          // Shifts on the loaded words, never their address: taking it would put wv in local memory.
          if (BITS == 8) wf[k] = (float)(signed char)((word_of(wv[u], e >> 2) >> (8 * (e & 3))) & 255);
          else {
            const int nib = (word_of(wv[u], e >> 3) >> (4 * (e & 7))) & 15;
            wf[k] = (float)(nib >= 8 ? nib - 16 : nib);
          }
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
          const uint4 xv = reinterpret_cast<const uint4*>(x + (size_t)r * in + (size_t)v * PER)[j];
#pragma unroll
          for (int k = 0; k < XV; k++) {
            const float xk = t_of(xv, k);
            dot[r] += wf[k] * xk;
            if (GROUPED) sum[r] += xk;
          }
        }
      }
      if (GROUPED) {
        const int g = v / loadsPerGroup;
        const float gs = scales[(size_t)o * groups + g], gz = zeros[(size_t)o * groups + g];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] += gs * dot[r] + gz * sum[r];
      } else {
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] += dot[r];
      }
    }
  }
  gemv_store<R>(y, y_f32, acc, GROUPED ? 1.f : scales[o], o, out, lane);
}

#define GEMV_WO_CASE(R)                                                                 \
  case R:                                                                               \
    if (groups > 0) gemv_wo_rows<R, 4, true>(y, y_f32, x, w, scales, zeros, groups, in, out); \
    else if (bits == 8) gemv_wo_rows<R, 8, false>(y, y_f32, x, w, scales, zeros, 0, in, out); \
    else gemv_wo_rows<R, 4, false>(y, y_f32, x, w, scales, zeros, 0, in, out);                \
    break;

// groups > 0: group-wise int4 with scales and zeros [out, groups]; else per-channel int8 or int4 scales [out].
extern "C" __global__ void __launch_bounds__(256) gemv_wo(void* y, int y_f32, const T* x, const unsigned char* w,
                                                          const float* scales, const float* zeros, int groups,
                                                          int bits, int rows, int in, int out) {
  switch (rows) {
    GEMV_WO_CASE(1)
    GEMV_WO_CASE(2)
    GEMV_WO_CASE(3)
    GEMV_WO_CASE(4)
    GEMV_WO_CASE(5)
    GEMV_WO_CASE(6)
    GEMV_WO_CASE(7)
    default:
      GEMV_WO_CASE(8)
  }
}

// A weight-only weight dequantized to T [out, in] for steps too wide for the GEMV: q · scale[o], or, group-wise
// (groups > 0), q · gs[o, g] + gz[o, g].
extern "C" __global__ void dequant_wo(T* out, const unsigned char* w, const float* scales, const float* zeros,
                                      int groups, int bits, int in, long n) {
  for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
    const long o = e / in;
    int q;
    if (bits == 8) q = (signed char)w[e];
    else {
      const int nib = (e & 1) ? (w[e >> 1] >> 4) : (w[e >> 1] & 15);
      q = nib >= 8 ? nib - 16 : nib;
    }
    if (groups > 0) {
      const long g = (e % in) / (in / groups);
      out[e] = fromf((float)q * scales[o * groups + g] + zeros[o * groups + g]);
    } else {
      out[e] = fromf((float)q * scales[o]);
    }
  }
}

// out[r, i] = silu(fg[r, i]) · fg[r, inter + i]: the fused fc|gate GEMM's two halves. One thread an
// element over the whole grid: a row-per-block loop would serialise its loads.
extern "C" __global__ void silu_mul(T* out, const T* fg, int inter, long n) {
  for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < n; e += (long)gridDim.x * blockDim.x) {
    const long r = e / inter, i = e % inter;
    const T* row = fg + r * 2 * inter;
    const float a = tof(row[i]);
    const float s = rnd(a / (1.f + __expf(-a)));
    out[e] = fromf(s * tof(row[inter + i]));
  }
}

// The decode-step fusions (steps of at most GEMV_MAX_ROWS rows, where launches cost more than bytes). Each
// kernel opens a pre-norm block: it adds the previous block's output to the residual and normalizes the
// rows into shared memory (every block for itself: no grid-wide barrier), then runs a GEMV whose warps each
// compute a pair of output rows that the epilogue combines: RoPE's two halves with the qkv bias and the KV
// write (norm_qkv_rope), or SiLU's two halves (norm_gated_mlp). Block 0 writes the updated residual to a
// second buffer, since the other blocks still read the first. Each rounds to T where the unfused ops do.

#ifndef KILN_EMULATED
__device__ __forceinline__ unsigned char* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char kiln_dynamic_shared[];
  return kiln_dynamic_shared;
}
#endif

// xs[r] = rmsnorm(residual[r] + delta[r]) · w for the R rows, one warp a row; residual_out[r] = the sum
// (block 0, when delta is given). Ends with a barrier.
template <int R>
__device__ void norm_rows(T* xs, const T* residual, const T* delta, T* residual_out, const T* w, int in, float eps) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = warp; r < R; r += blockDim.x >> 5) {
    const T* res = residual + (size_t)r * in;
    T* x = xs + (size_t)r * in;
    float ss = 0.f;
    for (int i = lane; i < in; i += 32) {
      const float v = delta ? rnd(tof(res[i]) + tof(delta[(size_t)r * in + i])) : tof(res[i]);
      x[i] = fromf(v);
      ss += v * v;
    }
    const float inv = rsqrtf(warp_sum(ss) / in + eps);
    for (int i = lane; i < in; i += 32) {
      if (delta && blockIdx.x == 0) residual_out[(size_t)r * in + i] = x[i];
      x[i] = fromf(tof(w[i]) * rnd(tof(x[i]) * inv));
    }
  }
  __syncthreads();
}

// acc[p][r] = Σ_i xs[r, i] · w[rows[p], i] for a warp's P weight rows, their loads in flight together; every
// lane gets the sums. Needs in · sizeof(T) a multiple of 16 and 16-byte aligned rows.
template <int R, int P>
__device__ __forceinline__ void gemv_pair_dot(float (&acc)[P][R], const T* xs, const T* w, const int (&rows)[P],
                                              int in) {
  constexpr int V = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int nvec = in / V;
#pragma unroll
  for (int p = 0; p < P; p++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[p][r] = 0.f;
  for (int v0 = lane; v0 < nvec; v0 += 32 * GEMV_UNROLL) {
    uint4 wv[P][GEMV_UNROLL];
#pragma unroll
    for (int p = 0; p < P; p++) gemv_load(wv[p], reinterpret_cast<const uint4*>(w + (size_t)rows[p] * in), v0, nvec);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const int v = v0 + 32 * u;
      if (v >= nvec) break;
#pragma unroll
      for (int r = 0; r < R; r++) {
        const uint4 xv = reinterpret_cast<const uint4*>(xs + (size_t)r * in)[v];
#pragma unroll
        for (int k = 0; k < V; k++) {
          const float xk = t_of(xv, k);
#pragma unroll
          for (int p = 0; p < P; p++) acc[p][r] += t_of(wv[p][u], k) * xk;
        }
      }
    }
  }
#pragma unroll
  for (int p = 0; p < P; p++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[p][r] = warp_sum(acc[p][r]);
}

// Row r's pair of sums, rounded to T as a GEMV stores them; selected by unrolled compares, since indexing the
// accumulators by a lane-dependent r would move them to local memory.
template <int R>
__device__ __forceinline__ void pick_row(const float (&acc)[2][R], int r, float& a, float& b) {
  a = b = 0.f;
#pragma unroll
  for (int k = 0; k < R; k++) {
    if (k == r) {
      a = acc[0][k];
      b = acc[1][k];
    }
  }
  a = rnd(a);
  b = rnd(b);
}

// qkv = (rmsnorm(residual + delta) · w_norm) · wᵀ + bias, q and k rotated (gpt-neox halves), k and v written to
// each row's cache slot (none for slot < 0). A warp takes one pair of a head's dims: RoPE's (p, p + rotary/2),
// or, past the rotary dims, two plain ones. grid = ceil(heads · head/2 / 8), 256 threads, R · in · sizeof(T)
// bytes of dynamic shared memory.
template <int R>
__device__ void norm_qkv_rope_rows(T* qkv, T* residual_out, const T* residual, const T* delta, const T* norm_w,
                                   float eps, const T* w, const T* bias, const int* positions, const int* slots,
                                   T* kcache, T* vcache, const float* inv_freq, int in, int num_heads, int num_kv,
                                   int head, int rotary) {
  T* xs = reinterpret_cast<T*>(dynamic_shared());
  norm_rows<R>(xs, residual, delta, residual_out, norm_w, in, eps);
  const int heads = num_heads + 2 * num_kv;
  const int pair = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (pair >= heads * (head / 2)) return;
  const int h = pair / (head / 2), p = pair % (head / 2), rh = rotary / 2;
  const int da = p < rh ? p : rotary + (p - rh);
  const int db = p < rh ? p + rh : rotary + (p - rh) + (head - rotary) / 2;
  const int rows[2] = {h * head + da, h * head + db};
  float acc[2][R];
  gemv_pair_dot<R, 2>(acc, xs, w, rows, in);
  const int r = threadIdx.x & 31;  // lane r finishes step row r
  if (r >= R) return;
  float a, b;
  pick_row(acc, r, a, b);
  if (bias != nullptr) {
    a = rnd(a + tof(bias[rows[0]]));
    b = rnd(b + tof(bias[rows[1]]));
  }
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
  row[rows[0]] = fromf(a);
  row[rows[1]] = fromf(b);
  const int slot = slots[r];
  if (h < num_heads || slot < 0) return;
  const bool isK = h < num_heads + num_kv;
  T* cache = (isK ? kcache : vcache) + (size_t)slot * num_kv * head + (h - num_heads - (isK ? 0 : num_kv)) * head;
  cache[da] = fromf(a);
  cache[db] = fromf(b);
}

// out = silu(g) · u where [g ; u] = (rmsnorm(residual + delta) · w_norm) · wᵀ + bias: w is the fused fc|gate
// weight [2 · inter, in], a warp taking rows i and inter + i. grid = ceil(inter / 8), 256 threads,
// R · in · sizeof(T) bytes of dynamic shared memory.
template <int R>
__device__ void norm_gated_mlp_rows(T* out, T* residual_out, const T* residual, const T* delta, const T* norm_w,
                                    float eps, const T* w, const T* bias, int in, int inter) {
  T* xs = reinterpret_cast<T*>(dynamic_shared());
  norm_rows<R>(xs, residual, delta, residual_out, norm_w, in, eps);
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (i >= inter) return;
  const int rows[2] = {i, inter + i};
  float acc[2][R];
  gemv_pair_dot<R, 2>(acc, xs, w, rows, in);
  const int r = threadIdx.x & 31;
  if (r >= R) return;
  float a, b;
  pick_row(acc, r, a, b);
  if (bias != nullptr) {
    a = rnd(a + tof(bias[i]));
    b = rnd(b + tof(bias[inter + i]));
  }
  out[(size_t)r * inter + i] = fromf(rnd(a / (1.f + __expf(-a))) * b);
}

#define FUSED_CASE(R, CALL) \
  case R:                   \
    CALL;                   \
    break;
#define FUSED_ROWS(CALL_OF) \
  switch (rows) {           \
    FUSED_CASE(1, CALL_OF(1)) \
    FUSED_CASE(2, CALL_OF(2)) \
    FUSED_CASE(3, CALL_OF(3)) \
    FUSED_CASE(4, CALL_OF(4)) \
    FUSED_CASE(5, CALL_OF(5)) \
    FUSED_CASE(6, CALL_OF(6)) \
    FUSED_CASE(7, CALL_OF(7)) \
    default: CALL_OF(8);    \
  }

extern "C" __global__ void __launch_bounds__(256)
norm_qkv_rope(T* qkv, T* residual_out, const T* residual, const T* delta, const T* norm_w, float eps, const T* w,
              const T* bias, const int* positions, const int* slots, T* kcache, T* vcache, const float* inv_freq,
              int rows, int in, int num_heads, int num_kv, int head, int rotary) {
#define QKV_CALL(R)                                                                                             \
  norm_qkv_rope_rows<R>(qkv, residual_out, residual, delta, norm_w, eps, w, bias, positions, slots, kcache,   \
                        vcache, inv_freq, in, num_heads, num_kv, head, rotary)
  FUSED_ROWS(QKV_CALL)
#undef QKV_CALL
}

extern "C" __global__ void __launch_bounds__(256)
norm_gated_mlp(T* out, T* residual_out, const T* residual, const T* delta, const T* norm_w, float eps, const T* w,
               const T* bias, int rows, int in, int inter) {
#define MLP_CALL(R) norm_gated_mlp_rows<R>(out, residual_out, residual, delta, norm_w, eps, w, bias, in, inter)
  FUSED_ROWS(MLP_CALL)
#undef MLP_CALL
}

// Adds the qkv bias (when given), rotates q and k of each qkv row (gpt-neox halves) at its position and writes k and v to the row's KV cache
// slot (skipped for slot < 0: padding). Cache layout: [slot][kv head][head dim]. grid = rows.
extern "C" __global__ void rope_cache(T* qkv, const T* bias, const int* positions, const int* slots, T* kcache,
                                      T* vcache, const float* inv_freq, int num_heads, int num_kv, int head, int rotary) {
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
    kcache[(size_t)slot * kv + i] = k[i];
    vcache[(size_t)slot * kv + i] = vv[i];
  }
}

#define ATT_WARPS 16
#define MAX_HEAD 256

// Online softmax of one query row and head over keys [t_begin, t_end) of its paged KV cache, by one block of
// 32 × ATT_WARPS threads: each warp takes every ATT_WARPS-th group of four keys (their loads in flight
// together), lanes split the head dimension, and the warps' results are merged in shared memory. On return
// (after a barrier) ml[0] is the block's maximum score (−∞ when the range is empty), ml[1] the sum of
// exp(score − max) and acc[d] the sum of exp(score − max) · v[d].
__device__ void attend(const T* q, const T* kcache, const T* vcache, const int* table, int t_begin, int t_end, int kvh,
                       int num_kv, int head, int tpb, float scale, float* ml, float* acc_out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_lane = (head + 31) / 32;  // ≤ MAX_HEAD / 32
  float qv[MAX_HEAD / 32], acc[MAX_HEAD / 32];
#pragma unroll
  for (int j = 0; j < MAX_HEAD / 32; j++) {
    const int d = lane + 32 * j;
    qv[j] = (j < per_lane && d < head) ? tof(q[d]) : 0.f;
    acc[j] = 0.f;
  }
  float m = NEG_INF, l = 0.f;
  const int kv_stride = num_kv * head;
  for (int t0 = t_begin + warp * 4; t0 < t_end; t0 += ATT_WARPS * 4) {
    float s[4];
    size_t base[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int t = min(t0 + u, t_end - 1);
      base[u] = ((size_t)table[t / tpb] * tpb + t % tpb) * kv_stride + kvh * head;
      s[u] = 0.f;
#pragma unroll
      for (int j = 0; j < MAX_HEAD / 32; j++) {
        const int d = lane + 32 * j;
        if (j < per_lane && d < head) s[u] += qv[j] * tof(kcache[base[u] + d]);
      }
    }
#pragma unroll
    for (int u = 0; u < 4; u++) s[u] = t0 + u < t_end ? warp_sum(s[u]) * scale : NEG_INF;
    const float m2 = fmaxf(m, fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3])));
    const float correction = __expf(m - m2);
    float p[4];
#pragma unroll
    for (int u = 0; u < 4; u++) p[u] = __expf(s[u] - m2);
    l = l * correction + p[0] + p[1] + p[2] + p[3];
#pragma unroll
    for (int j = 0; j < MAX_HEAD / 32; j++) {
      const int d = lane + 32 * j;
      if (j < per_lane && d < head) {
        float a = acc[j] * correction;
#pragma unroll
        for (int u = 0; u < 4; u++) a += p[u] * tof(vcache[base[u] + d]);
        acc[j] = a;
      }
    }
    m = m2;
  }
  __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
  __shared__ float sacc[ATT_WARPS][MAX_HEAD];
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < MAX_HEAD / 32; j++) {
    const int d = lane + 32 * j;
    if (j < per_lane && d < head) sacc[warp][d] = acc[j];
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

// Causal attention of each query row and head over its sequence: row_seq[r] is the row's sequence (-1:
// padding), row_pos[r] its position (it sees keys 0..pos). grid = (rows, num_heads), block = 32 × ATT_WARPS.
extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
attention(T* out, const T* qkv, const T* kcache, const T* vcache, const int* row_seq, const int* row_pos,
          const int* block_tables, int max_blocks, int num_heads, int num_kv, int head, int tpb, float scale) {
  const int r = blockIdx.x, h = blockIdx.y;
  const int seq = row_seq[r];
  T* o = out + ((size_t)r * num_heads + h) * head;
  if (seq < 0) {
    for (int d = threadIdx.x; d < head; d += blockDim.x) o[d] = fromf(0.f);
    return;
  }
  __shared__ float ml[2], acc[MAX_HEAD];
  const T* q = qkv + (size_t)r * (num_heads + 2 * num_kv) * head + h * head;
  attend(q, kcache, vcache, block_tables + (size_t)seq * max_blocks, 0, row_pos[r] + 1, h / (num_heads / num_kv), num_kv,
         head, tpb, scale, ml, acc);
  for (int d = threadIdx.x; d < head; d += blockDim.x) o[d] = fromf(acc[d] / ml[1]);
}

// out[i] = x[rows[i]]; grid = number of rows gathered.
extern "C" __global__ void gather_rows(T* out, const T* x, const int* rows, int cols) {
  const T* src = x + (size_t)rows[blockIdx.x] * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(size_t)blockIdx.x * cols + c] = src[c];
}

// Greedy choice per logits row, in two stages so that a 152k-entry row is read by many blocks at once.
// Stage 1, grid (rows, ARGMAX_SPLIT): each block's slice gives its maximum (first index on ties) and the sum
// of exp(x − that maximum). Stage 2, grid rows: merges the slices into the token and its log-softmax.
#define ARGMAX_SPLIT 32

extern "C" __global__ void argmax_partial(float* partial, const float* logits, int vocab, int stride) {
  const float* row = logits + (size_t)blockIdx.x * stride;
  const int per = (vocab + ARGMAX_SPLIT - 1) / ARGMAX_SPLIT;
  const int lo = blockIdx.y * per, hi = min(vocab, lo + per);
  float best = NEG_INF, sum = 0.f;
  int arg = 0x7fffffff;
  for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float v = row[i];
    if (v > best) {
      sum = sum * __expf(best - v) + 1.f;
      best = v;
      arg = i;
    } else {
      sum += __expf(v - best);
      if (v == best && i < arg) arg = i;
    }
  }
  __shared__ float sv[256], ss[256];
  __shared__ int si[256];
  sv[threadIdx.x] = best;
  ss[threadIdx.x] = sum;
  si[threadIdx.x] = arg;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) {
      const float a = sv[threadIdx.x], b = sv[threadIdx.x + k];
      const float m = fmaxf(a, b);
      const float sa = a == NEG_INF ? 0.f : ss[threadIdx.x] * __expf(a - m);
      const float sb = b == NEG_INF ? 0.f : ss[threadIdx.x + k] * __expf(b - m);
      const int ia = si[threadIdx.x], ib = si[threadIdx.x + k];
      si[threadIdx.x] = (b > a || (b == a && ib < ia)) ? ib : ia;
      sv[threadIdx.x] = m;
      ss[threadIdx.x] = sa + sb;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float* out = partial + ((size_t)blockIdx.x * ARGMAX_SPLIT + blockIdx.y) * 3;
    out[0] = sv[0];
    out[1] = ss[0];
    out[2] = __int_as_float(si[0]);
  }
}

extern "C" __global__ void argmax_final(int* tokens, float* logprobs, const float* partial) {
  if (threadIdx.x != 0) return;
  const float* p = partial + (size_t)blockIdx.x * ARGMAX_SPLIT * 3;
  float best = NEG_INF;
  int arg = 0x7fffffff;
  for (int k = 0; k < ARGMAX_SPLIT; k++) {
    const float v = p[3 * k];
    const int i = __float_as_int(p[3 * k + 2]);
    if (v > best || (v == best && i < arg)) {
      best = v;
      arg = i;
    }
  }
  float sum = 0.f;
  for (int k = 0; k < ARGMAX_SPLIT; k++) {
    if (p[3 * k] != NEG_INF) sum += p[3 * k + 1] * __expf(p[3 * k] - best);
  }
  tokens[blockIdx.x] = arg;
  logprobs[blockIdx.x] = -logf(sum);
}

// Sampling on the GPU, one block (1024 threads) a logits row: temperature, then top-k, top-p and min-p as one
// threshold on the logits (found by bisection, so ties at the threshold are all kept), then a draw from the
// kept mass with a counter-based random number: splitmix64(seed, counter), so a request's draws depend only
// on its own seed and position. The log probability reported is under the temperature-scaled distribution
// before truncation, as the cpu sampler reports it.
#define SAMPLE_THREADS 1024

__device__ float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? partial[lane] : NEG_INF;
  return warp_max(v);
}

__device__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows(int* tokens, float* logprobs, const float* logits, int vocab, int stride, const float* temperature,
            const int* top_k, const float* top_p, const float* min_p, const unsigned* seeds, const int* counters) {
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
// leaves most of the GPU idle on long contexts, so each (row, head) is also split into chunks of
// ATT_CHUNK keys, each block writing a partial (max, sum, weighted values) that attention_merge combines.
// grid = (rows, heads, chunks), block = 32 × ATT_WARPS; chunks past a row's context exit at once.
#define ATT_CHUNK 256

extern "C" __global__ void __launch_bounds__(32 * ATT_WARPS)
attention_split(float* partial, const T* qkv, const T* kcache, const T* vcache, const int* row_seq, const int* row_pos,
                const int* block_tables, int max_blocks, int num_heads, int num_kv, int head, int tpb, float scale) {
  const int r = blockIdx.x, h = blockIdx.y, c = blockIdx.z;
  float* part = partial + (((size_t)r * num_heads + h) * gridDim.z + c) * (head + 2);
  const int seq = row_seq[r];
  const int visible = seq < 0 ? 0 : row_pos[r] + 1;
  const int t_begin = c * ATT_CHUNK, t_end = min(visible, t_begin + ATT_CHUNK);
  if (t_begin >= t_end) {
    if (threadIdx.x == 0) part[0] = NEG_INF;  // an empty chunk: the merge skips it
    return;
  }
  const T* q = qkv + (size_t)r * (num_heads + 2 * num_kv) * head + h * head;
  attend(q, kcache, vcache, block_tables + (size_t)seq * max_blocks, t_begin, t_end, h / (num_heads / num_kv), num_kv,
         head, tpb, scale, part, part + 2);
}

// Combines attention_split's chunks of each (row, head): grid = (rows, heads), block ≥ head threads.
extern "C" __global__ void attention_merge(T* out, const float* partial, int num_heads, int head, int chunks) {
  const int r = blockIdx.x, h = blockIdx.y;
  const float* part = partial + ((size_t)r * num_heads + h) * chunks * (head + 2);
  float mall = NEG_INF;
  for (int c = 0; c < chunks; c++) mall = fmaxf(mall, part[c * (head + 2)]);
  T* o = out + ((size_t)r * num_heads + h) * head;
  for (int d = threadIdx.x; d < head; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    for (int c = 0; c < chunks; c++) {
      const float* p = part + c * (head + 2);
      if (p[0] == NEG_INF) continue;
      const float w = __expf(p[0] - mall);
      num += p[2 + d] * w;
      den += p[1] * w;
    }
    o[d] = fromf(den > 0.f ? num / den : 0.f);
  }
}
