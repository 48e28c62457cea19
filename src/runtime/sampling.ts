// Choosing the next token from a logits row.

/** The index of the largest logit; the first one on ties, as torch.argmax does. */
export function greedy(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}
