// Logits processors and truncation masks: the composable steps between a model's logits row and a draw.
// Processors edit a Float32Array logits row in place; masks zero entries of a Float64Array of non-negative
// weights (probabilities up to a common factor), so each mask renormalises implicitly against what survives.

/** The tokens a request has seen so far; penalties and bad words read it, nothing writes it. */
export interface TokenHistory {
  promptIds: readonly number[];
  outputIds: readonly number[];
}

/** HF/TensorRT-LLM repetition penalty: each distinct token of prompt ∪ output is made less likely once, however
 * often it occurs; dividing a positive logit and multiplying a negative one both push it down for penalty > 1. */
export function applyRepetitionPenalty(logits: Float32Array, history: TokenHistory, penalty: number): void {
  if (penalty === 1) return;
  const seen = new Set<number>(history.promptIds);
  for (const t of history.outputIds) seen.add(t);
  for (const t of seen) logits[t] = logits[t] > 0 ? logits[t] / penalty : logits[t] * penalty;
}

/** OpenAI/vLLM penalties over generated tokens only: logit −= presence·[count > 0] + frequency·count. */
export function applyPresenceFrequency(
  logits: Float32Array,
  outputIds: readonly number[],
  presence: number,
  frequency: number,
): void {
  if (presence === 0 && frequency === 0) return;
  const counts = new Map<number, number>();
  for (const t of outputIds) counts.set(t, (counts.get(t) ?? 0) + 1);
  for (const [t, count] of counts) logits[t] -= presence + frequency * count;
}

/** Bans the last token of each bad word whose other tokens end `ids`, the history to match against (prompt and
 * output, as HF and TensorRT-LLM match); a single-token bad word has an empty prefix, so it is always banned. */
export function applyBadWords(
  logits: Float32Array,
  ids: readonly number[],
  badWords: readonly (readonly number[])[],
): void {
  for (const word of badWords) {
    const prefixLength = word.length - 1;
    if (prefixLength < 0 || prefixLength > ids.length) continue;
    const offset = ids.length - prefixLength;
    let matches = true;
    for (let i = 0; i < prefixLength && matches; i++) matches = ids[offset + i] === word[i];
    if (matches) logits[word[prefixLength]] = Number.NEGATIVE_INFINITY;
  }
}

/** Divides by `temperature` (> 0): below 1 sharpens the distribution, above 1 flattens it. */
export function applyTemperature(logits: Float32Array, temperature: number): void {
  if (temperature === 1) return;
  for (let i = 0; i < logits.length; i++) logits[i] /= temperature;
}

/** Keeps exactly the k heaviest tokens; among equal weights at the boundary the lowest indices win, the order a
 * stable descending sort gives. k = 0 means off. */
export function topKMask(weights: Float64Array, k: number): void {
  if (k <= 0 || k >= weights.length) return;
  keepHeaviest(
    weights,
    k,
    heaviestDescending(weights, (count) => count >= k),
  );
}

/** Nucleus rule (HF's TopPLogitsWarper, TensorRT-LLM's top-p): walking tokens from most to least probable, keep
 * each token while the mass before it is < p; so the kept set is the smallest prefix whose mass reaches p, and
 * never empty. Mass within 1e-6 of p counts as reached: that is about the precision of probabilities from
 * float32 logits, and a rounding error must not decide whether one more token joins. p = 1 and 0 both mean off. */
export function topPMask(weights: Float64Array, topP: number): void {
  if (topP <= 0 || topP >= 1) return;
  let total = 0;
  for (let i = 0; i < weights.length; i++) total += weights[i];
  const target = (topP - TOP_P_SLACK) * total;
  const head = heaviestDescending(weights, (_count, mass) => mass >= target);
  let mass = 0;
  let kept = 0;
  do mass += head[kept++];
  while (mass < target && kept < head.length);
  keepHeaviest(weights, kept, head);
}

const TOP_P_SLACK = 1e-6;

/** Min-p: keeps tokens with probability ≥ minP · (largest probability), so the cut scales with the model's
 * confidence. 0 means off; the most probable token always survives. */
export function minPMask(weights: Float64Array, minP: number): void {
  if (minP <= 0) return;
  let max = 0;
  for (let i = 0; i < weights.length; i++) if (weights[i] > max) max = weights[i];
  const threshold = minP * max;
  for (let i = 0; i < weights.length; i++) if (weights[i] < threshold) weights[i] = 0;
}

/** The heaviest weights, heaviest first, at least enough of them for `enough` to hold. Only a head of the
 * vocabulary is sorted: the threshold drops 256-fold per round until the weights above it suffice, and every
 * weight below the threshold is lighter than every weight returned. */
function heaviestDescending(weights: Float64Array, enough: (count: number, mass: number) => boolean): Float64Array {
  let max = 0;
  for (let i = 0; i < weights.length; i++) if (weights[i] > max) max = weights[i];
  for (let shift = 8; ; shift += 8) {
    // Past 2^-64 of the maximum nothing left can matter; take everything rather than loop on underflow.
    const threshold = shift > 64 ? 0 : max * 2 ** -shift;
    let count = 0;
    let mass = 0;
    for (let i = 0; i < weights.length; i++) {
      if (weights[i] >= threshold) {
        count++;
        mass += weights[i];
      }
    }
    if (threshold === 0 || enough(count, mass)) {
      const head = new Float64Array(count);
      for (let i = 0, j = 0; i < weights.length; i++) if (weights[i] >= threshold) head[j++] = weights[i];
      // A typed-array sort is numeric and native: several times faster than sorting indices with a comparator.
      return head.sort().reverse();
    }
  }
}

/** Keeps the `keep` heaviest tokens given `head` from heaviestDescending; ties at the cut go to the lowest indices. */
function keepHeaviest(weights: Float64Array, keep: number, head: Float64Array): void {
  const cut = head[keep - 1];
  let tiesKept = 0;
  for (let j = keep - 1; j >= 0 && head[j] === cut; j--) tiesKept++;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] > cut) continue;
    if (weights[i] === cut && tiesKept > 0) tiesKept--;
    else weights[i] = 0;
  }
}
