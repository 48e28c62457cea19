// Specification of token sampling: each rule checked against an independent closed form — worked examples of
// every processor and mask first, then sweeps and a chi-square test of the sampler, then the PRNG against
// outputs of the C reference (splitmix64 seeding xoshiro128**).

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LimitError } from "../src/errors.js";
import {
  applyBadWords,
  applyPresenceFrequency,
  applyRepetitionPenalty,
  DEFAULT_SAMPLING,
  isGreedy,
  logSoftmax,
  minPMask,
  Rng,
  type SamplingConfig,
  sampleToken,
  type TokenHistory,
  topKMask,
  topPMask,
  validateSampling,
} from "../src/runtime/sampling/index.js";

const cfg = (over: Partial<SamplingConfig> = {}): SamplingConfig => ({ ...DEFAULT_SAMPLING, ...over });
const noHistory: TokenHistory = { promptIds: [], outputIds: [] };

/** softmax in float64, written out independently of the sampler. */
function softmax(xs: ArrayLike<number>): number[] {
  const m = Math.max(...Array.from(xs));
  const e = Array.from(xs, (x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

const nonZero = (w: ArrayLike<number>): number[] => Array.from(w).flatMap((v, i) => (v > 0 ? [i] : []));

/** Every token the sampler draws for `row` over seeds 0..999. */
function drawnTokens(row: Float32Array, c: SamplingConfig): number[] {
  const seen = new Set<number>();
  for (let seed = 0; seed < 1000; seed++) seen.add(sampleToken(row.slice(), c, noHistory, new Rng(seed)).token);
  return [...seen].sort((a, b) => a - b);
}

// softmax(log p) = p exactly, up to float32 rounding of the logits.
const KNOWN_PROBS = [0.4, 0.3, 0.15, 0.1, 0.05];
const KNOWN_LOGITS = Float32Array.from(KNOWN_PROBS, Math.log);

describe("logits processors (worked examples)", () => {
  it("repetition penalty divides positive and multiplies negative logits of prompt ∪ output, once per token", () => {
    const logits = Float32Array.from([2, -1, 0.5, 3, -2]);
    applyRepetitionPenalty(logits, { promptIds: [0, 1], outputIds: [1, 3, 3] }, 2);
    // token 0: 2/2; token 1: −1·2; token 2 unseen; token 3: 3/2 once despite two occurrences; token 4 unseen.
    assert.deepEqual(Array.from(logits), [1, -2, 0.5, 1.5, -2]);
  });

  it("presence and frequency penalties subtract presence·[count>0] + frequency·count over generated tokens", () => {
    const logits = Float32Array.from([2, -1, 0.5, 3, -2]);
    applyPresenceFrequency(logits, [1, 3, 3], 0.5, 0.25);
    // token 1: −1 − (0.5 + 0.25); token 3: 3 − (0.5 + 2·0.25); prompt tokens are not the processor's concern.
    assert.deepEqual(Array.from(logits), [2, -1.75, 0.5, 2, -2]);
  });

  it("bad words ban the last token of each word whose prefix ends the history", () => {
    const logits = new Float32Array(10);
    applyBadWords(logits, [5, 7, 2], [[9], [7, 2, 4], [2, 1], [5, 8], [3, 5, 7, 2, 6]]);
    // [9] always; [7,2,4]: history ends 7,2; [2,1]: ends 2; [5,8]: does not end 5; [3,5,7,2,6]: prefix longer than history.
    assert.deepEqual(nonZero(logits.map((v) => (v === Number.NEGATIVE_INFINITY ? 1 : 0))), [1, 4, 9]);
  });

  it("the sampler matches bad words across the prompt/output boundary", () => {
    const logits = Float32Array.from([0, 0, 0, 0, 5, 1]);
    const history = { promptIds: [5, 7], outputIds: [2] };
    const r = sampleToken(logits, cfg({ temperature: 0, badWords: [[7, 2, 4]] }), history, new Rng(0));
    assert.equal(r.token, 5);
  });
});

describe("truncation masks on the known distribution [0.4, 0.3, 0.15, 0.1, 0.05]", () => {
  const exact = () => Float64Array.from(KNOWN_PROBS);
  const fromLogits = () => Float64Array.from(softmax(KNOWN_LOGITS));
  /** The indices `mask` leaves non-zero. */
  const kept = (w: Float64Array, mask: (w: Float64Array, param: number) => void, param: number) => {
    mask(w, param);
    return nonZero(w);
  };

  for (const [name, weights] of [
    ["exact probabilities", exact],
    ["softmax of float32 logits", fromLogits],
    ["unnormalised weights ×10", () => exact().map((p) => p * 10)],
  ] as const) {
    it(`top-p keeps the smallest most-probable prefix whose mass reaches p (${name})`, () => {
      assert.deepEqual(kept(weights(), topPMask, 0.7), [0, 1]);
      assert.deepEqual(kept(weights(), topPMask, 0.71), [0, 1, 2]);
      assert.deepEqual(kept(weights(), topPMask, 0.3), [0]);
      assert.deepEqual(kept(weights(), topPMask, 1e-9), [0]);
      assert.deepEqual(kept(weights(), topPMask, 1.0), [0, 1, 2, 3, 4]);
      assert.deepEqual(kept(weights(), topPMask, 0), [0, 1, 2, 3, 4]);
    });

    it(`min-p 0.3 keeps p ≥ 0.3·0.4 = 0.12 (${name})`, () => {
      assert.deepEqual(kept(weights(), minPMask, 0.3), [0, 1, 2]);
      assert.deepEqual(kept(weights(), minPMask, 1), [0]);
    });
  }

  it("top-k keeps exactly k, the lowest indices among ties at the boundary", () => {
    const w = Float64Array.from([1, 3, 3, 3, 2]);
    topKMask(w, 2);
    assert.deepEqual(Array.from(w), [0, 3, 3, 0, 0]);
    const w4 = Float64Array.from([1, 3, 3, 3, 2]);
    topKMask(w4, 4);
    assert.deepEqual(Array.from(w4), [0, 3, 3, 3, 2]);
  });

  it("the sampler draws exactly the tokens each mask keeps", () => {
    assert.deepEqual(drawnTokens(KNOWN_LOGITS, cfg({ topP: 0.7 })), [0, 1]);
    assert.deepEqual(drawnTokens(KNOWN_LOGITS, cfg({ topP: 0.71 })), [0, 1, 2]);
    assert.deepEqual(drawnTokens(KNOWN_LOGITS, cfg({ topP: 1.0 })), [0, 1, 2, 3, 4]);
    assert.deepEqual(drawnTokens(KNOWN_LOGITS, cfg({ minP: 0.3 })), [0, 1, 2]);
    assert.deepEqual(drawnTokens(KNOWN_LOGITS, cfg({ topK: 3 })), [0, 1, 2]);
  });
});

describe("log-probabilities", () => {
  it("greedy reports log_softmax at the argmax: [1, 2, 3] → 3 − ln(e + e² + e³) = −ln(1 + e⁻¹ + e⁻²)", () => {
    const r = sampleToken(Float32Array.from([1, 2, 3]), cfg({ temperature: 0 }), noHistory, new Rng(0));
    assert.equal(r.token, 2);
    assert.ok(Math.abs(r.logProb - -Math.log(1 + Math.exp(-1) + Math.exp(-2))) < 1e-15);
    assert.ok(Math.abs(r.logProb - -0.40760596444438) < 1e-13);
    const ls = logSoftmax(Float32Array.from([1, 2, 3]));
    assert.ok(Math.abs(ls[0] - (r.logProb - 2)) < 1e-15 && Math.abs(ls[1] - (r.logProb - 1)) < 1e-15);
  });

  it("sampling reports the probability before truncation, not renormalised by top-p", () => {
    for (let seed = 0; seed < 50; seed++) {
      const r = sampleToken(KNOWN_LOGITS.slice(), cfg({ topP: 0.7 }), noHistory, new Rng(seed));
      assert.ok(Math.abs(r.logProb - Math.log(KNOWN_PROBS[r.token])) < 1e-6, `${r.logProb} for token ${r.token}`);
    }
  });

  it("greedy reports the penalised distribution", () => {
    const history = { promptIds: [], outputIds: [2] };
    const r = sampleToken(
      Float32Array.from([1, 2, 3]),
      cfg({ temperature: 0, repetitionPenalty: 2 }),
      history,
      new Rng(0),
    );
    // token 2's logit becomes 1.5, so token 1 wins with log_softmax([1, 2, 1.5])[1].
    assert.equal(r.token, 1);
    assert.ok(Math.abs(r.logProb - Math.log(softmax([1, 2, 1.5])[1])) < 1e-12);
  });
});

describe("sampler sweeps", () => {
  it("top_k = 1 at temperature 0.7 equals argmax on 200 random rows", () => {
    const data = new Rng(12345);
    for (let row = 0; row < 200; row++) {
      const logits = Float32Array.from({ length: 1000 }, () => (data.next() - 0.5) * 20);
      const expected = logits.indexOf(Math.max(...logits));
      const r = sampleToken(logits.slice(), cfg({ topK: 1, temperature: 0.7 }), noHistory, new Rng(row));
      assert.equal(r.token, expected, `row ${row}`);
      const w = Float64Array.from(softmax(logits));
      topKMask(w, 1);
      assert.deepEqual(nonZero(w), [expected]);
    }
  });

  it("temperature 0.8 draws pass a chi-square test against softmax(logits / 0.8)", () => {
    const logits = Float32Array.from([1, 0.5, 0, -0.5, 2, -1]);
    const expected = softmax(Array.from(logits, (l) => l / 0.8));
    const draws = 20000;
    const counts = new Array<number>(6).fill(0);
    const rng = new Rng(2024);
    for (let i = 0; i < draws; i++)
      counts[sampleToken(logits.slice(), cfg({ temperature: 0.8 }), noHistory, rng).token]++;
    const chi2 = counts.reduce((s, c, i) => s + (c - draws * expected[i]) ** 2 / (draws * expected[i]), 0);
    assert.ok(chi2 < 20.52, `chi-square ${chi2.toFixed(2)} ≥ 20.52 (5 dof, p = 0.001); counts ${counts}`);
  });

  it("the same seed gives the same tokens; different seeds give different ones", () => {
    const flat = new Float32Array(64);
    const run = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: 32 }, () => sampleToken(flat.slice(), cfg(), noHistory, rng).token);
    };
    assert.deepEqual(run(7), run(7));
    assert.notDeepEqual(run(7), run(8));
    assert.notDeepEqual(run(0), run(1));
  });
});

