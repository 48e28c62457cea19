// How a cuda engine holds weight-only (W8A16, W4A16) weights: TensorRT-LLM's checkpoint stores them [in, out]
// (int4 packed along out); kiln's GEMV reads one output row per warp, so kiln build stores them [out, in]
// (int8), or [out, in/2] bytes of int4 pairs along in, the even element in the low nibble.

import { int4At } from "../../quantization/weight-only.js";

export function cudaWeightOnlyLayout(q: Int8Array, out: number, inDim: number, bits: 4 | 8): Uint8Array {
  if (bits === 8) {
    const t = new Uint8Array(out * inDim);
    for (let i = 0; i < inDim; i++) for (let o = 0; o < out; o++) t[o * inDim + i] = q[i * out + o] & 0xff;
    return t;
  }
  const t = new Uint8Array((out * inDim) / 2);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inDim; i += 2)
      t[(o * inDim + i) / 2] = (int4At(q, out, i, o) & 0xf) | ((int4At(q, out, i + 1, o) & 0xf) << 4);
  return t;
}
