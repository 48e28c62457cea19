// SmoothQuant (Xiao et al.) as TensorRT-LLM's converter defines it for its W8A8_SQ_*_PLUGIN formats:
// per input channel j a smoothing factor s_j = amax_x[j]^α / amax_w[j]^(1−α) moves activation outliers into
// the weights (x / s, W · s); the smoothed weight is quantized to int8 (127 / amax per output channel, or
// per tensor: per Q/K/V block for qkv), and activations are quantized at run time, per token (dynamic) or with
// one calibrated scale (static). The scales stored are those of TensorRT-LLM's generate_int8.

import { roundHalfEven } from "./weight-only.js";

export interface SqVariant {
  perToken: boolean;
  perChannel: boolean;
}

/** TensorRT-LLM's quant_algo for a SmoothQuant variant. */
export function sqAlgo(v: SqVariant) {
  if (v.perChannel && v.perToken) return "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN" as const;
  if (v.perChannel) return "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN" as const;
  if (v.perToken) return "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN" as const;
  return "W8A8_SQ_PER_TENSOR_PLUGIN" as const;
}

export function sqVariantOf(algo: string | null): SqVariant | null {
  if (algo === null || !algo.startsWith("W8A8_SQ_") || !algo.endsWith("_PLUGIN")) return null;
  return { perChannel: algo.includes("PER_CHANNEL"), perToken: algo.includes("PER_TOKEN") };
}

/** What a float32 tensor beside a SmoothQuant linear's int8 weight holds. */
export type SqCompanionRole = "per_channel_scale" | "act_scale" | "smoother" | "quantization_scaling_factor";

/**
 * The float32 tensors stored beside the int8 `<lin>.weight` of a SmoothQuant linear, in order, with their
 * shapes: per_channel_scale ([1, out] for qkv and per-channel variants, else [1, 1]); act_scale (static);
 * smoother (dense and proj, which have no norm to fold s into); the layer's quantization_scaling_factor
 * (dense and proj, static: `attention.`/`mlp.quantization_scaling_factor`).
 */
export function sqCompanions(
  lin: string,
  v: SqVariant,
  out: number,
  inDim: number,
): { name: string; shape: number[]; role: SqCompanionRole }[] {
  const qkv = lin.endsWith("attention.qkv");
  const row = lin.endsWith("attention.dense") || lin.endsWith("mlp.proj");
  const c: { name: string; shape: number[]; role: SqCompanionRole }[] = [
    { name: `${lin}.per_channel_scale`, shape: [1, v.perChannel || qkv ? out : 1], role: "per_channel_scale" },
  ];
  if (!v.perToken) c.push({ name: `${lin}.act_scale`, shape: [1, 1], role: "act_scale" });
  if (row) c.push({ name: `${lin}.smoother`, shape: [1, inDim], role: "smoother" });
  if (row && !v.perToken) {
    const owner = lin.replace(/\.[^.]+$/, "");
    c.push({ name: `${owner}.quantization_scaling_factor`, shape: [1], role: "quantization_scaling_factor" });
  }
  return c;
}

/**
 * Where a static SmoothQuant linear's scale_to_int lives (`layer`: "transformer.layers.N", `kind`: e.g.
 * "attention.qkv"): the norm before it, or, for dense and proj, the layer's quantization_scaling_factor.
 * null: not a layer SmoothQuant covers.
 */
export function sqScaleToIntName(layer: string, kind: string): string | null {
  const names: Record<string, string> = {
    "attention.qkv": `${layer}.input_layernorm.scale_to_int`,
    "mlp.fc": `${layer}.post_layernorm.scale_to_int`,
    "mlp.gate": `${layer}.post_layernorm.scale_to_int`,
    "attention.dense": `${layer}.attention.quantization_scaling_factor`,
    "mlp.proj": `${layer}.mlp.quantization_scaling_factor`,
  };
  return names[kind] ?? null;
}

