// Weight-only per-channel quantization (W8A16, W4A16) as TensorRT-LLM stores it: the [out, in] weight is
// transposed to [in, out] and quantized along its last axis, one scale per output channel:
// scale = amax / 128 (int8) or amax / 8 (int4), q = clamp(round_half_even(w / scale)); int4 values are
// packed two to a byte along the output axis, the even column in the low nibble.

export interface WeightOnlyTensor {
  /** [in, out] int8 values, or [in, out/2] bytes of packed int4 pairs. */
  qweight: Int8Array;
  /** [out] dequantization scales: w ≈ q · scale. */
  scales: Float32Array;
  bits: 4 | 8;
}

/** Round half to even, as torch.round does. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function quantizeWeightOnly(w: Float32Array, outDim: number, inDim: number, bits: 4 | 8): WeightOnlyTensor {
  if (bits === 4 && outDim % 2 !== 0) throw new Error(`int4 packing needs an even output width, got ${outDim}`);
  const levels = bits === 8 ? 128 : 8;
  const [lo, hi] = bits === 8 ? [-128, 127] : [-8, 7];
  const scales = new Float32Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let amax = 0;
    for (let i = 0; i < inDim; i++) amax = Math.max(amax, Math.abs(w[o * inDim + i]));
    scales[o] = amax / levels;
  }
  const q = (o: number, i: number) => {
    const s = scales[o];
    return s === 0 ? 0 : Math.min(hi, Math.max(lo, roundHalfEven(w[o * inDim + i] / s)));
  };
  if (bits === 8) {
    const qweight = new Int8Array(inDim * outDim);
    for (let i = 0; i < inDim; i++) for (let o = 0; o < outDim; o++) qweight[i * outDim + o] = q(o, i);
    return { qweight, scales, bits };
  }
  const qweight = new Int8Array((inDim * outDim) / 2);
  for (let i = 0; i < inDim; i++) {
    for (let o = 0; o < outDim; o += 2) qweight[(i * outDim + o) / 2] = (q(o, i) & 0xf) | ((q(o + 1, i) & 0xf) << 4);
  }
  return { qweight, scales, bits };
}

/** The int4 value in nibble `o` of row i of a packed [in, out/2] tensor. */
export function int4At(packed: Int8Array, outDim: number, i: number, o: number): number {
  const byte = packed[(i * outDim + o) >> 1] & 0xff;
  const nibble = o % 2 === 0 ? byte & 0xf : byte >> 4;
  return nibble >= 8 ? nibble - 16 : nibble;
}

/** w[o, i] = q[i, o] · scale[o], as a row-major [out, in] float32 matrix (for references and checks). */
export function dequantizeWeightOnly(t: WeightOnlyTensor, outDim: number, inDim: number): Float32Array {
  const w = new Float32Array(outDim * inDim);
  for (let i = 0; i < inDim; i++) {
    for (let o = 0; o < outDim; o++) {
      const q = t.bits === 8 ? t.qweight[i * outDim + o] : int4At(t.qweight, outDim, i, o);
      w[o * inDim + i] = q * t.scales[o];
    }
  }
  return w;
}
