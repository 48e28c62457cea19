// kiln convert: a Hugging Face model dir → a unified checkpoint (config.json + rank0.safetensors) with
// TensorRT-LLM's names. Streams: one output tensor (and its sources) in memory at a time.

import fs from "node:fs";
import path from "node:path";
import { CheckpointError, ConfigError } from "../errors.js";
import { familyOf } from "../models/families.js";
import type { HfConfig } from "../models/hf-decoder.js";
import { writeOutputDir } from "../util/output-dir.js";
import { progress } from "../util/progress.js";
import { type Dtype, dtypeFromName, encodeFromFloat32 } from "./dtype.js";
import type { ModelDtype, PretrainedConfig } from "./pretrained-config.js";
import { SafetensorsWriter } from "./safetensors.js";
import { TensorStore } from "./tensor-store.js";

export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "chat_template.jinja",
  "generation_config.json",
  "special_tokens_map.json",
] as const;

export interface ConvertOptions {
  modelDir: string;
  outputDir: string;
  /** "auto" takes the HF dtype, except float32 becomes float16, as TensorRT-LLM's converter does. */
  dtype: ModelDtype | "auto";
  overwrite?: boolean;
}

export function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

export function readHfConfig(modelDir: string): { hf: HfConfig; where: string } {
  const where = path.join(modelDir, "config.json");
  const hf = readJson(where);
  if (typeof hf !== "object" || hf === null || Array.isArray(hf))
    throw new ConfigError(`${where}: expected a JSON object`);
  return { hf: hf as HfConfig, where };
}

/** The unified config a HF model dir converts to. */
export function unifiedConfigFromHf(modelDir: string, dtype: ModelDtype | "auto"): PretrainedConfig {
  const { hf, where } = readHfConfig(modelDir);
  const arch = Array.isArray(hf.architectures) ? hf.architectures[0] : hf.architectures;
  const cfg = familyOf(arch, where).configFromHf(hf, where);
  if (dtype === "auto") cfg.dtype = cfg.dtype === "float32" ? "float16" : cfg.dtype;
  else cfg.dtype = dtype;
  return cfg;
}

function concatRows(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function convertHfCheckpoint(opts: ConvertOptions): Promise<PretrainedConfig> {
  const cfg = unifiedConfigFromHf(opts.modelDir, opts.dtype);
  const family = familyOf(cfg.architecture, path.join(opts.modelDir, "config.json"));
  const store = TensorStore.open(opts.modelDir);
  try {
    const sources = family.weightSources(cfg, (n) => store.has(n));
    const target: Dtype = dtypeFromName(cfg.dtype);
    const specs = sources.map((s) => {
      const infos = s.sources.map((src) => {
        if (!store.has(src)) {
          throw new CheckpointError(`${opts.modelDir}: tensor "${src}" is missing (needed for ${s.name})`);
        }
        return store.info(src);
      });
      const shape = [...infos[0].shape];
      for (const info of infos.slice(1)) {
        if (info.shape.length !== shape.length || info.shape.slice(1).some((d, i) => d !== shape[i + 1])) {
          throw new CheckpointError(
            `${opts.modelDir}: tensor "${info.name}" has shape [${info.shape}], which cannot be concatenated with "${infos[0].name}" [${infos[0].shape}]`,
          );
        }
        shape[0] += info.shape[0];
      }
      return { name: s.name, dtype: target, shape };
    });
    return await writeOutputDir(opts.outputDir, "--output_dir", opts, async (dir) => {
      const writer = new SafetensorsWriter(path.join(dir, "rank0.safetensors"), specs);
      const bar = progress("convert", sources.length);
      for (const s of sources) {
        const single = s.sources.length === 1 ? store.info(s.sources[0]) : null;
        // Same dtype and one source: copy the bytes, so a bf16 → bf16 convert is exact by construction.
        const bytes =
          single && single.dtype === target
            ? store.readBytes(single.name)
            : encodeFromFloat32(concatRows(s.sources.map((src) => store.readFloat32(src))), target as "F32");
        writer.write(s.name, bytes);
        bar.tick(s.name);
      }
      writer.close();
      bar.done();
      fs.writeFileSync(path.join(dir, "config.json"), `${JSON.stringify(cfg, null, 4)}\n`);
      copyTokenizerFiles(opts.modelDir, dir);
      return cfg;
    });
  } finally {
    store.close();
  }
}

/** Tokenizer files travel with the checkpoint and the engine, so `kiln run` needs no --tokenizer_dir. */
export function copyTokenizerFiles(from: string, to: string): void {
  for (const f of TOKENIZER_FILES) {
    const src = path.join(from, f);
    if (fs.existsSync(src)) fs.copyFileSync(src, path.join(to, f));
  }
}
