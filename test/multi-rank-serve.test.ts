// kiln serve and kiln eval on an engine split for tp 2 × pp 2 (cpu backend), as a user starts them: one
// process per rank, rank 0 serving over real HTTP. Each answer is checked against the same request to a
// single-rank server of the same model (test/server.test.ts holds that one to the library), including
// sampling, stop strings and streams broken off, whose aborts the ranks must replay at the same step.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { FIXTURES, fixtureEngine, tempDir } from "./helpers.js";
import { KILN, splitEngine } from "./rank-runs.js";
import {
  answer,
  type Completion,
  type Served,
  serve,
  serveUnderMpirun,
  servingPids,
  stopServers,
} from "./serve-runs.js";

const work = tempDir("kiln-serve-ranks-");
const MODEL = path.join(FIXTURES, "qwen2_tied_gqa", "hf");
// A hung rank fails its test rather than the suite.
const T = { timeout: 120_000 };
const LIMITS = { max_batch_size: 4, max_input_len: 128, max_seq_len: 192 };

let single: Served;
let split: Served;
let splitEngineDir: string;

before(async () => {
  const one = await fixtureEngine(work, "qwen2_tied_gqa", LIMITS);
  splitEngineDir = await splitEngine({
    modelDir: MODEL,
    dir: work,
    tag: "tp2pp2",
    sizes: { tpSize: 2, ppSize: 2 },
    backend: "cpu",
    dtype: "float32",
    gatherContextLogits: false,
    build: LIMITS,
  });
  [single, split] = await Promise.all([serve(one), serve(splitEngineDir)]);
});

after(async () => {
  stopServers();
  fs.rmSync(work, { recursive: true, force: true });
});

/** The same requests, sent together, to both servers. */
async function bothAnswer(bodies: Completion[]): Promise<[string[][], string[][]]> {
  const ask = (s: Served) => Promise.all(bodies.map((b) => answer(s.client, b)));
  return Promise.all([ask(single), ask(split)]);
}

describe("kiln serve over four ranks (tp 2 × pp 2)", () => {
  test("concurrent greedy, sampled and streamed requests get the single-rank server's answers", T, async () => {
    const bodies: Completion[] = [
      { model: "m", prompt: "The jury said", max_tokens: 16, temperature: 0 },
      { model: "m", prompt: "It was a", max_tokens: 12, temperature: 0.9, seed: 7, n: 2 },
      { model: "m", prompt: "Once upon", max_tokens: 20, temperature: 0, stream: true },
      { model: "m", prompt: ["a b c", "the laws"], max_tokens: 9, temperature: 0.7, top_p: 0.9, seed: 3 },
      { model: "m", prompt: "many of the", max_tokens: 14, temperature: 0, frequency_penalty: 0.5 },
    ];
    const [want, got] = await bothAnswer(bodies);
    assert.deepEqual(got, want);
    assert.ok(
      want.flat().some((t) => t.length > 12),
      "the answers have text",
    );
  });

  test("stop strings and streams broken off end requests mid-run; the requests after them still agree", T, async () => {
    // A stop string ends its request during a step, while others run: the ranks must end it at the same point.
    const first = await single.client.completions.create({
      model: "m",
      prompt: "It was",
      max_tokens: 24,
      temperature: 0,
    });
    const stop = first.choices[0].text.trim().split(/\s+/)[2] ?? first.choices[0].text.slice(4, 6);
    const bodies: Completion[] = [
      { model: "m", prompt: "It was", max_tokens: 24, temperature: 0, stop: [stop] },
      { model: "m", prompt: "The jury said it did", max_tokens: 30, temperature: 0, stream: true },
      { model: "m", prompt: "It was", max_tokens: 24, temperature: 0.8, seed: 11 },
    ];
    const [want, got] = await bothAnswer(bodies);
    assert.deepEqual(got, want);
    assert.match(want[0][0], /\[stop\]$/);
    // A client that goes away mid-stream: its request is aborted between steps.
    for (const s of [single, split]) {
      const stream = await s.client.completions.create({ model: "m", prompt: "Once", max_tokens: 60, stream: true });
      let chunks = 0;
      for await (const _ of stream) if (++chunks === 3) break;
    }
    const [afterWant, afterGot] = await bothAnswer([
      { model: "m", prompt: "It was a", max_tokens: 18, temperature: 0 },
      { model: "m", prompt: "It was", max_tokens: 18, temperature: 0.5, seed: 2 },
    ]);
    assert.deepEqual(afterGot, afterWant);
  });

  // SIGTERM reaches the launcher alone (a service manager's stop); Ctrl-C sends SIGINT to every process of the
  // terminal's group, ranks included, which must wait for rank 0 to drain.
  const stops = [
    { how: "SIGTERM to kiln serve", stop: (s: Served) => s.proc.kill("SIGTERM"), server: () => split },
    {
      how: "Ctrl-C (SIGINT to the whole process group)",
      stop: (s: Served) => process.kill(-(s.proc.pid as number), "SIGINT"),
      server: () => serve(splitEngineDir),
    },
  ];
  for (const { how, stop, server } of stops) {
    test(`${how} drains a running stream, then every rank exits and the launcher exits 0`, T, async () => {
      const s = await server();
      assert.equal(servingPids(splitEngineDir).length, 5, "the launcher and 4 ranks");
      const stream = await s.client.completions.create({
        model: "m",
        prompt: "Once",
        max_tokens: 40,
        temperature: 0,
        stream: true,
      });
      let text = "";
      let finish: string | null = null;
      let sent = false;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.text ?? "";
        finish = chunk.choices[0]?.finish_reason ?? finish;
        if (!sent) {
          sent = true;
          stop(s);
        }
      }
      assert.ok(finish === "length" || finish === "stop", `stream ended with ${finish}`);
      const [alone] = await answer(single.client, { model: "m", prompt: "Once", max_tokens: 40, temperature: 0 });
      assert.equal(`${text} [${finish}]`, alone);
      assert.equal(await s.exited, 0, s.log());
      assert.deepEqual(servingPids(splitEngineDir), [], "no rank left running");
    });
  }
});

