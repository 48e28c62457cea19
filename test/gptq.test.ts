// GPTQ against closed forms: a hand-worked group quantization, equality with round-to-nearest when the
// calibration Hessian is diagonal (nothing to compensate), and a lower output error than round-to-nearest on
// correlated calibration inputs — the point of the algorithm.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { dequantizeGroups, gptq, quantizeGroupsRtn } from "../src/quantization/gptq.js";

let seed = 99;
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31 - 0.5;
};

/** ‖X Wᵀ − X Qᵀ‖²: the layer output error on the calibration inputs. */
function outputError(
  x: Float32Array,
  rows: number,
  inDim: number,
  w: Float32Array,
  q: Float32Array,
  out: number,
): number {
  let e = 0;
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < out; o++) {
      let a = 0;
      for (let i = 0; i < inDim; i++) a += x[r * inDim + i] * (w[o * inDim + i] - q[o * inDim + i]);
      e += a * a;
    }
  }
  return e;
}

describe("GPTQ", () => {
  test("by hand: weights [0, 1, 2, 3] in one 4-bit group → scale 0.2, zero 0, q [0, 5, 10, 15], exact", () => {
    const t = quantizeGroupsRtn(new Float32Array([0, 1, 2, 3]), 1, 4, 4, 4);
    assert.ok(Math.abs(t.scales[0] - 0.2) < 1e-7);
    assert.equal(t.zeros[0], 0);
    assert.deepEqual(Array.from(t.q), [0, 5, 10, 15]);
    assert.deepEqual(
      Array.from(dequantizeGroups(t, 1, 4)),
      [0, 1, 2, 3].map((v) => Math.fround(v)),
    );
    // A group around zero gets a zero point: [-1, 0.5] → lo −1, hi 0.5, scale 0.1, zero 10.
    const u = quantizeGroupsRtn(new Float32Array([-1, 0.5]), 1, 2, 4, 2);
    assert.equal(u.zeros[0], 10);
    assert.deepEqual(Array.from(u.q), [0, 15]);
  });

  test("with uncorrelated calibration inputs (diagonal Hessian) it is exactly round-to-nearest", () => {
    const [out, inDim] = [6, 16];
    const w = Float32Array.from({ length: out * inDim }, rand);
    const x = new Float32Array(inDim * inDim);
    for (let i = 0; i < inDim; i++) x[i * inDim + i] = 1 + (i % 3); // orthogonal rows: XᵀX diagonal
    const a = gptq(w, out, inDim, x, inDim, 4, 8);
    const b = quantizeGroupsRtn(w, out, inDim, 4, 8);
    assert.deepEqual(Array.from(a.q), Array.from(b.q));
  });

  test("on correlated calibration inputs its output error is lower than round-to-nearest's, for int4 and int8", () => {
    const [out, inDim, rows, k] = [16, 64, 256, 8];
    const w = Float32Array.from({ length: out * inDim }, rand);
    // Inputs in a k-dimensional subspace plus a little noise: strongly correlated channels, as real activations are.
    const mix = Float32Array.from({ length: k * inDim }, rand);
    const x = new Float32Array(rows * inDim);
    for (let r = 0; r < rows; r++) {
      const z = Array.from({ length: k }, rand);
      for (let i = 0; i < inDim; i++) {
        let v = 0.02 * rand();
        for (let j = 0; j < k; j++) v += z[j] * mix[j * inDim + i];
        x[r * inDim + i] = v;
      }
    }
    for (const bits of [4, 8] as const) {
      const g = dequantizeGroups(gptq(w, out, inDim, x, rows, bits, 32), out, inDim);
      const n = dequantizeGroups(quantizeGroupsRtn(w, out, inDim, bits, 32), out, inDim);
      const eg = outputError(x, rows, inDim, w, g, out);
      const en = outputError(x, rows, inDim, w, n, out);
      assert.ok(eg < 0.8 * en, `int${bits}: GPTQ ${eg.toExponential(3)} vs round-to-nearest ${en.toExponential(3)}`);
    }
  });

  test("a group size that does not divide in_features is refused", () => {
    assert.throws(
      () => quantizeGroupsRtn(new Float32Array(12), 1, 12, 4, 8),
      /group size 8 does not divide in_features 12/,
    );
  });
});
