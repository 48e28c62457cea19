// kiln bench on the GPU machine: a random-weight model of Qwen2.5-0.5B-Instruct's shape through convert →
// build --backend cuda → the runtime, measuring batch-1 decode, time to first token, context throughput,
// the nano-vllm offline workload and peak GPU memory. Writes JSON (and merges a transformers baseline
// measured by scripts/bench_hf.py in the same run, when given).
//
// kiln bench --work DIR --out bench/results/cuda-bf16.json [--hf hf.json] [--quick]
// (or node dist/bench/bench.js with the same flags). With --tp_size/--pp_size the engine is split and runs one
// process per rank, a GPU each (kiln's launcher, as kiln run starts them): each rank runs the same workload,
// rank 0 times it and writes the results, with the GPU count and `nvidia-smi topo -m`. --shape 7b takes
// Qwen2.5-7B's shape instead.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { CudaDevice } from "../src/backends/cuda/driver.js";
import type { CudaExecutor } from "../src/backends/cuda/executor.js";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { launchRanks } from "../src/comm/launch.js";
import { rankEnv } from "../src/comm/rank-env.js";
import { Mapping } from "../src/mapping.js";
import type { Activations } from "../src/quantization/calibration.js";
import type { KvCacheDtype, QFormat } from "../src/quantization/quantize-plan.js";
import { LLM } from "../src/runtime/llm.js";
import { QWEN2_MOE_SMALL, QWEN25_7B, QWEN25_05B, type Qwen2Shape, writeRandomQwen2 } from "./random-model.js";

export interface BenchOptions {
  /** Where the random model, checkpoint and engine go. */
  work?: string;
  /** JSON file to write the results to. */
  out?: string;
  /** JSON of scripts/bench_hf.py's transformers baseline, measured in the same run, to merge. */
  hf?: string;
  /** 32 sequences instead of 256 in the nano-vllm workload. */
  quick?: boolean;
  /** kiln quantize's format for the bench model's linear layers; default bf16. */
  qformat?: QFormat;
  /** A quantized KV cache; default bf16. */
  kvCacheDtype?: KvCacheDtype;
  /** The Qwen2-MoE-shaped model (QWEN2_MOE_SMALL) instead of Qwen2.5-0.5B's. */
  moe?: boolean;
  /** Qwen2.5-7B's shape instead of Qwen2.5-0.5B's. */
  shape?: "0.5b" | "7b";
  /** Split the engine for tensor and pipeline parallelism: one process per rank, a GPU each. */
  tpSize?: number;
  ppSize?: number;
}

/** What `nvidia-smi topo -m` says of how this machine's GPUs connect (or why it cannot say). */
function gpuTopology(): string {
  try {
    return execFileSync("nvidia-smi", ["topo", "-m"], { encoding: "utf8" }).trim();
  } catch (e) {
    return `unavailable (${(e as Error).message.split("\n")[0]})`;
  }
}

/**
 * Activation statistics for quantizing the random bench model without a calibration run (random weights
 * make calibrated statistics meaningless, and AWQ's search in TypeScript over a 0.5B model takes long):
 * every linear input channel's range 4, every layer's KV range 8, and AWQ with unit scales and no clipping
 * instead of its searches. What the bench measures, speed, does not depend on them.
 */
export function standInActivations(s: Qwen2Shape): Activations {
  const linearInputAmax = new Map<string, Float32Array>();
  const linearOutputAmax = new Map<string, number>();
  const inputs: [string, number][] = [
    ["attention.qkv", s.hidden],
    ["attention.dense", s.hidden],
    ["mlp.fc", s.hidden],
    ["mlp.gate", s.hidden],
    ["mlp.proj", s.inter],
  ];
  for (let l = 0; l < s.layers; l++) {
    for (const [m, inDim] of inputs) {
      const name = `transformer.layers.${l}.${m}.weight`;
      linearInputAmax.set(name, new Float32Array(inDim).fill(4));
      linearOutputAmax.set(name, 4);
    }
  }
  return {
    linearInputs: new Map(),
    linearInputAmax,
    linearOutputAmax,
    kvAmax: new Float32Array(s.layers).fill(8),
    standIn: true,
  };
}

