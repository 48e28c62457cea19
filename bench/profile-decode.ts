// Builds the bench model's engine (if absent) and runs a short greedy decode, for a profiler to watch:
// `KILN_CUDA_GRAPHS=0 ncu … node dist/bench/profile-decode.js --work DIR [--tokens 4] [--batch 1] [--input 128]`
// (a wide step, as the nano-vllm workload's: --batch 256 --input 1000, with ncu's -k to pick kernels).

import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { LLM } from "../src/runtime/llm.js";
import { QWEN25_05B, writeRandomQwen2 } from "./random-model.js";

const { values: args } = parseArgs({
  options: {
    work: { type: "string" },
    tokens: { type: "string" },
    batch: { type: "string" },
    input: { type: "string" },
  },
});
const work = args.work ?? "/tmp/kiln-bench";
const engine = path.join(work, "engine");
if (!fs.existsSync(path.join(engine, "rank0.engine"))) {
  const hf = path.join(work, "hf");
  if (!fs.existsSync(path.join(hf, "model.safetensors"))) writeRandomQwen2(hf, QWEN25_05B);
  await convertHfCheckpoint({ modelDir: hf, outputDir: path.join(work, "ckpt"), dtype: "bfloat16", overwrite: true });
  await buildEngine({
    checkpointDir: path.join(work, "ckpt"),
    outputDir: engine,
    backend: "cuda",
    overwrite: true,
    request: { max_batch_size: 256, max_seq_len: 2304, max_input_len: 1024, max_num_tokens: 8192 },
  });
}
const llm = await LLM.load(engine);
const input = Number(args.input ?? 128);
const prompts = Array.from({ length: Number(args.batch ?? 1) }, (_, p) =>
  Array.from({ length: input }, (_, i) => (i * 7919 + p * 104729) % 150000),
);
const outs = llm.generate(prompts, { maxNewTokens: Number(args.tokens ?? 4), endId: null });
console.log(JSON.stringify(outs.slice(0, 2).map((o) => ("outputIds" in o ? o.outputIds : o))));
