// Opens an engine dir: checks its config and rank file were built for this backend, reads each weight
// section once into the backend, and returns a model ready to step.

import fs from "node:fs";
import path from "node:path";
import type { Backend } from "../backends/backend.js";
import { CpuBackend, type CpuTensor, cpuTensor } from "../backends/cpu/cpu-backend.js";
import type { EngineConfig } from "../builder/build-engine.js";
import { CPU_TARGET } from "../builder/build-engine.js";
import { EngineFile } from "../builder/engine-file.js";
import { readJson } from "../checkpoint/convert-hf.js";
import { parsePretrainedConfig } from "../checkpoint/pretrained-config.js";
import { SOLO } from "../comm/communicator.js";
import { joinWorld, rankEnv } from "../comm/rank-env.js";
import { ConfigError, EngineError } from "../errors.js";
import { Mapping } from "../mapping.js";
import { DecoderModel, type ParallelContext } from "../models/decoder.js";
import { companionName, scaleName } from "../quantization/mode.js";
import { type SqVariant, sqVariantOf } from "../quantization/smoothquant.js";
import type { StepExecutor } from "./model-runner.js";

export interface LoadedEngine {
  dir: string;
  config: EngineConfig;
  // biome-ignore lint/suspicious/noExplicitAny: the runtime never looks inside a backend's tensors
  backend: Backend<any>;
  // biome-ignore lint/suspicious/noExplicitAny: as above
  model: DecoderModel<any>;
  executor: StepExecutor;
}

/** Runs each step eagerly through the model; the cpu backend's executor. */
export function eagerExecutor<T>(backend: Backend<T>, model: DecoderModel<T>, vocab: number): StepExecutor {
  return {
    dispose: () => backend.dispose(),
    logits: (step) => backend.toHost(model.forward(step)),
    greedy: (step) => backend.greedy(model.forward(step), vocab),
  };
}

export function readEngineConfig(dir: string): EngineConfig {
  const where = path.join(dir, "config.json");
  if (!fs.existsSync(where)) throw new ConfigError(`${where}: missing; is ${dir} an engine dir made by kiln build?`);
  const raw = readJson(where) as Partial<EngineConfig>;
  if (typeof raw !== "object" || raw === null || !raw.build_config || !raw.pretrained_config) {
    throw new ConfigError(`${where}: not an engine config (expected pretrained_config and build_config)`);
  }
  if (raw.backend !== "cpu" && raw.backend !== "cuda") {
    throw new ConfigError(`${where}: unknown backend ${JSON.stringify(raw.backend)}`);
  }
  const pretrained = parsePretrainedConfig(raw.pretrained_config, `${where} (pretrained_config)`);
  return { ...(raw as EngineConfig), pretrained_config: pretrained };
}

/**
 * This process's place among the engine's ranks: alone for a single-rank engine, else the rank kiln run's
 * launcher or mpirun started it as, joined to the others.
 */
function parallelContext(dir: string, config: EngineConfig): ParallelContext {
  const mapping = Mapping.fromConfig(config.pretrained_config.mapping, path.join(dir, "config.json"));
  const env = rankEnv();
  if (mapping.worldSize === 1 && (env === null || env.worldSize === 1)) return { mapping, rank: 0, comm: SOLO };
  if (env === null) {
    throw new ConfigError(
      `${dir} was built for world_size ${mapping.worldSize} (tp_size ${mapping.tpSize} × pp_size ${mapping.ppSize} × cp_size ${mapping.cpSize}): run it with kiln run, which starts one process per rank, or under mpirun -n ${mapping.worldSize} (kiln serve and kiln eval take single-rank engines)`,
    );
  }
  return { mapping, rank: env.rank, comm: joinWorld(env, mapping.worldSize, dir) };
}

