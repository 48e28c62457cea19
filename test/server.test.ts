// kiln serve as OpenAI clients see it: the official `openai` npm client, unmodified, against a server on
// 127.0.0.1. Outputs are checked against the same requests run alone through the library; errors against
// OpenAI's status codes and error bodies; aborted streams and load against the KV pool.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { LLM } from "../src/runtime/llm.js";
import { createServer, type KilnServer } from "../src/server/app.js";
import { TextTokenizer } from "../src/tokenizer/tokenizer.js";
import { fixtureEngine, ROOT, succeeded, tempDir } from "./helpers.js";

const work = tempDir("kiln-serve-");
const KEY = "test-key";
let llm: LLM;
let tok: TextTokenizer;
let server: KilnServer;
let client: OpenAI;
let base: string;
let engineDir: string;

before(async () => {
  engineDir = await fixtureEngine(work, "qwen2_tied_gqa", { max_batch_size: 16, max_input_len: 256, max_seq_len: 320 });
  llm = await LLM.load(engineDir);
  tok = TextTokenizer.load(engineDir);
  server = createServer(llm, tok, { modelName: "fixture", apiKey: KEY, maxQueue: 1024 });
  base = await server.app.listen({ host: "127.0.0.1", port: 0 });
  client = new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, maxRetries: 0 });
});

after(async () => {
  await server.app.close();
  fs.rmSync(work, { recursive: true, force: true });
});

/** What the library gives for `ids` alone, greedy: the reference for the server's answers. */
function solo(ids: number[], maxNewTokens: number): string {
  const [out] = succeeded(llm.generate([ids], { maxNewTokens, endId: tok.eosId }));
  return tok.decode(out.outputIds, { skipSpecialTokens: true });
}

function blocksInUse(): number {
  return llm.numKvBlocks - llm.numFreeKvBlocks;
}

async function settle(): Promise<void> {
  await server.loop.idle();
  await new Promise((r) => setTimeout(r, 20));
}

describe("completions and chat through the openai client", () => {
  test("a greedy completion equals the library's greedy output, with usage counts", async () => {
    const prompt = "The jury said";
    const r = await client.completions.create({ model: "fixture", prompt, max_tokens: 12, temperature: 0 });
    const ids = tok.encode(prompt);
    assert.equal(r.choices[0].text, solo(ids, 12));
    assert.equal(r.usage?.prompt_tokens, ids.length);
    assert.equal(r.usage?.total_tokens, ids.length + (r.usage?.completion_tokens ?? 0));
    assert.ok(["length", "stop"].includes(r.choices[0].finish_reason));
  });

  test("chat applies the chat template and equals the library's greedy output", async () => {
    const messages = [{ role: "user" as const, content: "hello there" }];
    const r = await client.chat.completions.create({ model: "fixture", messages, max_tokens: 10, temperature: 0 });
    const ids = tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(r.choices[0].message.content, solo(ids, 10));
    assert.equal(r.usage?.prompt_tokens, ids.length);
  });

  test("streamed completions and chat add up to the non-streamed answers; usage comes last", async () => {
    const plain = await client.completions.create({
      model: "fixture",
      prompt: "It was a",
      max_tokens: 9,
      temperature: 0,
    });
    const stream = await client.completions.create({
      model: "fixture",
      prompt: "It was a",
      max_tokens: 9,
      temperature: 0,
      stream: true,
    });
    let text = "";
    let usage = 0;
    let finish: string | null = null;
    for await (const c of stream) {
      text += c.choices[0]?.text ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
      usage = c.usage?.completion_tokens ?? usage;
    }
    assert.equal(text, plain.choices[0].text);
    assert.equal(finish, plain.choices[0].finish_reason);
    assert.equal(usage, plain.usage?.completion_tokens);
    const messages = [{ role: "user" as const, content: "tell me" }];
    const chat = await client.chat.completions.create({ model: "fixture", messages, max_tokens: 7, temperature: 0 });
    let streamed = "";
    for await (const c of await client.chat.completions.create({
      model: "fixture",
      messages,
      max_tokens: 7,
      temperature: 0,
      stream: true,
    })) {
      streamed += c.choices[0]?.delta?.content ?? "";
    }
    assert.equal(streamed, chat.choices[0].message.content);
  });

  test("stop strings cut the text before them; logprobs and top_logprobs are reported", async () => {
    const full = await client.completions.create({
      model: "fixture",
      prompt: "The jury said",
      max_tokens: 16,
      temperature: 0,
    });
    const text = full.choices[0].text;
    const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
    assert.ok(stop.length === 3, `greedy text too short: ${JSON.stringify(text)}`);
    const cut = await client.completions.create({
      model: "fixture",
      prompt: "The jury said",
      max_tokens: 16,
      temperature: 0,
      stop: [stop],
    });
    assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, "stop");
    const lp = await client.completions.create({
      model: "fixture",
      prompt: "The jury said",
      max_tokens: 4,
      temperature: 0,
      logprobs: 2,
    });
    const l = lp.choices[0].logprobs!;
    assert.equal(l.token_logprobs?.length, 4);
    assert.ok(l.token_logprobs!.every((x) => x <= 0));
    // Two alternatives a step (fewer keys only where two tokens decode to the same text); greedy's choice is the best.
    l.top_logprobs!.forEach((t, k) => {
      const values = Object.values(t);
      assert.ok(values.length >= 1 && values.length <= 2);
      assert.ok(values.every((v) => v <= l.token_logprobs![k] + 1e-6));
    });
    const chat = await client.chat.completions.create({
      model: "fixture",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 3,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = chat.choices[0].logprobs!.content!;
    assert.equal(content.length, chat.usage?.completion_tokens);
    // Greedy picks the most likely token: its log prob heads its own top list.
    for (const c of content) assert.ok(Math.abs(c.logprob - c.top_logprobs[0].logprob) < 1e-6);
  });

  test("n choices with a seed are reproducible", async () => {
    const ask = () =>
      client.completions.create({ model: "fixture", prompt: "The", max_tokens: 8, n: 3, seed: 11, temperature: 1 });
    const a = await ask();
    const b = await ask();
    assert.equal(a.choices.length, 3);
    assert.deepEqual(
      a.choices.map((c) => c.text),
      b.choices.map((c) => c.text),
    );
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ["fixture"],
    );
  });
});

