// Request options as callers give them (camelCase, partial) resolved to full parameters, and finished
// sequences as results.

import type { BeamSearch } from "./beam-search.js";
import type { FinishedSequence, GenerationParams } from "./request.js";
import { DEFAULT_SAMPLING, type SamplingConfig } from "./sampling/index.js";
import type { Sequence } from "./sequence.js";

export type { FinishedSequence } from "./request.js";

export interface GenerateOptions extends Partial<Omit<GenerationParams, "sampling">> {
  maxNewTokens: number;
  /** Sampling settings; unset fields take TensorRT-LLM run.py's defaults (top_k 1: greedy). */
  sampling?: Partial<SamplingConfig>;
}

export function resolveParams(opts: GenerateOptions): GenerationParams {
  return {
    maxNewTokens: opts.maxNewTokens,
    endId: opts.endId ?? null,
    sampling: { ...DEFAULT_SAMPLING, topK: 1, ...opts.sampling },
    numBeams: opts.numBeams ?? 1,
    numReturnSequences: opts.numReturnSequences ?? 1,
    lengthPenalty: opts.lengthPenalty ?? 1,
    earlyStopping: opts.earlyStopping ?? true,
    stopWords: opts.stopWords ?? [],
    topLogProbs: opts.topLogProbs ?? 0,
  };
}

export function finishSampled(seq: Sequence): FinishedSequence {
  return {
    outputIds: seq.outputIds,
    logProbs: [...seq.logProbs],
    topLogProbs: seq.topLogProbs,
    cumLogProb: seq.cumLogProb,
    score: seq.cumLogProb,
    finishReason: seq.finishReason ?? "length",
    generationLogits: seq.generationLogits,
  };
}

export function finishedFromBeams(beam: BeamSearch, endId: number | null): FinishedSequence[] {
  return beam.finished.map((h) => ({
    outputIds: h.tokens,
    logProbs: h.logProbs,
    topLogProbs: [],
    cumLogProb: h.cumLogProb,
    score: h.score,
    finishReason: endId !== null && h.tokens[h.tokens.length - 1] === endId ? "end_id" : "length",
    generationLogits: [],
  }));
}
