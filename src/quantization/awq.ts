// AWQ (Lin et al., 2023): the per-input-channel scale search and the symmetric int4 group quantizer it is
// judged with, as TensorRT-LLM's W4A16_AWQ / W4A8_AWQ (ModelOpt int4_awq) store weights. Pure: arrays in, arrays out.

import { ConfigError } from "../errors.js";
import { roundHalfEven } from "./weight-only.js";

export interface Int4Groups {
  /** q[o, i] in [−8, 7] (the amax/7 scale only ever yields [−7, 7]), row-major [out, in]. */
  q: Int8Array;
  /** scales[g, o], g = i / groupSize: w ≈ q · scale. TensorRT-LLM's `weights_scaling_factor`, [in/G, out]. */
  scales: Float32Array;
  groupSize: number;
}

function checkShape(what: string, length: number, out: number, inDim: number, groupSize: number): void {
  if (length !== out * inDim) throw new RangeError(`${what}: ${length} values, expected [${out}, ${inDim}]`);
  if (!(groupSize > 0) || inDim % groupSize !== 0)
    throw new ConfigError(`AWQ: group_size ${groupSize} does not divide in_features ${inDim}`);
}

/**
 * Symmetric int4 per group of `groupSize` input channels of every output channel: scale = amax / 7,
 * q = clamp(roundHalfEven(w / scale), −8, 7). An all-zero group gets scale 1 (q is 0 whatever the scale,
 * and 1 keeps w / scale finite and the stored scale harmless), as gptq.ts does for a constant group.
 */
export function quantizeInt4Symmetric(
  w: Float32Array,
  out: number,
  inDim: number,
  groupSize: number,
  /** Per [group, out]: the largest |value| the grid spans (AWQ's clipping), instead of the group's amax. */
  clip?: Float32Array,
): Int4Groups {
  checkShape("AWQ weight", w.length, out, inDim, groupSize);
  const groups = inDim / groupSize;
  const q = new Int8Array(out * inDim);
  const scales = new Float32Array(groups * out);
  for (let o = 0; o < out; o++) {
    for (let g = 0; g < groups; g++) {
      const start = o * inDim + g * groupSize;
      let amax = 0;
      for (let k = 0; k < groupSize; k++) amax = Math.max(amax, Math.abs(w[start + k]));
      if (clip) amax = Math.min(amax, clip[g * out + o]);
      // Quantize with the float32 scale that is stored, so that q · scale is what the kernel reconstructs.
      const scale = amax === 0 ? 1 : Math.fround(amax / 7);
      scales[g * out + o] = scale;
      for (let k = 0; k < groupSize; k++) q[start + k] = Math.min(7, Math.max(-8, roundHalfEven(w[start + k] / scale)));
    }
  }
  return { q, scales, groupSize };
}

/** w[o, i] = q[o, i] · scale[i / G, o], row-major [out, in]. */
export function dequantizeInt4Groups(t: Int4Groups, out: number, inDim: number): Float32Array {
  checkShape("AWQ int4 weight", t.q.length, out, inDim, t.groupSize);
  const w = new Float32Array(out * inDim);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inDim; i++) w[o * inDim + i] = t.q[o * inDim + i] * t.scales[((i / t.groupSize) | 0) * out + o];
  }
  return w;
}

/**
 * TensorRT-LLM's int4 weight bytes from q [out, in]: transposed to [in, out] and packed two to a byte along
 * out, the even output column in the low nibble: [in, out/2] bytes (before preprocess_weights_for_mixed_gemm).
 * weight-only.ts and gptq.ts pack the same layout inline, from their own q layouts; this takes signed [out, in].
 */
export function packInt4Pairs(q: Int8Array, out: number, inDim: number): Uint8Array {
  if (q.length !== out * inDim) throw new RangeError(`int4 weight: ${q.length} values, expected [${out}, ${inDim}]`);
  if (out % 2 !== 0) throw new ConfigError(`int4 packing pairs output channels: out_features ${out} is odd`);
  const packed = new Uint8Array((inDim * out) / 2);
  for (let i = 0; i < inDim; i++) {
    for (let o = 0; o < out; o += 2) {
      packed[(i * out + o) / 2] = (q[o * inDim + i] & 0xf) | ((q[(o + 1) * inDim + i] & 0xf) << 4);
    }
  }
  return packed;
}

