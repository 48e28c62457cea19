// FP4 E2M1 and NVFP4 against closed forms written out here: the 16 codes, worked ties, NVFP4 blocks worked by
// hand, then random matrices checked element by element against a brute-force reference.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  decodeE2M1,
  dequantizeNvfp4,
  encodeE2M1,
  fakeQuantizeNvfp4Rows,
  NVFP4_BLOCK,
  nvfp4GlobalScale,
  quantizeNvfp4,
} from "../src/quantization/fp4.js";

/** E2M1 by its bit fields S.EE.M, bias 1: subnormal m·0.5, normal (1 + m/2)·2^(e−1). */
function e2m1(n: number): number {
  const sign = n & 8 ? -1 : 1;
  const e = (n >> 1) & 3;
  const m = n & 1;
  return sign * (e === 0 ? m * 0.5 : (1 + m / 2) * 2 ** (e - 1));
}

/** E4M3 (e4m3fn) by its bit fields, finite codes only. */
function e4m3(b: number): number {
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  return (b & 0x80 ? -1 : 1) * (e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7));
}

/** The nearest of `count` non-negative codes to |x| by exhaustive search, ties to even, saturating. */
function nearest(x: number, count: number, value: (c: number) => number): number {
  const a = Math.min(Math.abs(x), value(count - 1));
  let best = 0;
  for (let c = 1; c < count; c++) {
    const d = Math.abs(value(c) - a);
    const bestD = Math.abs(value(best) - a);
    if (d < bestD || (d === bestD && c % 2 === 0)) best = c;
  }
  return best;
}
const nearestE2M1 = (x: number) => nearest(x, 8, e2m1) | (x < 0 || Object.is(x, -0) ? 8 : 0);

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("E2M1 codes", () => {
  test("the 16 codes: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 and bit 3 the sign", () => {
    const expected = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
    for (let n = 0; n < 16; n++) {
      assert.ok(Object.is(decodeE2M1(n), expected[n]), `code ${n}`);
      assert.ok(Object.is(decodeE2M1(n), e2m1(n)), `code ${n} by formula`);
      assert.equal(encodeE2M1(e2m1(n)), n, `code ${n} round-trips`);
    }
    for (const bad of [-1, 16, 0.5]) assert.throws(() => decodeE2M1(bad), RangeError);
  });

  test("ties go to the even mantissa bit", () => {
    const ties: [number, number][] = [
      [0.25, 0],
      [0.75, 1],
      [1.25, 1],
      [1.75, 2],
      [2.5, 2],
      [3.5, 4],
      [5, 4],
    ];
    for (const [x, v] of ties) {
      assert.equal(decodeE2M1(encodeE2M1(x)), v, `${x}`);
      assert.equal(decodeE2M1(encodeE2M1(-x)), -v, `${-x}`);
    }
    assert.equal(encodeE2M1(0.2500001), 1);
    assert.equal(encodeE2M1(4.9999999), 6);
  });

  test("saturation to ±6; NaN is +6; zeros and underflow keep their sign", () => {
    for (const x of [6.01, 7, 100, 1e300, Number.POSITIVE_INFINITY]) {
      assert.equal(encodeE2M1(x), 0x7, `${x}`);
      assert.equal(encodeE2M1(-x), 0xf, `${-x}`);
    }
    assert.equal(encodeE2M1(Number.NaN), 0x7);
    assert.equal(encodeE2M1(0), 0x0);
    assert.equal(encodeE2M1(-0), 0x8);
    assert.equal(encodeE2M1(-0.1), 0x8);
  });

  test("for random inputs, encode is the brute-force nearest value with ties to even", () => {
    const rand = lcg(42);
    for (let i = 0; i < 20_000; i++) {
      const x = (rand() - 0.5) * 16;
      assert.equal(encodeE2M1(x), nearestE2M1(x), `x = ${x}`);
    }
    for (const mid of [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5]) {
      for (const x of [mid, -mid, mid * (1 + 2 ** -40), mid * (1 - 2 ** -40)]) {
        assert.equal(encodeE2M1(x), nearestE2M1(x), `x = ${x}`);
      }
    }
  });
});

