// Which algorithm quantizes each linear layer of a checkpoint: the one quant_algo for every layer it covers
// (lm_head only when exclude_modules leaves it in), or, for MIXED_PRECISION, the quantized_layers table of
// quant_cfg.json (exact TensorRT-LLM module names or fnmatch patterns; layers it does not name stay unquantized).

import fs from "node:fs";
import type { LayerQuantConfig, PretrainedConfig, QuantizationConfig } from "../checkpoint/pretrained-config.js";
import { ConfigError } from "../errors.js";
import { KV_CACHE_QUANT_ALGOS, type KvCacheQuantAlgo, WEIGHT_ONLY_LAYERS } from "./mode.js";

/** What ModelOpt's auto-quantize may give a layer (TensorRT-LLM's MIXED_PRECISION). */
export const MIXED_LAYER_ALGOS = ["NVFP4", "FP8", "W4A16_AWQ", "W4A8_AWQ", "W8A8_SQ_PER_CHANNEL"] as const;

/** The linear layers of a model, by TensorRT-LLM module name (no `.weight`), lm_head last. */
export function linearModules(numLayers: number): string[] {
  const out: string[] = [];
  for (let l = 0; l < numLayers; l++) for (const m of WEIGHT_ONLY_LAYERS) out.push(`transformer.layers.${l}.${m}`);
  out.push("lm_head");
  return out;
}

/** fnmatch as Python has it for module names: `*`, `?` and `[…]`, the whole name. */
export function fnmatch(name: string, pattern: string): boolean {
  const re = pattern
    .replace(/[.+^${}()|\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${re}$`).test(name);
}

/** The entry of `table` for `module`: its exact key, else the first pattern that matches it. */
function entryFor(table: Record<string, LayerQuantConfig>, module: string): LayerQuantConfig | null {
  if (table[module]) return table[module];
  for (const [k, v] of Object.entries(table)) if (fnmatch(module, k)) return v;
  return null;
}

/** The algorithm (and its entry, for MIXED_PRECISION) of linear `module` under `q`; null: unquantized. */
export function layerQuant(q: QuantizationConfig, module: string): LayerQuantConfig | null {
  if (q.quant_algo === null) return null;
  if (q.quant_algo === "MIXED_PRECISION") return entryFor(q.quantized_layers ?? {}, module);
  const excluded = q.exclude_modules ?? ["lm_head"];
  if (excluded.some((p) => fnmatch(module, p))) return null;
  const isLinear =
    module === "lm_head" ||
    /^transformer\.layers\.\d+\.(attention\.(qkv|dense)|mlp\.(fc|gate|proj)|shared_expert\.(fc|proj))$/.test(module);
  return isLinear ? { quant_algo: q.quant_algo, group_size: q.group_size } : null;
}

/** The module of a linear layer's weight tensor (`….weight` → `…`), or null for any other tensor. */
export function moduleOfWeight(name: string): string | null {
  return name === "lm_head.weight" || /^transformer\.layers\.\d+\..+\.weight$/.test(name)
    ? name.replace(/\.weight$/, "")
    : null;
}

/**
 * Reads and checks a quant_cfg.json for a model: every algorithm is one MIXED_PRECISION allows, every key
 * names (or matches) a linear layer of the model, FP8 and int8 SmoothQuant are not mixed.
 */
export function readQuantCfg(
  file: string,
  cfg: PretrainedConfig,
  /** How messages name the file's source, e.g. "--quant_cfg ". */
  flag: string,
): { quantizedLayers: Record<string, LayerQuantConfig>; kvCacheQuantAlgo: KvCacheQuantAlgo | null } {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new ConfigError(`${flag}${file}: cannot read it as JSON (${(e as Error).message.split("\n")[0]})`);
  }
  const r = raw as { quant_algo?: unknown; kv_cache_quant_algo?: unknown; quantized_layers?: unknown };
  if (typeof raw !== "object" || raw === null || r.quant_algo !== "MIXED_PRECISION") {
    throw new ConfigError(`${flag}${file}: expected "quant_algo": "MIXED_PRECISION"`);
  }
  const kv = r.kv_cache_quant_algo ?? null;
  if (kv !== null && !(KV_CACHE_QUANT_ALGOS as readonly unknown[]).includes(kv)) {
    throw new ConfigError(
      `${flag}${file}: kv_cache_quant_algo ${JSON.stringify(kv)} is not one of ${KV_CACHE_QUANT_ALGOS.join(", ")}`,
    );
  }
  if (typeof r.quantized_layers !== "object" || r.quantized_layers === null) {
    throw new ConfigError(`${flag}${file}: expected a "quantized_layers" object`);
  }
  const modules = linearModules(cfg.num_hidden_layers);
  const table: Record<string, LayerQuantConfig> = {};
  for (const [key, v] of Object.entries(r.quantized_layers as Record<string, unknown>)) {
    const algo = (v as { quant_algo?: unknown })?.quant_algo;
    if (!(MIXED_LAYER_ALGOS as readonly unknown[]).includes(algo)) {
      throw new ConfigError(
        `${flag}${file}: layer "${key}" has quant_algo ${JSON.stringify(algo)}; expected one of ${MIXED_LAYER_ALGOS.join(", ")}`,
      );
    }
    if (!modules.some((m) => fnmatch(m, key))) {
      throw new ConfigError(
        `${flag}${file}: "${key}" names no linear layer of this model (e.g. transformer.layers.0.attention.qkv, transformer.layers.*.mlp.fc, lm_head)`,
      );
    }
    const e = v as LayerQuantConfig;
    if (e.group_size !== undefined && !(Number.isInteger(e.group_size) && e.group_size > 0)) {
      throw new ConfigError(`${flag}${file}: layer "${key}" has group_size ${JSON.stringify(e.group_size)}`);
    }
    table[key] = { ...e };
  }
  const algos = new Set(Object.values(table).map((e) => e.quant_algo));
  if (algos.has("FP8") && algos.has("W8A8_SQ_PER_CHANNEL")) {
    throw new ConfigError(`${flag}${file}: FP8 and W8A8_SQ_PER_CHANNEL cannot be mixed (as in TensorRT-LLM)`);
  }
  return { quantizedLayers: table, kvCacheQuantAlgo: kv as KvCacheQuantAlgo | null };
}
