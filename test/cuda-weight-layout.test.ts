// The weight-only layout kiln build gives the cuda GEMV (backends/cuda/weight-layout.ts), worked by hand: the
// checkpoint's [in, out] int8 (int4 packed along out) becomes [out, in] (int4 packed along in).

import assert from "node:assert/strict";
import { test } from "node:test";
import { cudaWeightOnlyLayout } from "../src/backends/cuda/weight-layout.js";

test("int8: [in, out] transposed to [out, in], bytes as two's complement", () => {
  // in 2, out 3: q[i][o] = [[1, -2, 3], [-4, 5, -128]]
  const q = Int8Array.of(1, -2, 3, -4, 5, -128);
  assert.deepEqual([...cudaWeightOnlyLayout(q, 3, 2, 8)], [1, 252, 254, 5, 3, 128]);
});

test("int4: pairs along out become pairs along in, the even element in the low nibble", () => {
  // in 2, out 2. Checkpoint bytes [in, out/2]: row i=0 holds (o0, o1) = (1, -3) → 0xd1; i=1: (7, -8) → 0x87.
  const q = Int8Array.of(0xd1 - 256, 0x87 - 256);
  // Output row o=0: (i0, i1) = (1, 7) → 0x71; o=1: (-3, -8) → low 0xd, high 0x8 → 0x8d.
  assert.deepEqual([...cudaWeightOnlyLayout(q, 2, 2, 4)], [0x71, 0x8d]);
});
