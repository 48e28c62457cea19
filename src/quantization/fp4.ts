// The FP4 E2M1 codec and NVIDIA's NVFP4 block format built on it: 16-element blocks along the last axis, each
// with an E4M3 block scale, under one float32 global scale (TensorRT-LLM's weights_global_scaling_factor).

import { decodeE4M3, E4M3_MAX, encodeE4M3 } from "./fp8.js";

/** The largest E2M1 magnitude; finite overflow, ±Infinity and NaN saturate to it. */
export const E2M1_MAX = 6;

/** Elements that share one E4M3 block scale. */
export const NVFP4_BLOCK = 16;

const SIGN = 0x8;
const MAX_CODE = 0x7;

// Magnitudes by code 0..7 (exponent bits 2..1, mantissa bit 0); codes 8..15 are their negatives, −0 included.
const MAGNITUDES = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
const VALUES = Float64Array.from({ length: 16 }, (_, n) => (n & SIGN ? -1 : 1) * MAGNITUDES[n & 7]);

// As for E4M3 (see fp8.ts): every midpoint 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 sits on a quarter of its float64
// binade, so a double's exponent and top 2 mantissa bits fix the code but on a midpoint itself, where an odd
// code steps down to the even one. Branch-free on random data, which is what activations are.
const MIDPOINTS = MAGNITUDES.slice(0, MAX_CODE).map((m, c) => (m + MAGNITUDES[c + 1]) / 2);
const TIES = Float64Array.from({ length: MAX_CODE + 1 }, (_, c) => (c % 2 === 1 ? MIDPOINTS[c - 1] : Number.NaN));
// A scratch double to read a number's bits through; hosts are little-endian, so its high word is the second.
const SCRATCH = new Float64Array(1);
const SCRATCH_HIGH = new Uint32Array(SCRATCH.buffer, 4, 1);
const CODE_BY_BITS = new Uint8Array(1 << 13);
for (let i = 0, c = 0; i < CODE_BY_BITS.length; i++) {
  SCRATCH_HIGH[0] = (i << 18) | 0x20000; // inside the slice; NaN-patterned slices past the largest double keep 7
  while (c < MAX_CODE && MIDPOINTS[c] < SCRATCH[0]) c++;
  CODE_BY_BITS[i] = c;
}

/** The E2M1 code of a non-NaN number, rounded to nearest, ties to even, saturating, keeping the sign (−0 too). */
function codeOf(x: number): number {
  SCRATCH[0] = x;
  const high = SCRATCH_HIGH[0];
  let code = CODE_BY_BITS[(high >>> 18) & 0x1fff];
  if (Math.abs(x) === TIES[code]) code -= 1;
  return code | ((high >>> 28) & SIGN);
}

/**
 * The E2M1 nibble nearest to `x`, ties to even, saturating to ±6. E2M1 has no NaN: a NaN gives +6 (0x7), as
 * `cvt.rn.satfinite.e2m1x2.f32` turns NaN into +MAX_NORM for formats without one. −0 gives 0x8.
 */
export function encodeE2M1(x: number): number {
  return Number.isNaN(x) ? MAX_CODE : codeOf(x);
}

export function decodeE2M1(nibble: number): number {
  if (!Number.isInteger(nibble) || nibble < 0 || nibble > 15) {
    throw new RangeError(`E2M1 code ${nibble} is not a nibble: expected an integer in 0..15`);
  }
  return VALUES[nibble];
}

export interface Nvfp4Tensor {
  /** [rows, cols/2] E2M1 pairs: element 2k in the low nibble, 2k+1 in the high one. */
  packed: Uint8Array;
  /** [rows, cols/16] E4M3 codes, one per block of 16 along a row. */
  blockScales: Uint8Array;
  /** The float32 global scale, amax / (6 · 448): ModelOpt's weight_scale_2. */
  globalScale: number;
}

/**
 * amax / (6 · 448) rounded to float32, the value the checkpoint stores: it maps the tensor's largest block onto
 * the largest block scale times the largest E2M1 value. An all-zero tensor gets 1, which quantizes it to zeros
 * like any positive scale would, where 0 would divide by zero.
 */
export function nvfp4GlobalScale(amax: number): number {
  if (!(amax >= 0 && Number.isFinite(amax))) {
    throw new RangeError(`NVFP4 amax ${amax} is not usable: expected a finite number >= 0`);
  }
  const scale = Math.fround(amax / (E2M1_MAX * E4M3_MAX));
  return scale > 0 ? scale : 1;
}

/** Largest magnitude; NaNs are skipped, as the kernels' fmaxf skips them. */
function amax(x: Float32Array, from = 0, to = x.length): number {
  let m = 0;
  for (let i = from; i < to; i++) {
    const a = Math.abs(x[i]);
    if (a > m) m = a;
  }
  return m;
}

