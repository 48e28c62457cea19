// The sampling parameters a request names, their defaults and their validation. Field names are camelCase here;
// errors name the snake_case CLI flags kept from TensorRT-LLM, because that is what the user typed.

import { LimitError } from "../../errors.js";

export interface SamplingConfig {
  /** Divides the logits before softmax; 0 means greedy. */
  temperature: number;
  /** Keep only the k most probable tokens; 0 means off. */
  topK: number;
  /** Nucleus mass to keep; 1 means off, and so does 0 (TensorRT-LLM's convention). */
  topP: number;
  /** Keep tokens at least this fraction as probable as the most probable one; 0 means off. */
  minP: number;
  /** HF/TensorRT-LLM multiplicative penalty on every token seen in prompt or output; 1 means off. */
  repetitionPenalty: number;
  /** OpenAI additive penalty on every token generated at least once; 0 means off. */
  presencePenalty: number;
  /** OpenAI additive penalty per generated occurrence of a token; 0 means off. */
  frequencyPenalty: number;
  /** Seeds this request's own random stream, so its tokens do not depend on what else is batched with it. */
  seed: number;
  /** Token sequences never to complete: the last token of each is banned whenever the history ends with the rest. */
  badWords: readonly (readonly number[])[];
}

export const DEFAULT_SAMPLING: Readonly<SamplingConfig> = Object.freeze({
  temperature: 1.0,
  topK: 0,
  topP: 1.0,
  minP: 0,
  repetitionPenalty: 1,
  presencePenalty: 0,
  frequencyPenalty: 0,
  seed: 0,
  badWords: Object.freeze([]),
});

type NumericField = Exclude<keyof SamplingConfig, "badWords">;

const inUnitInterval = (v: number): boolean => v >= 0 && v <= 1;

/** Each numeric field's flag, its rule and how the rule reads in an error. NaN fails every rule. */
const NUMERIC_RULES: Record<NumericField, { flag: string; ok: (v: number) => boolean; expected: string }> = {
  temperature: {
    flag: "--temperature",
    ok: (v) => v >= 0 && v < Infinity,
    expected: "a finite number >= 0 (0 means greedy)",
  },
  topK: { flag: "--top_k", ok: (v) => Number.isSafeInteger(v) && v >= 0, expected: "an integer >= 0 (0 means off)" },
  topP: { flag: "--top_p", ok: inUnitInterval, expected: "in [0, 1]" },
  minP: { flag: "--min_p", ok: inUnitInterval, expected: "in [0, 1]" },
  repetitionPenalty: {
    flag: "--repetition_penalty",
    ok: (v) => v > 0 && v < Infinity,
    expected: "a finite number > 0",
  },
  presencePenalty: { flag: "--presence_penalty", ok: Number.isFinite, expected: "a finite number" },
  frequencyPenalty: { flag: "--frequency_penalty", ok: Number.isFinite, expected: "a finite number" },
  seed: {
    flag: "--random_seed",
    ok: (v) => Number.isSafeInteger(v) && v >= 0,
    expected: "an integer in [0, 2^53 - 1]",
  },
};

/** Throws a LimitError naming the first flag whose value is out of range. */
export function validateSampling(c: SamplingConfig): void {
  for (const field of Object.keys(NUMERIC_RULES) as NumericField[]) {
    const rule = NUMERIC_RULES[field];
    const v = c[field];
    if (typeof v !== "number" || !rule.ok(v)) throw new LimitError(`${rule.flag} must be ${rule.expected}, got ${v}`);
  }
  c.badWords.forEach((word, i) => {
    if (word.length === 0 || !word.every((t) => Number.isSafeInteger(t) && t >= 0)) {
      throw new LimitError(`--bad_words[${i}] must be a non-empty list of token ids (integers >= 0), got [${word}]`);
    }
  });
}

/** Greedy decoding: temperature 0 is its limit, and top-k 1 leaves a single candidate anyway. */
export function isGreedy(c: SamplingConfig): boolean {
  return c.temperature === 0 || c.topK === 1;
}
