// The formats `kiln quantize` writes, as TensorRT-LLM's checkpoints hold what NVIDIA ModelOpt produces: FP8,
// W8A8_SQ_PER_CHANNEL (int8_sq), W4A16_AWQ, W4A8_AWQ and NVFP4. For each, the tensors one linear layer's
// weight becomes (names, dtypes, shapes, bytes), and the way back: the weight dequantized exactly, with what
// the format does to the layer's input at run time (pre-quant scaling, FP8/int8/FP4 rounding).

import { type Dtype, decodeToFloat32, type EncodableDtype, encodeFromFloat32 } from "../checkpoint/dtype.js";
import type { RankTensor } from "../checkpoint/rank-split.js";
import type { TensorSpec } from "../checkpoint/safetensors.js";
import { CheckpointError, UsageError } from "../errors.js";
import {
  applyAwqScales,
  awqClipSearch,
  awqSearch,
  dequantizeInt4Groups,
  packInt4Pairs,
  quantizeInt4Symmetric,
} from "./awq.js";
import type { LinearInputs } from "./calibration.js";
import { dequantizeNvfp4, fakeQuantizeNvfp4Rows, NVFP4_BLOCK, nvfp4GlobalScale, quantizeNvfp4 } from "./fp4.js";
import { decodeE4M3, E4M3_MAX, fakeQuantizeE4M3, quantizeE4M3 } from "./fp8.js";
import type { LayerQuantizer } from "./layer-quantizer.js";
import { companionName } from "./mode.js";
import { int4At, roundHalfEven } from "./weight-only.js";

export const MODELOPT_ALGOS = ["FP8", "W8A8_SQ_PER_CHANNEL", "W4A16_AWQ", "W4A8_AWQ", "NVFP4"] as const;
export type ModelOptAlgo = (typeof MODELOPT_ALGOS)[number];

/** The tensors each format stores beside `<lin>.weight` (and `<lin>.bias`). */
export const MODELOPT_COMPANIONS: Record<ModelOptAlgo, readonly string[]> = {
  FP8: ["weights_scaling_factor", "activation_scaling_factor"],
  W8A8_SQ_PER_CHANNEL: ["weights_scaling_factor", "activation_scaling_factor", "prequant_scaling_factor"],
  W4A16_AWQ: ["weights_scaling_factor", "prequant_scaling_factor"],
  W4A8_AWQ: ["weights_scaling_factor", "prequant_scaling_factor", "activation_scaling_factor", "alpha"],
  NVFP4: ["weights_block_scaling_factor", "weights_global_scaling_factor", "activation_global_scaling_factor", "alpha"],
};

export function isModelOptAlgo(algo: string | null | undefined): algo is ModelOptAlgo {
  return (MODELOPT_ALGOS as readonly string[]).includes(algo ?? "");
}

/** What calibration recorded for a linear layer, by its weight's single-rank name. */
export interface LinearCalibration {
  inputAmax(globalName: string): Float32Array;
  inputs(globalName: string): LinearInputs;
  /** false: stand-in statistics, so AWQ keeps unit scales and no clipping instead of searching them. */
  searchable?: boolean;
}

export interface ModelOptSettings {
  /** AWQ's group of input channels (--awq_block_size). */
  awqGroupSize: number;
  /** SmoothQuant's migration strength for int8_sq. */
  sqAlpha: number;
}

const f32 = (v: Float32Array) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
const encode = (v: Float32Array, target: EncodableDtype) => (target === "F32" ? f32(v) : encodeFromFloat32(v, target));
const scalar = (x: number) => f32(Float32Array.of(x));

function maxAbs(v: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i]));
  return m;
}

/** The input columns a rank's slice of a row-parallel layer reads (null: all of them). */
function inputColumns(t: RankTensor): [number, number] | null {
  const p = t.parts[0];
  return "cols" in p && p.cols ? p.cols : null;
}

function sliceColumns(x: Float32Array, rows: number, cols: [number, number] | null): Float32Array {
  if (!cols) return x;
  const full = x.length / rows;
  const w = cols[1] - cols[0];
  const out = new Float32Array(rows * w);
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * full + cols[0], r * full + cols[1]), r * w);
  return out;
}

