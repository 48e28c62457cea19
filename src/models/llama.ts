// The llama family (Llama 2/3, Mistral without sliding windows): HF config → unified config.

import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { decoderConfigFromHf, type HfConfig } from "./hf-decoder.js";

export function llamaConfigFromHf(hf: HfConfig, where: string): PretrainedConfig {
  const attnBias = hf.attention_bias === true;
  return decoderConfigFromHf(hf, where, {
    attnBias,
    mlpBias: hf.mlp_bias === true,
    defaultRopeBase: 10000,
    extra: { dense_bias: attnBias },
  });
}
