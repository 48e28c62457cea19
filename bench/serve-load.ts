// Load test of kiln serve on the CPU with the demo model: N requests (default 1000) from C concurrent
// clients (default 64) through the official openai client, greedy. Every answer must equal the same
// request run alone through the library, none lost or duplicated, and the KV pool empty afterwards.
// Writes latency percentiles and throughput as JSON.
//
// node dist/bench/serve-load.js --engine_dir demo-out/engine [--requests 1000] [--concurrency 64] [--out F]

import fs from "node:fs";
import { parseArgs } from "node:util";
import OpenAI from "openai";
import { isFailure, LLM } from "../src/runtime/llm.js";
import { createServer } from "../src/server/app.js";
import { TextTokenizer } from "../src/tokenizer/tokenizer.js";

const { values: args } = parseArgs({
  options: {
    engine_dir: { type: "string", default: "demo-out/engine" },
    requests: { type: "string", default: "1000" },
    concurrency: { type: "string", default: "64" },
    out: { type: "string" },
  },
});
const total = Number(args.requests);
const concurrency = Number(args.concurrency);
const llm = await LLM.load(args.engine_dir!);
const tok = TextTokenizer.load(args.engine_dir!);
const subjects = ["The jury", "He said", "In the morning", "The committee", "She", "Mr. Smith", "The city", "It was"];
const prompts = Array.from(
  { length: total },
  (_, i) => `${subjects[i % subjects.length]} ${i % 13 === 0 ? "had" : "was"}`,
);
const maxTokens = (i: number) => 8 + (i % 9);

const expected = prompts.map((p, i) => {
  const [r] = llm.generate([tok.encode(p)], { maxNewTokens: maxTokens(i), endId: tok.eosId });
  if (isFailure(r)) throw r.error;
  return tok.decode(r.outputIds, { skipSpecialTokens: true });
});

const server = createServer(llm, tok, { modelName: "demo", maxQueue: 4096 });
const base = await server.app.listen({ host: "127.0.0.1", port: 0 });
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "none", maxRetries: 0 });
const got: (string | undefined)[] = new Array(total);
const latencies: number[] = [];
let completionTokens = 0;
let duplicates = 0;
let next = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (next < total) {
      const i = next++;
      const start = performance.now();
      const r = await client.completions.create({
        model: "demo",
        prompt: prompts[i],
        max_tokens: maxTokens(i),
        temperature: 0,
      });
      latencies.push(performance.now() - start);
      if (got[i] !== undefined) duplicates++;
      got[i] = r.choices[0].text;
      completionTokens += r.usage?.completion_tokens ?? 0;
    }
  }),
);
const seconds = (performance.now() - t0) / 1000;
await server.loop.idle();
latencies.sort((a, b) => a - b);
const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
const mismatches = got.filter((g, i) => g !== expected[i]).length;
const result = {
  engine: args.engine_dir,
  requests: total,
  concurrency,
  lost: got.filter((g) => g === undefined).length,
  duplicates,
  mismatches_vs_solo: mismatches,
  kv_blocks_in_use_after: llm.numKvBlocks - llm.numFreeKvBlocks,
  seconds,
  requests_per_s: total / seconds,
  completion_tokens_per_s: completionTokens / seconds,
  latency_ms_p50: pct(50),
  latency_ms_p99: pct(99),
  machine: `${(await import("node:os")).cpus().length} CPU cores`,
};
await server.app.close();
console.log(JSON.stringify(result, null, 2));
if (args.out) fs.writeFileSync(args.out, `${JSON.stringify(result, null, 2)}\n`);
if (result.lost || result.duplicates || result.mismatches_vs_solo || result.kv_blocks_in_use_after)
  process.exitCode = 1;