describe("NVFP4 blocks by hand", () => {
  test("one block, amax 21: global scale 2^-7, block scale 448 = 0x7e, values on the 3.5-spaced grid", () => {
    const grid = [0, 0.5, -1, 1.5, 2, -3, 4, 6, 0.25, 0.75, -1.25, 1.75, 2.5, -3.5, 5, -6];
    const x = Float32Array.from(grid, (g) => 3.5 * g);
    assert.equal(nvfp4GlobalScale(21), 2 ** -7, "21 / (6 · 448) = 1/128 exactly");
    const t = quantizeNvfp4(x, 1, 16);
    assert.equal(t.globalScale, 2 ** -7);
    // (21 / 6) / 2^-7 = 448; effective scale 448 · 2^-7 = 3.5
    assert.deepEqual(Array.from(t.blockScales), [0x7e]);
    // nibbles 0 1 a 3 | 4 d 6 7 | 0 2 a 4 | 4 e 6 f: ties 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4
    assert.deepEqual(Array.from(t.packed), [0x10, 0x3a, 0xd4, 0x76, 0x20, 0x4a, 0xe4, 0xf6]);
    const back = [0, 0.5, -1, 1.5, 2, -3, 4, 6, 0, 1, -1, 2, 2, -4, 4, -6].map((g) => 3.5 * g);
    assert.deepEqual(Array.from(dequantizeNvfp4(t, 1, 16)), back);
  });

  test("packing: element 2k in the low nibble, 2k+1 in the high one", () => {
    const x = new Float32Array(16);
    x[0] = 6;
    assert.equal(quantizeNvfp4(x, 1, 16, 1).packed[0], 0x07);
    x[0] = 0;
    x[1] = -6;
    assert.equal(quantizeNvfp4(x, 1, 16, 1).packed[0], 0xf0);
    x[1] = 0;
    x[15] = 6;
    assert.deepEqual(Array.from(quantizeNvfp4(x, 1, 16, 1).packed), [0, 0, 0, 0, 0, 0, 0, 0x70]);
  });

  test("a block scale that needs e4m3 rounding: 81/6 = 13.5 ties to 14 (0x56), then 81/14 rounds to 6", () => {
    const x = new Float32Array([81, 7, -10.5, 3.5, 14, 21, -28, 42, 56, 70, 0, 0, 0, 0, 0, 0]);
    const t = quantizeNvfp4(x, 1, 16, 1);
    assert.deepEqual(Array.from(t.blockScales), [0x56]);
    assert.equal(e4m3(0x56), 14);
    // /14: 5.79→6, 0.5, -0.75→-1 (tie), 0.25→0 (tie), 1, 1.5, -2, 3, 4, 5→4 (tie)
    const back = [84, 7, -14, 0, 14, 21, -28, 42, 56, 56, 0, 0, 0, 0, 0, 0];
    assert.deepEqual(Array.from(dequantizeNvfp4(t, 1, 16)), back);
  });

  test("a block scale that rounds down makes the block's largest value saturate at 6 · scale", () => {
    const x = new Float32Array(16);
    x[3] = -80.4; // /6 = 13.4 → 13 (0x55)
    const t = quantizeNvfp4(x, 1, 16, 1);
    assert.deepEqual(Array.from(t.blockScales), [0x55]);
    assert.equal(dequantizeNvfp4(t, 1, 16)[3], -78);
  });

  test("zero blocks, and blocks whose scale underflows e4m3, store zeros", () => {
    const x = new Float32Array(64);
    for (let i = 0; i < 16; i++) x[i] = i - 8; // row 0, block 0; block 1 stays zero
    x[32] = 6 * 2 ** -9; // row 1, block 0: scale 2^-9 = 0x01 under global scale 1
    x[48] = 6 * 2 ** -11; // row 1, block 1: 2^-11 rounds to scale 0
    const t = quantizeNvfp4(x, 2, 32, 1);
    assert.deepEqual(Array.from(t.blockScales), [encodeE4M3ByHand(8 / 6), 0x00, 0x01, 0x00]);
    assert.deepEqual(Array.from(t.packed.subarray(8, 16)), new Array(8).fill(0));
    assert.deepEqual(Array.from(t.packed.subarray(24, 32)), new Array(8).fill(0));
    const back = dequantizeNvfp4(t, 2, 32);
    assert.equal(back[32], 6 * 2 ** -9);
    assert.ok(back.subarray(16, 32).every((v) => v === 0));
    assert.ok(back.subarray(48).every((v) => v === 0));

    const zeros = quantizeNvfp4(new Float32Array(32), 1, 32);
    assert.equal(zeros.globalScale, 1, "an all-zero tensor gets global scale 1, not 0");
    assert.ok(zeros.packed.every((b) => b === 0) && zeros.blockScales.every((b) => b === 0));
  });

  test("global scale = amax / 2688 in float32, and shapes and scales that cannot work are refused", () => {
    assert.equal(nvfp4GlobalScale(2688), 1);
    assert.equal(nvfp4GlobalScale(1), Math.fround(1 / 2688));
    assert.equal(nvfp4GlobalScale(0), 1);
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY])
      assert.throws(() => nvfp4GlobalScale(bad), RangeError);
    assert.throws(() => quantizeNvfp4(new Float32Array(24), 1, 24), RangeError);
    assert.throws(() => quantizeNvfp4(new Float32Array(32), 1, 16), RangeError);
    assert.throws(() => quantizeNvfp4(new Float32Array(16), 1, 16, 0), RangeError);
    assert.throws(() => fakeQuantizeNvfp4Rows(new Float32Array(16), 1, 16, 1, new Float32Array(8)), RangeError);
    const t = quantizeNvfp4(new Float32Array(32), 1, 32);
    assert.throws(() => dequantizeNvfp4({ ...t, blockScales: new Uint8Array(1) }, 1, 32), RangeError);
  });
});

