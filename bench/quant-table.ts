// The quantization table of docs/quantization.md, on the bundled demo model: for each qformat and KV cache
// dtype, kiln quantize → build → eval (held-out perplexity) and a batch-1 decode timing, next to full
// precision, on the cpu backend (bench/results/quantization-demo.{json,md}) or, on a GPU machine, the cuda
// backend (the same checkpoints: calibration is deterministic).
//   node dist/bench/quant-table.js [--backend cpu|cuda] [--max_tokens 4000] [--jobs 1] [--out bench/results/quantization-demo]
// (--jobs N measures N cases at once, to spend less time calibrating on a many-core GPU machine; the cases then
// share the machine, so the table gives perplexity alone, no decode timing.)

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { perplexity } from "../src/eval/perplexity.js";
import type { KvCacheDtype, QFormat } from "../src/quantization/quantize-plan.js";
import { LLM } from "../src/runtime/llm.js";
import { TextTokenizer } from "../src/tokenizer/tokenizer.js";

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const MODEL = path.join(ROOT, "models", "demo");
const { values: args } = parseArgs({
  options: {
    max_tokens: { type: "string", default: "4000" },
    backend: { type: "string", default: "cpu" },
    jobs: { type: "string", default: "1" },
    out: { type: "string", default: path.join(ROOT, "bench", "results", "quantization-demo") },
    /** Internal: measure one case ("qformat:kv") in this process and print its row as JSON. */
    case: { type: "string" },
  },
});

interface Row {
  qformat: QFormat;
  kvCacheDtype: KvCacheDtype | null;
  quantAlgo: string | null;
  perplexity: number;
  tokensScored: number;
  checkpointMiB: number;
  /** null where cases ran at once (--jobs > 1): a timing under contention would mislead. */
  decodeTokensPerSecond: number | null;
  quantizeSeconds: number;
}

const CASES: [QFormat, KvCacheDtype | null][] = [
  ["full_prec", null],
  ["int8_wo", null],
  ["int8_sq", null],
  ["fp8", null],
  ["int4_wo", null],
  ["int4_awq", null],
  ["w4a8_awq", null],
  ["nvfp4", null],
  ["full_prec", "int8"],
  ["full_prec", "fp8"],
];

const BACKEND = args.backend === "cuda" ? "cuda" : "cpu";
const JOBS = Math.max(1, Number(args.jobs));
const dirBytes = (dir: string) => fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);

/** Batch-1 decode tokens/s of the checkpoint: 16 prompt tokens, 128 new ones, an engine gathering no logits. */
async function decodeSpeed(ckpt: string, ids: number[]): Promise<number> {
  const runEngine = `${ckpt}-run`;
  await buildEngine({ checkpointDir: ckpt, outputDir: runEngine, backend: BACKEND, request: { max_batch_size: 1 } });
  const run = await LLM.load(runEngine);
  run.generate([ids.slice(0, 16)], { maxNewTokens: 8, endId: null }); // warm up
  const t1 = performance.now();
  run.generate([ids.slice(0, 16)], { maxNewTokens: 128, endId: null });
  const decode = 128 / ((performance.now() - t1) / 1000);
  run.dispose();
  return decode;
}

async function measure(
  qformat: QFormat,
  kv: KvCacheDtype | null,
  ids: number[],
  work: string,
  timed: boolean,
): Promise<Row> {
  const ckpt = path.join(work, `${qformat}-${kv}`);
  const t0 = performance.now();
  const cfg = await convertHfCheckpoint({
    modelDir: MODEL,
    outputDir: ckpt,
    dtype: "float32",
    quantize: { qformat, kvCacheDtype: kv ?? undefined, awqBlockSize: 128, quantizeLmHead: false, calibSize: 64 },
  });
  const quantizeSeconds = (performance.now() - t0) / 1000;
  const evalEngine = `${ckpt}-eval`;
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: evalEngine,
    backend: BACKEND,
    request: { gather_context_logits: true, max_batch_size: 4, max_input_len: 512, max_seq_len: 513 },
  });
  const llm = await LLM.load(evalEngine);
  const ppl = perplexity(llm, ids, 512, 256);
  llm.dispose();
  // Decode speed: one sequence, 16 prompt tokens, 128 new ones, on an engine that gathers no logits.
  const decode = timed ? await decodeSpeed(ckpt, ids) : null;
  return {
    qformat,
    kvCacheDtype: kv,
    quantAlgo: cfg.quantization.quant_algo,
    perplexity: ppl.perplexity,
    tokensScored: ppl.tokensScored,
    checkpointMiB: dirBytes(ckpt) / 2 ** 20,
    decodeTokensPerSecond: decode,
    quantizeSeconds,
  };
}

