// Quantization at two levels, as TensorRT-LLM has them: the recipe a checkpoint names (QuantAlgo strings in
// config.json) and the capabilities code branches on (QuantMode). One table maps every recipe to its mode;
// the compiler checks it covers them all.

import { ConfigError } from "../errors.js";

export const QUANT_ALGOS = [
  "W8A16",
  "W4A16",
  "W4A16_AWQ",
  "W4A8_AWQ",
  "W8A16_GPTQ",
  "W4A16_GPTQ",
  "W8A8_SQ_PER_CHANNEL",
  "W8A8_SQ_PER_TENSOR_PLUGIN",
  "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
  "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
  "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
  "FP8",
  "FP8_PER_CHANNEL_PER_TOKEN",
  "NVFP4",
  "MIXED_PRECISION",
] as const;
export type QuantAlgo = (typeof QUANT_ALGOS)[number];

export const KV_CACHE_QUANT_ALGOS = ["INT8", "FP8"] as const;
export type KvCacheQuantAlgo = (typeof KV_CACHE_QUANT_ALGOS)[number];

export interface QuantMode {
  /** Bits of a quantized weight (null: the model dtype). */
  weightBits: 4 | 8 | null;
  weightFormat: "int" | "fp8" | "fp4" | null;
  /** Scales per group of input channels (AWQ, GPTQ) rather than per output channel. */
  perGroup: boolean;
  /** Activations are quantized too (SmoothQuant, FP8, W4A8). */
  quantizedActivations: boolean;
  /** Whether kiln's backends run it today. */
  supported: boolean;
}

const mode = (m: Partial<QuantMode>): QuantMode => ({
  weightBits: null,
  weightFormat: null,
  perGroup: false,
  quantizedActivations: false,
  supported: false,
  ...m,
});

const MODES: Record<QuantAlgo, QuantMode> = {
  W8A16: mode({ weightBits: 8, weightFormat: "int", supported: true }),
  W4A16: mode({ weightBits: 4, weightFormat: "int", supported: true }),
  W4A16_AWQ: mode({ weightBits: 4, weightFormat: "int", perGroup: true, supported: true }),
  W4A8_AWQ: mode({ weightBits: 4, weightFormat: "int", perGroup: true, quantizedActivations: true, supported: true }),
  W8A16_GPTQ: mode({ weightBits: 8, weightFormat: "int", perGroup: true }),
  W4A16_GPTQ: mode({ weightBits: 4, weightFormat: "int", perGroup: true, supported: true }),
  W8A8_SQ_PER_CHANNEL: mode({ weightBits: 8, weightFormat: "int", quantizedActivations: true, supported: true }),
  W8A8_SQ_PER_TENSOR_PLUGIN: mode({ weightBits: 8, weightFormat: "int", quantizedActivations: true, supported: true }),
  W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN: mode({
    weightBits: 8,
    weightFormat: "int",
    quantizedActivations: true,
    supported: true,
  }),
  W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN: mode({
    weightBits: 8,
    weightFormat: "int",
    quantizedActivations: true,
    supported: true,
  }),
  W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN: mode({
    weightBits: 8,
    weightFormat: "int",
    quantizedActivations: true,
    supported: true,
  }),
  FP8: mode({ weightBits: 8, weightFormat: "fp8", quantizedActivations: true, supported: true }),
  FP8_PER_CHANNEL_PER_TOKEN: mode({ weightBits: 8, weightFormat: "fp8", quantizedActivations: true }),
  NVFP4: mode({ weightBits: 4, weightFormat: "fp4", quantizedActivations: true, supported: true }),
  MIXED_PRECISION: mode({ supported: true }),
};

/** The mode of a checkpoint's quant_algo (null: unquantized); an unknown string is a ConfigError naming it. */
export function quantMode(algo: string | null, where: string): QuantMode | null {
  if (algo === null) return null;
  if (!(QUANT_ALGOS as readonly string[]).includes(algo)) {
    throw new ConfigError(
      `${where}: quant_algo ${JSON.stringify(algo)} is not a TensorRT-LLM QuantAlgo (${QUANT_ALGOS.join(", ")})`,
    );
  }
  return MODES[algo as QuantAlgo];
}

/** The TensorRT-LLM names of the linear layers weight-only quantization covers (lm_head and embeddings excluded). */
export const WEIGHT_ONLY_LAYERS = [
  "attention.qkv",
  "attention.dense",
  "mlp.fc",
  "mlp.gate",
  "mlp.proj",
  "shared_expert.fc",
  "shared_expert.proj",
] as const;

/** Whether a checkpoint tensor is the weight of a layer weight-only quantization covers. */
export function isWeightOnlyLayer(name: string): boolean {
  const m = /^transformer\.layers\.\d+\.(.+)\.weight$/.exec(name);
  return m !== null && (WEIGHT_ONLY_LAYERS as readonly string[]).includes(m[1]);
}

/** `<lin>.weight` → `<lin>.per_channel_scale` */
export function scaleName(weightName: string): string {
  return weightName.replace(/\.weight$/, ".per_channel_scale");
}

/** `<lin>.weight` → `<lin>.<suffix>`: the group scales ("weights_scaling_factor") and zeros ("zero") of GPTQ. */
export function companionName(weightName: string, suffix: string): string {
  return weightName.replace(/\.weight$/, `.${suffix}`);
}