/** W · diag(s): column i of the [out, in] weight multiplied by s[i] (in float32, as the weight is stored). */
export function applyAwqScales(w: Float32Array, out: number, inDim: number, s: Float32Array): Float32Array {
  if (w.length !== out * inDim || s.length !== inDim)
    throw new RangeError(`AWQ scales: weight of ${w.length} values and ${s.length} scales for [${out}, ${inDim}]`);
  const scaled = new Float32Array(out * inDim);
  for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) scaled[o * inDim + i] = w[o * inDim + i] * s[i];
  return scaled;
}

export interface AwqSearchInput {
  /** Calibration inputs [rows, inDim] shared by every linear in `weights`. */
  x: Float32Array;
  rows: number;
  inDim: number;
  /** Linears fed by x (q/k/v of one layer, or gate and up), each [out, inDim]. */
  weights: { w: Float32Array; out: number }[];
  groupSize: number;
  /** Ratios tried: α = 0, 1/grid, …, (grid − 1)/grid. AWQ's reference uses 20. */
  grid?: number;
}

export interface AwqSearchResult {
  /**
   * s [inDim], float32: weights are multiplied by s before int4 quantization and activations divided by it,
   * so TensorRT-LLM's `prequant_scaling_factor` [1, in] is 1/s (or s is folded into the preceding norm).
   */
  scales: Float32Array;
  /** The chosen α. */
  ratio: number;
  /** Σ over linears of ‖x·W'ᵀ − x·Wᵀ‖² at the chosen α, W' = Q(W·diag(s))·diag(1/s). */
  error: number;
  /** The same at α = 0 (s = 1): plain round-to-nearest int4, the baseline AWQ improves on. */
  errorUnscaled: number;
}

/** s = mean_rows(|x|)^α clamped at 1e-4, divided by sqrt(max · min) so it is centred on 1 (log-scale). */
function scalesForRatio(actMean: Float64Array, ratio: number): Float32Array {
  const s = actMean.map((m) => Math.max(m ** ratio, 1e-4));
  let [lo, hi] = [Number.POSITIVE_INFINITY, 0];
  for (const v of s) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  const norm = Math.sqrt(hi * lo);
  return Float32Array.from(s, (v) => v / norm);
}

/**
 * AWQ's grid search (llm-awq's auto_scale) for linears sharing the input x: the α minimising the summed
 * output error of the quantized linears, the first one on ties. Float64 throughout the error; the cost is
 * one GEMM x·(W' − W)ᵀ per α per linear (rows · out · in), so callers bound rows (256–512 is plenty).
 */
export function awqSearch(opts: AwqSearchInput): AwqSearchResult {
  const { x, rows, inDim, weights, groupSize, grid = 20 } = opts;
  if (rows < 1 || x.length !== rows * inDim)
    throw new RangeError(`AWQ inputs: ${x.length} values, expected [${rows}, ${inDim}]`);
  if (!Number.isInteger(grid) || grid < 1) throw new RangeError(`AWQ grid: ${grid}, expected a positive integer`);
  for (const { w, out } of weights) checkShape("AWQ weight", w.length, out, inDim, groupSize);
  const x64 = Float64Array.from(x);
  const actMean = new Float64Array(inDim);
  for (let r = 0; r < rows; r++) for (let i = 0; i < inDim; i++) actMean[i] += Math.abs(x64[r * inDim + i]);
  for (let i = 0; i < inDim; i++) actMean[i] /= rows;

  let best: AwqSearchResult | null = null;
  let errorUnscaled = 0;
  for (let step = 0; step < grid; step++) {
    const ratio = step / grid;
    const s = scalesForRatio(actMean, ratio);
    let error = 0;
    for (const { w, out } of weights) {
      const t = quantizeInt4Symmetric(applyAwqScales(w, out, inDim, s), out, inDim, groupSize);
      const wq = dequantizeInt4Groups(t, out, inDim);
      error += sumSquaresOfProduct(x64, rows, unscaledDifference(wq, w, s, out, inDim), out, inDim);
    }
    if (step === 0) errorUnscaled = error;
    if (best === null || error < best.error) best = { scales: s, ratio, error, errorUnscaled: 0 };
  }
  return { ...best!, errorUnscaled };
}

/** W' − W in float64, W' = wq · diag(1/s): the weight change the quantization of W · diag(s) amounts to. */
function unscaledDifference(
  wq: Float32Array,
  w: Float32Array,
  s: Float32Array,
  out: number,
  inDim: number,
): Float64Array {
  const diff = new Float64Array(out * inDim);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inDim; i++) diff[o * inDim + i] = wq[o * inDim + i] / s[i] - w[o * inDim + i];
  }
  return diff;
}

/**
 * ‖x·dᵀ‖² for x [rows, n] and d [out, n]. Register-blocked 4 rows × 2 outputs, so each loaded value feeds
 * several sums, and cache-blocked by 32 outputs, so their rows of d stay in cache while x streams past.
 */
