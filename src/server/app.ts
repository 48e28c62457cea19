// kiln serve's HTTP API (fastify): OpenAI-compatible completions and chat completions, with server-sent
// events for streaming, models, health and Prometheus metrics. One engine and one scheduler serve every
// request; errors are OpenAI error objects.

import { randomUUID } from "node:crypto";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { GenerateOptions, LLM } from "../runtime/llm.js";
import type { TextTokenizer } from "../tokenizer/tokenizer.js";
import { EngineLoop } from "./engine-loop.js";
import { type ChoiceDelta, type GenerationJob, type JobContext, startGeneration } from "./generation.js";
import { ServerMetrics } from "./metrics.js";
import { ApiError, badRequest, notFound, unauthorized, unavailable } from "./openai-errors.js";
import { type ChatBody, type CompletionBody, chatSchema, completionSchema, type SamplingFields } from "./schemas.js";

export interface ServerOptions {
  modelName: string;
  apiKey?: string;
  /** Most requests waiting for the engine before new ones get 429. */
  maxQueue: number;
}

export interface KilnServer {
  app: FastifyInstance;
  loop: EngineLoop;
  metrics: ServerMetrics;
  /** Refuses new requests (503), lets running ones finish, then closes the server. */
  drain(): Promise<void>;
}