/** Per input channel, the largest |x| this rank's slice of the layer sees. */
function rankInputAmax(t: RankTensor, calib: LinearCalibration, globalName: string): Float32Array {
  const a = calib.inputAmax(globalName);
  const c = inputColumns(t);
  return c ? a.subarray(c[0], c[1]) : a;
}

/** SmoothQuant's per-input-channel factors for one layer: s_j = amax_x^α / amax_w^(1−α). */
function smoothing(xAmax: Float32Array, w: Float32Array, out: number, inDim: number, alpha: number): Float32Array {
  const wAmax = new Float32Array(inDim);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inDim; i++) wAmax[i] = Math.max(wAmax[i], Math.abs(w[o * inDim + i]));
  return xAmax.map((a, j) => Math.max(Math.max(a, 1e-5) ** alpha / Math.max(wAmax[j], 1e-5) ** (1 - alpha), 1e-5));
}

/** Packed int4 bytes [in, out/2] carried in words of the model dtype, as TensorRT-LLM stores groupwise weights. */
function int4CarrierShape(t: RankTensor, target: EncodableDtype): number[] {
  const [out, inDim] = t.shape;
  const carrier = target === "F32" ? 4 : 2;
  if ((out / 2) % carrier !== 0) {
    throw new UsageError(`${t.name}: ${out} output channels do not pack into ${target} words (int4 pairs)`);
  }
  return [inDim, out / 2 / carrier];
}

/** Calibration rows AWQ's searches use: spread evenly over what calibration captured (cost grows with rows). */
const AWQ_ROWS = 512;

function evenRows(inputs: LinearInputs, most: number): LinearInputs {
  if (inputs.rows <= most) return inputs;
  const cols = inputs.x.length / inputs.rows;
  const x = new Float32Array(most * cols);
  for (let r = 0; r < most; r++) {
    const from = Math.floor((r * inputs.rows) / most);
    x.set(inputs.x.subarray(from * cols, (from + 1) * cols), r * cols);
  }
  return { x, rows: most };
}

