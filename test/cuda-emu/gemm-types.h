// The element types the emulator's cuBLAS and cuBLASLt stand-ins read and write (cudaDataType_t values).

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstddef>

namespace emu {

enum : int { R_32F = 0, R_16F = 2, R_8I = 3, R_32I = 10, R_16BF = 14, R_8F_E4M3 = 28 };

inline float load(const void* base, size_t i, int type) {
  switch (type) {
    case R_32F: return static_cast<const float*>(base)[i];
    case R_8I: return static_cast<const signed char*>(base)[i];
    case R_16F: return __half2float(static_cast<const __half*>(base)[i]);
    case R_8F_E4M3: {
      __nv_fp8_e4m3 v;
      v.__x = static_cast<const unsigned char*>(base)[i];
      return static_cast<float>(v);
    }
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  }
}

// Outputs: float32, float16 or bfloat16.
inline void store(void* base, size_t i, int type, float v) {
  switch (type) {
    case R_32F: static_cast<float*>(base)[i] = v; break;
    case R_16F: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
    default: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  }
}

}  // namespace emu
