// AWQ against worked examples and an independent brute force: the symmetric int4 group quantizer and its
// packing by hand, the scale search checked α by α with plain loops, and lower output error than
// round-to-nearest on activations with outlier channels — the point of the algorithm.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ConfigError } from "../src/errors.js";
import {
  applyAwqScales,
  awqClipSearch,
  awqSearch,
  dequantizeInt4Groups,
  packInt4Pairs,
  quantizeInt4Symmetric,
} from "../src/quantization/awq.js";
import { int4At } from "../src/quantization/weight-only.js";

let seed = 2023;
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31 - 0.5;
};

/** The AWQ scales for one α, written out from the definition. */
function scalesFor(x: Float32Array, rows: number, inDim: number, ratio: number): Float32Array {
  const s: number[] = [];
  for (let i = 0; i < inDim; i++) {
    let m = 0;
    for (let r = 0; r < rows; r++) m += Math.abs(x[r * inDim + i]);
    s.push(Math.max((m / rows) ** ratio, 1e-4));
  }
  const norm = Math.sqrt(Math.max(...s) * Math.min(...s));
  return Float32Array.from(s, (v) => v / norm);
}

/** Σ ‖x·W'ᵀ − x·Wᵀ‖² with W' = Q(W·diag(s))·diag(1/s), both products formed in full, as the definition reads. */
function outputError(
  x: Float32Array,
  rows: number,
  inDim: number,
  weights: { w: Float32Array; out: number }[],
  s: Float32Array,
  groupSize: number,
): number {
  let e = 0;
  for (const { w, out } of weights) {
    const scaled = new Float32Array(out * inDim);
    for (let o = 0; o < out; o++) for (let i = 0; i < inDim; i++) scaled[o * inDim + i] = w[o * inDim + i] * s[i];
    const wq = dequantizeInt4Groups(quantizeInt4Symmetric(scaled, out, inDim, groupSize), out, inDim);
    for (let r = 0; r < rows; r++) {
      for (let o = 0; o < out; o++) {
        let [yq, y] = [0, 0];
        for (let i = 0; i < inDim; i++) {
          yq += x[r * inDim + i] * (wq[o * inDim + i] / s[i]);
          y += x[r * inDim + i] * w[o * inDim + i];
        }
        e += (yq - y) ** 2;
      }
    }
  }
  return e;
}

/** Activations in a low-rank subspace plus noise, with a few channels `outlierGain` times larger. */
function correlatedInputs(rows: number, inDim: number, outliers: number[], outlierGain: number): Float32Array {
  const k = 6;
  const mix = Array.from({ length: k * inDim }, rand);
  const x = new Float32Array(rows * inDim);
  for (let r = 0; r < rows; r++) {
    const z = Array.from({ length: k }, rand);
    for (let i = 0; i < inDim; i++) {
      let v = 0.1 * rand();
      for (let j = 0; j < k; j++) v += z[j] * mix[j * inDim + i];
      x[r * inDim + i] = outliers.includes(i) ? outlierGain * v : v;
    }
  }
  return x;
}

const randomWeight = (out: number, inDim: number) => ({ w: Float32Array.from({ length: out * inDim }, rand), out });

