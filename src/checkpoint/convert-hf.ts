// kiln convert: a Hugging Face model dir → a unified checkpoint (config.json + rank0.safetensors) with
// TensorRT-LLM's names. Streams: one output tensor (and its sources) in memory at a time.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CheckpointError, ConfigError, UsageError } from "../errors.js";
import { Mapping } from "../mapping.js";
import { familyOf } from "../models/families.js";
import type { HfConfig } from "../models/hf-decoder.js";
import { moeOf, validateMoeSplit } from "../models/moe.js";
import { type Activations, calibrationTexts, captureActivations } from "../quantization/calibration.js";
import { E4M3_MAX } from "../quantization/fp8.js";
import { layerQuant, linearModules } from "../quantization/layer-plan.js";
import { gptqQuantizer, weightOnlyQuantizer } from "../quantization/layer-quantizer.js";
import { isWeightOnlyLayer } from "../quantization/mode.js";
import { isModelOptAlgo } from "../quantization/modelopt-formats.js";
import {
  layerQuantizers,
  planQuantization,
  type QuantizeOptions,
  writeCheckpointConfig,
} from "../quantization/quantize-plan.js";
import { sqAlgo } from "../quantization/smoothquant.js";
import { type SqTensor, sliceSqForRank, smoothQuantTensors } from "../quantization/smoothquant-checkpoint.js";
import { concatBytes } from "../util/bytes.js";
import { writeOutputDir } from "../util/output-dir.js";
import { progress } from "../util/progress.js";
import { decodeToFloat32, dtypeByteSize, dtypeFromName, encodeFromFloat32 } from "./dtype.js";
import type { ModelDtype, PretrainedConfig } from "./pretrained-config.js";
import { type RankTensor, rankTensors } from "./rank-split.js";
import { SafetensorsFile, SafetensorsWriter } from "./safetensors.js";
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
  /** The parallel layout to split for (default: one rank). */
  mapping?: Mapping;
  /** Weight-only per-channel quantization of the linear layers (W8A16 / W4A16). */
  weightOnlyBits?: 4 | 8;
  /** GPTQ int4 with group scales and zeros (W4A16_GPTQ), calibrated on these texts. */
  gptq?: { groupSize: number; calibDataset?: string; calibSize: number };
  /** SmoothQuant W8A8 (TensorRT-LLM's W8A8_SQ_*_PLUGIN formats), calibrated on these texts. */
  smoothquant?: {
    alpha: number;
    perToken: boolean;
    perChannel: boolean;
    calibDataset?: string;
    calibSize: number;
    /** false: the same int8 formats with no smoothing, the plain W8A8 baseline SmoothQuant is measured against. */
    smooth?: boolean;
  };
  /** INT8 KV cache: one calibrated scale per layer, max |qkv output| / 127 (TensorRT-LLM's converter). */
  int8KvCache?: { calibDataset?: string; calibSize: number };
  /** kiln quantize: a qformat for every linear layer, or quant_cfg.json's table, and a KV cache dtype. */
  quantize?: QuantizeOptions;
  /**
   * Activation statistics to quantize with instead of a calibration run: kiln bench's random weights, whose
   * statistics mean nothing and whose calibration would cost minutes. Not with SmoothQuant or GPTQ.
   */
  activations?: Activations;
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

/** The bytes of one rank tensor in `target` dtype, reading only the rows (and columns) it takes. */
function tensorBytes(store: TensorStore, t: RankTensor, target: "F32" | "F16" | "BF16", where: string): Uint8Array {
  // Parts are rows of the last dimension laid end to end (a 3-D MoE tensor stacks its experts' rows).
  const rowElems = t.shape.length === 1 ? 1 : t.shape[t.shape.length - 1];
  const chunks = t.parts.map((p) => {
    if ("zeroRows" in p) return new Uint8Array(p.zeroRows * rowElems * dtypeByteSize(target));
    if (!store.has(p.source))
      throw new CheckpointError(`${where}: tensor "${p.source}" is missing (needed for ${t.name})`);
    const info = store.info(p.source);
    const cols = info.shape.slice(1).reduce((a, b) => a * b, 1);
    const [a, b] = p.rows;
    const wantCols = p.cols ? p.cols[1] - p.cols[0] : rowElems;
    if ((info.shape[0] ?? 1) < b || (p.cols ? cols < p.cols[1] : cols !== rowElems) || wantCols !== rowElems) {
      throw new CheckpointError(
        `${where}: tensor "${p.source}" has shape [${info.shape}], which does not fit ${t.name} [${t.shape}]`,
      );
    }
    const raw = info.shape.length === 0 ? store.readBytes(p.source) : store.readRows(p.source, a, b);
    if (!p.cols && info.dtype === target) return raw; // a plain slice: bytes as they are
    let values = decodeToFloat32(raw, info.dtype);
    if (p.cols) {
      const [c0, c1] = p.cols;
      const picked = new Float32Array((b - a) * (c1 - c0));
      for (let r = 0; r < b - a; r++) picked.set(values.subarray(r * cols + c0, r * cols + c1), r * (c1 - c0));
      values = picked;
    }
    return target === "F32"
      ? new Uint8Array(values.buffer, values.byteOffset, values.byteLength)
      : encodeFromFloat32(values, target);
  });
  return concatBytes(chunks);
}

