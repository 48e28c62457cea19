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
const optional = <T>(file: string): T | null =>
  fs.existsSync(path.join(dir, file)) ? (JSON.parse(fs.readFileSync(path.join(dir, file), "utf8")) as T) : null;
type Run = Record<string, number | string>;
interface OpTimes {
  kiln_commit?: string;
  copy_tb_per_s: number;
  context: number;
  ops: { op: string; us: number; roofline_us: number }[];
}
const ops = optional<OpTimes>("decode-ops-h200.json");
// The roofline of a batch-1 step: the 0.99 GB of bf16 weights at the copy bandwidth measured on the GPU.
const copyTBs = ops?.copy_tb_per_s ?? 3.0;
const rooflineMs = 0.99 / copyTBs;

const rows: [string, string, string][] = [
  [
    "batch-1 decode (input 128, output 128)",
    `${fmt(num("batch1_decode_tokens_per_s"))} tokens/s`,
    `≥ 1,500 tokens/s (roofline ~${fmt(Math.round(1000 / rooflineMs / 100) * 100)})`,
  ],
  [
    "GPU time per batch-1 decode step (graph replay, events)",
    `${fmt(num("batch1_gpu_ms_per_step"), 3)} ms`,
    `≈ ${fmt(rooflineMs, 2)} ms (0.99 GB at the ${fmt(copyTBs, 1)} TB/s copy bandwidth measured)`,
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
function previousRun(): string[] {
  const p = optional<Run>("cuda-bf16-previous.json");
  const n = (k: string) => (p && typeof p[k] === "number" ? (p[k] as number) : Number.NaN);
  return p
    ? [
        `The previous run on this GPU, before this session's kernel changes: [cuda-bf16-previous.json](cuda-bf16-previous.json) (batch-1 decode ${fmt(n("batch1_decode_tokens_per_s"))} tokens/s, ${fmt(n("batch1_gpu_ms_per_step"), 3)} ms a step; nano-vllm workload ${fmt(n("nanovllm_output_tokens_per_s"))} tokens/s; transformers ${fmt(n("hf_batch1_decode_tokens_per_s"), 1)} tokens/s). An H100 run: [cuda-bf16-h100.json](cuda-bf16-h100.json).`,
        "",
      ]
    : [];
}

function opTable(): string[] {
  if (!ops) return [];
  return [
    `## Where a batch-1 decode step goes (\`node dist/bench/decode-ops.js\`, each op alone, context ${ops.context}, commit ${ops.kiln_commit ?? "?"})`,
    "",
    "Each op over eight layers' worth of random weights (more than the L2 holds) in one CUDA graph, timed with",
    "events; the roofline is the bytes it must read at the copy bandwidth measured in the same run",
    `(${fmt(ops.copy_tb_per_s, 2)} TB/s): [decode-ops-h200.json](decode-ops-h200.json). A step is 24 × (norm_qkv_rope,`,
    "attention, dense, norm_gated_mlp, proj) + lm_head + a few small kernels. Nsight Compute's times of the",
    "step before this session's changes: [ncu-decode-batch1-h200.txt](ncu-decode-batch1-h200.txt).",
    "",
    "| op | µs | roofline µs | of roofline |",
    "| --- | --- | --- | --- |",
    ...ops.ops.map(
      (o) => `| ${o.op} | ${fmt(o.us, 2)} | ${fmt(o.roofline_us, 2)} | ${fmt((100 * o.roofline_us) / o.us)}% |`,
    ),
    "",
    ...wideAttention(),
  ];
}

/** Decode attention of a nano-vllm-sized step, on CUDA cores and on tensor cores. */
function wideAttention(): string[] {
  const [cores, tc] = ["decode-ops-wide-h200.json", "decode-ops-wide-tc-h200.json"].map((f) => optional<OpTimes>(f));
  const us = (t: OpTimes | null) => t?.ops.find((o) => o.op.startsWith("attention"))?.us ?? Number.NaN;
  if (!cores || !tc) return [];
  return [
    `A 256-row decode step at context 1000 (the nano-vllm workload's; commit ${cores.kiln_commit ?? "?"}): attention takes ${fmt(us(cores), 1)} µs a layer on CUDA cores ([decode-ops-wide-h200.json](decode-ops-wide-h200.json)) and ${fmt(us(tc), 1)} µs on tensor cores (\`attention_decode_tc\`, [decode-ops-wide-tc-h200.json](decode-ops-wide-tc-h200.json)), which such steps take since commit 3b8954a.`,
    "",
  ];
}

function quantizedTable(): string[] {
  const q = optional<Record<string, Run>>("cuda-quantized-quick.json");
  if (!q?.bf16) return [];
  const base = q.bf16;
  const rate = (x: Run, k: string) => x[k] as number;
  return [
    "## Quantized engines (`kiln bench --quick --qformat Q`, stand-in statistics, 32-sequence nano-vllm workload)",
    "",
    `[cuda-quantized-quick.json](cuda-quantized-quick.json); each row names the commit it was measured at. Speed-ups over bf16 in the same configuration. Where an int8_wo step goes, by Nsight Compute: [ncu-decode-int8wo-h200.txt](ncu-decode-int8wo-h200.txt); int4_awq's kernels' occupancy, stalls and spills: [ncu-int4awq-sections-h200.txt](ncu-int4awq-sections-h200.txt).`,
    "",
    "| qformat | batch-1 decode | × bf16 | GPU ms a step | nano-vllm (32 sequences) | × bf16 | commit |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...Object.entries(q).map(([name, x]) => {
      const d = rate(x, "batch1_decode_tokens_per_s");
      const w = rate(x, "nanovllm_output_tokens_per_s");
      return `| ${name} | ${fmt(d)} tokens/s | ${fmt(d / rate(base, "batch1_decode_tokens_per_s"), 2)}× | ${fmt(rate(x, "batch1_gpu_ms_per_step"), 3)} | ${fmt(w)} tokens/s | ${fmt(w / rate(base, "nanovllm_output_tokens_per_s"), 2)}× | ${x.kiln_commit ?? "?"} |`;
    }),
    "",
  ];
}

