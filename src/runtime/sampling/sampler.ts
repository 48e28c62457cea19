// Choosing the next token: penalties, then argmax or a seeded draw from the truncated distribution.

import { LimitError } from "../../errors.js";
import { isGreedy, type SamplingConfig } from "./params.js";
import {
  applyBadWords,
  applyPresenceFrequency,
  applyRepetitionPenalty,
  applyTemperature,
  minPMask,
  type TokenHistory,
  topKMask,
  topPMask,
} from "./processors.js";
import type { Rng } from "./rng.js";

export interface SampledToken {
  token: number;
  /** Log-probability of `token` under the penalised, temperature-scaled distribution before top-k/top-p/min-p
   * cut it down (unscaled when temperature is 0), in float64. */
  logProb: number;
}

/** Samples one token. `logits` is consumed: penalties and temperature are applied to it in place, which spares
 * copying a 152k-entry row per token. */
export function sampleToken(logits: Float32Array, cfg: SamplingConfig, history: TokenHistory, rng: Rng): SampledToken {
  if (cfg.badWords.length > 0) applyBadWords(logits, lastTokens(history, longestPrefix(cfg.badWords)), cfg.badWords);
  applyRepetitionPenalty(logits, history, cfg.repetitionPenalty);
  applyPresenceFrequency(logits, history.outputIds, cfg.presencePenalty, cfg.frequencyPenalty);
  if (isGreedy(cfg)) {
    // top_k 1 with a temperature still reports the temperature-scaled log-probability, as sampling would.
    if (cfg.temperature > 0) applyTemperature(logits, cfg.temperature);
    const token = argmax(logits);
    return { token, logProb: logits[token] - logSumExp(logits) };
  }
  applyTemperature(logits, cfg.temperature);
  const max = logits[argmax(logits)];
  const weights = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += weights[i] = Math.exp(logits[i] - max);
  topKMask(weights, cfg.topK);
  topPMask(weights, cfg.topP);
  minPMask(weights, cfg.minP);
  const token = drawIndex(weights, rng);
  return { token, logProb: Math.log(weights[token] / total) };
}

/** log softmax of a row, in float64 so that tiny probabilities keep their digits. */
export function logSoftmax(row: Float32Array): Float64Array {
  const lse = logSumExp(row);
  const out = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) out[i] = row[i] - lse;
  return out;
}

/** The index of the largest logit, the first on ties (as torch.argmax). Throws when every logit is −∞, which
 * only bad words banning the whole vocabulary can cause. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (!(logits[best] > Number.NEGATIVE_INFINITY)) {
    throw new LimitError(
      `no token can be sampled: all ${logits.length} logits are -inf or NaN (does --bad_words ban them all?)`,
    );
  }
  return best;
}

function logSumExp(row: Float32Array): number {
  const max = row[argmax(row)];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return max + Math.log(sum);
}

/** Draws index i with probability weights[i] / Σ weights. */
function drawIndex(weights: Float64Array, rng: Rng): number {
  let total = 0;
  for (let i = 0; i < weights.length; i++) total += weights[i];
  let remaining = rng.next() * total;
  let lastPositive = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] <= 0) continue;
    lastPositive = i;
    remaining -= weights[i];
    if (remaining < 0) return i;
  }
  // Summing in a different order can leave a rounding crumb after the last token; it belongs to that token.
  return lastPositive;
}

/** The last `n` tokens of prompt ++ output; bad words never need more than their longest prefix. */
function lastTokens(history: TokenHistory, n: number): number[] {
  const { promptIds, outputIds } = history;
  const fromOutput = outputIds.slice(Math.max(0, outputIds.length - n));
  const fromPrompt = promptIds.slice(Math.max(0, promptIds.length - (n - fromOutput.length)));
  return fromPrompt.concat(fromOutput);
}

function longestPrefix(badWords: readonly (readonly number[])[]): number {
  let longest = 0;
  for (const word of badWords) longest = Math.max(longest, word.length - 1);
  return longest;
}
