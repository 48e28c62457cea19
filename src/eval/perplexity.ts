// Perplexity with sliding windows, as the transformers documentation computes it: windows of `window`
// tokens every `stride` tokens, each token scored once, by the window that ends where its scoring starts,
// with as much context as the window holds. Needs an engine built with --gather_context_logits.

import { LimitError } from "../errors.js";
import { isFailure, type LLM } from "../runtime/llm.js";
import { logSoftmax } from "../runtime/sampling/index.js";

export interface PerplexityResult {
  tokensScored: number;
  /** Sum of −log p over the scored tokens. */
  nll: number;
  perplexity: number;
  windows: number;
  seconds: number;
}

export function perplexity(llm: LLM, ids: readonly number[], window: number, stride: number): PerplexityResult {
  if (!llm.buildConfig.gather_context_logits) {
    throw new LimitError("perplexity needs the engine's context logits: rebuild it with --gather_context_logits");
  }
  if (window > llm.buildConfig.max_input_len) {
    throw new LimitError(
      `--max_input_len ${window} exceeds the engine's max_input_len ${llm.buildConfig.max_input_len}`,
    );
  }
  if (stride < 1 || stride > window) throw new LimitError(`--stride must be in [1, ${window}], got ${stride}`);
  if (ids.length < 2) throw new LimitError("the dataset holds fewer than two tokens: nothing to score");
  const t0 = performance.now();
  let nll = 0;
  let scored = 0;
  let windows = 0;
  let prevEnd = 0;
  for (let begin = 0; begin < ids.length; begin += stride) {
    const end = Math.min(begin + window, ids.length);
    const input = ids.slice(begin, end);
    const [out] = llm.generate([input], { maxNewTokens: 1, endId: null });
    if (isFailure(out)) throw out.error;
    // The window's last end − prevEnd tokens are new; the first token of all has nothing before it.
    const first = Math.max(1, input.length - (end - prevEnd));
    for (let k = first; k < input.length; k++) {
      nll -= logSoftmax(out.contextLogits![k - 1])[input[k]];
      scored++;
    }
    windows++;
    prevEnd = end;
    if (end === ids.length) break;
  }
  return {
    tokensScored: scored,
    nll,
    perplexity: Math.exp(nll / scored),
    windows,
    seconds: (performance.now() - t0) / 1000,
  };
}
