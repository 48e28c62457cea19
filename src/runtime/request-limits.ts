// The limits a request must fit before it is queued: the engine's build limits, its vocabulary, the
// sequences it may run at once and the KV blocks the pool holds. Each failure is a LimitError naming them.

import type { BuildConfig } from "../builder/build-config.js";
import { LimitError } from "../errors.js";
import type { GenerationParams } from "./request.js";
import { validateSampling } from "./sampling/index.js";

export interface EngineLimits {
  build: BuildConfig;
  vocabSize: number;
  /** Sequences that may run at once: max_batch_size × max_beam_width. */
  maxSeqs: number;
  blocksFor(numTokens: number): number;
  numBlocks: number;
}

export function checkRequest(promptIds: readonly number[], params: GenerationParams, e: EngineLimits): void {
  const b = e.build;
  if (promptIds.length === 0) throw new LimitError("the prompt is empty: at least one token is needed");
  if (promptIds.length > b.max_input_len) {
    throw new LimitError(
      `the prompt has ${promptIds.length} tokens, more than the engine's max_input_len ${b.max_input_len}`,
    );
  }
  if (!Number.isInteger(params.maxNewTokens) || params.maxNewTokens < 1) {
    throw new LimitError(`max_output_len must be a positive integer, got ${params.maxNewTokens}`);
  }
  if (promptIds.length + params.maxNewTokens > b.max_seq_len) {
    throw new LimitError(
      `max_output_len ${params.maxNewTokens} with a ${promptIds.length}-token prompt exceeds the engine's max_seq_len ${b.max_seq_len}`,
    );
  }
  if (!Number.isInteger(params.numBeams) || params.numBeams < 1 || params.numBeams > b.max_beam_width) {
    throw new LimitError(
      `num_beams ${params.numBeams} is outside [1, ${b.max_beam_width}] (the engine's max_beam_width)`,
    );
  }
  const n = params.numReturnSequences;
  if (!Number.isInteger(n) || n < 1 || (params.numBeams > 1 && n > params.numBeams)) {
    throw new LimitError(`num_return_sequences ${n} must be a positive integer, at most num_beams when beams are used`);
  }
  validateSampling(params.sampling);
  if (!Number.isInteger(params.topLogProbs) || params.topLogProbs < 0 || params.topLogProbs > 20) {
    throw new LimitError(`top_logprobs must be an integer in [0, 20], got ${params.topLogProbs}`);
  }
  const bad = promptIds.find((t) => !Number.isInteger(t) || t < 0 || t >= e.vocabSize);
  if (bad !== undefined) throw new LimitError(`token id ${bad} is outside the vocabulary [0, ${e.vocabSize})`);
  const width = Math.max(params.numBeams, n);
  if (width > e.maxSeqs) {
    throw new LimitError(
      `num_return_sequences ${n} needs ${width} sequences at once; the engine runs max_batch_size × max_beam_width = ${e.maxSeqs}`,
    );
  }
  // Each sequence may also need one block copied when it first writes into a block it shares.
  const blocks = width * (e.blocksFor(promptIds.length + params.maxNewTokens) + 1);
  if (blocks > e.numBlocks) {
    throw new LimitError(`the request needs ${blocks} KV cache blocks, more than the pool's ${e.numBlocks}`);
  }
}
