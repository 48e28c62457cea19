// What an engine will need in memory: weights, per-step activations, and KV cache per token. A build that
// cannot hold its weights, its activations and one full-length sequence's KV cache is refused.

import os from "node:os";
import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { LimitError } from "../errors.js";
import type { DecoderDims } from "../models/decoder.js";
import type { BuildConfig } from "./build-config.js";

export interface MemoryPlan {
  weightsBytes: number;
  activationBytes: number;
  kvBytesPerToken: number;
  /** KV cache for max_batch_size × max_beam_width sequences of max_seq_len tokens. */
  fullKvPoolBytes: number;
  /** Memory the target has. */
  capacityBytes: number;
}

const GiB = 2 ** 30;

export function planMemory(
  model: PretrainedConfig,
  /** The rank's share of the model (its layers and heads). */
  dims: DecoderDims,
  build: BuildConfig,
  weightsBytes: number,
  bytesPerValue = 4,
  /** Bytes a cached key or value takes (an int8 KV cache: 1). */
  kvBytesPerValue = bytesPerValue,
): MemoryPlan {
  const H = model.hidden_size;
  const D = dims.headSize;
  const qkv = (dims.numHeads + 2 * dims.numKvHeads) * D;
  // Live per token during a step: residual, normed input, qkv, attention output, fc, gate and their product.
  const perToken = 3 * H + qkv + dims.numHeads * D + 3 * dims.intermediate;
  const logitRows = build.gather_context_logits ? build.max_num_tokens : build.max_batch_size * build.max_beam_width;
  const activationBytes = (build.max_num_tokens * perToken + logitRows * model.vocab_size) * bytesPerValue;
  const kvBytesPerToken = dims.layers.length * 2 * dims.numKvHeads * D * kvBytesPerValue;
  return {
    weightsBytes,
    activationBytes,
    kvBytesPerToken,
    fullKvPoolBytes: kvBytesPerToken * build.max_batch_size * build.max_beam_width * build.max_seq_len,
    capacityBytes: os.totalmem(),
  };
}

export function checkMemoryPlan(plan: MemoryPlan, build: BuildConfig): void {
  const oneSequence = plan.kvBytesPerToken * build.max_seq_len * build.max_beam_width;
  const needed = plan.weightsBytes + plan.activationBytes + oneSequence;
  if (needed > plan.capacityBytes) {
    throw new LimitError(
      `the engine needs ${(needed / GiB).toFixed(1)} GiB (weights ${(plan.weightsBytes / GiB).toFixed(2)}, activations ${(plan.activationBytes / GiB).toFixed(2)}, KV cache for one max_seq_len ${build.max_seq_len} sequence ${(oneSequence / GiB).toFixed(2)}) but the target has ${(plan.capacityBytes / GiB).toFixed(1)} GiB: lower --max_num_tokens, --max_seq_len or --max_beam_width`,
    );
  }
}

export function describeMemoryPlan(plan: MemoryPlan): string {
  const f = (b: number) => (b >= GiB ? `${(b / GiB).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
  return `memory: weights ${f(plan.weightsBytes)}, activations ${f(plan.activationBytes)}, KV cache ${f(plan.kvBytesPerToken * 1024)} per 1k tokens (${f(plan.fullKvPoolBytes)} for every sequence at full length), target ${f(plan.capacityBytes)}`;
}
