// A CPU stand-in for libcublas.so: cublasGemmEx in the column-major convention, float32 accumulation, in
// stream order (so a captured graph replays it).

#include <cstdint>
#include <vector>

#include "emu.h"
#include "gemm-types.h"

namespace {

using emu::load;
using emu::R_16BF;
using emu::R_16F;
using emu::R_32F;
using emu::store;

bool supported(int type) { return type == R_32F || type == R_16F || type == R_16BF; }

int handle_token;

}  // namespace

extern "C" {

int cublasCreate_v2(void** handle) {
  *handle = &handle_token;
  return 0;
}
int cublasDestroy_v2(void*) { return 0; }
int cublasSetStream_v2(void*, void*) { return 0; }
int cublasSetWorkspace_v2(void*, uint64_t, size_t) { return 0; }
int cublasSetMathMode(void*, int) { return 0; }

// C[m×n] = α · op(A)[m×k] · op(B)[k×n] + β · C, column-major, op = N (0) or T (1).
int cublasGemmEx(void*, int transa, int transb, int m, int n, int k, const float* alpha, uint64_t A, int Atype,
                 int lda, uint64_t B, int Btype, int ldb, const float* beta, uint64_t C, int Ctype, int ldc, int,
                 int) {
  if (!supported(Atype) || !supported(Btype) || !supported(Ctype) || transa > 1 || transb > 1) return 7;
  const float a = *alpha, b = *beta;
  emu::enqueue([=] {
    // op(A) as rows of k and op(B) as columns of k, in float, so the inner loop is one contiguous dot product.
    std::vector<float> ar((size_t)m * k), bc((size_t)n * k);
    const void* pa = (const void*)(uintptr_t)A;
    const void* pb = (const void*)(uintptr_t)B;
    for (int i = 0; i < m; i++)
      for (int p = 0; p < k; p++)
        ar[(size_t)i * k + p] = load(pa, transa ? (size_t)p + (size_t)i * lda : (size_t)i + (size_t)p * lda, Atype);
    for (int j = 0; j < n; j++)
      for (int p = 0; p < k; p++)
        bc[(size_t)j * k + p] = load(pb, transb ? (size_t)j + (size_t)p * ldb : (size_t)p + (size_t)j * ldb, Btype);
    void* pc = (void*)(uintptr_t)C;
    for (int j = 0; j < n; j++) {
      for (int i = 0; i < m; i++) {
        const float* x = &ar[(size_t)i * k];
        const float* y = &bc[(size_t)j * k];
        float s = 0.f;
        for (int p = 0; p < k; p++) s += x[p] * y[p];
        const size_t at = (size_t)i + (size_t)j * ldc;
        store(pc, at, Ctype, b == 0.f ? a * s : a * s + b * load(pc, at, Ctype));
      }
    }
  });
  return 0;
}

}  // extern "C"