/** Writes one ModelOpt format; `specs` and `tensors` list the same tensors in the same order. */
export function modeloptQuantizer(algo: ModelOptAlgo, calib: LinearCalibration, s: ModelOptSettings): LayerQuantizer {
  const awq = algo === "W4A16_AWQ" || algo === "W4A8_AWQ";
  return {
    algo,
    specs(t, target) {
      const [out, inDim] = t.shape;
      const c = (suffix: string, dtype: Dtype, shape: number[]): TensorSpec => ({
        name: companionName(t.name, suffix),
        dtype,
        shape,
      });
      switch (algo) {
        case "FP8":
          return [
            { name: t.name, dtype: "F8_E4M3", shape: [out, inDim] },
            c("weights_scaling_factor", "F32", [1]),
            c("activation_scaling_factor", "F32", [1]),
          ];
        case "W8A8_SQ_PER_CHANNEL":
          return [
            { name: t.name, dtype: "I8", shape: [out, inDim] },
            c("weights_scaling_factor", "F32", [out]),
            c("activation_scaling_factor", "F32", [1]),
            c("prequant_scaling_factor", target, [inDim]),
          ];
        case "NVFP4":
          if (inDim % NVFP4_BLOCK !== 0) {
            throw new UsageError(`nvfp4: in_features ${inDim} of ${t.name} is not a multiple of ${NVFP4_BLOCK}`);
          }
          return [
            { name: t.name, dtype: "U8", shape: [out, inDim / 2] },
            c("weights_block_scaling_factor", "F8_E4M3", [out, inDim / NVFP4_BLOCK]),
            c("weights_global_scaling_factor", "F32", [1]),
            c("activation_global_scaling_factor", "F32", [1]),
            c("alpha", "F32", [1]),
          ];
        default: {
          if (inDim % s.awqGroupSize !== 0) {
            throw new UsageError(
              `--awq_block_size ${s.awqGroupSize} does not divide in_features ${inDim} of ${t.name}`,
            );
          }
          const specs = [
            { name: t.name, dtype: target, shape: int4CarrierShape(t, target) },
            c("weights_scaling_factor", target, [inDim / s.awqGroupSize, out]),
            c("prequant_scaling_factor", target, [1, inDim]),
          ];
          if (algo === "W4A8_AWQ") specs.push(c("activation_scaling_factor", "F32", [1]), c("alpha", "F32", [1]));
          return specs;
        }
      }
    },
    tensors(t, w, target, globalName) {
      const [out, inDim] = t.shape;
      switch (algo) {
        case "FP8": {
          // One scale for the whole (fused) weight: the largest of its parts', as TensorRT-LLM keeps for qkv.
          const ws = Math.max(maxAbs(w), 1e-12) / E4M3_MAX;
          const xs = Math.max(maxAbs(rankInputAmax(t, calib, globalName)), 1e-12) / E4M3_MAX;
          return [quantizeE4M3(w, ws), scalar(ws), scalar(xs)];
        }
        case "W8A8_SQ_PER_CHANNEL": {
          const xAmax = rankInputAmax(t, calib, globalName);
          const sm = smoothing(xAmax, w, out, inDim, s.sqAlpha);
          const q = new Int8Array(out * inDim);
          const ws = new Float32Array(out);
          for (let o = 0; o < out; o++) {
            let m = 0;
            for (let i = 0; i < inDim; i++) m = Math.max(m, Math.abs(w[o * inDim + i] * sm[i]));
            ws[o] = Math.max(m, 1e-12) / 127;
            for (let i = 0; i < inDim; i++) {
              const v = roundHalfEven((w[o * inDim + i] * sm[i]) / ws[o]);
              q[o * inDim + i] = Math.max(-127, Math.min(127, v));
            }
          }
          const xs = Math.max(maxAbs(xAmax.map((a, j) => a / sm[j])), 1e-12) / 127;
          return [
            new Uint8Array(q.buffer),
            f32(ws),
            scalar(xs),
            encode(
              sm.map((v) => 1 / v),
              target,
            ),
          ];
        }
        case "NVFP4": {
          const t4 = quantizeNvfp4(w, out, inDim);
          const xg = nvfp4GlobalScale(maxAbs(rankInputAmax(t, calib, globalName)));
          return [t4.packed, t4.blockScales, scalar(t4.globalScale), scalar(xg), scalar(xg * t4.globalScale)];
        }
        default: {
          if (!awq) throw new Error(`unreachable: ${algo}`);
          let scales: Float32Array = new Float32Array(inDim).fill(1);
          let scaled: Float32Array = w;
          let clip: Float32Array | undefined;
          if (calib.searchable !== false) {
            const captured = evenRows(calib.inputs(globalName), AWQ_ROWS);
            const x = sliceColumns(captured.x, captured.rows, inputColumns(t));
            scales = awqSearch({
              x,
              rows: captured.rows,
              inDim,
              weights: [{ w, out }],
              groupSize: s.awqGroupSize,
            }).scales;
            scaled = applyAwqScales(w, out, inDim, scales);
            // The scaled weight reads x / s: its clipping is judged on those inputs.
            const xScaled = x.map((v, k) => v / scales[k % inDim]);
            clip = awqClipSearch(xScaled, captured.rows, inDim, scaled, out, s.awqGroupSize);
          }
          const g = quantizeInt4Symmetric(scaled, out, inDim, s.awqGroupSize, clip);
          const packed = packInt4Pairs(g.q, out, inDim);
          const prequant = scales.map((v) => 1 / v);
          if (algo === "W4A16_AWQ") return [packed, encode(g.scales, target), encode(prequant, target)];
          // W4A8: the FP8 input scale is folded into the pre-quant scale and the output's alpha.
          const xAmax = rankInputAmax(t, calib, globalName);
          const xs = Math.max(maxAbs(xAmax.map((a, j) => a * prequant[j])), 1e-12) / E4M3_MAX;
          return [
            packed,
            encode(g.scales, target),
            encode(
              prequant.map((p) => p / xs),
              target,
            ),
            scalar(xs),
            scalar(xs),
          ];
        }
      }
    },
  };
}

