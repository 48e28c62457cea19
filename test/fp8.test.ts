// FP8 E4M3 against its closed-form definition, written out here independently of the module's tables:
// every code, worked rounding and saturation cases, then a brute-force nearest-value sweep.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  decodeE4M3,
  dequantizeE4M3,
  E4M3_MAX,
  encodeE4M3,
  fakeQuantizeE4M3,
  quantizeE4M3,
} from "../src/quantization/fp8.js";

/** e4m3fn by its bit fields: S.EEEE.MMM, bias 7, subnormals m·2^-9, S.1111.111 NaN. */
function byFormula(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 0x7;
  if (e === 15 && m === 7) return Number.NaN;
  return sign * (e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7));
}

const FINITE_CODES = Array.from({ length: 256 }, (_, b) => b).filter((b) => (b & 0x7f) !== 0x7f);

/** The nearest finite code by exhaustive search; ties to the even code; beyond 448 saturate; sign kept. */
function bruteForce(x: number): number {
  const a = Math.min(Math.abs(x), 448);
  let best = 0;
  for (let c = 1; c < 127; c++) {
    const d = Math.abs(byFormula(c) - a);
    const bestD = Math.abs(byFormula(best) - a);
    if (d < bestD || (d === bestD && c % 2 === 0)) best = c;
  }
  return x < 0 || Object.is(x, -0) ? best | 0x80 : best;
}

