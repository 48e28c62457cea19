// The FP8 E4M3 codec ("e4m3fn": bias 7, no infinities, S.1111.111 the only NaN): scalar encode/decode,
// per-tensor-scaled quantize/dequantize of weights, and the fused fake-quantize used for activations.

import { decodeToFloat32 } from "../checkpoint/dtype.js";

/** The largest finite E4M3 magnitude, 1.75 · 2^8; every finite overflow saturates to it. */
export const E4M3_MAX = 448;

const SIGN = 0x80;

// All 256 values, decoded by the checkpoint reader's table so weights written here read back through it.
const VALUES = decodeToFloat32(
  Uint8Array.from({ length: 256 }, (_, b) => b),
  "F8_E4M3",
);

// Codes 0..126 are the finite non-negative values in increasing order. Every decision midpoint between
// neighbours sits on a multiple of 1/16 of its float64 binade, so the exponent and top 4 mantissa bits of a
// double (bits 30..16 of its high word) fix its rounded code, except exactly on a midpoint, where the table's
// odd code steps down to the even one below. 32 KiB of table, no data-dependent branches: weights are random.
const MAX_CODE = 0x7e;
const NAN_CODE = 0x7f;
const MIDPOINTS = Array.from({ length: MAX_CODE }, (_, c) => (VALUES[c] + VALUES[c + 1]) / 2);
/** TIES[c]: the midpoint just below an odd code c, where RNE picks c − 1 instead; NaN (never equal) otherwise. */
const TIES = Float64Array.from({ length: MAX_CODE + 1 }, (_, c) => (c % 2 === 1 ? MIDPOINTS[c - 1] : Number.NaN));

// A scratch double to read a number's bits through; hosts are little-endian, so its high word is the second.
const SCRATCH = new Float64Array(1);
const SCRATCH_HIGH = new Uint32Array(SCRATCH.buffer, 4, 1);

const CODE_BY_BITS = new Uint8Array(1 << 15);
for (let i = 0, c = 0; i < CODE_BY_BITS.length; i++) {
  SCRATCH_HIGH[0] = (i << 16) | 0x8000; // a point inside the slice, never on its midpoint-aligned edge
  // Saturates: slices above 448 give 0x7e, and the NaN-patterned slices past the largest double keep it,
  // which is what ±Infinity (exponent all ones, mantissa 0) reads.
  while (c < MAX_CODE && MIDPOINTS[c] < SCRATCH[0]) c++;
  CODE_BY_BITS[i] = c;
}

/** The E4M3 code of a non-NaN number, rounded to nearest, ties to even, saturating, keeping the sign (−0 too). */
function codeOf(x: number): number {
  SCRATCH[0] = x;
  const high = SCRATCH_HIGH[0];
  let code = CODE_BY_BITS[(high >>> 16) & 0x7fff];
  if (Math.abs(x) === TIES[code]) code -= 1;
  return code | ((high >>> 24) & SIGN);
}

/**
 * The E4M3 byte nearest to `x`, ties to even, as `cvt.rn.satfinite.e4m3x2.f32`: finite overflow and
 * ±Infinity saturate to ±448, NaN gives 0x7f, −0 gives 0x80. `x` is rounded once, from its float64 value.
 */
export function encodeE4M3(x: number): number {
  return Number.isNaN(x) ? NAN_CODE : codeOf(x);
}

/** The value of an E4M3 byte: subnormals m·2^-9, normals (1 + m/8)·2^(e−7), 0x7f/0xff NaN. */
export function decodeE4M3(byte: number): number {
  if (!Number.isInteger(byte) || byte < 0 || byte > 255) {
    throw new RangeError(`E4M3 code ${byte} is not a byte: expected an integer in 0..255`);
  }
  return VALUES[byte];
}

function checkScale(scale: number): void {
  if (!(scale > 0 && Number.isFinite(scale))) {
    throw new RangeError(`E4M3 scale ${scale} is not usable: expected a finite number > 0`);
  }
}

/** q[i] = encodeE4M3(values[i] / scale): the stored form of a per-tensor-scaled FP8 tensor. */
export function quantizeE4M3(values: Float32Array, scale: number): Uint8Array {
  checkScale(scale);
  const q = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i] / scale;
    q[i] = Number.isNaN(v) ? NAN_CODE : codeOf(v);
  }
  return q;
}

/** w[i] = decodeE4M3(q[i]) · scale, rounded to float32. */
export function dequantizeE4M3(q: Uint8Array, scale: number): Float32Array {
  checkScale(scale);
  const out = new Float32Array(q.length);
  for (let i = 0; i < q.length; i++) out[i] = VALUES[q[i]] * scale;
  return out;
}

/**
 * decodeE4M3(encodeE4M3(v / scale)) · scale for every value, without materialising the bytes: what an FP8
 * activation looks like to the next layer. Writes into `out` when given (it may be `values` itself).
 */
export function fakeQuantizeE4M3(
  values: Float32Array,
  scale: number,
  out: Float32Array = new Float32Array(values.length),
): Float32Array {
  checkScale(scale);
  if (out.length !== values.length) {
    throw new RangeError(`fakeQuantizeE4M3: out has ${out.length} elements, expected ${values.length}`);
  }
  for (let i = 0; i < values.length; i++) {
    const v = values[i] / scale;
    out[i] = Number.isNaN(v) ? Number.NaN : VALUES[codeOf(v)] * scale;
  }
  return out;
}
