// Fixtures through convert → build --backend cuda → run on the GPU, against what transformers recorded:
// float32 engines within 1e-3 with identical greedy ids, bfloat16 engines within 2e-2 of transformers'
// bfloat16 logits; a batch gives what each prompt gives alone. GPU machine only.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { LLM } from "../src/runtime/llm.js";
import { FIXTURE_NAMES, FIXTURES, loadReference, maxAbsDiff, stackRows, succeeded, tempDir } from "../test/helpers.js";

const work = tempDir("kiln-gpu-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

async function cudaEngine(name: string, dtype: "float32" | "bfloat16"): Promise<LLM> {
  const ckpt = path.join(work, `${name}-${dtype}-ckpt`);
  const engine = path.join(work, `${name}-${dtype}-engine`);
  await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype });
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: engine,
    backend: "cuda",
    request: { gather_context_logits: true, max_batch_size: 8 },
  });
  return LLM.load(engine);
}

for (const name of FIXTURE_NAMES) {
  describe(`cuda parity: ${name}`, () => {
    const ref = loadReference(name);
    const prompts = ref.prompts.map((p) => p.inputIds);

    test("float32: logits within 1e-3 of transformers, greedy ids identical, batched = alone", async () => {
      const llm = await cudaEngine(name, "float32");
      const outs = succeeded(llm.generate(prompts, { maxNewTokens: 16, endId: ref.eosId }));
      let worst = 0;
      ref.prompts.forEach((p, i) => {
        worst = Math.max(worst, maxAbsDiff(stackRows(outs[i].contextLogits!, ref.vocab), p.contextLogits));
        assert.deepEqual(outs[i].outputIds, p.greedyIds, `prompt ${i}`);
        assert.deepEqual(
          succeeded(llm.generate([p.inputIds], { maxNewTokens: 16, endId: ref.eosId }))[0].outputIds,
          outs[i].outputIds,
        );
      });
      console.log(`# ${name} float32 max |Δlogit| ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-3, `max |Δlogit| ${worst}`);
      assert.equal(llm.numFreeKvBlocks, llm.numKvBlocks);
    });

    test("bfloat16: logits within 2e-2 of transformers' bfloat16", async () => {
      const file = path.join(FIXTURES, name, "reference_bf16.safetensors");
      const rec = SafetensorsFile.open(file);
      const llm = await cudaEngine(name, "bfloat16");
      const outs = succeeded(llm.generate(prompts, { maxNewTokens: 16, endId: ref.eosId }));
      let worst = 0;
      let sameGreedy = 0;
      ref.prompts.forEach((_, i) => {
        worst = Math.max(
          worst,
          maxAbsDiff(stackRows(outs[i].contextLogits!, ref.vocab), rec.readFloat32(`prompt${i}.context_logits`)),
        );
        const hf = Array.from(rec.readFloat32(`prompt${i}.greedy_ids`));
        if (JSON.stringify(hf) === JSON.stringify(outs[i].outputIds)) sameGreedy++;
      });
      rec.close();
      console.log(
        `# ${name} bfloat16 max |Δlogit| ${worst.toExponential(2)}, greedy identical ${sameGreedy}/${prompts.length}`,
      );
      assert.ok(worst <= 2e-2, `max |Δlogit| ${worst}`);
    });
  });
}