let rng = 0;
const rand = () => {
  rng = (Math.imul(rng, 1664525) + 1013904223) >>> 0;
  return rng / 2 ** 32;
};
const randomIds = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * 150000));

function run(llm: LLM, prompts: number[][], maxNew: number | number[]): { seconds: number; outputTokens: number } {
  const t0 = performance.now();
  const requests = prompts.map((p, i) =>
    llm.submit(p, { maxNewTokens: Array.isArray(maxNew) ? maxNew[i] : maxNew, endId: null }),
  );
  while (llm.hasWork) llm.step();
  const seconds = (performance.now() - t0) / 1000;
  const outputTokens = requests.reduce((n, r) => n + llm.result(r).outputIds.length, 0);
  return { seconds, outputTokens };
}

export async function runBench(args: BenchOptions): Promise<Record<string, number | string> | null> {
  const work = args.work ?? "/tmp/kiln-bench";
  const shape = args.moe ? QWEN2_MOE_SMALL : args.shape === "7b" ? QWEN25_7B : QWEN25_05B;
  const mapping = new Mapping({ tpSize: args.tpSize ?? 1, ppSize: args.ppSize ?? 1 });
  const layout = mapping.worldSize > 1 ? `-tp${mapping.tpSize}-pp${mapping.ppSize}` : "";
  const hfDir = path.join(work, args.moe ? "hf-moe" : args.shape === "7b" ? "hf-7b" : "hf");
  const ckpt = path.join(work, `ckpt${layout}`);
  const engine = path.join(work, `engine${layout}`);
  const rank = rankEnv();
  if (rank === null) {
    await prepareEngine(args, shape, mapping, hfDir, ckpt, engine);
    // A split engine: this process becomes the launcher of one process per rank, each running this command.
    if (mapping.worldSize > 1) {
      const code = await launchRanks(mapping.worldSize);
      if (code !== 0) throw new Error(`bench ranks failed (exit code ${code})`);
      return null;
    }
  }
  return measure(args, shape, mapping, engine, rank?.localRank ?? 0);
}

/** The random model, its checkpoint (split by `mapping`) and the cuda engine, built for the bench's limits. */
async function prepareEngine(
  args: BenchOptions,
  shape: Qwen2Shape,
  mapping: Mapping,
  hfDir: string,
  ckpt: string,
  engine: string,
): Promise<void> {
  if (!fs.existsSync(path.join(hfDir, "model.safetensors"))) writeRandomQwen2(hfDir, shape);
  const quantized = (args.qformat && args.qformat !== "full_prec") || args.kvCacheDtype;
  await convertHfCheckpoint({
    modelDir: hfDir,
    outputDir: ckpt,
    dtype: "bfloat16",
    overwrite: true,
    mapping,
    ...(quantized && {
      quantize: {
        qformat: args.qformat ?? "full_prec",
        kvCacheDtype: args.kvCacheDtype,
        awqBlockSize: 128,
        quantizeLmHead: false,
        calibSize: 1,
      },
      activations: standInActivations(shape),
    }),
  });
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: engine,
    backend: "cuda",
    overwrite: true,
    request: { max_batch_size: 256, max_seq_len: 2304, max_input_len: 1024, max_num_tokens: 8192 },
  });
}

/**
 * The bench's workload on `engine`, by every rank alike; rank 0's timings are the results (null on the other
 * ranks). GPU memory is the local GPU's (`gpu`): each rank's share on a split engine.
 */
