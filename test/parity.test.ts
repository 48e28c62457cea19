// Every fixture through convert → build → run on the cpu backend matches what transformers recorded:
// context logits within 1e-3 at every position and identical 16-token greedy continuations.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { LLM } from "../src/runtime/llm.js";
import { FIXTURE_NAMES, FIXTURES, loadReference, maxAbsDiff, stackRows, succeeded, tempDir } from "./helpers.js";

const work = tempDir();
after(() => fs.rmSync(work, { recursive: true, force: true }));

for (const name of FIXTURE_NAMES) {
  describe(`parity: ${name}`, async () => {
    const ref = loadReference(name);
    const ckpt = path.join(work, `${name}-ckpt`);
    const engine = path.join(work, `${name}-engine`);
    await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype: "float32" });
    await buildEngine({
      checkpointDir: ckpt,
      outputDir: engine,
      backend: "cpu",
      request: { gather_context_logits: true, gather_generation_logits: true },
    });
    const llm = await LLM.load(engine);
    const prompts = ref.prompts.map((p) => p.inputIds);
    const outs = succeeded(llm.generate(prompts, { maxNewTokens: 16, endId: ref.eosId }));

    test("context logits within 1e-3 of transformers at every position", () => {
      ref.prompts.forEach((p, i) => {
        const got = stackRows(outs[i].contextLogits!, ref.vocab);
        const err = maxAbsDiff(got, p.contextLogits);
        assert.ok(err <= 1e-3, `prompt ${i}: max |logit − reference| = ${err}`);
      });
    });

    test("greedy output ids identical to transformers", () => {
      ref.prompts.forEach((p, i) => {
        assert.deepEqual(outs[i].outputIds, p.greedyIds, `prompt ${i}`);
      });
    });

    test("generation logits within 1e-3 of transformers", () => {
      ref.prompts.forEach((p, i) => {
        const got = stackRows(outs[i].generationLogits!, ref.vocab);
        assert.ok(maxAbsDiff(got, p.generationLogits) <= 1e-3, `prompt ${i}`);
      });
    });

    test("every KV block is free again", () => {
      assert.equal(llm.numFreeKvBlocks, llm.numKvBlocks);
    });
  });
}
