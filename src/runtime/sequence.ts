// The one mutable record per request: its tokens, KV blocks, how much is cached, and what it has produced.

export interface SamplingParams {
  /** Most tokens to generate (the prompt excluded). */
  maxNewTokens: number;
  /** Generation stops after this token (kept in the output); null never stops early. */
  endId: number | null;
}

export type SequenceStatus = "waiting" | "running" | "finished";
export type FinishReason = "length" | "end_id";

export class Sequence {
  readonly tokenIds: number[];
  readonly numPromptTokens: number;
  /** Tokens whose keys and values are in the KV cache. */
  numCachedTokens = 0;
  blockTable: number[] = [];
  status: SequenceStatus = "waiting";
  finishReason: FinishReason | null = null;
  /** Logits rows the engine was built to gather: one per prompt position, one per generated token. */
  readonly contextLogits: Float32Array[] = [];
  readonly generationLogits: Float32Array[] = [];

  constructor(
    readonly id: number,
    promptIds: readonly number[],
    readonly params: SamplingParams,
  ) {
    this.tokenIds = [...promptIds];
    this.numPromptTokens = promptIds.length;
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

  /** Tokens not yet in the cache: the rest of the prompt, or the one just sampled. */
  get numUncachedTokens(): number {
    return this.numTokens - this.numCachedTokens;
  }

  get isPrefilling(): boolean {
    return this.numCachedTokens < this.numPromptTokens;
  }
}
