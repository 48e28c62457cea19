// The runtime as a server uses it: requests arriving while others run, limits, KV reuse, chunked and padded
// steps, preemption, streaming and aborts — each checked against the same request run alone, against
// transformers' recorded outputs, or against a count the test can work out.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { LimitError } from "../src/errors.js";
import { type GenerateOptions, isFailure, LLM } from "../src/runtime/llm.js";
import { FIXTURES, fixtureEngine, loadReference, maxAbsDiff, stackRows, succeeded, tempDir } from "./helpers.js";

const work = tempDir("kiln-runtime-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

const FIXTURE = "qwen2_tied_gqa";
const ref = loadReference(FIXTURE);

/** Deterministic pseudo-random prompts: the test's own LCG, so the workload is fixed. */
function prompts(count: number, seed: number, maxLen = 60): number[][] {
  let s = seed;
  const next = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s;
  };
  return Array.from({ length: count }, () => Array.from({ length: 1 + (next() % maxLen) }, () => next() % ref.vocab));
}

function alone(llm: LLM, prompt: number[], opts: GenerateOptions): number[] {
  return succeeded(llm.generate([prompt], opts))[0].outputIds;
}

function assertAllBlocksFree(llm: LLM): void {
  assert.equal(llm.numFreeKvBlocks, llm.numKvBlocks, "every KV block is free again");
}

describe("in-flight batching", () => {
  test("16 prompts of different lengths arriving at different times give exactly what each gives alone", async () => {
    const engine = await fixtureEngine(work, FIXTURE, { max_batch_size: 4, max_num_tokens: 48, tokens_per_block: 16 });
    const llm = await LLM.load(engine);
    const ps = prompts(16, 7);
    const opts = (i: number): GenerateOptions => ({ maxNewTokens: 4 + (i % 9), endId: null });
    const expected = ps.map((p, i) => alone(llm, p, opts(i)));
    const requests = [];
    let steps = 0;
    for (let i = 0; i < ps.length; i++) {
      requests.push(llm.submit(ps[i], opts(i)));
      for (let k = 0; k < i % 3; k++, steps++) llm.step(); // 0–2 steps between arrivals
    }
    while (llm.hasWork) {
      llm.step();
      steps++;
    }
    for (const [i, r] of requests.entries()) assert.deepEqual(llm.result(r).outputIds, expected[i], `prompt ${i}`);
    assert.ok(steps < expected.reduce((n, e) => n + e.length, 0), "requests shared steps");
    assertAllBlocksFree(llm);
  });

  test("a pool too small for everyone preempts and recomputes, with the same outputs", async () => {
    const engine = await fixtureEngine(work, FIXTURE, { max_batch_size: 8, tokens_per_block: 16 });
    const llm = await LLM.load(engine, { kvCacheTokens: 128 }); // 8 blocks: two long sequences at most
    const ps = prompts(6, 11, 40).map((p) => [...p, ...p].slice(0, 40));
    const opts = { maxNewTokens: 20, endId: null };
    const expected = ps.map((p) => alone(llm, p, opts));
    const outs = succeeded(llm.generate(ps, opts));
    assert.ok(llm.numPreemptions > 0, "the pool ran dry at least once");
    for (const [i, o] of outs.entries()) assert.deepEqual(o.outputIds, expected[i], `prompt ${i}`);
    assertAllBlocksFree(llm);
  });
});

describe("limits", () => {
  test("a request past a limit fails alone with a clear error; the others finish", async () => {
    const engine = await fixtureEngine(work, FIXTURE, { max_input_len: 32, max_seq_len: 48, max_beam_width: 2 });
    const llm = await LLM.load(engine);
    const ok = ref.prompts[1].inputIds;
    const results = llm.generate([ok, Array(40).fill(5), ok], { maxNewTokens: 8, endId: null });
    assert.ok(isFailure(results[1]) && results[1].error instanceof LimitError);
    assert.match((results[1] as { error: Error }).error.message, /max_input_len 32/);
    assert.deepEqual(results[0], results[2]);
    assert.throws(() => llm.submit(ok, { maxNewTokens: 48 }), /max_seq_len 48/);
    assert.throws(() => llm.submit(ok, { maxNewTokens: 4, numBeams: 3 }), /max_beam_width/);
    assertAllBlocksFree(llm);
  });
});

