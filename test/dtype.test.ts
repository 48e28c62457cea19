// Specification of storage dtypes: worked values from each format's definition, then exhaustive sweeps.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  DTYPES,
  decodeToFloat32,
  dtypeByteSize,
  dtypeFromName,
  dtypeName,
  type EncodableDtype,
  encodeFromFloat32,
  isDtype,
} from "../src/checkpoint/dtype.js";
import { CheckpointError, ConfigError } from "../src/errors.js";

const u16le = (codes: number[]): Uint8Array => new Uint8Array(new Uint16Array(codes).buffer);
const decode16 = (code: number, dtype: "F16" | "BF16"): number => decodeToFloat32(u16le([code]), dtype)[0];
const decode8 = (code: number, dtype: "F8_E4M3" | "F8_E5M2"): number =>
  decodeToFloat32(new Uint8Array([code]), dtype)[0];
const encode16 = (value: number, dtype: "F16" | "BF16"): number =>
  new Uint16Array(encodeFromFloat32(new Float32Array([value]), dtype).buffer)[0];

/** The float32 whose bit pattern is `bits`. */
const f32 = (bits: number): number => new Float32Array(new Uint32Array([bits]).buffer)[0];

describe("dtype vocabulary", () => {
  it("has the safetensors names and byte sizes", () => {
    const sizes = Object.fromEntries(DTYPES.map((d) => [d, dtypeByteSize(d)]));
    assert.deepEqual(sizes, {
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
    });
    assert.ok(isDtype("BF16"));
    assert.ok(!isDtype("bf16"));
    assert.ok(!isDtype("U16"));
  });

  it("maps config names to dtypes and back", () => {
    assert.equal(dtypeFromName("float32"), "F32");
    assert.equal(dtypeFromName("float16"), "F16");
    assert.equal(dtypeFromName("bfloat16"), "BF16");
    for (const d of ["F32", "F16", "BF16"] as const) assert.equal(dtypeFromName(dtypeName(d)), d);
  });

  it("rejects an unknown config name with a ConfigError naming it", () => {
    assert.throws(
      () => dtypeFromName("fp16"),
      (e: unknown) => e instanceof ConfigError && /"fp16"/.test(e.message),
    );
    assert.throws(() => dtypeFromName("float64"), ConfigError);
  });
});

describe("bf16", () => {
  it("decodes worked values", () => {
    assert.equal(decode16(0x3f80, "BF16"), 1);
    assert.equal(decode16(0x4049, "BF16"), 3.140625);
    assert.equal(decode16(0xc000, "BF16"), -2);
    assert.equal(decode16(0x7f7f, "BF16"), (2 - 2 ** -7) * 2 ** 127);
    assert.equal(decode16(0x0080, "BF16"), 2 ** -126);
    assert.equal(decode16(0x0001, "BF16"), 2 ** -133); // subnormal
    assert.equal(decode16(0x7f80, "BF16"), Infinity);
    assert.equal(decode16(0xff80, "BF16"), -Infinity);
    assert.ok(Object.is(decode16(0x8000, "BF16"), -0));
    assert.ok(Number.isNaN(decode16(0x7fc0, "BF16")));
  });

  it("rounds to nearest, ties to even", () => {
    assert.equal(encode16(Math.fround(Math.PI), "BF16"), 0x4049);
    assert.equal(encode16(f32(0x3f808000), "BF16"), 0x3f80); // 1 + 2^-8: halfway, even is down
    assert.equal(encode16(f32(0x3f818000), "BF16"), 0x3f82); // 1 + 3·2^-8: halfway, even is up
    assert.equal(encode16(f32(0x3f808001), "BF16"), 0x3f81); // just above halfway
    assert.equal(encode16(f32(0x3f807fff), "BF16"), 0x3f80); // just below halfway
    assert.equal(encode16(f32(0x7f7fffff), "BF16"), 0x7f80); // float32 max rounds to inf
  });

  it("keeps NaN a quiet NaN, even a signalling one whose payload is below bit 16", () => {
    assert.equal(encode16(f32(0x7f800001), "BF16"), 0x7fc0);
    assert.equal(encode16(f32(0xff800001), "BF16"), 0xffc0);
    assert.equal(encode16(Number.NaN, "BF16") & 0x7fc0, 0x7fc0);
  });
});