async function measure(
  args: BenchOptions,
  shape: Qwen2Shape,
  mapping: Mapping,
  engine: string,
  gpu: number,
): Promise<Record<string, number | string> | null> {
  const device = CudaDevice.open(gpu % CudaDevice.count());
  const before = device.memInfo();
  const llm = await LLM.load(engine);
  const leader = llm.engine.comm.rank === 0;
  const shapeName = args.moe
    ? "Qwen2-MoE design at Qwen2.5-0.5B's size (60 experts, top 4, shared expert)"
    : shape === QWEN25_7B
      ? "Qwen2.5-7B shape"
      : "Qwen2.5-0.5B shape";
  const results: Record<string, number | string> = {
    device: device.name,
    // The commit measured, where the caller says (bench/gpu-session.sh reads it from .device/commit).
    ...(process.env.KILN_COMMIT && { kiln_commit: process.env.KILN_COMMIT }),
    model: `${shapeName}, random bf16 weights${args.qformat ? `, ${args.qformat}` : ""}${args.kvCacheDtype ? `, ${args.kvCacheDtype} KV cache` : ""}`,
    ...(mapping.worldSize > 1 && {
      tp_size: mapping.tpSize,
      pp_size: mapping.ppSize,
      gpus: CudaDevice.count(),
      topology: leader ? gpuTopology() : "",
    }),
  };

  // Batch-1 decode, input 128, output 128: decode steps only (the first token is the prefill's).
  run(llm, [randomIds(128)], 8); // warm-up: kernels, graphs for bucket 1
  const single = llm.submit(randomIds(128), { maxNewTokens: 128, endId: null });
  llm.step();
  const t0 = performance.now();
  while (llm.hasWork) llm.step();
  const decodeSeconds = (performance.now() - t0) / 1000;
  results.batch1_decode_tokens_per_s = (llm.result(single).outputIds.length - 1) / decodeSeconds;
  const executor = llm.engine.executor as CudaExecutor;
  results.batch1_graph_replays = executor.replays;
  results.batch1_eager_steps = executor.eagerSteps;
  // The same step replayed back to back: what the GPU takes, without the host's share.
  results.batch1_gpu_ms_per_step = executor.timeGraph(1, 200) ?? Number.NaN;

  const ttft = run(llm, [randomIds(1024)], 1);
  results.ttft_input_1024_ms = ttft.seconds * 1000;
  const ctx = run(
    llm,
    Array.from({ length: 8 }, () => randomIds(1024)),
    1,
  );
  results.context_tokens_per_s_8x1024 = (8 * 1024) / ctx.seconds;

  // nano-vllm's offline workload: 256 sequences, input and output lengths uniform in [100, 1024], seed 0.
  rng = 0;
  const n = args.quick ? 32 : 256;
  const inLens = Array.from({ length: n }, () => 100 + Math.floor(rand() * 925));
  const outLens = Array.from({ length: n }, () => 100 + Math.floor(rand() * 925));
  const prompts = inLens.map((l) => randomIds(l));
  const wl = run(llm, prompts, outLens);
  results.nanovllm_sequences = n;
  results.nanovllm_output_tokens = wl.outputTokens;
  results.nanovllm_seconds = wl.seconds;
  results.nanovllm_output_tokens_per_s = wl.outputTokens / wl.seconds;
  const after = device.memInfo();
  results.gpu_memory_used_gib = (before.free - after.free) / 2 ** 30;
  results.preemptions = llm.numPreemptions;
  if (args.hf && fs.existsSync(args.hf)) Object.assign(results, JSON.parse(fs.readFileSync(args.hf, "utf8")));
  if (typeof results.hf_batch1_decode_tokens_per_s === "number") {
    results.speedup_batch1_vs_hf =
      (results.batch1_decode_tokens_per_s as number) / results.hf_batch1_decode_tokens_per_s;
  }
  llm.dispose();
  if (!leader) return null;
  console.log(JSON.stringify(results, null, 2));
  if (args.out) fs.writeFileSync(args.out, `${JSON.stringify(results, null, 2)}\n`);
  return results;
}

// Run directly (node dist/bench/bench.js …) as well as through `kiln bench`.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      work: { type: "string" },
      out: { type: "string" },
      hf: { type: "string" },
      quick: { type: "boolean" },
      qformat: { type: "string" },
      kv_cache_dtype: { type: "string" },
      moe: { type: "boolean" },
      shape: { type: "string" },
      tp_size: { type: "string" },
      pp_size: { type: "string" },
    },
  });
  const { kv_cache_dtype, tp_size, pp_size, shape, ...rest } = values;
  if (shape !== undefined && shape !== "0.5b" && shape !== "7b") throw new Error(`--shape ${shape}: 0.5b or 7b`);
  await runBench({
    ...rest,
    shape,
    tpSize: tp_size === undefined ? undefined : Number(tp_size),
    ppSize: pp_size === undefined ? undefined : Number(pp_size),
    qformat: values.qformat as BenchOptions["qformat"],
    kvCacheDtype: kv_cache_dtype as BenchOptions["kvCacheDtype"],
  });
}
