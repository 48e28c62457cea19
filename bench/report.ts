// Turns bench/results/*.json into bench/results/README.md (a table against the targets) and
// bench/results/chart.svg (decode throughput, kiln vs transformers). Runs anywhere: it only reads JSON.
//
// node dist/bench/report.js [--dir bench/results]

import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({ options: { dir: { type: "string" } } });
const dir = args.dir ?? "bench/results";
const r = JSON.parse(fs.readFileSync(path.join(dir, "cuda-bf16.json"), "utf8")) as Record<string, number | string>;
const num = (k: string) => (typeof r[k] === "number" ? (r[k] as number) : Number.NaN);
const fmt = (v: number, digits = 0) =>
  Number.isFinite(v) ? v.toLocaleString("en-US", { maximumFractionDigits: digits }) : "—";

const rows: [string, string, string][] = [
  [
    "batch-1 decode (input 128, output 128)",
    `${fmt(num("batch1_decode_tokens_per_s"))} tokens/s`,
    "≥ 1,500 tokens/s (roofline ~3,000)",
  ],
  [
    "GPU time per batch-1 decode step (graph replay, events)",
    `${fmt(num("batch1_gpu_ms_per_step"), 3)} ms`,
    "≈ 0.33 ms (0.99 GB at 3.0 TB/s)",
  ],
  ["time to first token, input 1024", `${fmt(num("ttft_input_1024_ms"), 1)} ms`, ""],
  ["context throughput, 8 × 1024", `${fmt(num("context_tokens_per_s_8x1024"))} tokens/s`, ""],
  [
    `nano-vllm workload (${r.nanovllm_sequences} sequences, in/out uniform in [100, 1024], seed 0)`,
    `${fmt(num("nanovllm_output_tokens_per_s"))} output tokens/s`,
    "≥ 20,000 tokens/s",
  ],
  ["GPU memory taken by the engine (weights, activations, KV pool)", `${fmt(num("gpu_memory_used_gib"), 1)} GiB`, ""],
  [
    "transformers 5 (bf16, eager generate) batch-1 decode, same GPU",
    `${fmt(num("hf_batch1_decode_tokens_per_s"), 1)} tokens/s`,
    "",
  ],
  ["kiln ÷ transformers, batch-1 decode", `${fmt(num("speedup_batch1_vs_hf"), 1)}×`, "≥ 100×"],
];
const md = [
  "# kiln bench results",
  "",
  `Device: ${r.device}. Model: ${r.model}. Written by \`node dist/bench/bench.js --hf hf.json\` after`,
  "`python3 scripts/bench_hf.py` in the same run on the GPU machine; this page by `node dist/bench/report.js`.",
  "",
  "| measure | kiln (cuda, bf16) | target |",
  "| --- | --- | --- |",
  ...rows.map(([a, b, c]) => `| ${a} | ${b} | ${c} |`),
  "",
  "![batch-1 decode throughput](chart.svg)",
  "",
  ...(fs.existsSync(path.join(dir, "cuda-bf16-h100.json"))
    ? [
        "The previous run, on an H100 before GPU sampling and split attention landed: [cuda-bf16-h100.json](cuda-bf16-h100.json)",
        "(batch-1 decode 672 tokens/s, 1.32 ms a step; nano-vllm workload 10,368 tokens/s; transformers 10.8 tokens/s).",
        "",
      ]
    : []),
  "Per-kernel GPU times of one batch-1 decode step (Nsight Compute, kernels run one by one with cold caches):",
  "[ncu-decode-batch1.txt](ncu-decode-batch1.txt).",
  "",
].join("\n");
fs.writeFileSync(path.join(dir, "README.md"), md);

// A plain bar chart, log scale: the two decode rates side by side.
const bars: [string, number][] = [
  ["transformers (eager)", num("hf_batch1_decode_tokens_per_s")],
  ["kiln cuda", num("batch1_decode_tokens_per_s")],
  ["target", 1500],
  ["roofline", 3000],
];
const width = 560;
const barH = 34;
const left = 170;
const max = Math.log10(5000);
const scale = (v: number) => (Number.isFinite(v) && v > 1 ? (Math.log10(v) / max) * (width - left - 80) : 0);
const svg = [
  `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${bars.length * barH + 50}" font-family="sans-serif" font-size="13">`,
  `<text x="10" y="20" font-weight="bold">batch-1 decode, tokens/s (log scale), ${r.device}</text>`,
  ...bars.map(([label, v], i) => {
    const y = 34 + i * barH;
    const w = scale(v);
    return `<text x="10" y="${y + 18}">${label}</text><rect x="${left}" y="${y + 4}" width="${w.toFixed(1)}" height="${barH - 12}" fill="${i === 1 ? "#d35400" : "#7f8c8d"}"/><text x="${left + w + 6}" y="${y + 18}">${fmt(v)}</text>`;
  }),
  "</svg>",
].join("\n");
fs.writeFileSync(path.join(dir, "chart.svg"), svg);
console.log(md);