/** A deterministic generator, so a failure names a reproducible input. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

describe("E4M3 codes", () => {
  test("every one of the 256 codes decodes to its closed-form value, ±0 and NaN included", () => {
    for (let b = 0; b < 256; b++) assert.ok(Object.is(decodeE4M3(b), byFormula(b)), `code 0x${b.toString(16)}`);
    assert.ok(Number.isNaN(decodeE4M3(0x7f)) && Number.isNaN(decodeE4M3(0xff)));
    assert.ok(Object.is(decodeE4M3(0x80), -0));
  });

  test("landmarks: max 448 = 0x7e, min normal 2^-6 = 0x08, min subnormal 2^-9 = 0x01", () => {
    assert.equal(E4M3_MAX, 448);
    assert.equal(decodeE4M3(0x7e), 448);
    assert.equal(decodeE4M3(0xfe), -448);
    assert.equal(decodeE4M3(0x08), 2 ** -6);
    assert.equal(decodeE4M3(0x01), 2 ** -9);
    assert.equal(decodeE4M3(0x38), 1);
  });

  test("every finite code round-trips through encode", () => {
    assert.equal(FINITE_CODES.length, 254);
    for (const b of FINITE_CODES) assert.equal(encodeE4M3(byFormula(b)), b, `code 0x${b.toString(16)}`);
  });

  test("decode rejects what is not a byte", () => {
    for (const bad of [-1, 256, 1.5, Number.NaN]) assert.throws(() => decodeE4M3(bad), RangeError);
  });
});

describe("E4M3 rounding by hand", () => {
  test("ties between normals go to the even mantissa", () => {
    // 16 = 0x58 (e 11, m 0), 18 = 0x59, 20 = 0x5a: 17 ties to 16, 19 ties to 20
    assert.equal(encodeE4M3(17), 0x58);
    assert.equal(encodeE4M3(19), 0x5a);
    assert.equal(encodeE4M3(-17), 0xd8);
    assert.equal(encodeE4M3(17.000001), 0x59, "just above the tie rounds up");
    assert.equal(encodeE4M3(18.999999), 0x59, "just below the tie rounds down");
    // 1.0625 ties 1 (0x38) and 1.125 (0x39) → 1; 1.1875 ties 1.125 and 1.25 (0x3a) → 1.25
    assert.equal(encodeE4M3(1.0625), 0x38);
    assert.equal(encodeE4M3(1.1875), 0x3a);
    // 432 ties 416 (m 5) and 448 (m 6) → 448
    assert.equal(encodeE4M3(432), 0x7e);
    assert.equal(encodeE4M3(431.99), 0x7d);
  });

  test("a tie across a binade edge rounds up into the next binade's mantissa 0", () => {
    // 15 = 8·1.875 is the top of the [8, 16) binade (0x57, m 7); 15.5 ties it with 16 = 0x58 and goes up
    assert.equal(encodeE4M3(15), 0x57);
    assert.equal(encodeE4M3(15.5), 0x58);
  });

  test("subnormals round to multiples of 2^-9, ties to even", () => {
    assert.equal(encodeE4M3(2 ** -10), 0x00, "halfway between 0 and 2^-9 → 0 (even)");
    assert.equal(encodeE4M3(2 ** -10 * 1.0001), 0x01);
    assert.equal(encodeE4M3(3 * 2 ** -10), 0x02, "halfway between 2^-9 and 2^-8 → 2^-8 (even)");
    assert.equal(encodeE4M3(5 * 2 ** -10), 0x02, "halfway between 2·2^-9 and 3·2^-9 → 2·2^-9");
    assert.equal(encodeE4M3(7 * 2 ** -10), 0x04);
    assert.equal(encodeE4M3(15 * 2 ** -10), 0x08, "halfway between 7·2^-9 and 2^-6 → the min normal");
    assert.equal(encodeE4M3(-3 * 2 ** -10), 0x82);
    assert.equal(encodeE4M3(1e-30), 0x00);
  });

  test("zeros keep their sign, negative underflow included", () => {
    assert.equal(encodeE4M3(0), 0x00);
    assert.equal(encodeE4M3(-0), 0x80);
    assert.equal(encodeE4M3(-1e-30), 0x80);
    assert.equal(encodeE4M3(-(2 ** -10)), 0x80);
  });

  test("finite overflow and infinities saturate to ±448; NaN is 0x7f", () => {
    for (const x of [448.1, 449, 464, 479.9, 480, 1e6, 3.4e38, 1e300, Number.POSITIVE_INFINITY]) {
      assert.equal(encodeE4M3(x), 0x7e, `${x}`);
      assert.equal(encodeE4M3(-x), 0xfe, `${-x}`);
    }
    assert.equal(encodeE4M3(Number.NaN), 0x7f);
  });
});

describe("E4M3 sweep", () => {
  test("for random inputs over every binade, encode is the brute-force nearest value, ties to even", () => {
    const rand = lcg(1234);
    for (let i = 0; i < 40_000; i++) {
      const x = (rand() < 0.5 ? -1 : 1) * 2 ** (rand() * 24 - 14) * (1 + rand());
      assert.equal(encodeE4M3(x), bruteForce(x), `x = ${x}`);
    }
  });

  test("every midpoint between neighbouring finite values, and the points just around it", () => {
    for (let c = 0; c < 126; c++) {
      const mid = (byFormula(c) + byFormula(c + 1)) / 2;
      for (const x of [mid, mid * (1 - 2 ** -40), mid * (1 + 2 ** -40), -mid]) {
        assert.equal(encodeE4M3(x), bruteForce(x), `x = ${x}`);
      }
    }
  });
});

describe("scaled tensors", () => {
  test("quantize encodes v / scale; dequantize decodes and multiplies by scale", () => {
    const values = new Float32Array([3, -900, 0.001, 0, 34, -0.75]);
    const q = quantizeE4M3(values, 2);
    // 1.5 = 0x3c; -450 → -448 = 0xfe; 0.0005 < 2^-10 rounds to 0; 17 ties to 16 = 0x58; -0.375 = -1.5·2^-2 = 0xac
    assert.deepEqual(Array.from(q), [0x3c, 0xfe, 0x00, 0x00, 0x58, 0xac]);
    assert.deepEqual(Array.from(dequantizeE4M3(q, 2)), [3, -896, 0, 0, 32, -0.75]);
  });

  test("the dequantized error is at most half a step: 2^-4 relative for normals, 2^-10·scale for subnormals", () => {
    const rand = lcg(7);
    const scale = 0.013;
    const values = Float32Array.from({ length: 5000 }, () => (rand() - 0.5) * 2 * 448 * scale * rand() ** 4);
    const back = dequantizeE4M3(quantizeE4M3(values, scale), scale);
    for (let i = 0; i < values.length; i++) {
      const bound = Math.max(Math.abs(values[i]) * 2 ** -4, 2 ** -10 * scale) * (1 + 1e-6);
      assert.ok(Math.abs(back[i] - values[i]) <= bound, `${values[i]} → ${back[i]}`);
    }
  });

  test("fakeQuantize equals dequantize(quantize) bit for bit, specials included, and can run in place", () => {
    const rand = lcg(99);
    const specials = [0, -0, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1e-12, -1e-12, 1e9];
    const values = Float32Array.from({ length: 10_000 }, (_, i) =>
      i < specials.length ? specials[i] : (rand() - 0.5) * 2 ** (rand() * 30 - 15),
    );
    for (const scale of [1, 0.37, 2 ** -8, 1000]) {
      const expected = dequantizeE4M3(quantizeE4M3(values, scale), scale);
      const fake = fakeQuantizeE4M3(values, scale);
      // NaN payloads may differ: compare NaN-ness, and the exact bits of everything else (−0 included).
      for (let i = 0; i < values.length; i++) {
        if (Number.isNaN(expected[i])) assert.ok(Number.isNaN(fake[i]), `element ${i}`);
        else assert.ok(Object.is(fake[i], expected[i]), `element ${i}: ${values[i]}`);
      }
      const inPlace = values.slice();
      assert.equal(fakeQuantizeE4M3(inPlace, scale, inPlace), inPlace);
      assert.deepEqual(bits(inPlace), bits(fake));
    }
  });

  test("a scale that is not a finite positive number is refused", () => {
    const v = new Float32Array(2);
    for (const s of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(() => quantizeE4M3(v, s), RangeError);
      assert.throws(() => dequantizeE4M3(new Uint8Array(2), s), RangeError);
      assert.throws(() => fakeQuantizeE4M3(v, s), RangeError);
    }
    assert.throws(() => fakeQuantizeE4M3(v, 1, new Float32Array(3)), RangeError);
  });

  test("a million values quantize, and fake-quantize, in well under a second each", () => {
    const rand = lcg(5);
    const values = Float32Array.from({ length: 1 << 20 }, () => (rand() - 0.5) * 1000);
    const t0 = performance.now();
    quantizeE4M3(values, 1);
    fakeQuantizeE4M3(values, 1);
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `${ms.toFixed(0)} ms for 2^20 values, twice`);
  });
});