describe("f16", () => {
  it("decodes worked values", () => {
    assert.equal(decode16(0x3c00, "F16"), 1);
    assert.equal(decode16(0xc000, "F16"), -2);
    assert.equal(decode16(0x3555, "F16"), (1 + 0x155 / 1024) * 2 ** (13 - 15)); // ≈ 1/3
    assert.equal(decode16(0x7bff, "F16"), 65504);
    assert.equal(decode16(0x0400, "F16"), 2 ** -14);
    assert.equal(decode16(0x03ff, "F16"), 1023 * 2 ** -24);
    assert.equal(decode16(0x0001, "F16"), 2 ** -24);
    assert.ok(Object.is(decode16(0x8000, "F16"), -0));
    assert.equal(decode16(0x7c00, "F16"), Infinity);
    assert.equal(decode16(0xfc00, "F16"), -Infinity);
    assert.ok(Number.isNaN(decode16(0x7e00, "F16")));
    assert.ok(Number.isNaN(decode16(0x7c01, "F16")));
  });

  it("rounds to nearest, ties to even, overflowing to inf", () => {
    assert.equal(encode16(1 + 2 ** -11, "F16"), 0x3c00); // halfway, even is down
    assert.equal(encode16(1 + 3 * 2 ** -11, "F16"), 0x3c02); // halfway, even is up
    assert.equal(encode16(65519, "F16"), 0x7bff); // below the halfway point to 65536
    assert.equal(encode16(65520, "F16"), 0x7c00); // halfway: the even neighbour is inf
    assert.equal(encode16(1e6, "F16"), 0x7c00);
    assert.equal(encode16(-1e6, "F16"), 0xfc00);
    assert.equal(encode16(f32(0x7f800001), "F16") & 0x7e00, 0x7e00); // NaN stays quiet NaN
  });

  it("rounds into and out of subnormals", () => {
    assert.equal(encode16(2 ** -24, "F16"), 0x0001);
    assert.equal(encode16(2 ** -25, "F16"), 0x0000); // halfway to 2^-24, even is 0
    assert.equal(encode16(1.5 * 2 ** -25, "F16"), 0x0001);
    assert.equal(encode16(3 * 2 ** -25, "F16"), 0x0002); // 1.5 units: even is 2
    assert.equal(encode16(2 ** -26, "F16"), 0x0000);
    assert.equal(encode16(-(2 ** -26), "F16"), 0x8000);
    assert.equal(encode16(1023.5 * 2 ** -24, "F16"), 0x0400); // halfway, even is the smallest normal
    assert.equal(encode16(f32(0x00000001), "F16"), 0x0000); // float32 subnormal
  });
});

describe("f8", () => {
  it("decodes e4m3fn worked values (bias 7, no infinities)", () => {
    assert.equal(decode8(0x38, "F8_E4M3"), 1);
    assert.equal(decode8(0x7e, "F8_E4M3"), 448);
    assert.equal(decode8(0xfe, "F8_E4M3"), -448);
    assert.equal(decode8(0x78, "F8_E4M3"), 256); // exponent 15 is an ordinary binade
    assert.equal(decode8(0x08, "F8_E4M3"), 2 ** -6);
    assert.equal(decode8(0x01, "F8_E4M3"), 2 ** -9);
    assert.equal(decode8(0x07, "F8_E4M3"), 7 * 2 ** -9);
    assert.ok(Object.is(decode8(0x80, "F8_E4M3"), -0));
    assert.ok(Number.isNaN(decode8(0x7f, "F8_E4M3")));
    assert.ok(Number.isNaN(decode8(0xff, "F8_E4M3")));
  });

  it("decodes e5m2 worked values (bias 15, IEEE specials)", () => {
    assert.equal(decode8(0x3c, "F8_E5M2"), 1);
    assert.equal(decode8(0x7b, "F8_E5M2"), 57344);
    assert.equal(decode8(0x04, "F8_E5M2"), 2 ** -14);
    assert.equal(decode8(0x01, "F8_E5M2"), 2 ** -16);
    assert.equal(decode8(0x7c, "F8_E5M2"), Infinity);
    assert.equal(decode8(0xfc, "F8_E5M2"), -Infinity);
    for (const code of [0x7d, 0x7e, 0x7f, 0xff]) assert.ok(Number.isNaN(decode8(code, "F8_E5M2")));
  });

  it("has exactly the NaN codes of its definition", () => {
    const all = new Uint8Array(256).map((_, i) => i);
    const nanCodes = (d: "F8_E4M3" | "F8_E5M2") =>
      [...decodeToFloat32(all, d)].flatMap((v, i) => (Number.isNaN(v) ? [i] : []));
    assert.deepEqual(nanCodes("F8_E4M3"), [0x7f, 0xff]);
    assert.deepEqual(nanCodes("F8_E5M2"), [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]);
  });
});

