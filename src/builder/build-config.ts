// BuildConfig: an engine's fixed limits and features, with TensorRT-LLM's field names, defaults and
// derivations (trtllm-build's _init_max_seq_len and check_max_num_tokens).

import type { PretrainedConfig } from "../checkpoint/pretrained-config.js";
import { LimitError } from "../errors.js";

export const BACKENDS = ["cpu", "cuda"] as const;
export type BackendName = (typeof BACKENDS)[number];

export const KV_CACHE_TYPES = ["PAGED", "CONTINUOUS"] as const;
export type KvCacheType = (typeof KV_CACHE_TYPES)[number];

export interface BuildConfig {
  max_input_len: number;
  max_seq_len: number;
  max_batch_size: number;
  max_beam_width: number;
  max_num_tokens: number;
  opt_num_tokens: number;
  kv_cache_type: KvCacheType;
  tokens_per_block: number;
  remove_input_padding: boolean;
  use_paged_context_fmha: boolean;
  gather_context_logits: boolean;
  gather_generation_logits: boolean;
}

/** What the user asked for; unset limits are derived from the model. */
export type BuildRequest = Partial<Omit<BuildConfig, "opt_num_tokens">>;

export const BUILD_DEFAULTS = {
  max_input_len: 1024,
  max_batch_size: 2048,
  max_beam_width: 1,
  max_num_tokens: 8192,
  kv_cache_type: "PAGED",
  tokens_per_block: 32,
  remove_input_padding: true,
  use_paged_context_fmha: true,
  gather_context_logits: false,
  gather_generation_logits: false,
} as const;

function requirePositive(req: BuildRequest, key: keyof BuildRequest): void {
  const v = req[key];
  if (v === undefined) return;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    throw new LimitError(`--${key} must be a positive integer, got ${v}`);
  }
}

/** The sequence length the model's positions support: max_position_embeddings × the rope scaling factor. */
export function modelMaxSeqLen(model: PretrainedConfig): number {
  const scaling = model.rotary_scaling;
  // TensorRT-LLM: llama3 (like su/longrope) scaling does not lengthen the window; linear does.
  const factor = scaling && scaling.type !== "llama3" ? scaling.factor : 1;
  return Math.ceil((model.max_position_embeddings ?? 2048) * factor);
}

/** Derives every unset limit and rejects contradictions, naming the flag and the reason. */
export function resolveBuildConfig(
  model: PretrainedConfig,
  req: BuildRequest,
): { config: BuildConfig; warnings: string[] } {
  const warnings: string[] = [];
  for (const k of [
    "max_input_len",
    "max_seq_len",
    "max_batch_size",
    "max_beam_width",
    "max_num_tokens",
    "tokens_per_block",
  ] as const) {
    requirePositive(req, k);
  }
  const tokensPerBlock = req.tokens_per_block ?? BUILD_DEFAULTS.tokens_per_block;
  if (!Number.isInteger(Math.log2(tokensPerBlock))) {
    throw new LimitError(`--tokens_per_block must be a power of two, got ${tokensPerBlock}`);
  }
  const modelLimit = modelMaxSeqLen(model);
  const maxSeqLen = req.max_seq_len ?? modelLimit;
  if (req.max_seq_len !== undefined && req.max_seq_len > modelLimit) {
    warnings.push(
      `--max_seq_len ${req.max_seq_len} is beyond the model's ${modelLimit} positions; quality past them is not assured`,
    );
  }
  let maxInputLen = req.max_input_len ?? BUILD_DEFAULTS.max_input_len;
  if (maxInputLen > maxSeqLen) {
    if (req.max_input_len !== undefined) {
      throw new LimitError(
        `--max_input_len ${maxInputLen} is larger than --max_seq_len ${maxSeqLen}: a prompt could not fit`,
      );
    }
    maxInputLen = maxSeqLen; // TensorRT-LLM clips the default silently
  }
  const maxBatchSize = req.max_batch_size ?? BUILD_DEFAULTS.max_batch_size;
  const maxBeamWidth = req.max_beam_width ?? BUILD_DEFAULTS.max_beam_width;
  const removeInputPadding = req.remove_input_padding ?? BUILD_DEFAULTS.remove_input_padding;
  const kvCacheType = req.kv_cache_type ?? BUILD_DEFAULTS.kv_cache_type;
  if (kvCacheType === "CONTINUOUS" && req.use_paged_context_fmha) {
    throw new LimitError("--use_paged_context_fmha needs --kv_cache_type paged");
  }
  // Chunked context (and KV reuse) work on paged blocks only.
  const pagedContextFmha =
    kvCacheType === "PAGED" && (req.use_paged_context_fmha ?? BUILD_DEFAULTS.use_paged_context_fmha);
  const ceiling = maxSeqLen * maxBatchSize;
  let maxNumTokens: number;
  if (!removeInputPadding) {
    maxNumTokens = ceiling; // padded batches: every slot may hold a whole sequence
  } else {
    maxNumTokens = req.max_num_tokens ?? Math.min(BUILD_DEFAULTS.max_num_tokens, ceiling);
    if (maxNumTokens > ceiling) maxNumTokens = ceiling;
    // Without chunked (paged) context a whole prompt must fit in one step.
    if (!pagedContextFmha && maxNumTokens < maxInputLen) {
      if (req.max_num_tokens !== undefined) {
        throw new LimitError(
          `--max_num_tokens ${maxNumTokens} is smaller than --max_input_len ${maxInputLen} and use_paged_context_fmha is off, so a long prompt could never run`,
        );
      }
      maxNumTokens = maxInputLen;
    }
    if (pagedContextFmha && maxNumTokens < tokensPerBlock) maxNumTokens = tokensPerBlock;
  }
  return {
    config: {
      max_input_len: maxInputLen,
      max_seq_len: maxSeqLen,
      max_batch_size: maxBatchSize,
      max_beam_width: maxBeamWidth,
      max_num_tokens: maxNumTokens,
      opt_num_tokens: Math.min(maxBatchSize * maxBeamWidth, maxNumTokens),
      kv_cache_type: kvCacheType,
      tokens_per_block: tokensPerBlock,
      remove_input_padding: removeInputPadding,
      use_paged_context_fmha: pagedContextFmha,
      gather_context_logits: req.gather_context_logits ?? false,
      gather_generation_logits: req.gather_generation_logits ?? false,
    },
    warnings,
  };
}
