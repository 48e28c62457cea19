// kiln build: a unified checkpoint → an engine dir (config.json + one rank{N}.engine per rank) for one
// backend, with the weights already in the layout that backend's kernels read.

import fs from "node:fs";
import path from "node:path";
import { copyTokenizerFiles, readJson } from "../checkpoint/convert-hf.js";
import { dtypeByteSize, dtypeFromName } from "../checkpoint/dtype.js";
import { type PretrainedConfig, parsePretrainedConfig } from "../checkpoint/pretrained-config.js";
import { SafetensorsFile } from "../checkpoint/safetensors.js";
import { CheckpointError, ConfigError } from "../errors.js";
import { Mapping } from "../mapping.js";
import { decoderDims } from "../models/decoder.js";
import { familyOf } from "../models/families.js";
import { moeOf } from "../models/moe.js";
import type { KvCacheQuantAlgo } from "../quantization/mode.js";
import { quantMode } from "../quantization/mode.js";
import { attachQuantCfg, writeQuantCfg } from "../quantization/quantize-plan.js";
import { writeOutputDir } from "../util/output-dir.js";
import { progress } from "../util/progress.js";
import { KILN_VERSION } from "../version.js";
import { type BackendName, type BuildConfig, type BuildRequest, resolveBuildConfig } from "./build-config.js";
import { CUDA_QUANT_ALGOS, cudaWeightSections } from "./cuda-sections.js";
import { EngineWriter } from "./engine-file.js";
import { checkMemoryPlan, describeMemoryPlan, planMemory } from "./memory-plan.js";
import { bytesSection, cpuSections, type PlannedSection, sectionBytes } from "./section-plan.js";

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
  const cfg = attachQuantCfg(dir, parsePretrainedConfig(readJson(where), where));
  familyOf(cfg.architecture, where);
  const mode = quantMode(cfg.quantization.quant_algo, where);
  const kvAlgo = cfg.quantization.kv_cache_quant_algo;
  if ((mode && !mode.supported) || (kvAlgo !== null && kvAlgo !== "INT8" && kvAlgo !== "FP8")) {
    const what = cfg.quantization.quant_algo ?? `kv_cache_quant_algo ${cfg.quantization.kv_cache_quant_algo}`;
    throw new ConfigError(
      `${where}: quantization ${what} is not supported by this kiln yet (supported: W8A16, W4A16, W4A16_GPTQ, W8A8_SQ_*_PLUGIN, W8A8_SQ_PER_CHANNEL, FP8, W4A16_AWQ, W4A8_AWQ, NVFP4, MIXED_PRECISION of these, and an INT8 or FP8 KV cache)`,
    );
  }
  return cfg;
}

