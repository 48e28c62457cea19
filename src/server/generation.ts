// One OpenAI request's generation: submits its prompts to the engine, follows every choice's tokens as text
// (stop strings cut the text, as OpenAI's `stop` does), reports deltas for streaming, and aborts what the
// client no longer wants. Knows requests and text, not HTTP.

import { LimitError } from "../errors.js";
import type { GenerateOptions, LLM } from "../runtime/llm.js";
import type { Request, TokenLogProb } from "../runtime/request.js";
import { StreamDecoder, type TextTokenizer } from "../tokenizer/tokenizer.js";
import type { EngineLoop } from "./engine-loop.js";
import type { ServerMetrics } from "./metrics.js";
import { queueFull, tooLarge } from "./openai-errors.js";

export type FinishReason = "stop" | "length" | "abort";

export interface ChoiceDelta {
  index: number;
  text: string;
  /** Tokens that produced this text, with their log probabilities and alternatives. */
  tokens: { id: number; logProb: number; top: TokenLogProb[] }[];
  finishReason: FinishReason | null;
}

class Choice {
  readonly decoder: StreamDecoder;
  text = "";
  sent = 0;
  tokensSeen = 0;
  finish: FinishReason | null = null;
  lastTokenAt = 0;
  readonly tokens: ChoiceDelta["tokens"] = [];

  constructor(
    readonly index: number,
    tok: TextTokenizer,
  ) {
    this.decoder = new StreamDecoder(tok, { skipSpecialTokens: true });
  }
}

export interface GenerationJob {
  requests: Request[];
  choices: Choice[];
  promptTokens: number;
  done: Promise<void>;
  abort(): void;
}

export interface JobContext {
  llm: LLM;
  loop: EngineLoop;
  tok: TextTokenizer;
  metrics: ServerMetrics;
  maxQueue: number;
}

/**
 * Starts `prompts` × n choices. `onDelta` gets each choice's new text as tokens arrive (streaming); the
 * returned job's `done` resolves when every choice has finished.
 */
export function startGeneration(
  ctx: JobContext,
  prompts: number[][],
  opts: GenerateOptions,
  stop: string[],
  onDelta?: (d: ChoiceDelta) => void,
): GenerationJob {
  const { llm, loop, tok, metrics } = ctx;
  if (llm.numWaiting + prompts.length > ctx.maxQueue) throw queueFull(llm.numWaiting);
  const n = opts.numReturnSequences ?? 1;
  for (const p of prompts) {
    try {
      llm.validate(p, opts);
    } catch (e) {
      if (e instanceof LimitError) throw tooLarge(e.message);
      throw e;
    }
  }
  const started = performance.now();
  const holdBack = Math.max(0, ...stop.map((x) => x.length - 1));
  const choices = Array.from({ length: prompts.length * n }, (_, i) => new Choice(i, tok));
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => {
    resolveDone = r;
  });
  const requests: Request[] = [];
  const settle = () => {
    if (requests.every((r) => r.status === "finished")) resolveDone();
  };

  const follow = (request: Request, base: number) => {
    request.allSeqs.forEach((seq, i) => {
      const c = choices[base + i];
      if (c.finish) return;
      const out = seq.outputIds;
      let piece = "";
      const tokens: ChoiceDelta["tokens"] = [];
      for (; c.tokensSeen < out.length && !c.finish; c.tokensSeen++) {
        const id = out[c.tokensSeen];
        const now = performance.now();
        if (c.tokensSeen === 0 && i === 0) metrics.timeToFirstToken.observe((now - started) / 1000);
        else if (c.lastTokenAt) metrics.interTokenLatency.observe((now - c.lastTokenAt) / 1000);
        c.lastTokenAt = now;
        metrics.generationTokens.inc();
        const t = { id, logProb: seq.logProbs[c.tokensSeen], top: seq.topLogProbs[c.tokensSeen] ?? [] };
        c.tokens.push(t);
        tokens.push(t);
        c.text += c.decoder.push(id);
        const cut = firstStop(c.text, stop);
        if (cut >= 0) {
          c.text = c.text.slice(0, cut);
          c.finish = "stop";
        }
      }
      if (!c.finish && seq.finishReason) {
        c.text += c.decoder.flush();
        c.finish = seq.finishReason === "length" ? "length" : seq.finishReason === "aborted" ? "abort" : "stop";
      }
      // Hold back what could still turn out to be the start of a stop string.
      const safe = c.finish ? c.text.length : Math.max(c.sent, c.text.length - holdBack);
      piece = c.text.slice(c.sent, safe);
      c.sent = safe;
      if (onDelta && (piece || c.finish || tokens.length))
        onDelta({ index: c.index, text: piece, tokens, finishReason: c.finish });
    });
    // Every choice cut by a stop string: the rest of the request is unwanted.
    if (request.status !== "finished" && choices.slice(base, base + n).every((c) => c.finish)) llm.abort(request);
  };

  prompts.forEach((p, k) => {
    const request = llm.submit(p, opts);
    metrics.promptTokens.inc(p.length);
    requests.push(request);
    request.onProgress = () => {
      follow(request, k * n);
      settle();
    };
  });
  loop.kick();
  return {
    requests,
    choices,
    promptTokens: prompts.reduce((s, p) => s + p.length, 0),
    done,
    abort() {
      for (const r of requests) llm.abort(r);
      loop.kick();
      settle();
    },
  };
}

/** Where the earliest stop string starts in `text`, or -1. */
function firstStop(text: string, stop: string[]): number {
  let at = -1;
  for (const s of stop) {
    if (!s) continue;
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}
