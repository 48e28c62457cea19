// The one mutable record per generated sequence: its tokens, KV blocks, how much is cached, and what it
// has produced. A request owns one sequence, or several (beams, num_return_sequences).

export type FinishReason = "length" | "end_id" | "stop_words" | "aborted";

export class Sequence {
  readonly tokenIds: number[];
  /** Tokens whose keys and values are in the KV cache. */
  numCachedTokens = 0;
  blockTable: number[] = [];
  /** Prefix hashes of the full blocks registered for KV reuse, and how many there are. */
  blockHashes: string[] = [];
  numHashedBlocks = 0;
  /** The logits row of the last token once computed, waiting for the sampler or the beam search. */
  pendingLogits: Float32Array | null = null;
  /** Or, on the greedy fast path, the token the backend already chose, with its log probability. */
  pendingChoice: { token: number; logProb: number } | null = null;
  /** Log probability of each generated token, and their sum. */
  logProbs: number[] = [];
  cumLogProb = 0;
  /** The most likely alternatives at each generated token, when asked for. */
  topLogProbs: { token: number; logProb: number }[][] = [];
  generationLogits: Float32Array[] = [];
  finishReason: FinishReason | null = null;

  constructor(
    readonly id: number,
    tokenIds: readonly number[],
    readonly numPromptTokens: number,
  ) {
    this.tokenIds = [...tokenIds];
  }

  get numTokens(): number {
    return this.tokenIds.length;
  }

  get outputIds(): number[] {
    return this.tokenIds.slice(this.numPromptTokens);
  }

  get numOutputTokens(): number {
    return this.tokenIds.length - this.numPromptTokens;
  }

  /** Tokens not yet in the cache: the rest of the prompt, or the one just chosen. */
  get numUncachedTokens(): number {
    return this.numTokens - this.numCachedTokens;
  }

  /** A copy of the token history and outputs so far, for a beam or a sampled sibling (no KV blocks). */
  branch(id: number): Sequence {
    const s = new Sequence(id, this.tokenIds, this.numPromptTokens);
    s.logProbs = [...this.logProbs];
    s.topLogProbs = [...this.topLogProbs];
    s.cumLogProb = this.cumLogProb;
    s.generationLogits = [...this.generationLogits];
    return s;
  }
}