export async function buildEngine(opts: BuildOptions): Promise<EngineConfig> {
  const model = readCheckpointConfig(opts.checkpointDir);
  const { config: build, warnings } = resolveBuildConfig(model, opts.request);
  const q = model.quantization;
  // MIXED_PRECISION's layers are checked one by one as their sections are planned.
  const cudaRuns = [null, "MIXED_PRECISION", ...CUDA_QUANT_ALGOS].includes(q.quant_algo);
  if (opts.backend === "cuda" && !cudaRuns) {
    throw new ConfigError(
      `quant_algo ${q.quant_algo}: the cuda backend runs unquantized engines and ${CUDA_QUANT_ALGOS.join(", ")} so far; build with --backend cpu`,
    );
  }
  if (opts.backend === "cuda" && !build.remove_input_padding) {
    throw new ConfigError("--remove_input_padding disable is supported by the cpu backend only");
  }
  const mapping = Mapping.fromConfig(model.mapping, path.join(opts.checkpointDir, "config.json"));
  const moe = moeOf(model);
  if (opts.backend === "cuda" && moe) {
    // moe_route's limits (decoder.cu), and the 16-byte rows its expert GEMVs read.
    const bytes = model.dtype === "float32" ? 4 : 2;
    const rows = [model.hidden_size, moe.expertInter, ...(moe.sharedInter > 0 ? [moe.sharedInter] : [])];
    if (moe.num_experts > 256 || moe.top_k > 16 || rows.some((n) => (n * bytes) % 16 !== 0)) {
      throw new ConfigError(
        `${model.architecture}: the cuda backend runs MoE models of at most 256 experts, top_k ≤ 16, and hidden and expert sizes whose ${model.dtype} rows are multiples of 16 bytes; build with --backend cpu`,
      );
    }
  }
  const files = new Map<number, SafetensorsFile>();
  try {
    // One engine per rank; context-parallel ranks read the same rank file as their (tp, pp) position.
    const ranks = Array.from({ length: mapping.worldSize }, (_, rank) => {
      const fileRank = mapping.fileRank(rank);
      if (!files.has(fileRank)) {
        const rankFile = path.join(opts.checkpointDir, `rank${fileRank}.safetensors`);
        if (!fs.existsSync(rankFile)) {
          throw new CheckpointError(`${rankFile}: missing (expected one rank file per tp × pp position)`);
        }
        files.set(fileRank, SafetensorsFile.open(rankFile));
      }
      const file = files.get(fileRank)!;
      const dims = decoderDims(model, mapping, rank);
      const weights = opts.backend === "cpu" ? cpuSections(model, file, dims) : cudaWeightSections(model, file, dims);
      const memory = planMemory(
        model,
        dims,
        build,
        sectionBytes(weights),
        opts.backend === "cpu" ? 4 : dtypeByteSize(dtypeFromName(model.dtype)),
        // The cpu backend's INT8 or FP8 KV cache (cuda refuses one above).
        q.kv_cache_quant_algo !== null ? 1 : undefined,
      );
      checkMemoryPlan(memory, build);
      return { rank, weights, memory };
    });
    // The GPU's own target (and the kernels compiled for it) come last: a refusal above costs no compile.
    const { target, sections: code } =
      opts.backend === "cpu" ? { target: CPU_TARGET, sections: [] } : await cudaKernelSections(model);
    // Said once the build is known to go ahead, so that a refusal stays one line.
    for (const w of warnings) opts.warn?.(w);
    opts.info?.(
      `${describeMemoryPlan(ranks[0].memory)}${mapping.worldSize > 1 ? ` (rank 0 of ${mapping.worldSize})` : ""}`,
    );
    const engineConfig: EngineConfig = {
      version: KILN_VERSION,
      pretrained_config: model,
      build_config: build,
      backend: opts.backend,
      target,
    };
    return await writeOutputDir(opts.outputDir, "--output_dir", opts, (dir) => {
      const bar = progress(
        "build",
        ranks.reduce((n, r) => n + r.weights.length + code.length, 0),
      );
      for (const { rank, weights } of ranks) {
        const sections = [...weights, ...code];
        const writer = new EngineWriter(
          path.join(dir, `rank${rank}.engine`),
          { backend: opts.backend, target, rank },
          sections.map((p) => p.spec),
        );
        for (const p of sections) {
          writer.write(p.spec.name, p.make());
          bar.tick(`rank${rank} ${p.spec.name}`);
        }
        writer.close();
      }
      bar.done();
      const { quantized_layers, ...quantization } = model.quantization;
      const written = { ...engineConfig, pretrained_config: { ...model, quantization } };
      fs.writeFileSync(path.join(dir, "config.json"), `${JSON.stringify(written, null, 4)}\n`);
      if (quantized_layers) writeQuantCfg(dir, model);
      copyTokenizerFiles(opts.checkpointDir, dir);
      return engineConfig;
    });
  } finally {
    for (const f of files.values()) f.close();
  }
}

/** Kernels compiled by NVRTC for this machine's GPU (imported lazily: cpu builds never load CUDA). */
async function cudaKernelSections(model: PretrainedConfig): Promise<{ target: string; sections: PlannedSection[] }> {
  const { compileEngineKernels } = await import("../backends/cuda/engine-kernels.js");
  const { target, cubin, ptx } = compileEngineKernels(
    model.dtype,
    model.quantization.kv_cache_quant_algo as KvCacheQuantAlgo | null,
    model.head_size,
  );
  return { target, sections: [bytesSection("kernels.cubin", cubin), bytesSection("kernels.ptx", ptx)] };
}