export async function convertHfCheckpoint(opts: ConvertOptions): Promise<PretrainedConfig> {
  const cfg = unifiedConfigFromHf(opts.modelDir, opts.dtype);
  const mapping = opts.mapping ?? new Mapping();
  mapping.validateFor(cfg);
  validateMoeSplit(cfg, mapping);
  cfg.mapping = mapping.toConfig();
  if (
    moeOf(cfg) &&
    (opts.gptq ||
      opts.smoothquant ||
      (opts.quantize && !["int8_wo", "int4_wo", "full_prec"].includes(opts.quantize.qformat)) ||
      opts.quantize?.quantCfg)
  ) {
    throw new UsageError(
      `${opts.modelDir}: a mixture-of-experts model quantizes weight-only (int8/int4, --qformat int8_wo/int4_wo) in this kiln`,
    );
  }
  if (opts.quantize) {
    if (opts.gptq || opts.weightOnlyBits || opts.smoothquant || opts.int8KvCache)
      throw new UsageError("kiln quantize takes its formats from --qformat and --quant_cfg alone");
    planQuantization(cfg, opts.quantize);
  }
  if (opts.gptq && opts.weightOnlyBits)
    throw new UsageError("give one weight-only precision, not both int4_gptq and int8/int4");
  const sq = opts.smoothquant;
  if (sq) {
    if (!(sq.alpha >= 0 && sq.alpha <= 1)) throw new UsageError(`--smoothquant ${sq.alpha}: alpha must be in [0, 1]`);
    if (opts.gptq || opts.weightOnlyBits)
      throw new UsageError("give --smoothquant or a weight-only precision, not both");
  }
  const target = dtypeFromName(cfg.dtype);
  const modules = linearModules(cfg.num_hidden_layers);
  const modelOpt = opts.quantize ? modules.map((m) => layerQuant(cfg.quantization, m)?.quant_algo ?? null) : [];
  const needsCalibration = modelOpt.some(isModelOptAlgo) || cfg.quantization.kv_cache_quant_algo !== null;
  const awqInputs = modelOpt.some((a) => a === "W4A16_AWQ" || a === "W4A8_AWQ");
  const calibSettings = opts.gptq ?? sq ?? opts.int8KvCache ?? (needsCalibration ? opts.quantize : undefined);
  let sqTensors: Map<string, SqTensor[]> | null = null;
  if (opts.activations && (sq || opts.gptq))
    throw new UsageError("SmoothQuant and GPTQ calibrate on the model itself: give no activations for them");
  const acts = opts.activations
    ? opts.activations
    : calibSettings
      ? await calibrate(
          opts,
          calibSettings,
          opts.gptq !== undefined || awqInputs,
          sq &&
            ((ckpt, a) => {
              sqTensors = smoothQuantTensors(ckpt, cfg, a, sq.smooth === false ? null : sq.alpha, sq, target);
            }),
        )
      : null;
  if (sq) {
    cfg.quantization.quant_algo = sqAlgo(sq);
    cfg.quantization.smoothquant_val = sq.alpha;
  }
  const quantizer = opts.gptq
    ? gptqQuantizer(acts!.linearInputs, opts.gptq.groupSize)
    : opts.weightOnlyBits
      ? weightOnlyQuantizer(opts.weightOnlyBits)
      : null;
  if (quantizer) cfg.quantization.quant_algo = quantizer.algo;
  if (opts.int8KvCache) cfg.quantization.kv_cache_quant_algo = "INT8";
  const kvAlgo = cfg.quantization.kv_cache_quant_algo;
  const kvScales = kvAlgo === "INT8" || kvAlgo === "FP8" ? kvCacheScales(acts!.kvAmax, kvAlgo) : null;
  /** The quantizer of a linear layer's weight (by its single-rank name), or null to keep it in the model dtype. */
  const quantizerOf = opts.quantize
    ? layerQuantizers(cfg, acts)
    : (name: string) => (quantizer !== null && isWeightOnlyLayer(name) ? quantizer : null);
  if (opts.gptq) {
    cfg.quantization.group_size = opts.gptq.groupSize;
    cfg.quantization.has_zero_point = true;
  }
  const store = TensorStore.open(opts.modelDir);
  try {
    const ranks = Array.from({ length: mapping.numFileRanks }, (_, f) =>
      rankTensors(cfg, mapping, f, (n) => store.has(n)),
    );

    // Every source and every quantized shape is checked before anything is written: a refusal leaves no output.
    const layersOf = (f: number) => mapping.ppLayers(cfg.num_hidden_layers, Math.floor(f / mapping.tpSize));
    const kvScaleName = (local: number) => `transformer.layers.${local}.attention.kv_cache_scaling_factor`;
    // SmoothQuant replaces norms and linear weights by tensors computed up front on the full model, then sliced.
    /** A rank tensor's name in the single-rank checkpoint (its pipeline stage's layers renumbered from 0). */
    const globalName = (name: string, f: number) =>
      name.replace(/^transformer\.layers\.(\d+)\./, (_, i) => `transformer.layers.${layersOf(f)[Number(i)]}.`);
    const sqOf = (t: RankTensor, f: number): SqTensor[] | undefined => {
      const local = /^transformer\.layers\.\d+\./.exec(t.name)?.[0];
      const tensors = local ? (sqTensors as Map<string, SqTensor[]> | null)?.get(globalName(t.name, f)) : undefined;
      if (!tensors) return undefined;
      return sliceSqForRank(tensors, t, cfg).map((x) => ({
        ...x,
        name: x.name.replace(/^transformer\.layers\.\d+\./, local!),
      }));
    };
    const specs = ranks.map((tensors, f) => [
      ...tensors.flatMap(
        (t) =>
          sqOf(t, f) ??
          quantizerOf(globalName(t.name, f))?.specs(t, target) ?? [
            { name: t.name, dtype: t.dtype ?? target, shape: t.shape },
          ],
      ),
      ...(kvScales ? layersOf(f).map((_, i) => ({ name: kvScaleName(i), dtype: "F32" as const, shape: [1] })) : []),
    ]);
    for (const tensors of ranks) {
      for (const t of tensors) {
        for (const p of t.parts) {
          if ("source" in p && !store.has(p.source)) {
            throw new CheckpointError(`${opts.modelDir}: tensor "${p.source}" is missing (needed for ${t.name})`);
          }
        }
      }
    }
    return await writeOutputDir(opts.outputDir, "--output_dir", opts, async (dir) => {
      const bar = progress(
        "convert",
        ranks.reduce((n, r) => n + r.length, 0),
      );
      ranks.forEach((tensors, f) => {
        const writer = new SafetensorsWriter(path.join(dir, `rank${f}.safetensors`), specs[f]);
        const layers = layersOf(f);
        for (const t of tensors) {
          const sqt = sqOf(t, f);
          const lq = quantizerOf(globalName(t.name, f));
          if (sqt) for (const x of sqt) writer.write(x.name, x.bytes);
          else if (lq) {
            const values = decodeToFloat32(tensorBytes(store, t, "F32", opts.modelDir), "F32");
            const bytes = lq.tensors(t, values, target, globalName(t.name, f));
            lq.specs(t, target).forEach((spec, k) => {
              writer.write(spec.name, bytes[k]);
            });
          } else {
            writer.write(t.name, tensorBytes(store, t, t.dtype ?? target, opts.modelDir));
          }
          bar.tick(`rank${f} ${t.name}`);
        }
        if (kvScales) {
          layers.forEach((l, i) => {
            writer.write(kvScaleName(i), new Uint8Array(Float32Array.of(kvScales[l]).buffer));
          });
        }
        writer.close();
      });
      bar.done();
      writeCheckpointConfig(dir, cfg);
      copyTokenizerFiles(opts.modelDir, dir);
      return cfg;
    });
  } finally {
    store.close();
  }
}

