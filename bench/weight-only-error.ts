// How far weight-only int8 (and int4) move the demo model's logits from its float32 engine, on the first
// 300 held-out tokens: the largest |Δlogit| and the rms error, each over the standard deviation of the
// float32 logits (the measure of docs/quantization.md's accuracy table).
//   npm run build && node dist/bench/weight-only-error.js

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { LLM } from "../src/runtime/llm.js";
import { TextTokenizer } from "../src/tokenizer/tokenizer.js";

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const MODEL = path.join(ROOT, "models", "demo");
const TOKENS = 300;

async function contextLogits(work: string, tag: string, ids: number[], weightOnlyBits?: 4 | 8) {
  const ckpt = path.join(work, tag);
  await convertHfCheckpoint({ modelDir: MODEL, outputDir: ckpt, dtype: "float32", weightOnlyBits });
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: `${ckpt}-engine`,
    backend: "cpu",
    request: { gather_context_logits: true, max_batch_size: 1 },
  });
  const llm = await LLM.load(`${ckpt}-engine`);
  const [r] = llm.generate([ids], { maxNewTokens: 1, endId: null });
  llm.dispose();
  if ("error" in r) throw r.error;
  return r.contextLogits!;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-wo-error-"));
try {
  const ids = TextTokenizer.load(MODEL)
    .encode(fs.readFileSync(path.join(MODEL, "heldout.txt"), "utf8"))
    .slice(0, TOKENS);
  const float = await contextLogits(work, "f32", ids);
  let [sum, sq, n] = [0, 0, 0];
  for (const row of float) for (const v of row) [sum, sq, n] = [sum + v, sq + v * v, n + 1];
  const std = Math.sqrt(sq / n - (sum / n) ** 2);
  for (const bits of [8, 4] as const) {
    const q = await contextLogits(work, `w${bits}`, ids, bits);
    let [worst, se] = [0, 0];
    for (const [p, row] of float.entries()) {
      for (const [i, v] of row.entries()) {
        const d = Math.abs(q[p][i] - v);
        worst = Math.max(worst, d);
        se += d * d;
      }
    }
    console.log(
      `int${bits} weight-only, ${ids.length} positions × ${float[0].length} logits: max |Δlogit| / std ${(worst / std).toFixed(4)}, rms / std ${(Math.sqrt(se / n) / std).toFixed(5)} (std ${std.toFixed(3)})`,
    );
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
