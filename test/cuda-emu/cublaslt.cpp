// A CPU stand-in for libcublasLt.so: the matmuls kiln's FP8 and int8 GEMMs take (backends/cuda/cublas-lt.ts),
// column-major, op(A) transposed or not: E4M3, float32, float16 or bfloat16 operands with float32 accumulation,
// or int8 operands with exact int32 sums and int32 alpha and beta (compute type 32I), in stream order.

#include <cstdint>
#include <cstring>
#include <vector>

#include "emu.h"
#include "gemm-types.h"

namespace {

using emu::load;
using emu::R_16BF;
using emu::R_16F;
using emu::R_32F;
using emu::R_32I;
using emu::R_8F_E4M3;
using emu::R_8I;
using emu::store;

enum : int { DESC_TRANSA = 3, DESC_TRANSB = 4, COMPUTE_32F = 68, COMPUTE_32I = 72 };

struct Desc {
  bool integer = false;
  int transa = 0, transb = 0;
};
struct Layout {
  int type;
  uint64_t rows, cols;
  int64_t ld;
};

bool supported(int type) {
  return type == R_32F || type == R_16F || type == R_16BF || type == R_8F_E4M3 || type == R_8I || type == R_32I;
}

int handle_token;
int pref_token;

}  // namespace

extern "C" {

int cublasLtCreate(void** handle) {
  *handle = &handle_token;
  return 0;
}
int cublasLtDestroy(void*) { return 0; }

int cublasLtMatmulDescCreate(void** desc, int computeType, int scaleType) {
  const bool integer = computeType == COMPUTE_32I && scaleType == R_32I;
  if (!integer && (computeType != COMPUTE_32F || scaleType != R_32F)) return 7;
  *desc = new Desc{integer};
  return 0;
}
int cublasLtMatmulDescDestroy(void* desc) {
  delete static_cast<Desc*>(desc);
  return 0;
}
int cublasLtMatmulDescSetAttribute(void* desc, int attr, const void* buf, size_t size) {
  auto* d = static_cast<Desc*>(desc);
  if (size != 4) return 7;
  int v;
  std::memcpy(&v, buf, 4);
  if (attr == DESC_TRANSA) d->transa = v;
  else if (attr == DESC_TRANSB) d->transb = v;
  else return 7;
  return 0;
}

int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  if (!supported(type)) return 7;
  *layout = new Layout{type, rows, cols, ld};
  return 0;
}
int cublasLtMatrixLayoutDestroy(void* layout) {
  delete static_cast<Layout*>(layout);
  return 0;
}

int cublasLtMatmulPreferenceCreate(void** pref) {
  *pref = &pref_token;
  return 0;
}
int cublasLtMatmulPreferenceDestroy(void*) { return 0; }
int cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) { return 0; }

// One "algorithm": the heuristic result is zeros, and the matmul below is the only one.
int cublasLtMatmulAlgoGetHeuristic(void*, void*, void*, void*, void*, void*, void*, int requested,
                                   unsigned char* results, int* returned) {
  if (requested < 1) return 7;
  std::memset(results, 0, 96);
  *returned = 1;
  return 0;
}

// D = α · op(A) · op(B) + β · C; D and C the same matrix (what kiln passes).
int cublasLtMatmul(void*, void* desc, const void* alpha, uint64_t A, void* aDesc, uint64_t B, void* bDesc,
                   const void* beta, uint64_t C, void*, uint64_t D, void* dDesc, const unsigned char*, uint64_t,
                   size_t, void*) {
  const Desc d = *static_cast<Desc*>(desc);
  const Layout la = *static_cast<Layout*>(aDesc), lb = *static_cast<Layout*>(bDesc), ld = *static_cast<Layout*>(dDesc);
  // int8 (compute 32I): int8 operands into int32 sums; the others: no int8 or int32 matrix anywhere.
  const bool ints = la.type == R_8I && lb.type == R_8I && ld.type == R_32I;
  const bool any_int = la.type == R_8I || lb.type == R_8I || ld.type == R_8I || ld.type == R_32I;
  if (C != D || ld.type == R_8F_E4M3 || ints != d.integer || (!ints && any_int)) return 7;
  const int64_t m = d.transa ? la.cols : la.rows, k = d.transa ? la.rows : la.cols;
  const int64_t n = d.transb ? lb.rows : lb.cols;
  if ((d.transb ? lb.cols : lb.rows) != (uint64_t)k || ld.rows != (uint64_t)m || ld.cols != (uint64_t)n) return 7;
  if (ints) {
    const int32_t a = *static_cast<const int32_t*>(alpha), b = *static_cast<const int32_t*>(beta);
    emu::enqueue([=] {
      const auto* pa = (const signed char*)(uintptr_t)A;
      const auto* pb = (const signed char*)(uintptr_t)B;
      auto* pd = (int32_t*)(uintptr_t)D;
      for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) {
          int64_t s = 0;
          for (int64_t p = 0; p < k; p++)
            s += (int32_t)pa[d.transa ? p + i * la.ld : i + p * la.ld] * pb[d.transb ? j + p * lb.ld : p + j * lb.ld];
          const size_t at = i + j * ld.ld;
          pd[at] = (int32_t)(a * s + (b == 0 ? 0 : (int64_t)b * pd[at]));
        }
    });
    return 0;
  }
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  emu::enqueue([=] {
    const void* pa = (const void*)(uintptr_t)A;
    const void* pb = (const void*)(uintptr_t)B;
    void* pd = (void*)(uintptr_t)D;
    std::vector<float> ar((size_t)m * k), bc((size_t)n * k);
    for (int64_t i = 0; i < m; i++)
      for (int64_t p = 0; p < k; p++)
        ar[i * k + p] = load(pa, d.transa ? p + i * la.ld : i + p * la.ld, la.type);
    for (int64_t j = 0; j < n; j++)
      for (int64_t p = 0; p < k; p++)
        bc[j * k + p] = load(pb, d.transb ? j + p * lb.ld : p + j * lb.ld, lb.type);
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < m; i++) {
        float s = 0.f;
        for (int64_t p = 0; p < k; p++) s += ar[i * k + p] * bc[j * k + p];
        const size_t at = i + j * ld.ld;
        store(pd, at, ld.type, b == 0.f ? a * s : a * s + b * load(pd, at, ld.type));
      }
  });
  return 0;
}

}  // extern "C"