/** s_j = max(amax_x[j], 1e-5)^α / max(amax_w[j], 1e-5)^(1−α), amax_w over every weight sharing the input. */
export function smoothingFactors(xAmax: Float32Array, weights: Float32Array[], inDim: number, alpha: number) {
  const s = new Float32Array(inDim);
  for (let j = 0; j < inDim; j++) {
    let w = 0;
    for (const m of weights) for (let o = j; o < m.length; o += inDim) w = Math.max(w, Math.abs(m[o]));
    s[j] = Math.max(Math.max(xAmax[j], 1e-5) ** alpha / Math.max(w, 1e-5) ** (1 - alpha), 1e-5);
  }
  return s;
}

export interface SqLinear {
  /** [out, in] int8 of the smoothed weight. */
  q: Int8Array;
  /** Per output channel, scale_w_orig_quant: 127 / amax (of the channel, or of its tensor or block). */
  wScale: Float32Array;
}

/**
 * Quantizes a smoothed [out, in] weight: q = clamp(round(w · scale), −127, 127), scale = 127 / amax per
 * output channel, or per block of output rows (`blocks`: their sizes; one block: per tensor).
 */
export function quantizeSq(w: Float32Array, outDim: number, inDim: number, perChannel: boolean, blocks: number[]) {
  const rowAmax = new Float32Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let m = 0;
    for (let i = 0; i < inDim; i++) m = Math.max(m, Math.abs(w[o * inDim + i]));
    rowAmax[o] = m;
  }
  const wScale = new Float32Array(outDim);
  if (perChannel) for (let o = 0; o < outDim; o++) wScale[o] = 127 / Math.max(rowAmax[o], 1e-8);
  else {
    let start = 0;
    for (const size of blocks) {
      const m = Math.max(...rowAmax.subarray(start, start + size), 1e-8);
      wScale.fill(127 / m, start, start + size);
      start += size;
    }
  }
  const q = new Int8Array(outDim * inDim);
  for (let o = 0; o < outDim; o++)
    for (let i = 0; i < inDim; i++)
      q[o * inDim + i] = Math.max(-127, Math.min(127, roundHalfEven(w[o * inDim + i] * wScale[o])));
  return { q, wScale } satisfies SqLinear;
}

/** What the cpu kernel needs to run one SmoothQuant linear. */
export interface SqWeight {
  /** [out, in] int8. */
  q: Int8Array;
  /** [out] (broadcast when stored [1, 1]): per-token modes 1 / wScale, static modes scale_y_accum_quant. */
  perChannelScale: Float32Array;
  /** Static modes: 127 / amax of the (smoothed) input, and act_scale = amax_y / 127. */
  staticScales: { scaleToInt: number; actScale: number } | null;
  /** dense and proj: the input is divided by it at run time. */
  smoother: Float32Array | null;
}

/** Quantizes a row of activations as the format says: returns the scale it multiplied by (127 / amax per token). */
export function quantizeActivations(x: Float32Array, scaleToInt: number | null, out: Int8Array): number {
  let scale = scaleToInt;
  if (scale === null) {
    let m = 0;
    for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
    scale = m > 0 ? 127 / m : 1;
  }
  for (let i = 0; i < x.length; i++) out[i] = Math.max(-127, Math.min(127, roundHalfEven(x[i] * scale)));
  return scale;
}

/**
 * out[r, o] = (Σ_i qx[r, i] · q[o, i]) · perChannelScale[o] · (per token: 1 / scale_r; static: act_scale) + bias.
 */
export function matmulSmoothQuant(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: SqWeight,
  outDim: number,
  bias: Float32Array | null,
  out: Float32Array,
): void {
  const xs = new Float32Array(inDim);
  const qx = new Int8Array(inDim);
  const one = w.perChannelScale.length === 1;
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < inDim; i++) xs[i] = x[r * inDim + i] / (w.smoother ? w.smoother[i] : 1);
    const sx = quantizeActivations(xs, w.staticScales?.scaleToInt ?? null, qx);
    const post = w.staticScales ? w.staticScales.actScale : 1 / sx;
    for (let o = 0; o < outDim; o++) {
      let acc = 0; // exact: at most 127² · inDim, far below 2^53
      const row = o * inDim;
      for (let i = 0; i < inDim; i++) acc += qx[i] * w.q[row + i];
      out[r * outDim + o] = acc * w.perChannelScale[one ? 0 : o] * post + (bias ? bias[o] : 0);
    }
  }
}
