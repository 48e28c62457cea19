// INT8 KV cache (convert --int8_kv_cache): the store's rounding by hand, the checkpoint's scale tensors
// (TensorRT-LLM's kv_cache_scaling_factor, one a layer, on every rank), and engines measured against
// transformers' logits next to the float32 cache.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { CpuKvStore } from "../src/backends/cpu/kv-store.js";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { Mapping } from "../src/mapping.js";
import { contextLogitError, convertBuildLoad, FIXTURES, loadReference, tempDir } from "./helpers.js";

const work = tempDir("kiln-kv8-");
after(() => fs.rmSync(work, { recursive: true, force: true }));
const fixture = "qwen2_tied_gqa";
const model = path.join(FIXTURES, fixture, "hf");
const calib = path.join(work, "calib.txt");
fs.writeFileSync(
  calib,
  ["The jury said it did find that many of the laws were outmoded.", "It was a cold morning in the city."].join("\n"),
);
const scaleOf = (l: number) => `transformer.layers.${l}.attention.kv_cache_scaling_factor`;

describe("INT8 KV cache", () => {
  test("by hand: q = clamp(round(x / scale), −127, 127), read back as q · scale", () => {
    const spec = { numLayers: 2, numBlocks: 2, tokensPerBlock: 2, numHeads: 1, numKvHeads: 1, headSize: 4 };
    const store = new CpuKvStore(spec, { kind: "int8", scales: Float32Array.of(0.5, 0.1) });
    store.write(1, 3, Float32Array.of(0.26, -0.04, 20, -0.16), Float32Array.of(12.7, -12.71, 0, 0.049));
    assert.equal(store.scale(1), Math.fround(0.1));
    const [kb] = store.keyBlocks(1, Int32Array.of(1));
    const [vb] = store.valueBlocks(1, Int32Array.of(1));
    assert.ok(kb instanceof Int8Array);
    assert.deepEqual([...kb.subarray(4, 8)], [3, 0, 127, -2]); // 20 / 0.1 clamps to 127
    assert.deepEqual([...vb.subarray(4, 8)], [127, -127, 0, 0]);
    assert.deepEqual([...kb.subarray(0, 4)], [0, 0, 0, 0], "slot 2 untouched");
    const float = new CpuKvStore(spec);
    float.write(0, 0, Float32Array.of(0.26, 1, 2, 3), Float32Array.of(4, 5, 6, 7));
    assert.equal(float.scale(0), 1);
    assert.deepEqual([...float.keyBlocks(0, Int32Array.of(0))[0].subarray(0, 4)], [0.26, 1, 2, 3].map(Math.fround));
  });

  test("convert writes kv_cache_quant_algo INT8 and one positive scale a layer, the same on every tp rank", async () => {
    const out = path.join(work, "tp2pp2");
    const cfg = await convertHfCheckpoint({
      modelDir: model,
      outputDir: out,
      dtype: "float32",
      mapping: new Mapping({ tpSize: 2, ppSize: 2 }),
      int8KvCache: { calibDataset: calib, calibSize: 2 },
    });
    assert.equal(cfg.quantization.kv_cache_quant_algo, "INT8");
    assert.equal(cfg.quantization.quant_algo, null);
    const perStage = cfg.num_hidden_layers / 2;
    const scales: number[][] = [];
    for (let r = 0; r < 4; r++) {
      const f = SafetensorsFile.open(path.join(out, `rank${r}.safetensors`));
      const mine: number[] = [];
      for (let l = 0; l < perStage; l++) {
        assert.equal(f.info(scaleOf(l)).dtype, "F32");
        assert.deepEqual(f.info(scaleOf(l)).shape, [1]);
        mine.push(f.readFloat32(scaleOf(l))[0]);
      }
      assert.equal(f.has(scaleOf(perStage)), false, `rank${r} holds only its stage's layers`);
      f.close();
      scales.push(mine);
    }
    assert.deepEqual(scales[0], scales[1], "tp ranks of stage 0 share the scales");
    assert.deepEqual(scales[2], scales[3], "tp ranks of stage 1 share the scales");
    for (const s of scales.flat()) assert.ok(s > 0 && Number.isFinite(s), `scale ${s}`);
  });

  test("its engine stays near transformers' logits; the float32 cache stays nearer", async () => {
    const ref = loadReference(fixture);
    const errors: Record<string, number> = {};
    for (const kv8 of [false, true]) {
      const ckpt = path.join(work, kv8 ? "kv8" : "kv32");
      const { llm } = await convertBuildLoad({
        modelDir: model,
        outputDir: ckpt,
        dtype: "float32",
        int8KvCache: kv8 ? { calibDataset: calib, calibSize: 2 } : undefined,
      });
      assert.equal(llm.engine.backend.kvBytesPerValue, kv8 ? 1 : 4);
      const { worst, rms } = contextLogitError(llm, ref);
      llm.dispose();
      errors[kv8 ? "int8" : "float32"] = worst / rms;
    }
    console.log(`# ${fixture}: max |Δlogit| / rms(logits): float32 KV ${errors.float32}, int8 KV ${errors.int8}`);
    assert.ok(errors.float32 < 1e-4, `float32: ${errors.float32}`);
    assert.ok(errors.int8 > errors.float32, "int8 rounding shows");
    // These random fixtures amplify rounding (weight-only int8 measured 0.09–0.20 of std); the bound catches
    // a wrong scale or a missing dequantization (garbage logits), the log line gives the figure.
    assert.ok(errors.int8 < 0.5, `int8: ${errors.int8}`);
  });

  test("bad input: a checkpoint missing a layer's scale names the tensor", async () => {
    const broken = path.join(work, "no-scale");
    fs.cpSync(path.join(work, "kv32"), broken, { recursive: true });
    const cfgFile = path.join(broken, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgFile, "utf8"));
    cfg.quantization.kv_cache_quant_algo = "INT8";
    fs.writeFileSync(cfgFile, JSON.stringify(cfg));
    await assert.rejects(
      buildEngine({ checkpointDir: broken, outputDir: path.join(work, "broken-e"), backend: "cpu", request: {} }),
      /required tensor "transformer\.layers\.0\.attention\.kv_cache_scaling_factor" is missing/,
    );
    assert.equal(fs.existsSync(path.join(work, "broken-e")), false);
  });
});
