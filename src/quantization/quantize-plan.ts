// kiln quantize's recipe: TensorRT-LLM quantize.py's qformat names → the checkpoint's quantization config
// (one quant_algo, or MIXED_PRECISION from a quant_cfg.json), and the quantizer each linear layer gets.
// quant_cfg.json travels beside config.json in checkpoint and engine dirs, as TensorRT-LLM keeps it.

import fs from "node:fs";
import path from "node:path";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { UsageError } from "../errors.js";
import type { Activations } from "./calibration.js";
import { layerQuant, moduleOfWeight, readQuantCfg } from "./layer-plan.js";
import { type LayerQuantizer, weightOnlyQuantizer } from "./layer-quantizer.js";
import type { QuantAlgo } from "./mode.js";
import { isModelOptAlgo, modeloptQuantizer } from "./modelopt-formats.js";

export const QFORMATS = ["fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "full_prec", "nvfp4"] as const;
export type QFormat = (typeof QFORMATS)[number];

/** quantize.py's mapping of --qformat to TensorRT-LLM's quant_algo. */
export const QFORMAT_ALGO: Record<QFormat, QuantAlgo | null> = {
  fp8: "FP8",
  int8_sq: "W8A8_SQ_PER_CHANNEL",
  int4_awq: "W4A16_AWQ",
  w4a8_awq: "W4A8_AWQ",
  int8_wo: "W8A16",
  int4_wo: "W4A16",
  full_prec: null,
  nvfp4: "NVFP4",
};

export const KV_CACHE_DTYPES = ["int8", "fp8"] as const;
export type KvCacheDtype = (typeof KV_CACHE_DTYPES)[number];

export interface QuantizeOptions {
  qformat: QFormat;
  kvCacheDtype?: KvCacheDtype;
  /** AWQ's group of input channels. */
  awqBlockSize: number;
  /** A quant_cfg.json: per-layer algorithms (MIXED_PRECISION). */
  quantCfg?: string;
  /** Quantize lm_head too (TensorRT-LLM excludes it by default). */
  quantizeLmHead: boolean;
  calibDataset?: string;
  calibSize: number;
}

/** SmoothQuant's migration strength for int8_sq (the paper's default). */
const INT8_SQ_ALPHA = 0.5;

/** Fills `cfg.quantization` for a quantize run; refuses combinations TensorRT-LLM refuses. */
export function planQuantization(cfg: PretrainedConfig, o: QuantizeOptions): void {
  if (!(QFORMATS as readonly string[]).includes(o.qformat)) {
    throw new UsageError(`--qformat ${o.qformat}: expected one of ${QFORMATS.join(", ")}`);
  }
  if (o.awqBlockSize !== 64 && o.awqBlockSize !== 128) {
    throw new UsageError(`--awq_block_size ${o.awqBlockSize}: expected 64 or 128`);
  }
  const q = cfg.quantization;
  q.kv_cache_quant_algo = o.kvCacheDtype ? (o.kvCacheDtype.toUpperCase() as "INT8" | "FP8") : null;
  if (o.quantCfg) {
    if (o.qformat !== "full_prec") throw new UsageError("give --qformat or --quant_cfg, not both");
    if (!fs.existsSync(o.quantCfg)) throw new UsageError(`--quant_cfg ${o.quantCfg}: no such file`);
    const table = readQuantCfg(o.quantCfg, cfg, "--quant_cfg ");
    q.quant_algo = "MIXED_PRECISION";
    q.quantized_layers = table.quantizedLayers;
    q.kv_cache_quant_algo ??= table.kvCacheQuantAlgo;
    return;
  }
  const algo = QFORMAT_ALGO[o.qformat];
  q.quant_algo = algo;
  if (algo === null) return;
  q.exclude_modules = o.quantizeLmHead ? [] : ["lm_head"];
  if (algo === "W4A16_AWQ" || algo === "W4A8_AWQ") {
    q.group_size = o.awqBlockSize;
    q.pre_quant_scale = true;
  }
  if (algo === "W8A8_SQ_PER_CHANNEL") {
    q.pre_quant_scale = true;
    q.smoothquant_val = INT8_SQ_ALPHA;
  }
}

/** The quantizer of each linear layer's weight (by its single-rank tensor name) under `cfg.quantization`. */
export function layerQuantizers(
  cfg: PretrainedConfig,
  acts: Activations | null,
): (weightName: string) => LayerQuantizer | null {
  const made = new Map<string, LayerQuantizer>();
  const calib = {
    searchable: !acts?.standIn,
    inputAmax(name: string) {
      const a = acts?.linearInputAmax.get(name);
      if (!a) throw new Error(`no calibration ranges recorded for ${name}`);
      return a;
    },
    inputs(name: string) {
      const x = acts?.linearInputs.get(name);
      if (!x) throw new Error(`no calibration inputs recorded for ${name}`);
      return x;
    },
  };
  return (weightName) => {
    const module = moduleOfWeight(weightName);
    const entry = module ? layerQuant(cfg.quantization, module) : null;
    if (!entry) return null;
    const algo = entry.quant_algo;
    const groupSize = entry.group_size ?? cfg.quantization.group_size;
    const key = `${algo}:${groupSize}`;
    let q = made.get(key);
    if (!q) {
      if (algo === "W8A16" || algo === "W4A16") q = weightOnlyQuantizer(algo === "W8A16" ? 8 : 4);
      else if (isModelOptAlgo(algo))
        q = modeloptQuantizer(algo, calib, { awqGroupSize: groupSize, sqAlpha: INT8_SQ_ALPHA });
      else throw new UsageError(`${weightName}: kiln quantize does not write ${algo}`);
      made.set(key, q);
    }
    return q;
  };
}

/** config.json, and for MIXED_PRECISION its table in quant_cfg.json beside it (not inside, as TensorRT-LLM has it). */
export function writeCheckpointConfig(dir: string, cfg: PretrainedConfig): void {
  const { quantized_layers, ...quantization } = cfg.quantization;
  fs.writeFileSync(path.join(dir, "config.json"), `${JSON.stringify({ ...cfg, quantization }, null, 4)}\n`);
  if (quantization.quant_algo === "MIXED_PRECISION") writeQuantCfg(dir, cfg);
}

export function writeQuantCfg(dir: string, cfg: PretrainedConfig): void {
  const q = cfg.quantization;
  const body = {
    quant_algo: q.quant_algo,
    kv_cache_quant_algo: q.kv_cache_quant_algo,
    quantized_layers: q.quantized_layers,
  };
  fs.writeFileSync(path.join(dir, "quant_cfg.json"), `${JSON.stringify(body, null, 4)}\n`);
}

/** A MIXED_PRECISION config read from `dir` gets its quant_cfg.json table back. */
export function attachQuantCfg(dir: string, cfg: PretrainedConfig): PretrainedConfig {
  if (cfg.quantization.quant_algo !== "MIXED_PRECISION" || cfg.quantization.quantized_layers) return cfg;
  const file = path.join(dir, "quant_cfg.json");
  if (!fs.existsSync(file)) throw new UsageError(`${file}: missing (config.json says MIXED_PRECISION)`);
  const table = readQuantCfg(file, cfg, "");
  cfg.quantization.quantized_layers = table.quantizedLayers;
  return cfg;
}