/** A quantized linear layer as the cpu backend computes it: y = alpha · quantizeInput(x ⊙ prequant) · weightᵀ. */
export interface DequantizedLinear {
  /** [out, in], exactly the values the format encodes. */
  weight: Float32Array;
  out: number;
  inDim: number;
  prequant: Float32Array | null;
  quantizeInput: ((x: Float32Array, rows: number, cols: number) => Float32Array) | null;
  alpha: number;
}

export interface StoredTensor {
  dtype: Dtype;
  shape: number[];
  bytes: Uint8Array;
}

/** Rounds each input to the int8 grid of a static scale, as W8A8_SQ_PER_CHANNEL's GEMM sees it. */
function int8Input(scale: number) {
  return (x: Float32Array) => x.map((v) => Math.max(-127, Math.min(127, roundHalfEven(v / scale))) * scale);
}

/** Reads one ModelOpt-format linear back from its tensors (`get(suffix)`: `<lin>.<suffix>`, or null). */
export function dequantizeModelOpt(
  algo: ModelOptAlgo,
  name: string,
  get: (suffix: string) => StoredTensor | null,
): DequantizedLinear {
  const need = (suffix: string) => {
    const t = get(suffix);
    if (!t) throw new CheckpointError(`${algo} layer ${name} has no "${companionName(name, suffix)}"`);
    return t;
  };
  const floats = (suffix: string) => {
    const t = need(suffix);
    return decodeToFloat32(t.bytes, t.dtype);
  };
  const w = need("weight");
  const scalarOf = (suffix: string) => floats(suffix)[0];
  switch (algo) {
    case "FP8": {
      const [out, inDim] = w.shape;
      const ws = scalarOf("weights_scaling_factor");
      const xs = scalarOf("activation_scaling_factor");
      const weight = Float32Array.from(w.bytes, (b) => decodeE4M3(b) * ws);
      return { weight, out, inDim, prequant: null, quantizeInput: (x) => fakeQuantizeE4M3(x, xs), alpha: 1 };
    }
    case "W8A8_SQ_PER_CHANNEL": {
      const [out, inDim] = w.shape;
      const ws = floats("weights_scaling_factor");
      const q = new Int8Array(w.bytes.buffer, w.bytes.byteOffset, w.bytes.byteLength);
      const weight = Float32Array.from(q, (v, k) => v * ws[Math.floor(k / inDim)]);
      const xs = scalarOf("activation_scaling_factor");
      return {
        weight,
        out,
        inDim,
        prequant: floats("prequant_scaling_factor"),
        quantizeInput: int8Input(xs),
        alpha: 1,
      };
    }
    case "NVFP4": {
      const [out, halfIn] = w.shape;
      const inDim = halfIn * 2;
      const blocks = need("weights_block_scaling_factor");
      const weight = dequantizeNvfp4(
        { packed: w.bytes, blockScales: blocks.bytes, globalScale: scalarOf("weights_global_scaling_factor") },
        out,
        inDim,
      );
      const xg = scalarOf("activation_global_scaling_factor");
      return {
        weight,
        out,
        inDim,
        prequant: null,
        quantizeInput: (x, rows, cols) => fakeQuantizeNvfp4Rows(x, rows, cols, xg),
        alpha: 1,
      };
    }
    default: {
      const scales = need("weights_scaling_factor");
      const [groups, out] = scales.shape;
      const inDim = w.shape[0];
      const groupSize = inDim / groups;
      const packed = new Int8Array(w.bytes.buffer, w.bytes.byteOffset, w.bytes.byteLength);
      const q = new Int8Array(out * inDim);
      for (let i = 0; i < inDim; i++) for (let o = 0; o < out; o++) q[o * inDim + i] = int4At(packed, out, i, o);
      const weight = dequantizeInt4Groups(
        { q, scales: decodeToFloat32(scales.bytes, scales.dtype), groupSize },
        out,
        inDim,
      );
      const prequant = floats("prequant_scaling_factor");
      if (algo === "W4A16_AWQ") return { weight, out, inDim, prequant, quantizeInput: null, alpha: 1 };
      // W4A8: inputs already in FP8 units after the pre-quant scale; alpha restores them.
      return {
        weight,
        out,
        inDim,
        prequant,
        quantizeInput: (x) => fakeQuantizeE4M3(x, 1),
        alpha: scalarOf("alpha"),
      };
    }
  }
}