describe("beam search", () => {
  for (const name of ["qwen2_tied_gqa", "qwen2_untied_mqa", "llama3_rope_scaling", "llama_tied_mha"]) {
    test(`num_beams 4 returns transformers' beams and scores: ${name}`, async () => {
      const r = loadReference(name);
      const llm = await LLM.load(await fixtureEngine(work, name, { max_beam_width: 4 }));
      const outs = succeeded(
        llm.generate(
          r.prompts.map((p) => p.inputIds),
          {
            maxNewTokens: 16,
            endId: r.eosId,
            numBeams: 4,
            numReturnSequences: 4,
            lengthPenalty: 1,
            earlyStopping: true,
          },
        ),
      );
      r.prompts.forEach((p, i) => {
        assert.deepEqual(
          outs[i].sequences.map((s) => s.outputIds),
          p.beamIds,
          `prompt ${i} beams`,
        );
        const scores = outs[i].sequences.map((s) => s.score);
        assert.ok(
          maxAbsDiff(scores, p.beamScores) < 1e-4,
          `prompt ${i} scores ${scores} vs ${Array.from(p.beamScores)}`,
        );
      });
      assertAllBlocksFree(llm);
    });
  }
});

describe("sampling through the engine", () => {
  test("a seed reproduces a sampled run; top_k 1 equals greedy", async () => {
    const llm = await LLM.load(await fixtureEngine(work, FIXTURE));
    const p = ref.prompts.map((x) => x.inputIds);
    const sampled = (seed: number) =>
      succeeded(
        llm.generate(p, { maxNewTokens: 12, endId: null, sampling: { topK: 0, temperature: 1.2, topP: 0.95, seed } }),
      ).map((o) => o.outputIds);
    assert.deepEqual(sampled(3), sampled(3));
    assert.notDeepEqual(sampled(3), sampled(4));
    const greedy = succeeded(llm.generate(p, { maxNewTokens: 12, endId: null })).map((o) => o.outputIds);
    const topK1 = succeeded(
      llm.generate(p, { maxNewTokens: 12, endId: null, sampling: { topK: 1, temperature: 0.7, seed: 9 } }),
    );
    assert.deepEqual(
      topK1.map((o) => o.outputIds),
      greedy,
    );
    assertAllBlocksFree(llm);
  });

  test("num_return_sequences samples several sequences, best cumulative log prob first", async () => {
    const llm = await LLM.load(await fixtureEngine(work, FIXTURE));
    const [out] = succeeded(
      llm.generate([ref.prompts[2].inputIds], {
        maxNewTokens: 10,
        endId: null,
        numReturnSequences: 3,
        sampling: { topK: 0, seed: 1 },
      }),
    );
    assert.equal(out.sequences.length, 3);
    const cums = out.sequences.map((s) => s.cumLogProb);
    assert.deepEqual(
      cums,
      [...cums].sort((a, b) => b - a),
    );
    for (const s of out.sequences) assert.ok(Math.abs(s.logProbs.reduce((a, b) => a + b, 0) - s.cumLogProb) < 1e-9);
    assertAllBlocksFree(llm);
  });

  test("stop words end generation after the words; bad words never appear", async () => {
    const llm = await LLM.load(await fixtureEngine(work, FIXTURE));
    const p = ref.prompts[3].inputIds;
    const greedy = alone(llm, p, { maxNewTokens: 16, endId: null });
    const stop = greedy.slice(3, 5);
    const [stopped] = succeeded(llm.generate([p], { maxNewTokens: 16, endId: null, stopWords: [stop] }));
    assert.deepEqual(stopped.outputIds, greedy.slice(0, 5));
    assert.equal(stopped.finishReason, "stop_words");
    const [banned] = succeeded(
      llm.generate([p], { maxNewTokens: 16, endId: null, sampling: { badWords: [[greedy[0]]] } }),
    );
    assert.ok(!banned.outputIds.includes(greedy[0]));
  });
});

