// Token sampling as composable parts: parameters, a per-request RNG, logits processors, masks, and the sampler.

export { DEFAULT_SAMPLING, isGreedy, type SamplingConfig, validateSampling } from "./params.js";
export {
  applyBadWords,
  applyPresenceFrequency,
  applyRepetitionPenalty,
  applyTemperature,
  minPMask,
  type TokenHistory,
  topKMask,
  topPMask,
} from "./processors.js";
export { Rng } from "./rng.js";
export { argmax, logSoftmax, type SampledToken, sampleToken } from "./sampler.js";