function checkShape(what: string, length: number, rows: number, cols: number, globalScale: number): void {
  if (!(Number.isInteger(rows) && rows >= 0 && Number.isInteger(cols) && cols >= 0)) {
    throw new RangeError(`${what}: shape [${rows}, ${cols}] is not a pair of non-negative integers`);
  }
  if (cols % NVFP4_BLOCK !== 0) {
    throw new RangeError(`${what}: ${cols} columns do not split into blocks of ${NVFP4_BLOCK}`);
  }
  if (length !== rows * cols) {
    throw new RangeError(`${what}: ${length} elements do not make a [${rows}, ${cols}] matrix`);
  }
  if (!(globalScale > 0 && Number.isFinite(globalScale))) {
    throw new RangeError(`${what}: global scale ${globalScale} is not usable: expected a finite number > 0`);
  }
}

/**
 * The E4M3 code of one block's scale and the float32 scale its values divide by: code = e4m3(amax/6/global),
 * effective = decode(code) · global, a float32 product as the kernels form it.
 */
function blockScale(blockAmax: number, globalScale: number): [code: number, effective: number] {
  const code = encodeE4M3(blockAmax / E2M1_MAX / globalScale);
  return [code, Math.fround(decodeE4M3(code) * globalScale)];
}

/** Quantizes a row-major [rows, cols] matrix to NVFP4 along its rows; a block whose scale is 0 stores zeros. */
export function quantizeNvfp4(
  x: Float32Array,
  rows: number,
  cols: number,
  globalScale = nvfp4GlobalScale(amax(x)),
): Nvfp4Tensor {
  checkShape("quantizeNvfp4", x.length, rows, cols, globalScale);
  const packed = new Uint8Array(x.length / 2);
  const blockScales = new Uint8Array(x.length / NVFP4_BLOCK);
  for (let b = 0; b < blockScales.length; b++) {
    const base = b * NVFP4_BLOCK;
    const [code, effective] = blockScale(amax(x, base, base + NVFP4_BLOCK), globalScale);
    blockScales[b] = code;
    if (effective === 0) continue; // packed is already zeros
    for (let j = 0; j < NVFP4_BLOCK; j += 2) {
      const lo = encodeE2M1(x[base + j] / effective);
      const hi = encodeE2M1(x[base + j + 1] / effective);
      packed[(base + j) >> 1] = lo | (hi << 4);
    }
  }
  return { packed, blockScales, globalScale };
}

/** x[r, c] = e2m1(nibble) · e4m3(blockScale) · globalScale, as a row-major [rows, cols] float32 matrix. */
export function dequantizeNvfp4(t: Nvfp4Tensor, rows: number, cols: number): Float32Array {
  checkShape("dequantizeNvfp4", t.packed.length * 2, rows, cols, t.globalScale);
  if (t.blockScales.length !== (rows * cols) / NVFP4_BLOCK) {
    throw new RangeError(`dequantizeNvfp4: ${t.blockScales.length} block scales for a [${rows}, ${cols}] matrix`);
  }
  const out = new Float32Array(rows * cols);
  for (let b = 0; b < t.blockScales.length; b++) {
    const effective = Math.fround(decodeE4M3(t.blockScales[b]) * t.globalScale);
    const base = b * NVFP4_BLOCK;
    for (let j = 0; j < NVFP4_BLOCK; j += 2) {
      const byte = t.packed[(base + j) >> 1];
      out[base + j] = VALUES[byte & 0xf] * effective;
      out[base + j + 1] = VALUES[byte >> 4] * effective;
    }
  }
  return out;
}

/**
 * dequantizeNvfp4(quantizeNvfp4(x, rows, cols, globalScale)) without the packed form: NVFP4 activations at run
 * time, whose block scales are computed per token from a calibrated global scale (activation_global_scaling_factor).
 * Writes into `out` when given (it may be `x` itself).
 */
export function fakeQuantizeNvfp4Rows(
  x: Float32Array,
  rows: number,
  cols: number,
  globalScale: number,
  out: Float32Array = new Float32Array(x.length),
): Float32Array {
  checkShape("fakeQuantizeNvfp4Rows", x.length, rows, cols, globalScale);
  if (out.length !== x.length) {
    throw new RangeError(`fakeQuantizeNvfp4Rows: out has ${out.length} elements, expected ${x.length}`);
  }
  for (let base = 0; base < x.length; base += NVFP4_BLOCK) {
    const [, effective] = blockScale(amax(x, base, base + NVFP4_BLOCK), globalScale);
    // A zero scale stores zeros; NaN stores +6 (see encodeE2M1).
    for (let i = base; i < base + NVFP4_BLOCK; i++) {
      const v = x[i] / effective;
      out[i] = effective === 0 ? 0 : Number.isNaN(v) ? E2M1_MAX * effective : VALUES[codeOf(v)] * effective;
    }
  }
  return out;
}
