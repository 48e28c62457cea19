// What the llama and qwen2 families share: a Hugging Face config turned into a unified checkpoint config.
// (Which HF tensors make each TensorRT-LLM tensor of each rank: checkpoint/rank-split.ts.)

import type { ModelDtype, PretrainedConfig, RotaryScaling } from "../checkpoint/pretrained-config.js";
import { noQuantization, singleRankMapping } from "../checkpoint/pretrained-config.js";
import { ConfigError } from "../errors.js";

export type HfConfig = Record<string, unknown>;

export function num(hf: HfConfig, key: string, where: string, fallback?: number): number {
  const v = hf[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ConfigError(`${where}: "${key}" must be a number, got ${JSON.stringify(hf[key])}`);
  }
  return v;
}

export function int(hf: HfConfig, key: string, where: string, fallback?: number): number {
  const v = num(hf, key, where, fallback);
  if (!Number.isInteger(v) || v <= 0) throw new ConfigError(`${where}: "${key}" must be a positive integer, got ${v}`);
  return v;
}

/** transformers 4 writes `torch_dtype`; transformers 5 writes `dtype`. */
export function hfDtype(hf: HfConfig, where: string): ModelDtype {
  const d = hf.dtype ?? hf.torch_dtype ?? "float32";
  if (d === "float32" || d === "float16" || d === "bfloat16") return d;
  throw new ConfigError(`${where}: dtype ${JSON.stringify(d)} is not one of float32, float16, bfloat16`);
}

/**
 * Rope base and scaling from either key set: transformers 4 (`rope_theta`, `rope_scaling` with `type` or
 * `rope_type`) or transformers 5 (`rope_parameters` holding both).
 */
export function hfRope(
  hf: HfConfig,
  where: string,
  defaultBase: number,
): { base: number; scaling: RotaryScaling | null } {
  const params = (hf.rope_parameters ?? hf.rope_scaling ?? null) as Record<string, unknown> | null;
  const base = (params?.rope_theta as number | undefined) ?? (hf.rope_theta as number | undefined) ?? defaultBase;
  if (typeof base !== "number" || !(base > 0)) throw new ConfigError(`${where}: rope_theta must be a positive number`);
  const kind = params ? (params.rope_type ?? params.type ?? "default") : "default";
  if (kind === "default") return { base, scaling: null };
  const factor = num(params as HfConfig, "factor", `${where} (rope scaling)`);
  if (kind === "linear") return { base, scaling: { type: "linear", factor } };
  if (kind === "llama3") {
    const p = params as HfConfig;
    const w = `${where} (llama3 rope scaling)`;
    return {
      base,
      scaling: {
        type: "llama3",
        factor,
        low_freq_factor: num(p, "low_freq_factor", w),
        high_freq_factor: num(p, "high_freq_factor", w),
        original_max_position_embeddings: int(p, "original_max_position_embeddings", w),
      },
    };
  }
  throw new ConfigError(
    `${where}: rope type ${JSON.stringify(kind)} is not supported (supported: default, linear, llama3)`,
  );
}

export interface DecoderTraits {
  /** Extra keys TensorRT-LLM's config for this family carries. */
  extra: Record<string, unknown>;
  attnBias: boolean;
  mlpBias: boolean;
  defaultRopeBase: number;
}

export function decoderConfigFromHf(hf: HfConfig, where: string, traits: DecoderTraits): PretrainedConfig {
  const act = hf.hidden_act ?? "silu";
  if (act !== "silu")
    throw new ConfigError(`${where}: hidden_act ${JSON.stringify(act)} is not supported (expected silu)`);
  if (hf.use_sliding_window === true) {
    throw new ConfigError(`${where}: use_sliding_window=true is not supported (sliding-window attention)`);
  }
  const arch = Array.isArray(hf.architectures) ? hf.architectures[0] : undefined;
  if (typeof arch !== "string") throw new ConfigError(`${where}: "architectures" must list the model class`);
  const hidden = int(hf, "hidden_size", where);
  const heads = int(hf, "num_attention_heads", where);
  const headSize = int(hf, "head_dim", where, Math.floor(hidden / heads));
  const kvHeads = int(hf, "num_key_value_heads", where, heads);
  if (heads % kvHeads !== 0) {
    throw new ConfigError(
      `${where}: num_attention_heads (${heads}) must be a multiple of num_key_value_heads (${kvHeads})`,
    );
  }
  const rope = hfRope(hf, where, traits.defaultRopeBase);
  return {
    architecture: arch,
    dtype: hfDtype(hf, where),
    vocab_size: int(hf, "vocab_size", where),
    hidden_size: hidden,
    num_hidden_layers: int(hf, "num_hidden_layers", where),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    intermediate_size: int(hf, "intermediate_size", where),
    hidden_act: "silu",
    logits_dtype: "float32",
    norm_epsilon: num(hf, "rms_norm_eps", where, 1e-6),
    position_embedding_type: "rope_gpt_neox",
    max_position_embeddings: int(hf, "max_position_embeddings", where, 2048),
    rotary_embedding_dim: headSize,
    head_size: headSize,
    rotary_base: rope.base,
    rotary_scaling: rope.scaling,
    attn_bias: traits.attnBias,
    mlp_bias: traits.mlpBias,
    tie_word_embeddings: hf.tie_word_embeddings === true,
    qk_layernorm: false,
    use_parallel_embedding: false,
    embedding_sharding_dim: 0,
    runtime_defaults: null,
    mapping: singleRankMapping(),
    quantization: noQuantization(),
    ...traits.extra,
  };
}