export function createServer(llm: LLM, tok: TextTokenizer, opts: ServerOptions): KilnServer {
  const app = Fastify({
    logger: false,
    bodyLimit: 16 << 20,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
  });
  const loop = new EngineLoop(llm);
  const metrics = new ServerMetrics(llm);
  const ctx: JobContext = { llm, loop, tok, metrics, maxQueue: opts.maxQueue };
  let draining = false;

  app.addHook("onRequest", async (req) => {
    if (draining) throw unavailable();
    if (opts.apiKey && req.url.startsWith("/v1/") && req.headers.authorization !== `Bearer ${opts.apiKey}`)
      throw unauthorized();
  });
  app.addHook("onResponse", async (req, reply) => {
    metrics.requests.inc({ route: req.routeOptions.url ?? "unknown", status: String(reply.statusCode) });
  });
  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number; code?: string }, _req, reply) => {
    let api: ApiError;
    if (err instanceof ApiError) api = err;
    else if (err.validation)
      api = badRequest(`Invalid request: ${err.message.replace(/^body\/?/, "")}`, paramOf(err.message));
    else if (err.code === "FST_ERR_CTP_INVALID_JSON_BODY" || err instanceof SyntaxError)
      api = badRequest(`Malformed JSON body: ${err.message}`);
    else if (err.statusCode === 413) api = new ApiError(413, "Request body too large.", "invalid_request_error");
    else if (err.statusCode && err.statusCode < 500)
      api = new ApiError(err.statusCode, err.message, "invalid_request_error");
    else api = new ApiError(500, `Internal error: ${err.message}`, "server_error");
    reply.status(api.status).send(api.body);
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `No route ${req.method} ${req.url}`, "invalid_request_error");
    reply.status(404).send(e.body);
  });

  app.get("/health", async () => ({ status: "ok" }));
  app.get("/metrics", async (_req, reply) => {
    reply.header("content-type", metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  app.get("/v1/models", async () => ({
    object: "list",
    data: [{ id: opts.modelName, object: "model", created: 0, owned_by: "kiln" }],
  }));

  const checkModel = (body: SamplingFields) => {
    if (body.model !== opts.modelName)
      throw notFound(`The model '${body.model}' does not exist; this server serves '${opts.modelName}'.`, "model");
  };

  app.post<{ Body: CompletionBody }>("/v1/completions", { schema: { body: completionSchema } }, async (req, reply) => {
    const body = req.body;
    checkModel(body);
    const prompts = completionPrompts(body.prompt, tok);
    const gen = { ...options(body, body.max_tokens ?? 16, tok), topLogProbs: body.logprobs ?? 0 };
    const id = `cmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const echo = body.echo === true;
    const logprobsOf = (tokens: ChoiceDelta["tokens"]) =>
      body.logprobs == null
        ? null
        : {
            tokens: tokens.map((t) => tok.decode([t.id])),
            token_logprobs: tokens.map((t) => t.logProb),
            top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map((a) => [tok.decode([a.token]), a.logProb]))),
          };
    const chunk = (d: ChoiceDelta) => ({
      id,
      object: "text_completion",
      created,
      model: opts.modelName,
      choices: [{ index: d.index, text: d.text, logprobs: logprobsOf(d.tokens), finish_reason: d.finishReason }],
    });
    return serve(req, reply, ctx, prompts, gen, stops(body.stop), body.stream === true, chunk, (job) => ({
      id,
      object: "text_completion",
      created,
      model: opts.modelName,
      choices: job.choices.map((c) => ({
        index: c.index,
        text: (echo ? tok.decode(prompts[Math.floor(c.index / (gen.numReturnSequences ?? 1))]) : "") + c.text,
        logprobs: logprobsOf(c.tokens),
        finish_reason: c.finish,
      })),
      usage: usage(job),
    }));
  });

  app.post<{ Body: ChatBody }>("/v1/chat/completions", { schema: { body: chatSchema } }, async (req, reply) => {
    const body = req.body;
    checkModel(body);
    if (!tok.chatTemplate)
      throw badRequest("This model's tokenizer has no chat template; use /v1/completions.", "messages");
    const messages = body.messages.map((m) => ({
      role: m.role,
      content: typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text ?? "").join(""),
    }));
    const prompt = tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), {
      addSpecialTokens: false,
    });
    const room = llm.buildConfig.max_seq_len - prompt.length;
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? Math.max(1, room);
    const gen = { ...options(body, maxTokens, tok), topLogProbs: body.logprobs ? (body.top_logprobs ?? 0) : 0 };
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const logprobsOf = (tokens: ChoiceDelta["tokens"]) =>
      body.logprobs
        ? {
            content: tokens.map((t) => ({
              token: tok.decode([t.id]),
              logprob: t.logProb,
              bytes: [...Buffer.from(tok.decode([t.id]))],
              top_logprobs: t.top.map((a) => ({
                token: tok.decode([a.token]),
                logprob: a.logProb,
                bytes: [...Buffer.from(tok.decode([a.token]))],
              })),
            })),
          }
        : null;
    const started = new Set<number>();
    const chunk = (d: ChoiceDelta) => {
      const delta: Record<string, string> = {};
      if (!started.has(d.index)) {
        started.add(d.index);
        delta.role = "assistant";
      }
      if (d.text) delta.content = d.text;
      return {
        id,
        object: "chat.completion.chunk",
        created,
        model: opts.modelName,
        choices: [{ index: d.index, delta, logprobs: logprobsOf(d.tokens), finish_reason: d.finishReason }],
      };
    };
    return serve(req, reply, ctx, [prompt], gen, stops(body.stop), body.stream === true, chunk, (job) => ({
      id,
      object: "chat.completion",
      created,
      model: opts.modelName,
      choices: job.choices.map((c) => ({
        index: c.index,
        message: { role: "assistant", content: c.text },
        logprobs: logprobsOf(c.tokens),
        finish_reason: c.finish,
      })),
      usage: usage(job),
    }));
  });

  return {
    app,
    loop,
    metrics,
    async drain() {
      draining = true;
      await loop.idle();
      await app.close();
    },
  };
}

function paramOf(message: string): string | null {
  return /body\/(\w+)/.exec(message)?.[1] ?? /property '(\w+)'/.exec(message)?.[1] ?? null;
}

function stops(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return typeof stop === "string" ? [stop] : stop;
}

function completionPrompts(prompt: CompletionBody["prompt"], tok: TextTokenizer): number[][] {
  if (typeof prompt === "string") return [tok.encode(prompt)];
  if (prompt.every((p) => typeof p === "string")) return (prompt as string[]).map((p) => tok.encode(p));
  if (prompt.every((p) => typeof p === "number")) return [prompt as number[]];
  return prompt as number[][];
}

/** OpenAI's sampling fields as kiln's options (OpenAI samples at temperature 1 unless told otherwise). */
function options(body: SamplingFields, maxTokens: number, tok: TextTokenizer): GenerateOptions {
  const temperature = body.temperature ?? 1;
  return {
    maxNewTokens: maxTokens,
    endId: tok.eosId,
    numReturnSequences: body.n ?? 1,
    sampling: {
      temperature,
      topK: temperature === 0 ? 1 : 0,
      topP: body.top_p ?? 1,
      seed: body.seed ?? Math.floor(Math.random() * 2 ** 31),
      presencePenalty: body.presence_penalty ?? 0,
      frequencyPenalty: body.frequency_penalty ?? 0,
    },
  };
}

function usage(job: GenerationJob) {
  const completion = job.choices.reduce((n, c) => n + c.tokens.length, 0);
  return {
    prompt_tokens: job.promptTokens,
    completion_tokens: completion,
    total_tokens: job.promptTokens + completion,
  };
}

/** Runs a job to the end: as one JSON response, or as server-sent events ending in `data: [DONE]`. */
async function serve(
  _req: FastifyRequest,
  reply: FastifyReply,
  ctx: JobContext,
  prompts: number[][],
  gen: GenerateOptions,
  stop: string[],
  stream: boolean,
  chunk: (d: ChoiceDelta) => object,
  final: (job: GenerationJob) => object,
): Promise<unknown> {
  if (!stream) {
    const job = startGeneration(ctx, prompts, gen, stop);
    reply.raw.on("close", () => {
      if (!reply.raw.writableFinished) job.abort(); // a client gone before the answer wants nothing more
    });
    await job.done;
    return final(job);
  }
  const raw = reply.raw;
  let job: GenerationJob | null = null;
  const send = (data: object | string) => {
    if (!raw.writableEnded) raw.write(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
  };
  job = startGeneration(ctx, prompts, gen, stop, (d) => send(chunk(d)));
  reply.hijack();
  raw.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
  raw.on("close", () => {
    if (!raw.writableFinished) job?.abort(); // the client went away mid-stream: free its KV blocks now
  });
  await job.done;
  // The last chunk carries the usage counts (OpenAI's stream_options.include_usage, always on here).
  const last = final(job) as { object: string };
  send({ ...last, object: last.object === "chat.completion" ? "chat.completion.chunk" : last.object, choices: [] });
  send("[DONE]");
  raw.end();
  return reply;
}
