// How a step's tokens get chosen: which requests the backend can decide itself (greedy, or sampling without
// host-side processors), the per-row parameters of a device draw, and the top alternatives to report.

import type { RowParams } from "./model-runner.js";
import type { GenerationParams } from "./request.js";
import { isGreedy } from "./sampling/index.js";
import type { Sequence } from "./sequence.js";

/** Greedy with nothing that needs the logits row on the host: the backend can choose the token itself. */
export function isPlainGreedy(p: GenerationParams): boolean {
  const s = p.sampling;
  return (
    p.numBeams === 1 &&
    p.numReturnSequences === 1 &&
    p.topLogProbs === 0 &&
    isGreedy(s) &&
    (s.temperature === 0 || s.temperature === 1) &&
    s.repetitionPenalty === 1 &&
    s.presencePenalty === 0 &&
    s.frequencyPenalty === 0 &&
    s.badWords.length === 0
  );
}

/** Sampling a backend can do itself: no penalties, bad words, siblings or alternatives to report. */
export function isDeviceSampleable(p: GenerationParams): boolean {
  const s = p.sampling;
  return (
    p.numBeams === 1 &&
    p.numReturnSequences === 1 &&
    p.topLogProbs === 0 &&
    s.repetitionPenalty === 1 &&
    s.presencePenalty === 0 &&
    s.frequencyPenalty === 0 &&
    s.badWords.length === 0
  );
}

/** A row's draw: greedy rows become top-k 1; the counter is the token's index in its sequence. */
export function rowParams(p: GenerationParams, seq: Sequence): RowParams {
  const s = p.sampling;
  const greedy = isGreedy(s);
  return {
    temperature: greedy || s.temperature === 0 ? 1 : s.temperature,
    topK: greedy ? 1 : s.topK,
    topP: s.topP === 0 ? 1 : s.topP,
    minP: s.minP,
    seed: (s.seed % 2 ** 32) | 0,
    counter: seq.numOutputTokens,
  };
}

/** The k most likely tokens of a log-softmax row, most likely first. */
export function topTokens(logProbs: Float64Array, k: number): { token: number; logProb: number }[] {
  const best: { token: number; logProb: number }[] = [];
  for (let t = 0; t < logProbs.length; t++) {
    const lp = logProbs[t];
    if (best.length === k && lp <= best[k - 1].logProb) continue;
    let i = best.length;
    while (i > 0 && best[i - 1].logProb < lp) i--;
    best.splice(i, 0, { token: t, logProb: lp });
    if (best.length > k) best.pop();
  }
  return best;
}