export async function loadEngine(dir: string): Promise<LoadedEngine> {
  const config = readEngineConfig(dir);
  const parallel = parallelContext(dir, config);
  if (config.backend === "cuda") {
    // Imported only here, so cpu users never load koffi or look for CUDA libraries.
    const { loadCudaBackend } = await import("../backends/cuda/load.js");
    const { CudaExecutor } = await import("../backends/cuda/executor.js");
    const backend = loadCudaBackend(path.join(dir, "rank0.engine"), config);
    const model = new DecoderModel(config.pretrained_config, backend);
    return {
      dir,
      config,
      backend,
      model,
      executor: new CudaExecutor(backend, model, config.pretrained_config.vocab_size),
    };
  }
  const file = EngineFile.open(path.join(dir, `rank${parallel.rank}.engine`), {
    backend: "cpu",
    target: CPU_TARGET,
  });
  const weights = new Map<string, CpuTensor>();
  try {
    const quantized = new Map<string, { q: Int8Array; shape: number[] }>();
    for (const s of file.header.sections) {
      if (s.dtype === "I8" || s.dtype === "U8") {
        const bytes = file.read(s.name);
        quantized.set(s.name, { q: new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), shape: s.shape });
        continue;
      }
      if (s.dtype !== "F32") {
        throw new EngineError(
          `${file.path}: section "${s.name}" is ${s.dtype}; cpu engines hold F32 (and I8 quantized weights)`,
        );
      }
      const bytes = file.read(s.name);
      const data = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      const [rows, cols] =
        s.shape.length === 1 ? [1, s.shape[0]] : [s.shape[0], s.shape.slice(1).reduce((a, b) => a * b, 1)];
      weights.set(s.name, cpuTensor(rows, cols, data));
    }
    // Weight-only layers: [in, out] int8 (or [in, out/2] int4 pairs) with their per-output-channel scales.
    const groupSize = config.pretrained_config.quantization.group_size;
    const sq = sqVariantOf(config.pretrained_config.quantization.quant_algo);
    for (const [name, { q, shape }] of quantized) {
      if (sq) {
        weights.set(name, smoothQuantWeight(weights, name, q, shape, sq, file.path));
        continue;
      }
      const groupScales = weights.get(companionName(name, "weights_scaling_factor"));
      const zeros = weights.get(companionName(name, "zero"));
      if (groupScales && zeros) {
        weights.set(name, {
          data: new Float32Array(0),
          rows: groupScales.cols,
          cols: shape[0],
          groupQuant: { q, scales: groupScales.data, zeros: zeros.data, groupSize },
        });
        continue;
      }
      const scales = weights.get(scaleName(name));
      if (!scales) throw new EngineError(`${file.path}: quantized "${name}" has no "${scaleName(name)}"`);
      const out = scales.cols;
      const bits = shape[1] === out ? 8 : 4;
      weights.set(name, {
        data: new Float32Array(0),
        rows: out,
        cols: shape[0],
        quant: { bits, q, scales: scales.data },
      });
    }
  } finally {
    file.close();
  }
  const m = config.pretrained_config;
  const numLayers = parallel.mapping.ppLayers(
    m.num_hidden_layers,
    parallel.mapping.coords(parallel.rank).ppRank,
  ).length;
  const kvScales =
    m.quantization.kv_cache_quant_algo === "INT8"
      ? Float32Array.from({ length: numLayers }, (_, l) => {
          const name = `transformer.layers.${l}.attention.kv_cache_scaling_factor`;
          const s = weights.get(name);
          if (!s || !(s.data[0] > 0)) throw new EngineError(`${file.path}: INT8 KV cache needs a positive "${name}"`);
          return s.data[0];
        })
      : null;
  const backend = new CpuBackend(weights, kvScales);
  const model = new DecoderModel(config.pretrained_config, backend, parallel);
  return { dir, config, backend, model, executor: eagerExecutor(backend, model, config.pretrained_config.vocab_size) };
}

/** A SmoothQuant linear from its engine sections: where its activation scale lives depends on the layer. */
function smoothQuantWeight(
  weights: Map<string, CpuTensor>,
  name: string,
  q: Int8Array,
  shape: number[],
  v: SqVariant,
  where: string,
): CpuTensor {
  const lin = name.replace(/\.weight$/, "");
  const get = (n: string) => {
    const t = weights.get(n);
    if (!t) throw new EngineError(`${where}: SmoothQuant "${name}" has no "${n}"`);
    return t.data;
  };
  const [layer, kind] = /^(transformer\.layers\.\d+)\.(.+)$/.exec(lin)!.slice(1);
  const row = kind === "attention.dense" || kind === "mlp.proj";
  const scaleToInt = {
    "attention.qkv": `${layer}.input_layernorm.scale_to_int`,
    "mlp.fc": `${layer}.post_layernorm.scale_to_int`,
    "mlp.gate": `${layer}.post_layernorm.scale_to_int`,
    "attention.dense": `${layer}.attention.quantization_scaling_factor`,
    "mlp.proj": `${layer}.mlp.quantization_scaling_factor`,
  }[kind];
  if (!scaleToInt) throw new EngineError(`${where}: "${name}" is not a layer SmoothQuant covers`);
  return {
    data: new Float32Array(0),
    rows: shape[0],
    cols: shape[1],
    smoothQuant: {
      q,
      perChannelScale: get(`${lin}.per_channel_scale`),
      staticScales: v.perToken ? null : { scaleToInt: get(scaleToInt)[0], actScale: get(`${lin}.act_scale`)[0] },
      smoother: row ? get(`${lin}.smoother`) : null,
    },
  };
}
