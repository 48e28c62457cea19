// The mixture-of-experts families: Qwen2-MoE (routed experts, a shared expert behind a sigmoid gate, dense
// layers where mlp_only_layers or decoder_sparse_step say so) and Mixtral (routed experts, renormalized top-k).
// HF config → unified config with TensorRT-LLM's `moe` object, and which layers route.

import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { ConfigError } from "../errors.js";
import { type Mapping, MappingError } from "../mapping.js";
import { type HfConfig, int } from "./hf-decoder.js";
import { llamaConfigFromHf } from "./llama.js";
import { qwen2ConfigFromHf } from "./qwen2.js";

/** TensorRT-LLM's MoeConfig.ExpertScaleNormalizationMode values kiln runs. */
export const MOE_NORMALIZATION = { NONE: 0, RENORMALIZE: 1 } as const;

export interface MoeConfig {
  num_experts: number;
  top_k: number;
  normalization_mode: number;
  shared_expert_intermediate_size: number;
  [extra: string]: unknown;
}

/** The MoE settings of a config, or null for a dense model (TensorRT-LLM: MoE is active iff num_experts > 1). */
export function moeOf(cfg: PretrainedConfig): (MoeConfig & { expertInter: number; sharedInter: number }) | null {
  const moe = cfg.moe as MoeConfig | undefined;
  if (!moe || moe.num_experts <= 1) return null;
  return {
    ...moe,
    expertInter: (cfg.moe_intermediate_size as number | undefined) || cfg.intermediate_size,
    sharedInter: (cfg.moe_shared_expert_intermediate_size as number | undefined) ?? 0,
  };
}

/** Whether global layer `l` routes through experts (else it has the dense gated MLP). */
export function isMoeLayer(cfg: PretrainedConfig, l: number): boolean {
  if (!moeOf(cfg)) return false;
  const dense = (cfg.mlp_only_layers as number[] | undefined) ?? [];
  const step = (cfg.decoder_sparse_step as number | undefined) ?? 1;
  return !dense.includes(l) && (l + 1) % step === 0;
}

function topK(hf: HfConfig, experts: number, where: string): number {
  const k = int(hf, "num_experts_per_tok", where);
  if (k > experts) throw new ConfigError(`${where}: num_experts_per_tok ${k} exceeds the ${experts} experts`);
  return k;
}

export function qwen2MoeConfigFromHf(hf: HfConfig, where: string): PretrainedConfig {
  const base = qwen2ConfigFromHf(hf, where);
  const experts = int(hf, "num_experts", where);
  const shared = (hf.shared_expert_intermediate_size as number | undefined) ?? 0;
  const dense = hf.mlp_only_layers ?? [];
  if (!Array.isArray(dense) || dense.some((l) => !Number.isInteger(l))) {
    throw new ConfigError(`${where}: "mlp_only_layers" must list layer indices`);
  }
  return {
    ...base,
    hidden_act: "silu",
    qwen_type: "qwen2_moe",
    moe_intermediate_size: int(hf, "moe_intermediate_size", where),
    moe_shared_expert_intermediate_size: shared,
    // kiln's own keys: which layers stay dense (TensorRT-LLM's Qwen2-MoE has every layer sparse).
    mlp_only_layers: dense,
    decoder_sparse_step: int(hf, "decoder_sparse_step", where, 1),
    moe: {
      ...(base.moe as MoeConfig),
      num_experts: experts,
      top_k: topK(hf, experts, where),
      normalization_mode: hf.norm_topk_prob === true ? MOE_NORMALIZATION.RENORMALIZE : MOE_NORMALIZATION.NONE,
      shared_expert_intermediate_size: shared,
    },
  };
}

export function mixtralConfigFromHf(hf: HfConfig, where: string): PretrainedConfig {
  const base = llamaConfigFromHf(hf, where);
  const experts = int(hf, "num_local_experts", where);
  return {
    ...base,
    moe_intermediate_size: base.intermediate_size,
    moe: {
      num_experts: experts,
      shared_expert_intermediate_size: 0,
      top_k: topK(hf, experts, where),
      normalization_mode: MOE_NORMALIZATION.RENORMALIZE,
      sparse_mixer_epsilon: 0.01,
      tp_mode: 0,
      device_limited_n_group: 0,
      device_limited_topk_group: 0,
      device_limited_routed_scaling_factor: 1.0,
    },
  };
}

/** Checks a MoE model splits by `m`: moe_ep divides the experts, moe_tp their intermediate size, tp the shared expert's. */
export function validateMoeSplit(cfg: PretrainedConfig, m: Mapping): void {
  const moe = moeOf(cfg);
  if (!moe) return;
  m.epExperts(moe.num_experts, 0);
  if (moe.expertInter % m.moeTpSize !== 0) {
    throw new MappingError(
      `--moe_tp_size ${m.moeTpSize} does not divide the experts' intermediate size ${moe.expertInter}`,
    );
  }
  if (moe.sharedInter % m.tpSize !== 0) {
    throw new MappingError(
      `--tp_size ${m.tpSize} does not divide the shared expert's intermediate size ${moe.sharedInter}`,
    );
  }
}
