// Lockstep: a follower that replays a leader's messages must make every choice the leader made, step for
// step, or a multi-rank server's collectives would not match. Two engines in one process, joined by an
// in-memory channel: the leader runs a workload, the follower replays it afterwards, and their results, down
// to how many prompt tokens the KV cache spared each request, must be the same.

import assert from "node:assert/strict";
import fs from "node:fs";
import { after, describe, test } from "node:test";
import type { Communicator } from "../src/comm/communicator.js";
import { LLM } from "../src/runtime/llm.js";
import type { Request } from "../src/runtime/request.js";
import { fixtureEngine, tempDir } from "./helpers.js";

const work = tempDir("kiln-lockstep-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

/** A leader's and a follower's ends of a one-way channel (the follower reads what the leader sent). */
function channel(): { leader: Communicator; follower: Communicator } {
  const queue: Float32Array[] = [];
  const unused = () => {
    throw new Error("not part of lockstep");
  };
  const end = (rank: number): Communicator => ({
    rank,
    worldSize: 2,
    allReduce: unused,
    allGather: unused,
    barrier: unused,
    close: () => {},
    send: (data) => queue.push(data.slice()),
    recv: () => {
      const next = queue.shift();
      if (!next) throw new Error("the follower read past the leader's last message");
      return next;
    },
  });
  return { leader: end(0), follower: end(1) };
}

interface Outcome {
  tokens: number[][];
  computedPromptTokens: number;
  finish: string[];
}

const outcome = (r: Request): Outcome => ({
  tokens: r.finished.map((s) => s.outputIds),
  computedPromptTokens: r.numComputedPromptTokens,
  finish: r.finished.map((s) => s.finishReason),
});

describe("lockstep replay", () => {
  test("an abort asked for mid-step (a stop string) frees blocks where the follower frees them", async () => {
    // Blocks of 4 tokens and a pool that A and B fill exactly: which blocks C then takes depends on the order
    // A's and B's were freed, and D, which repeats A's prompt, finds A's blocks cached only if C spared them.
    const engine = await fixtureEngine(work, "qwen2_tied_gqa", { max_batch_size: 4, tokens_per_block: 4 });
    const [leader, follower] = [
      await LLM.load(engine, { kvCacheTokens: 24 }),
      await LLM.load(engine, { kvCacheTokens: 24 }),
    ];
    const { leader: out, follower: into } = channel();
    leader.lead(out);
    const promptA = [5, 17, 29, 41, 53, 65, 77, 89, 101];
    const promptB = [7, 19, 31, 43, 55, 67, 79, 91, 103];
    const greedy = (maxNewTokens: number) => ({ maxNewTokens, endId: null });
    const a = leader.submit(promptA, greedy(10));
    const b = leader.submit(promptB, greedy(3));
    // As the server does for a stop string: the request is ended from its progress callback, in the step
    // that produced the text, while B finishes in that same step.
    a.onProgress = () => {
      if (a.seqs[0]?.numOutputTokens >= 3) leader.abort(a);
    };
    while (leader.hasWork) leader.step();
    const c = leader.submit([200, 201, 202, 203, 204, 205, 206, 207, 208], greedy(3));
    while (leader.hasWork) leader.step();
    const d = leader.submit(promptA, greedy(4));
    while (leader.hasWork) leader.step();
    leader.dispose();
    assert.equal(outcome(a).finish[0], "aborted");
    assert.ok(outcome(d).computedPromptTokens < promptA.length, "D reuses A's cached prompt blocks");

    const replayed: Request[] = [];
    follower.followLeader({ comm: into, onSubmit: (r) => replayed.push(r) });
    assert.deepEqual(replayed.map(outcome), [a, b, c, d].map(outcome));
    follower.dispose();
  });

  test("submits and aborts between steps replay in order, with sampling", async () => {
    const engine = await fixtureEngine(work, "qwen2_tied_gqa", { max_batch_size: 4, tokens_per_block: 8 });
    const [leader, follower] = [await LLM.load(engine), await LLM.load(engine)];
    const { leader: out, follower: into } = channel();
    leader.lead(out);
    const requests: Request[] = [];
    const sampled = { maxNewTokens: 12, endId: null, sampling: { temperature: 0.8, topK: 0, seed: 9 } };
    for (let i = 0; i < 6; i++) {
      requests.push(leader.submit([3 + i, 40, 41 + i, 7], i % 2 ? sampled : { maxNewTokens: 8, endId: null }));
      leader.step();
      if (i === 3) leader.abort(requests[1]);
    }
    while (leader.hasWork) leader.step();
    leader.dispose();
    const replayed: Request[] = [];
    follower.followLeader({ comm: into, onSubmit: (r) => replayed.push(r) });
    assert.deepEqual(replayed.map(outcome), requests.map(outcome));
    assert.equal(outcome(requests[1]).finish[0], "aborted");
    follower.dispose();
  });
});
