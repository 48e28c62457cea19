// The llama family (Llama 2/3, Mistral without sliding windows): HF config → unified config.

import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { ConfigError } from "../errors.js";
import { decoderConfigFromHf, type HfConfig } from "./hf-decoder.js";

export function llamaConfigFromHf(hf: HfConfig, where: string): PretrainedConfig {
  // Mistral v0.1 attends over a sliding window; running it with full attention would be silently wrong.
  const window = hf.sliding_window;
  if (
    typeof window === "number" &&
    window < ((hf.max_position_embeddings as number | undefined) ?? Number.POSITIVE_INFINITY)
  ) {
    throw new ConfigError(`${where}: sliding_window ${window} is not supported (sliding-window attention)`);
  }
  const attnBias = hf.attention_bias === true;
  return decoderConfigFromHf(hf, where, {
    attnBias,
    mlpBias: hf.mlp_bias === true,
    defaultRopeBase: 10000,
    extra: { dense_bias: attnBias },
  });
}
