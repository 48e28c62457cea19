// The unified checkpoint's config.json (TensorRT-LLM's PretrainedConfig): its type, defaults and validation.
// Readers accept unknown keys, as TensorRT-LLM's does; writers emit TensorRT-LLM's keys.

import { ConfigError } from "../errors.js";

export const MODEL_DTYPES = ["float32", "float16", "bfloat16"] as const;
export type ModelDtype = (typeof MODEL_DTYPES)[number];

export interface MappingConfig {
  world_size: number;
  gpus_per_node: number;
  cp_size: number;
  tp_size: number;
  pp_size: number;
  moe_tp_size: number;
  moe_cluster_size: number;
  moe_ep_size: number;
  attn_tp_size: number;
  attn_cp_size: number;
  auto_parallel: boolean;
}

/** One entry of quant_cfg.json's quantized_layers: a linear module's algorithm and its settings. */
export interface LayerQuantConfig {
  quant_algo: string;
  group_size?: number;
  has_zero_point?: boolean;
  pre_quant_scale?: boolean;
}

export interface QuantizationConfig {
  quant_algo: string | null;
  kv_cache_quant_algo: string | null;
  group_size: number;
  smoothquant_val: number;
  clamp_val: [number, number] | null;
  use_meta_recipe: boolean;
  has_zero_point: boolean;
  pre_quant_scale: boolean;
  exclude_modules: string[] | null;
  /**
   * MIXED_PRECISION: each linear module's algorithm (quant_cfg.json's quantized_layers, which kiln reads from
   * beside config.json and keeps here in memory; config.json itself does not hold it).
   */
  quantized_layers?: Record<string, LayerQuantConfig>;
}

/** Rope scaling as Hugging Face writes it; `type` is the normalised kind. */
export interface RotaryScaling {
  type: "linear" | "llama3";
  factor: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
}

export interface PretrainedConfig {
  architecture: string;
  dtype: ModelDtype;
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  intermediate_size: number;
  hidden_act: string;
  logits_dtype: string;
  norm_epsilon: number;
  position_embedding_type: string;
  max_position_embeddings: number | null;
  rotary_embedding_dim: number;
  head_size: number;
  rotary_base: number;
  rotary_scaling: RotaryScaling | null;
  attn_bias: boolean;
  mlp_bias: boolean;
  tie_word_embeddings: boolean;
  qk_layernorm: boolean;
  use_parallel_embedding: boolean;
  embedding_sharding_dim: number;
  runtime_defaults: null;
  mapping: MappingConfig;
  quantization: QuantizationConfig;
  [extra: string]: unknown;
}

export function singleRankMapping(): MappingConfig {
  return {
    world_size: 1,
    gpus_per_node: 8,
    cp_size: 1,
    tp_size: 1,
    pp_size: 1,
    moe_tp_size: 1,
    moe_cluster_size: 1,
    moe_ep_size: 1,
    attn_tp_size: 1,
    attn_cp_size: 1,
    auto_parallel: false,
  };
}

export function noQuantization(): QuantizationConfig {
  return {
    quant_algo: null,
    kv_cache_quant_algo: null,
    group_size: 128,
    smoothquant_val: 0.5,
    clamp_val: null,
    use_meta_recipe: false,
    has_zero_point: false,
    pre_quant_scale: false,
    exclude_modules: null,
  };
}

function positiveInt(cfg: Record<string, unknown>, key: string, where: string): number {
  const v = cfg[key];
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new ConfigError(`${where}: "${key}" must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Validates a checkpoint config.json (written by kiln or by TensorRT-LLM) and fills TensorRT-LLM's defaults. */
export function parsePretrainedConfig(raw: unknown, where: string): PretrainedConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${where}: expected a JSON object`);
  }
  const c = raw as Record<string, unknown>;
  if (typeof c.architecture !== "string") throw new ConfigError(`${where}: "architecture" is missing`);
  if (!MODEL_DTYPES.includes(c.dtype as ModelDtype)) {
    throw new ConfigError(
      `${where}: "dtype" must be one of ${MODEL_DTYPES.join(", ")}, got ${JSON.stringify(c.dtype)}`,
    );
  }
  for (const k of ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]) positiveInt(c, k, where);
  const heads = c.num_attention_heads as number;
  const hidden = c.hidden_size as number;
  const headSize = (c.head_size as number | undefined) ?? hidden / heads;
  const cfg = {
    num_key_value_heads: heads,
    intermediate_size: 4 * hidden,
    hidden_act: "gelu",
    logits_dtype: "float32",
    norm_epsilon: 1e-5,
    position_embedding_type: "learned_absolute",
    max_position_embeddings: null,
    head_size: headSize,
    rotary_embedding_dim: headSize,
    rotary_base: 10000,
    rotary_scaling: null,
    attn_bias: false,
    mlp_bias: false,
    tie_word_embeddings: false,
    qk_layernorm: false,
    use_parallel_embedding: false,
    embedding_sharding_dim: 0,
    runtime_defaults: null,
    ...c,
    mapping: { ...singleRankMapping(), ...(c.mapping as object | undefined) },
    quantization: { ...noQuantization(), ...(c.quantization as object | undefined) },
  } as PretrainedConfig;
  for (const k of ["num_key_value_heads", "intermediate_size", "head_size"]) positiveInt(cfg, k, where);
  if (heads % cfg.num_key_value_heads !== 0) {
    throw new ConfigError(
      `${where}: num_attention_heads (${heads}) must be a multiple of num_key_value_heads (${cfg.num_key_value_heads})`,
    );
  }
  return cfg;
}
