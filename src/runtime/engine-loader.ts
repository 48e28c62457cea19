// Opens an engine dir: checks its config and rank file were built for this backend, reads each weight
// section once into the backend, and returns a model ready to step.

import fs from "node:fs";
import path from "node:path";
import type { Backend } from "../backends/backend.js";
import { CpuBackend } from "../backends/cpu/cpu-backend.js";
import { type CpuWeights, readCpuWeights } from "../backends/cpu/cpu-weights.js";
import type { EngineConfig } from "../builder/build-engine.js";
import { CPU_TARGET } from "../builder/build-engine.js";
import { EngineFile } from "../builder/engine-file.js";
import { readJson } from "../checkpoint/convert-hf.js";
import { parsePretrainedConfig } from "../checkpoint/pretrained-config.js";
import { type Communicator, SOLO } from "../comm/communicator.js";
import { joinWorld, rankEnv } from "../comm/rank-env.js";
import { ConfigError } from "../errors.js";
import { Mapping } from "../mapping.js";
import { DecoderModel, decoderDims, type ParallelContext } from "../models/decoder.js";
import { attachQuantCfg } from "../quantization/quantize-plan.js";
import type { StepExecutor } from "./model-runner.js";

export interface LoadedEngine {
  dir: string;
  config: EngineConfig;
  // biome-ignore lint/suspicious/noExplicitAny: the runtime never looks inside a backend's tensors
  backend: Backend<any>;
  // biome-ignore lint/suspicious/noExplicitAny: as above
  model: DecoderModel<any>;
  executor: StepExecutor;
  /** How this rank reaches the engine's other ranks (SOLO for a single-rank engine). */
  comm: Communicator;
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
  const pretrained = attachQuantCfg(dir, parsePretrainedConfig(raw.pretrained_config, `${where} (pretrained_config)`));
  return { ...(raw as EngineConfig), pretrained_config: pretrained };
}

/**
 * This process's place among the engine's ranks: alone for a single-rank engine, else the rank kiln run's
 * launcher or mpirun started it as, joined to the others.
 */
function parallelContext(
  dir: string,
  config: EngineConfig,
): ParallelContext & { localRank: number; localSize: number } {
  const mapping = Mapping.fromConfig(config.pretrained_config.mapping, path.join(dir, "config.json"));
  const env = rankEnv();
  if (mapping.worldSize === 1 && (env === null || env.worldSize === 1)) {
    return { mapping, rank: 0, localRank: 0, localSize: 1, comm: SOLO };
  }
  if (env === null) {
    throw new ConfigError(
      `${dir} was built for world_size ${mapping.worldSize} (tp_size ${mapping.tpSize} × pp_size ${mapping.ppSize} × cp_size ${mapping.cpSize}): run it with kiln run, serve or eval, which start one process per rank, or under mpirun -n ${mapping.worldSize}`,
    );
  }
  const comm = joinWorld(env, mapping.worldSize, dir);
  return { mapping, rank: env.rank, localRank: env.localRank, localSize: env.localSize, comm };
}

export async function loadEngine(dir: string): Promise<LoadedEngine> {
  const config = readEngineConfig(dir);
  const parallel = parallelContext(dir, config);
  if (config.backend === "cuda") {
    // Imported only here, so cpu users never load koffi or look for CUDA libraries.
    const { loadCudaBackend } = await import("../backends/cuda/load.js");
    const { CudaExecutor } = await import("../backends/cuda/executor.js");
    const { CudaDevice } = await import("../backends/cuda/driver.js");
    const cfg = config.pretrained_config;
    const dims = decoderDims(cfg, parallel.mapping, parallel.rank);
    const { mapping, comm } = parallel;
    // One GPU per local rank; where the host has fewer GPUs than ranks, ranks share them round-robin and their
    // collectives go through the host (so their steps run eagerly: DecoderModel.graphCapturable).
    const gpus = mapping.worldSize > 1 ? CudaDevice.count() : 1;
    const gpu = parallel.localRank % gpus;
    const logitsWidth = dims.vocabRows * mapping.tpSize;
    const ranksOnGpu = Math.ceil(parallel.localSize / gpus);
    const place = { dims, logitsWidth, gpu, ranksOnGpu };
    const backend = loadCudaBackend(path.join(dir, `rank${parallel.rank}.engine`), config, place);
    if (mapping.worldSize > 1) {
      const { ncclCollectivesFor } = await import("../backends/cuda/nccl-collectives.js");
      try {
        backend.collectives = ncclCollectivesFor(backend, comm, mapping, { ranksOnHost: parallel.localSize, gpus });
      } catch (e) {
        backend.dispose();
        throw e;
      }
    }
    const model = new DecoderModel(cfg, backend, parallel);
    return {
      dir,
      config,
      backend,
      model,
      executor: new CudaExecutor(backend, model, cfg.vocab_size),
      comm,
    };
  }
  const file = EngineFile.open(path.join(dir, `rank${parallel.rank}.engine`), {
    backend: "cpu",
    target: CPU_TARGET,
  });
  let loaded: CpuWeights;
  try {
    loaded = readCpuWeights(
      file,
      config.pretrained_config,
      decoderDims(config.pretrained_config, parallel.mapping, parallel.rank),
    );
  } finally {
    file.close();
  }
  const { weights, kvCache } = loaded;
  const backend = new CpuBackend(weights, kvCache);
  const model = new DecoderModel(config.pretrained_config, backend, parallel);
  const executor = eagerExecutor(backend, model, config.pretrained_config.vocab_size);
  return { dir, config, backend, model, executor, comm: parallel.comm };
}