describe("AWQ int4 groups", () => {
  test("by hand: scale amax/7 per group, round half to even, −amax → −7, an all-zero group gets scale 1", () => {
    // out 2, in 4, groups of 2. Row 0: [7, −3.5 | 5, −14] → scales 1 and 2; row 1: [0, 0 | 0.75, −3.5] → 1 and 0.5.
    const w = new Float32Array([7, -3.5, 5, -14, 0, 0, 0.75, -3.5]);
    const t = quantizeInt4Symmetric(w, 2, 4, 2);
    assert.deepEqual(Array.from(t.scales), [1, 1, 2, 0.5]); // [g, o]
    // −3.5 → −4 and 2.5 → 2 and 1.5 → 2 (ties to even); −14/2 = −7: symmetric, −8 is never produced.
    assert.deepEqual(Array.from(t.q), [7, -4, 2, -7, 0, 0, 2, -7]);
    assert.deepEqual(Array.from(dequantizeInt4Groups(t, 2, 4)), [7, -4, 4, -14, 0, 0, 1, -3.5]);
    assert.throws(() => quantizeInt4Symmetric(w, 2, 4, 3), ConfigError);
  });

  test("on random weights every q is in [−7, 7] and within half a step of w / scale", () => {
    const [out, inDim, g] = [6, 32, 8];
    const w = Float32Array.from({ length: out * inDim }, () => 10 * rand());
    const t = quantizeInt4Symmetric(w, out, inDim, g);
    const back = dequantizeInt4Groups(t, out, inDim);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inDim; i++) {
        const scale = t.scales[Math.floor(i / g) * out + o];
        assert.ok(Math.abs(t.q[o * inDim + i]) <= 7);
        assert.ok(Math.abs(back[o * inDim + i] - w[o * inDim + i]) <= scale / 2 + 1e-6);
      }
    }
  });

  test("packInt4Pairs by hand: [out 4, in 2] → [in 2, out/2 2] bytes, even output column in the low nibble", () => {
    const q = new Int8Array([1, -1, -8, 7, 0, 3, -2, 5]); // rows o = 0..3: [1, −1], [−8, 7], [0, 3], [−2, 5]
    const packed = packInt4Pairs(q, 4, 2);
    // i = 0: (1, −8) → 0x81, (0, −2) → 0xE0; i = 1: (−1, 7) → 0x7F, (3, 5) → 0x53.
    assert.deepEqual(Array.from(packed), [0x81, 0xe0, 0x7f, 0x53]);
    // The layout weight-only.ts's reader expects.
    const bytes = new Int8Array(packed.buffer);
    for (let o = 0; o < 4; o++) for (let i = 0; i < 2; i++) assert.equal(int4At(bytes, 4, i, o), q[o * 2 + i]);
    assert.throws(() => packInt4Pairs(new Int8Array(6), 3, 2), ConfigError);
  });
});