describe("parameters", () => {
  const rejects = (over: Partial<SamplingConfig>, message: string) =>
    assert.throws(
      () => validateSampling(cfg(over)),
      (e: unknown) => e instanceof LimitError && e.message.startsWith(message),
      `${JSON.stringify(over)} should be refused with "${message}…"`,
    );

  it("names the flag and the expected range", () => {
    rejects({ topP: 1.5 }, "--top_p must be in [0, 1], got 1.5");
    rejects({ topP: -0.1 }, "--top_p must be in [0, 1], got -0.1");
    rejects({ minP: 2 }, "--min_p must be in [0, 1], got 2");
    for (const temperature of [-1, Number.NaN, Number.POSITIVE_INFINITY]) rejects({ temperature }, "--temperature ");
    for (const topK of [-1, 1.5]) rejects({ topK }, "--top_k ");
    for (const repetitionPenalty of [0, -1]) rejects({ repetitionPenalty }, "--repetition_penalty ");
    rejects({ presencePenalty: Number.NaN }, "--presence_penalty ");
    rejects({ frequencyPenalty: Number.POSITIVE_INFINITY }, "--frequency_penalty ");
    for (const seed of [-1, 1.5, 2 ** 53]) rejects({ seed }, "--random_seed ");
    rejects({ badWords: [[1], []] }, "--bad_words[1] ");
    rejects({ badWords: [[1, -2]] }, "--bad_words[0] ");
  });

  it("accepts the defaults and the edges of each range", () => {
    validateSampling(DEFAULT_SAMPLING);
    validateSampling(cfg({ temperature: 0, topK: 0, topP: 0, minP: 1, seed: 2 ** 53 - 1, badWords: [[0], [1, 2]] }));
    validateSampling(cfg({ topP: 1, minP: 0, repetitionPenalty: 1e-3, presencePenalty: -2, frequencyPenalty: 2 }));
  });

  it("is greedy at temperature 0 or top_k 1", () => {
    assert.equal(isGreedy(cfg({ temperature: 0 })), true);
    assert.equal(isGreedy(cfg({ topK: 1 })), true);
    assert.equal(isGreedy(cfg({ topK: 2, temperature: 0.1 })), false);
  });
});

describe("Rng", () => {
  it("matches the C reference (splitmix64 → xoshiro128** 1.1) word for word", () => {
    const reference: [number, number[]][] = [
      [0, [3737715805, 2584255861, 2876756834, 3286328325, 1553311962, 1625202774]],
      [42, [1776835114, 4165204688, 17111135, 2317295270, 2792088233, 2554630222]],
      [2 ** 53 - 1, [1233166643, 1287031142, 661813442, 2960669951, 2601079046, 1036114921]],
    ];
    for (const [seed, words] of reference) {
      const rng = new Rng(seed);
      assert.deepEqual(
        words.map(() => rng.nextUint32()),
        words,
        `seed ${seed}`,
      );
    }
  });

  it("next() is uniform on [0, 1)", () => {
    const rng = new Rng(99);
    let sum = 0;
    for (let i = 0; i < 100000; i++) {
      const u = rng.next();
      assert.ok(u >= 0 && u < 1);
      sum += u;
    }
    // The mean of 1e5 uniforms has standard deviation 1/sqrt(12e5) ≈ 0.00091; 5σ ≈ 0.0046.
    assert.ok(Math.abs(sum / 100000 - 0.5) < 0.0046);
  });
});