/** The e4m3 code nearest a non-negative value, by exhaustive search over the formula (codes 0..126). */
function encodeE4M3ByHand(x: number): number {
  return nearest(x, 127, e4m3);
}

describe("NVFP4 on random matrices", () => {
  const [rows, cols] = [12, 64];
  const rand = lcg(2024);
  // Blocks of very different ranges, so the block scales spread over many binades.
  const x = Float32Array.from({ length: rows * cols }, (_, i) => {
    const range = 2 ** (((i / NVFP4_BLOCK) | 0) % 13) / 64;
    return (rand() - 0.5) * 2 * range;
  });

  test("every block scale and every element is the brute-force nearest code; error ≤ half a step", () => {
    const t = quantizeNvfp4(x, rows, cols);
    let amax = 0;
    for (const v of x) amax = Math.max(amax, Math.abs(v));
    assert.equal(t.globalScale, Math.fround(amax / (6 * 448)));
    const back = dequantizeNvfp4(t, rows, cols);
    for (let b = 0; b < (rows * cols) / NVFP4_BLOCK; b++) {
      const block = x.subarray(b * NVFP4_BLOCK, (b + 1) * NVFP4_BLOCK);
      const blockAmax = Math.max(...Array.from(block, Math.abs));
      const code = encodeE4M3ByHand(blockAmax / 6 / t.globalScale);
      assert.equal(t.blockScales[b], code, `block ${b}`);
      const scale = Math.fround(e4m3(code) * t.globalScale);
      for (let j = 0; j < NVFP4_BLOCK; j++) {
        const i = b * NVFP4_BLOCK + j;
        const nibble = (t.packed[i >> 1] >> ((i & 1) * 4)) & 0xf;
        assert.equal(nibble, nearestE2M1(x[i] / scale), `element ${i}`);
        assert.equal(back[i], Math.fround(e2m1(nibble) * scale), `element ${i}`);
        // Half the gap of the E2M1 interval holding |x|/scale, plus any saturation beyond 6 · scale.
        const a = Math.abs(x[i]) / scale;
        const halfGap = a <= 2 ? 0.25 : a <= 4 ? 0.5 : 1;
        const bound = (halfGap + Math.max(0, a - 6)) * scale * (1 + 1e-6);
        assert.ok(Math.abs(back[i] - x[i]) <= bound, `element ${i}: ${x[i]} → ${back[i]}`);
      }
    }
  });

  test("fakeQuantizeNvfp4Rows equals dequantize(quantize) bit for bit, specials included, and can run in place", () => {
    const y = x.slice();
    y.set([0, -0, Number.NaN, 1e-30, -1e-30], 0);
    y.set([Number.POSITIVE_INFINITY, -3], 16);
    y.set(new Float32Array(16), 32); // a zero block
    for (const globalScale of [nvfp4GlobalScale(2), 1e-3, 0.5]) {
      const expected = dequantizeNvfp4(quantizeNvfp4(y, rows, cols, globalScale), rows, cols);
      const fake = fakeQuantizeNvfp4Rows(y, rows, cols, globalScale);
      for (let i = 0; i < y.length; i++) assert.ok(Object.is(fake[i], expected[i]), `element ${i}: ${y[i]}`);
      const inPlace = y.slice();
      assert.equal(fakeQuantizeNvfp4Rows(inPlace, rows, cols, globalScale, inPlace), inPlace);
      assert.deepEqual(bits(inPlace), bits(fake));
    }
  });
});
