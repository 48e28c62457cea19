// Storage dtypes of checkpoint tensors (safetensors names) and exact conversions to and from float32.
// Pure functions on typed arrays, no I/O. Byte buffers are little-endian, as every supported host is.

import { CheckpointError, ConfigError } from "../errors.js";

export const DTYPES = [
  "F64",
  "F32",
  "F16",
  "BF16",
  "I64",
  "I32",
  "I16",
  "I8",
  "U8",
  "BOOL",
  "F8_E4M3",
  "F8_E5M2",
] as const;
export type Dtype = (typeof DTYPES)[number];

/** The dtypes `encodeFromFloat32` writes and configs name. */
export type EncodableDtype = "F32" | "F16" | "BF16";

/** Dtype names as they appear in configs (HF `torch_dtype`, kiln checkpoint configs). */
export const DTYPE_NAMES = ["float32", "float16", "bfloat16"] as const;
export type DtypeName = (typeof DTYPE_NAMES)[number];

const BYTE_SIZE: Record<Dtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

const DTYPE_BY_NAME: Record<DtypeName, EncodableDtype> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
};

const NAME_BY_DTYPE: Record<EncodableDtype, DtypeName> = {
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
};

export function dtypeByteSize(dtype: Dtype): number {
  return BYTE_SIZE[dtype];
}

export function isDtype(s: string): s is Dtype {
  return (DTYPES as readonly string[]).includes(s);
}

/** Maps a config name (`float32|float16|bfloat16`) to its storage dtype. */
export function dtypeFromName(name: string): EncodableDtype {
  if (!(DTYPE_NAMES as readonly string[]).includes(name)) {
    throw new ConfigError(`unknown dtype name ${JSON.stringify(name)}: expected one of ${DTYPE_NAMES.join(", ")}`);
  }
  return DTYPE_BY_NAME[name as DtypeName];
}

export function dtypeName(dtype: EncodableDtype): DtypeName {
  return NAME_BY_DTYPE[dtype];
}

// Small float formats decode through lookup tables built from their closed-form definitions;
// every value is exactly representable in float32 (and in float64, where the formulas run).
function smallFloatTable(bits: number, mantBits: number, bias: number, special: "ieee" | "fn"): Float32Array {
  const n = 1 << bits;
  const expMask = (1 << (bits - 1 - mantBits)) - 1;
  const mantScale = 2 ** mantBits;
  const table = new Float32Array(n);
  for (let b = 0; b < n; b++) {
    const sign = b & (n >> 1) ? -1 : 1;
    const exp = (b >> mantBits) & expMask;
    const mant = b & (mantScale - 1);
    let v: number;
    // e4m3fn spends no codes on infinities: only S.1111.111 is NaN.
    if (exp === expMask && special === "ieee") v = mant === 0 ? Infinity : Number.NaN;
    else if (exp === expMask && mant === mantScale - 1) v = Number.NaN;
    else if (exp === 0) v = (mant / mantScale) * 2 ** (1 - bias);
    else v = (1 + mant / mantScale) * 2 ** (exp - bias);
    table[b] = sign * v;
  }
  return table;
}

let f16Table: Float32Array | undefined;
let e4m3Table: Float32Array | undefined;
let e5m2Table: Float32Array | undefined;

function lookup(codes: Uint8Array | Uint16Array, table: Float32Array): Float32Array {
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) out[i] = table[codes[i]];
  return out;
}

/** Decodes raw little-endian tensor bytes of `dtype` to float32 (integers convert as numbers, BOOL to 0/1). */
export function decodeToFloat32(bytes: Uint8Array, dtype: Dtype): Float32Array {
  const size = BYTE_SIZE[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new CheckpointError(
      `cannot decode ${bytes.byteLength} bytes as ${dtype}: expected a multiple of ${size} bytes`,
    );
  }
  // Typed-array views need element alignment; copy when the bytes sit at an odd offset.
  const src = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset } = src;
  const count = src.byteLength / size;
  switch (dtype) {
    case "F64":
      return new Float32Array(new Float64Array(buffer, byteOffset, count));
    case "F32":
      return new Float32Array(new Float32Array(buffer, byteOffset, count));
    case "F16":
      f16Table ??= smallFloatTable(16, 10, 15, "ieee");
      return lookup(new Uint16Array(buffer, byteOffset, count), f16Table);
    case "BF16": {
      // bf16 is the top half of a float32: shifting the bits up is exact, NaN payloads included.
      const codes = new Uint16Array(buffer, byteOffset, count);
      const out = new Float32Array(count);
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) outBits[i] = codes[i] << 16;
      return out;
    }
    case "I64": {
      const ints = new BigInt64Array(buffer, byteOffset, count);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = Number(ints[i]);
      return out;
    }
    case "I32":
      return new Float32Array(new Int32Array(buffer, byteOffset, count));
    case "I16":
      return new Float32Array(new Int16Array(buffer, byteOffset, count));
    case "I8":
      return new Float32Array(new Int8Array(buffer, byteOffset, count));
    case "U8":
      return new Float32Array(src);
    case "BOOL": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = src[i] === 0 ? 0 : 1;
      return out;
    }
    case "F8_E4M3":
      e4m3Table ??= smallFloatTable(8, 3, 7, "fn");
      return lookup(src, e4m3Table);
    case "F8_E5M2":
      e5m2Table ??= smallFloatTable(8, 2, 15, "ieee");
      return lookup(src, e5m2Table);
  }
}

/** Rounds a float32 bit pattern to bf16 bits, nearest-even; NaN stays a quiet NaN of the same sign. */
function bf16Bits(u: number): number {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return (u >>> 16) | 0x0040;
  // Adding 0x7FFF plus the kept LSB rounds ties to even; a carry into the exponent is correct rounding.
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Rounds `q + rem / 2^shift` to nearest-even. */
function roundShifted(q: number, rem: number, shift: number): number {
  const half = 2 ** (shift - 1);
  return rem > half || (rem === half && (q & 1) === 1) ? q + 1 : q;
}

/** Rounds a float32 bit pattern to IEEE binary16 bits, nearest-even, overflow to ±inf. */
function f16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e >= 1) {
    // A mantissa carry rolls into the exponent, and from 0x7BFF into inf: both are the right result.
    return sign | roundShifted((e << 10) | (mant >>> 13), mant & 0x1fff, 13);
  }
  // Half subnormal: value = q * 2^-24, with the float32's implicit bit made explicit.
  if (exp === 0) return sign; // float32 subnormals are far below half of 2^-24
  const shift = 14 - e;
  if (shift > 24) return sign;
  const full = 0x800000 | mant;
  return sign | roundShifted(full >>> shift, full & ((1 << shift) - 1), shift);
}

/** Encodes float32 values as little-endian `dtype` bytes (a fresh buffer), rounding to nearest-even. */
export function encodeFromFloat32(values: Float32Array, dtype: EncodableDtype): Uint8Array {
  if (dtype === "F32") {
    return new Uint8Array(values.buffer, values.byteOffset, values.byteLength).slice();
  }
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  const round = dtype === "BF16" ? bf16Bits : f16Bits;
  for (let i = 0; i < bits.length; i++) out[i] = round(bits[i]);
  return new Uint8Array(out.buffer);
}