describe("kiln serve under mpirun", () => {
  test(
    "with OpenMPI's rank variables, rank 0 serves and the others follow: the single-rank server's answers",
    T,
    async () => {
      const { rank0, ranks } = await serveUnderMpirun(splitEngineDir, 4);
      const bodies: Completion[] = [
        { model: "m", prompt: "The jury said", max_tokens: 12, temperature: 0 },
        { model: "m", prompt: "It was a", max_tokens: 10, temperature: 0.9, seed: 5, stream: true },
      ];
      const ask = (s: Served) => Promise.all(bodies.map((b) => answer(s.client, b)));
      const [want, got] = await Promise.all([ask(single), ask(rank0)]);
      assert.deepEqual(got, want);
      // mpirun stops a job by signalling every rank: rank 0, idle, drains at once and exits 0.
      for (const p of ranks) p.kill("SIGTERM");
      assert.equal(await rank0.exited, 0, rank0.log());
    },
  );
});

describe("kiln eval over four ranks", () => {
  test("the perplexity of a tp 2 × pp 2 engine equals the single-rank engine's", T, async () => {
    const text = path.join(work, "text.txt");
    fs.writeFileSync(text, "The jury said it did find that many of the laws were outmoded. ".repeat(4));
    const engines = [
      await fixtureEngine(work, "qwen2_tied_gqa", { gather_context_logits: true }),
      await splitEngine({
        modelDir: MODEL,
        dir: work,
        tag: "eval-tp2pp2",
        sizes: { tpSize: 2, ppSize: 2 },
        backend: "cpu",
        dtype: "float32",
        gatherContextLogits: true,
      }),
    ];
    const [one, four] = engines.map((engine, k) => {
      const out = path.join(work, `eval-${k}.json`);
      const r = spawnSync(
        process.execPath,
        [
          KILN,
          "eval",
          "--engine_dir",
          engine,
          "--dataset",
          text,
          "--max_input_len",
          "32",
          "--stride",
          "16",
          "--output_json",
          out,
        ],
        { encoding: "utf8", env: { ...process.env, KILN_RANK: undefined } },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim().split("\n").length, 1, `rank 0 alone reports: ${r.stdout}`);
      return JSON.parse(fs.readFileSync(out, "utf8")).perplexity as number;
    });
    assert.ok(one > 1 && Math.abs(four - one) / one < 1e-5, `${four} vs ${one}`);
  });
});