if (args.case) {
  // One case a process: V8 tunes the shared kernels to one engine's array types and would slow the next.
  const [q, kv] = args.case.split(":") as [QFormat, string];
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-quant-table-"));
  try {
    const tok = TextTokenizer.load(MODEL);
    const ids = tok.encode(fs.readFileSync(path.join(MODEL, "heldout.txt"), "utf8")).slice(0, Number(args.max_tokens));
    const row = await measure(q, kv === "" ? null : (kv as KvCacheDtype), ids, work, JOBS === 1);
    process.stdout.write(`${JSON.stringify(row)}\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
} else {
  /** One case in a process of its own; its row. */
  const runCase = ([q, kv]: (typeof CASES)[number]) =>
    new Promise<Row>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [
          process.argv[1],
          ...["--case", `${q}:${kv ?? ""}`, "--max_tokens", args.max_tokens ?? "4000"],
          ...["--backend", BACKEND, "--jobs", String(JOBS)],
        ],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
      });
      child.on("close", (status) => {
        if (status !== 0) return reject(new Error(`${q} ${kv}: exit ${status}`));
        const r: Row = JSON.parse(out.trim().split("\n").at(-1) ?? "");
        const speed = r.decodeTokensPerSecond === null ? "" : `, ${r.decodeTokensPerSecond.toFixed(1)} tok/s`;
        console.error(`${q}${kv ? ` + kv ${kv}` : ""}: ppl ${r.perplexity.toFixed(3)}${speed}`);
        resolve(r);
      });
    });
  const rows: Row[] = new Array(CASES.length);
  let next = 0;
  const worker = async () => {
    while (next < CASES.length) {
      const i = next++;
      rows[i] = await runCase(CASES[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(JOBS, CASES.length) }, worker));
  const base = rows[0].perplexity;
  const machine =
    BACKEND === "cuda"
      ? `${(await import("../src/backends/cuda/driver.js")).CudaDevice.open().name}, Node ${process.version}`
      : `${os.cpus().length} × ${os.cpus()[0]?.model ?? "cpu"}, Node ${process.version}`;
  const lines = [
    `| qformat | KV cache | quant_algo | perplexity | vs full precision | checkpoint | ${BACKEND} decode (batch 1) |`,
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...rows.map(
      (r) =>
        `| ${r.qformat} | ${r.kvCacheDtype ?? "model dtype"} | ${r.quantAlgo ?? "—"} | ${r.perplexity.toFixed(3)} | ${(((r.perplexity - base) / base) * 100).toFixed(2)}% | ${r.checkpointMiB.toFixed(1)} MiB | ${r.decodeTokensPerSecond === null ? "—" : `${r.decodeTokensPerSecond.toFixed(1)} tokens/s`} |`,
    ),
  ];
  const md = [
    "# kiln quantize on the demo model",
    "",
    `Held-out Brown text (\`models/demo/heldout.txt\`), the first ${rows[0].tokensScored + 1} tokens, windows of 512 every 256; float32 checkpoints (what stays unquantized is float32); calibration on 64 Brown texts; ${BACKEND} backend on ${machine}, each case in its own process${JOBS > 1 ? ` (${JOBS} at once: no decode timing)` : ""}. Written by \`node dist/bench/quant-table.js\`.`,
    "",
    ...lines,
    "",
  ].join("\n");
  fs.writeFileSync(`${args.out}.json`, `${JSON.stringify({ machine, rows }, null, 2)}\n`);
  fs.writeFileSync(`${args.out}.md`, md);
  console.log(md);
}