describe("errors as OpenAI answers them", () => {
  test("a wrong API key is 401; an unknown model is 404", async () => {
    const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: "nope", maxRetries: 0 });
    await assert.rejects(
      wrong.models.list(),
      (e: unknown) => e instanceof OpenAI.AuthenticationError && e.status === 401,
    );
    await assert.rejects(
      client.completions.create({ model: "gpt-9", prompt: "x", max_tokens: 1 }),
      (e: unknown) =>
        e instanceof OpenAI.NotFoundError && e.status === 404 && /gpt-9/.test(e.message) && e.param === "model",
    );
  });

  test("a field of the wrong type is 400 naming it; malformed JSON is 400; past the engine's limits is 413", async () => {
    await assert.rejects(
      client.completions.create({ model: "fixture", prompt: "x", max_tokens: "lots" as unknown as number }),
      (e: unknown) =>
        e instanceof OpenAI.BadRequestError &&
        e.status === 400 &&
        (e.error as { param?: string }).param === "max_tokens",
    );
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
      body: '{"model": "fixture", "messages": [',
    });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { type: string; message: string } };
    assert.equal(body.error.type, "invalid_request_error");
    assert.match(body.error.message, /JSON/);
    await assert.rejects(
      client.completions.create({ model: "fixture", prompt: Array(300).fill(5), max_tokens: 4 }),
      (e: unknown) =>
        e instanceof OpenAI.APIError &&
        e.status === 413 &&
        /max_input_len 256/.test(e.message) &&
        e.code === "context_length_exceeded",
    );
    assert.equal(blocksInUse(), 0);
  });

  test("a full queue is 429", async () => {
    // One request runs at a time, so the others wait in the queue, which holds two.
    const one = await LLM.load(await fixtureEngine(work, "qwen2_tied_gqa", { max_batch_size: 1 }));
    const small = createServer(one, tok, { modelName: "fixture", maxQueue: 2 });
    const url = await small.app.listen({ host: "127.0.0.1", port: 0 });
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, () =>
        c.completions.create({ model: "fixture", prompt: "The jury", max_tokens: 30, temperature: 0 }),
      ),
    );
    const refused = results.filter(
      (r) =>
        r.status === "rejected" &&
        r.reason instanceof OpenAI.RateLimitError &&
        r.reason.code === "queue_full" &&
        r.reason.type === "rate_limit_error",
    );
    assert.ok(refused.length > 0, "some requests were refused with 429");
    assert.ok(results.some((r) => r.status === "fulfilled"));
    await small.app.close();
    await small.loop.idle();
    assert.equal(one.numKvBlocks - one.numFreeKvBlocks, 0);
  });
});