function moeRow(): string[] {
  const m = optional<Run>("cuda-moe.json");
  if (!m) return [];
  const n = (k: string) => m[k] as number;
  return [
    `## Mixture of experts ([cuda-moe.json](cuda-moe.json), \`kiln bench --quick --moe\`, commit ${m.kiln_commit ?? "?"})`,
    "",
    `${m.model}: batch-1 decode ${fmt(n("batch1_decode_tokens_per_s"))} tokens/s (${fmt(n("batch1_gpu_ms_per_step"), 3)} ms a step), time to first token at 1024 ${fmt(n("ttft_input_1024_ms"), 1)} ms, context ${fmt(n("context_tokens_per_s_8x1024"))} tokens/s for 8 × 1024, nano-vllm workload (32 sequences) ${fmt(n("nanovllm_output_tokens_per_s"))} tokens/s, ${fmt(n("gpu_memory_used_gib"), 1)} GiB.`,
    "",
  ];
}

const md = [
  "# kiln bench results",
  "",
  `Device: ${r.device}. Model: ${r.model}. Written by \`node dist/bench/bench.js --hf hf.json\` after`,
  "`python3 scripts/bench_hf.py` in the same run on the GPU machine; this page by `node dist/bench/report.js`.",
  ...(r.kiln_commit
    ? ["", `Measured at kiln commit ${r.kiln_commit}; later commits' changes are not in these figures.`]
    : []),
  "",
  "| measure | kiln (cuda, bf16) | target |",
  "| --- | --- | --- |",
  ...rows.map(([a, b, c]) => `| ${a} | ${b} | ${c} |`),
  "",
  "![batch-1 decode throughput](chart.svg)",
  "",
  ...previousRun(),
  ...opTable(),
  ...quantizedTable(),
  ...moeRow(),
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