function sumSquaresOfProduct(x: Float64Array, rows: number, d: Float64Array, out: number, n: number): number {
  let total = 0;
  const fullRows = rows - (rows % 4);
  const pairedOut = out - (out % 2);
  for (let oBlock = 0; oBlock < pairedOut; oBlock += 32) {
    const oEnd = Math.min(pairedOut, oBlock + 32);
    for (let r = 0; r < fullRows; r += 4) {
      const x0 = r * n;
      const x1 = x0 + n;
      const x2 = x1 + n;
      const x3 = x2 + n;
      for (let o = oBlock; o < oEnd; o += 2) {
        const d0 = o * n;
        const d1 = d0 + n;
        let a00 = 0;
        let a01 = 0;
        let a10 = 0;
        let a11 = 0;
        let a20 = 0;
        let a21 = 0;
        let a30 = 0;
        let a31 = 0;
        for (let i = 0; i < n; i++) {
          const u = d[d0 + i];
          const v = d[d1 + i];
          const p0 = x[x0 + i];
          const p1 = x[x1 + i];
          const p2 = x[x2 + i];
          const p3 = x[x3 + i];
          a00 += p0 * u;
          a01 += p0 * v;
          a10 += p1 * u;
          a11 += p1 * v;
          a20 += p2 * u;
          a21 += p2 * v;
          a30 += p3 * u;
          a31 += p3 * v;
        }
        total += a00 * a00 + a01 * a01 + a10 * a10 + a11 * a11 + a20 * a20 + a21 * a21 + a30 * a30 + a31 * a31;
      }
    }
  }
  // The remainders: rows past the last block of 4 against every output, and the last output if out is odd.
  for (let r = fullRows; r < rows; r++) for (let o = 0; o < out; o++) total += dot(x, r * n, d, o * n, n) ** 2;
  for (let o = pairedOut; o < out; o++) for (let r = 0; r < fullRows; r++) total += dot(x, r * n, d, o * n, n) ** 2;
  return total;
}

function dot(a: Float64Array, aStart: number, b: Float64Array, bStart: number, n: number): number {
  let acc = 0;
  for (let i = 0; i < n; i++) acc += a[aStart + i] * b[bStart + i];
  return acc;
}

/**
 * AWQ's clipping search (llm-awq's auto_clip), on a weight already scaled: for each output channel and group,
 * the range the int4 grid spans is tried at amax · (1 − k/20), k = 0…10, and the one whose output error on
 * the group's inputs, Σ_rows (x_g · (Q(w_g) − w_g))², is lowest is kept (the first on ties). The error is
 * Δwᵀ·(X_gᵀX_g)·Δw, so rows only cost one Gram matrix per group. Returns the clip maxima [in/G, out].
 */
export function awqClipSearch(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: Float32Array,
  out: number,
  groupSize: number,
  steps = 10,
): Float32Array {
  checkShape("AWQ weight", w.length, out, inDim, groupSize);
  const G = groupSize;
  const groups = inDim / G;
  const clip = new Float32Array(groups * out);
  const gram = new Float64Array(G * G);
  const d = new Float64Array(G);
  for (let g = 0; g < groups; g++) {
    gram.fill(0);
    for (let r = 0; r < rows; r++) {
      const at = r * inDim + g * G;
      for (let a = 0; a < G; a++) {
        const xa = x[at + a];
        if (xa === 0) continue;
        for (let b = 0; b < G; b++) gram[a * G + b] += xa * x[at + b];
      }
    }
    for (let o = 0; o < out; o++) {
      const start = o * inDim + g * G;
      let amax = 0;
      for (let k = 0; k < G; k++) amax = Math.max(amax, Math.abs(w[start + k]));
      let best = amax;
      let bestErr = Number.POSITIVE_INFINITY;
      for (let k = 0; k <= steps && amax > 0; k++) {
        const max = amax * (1 - k / 20);
        const scale = Math.fround(max / 7);
        for (let i = 0; i < G; i++) {
          const v = w[start + i];
          d[i] = Math.min(7, Math.max(-8, roundHalfEven(v / scale))) * scale - v;
        }
        let err = 0;
        for (let a = 0; a < G; a++) {
          if (d[a] === 0) continue;
          let s = 0;
          for (let b = 0; b < G; b++) s += gram[a * G + b] * d[b];
          err += d[a] * s;
        }
        if (err < bestErr) [best, bestErr] = [max, err];
      }
      clip[g * out + o] = best === 0 ? 1 : best;
    }
  }
  return clip;
}
