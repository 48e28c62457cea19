// How a cuda engine holds quantized linear layers, one layout for every format: the codes [out, ·] in the
// order kiln's GEMV streams them (one output row a warp), float32 scales, and a small descriptor section
// `<lin>.quant` saying how to decode them and what the format does to the layer's input. TensorRT-LLM's
// checkpoints store int8 and int4 weight-only weights [in, out] (int4 packed along out); kiln build
// transposes them to [out, in] (int8) or [out, in/2] bytes of int4 pairs along in, the even element in the
// low nibble. FP8 and NVFP4 weights are already [out, in] and [out, in/2].

import { int4At } from "../../quantization/weight-only.js";

/** The weight codes a layer holds: QK_* in decoder.cu, in this order. */
export const QUANT_KINDS = ["int8", "int4", "fp8", "fp4"] as const;
export type QuantKind = (typeof QUANT_KINDS)[number];

/** What a format does to a layer's input before the GEMM: QIN_* in decoder.cu, in this order. */
export const INPUT_ROUNDINGS = ["none", "fp8", "int8", "int8_token", "fp4", "int8_times"] as const;
export type InputRounding = (typeof INPUT_ROUNDINGS)[number];

/**
 * y = alpha · weightScale · inputScale · Σ input'(x) · w' (per-channel or group scales inside w'), where
 * input'(x) is x (times the pre-quant scale, when the layer has one) rounded as `rounding` says, in units of
 * inputScale (int8_token: of each row's own scale; int8_times: of 1 / inputScale, a multiplier).
 */
export interface QuantDescriptor {
  kind: QuantKind;
  /** null: the input is used as it is (weight-only). */
  rounding: InputRounding | null;
  inputScale: number;
  weightScale: number;
  alpha: number;
}

/** `<lin>.weight` → `<lin>.quant`, the descriptor's section. */
export function descriptorName(weightName: string): string {
  return weightName.replace(/\.weight$/, ".quant");
}

export function encodeDescriptor(d: QuantDescriptor): Uint8Array {
  const rounding = d.rounding === null ? -1 : INPUT_ROUNDINGS.indexOf(d.rounding);
  const v = Float32Array.of(QUANT_KINDS.indexOf(d.kind), rounding, d.inputScale, d.weightScale, d.alpha);
  return new Uint8Array(v.buffer);
}

export function decodeDescriptor(v: Float32Array): QuantDescriptor {
  const kind = QUANT_KINDS[v[0]];
  const rounding = v[1] < 0 ? null : INPUT_ROUNDINGS[v[1]];
  if (kind === undefined || rounding === undefined || v.length !== 5) {
    throw new RangeError(
      `a quantized layer's descriptor [${Array.from(v)}] names no kind and input rounding kiln knows`,
    );
  }
  return { kind, rounding, inputScale: v[2], weightScale: v[3], alpha: v[4] };
}

/** TensorRT-LLM's [in, out] int8 (or [in, out/2] int4 pairs along out) as kiln's [out, in] (or [out, in/2]). */
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

/** Scales stored [groups, out] (TensorRT-LLM) as [out, groups], where kiln's GEMV reads a row's groups together. */
export function groupsByRow(src: Float32Array, groups: number, out: number): Float32Array {
  const t = new Float32Array(out * groups);
  for (let g = 0; g < groups; g++) for (let o = 0; o < out; o++) t[o * groups + g] = src[g * out + o];
  return t;
}
