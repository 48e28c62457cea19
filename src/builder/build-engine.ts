// kiln build: a unified checkpoint → an engine dir (config.json + rank0.engine) for one backend, with the
// weights already in the layout that backend's kernels read.

import fs from "node:fs";
import path from "node:path";
import { copyTokenizerFiles, readJson } from "../checkpoint/convert-hf.js";
import { dtypeByteSize } from "../checkpoint/dtype.js";
import { type PretrainedConfig, parsePretrainedConfig } from "../checkpoint/pretrained-config.js";
import { SafetensorsFile } from "../checkpoint/safetensors.js";
import { CheckpointError, ConfigError } from "../errors.js";
import { decoderTensorShapes } from "../models/decoder.js";
import { familyOf } from "../models/families.js";
import { writeOutputDir } from "../util/output-dir.js";
import { progress } from "../util/progress.js";
import { KILN_VERSION } from "../version.js";
import { type BackendName, type BuildConfig, type BuildRequest, resolveBuildConfig } from "./build-config.js";
import { EngineWriter, type SectionSpec } from "./engine-file.js";
import { checkMemoryPlan, describeMemoryPlan, planMemory } from "./memory-plan.js";

export interface EngineConfig {
  version: string;
  pretrained_config: PretrainedConfig;
  build_config: BuildConfig;
  backend: BackendName;
  target: string;
}

export const CPU_TARGET = "cpu-f32";

export interface BuildOptions {
  checkpointDir: string;
  outputDir: string;
  backend: BackendName;
  request: BuildRequest;
  overwrite?: boolean;
  warn?: (msg: string) => void;
  info?: (msg: string) => void;
}

export function readCheckpointConfig(dir: string): PretrainedConfig {
  const where = path.join(dir, "config.json");
  const cfg = parsePretrainedConfig(readJson(where), where);
  familyOf(cfg.architecture, where);
  if (cfg.mapping.world_size !== 1) {
    throw new ConfigError(
      `${where}: mapping.world_size is ${cfg.mapping.world_size}; this kiln builds single-rank checkpoints only`,
    );
  }
  if (cfg.quantization.quant_algo !== null || cfg.quantization.kv_cache_quant_algo !== null) {
    throw new ConfigError(`${where}: quantization ${cfg.quantization.quant_algo} is not supported by this kiln yet`);
  }
  return cfg;
}

/** Checks every tensor the model needs is there with its shape; a shared embedding may stand in for lm_head. */
function planSections(cfg: PretrainedConfig, file: SafetensorsFile): { spec: SectionSpec; source: string }[] {
  const plan: { spec: SectionSpec; source: string }[] = [];
  for (const [name, shape] of decoderTensorShapes(cfg)) {
    let source = name;
    if (!file.has(name) && name === "lm_head.weight") source = "transformer.vocab_embedding.weight";
    if (!file.has(source)) throw new CheckpointError(`${file.path}: required tensor "${name}" is missing`);
    const got = file.info(source).shape;
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(`${file.path}: tensor "${source}" has shape [${got}], expected [${shape}]`);
    }
    plan.push({ spec: { name, dtype: "F32", shape }, source });
  }
  return plan;
}

export async function buildEngine(opts: BuildOptions): Promise<EngineConfig> {
  if (opts.backend !== "cpu") {
    throw new ConfigError(`--backend ${opts.backend}: this kiln builds cpu engines only`);
  }
  const model = readCheckpointConfig(opts.checkpointDir);
  const { config: build, warnings } = resolveBuildConfig(model, opts.request);
  const rankFile = path.join(opts.checkpointDir, "rank0.safetensors");
  if (!fs.existsSync(rankFile)) throw new CheckpointError(`${rankFile}: missing (expected one rank file per rank)`);
  const file = SafetensorsFile.open(rankFile);
  try {
    const plan = planSections(model, file);
    const weightsBytes = plan.reduce(
      (n, p) => n + p.spec.shape.reduce((a, b) => a * b, 1) * dtypeByteSize(p.spec.dtype),
      0,
    );
    const memory = planMemory(model, build, weightsBytes);
    checkMemoryPlan(memory, build);
    // Said once the build is known to go ahead, so that a refusal stays one line.
    for (const w of warnings) opts.warn?.(w);
    opts.info?.(describeMemoryPlan(memory));
    const engineConfig: EngineConfig = {
      version: KILN_VERSION,
      pretrained_config: model,
      build_config: build,
      backend: opts.backend,
      target: CPU_TARGET,
    };
    return await writeOutputDir(opts.outputDir, "--output_dir", opts, (dir) => {
      const writer = new EngineWriter(
        path.join(dir, "rank0.engine"),
        { backend: opts.backend, target: CPU_TARGET, rank: 0 },
        plan.map((p) => p.spec),
      );
      const bar = progress("build", plan.length);
      for (const p of plan) {
        // The cpu kernels read float32 rows; decode once here so loading is a plain read.
        const f32 = file.readFloat32(p.source);
        writer.write(p.spec.name, new Uint8Array(f32.buffer, f32.byteOffset, f32.length * dtypeByteSize("F32")));
        bar.tick(p.spec.name);
      }
      writer.close();
      bar.done();
      fs.writeFileSync(path.join(dir, "config.json"), `${JSON.stringify(engineConfig, null, 4)}\n`);
      copyTokenizerFiles(opts.checkpointDir, dir);
      return engineConfig;
    });
  } finally {
    file.close();
  }
}
