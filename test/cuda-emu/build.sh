#!/usr/bin/env bash
# Builds the CUDA emulator (driver, NVRTC, cuBLAS, cuBLASLt and NCCL stand-ins) into test/cuda-emu/build/. It needs g++ and
# CUDA's headers (cuda_fp16.h, vector_types.h): /usr/local/cuda/include or KILN_CUDA_INCLUDE_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
inc="${KILN_CUDA_INCLUDE_DIR:-/usr/local/cuda/include}"
mkdir -p "$out"
cxx="${KILN_CUDA_EMU_CXX:-g++}"
flags=(-std=c++17 -O2 -fPIC -shared -I"$inc" -Wall)
"$cxx" "${flags[@]}" -Wl,-soname,libcuda.so.1 "$here/driver.cpp" -o "$out/libcuda.so.1" -pthread
ln -sf libcuda.so.1 "$out/libcuda.so"
"$cxx" "${flags[@]}" "$here/cublas.cpp" -o "$out/libcublas.so" "$out/libcuda.so.1" -Wl,-rpath,"$out"
"$cxx" "${flags[@]}" "$here/cublaslt.cpp" -o "$out/libcublasLt.so" "$out/libcuda.so.1" -Wl,-rpath,"$out"
"$cxx" "${flags[@]}" "$here/nvrtc.cpp" -o "$out/libnvrtc.so"
"$cxx" "${flags[@]}" -Wl,-soname,libnccl.so.2 "$here/nccl.cpp" -o "$out/libnccl.so.2" "$out/libcuda.so.1" -Wl,-rpath,"$out"
cp "$here/emu.h" "$here/kernel-prelude.h" "$out/"
