// Weight-only per-channel quantization (W8A16, W4A16) against values worked by hand from TensorRT-LLM's
// definition, and through convert → build → run against transformers' float32 logits.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { matmulWeightOnly } from "../src/backends/cpu/kernels.js";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { Mapping } from "../src/mapping.js";
import { dequantizeWeightOnly, int4At, quantizeWeightOnly, roundHalfEven } from "../src/quantization/weight-only.js";
import { LLM } from "../src/runtime/llm.js";
import { contextLogitError, FIXTURE_NAMES, FIXTURES, loadReference, tempDir } from "./helpers.js";

const work = tempDir("kiln-wo-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

// w [out 2, in 4]
const W = new Float32Array([1, -2, 0.5, 4, 0.1, 0.2, -0.3, 0.05]);

describe("quantization by hand", () => {
  test("round half to even, as torch.round", () => {
    assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, -2.6].map(roundHalfEven), [0, 2, 2, -0, -2, -2, 2, -3]);
  });

  test("int8: scale = amax/128 per output channel, q = clamp(round(w/scale), -128, 127), stored [in, out]", () => {
    const q = quantizeWeightOnly(W, 2, 4, 8);
    assert.deepEqual(Array.from(q.scales), [Math.fround(4 / 128), Math.fround(0.3 / 128)]);
    // row 0: 1/(1/32) = 32, -64, 16, 128 → 127; row 1: 0.1/(0.3/128) = 42.7 → 43, 85.3 → 85, -128, 21.3 → 21
    assert.deepEqual(Array.from(q.qweight), [32, 43, -64, 85, 16, -128, 127, 21]);
  });

  test("int4: scale = amax/8, q in [-8, 7], packed along out with the even column in the low nibble", () => {
    const q = quantizeWeightOnly(W, 2, 4, 4);
    assert.deepEqual(Array.from(q.scales), [0.5, Math.fround(0.3 / 8)]);
    // q row 0: 2, -4, 1, 8 → 7; row 1: 2.67 → 3, 5.33 → 5, -8, 1.33 → 1
    const bytes = Array.from(q.qweight, (b) => b & 0xff);
    assert.deepEqual(bytes, [0x32, 0x5c, 0x81, 0x17]);
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => [int4At(q.qweight, 2, i, 0), int4At(q.qweight, 2, i, 1)]),
      [
        [2, 3],
        [-4, 5],
        [1, -8],
        [7, 1],
      ],
    );
    const back = dequantizeWeightOnly(q, 2, 4);
    assert.ok(Math.abs(back[3] - 3.5) < 1e-7, "the clamped 4 comes back as 7 × 0.5");
  });
});

describe("the cpu kernel", () => {
  test("the dequantize-on-the-fly matmul equals a float matmul with the dequantized weights", () => {
    const [O, I, R] = [6, 10, 3];
    const w = Float32Array.from({ length: O * I }, (_, i) => Math.sin(i * 1.7) * 0.3);
    const x = Float32Array.from({ length: R * I }, (_, i) => Math.cos(i * 0.9));
    const bias = Float32Array.from({ length: O }, (_, i) => i / 10);
    for (const bits of [8, 4] as const) {
      const q = quantizeWeightOnly(w, O, I, bits);
      const dq = dequantizeWeightOnly(q, O, I);
      const got = new Float32Array(R * O);
      matmulWeightOnly(x, R, I, { bits, q: q.qweight, scales: q.scales }, O, bias, got);
      for (let r = 0; r < R; r++) {
        for (let o = 0; o < O; o++) {
          let s = bias[o];
          for (let i = 0; i < I; i++) s += x[r * I + i] * dq[o * I + i];
          assert.ok(Math.abs(got[r * O + o] - s) < 1e-5, `int${bits} [${r}, ${o}]`);
        }
      }
    }
  });
});

describe("weight-only engines against transformers", () => {
  for (const name of FIXTURE_NAMES) {
    // These random fixtures amplify weight error (max |Δlogit| / std: int8 0.09–0.20, int4 1.8–2.3 measured);
    // the bounds catch a broken layout or kernel (garbage logits), the log lines give the figures.
    test(`${name}: int8 and int4 engines stay near transformers' logits, int8 closer`, async () => {
      const ref = loadReference(name);
      const errors: Record<number, number> = {};
      for (const bits of [8, 4] as const) {
        const ckpt = path.join(work, `${name}-w${bits}`);
        const engine = `${ckpt}-engine`;
        await convertHfCheckpoint({
          modelDir: path.join(FIXTURES, name, "hf"),
          outputDir: ckpt,
          dtype: "float32",
          weightOnlyBits: bits,
        });
        const f = SafetensorsFile.open(path.join(ckpt, "rank0.safetensors"));
        assert.equal(f.info("transformer.layers.0.mlp.fc.weight").dtype, "I8");
        assert.ok(f.has("transformer.layers.0.mlp.fc.per_channel_scale"));
        assert.equal(f.info("lm_head.weight").dtype, "F32", "lm_head stays unquantized");
        f.close();
        await buildEngine({
          checkpointDir: ckpt,
          outputDir: engine,
          backend: "cpu",
          request: { gather_context_logits: true },
        });
        const llm = await LLM.load(engine);
        const { worst, std } = contextLogitError(llm, ref);
        llm.dispose();
        errors[bits] = worst / std;
      }
      console.log(`# ${name}: max |Δlogit| / std(logits): int8 ${errors[8].toFixed(4)}, int4 ${errors[4].toFixed(4)}`);
      assert.ok(errors[8] <= 0.3, `int8: ${errors[8]}`);
      assert.ok(errors[4] <= 3, `int4: ${errors[4]}`);
      assert.ok(errors[4] > errors[8], "int4 is coarser than int8");
    });
  }

  test("quantized and split: tp 2 rank files hold each rank's own quantized slices", async () => {
    const ckpt = path.join(work, "w8-tp2");
    const cfg = await convertHfCheckpoint({
      modelDir: path.join(FIXTURES, "qwen2_tied_gqa", "hf"),
      outputDir: ckpt,
      dtype: "float32",
      weightOnlyBits: 8,
      mapping: new Mapping({ tpSize: 2 }),
    });
    assert.equal(cfg.quantization.quant_algo, "W8A16");
    const f = SafetensorsFile.open(path.join(ckpt, "rank1.safetensors"));
    assert.deepEqual(f.info("transformer.layers.0.mlp.fc.weight").shape, [64, 80]); // [in, intermediate / 2]
    assert.deepEqual(f.info("transformer.layers.0.attention.dense.weight").shape, [32, 64]); // [in / 2, hidden]
    f.close();
  });
});
