// A generation request: its prompt and parameters, the sequences running for it, and the finished ones.

import type { BeamSearch } from "./beam-search.js";
import type { SamplingConfig } from "./sampling/params.js";
import type { Rng } from "./sampling/rng.js";
import type { FinishReason, Sequence } from "./sequence.js";

export interface GenerationParams {
  /** Most tokens to generate (the prompt excluded). */
  maxNewTokens: number;
  /** Generation stops after this token (kept in the output); null never stops early. */
  endId: number | null;
  sampling: SamplingConfig;
  /** Beam width; 1 samples (or decodes greedily). */
  numBeams: number;
  /** Sequences returned: sampled independently, or the best beams. */
  numReturnSequences: number;
  /** Beam score = cumulative log prob / generated length ** lengthPenalty. */
  lengthPenalty: number;
  /** Beam search ends as soon as numBeams hypotheses are finished. */
  earlyStopping: boolean;
  /** Token sequences that end generation when the output ends with one (kept in the output). */
  stopWords: number[][];
  /** Alternatives to report with each generated token's log probability (0: none). */
  topLogProbs: number;
}

export type RequestStatus = "waiting" | "running" | "finished";

/** A token and its log probability. */
export interface TokenLogProb {
  token: number;
  logProb: number;
}

export interface FinishedSequence {
  outputIds: number[];
  logProbs: number[];
  /** The most likely tokens at each step, when topLogProbs was asked for. */
  topLogProbs: TokenLogProb[][];
  cumLogProb: number;
  /** The beam score (length-normalised); for sampled sequences, the cumulative log prob. */
  score: number;
  finishReason: FinishReason;
  generationLogits: Float32Array[];
}

export class Request {
  status: RequestStatus = "waiting";
  /** Sequences still generating. */
  seqs: Sequence[];
  /** Every sampled sequence in creation order (the first, then its num_return_sequences siblings). */
  readonly allSeqs: Sequence[];
  readonly finished: FinishedSequence[] = [];
  readonly rngs = new Map<Sequence, Rng>();
  beam: BeamSearch | null = null;
  /** One row per prompt position, when the engine gathers context logits. */
  readonly contextLogits: Float32Array[] = [];
  /** Prompt tokens computed by this request (those reused from the cache excluded). */
  numComputedPromptTokens = 0;
  /** Called when the request gains tokens or finishes (streaming). */
  onProgress: (() => void) | null = null;

  /** Sequences this request runs at its widest. */
  get width(): number {
    return Math.max(this.params.numBeams, this.params.numReturnSequences);
  }

  constructor(
    readonly id: number,
    readonly promptIds: readonly number[],
    readonly params: GenerationParams,
    first: Sequence,
  ) {
    this.seqs = [first];
    this.allSeqs = [first];
  }
}
