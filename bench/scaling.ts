// Multi-GPU scaling from kiln bench runs of one model at several layouts (bench/gpu-session.sh multi-gpu):
// each layout's batch-1 decode and nano-vllm throughput against the single-GPU run's, and the efficiency
// (speed-up over the GPUs used). Writes one JSON and a markdown table.
//
// node dist/bench/scaling.js --out bench/results/multi-gpu RUN.json…   (→ multi-gpu.json, multi-gpu.md)

import fs from "node:fs";
import { parseArgs } from "node:util";

type Run = Record<string, number | string>;

export interface ScalingRow {
  model: string;
  tp_size: number;
  pp_size: number;
  gpus_used: number;
  batch1_decode_tokens_per_s: number;
  batch1_speedup: number;
  batch1_efficiency: number;
  nanovllm_output_tokens_per_s: number;
  nanovllm_speedup: number;
  nanovllm_efficiency: number;
}

/** Each run against the single-GPU run of its model (a run without tp_size and pp_size). */
export function scaling(runs: Run[]): ScalingRow[] {
  const rows: ScalingRow[] = [];
  for (const run of runs) {
    const model = String(run.model);
    const single = runs.find((r) => r.model === model && r.tp_size === undefined && r.pp_size === undefined);
    if (!single) throw new Error(`no single-GPU run of "${model}" to compare with`);
    const tp = Number(run.tp_size ?? 1);
    const pp = Number(run.pp_size ?? 1);
    const b1 = Number(run.batch1_decode_tokens_per_s);
    const nano = Number(run.nanovllm_output_tokens_per_s);
    const b1Speedup = b1 / Number(single.batch1_decode_tokens_per_s);
    const nanoSpeedup = nano / Number(single.nanovllm_output_tokens_per_s);
    rows.push({
      model,
      tp_size: tp,
      pp_size: pp,
      gpus_used: tp * pp,
      batch1_decode_tokens_per_s: b1,
      batch1_speedup: b1Speedup,
      batch1_efficiency: b1Speedup / (tp * pp),
      nanovllm_output_tokens_per_s: nano,
      nanovllm_speedup: nanoSpeedup,
      nanovllm_efficiency: nanoSpeedup / (tp * pp),
    });
  }
  return rows;
}

export function scalingTable(rows: ScalingRow[]): string {
  const f = (x: number, d = 0) => x.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });
  const lines = [
    "| model | tp | pp | batch-1 tokens/s | × 1 GPU | efficiency | nano-vllm tokens/s | × 1 GPU | efficiency |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.model} | ${r.tp_size} | ${r.pp_size} | ${f(r.batch1_decode_tokens_per_s)} | ${f(r.batch1_speedup, 2)} | ${f(100 * r.batch1_efficiency)}% | ${f(r.nanovllm_output_tokens_per_s)} | ${f(r.nanovllm_speedup, 2)} | ${f(100 * r.nanovllm_efficiency)}% |`,
    );
  }
  return `${lines.join("\n")}\n`;
}

if (process.argv[1]?.endsWith("scaling.js")) {
  const { values, positionals } = parseArgs({ options: { out: { type: "string" } }, allowPositionals: true });
  const runs = positionals.map((f) => JSON.parse(fs.readFileSync(f, "utf8")) as Run);
  const rows = scaling(runs);
  const topology = runs.map((r) => r.topology).find((t) => typeof t === "string" && t !== "");
  const out = values.out ?? "multi-gpu";
  const json = { device: runs[0]?.device, gpus: runs.find((r) => r.gpus)?.gpus ?? 1, topology, runs, scaling: rows };
  fs.writeFileSync(`${out}.json`, `${JSON.stringify(json, null, 2)}\n`);
  fs.writeFileSync(
    `${out}.md`,
    `${scalingTable(rows)}\nGPU topology (\`nvidia-smi topo -m\`):\n\n\`\`\`\n${topology ?? "one GPU"}\n\`\`\`\n`,
  );
  process.stdout.write(scalingTable(rows));
}