describe("metrics and health", () => {
  test("/health answers ok; /metrics has request, token, queue, KV and latency series in Prometheus text", async () => {
    assert.deepEqual(await (await fetch(`${base}/health`)).json(), { status: "ok" });
    await client.completions.create({ model: "fixture", prompt: "The", max_tokens: 3, temperature: 0 });
    const text = await (await fetch(`${base}/metrics`)).text();
    for (const series of [
      'kiln_requests_total{route="/v1/completions",status="200"}',
      "kiln_generation_tokens_total",
      "kiln_prompt_tokens_total",
      "kiln_queue_depth 0",
      "kiln_kv_blocks_in_use 0",
      "kiln_time_to_first_token_seconds_count",
      "kiln_inter_token_latency_seconds_count",
    ]) {
      assert.ok(text.includes(series), `missing ${series}`);
    }
  });
});

describe("aborts and load", () => {
  test("a client that disconnects mid-stream has its request aborted and its blocks freed; 100 times over", async () => {
    for (let i = 0; i < 100; i++) {
      const controller = new AbortController();
      const stream = await client.completions.create(
        { model: "fixture", prompt: `Story ${i}:`, max_tokens: 200, temperature: 0, stream: true },
        { signal: controller.signal },
      );
      let chunks = 0;
      try {
        for await (const _ of stream) {
          if (++chunks === 2) controller.abort();
        }
      } catch (e) {
        assert.ok(e instanceof OpenAI.APIUserAbortError || (e as Error).name === "AbortError", String(e));
      }
    }
    await settle();
    assert.equal(blocksInUse(), 0);
    assert.equal(llm.numRunning + llm.numWaiting, 0);
  });

  test("200 concurrent-ish requests (16 at a time): none lost or duplicated, each equal to the request run alone", async () => {
    const prompts = Array.from({ length: 200 }, (_, i) => `Request ${i} says ${"la ".repeat(i % 7)}`);
    const maxTokens = (i: number) => 3 + (i % 6);
    const expected = prompts.map((p, i) => solo(tok.encode(p), maxTokens(i)));
    const got: string[] = new Array(prompts.length);
    let next = 0;
    const worker = async () => {
      while (next < prompts.length) {
        const i = next++;
        const r = await client.completions.create({
          model: "fixture",
          prompt: prompts[i],
          max_tokens: maxTokens(i),
          temperature: 0,
        });
        assert.equal(got[i], undefined, `request ${i} answered twice`);
        got[i] = r.choices[0].text;
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    assert.deepEqual(got, expected);
    await settle();
    assert.equal(blocksInUse(), 0);
  });
});

describe("draining", () => {
  test("SIGTERM lets a running stream finish, refuses new requests and exits 0", async () => {
    const proc = spawn(
      process.execPath,
      [
        path.join(ROOT, "bin", "kiln"),
        "serve",
        "--engine_dir",
        engineDir,
        "--port",
        "0",
        "--served_model_name",
        "fixture",
      ],
      {
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    let log = "";
    const url = await new Promise<string>((resolve, reject) => {
      proc.stderr.on("data", (d) => {
        log += d;
        const m = /on (http:\/\/\S+)/.exec(log);
        if (m) resolve(m[1]);
      });
      proc.on("exit", () => reject(new Error(`server exited early: ${log}`)));
    });
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
    const stream = await c.completions.create({
      model: "fixture",
      prompt: "Once",
      max_tokens: 60,
      temperature: 0,
      stream: true,
    });
    const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
    let text = "";
    let sent = false;
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (!sent) {
        sent = true;
        proc.kill("SIGTERM");
        await new Promise((r) => setTimeout(r, 50));
        await assert.rejects(c.completions.create({ model: "fixture", prompt: "late", max_tokens: 2 }));
      }
    }
    assert.ok(finish === "length" || finish === "stop", `stream ended with ${finish}`);
    assert.equal(text, solo(tok.encode("Once"), 60));
    assert.equal(await exited, 0);
  });
});
