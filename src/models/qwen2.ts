// The qwen2 family (Qwen2, Qwen2.5): like llama, with a bias on q, k and v only.

import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { decoderConfigFromHf, type HfConfig } from "./hf-decoder.js";

export function qwen2ConfigFromHf(hf: HfConfig, where: string): PretrainedConfig {
  return decoderConfigFromHf(hf, where, {
    attnBias: true,
    mlpBias: false,
    defaultRopeBase: 10000,
    extra: {
      qwen_type: "qwen2",
      seq_length: 8192,
      moe_intermediate_size: 0,
      moe_shared_expert_intermediate_size: 0,
      disable_weight_only_quant_plugin: false,
      use_logn_attn: false,
      num_labels: 1,
      moe: {
        num_experts: 0,
        shared_expert_intermediate_size: 0,
        top_k: 0,
        normalization_mode: 0,
        sparse_mixer_epsilon: 0.01,
        tp_mode: 0,
        device_limited_n_group: 0,
        device_limited_topk_group: 0,
        device_limited_routed_scaling_factor: 1.0,
      },
    },
  });
}