describe("KV cache", () => {
  test("KV reuse: a second request sharing a 96-token prefix computes only its new tokens, with the same output", async () => {
    const engine = await fixtureEngine(work, FIXTURE, { tokens_per_block: 32 });
    const llm = await LLM.load(engine);
    const prefix = prompts(1, 5, 1)[0]
      .concat(...prompts(96, 6, 1))
      .slice(0, 96);
    const first = [...prefix, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];
    const second = [...prefix, 30, 31, 32, 33, 34, 35, 36];
    const opts = { maxNewTokens: 8, endId: null };
    const [a] = succeeded(llm.generate([first], opts));
    assert.equal(a.numComputedPromptTokens, first.length);
    const [b] = succeeded(llm.generate([second], opts));
    assert.equal(b.numComputedPromptTokens, 7, "only the 7 new tokens were scheduled");
    const fresh = await LLM.load(engine);
    assert.deepEqual(b.outputIds, alone(fresh, second, opts));
    assertAllBlocksFree(llm);
  });

  test("chunked context gives the same logits as one pass", async () => {
    const chunked = await LLM.load(
      await fixtureEngine(work, FIXTURE, { max_num_tokens: 16, tokens_per_block: 16, gather_context_logits: true }),
    );
    const whole = await LLM.load(await fixtureEngine(work, FIXTURE, { gather_context_logits: true }));
    const p = ref.prompts[3];
    const [c] = succeeded(chunked.generate([p.inputIds], { maxNewTokens: 4, endId: null }));
    const [w] = succeeded(whole.generate([p.inputIds], { maxNewTokens: 4, endId: null }));
    assert.ok(maxAbsDiff(stackRows(c.contextLogits!, ref.vocab), stackRows(w.contextLogits!, ref.vocab)) < 1e-5);
    assert.ok(maxAbsDiff(stackRows(c.contextLogits!, ref.vocab), p.contextLogits) <= 1e-3);
    assert.deepEqual(c.outputIds, w.outputIds);
    assertAllBlocksFree(chunked);
    assertAllBlocksFree(whole);
  });

  test("padded steps (remove_input_padding disable) and a continuous KV cache give the same outputs", async () => {
    const ps = prompts(5, 21, 30);
    const opts = { maxNewTokens: 6, endId: null };
    const packed = await LLM.load(await fixtureEngine(work, FIXTURE));
    const expected = succeeded(packed.generate(ps, opts)).map((o) => o.outputIds);
    const padded = await LLM.load(await fixtureEngine(work, FIXTURE, { remove_input_padding: false }));
    const first = padded.submit(ps[0], opts);
    padded.submit(ps[1], opts);
    padded.step();
    assert.equal(padded.lastStepRows, 2 * Math.max(ps[0].length, ps[1].length), "each sequence padded to the longest");
    while (padded.hasWork) padded.step();
    assert.deepEqual(padded.result(first).outputIds, expected[0]);
    assert.deepEqual(
      succeeded(padded.generate(ps, opts)).map((o) => o.outputIds),
      expected,
    );
    const continuous = await LLM.load(await fixtureEngine(work, FIXTURE, { kv_cache_type: "CONTINUOUS" }));
    assert.deepEqual(
      succeeded(continuous.generate(ps, opts)).map((o) => o.outputIds),
      expected,
    );
    assertAllBlocksFree(continuous);
  });

  test("an aborted request frees its blocks at once; streaming yields what generate returns", async () => {
    const llm = await LLM.load(await fixtureEngine(work, FIXTURE));
    const p = ref.prompts[3].inputIds;
    const request = llm.submit(p, { maxNewTokens: 30, endId: null });
    llm.step();
    llm.step();
    assert.ok(llm.numFreeKvBlocks < llm.numKvBlocks);
    llm.abort(request);
    assertAllBlocksFree(llm);
    assert.equal(llm.result(request).finishReason, "aborted");
    const streamed: number[] = [];
    for await (const t of llm.stream(p, { maxNewTokens: 10, endId: null })) streamed.push(t);
    assert.deepEqual(streamed, alone(llm, p, { maxNewTokens: 10, endId: null }));
    for await (const _ of llm.stream(p, { maxNewTokens: 10, endId: null })) break; // a consumer walking away aborts
    assertAllBlocksFree(llm);
  });
});

describe("beam search where beams finish early", () => {
  const variants = [
    { tag: "lp1_es1", lengthPenalty: 1, earlyStopping: true },
    { tag: "lp05_es1", lengthPenalty: 0.5, earlyStopping: true },
    { tag: "lp1_es0", lengthPenalty: 1, earlyStopping: false },
  ];
  for (const name of ["qwen2_tied_gqa", "qwen2_untied_mqa", "llama3_rope_scaling", "llama_tied_mha"]) {
    test(`beams, scores and finish order match transformers with end ids that beams meet: ${name}`, async () => {
      const r = loadReference(name);
      const rec = SafetensorsFile.open(path.join(FIXTURES, name, "beam_eos.safetensors"));
      const llm = await LLM.load(await fixtureEngine(work, name, { max_beam_width: 4 }));
      try {
        r.prompts.forEach((p, i) => {
          const endId = rec.readFloat32(`prompt${i}.end_id`)[0];
          for (const v of variants) {
            const [out] = succeeded(
              llm.generate([p.inputIds], {
                maxNewTokens: 16,
                endId,
                numBeams: 4,
                numReturnSequences: 4,
                lengthPenalty: v.lengthPenalty,
                earlyStopping: v.earlyStopping,
              }),
            );
            const shape = rec.info(`prompt${i}.${v.tag}.beam_ids`).shape;
            const flat = Array.from(rec.readFloat32(`prompt${i}.${v.tag}.beam_ids`));
            const beams = Array.from({ length: shape[0] }, (_, b) =>
              flat.slice(b * shape[1], (b + 1) * shape[1]).filter((t) => t >= 0),
            );
            const where = `prompt ${i} ${v.tag} (end id ${endId})`;
            assert.deepEqual(
              out.sequences.map((s) => s.outputIds),
              beams,
              where,
            );
            const scores = out.sequences.map((s) => s.score);
            assert.ok(
              maxAbsDiff(scores, rec.readFloat32(`prompt${i}.${v.tag}.beam_scores`)) < 1e-4,
              `${where}: ${scores}`,
            );
          }
        });
      } finally {
        rec.close();
      }
      assertAllBlocksFree(llm);
    });
  }
});