describe("other dtypes", () => {
  const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

  it("converts integers as numbers and BOOL to 0/1", () => {
    assert.deepEqual([...decodeToFloat32(bytesOf(new Int8Array([-128, -1, 127])), "I8")], [-128, -1, 127]);
    assert.deepEqual([...decodeToFloat32(new Uint8Array([0, 255]), "U8")], [0, 255]);
    assert.deepEqual([...decodeToFloat32(bytesOf(new Int16Array([-32768, 32767])), "I16")], [-32768, 32767]);
    assert.deepEqual([...decodeToFloat32(bytesOf(new Int32Array([-(2 ** 31), 123456])), "I32")], [-(2 ** 31), 123456]);
    const i64 = new BigInt64Array([-(2n ** 53n), 2n ** 40n, -1n]);
    assert.deepEqual([...decodeToFloat32(bytesOf(i64), "I64")], [-(2 ** 53), 2 ** 40, -1]);
    assert.deepEqual([...decodeToFloat32(new Uint8Array([0, 1, 2]), "BOOL")], [0, 1, 1]);
  });

  it("rounds F64 to float32 and copies F32", () => {
    assert.deepEqual([...decodeToFloat32(bytesOf(new Float64Array([1 / 3, -2])), "F64")], [Math.fround(1 / 3), -2]);
    const values = new Float32Array([1.5, -0.25]);
    assert.deepEqual([...decodeToFloat32(bytesOf(values), "F32")], [1.5, -0.25]);
    assert.deepEqual(encodeFromFloat32(values, "F32"), bytesOf(values));
  });

  it("decodes bytes at an unaligned offset", () => {
    const padded = new Uint8Array(1 + 16);
    padded.set(bytesOf(new Float64Array([2.5, -7])), 1);
    const view = padded.subarray(1);
    assert.deepEqual([...decodeToFloat32(view, "F64")], [2.5, -7]);
    padded.set(bytesOf(new BigInt64Array([5n, -6n])), 1);
    assert.deepEqual([...decodeToFloat32(view, "I64")], [5, -6]);
    padded.set(u16le([0x3f80, 0xc000]), 1);
    assert.deepEqual([...decodeToFloat32(padded.subarray(1, 5), "BF16")], [1, -2]);
  });

  it("rejects a byte length that is not a whole number of elements", () => {
    assert.throws(() => decodeToFloat32(new Uint8Array(6), "F32"), CheckpointError);
  });
});

describe("exhaustive sweeps", () => {
  const allCodes = u16le(Array.from({ length: 65536 }, (_, i) => i));

  for (const dtype of ["BF16", "F16"] as const) {
    it(`${dtype}: every bit pattern survives decode → encode (NaNs stay NaN)`, () => {
      const values = decodeToFloat32(allCodes, dtype);
      const back = new Uint16Array(encodeFromFloat32(values, dtype).buffer);
      for (let code = 0; code < 65536; code++) {
        if (Number.isNaN(values[code])) assert.ok(Number.isNaN(decode16(back[code], dtype)), `code ${code}`);
        else assert.equal(back[code], code, `code 0x${code.toString(16)}`);
      }
    });

    it(`${dtype}: every midpoint between neighbours rounds to the even one, its float32 neighbours to the nearer`, () => {
      const maxFinite = dtype === "BF16" ? 0x7f7f : 0x7bff;
      const bits = new Uint32Array(1);
      const asFloat = new Float32Array(bits.buffer);
      for (let code = 0; code < maxFinite; code++) {
        const mid = (decode16(code, dtype) + decode16(code + 1, dtype)) / 2; // exact in float32
        asFloat[0] = mid;
        assert.equal(asFloat[0], mid);
        const even = code % 2 === 0 ? code : code + 1;
        assert.equal(encode16(mid, dtype), even, `midpoint after 0x${code.toString(16)}`);
        const midBits = bits[0];
        bits[0] = midBits - 1;
        assert.equal(encode16(asFloat[0], dtype), code);
        bits[0] = midBits + 1;
        assert.equal(encode16(asFloat[0], dtype), code + 1);
        assert.equal(encode16(-mid, dtype), even | 0x8000);
      }
    });
  }
});

describe("encodeFromFloat32", () => {
  it("writes little-endian bytes into a fresh buffer", () => {
    const dtypes: EncodableDtype[] = ["F32", "F16", "BF16"];
    const sizes = dtypes.map((d) => encodeFromFloat32(new Float32Array(3), d).byteLength);
    assert.deepEqual(sizes, [12, 6, 6]);
    assert.deepEqual([...encodeFromFloat32(new Float32Array([1]), "BF16")], [0x80, 0x3f]);
    assert.deepEqual([...encodeFromFloat32(new Float32Array([1]), "F16")], [0x00, 0x3c]);
  });
});