/** Calibration: a float32 single-rank copy of the model run on the cpu backend (linear inputs only for GPTQ). */
async function calibrate(
  opts: ConvertOptions,
  g: { calibDataset?: string; calibSize: number },
  linearInputs: boolean,
  /** Runs while the float32 checkpoint still exists (SmoothQuant reads its full weights). */
  withCheckpoint?: (ckpt: SafetensorsFile, acts: Activations) => void,
): Promise<Activations> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-calib-ckpt-"));
  try {
    const texts = calibrationTexts(g.calibDataset, g.calibSize);
    const ckpt = path.join(tmp, "ckpt");
    await convertHfCheckpoint({ modelDir: opts.modelDir, outputDir: ckpt, dtype: "float32" });
    const acts = await captureActivations(ckpt, opts.modelDir, texts, { linearInputs, maxTokens: 512, maxRows: 4096 });
    if (withCheckpoint) {
      const file = SafetensorsFile.open(path.join(ckpt, "rank0.safetensors"));
      try {
        withCheckpoint(file, acts);
      } finally {
        file.close();
      }
    }
    return acts;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * Per layer amax / 127 (INT8: codes −127…127 span the calibrated range) or amax / 448 (FP8 E4M3's largest
 * value); a layer that saw only zeros gets 1.
 */
export function kvCacheScales(kvAmax: Float32Array, algo: "INT8" | "FP8"): Float32Array {
  const top = algo === "INT8" ? 127 : E4M3_MAX;
  return kvAmax.map((a) => (a > 0 ? a / top : 1));
}

/** Tokenizer files travel with the checkpoint and the engine, so `kiln run` needs no --tokenizer_dir. */
export function copyTokenizerFiles(from: string, to: string): void {
  for (const f of TOKENIZER_FILES) {
    const src = path.join(from, f);
    if (fs.existsSync(src)) fs.copyFileSync(src, path.join(to, f));
  }
}