describe("AWQ scale search", () => {
  test("closed form: at α = 1/2 the scaled weights land on the int4 grid, so the search picks α = 1/2", () => {
    // mean |x| = [9, 1] → at α = 1/2, s = [3, 1]/√3 = [√3, 1/√3]; W = [7/√3, 3√3] scales to [7, 3]: exact.
    const x = new Float32Array([9, 1, -9, -1]);
    const w = new Float32Array([7 / Math.sqrt(3), 3 * Math.sqrt(3)]);
    const r = awqSearch({ x, rows: 2, inDim: 2, weights: [{ w, out: 1 }], groupSize: 2 });
    assert.equal(r.ratio, 0.5);
    assert.ok(Math.abs(r.scales[0] - Math.sqrt(3)) < 1e-6 && Math.abs(r.scales[1] - 1 / Math.sqrt(3)) < 1e-6);
    assert.ok(r.error < 1e-9 * r.errorUnscaled, `${r.error} vs ${r.errorUnscaled}`);
  });

  test("matches a brute force over the grid: same argmin (first on ties), same error, same scales", () => {
    const [rows, inDim, g] = [12, 16, 8];
    for (const grid of [20, 7]) {
      const x = correlatedInputs(rows, inDim, [3, 11], 8);
      const weights = [randomWeight(4, inDim), randomWeight(6, inDim)];
      const errors = Array.from({ length: grid }, (_, k) =>
        outputError(x, rows, inDim, weights, scalesFor(x, rows, inDim, k / grid), g),
      );
      const best = errors.indexOf(Math.min(...errors));
      const r = awqSearch({ x, rows, inDim, weights, groupSize: g, grid });
      assert.equal(r.ratio, best / grid);
      assert.ok(Math.abs(r.error - errors[best]) <= 1e-9 * errors[best], `${r.error} vs ${errors[best]}`);
      assert.ok(Math.abs(r.errorUnscaled - errors[0]) <= 1e-9 * errors[0]);
      assert.deepEqual(Array.from(r.scales), Array.from(scalesFor(x, rows, inDim, best / grid)));
    }
  });

  test("one salient input channel: α > 0 wins and the error is well below round-to-nearest's", () => {
    const [rows, inDim, out] = [32, 16, 8];
    const x = Float32Array.from({ length: rows * inDim }, (_, k) => (k % inDim === 5 ? 50 : 1) * rand());
    const weights = [randomWeight(out, inDim)];
    const r = awqSearch({ x, rows, inDim, weights, groupSize: 16 });
    assert.ok(r.ratio > 0);
    assert.ok(r.error < 0.5 * r.errorUnscaled, `${r.error} vs ${r.errorUnscaled}`);
    assert.ok(r.scales[5] > 1 && r.scales.every((v, i) => i === 5 || v < r.scales[5])); // the salient weights grow
  });

  test("uniform activations: every α gives s = 1, so α = 0 is kept and nothing changes", () => {
    const [rows, inDim] = [8, 16];
    const x = Float32Array.from({ length: rows * inDim }, () => (rand() < 0 ? -2 : 2)); // mean |x| = 2 everywhere
    const r = awqSearch({ x, rows, inDim, weights: [randomWeight(4, inDim)], groupSize: 8 });
    assert.equal(r.ratio, 0);
    assert.equal(r.error, r.errorUnscaled);
    assert.ok(r.scales.every((v) => v === 1));
  });

  test("property: on correlated inputs with outlier channels, AWQ's output error is below round-to-nearest's", () => {
    const [rows, inDim, g] = [64, 128, 32];
    for (let trial = 0; trial < 4; trial++) {
      const outliers = [7 + trial, 40, 77 + 3 * trial, 120];
      const x = correlatedInputs(rows, inDim, outliers, 10 + 10 * trial);
      const weights = [randomWeight(24, inDim), randomWeight(16, inDim)];
      const r = awqSearch({ x, rows, inDim, weights, groupSize: g });
      // Judged apart from the search: the returned s applied as a converter would, against s = 1.
      const ones = new Float32Array(inDim).fill(1);
      const awq = outputError(x, rows, inDim, weights, r.scales, g);
      const rtn = outputError(x, rows, inDim, weights, ones, g);
      assert.ok(
        awq < 0.8 * rtn,
        `trial ${trial}: AWQ ${awq.toExponential(3)} vs round-to-nearest ${rtn.toExponential(3)}`,
      );
      assert.ok(Math.abs(awq - r.error) <= 1e-9 * awq);
    }
  });

  test("applyAwqScales multiplies column i by s[i]", () => {
    const w = new Float32Array([1, 2, 3, 4, 5, 6]);
    assert.deepEqual(Array.from(applyAwqScales(w, 2, 3, new Float32Array([2, 0.5, -1]))), [2, 1, -3, 8, 2.5, -6]);
  });

  test("clipping: each group keeps the range amax · (1 − k/20) whose output error a brute force finds lowest", () => {
    const [rows, inDim, out, g] = [16, 16, 3, 8];
    const x = correlatedInputs(rows, inDim, [2], 5);
    const w = randomWeight(out, inDim).w;
    w[0] = 4; // one large weight: clipping it trades its error for finer steps on the rest
    const clip = awqClipSearch(x, rows, inDim, w, out, g);
    const rne = (v: number) => {
      const f = Math.floor(v);
      const d = v - f;
      return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
    };
    for (let o = 0; o < out; o++)
      for (let gi = 0; gi < inDim / g; gi++) {
        const ws = Array.from({ length: g }, (_, k) => w[o * inDim + gi * g + k]);
        const amax = Math.max(...ws.map(Math.abs));
        let best = [Number.POSITIVE_INFINITY, 0];
        for (let k = 0; k <= 10; k++) {
          const max = amax * (1 - k / 20);
          const scale = Math.fround(max / 7);
          let err = 0;
          for (let r = 0; r < rows; r++) {
            let y = 0;
            for (let i = 0; i < g; i++) {
              const q = Math.min(7, Math.max(-8, rne(ws[i] / scale))) * scale;
              y += x[r * inDim + gi * g + i] * (q - ws[i]);
            }
            err += y * y;
          }
          if (err < best[0] * (1 - 1e-12)) best = [err, max];
        }
        assert.ok(Math.abs(clip[gi * out + o] - best[1]) <= 1e-6 * best[1], `[${o}, group ${gi}]`);
      }
    assert.ok(clip[0] < 4, "the large weight's group is clipped");
    const t = quantizeInt4Symmetric(w, out, inDim, g, clip);
    assert.equal(t.scales[0], Math.fround(clip[0] / 7));
  });
});
