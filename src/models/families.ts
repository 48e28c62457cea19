// Which model families kiln knows, keyed by the architecture names HF and TensorRT-LLM write.

import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { ConfigError } from "../errors.js";
import type { HfConfig } from "./hf-decoder.js";
import { llamaConfigFromHf } from "./llama.js";
import { mixtralConfigFromHf, qwen2MoeConfigFromHf } from "./moe.js";
import { qwen2ConfigFromHf } from "./qwen2.js";

export interface ModelFamily {
  name: string;
  architectures: readonly string[];
  configFromHf(hf: HfConfig, where: string): PretrainedConfig;
}

export const FAMILIES: readonly ModelFamily[] = [
  {
    name: "llama",
    architectures: ["LlamaForCausalLM", "MistralForCausalLM"],
    configFromHf: llamaConfigFromHf,
  },
  {
    name: "qwen2",
    architectures: ["Qwen2ForCausalLM"],
    configFromHf: qwen2ConfigFromHf,
  },
  {
    name: "qwen2_moe",
    architectures: ["Qwen2MoeForCausalLM"],
    configFromHf: qwen2MoeConfigFromHf,
  },
  {
    name: "mixtral",
    architectures: ["MixtralForCausalLM"],
    configFromHf: mixtralConfigFromHf,
  },
];

export function familyOf(architecture: unknown, where: string): ModelFamily {
  const family = FAMILIES.find((f) => f.architectures.includes(architecture as string));
  if (!family) {
    const known = FAMILIES.flatMap((f) => f.architectures).join(", ");
    throw new ConfigError(`${where}: unknown architecture ${JSON.stringify(architecture)} (supported: ${known})`);
  }
  return family;
}
