// Sampling on the GPU (sample_rows): which tokens top-k, top-p and min-p keep on a crafted distribution
// whose probabilities are known exactly, temperature frequencies against the closed-form softmax
// (chi-square), and, through an engine, seeded runs that reproduce and top_k 1 equal to greedy.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import type { StepInput } from "../src/backends/backend.js";
import { CudaBackend } from "../src/backends/cuda/cuda-backend.js";
import { CudaDevice } from "../src/backends/cuda/driver.js";
import { kernelSource } from "../src/backends/cuda/engine-kernels.js";
import { compileKernels } from "../src/backends/cuda/nvrtc.js";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { LLM } from "../src/runtime/llm.js";
import { FIXTURES, loadReference, succeeded, tempDir } from "../test/helpers.js";

const device = CudaDevice.open();
const work = tempDir("kiln-gpu-sampling-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

const N = 20000;
const V = 6;
const be = new CudaBackend(
  device,
  device.loadModule(compileKernels(kernelSource(), "decoder.cu", device.target, { KILN_DTYPE: 0 }).cubin),
  new Map(),
  "F32",
  {
    maxRows: N,
    maxSeqs: 1,
    maxBlocksPerSeq: 1,
    hidden: 8,
    widestRow: 8,
    vocab: V,
    logitRows: N,
    maxSeqLen: 8,
    numHeads: 1,
    headSize: 8,
  },
  new Float32Array(4),
);

/** N draws from one logits row (the same row N times, counters 0..N−1). */
function draw(
  row: number[],
  params: { temperature?: number; topK?: number; topP?: number; minP?: number; seed?: number },
): number[] {
  const logits = new Float32Array(N * V);
  for (let r = 0; r < N; r++) logits.set(row, r * V);
  const p = device.alloc(logits.byteLength);
  device.upload(p, logits);
  const step: StepInput = {
    tokenIds: new Int32Array(N),
    positions: new Int32Array(N),
    slotMapping: new Int32Array(N).fill(-1),
    seqs: [],
    logitRows: Int32Array.from({ length: N }, (_, i) => i),
    rowSampling: {
      temperature: new Float32Array(N).fill(params.temperature ?? 1),
      topK: new Int32Array(N).fill(params.topK ?? 0),
      topP: new Float32Array(N).fill(params.topP ?? 1),
      minP: new Float32Array(N).fill(params.minP ?? 0),
      seed: new Int32Array(N).fill(params.seed ?? 7),
      counter: Int32Array.from({ length: N }, (_, i) => i),
    },
  };
  be.beginStep(step);
  be.launchSample({ ptr: p, rows: N, cols: V, dtype: "F32" }, V);
  const { tokens } = be.readGreedy(N);
  device.free(p);
  return Array.from(tokens);
}

const PROBS = [0.4, 0.3, 0.15, 0.1, 0.05, 0];
const LOGITS = PROBS.map((p) => (p > 0 ? Math.log(p) : -1e30));
const kept = (tokens: number[]) => [...new Set(tokens)].sort((a, b) => a - b);

describe("sample_rows on a distribution known exactly", () => {
  test("top_p 0.7 keeps {0, 1}; 0.71 keeps {0, 1, 2}; top_k 2 keeps {0, 1}; min_p 0.3 keeps {0, 1, 2}", () => {
    assert.deepEqual(kept(draw(LOGITS, { topP: 0.7 })), [0, 1]);
    assert.deepEqual(kept(draw(LOGITS, { topP: 0.71 })), [0, 1, 2]);
    assert.deepEqual(kept(draw(LOGITS, { topK: 2 })), [0, 1]);
    assert.deepEqual(kept(draw(LOGITS, { minP: 0.3 })), [0, 1, 2]);
    assert.deepEqual(kept(draw(LOGITS, { topK: 1 })), [0]);
    // top-p measures against what top-k kept (0.85 here): 0.8 × 0.85 = 0.68 ≤ 0.7, so {0, 1}.
    assert.deepEqual(kept(draw(LOGITS, { topK: 3, topP: 0.8 })), [0, 1]);
    assert.deepEqual(kept(draw(LOGITS, {})), [0, 1, 2, 3, 4]);
  });

  test("temperature 0.8: frequencies pass a chi-square test against softmax(logits / 0.8)", () => {
    const logits = [1.2, 0.3, -0.5, 2.0, 0.0, -1.1];
    const tokens = draw(logits, { temperature: 0.8, seed: 3 });
    const w = logits.map((l) => Math.exp(l / 0.8));
    const z = w.reduce((a, b) => a + b, 0);
    const counts = new Array(V).fill(0);
    for (const t of tokens) counts[t]++;
    const chi2 = counts.reduce((s, c, i) => s + (c - (N * w[i]) / z) ** 2 / ((N * w[i]) / z), 0);
    assert.ok(
      chi2 < 20.52,
      `chi-square ${chi2.toFixed(2)} ≥ 20.52 (5 degrees of freedom, p = 0.001); counts ${counts}`,
    );
  });

  test("the same seed and counters give the same draws; another seed others", () => {
    const a = draw(LOGITS, { seed: 5 });
    assert.deepEqual(draw(LOGITS, { seed: 5 }), a);
    assert.notDeepEqual(draw(LOGITS, { seed: 6 }), a);
  });
});

describe("sampling through a cuda engine", () => {
  test("a seeded sampled run reproduces; top_k 1 at temperature 0.7 equals greedy; the KV pool empties", async () => {
    const ref = loadReference("qwen2_tied_gqa");
    const ckpt = path.join(work, "ckpt");
    const engine = path.join(work, "engine");
    await convertHfCheckpoint({
      modelDir: path.join(FIXTURES, "qwen2_tied_gqa", "hf"),
      outputDir: ckpt,
      dtype: "float32",
    });
    await buildEngine({ checkpointDir: ckpt, outputDir: engine, backend: "cuda", request: { max_batch_size: 8 } });
    const llm = await LLM.load(engine);
    const prompts = ref.prompts.map((p) => p.inputIds);
    const run = (sampling: object) =>
      succeeded(llm.generate(prompts, { maxNewTokens: 12, endId: null, sampling })).map((o) => o.outputIds);
    const a = run({ topK: 0, topP: 0.95, temperature: 1.1, seed: 3 });
    assert.deepEqual(run({ topK: 0, topP: 0.95, temperature: 1.1, seed: 3 }), a);
    assert.notDeepEqual(run({ topK: 0, topP: 0.95, temperature: 1.1, seed: 4 }), a);
    assert.deepEqual(
      run({ topK: 1, temperature: 0.7, seed: 9 }),
      ref.prompts.map((p) => p.greedyIds.slice(0, 12)),
    );
    assert.equal(llm.numFreeKvBlocks, llm.numKvBlocks);
    llm.dispose();
  });
});
