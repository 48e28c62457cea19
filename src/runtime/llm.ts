// The library API: load an engine, submit requests, step the engine (schedule → run → postprocess), and
// read results as a batch, as a stream of tokens, or abort a request midway.

import type { Communicator } from "../comm/communicator.js";
import { KilnError, LimitError } from "../errors.js";
import { BeamSearch } from "./beam-search.js";
import { BlockManager } from "./block-manager.js";
import { type LoadedEngine, loadEngine } from "./engine-loader.js";
import { LockstepLeader, nextLockstepMessage } from "./lockstep.js";
import { ModelRunner } from "./model-runner.js";
import { type GenerationParams, Request } from "./request.js";
import { checkRequest } from "./request-limits.js";
import {
  type FinishedSequence,
  finishedFromBeams,
  finishSampled,
  type GenerateOptions,
  resolveParams,
} from "./results.js";
import { logSoftmax, Rng, sampleToken } from "./sampling/index.js";
import { Scheduler } from "./scheduler.js";
import { Sequence } from "./sequence.js";
import { isDeviceSampleable, isPlainGreedy, rowParams, topTokens } from "./token-choice.js";

export type { GenerateOptions } from "./results.js";

export interface LoadOptions {
  /** KV cache capacity in tokens; defaults to max_batch_size × max_beam_width × max_seq_len, capped by memory. */
  kvCacheTokens?: number;
}

export interface GenerationOutput {
  /** The best sequence's generated tokens. */
  outputIds: number[];
  finishReason: FinishedSequence["finishReason"];
  /** Every returned sequence, best first. */
  sequences: FinishedSequence[];
  /** [prompt position][vocab], when the engine gathers context logits. */
  contextLogits?: Float32Array[];
  /** [generated token][vocab] of the best sequence, when the engine gathers generation logits. */
  generationLogits?: Float32Array[];
  /** Prompt tokens this request computed; the rest came from the KV cache (reuse). */
  numComputedPromptTokens: number;
}

export interface RequestFailure {
  error: KilnError;
}

const ONE_SEQUENCE = "streaming returns one sequence: use num_beams 1 and num_return_sequences 1";

export class LLM {
  private readonly scheduler: Scheduler;
  private readonly blocks: BlockManager;
  private readonly runner: ModelRunner;
  private nextId = 0;
  /** Rank 0 of a served multi-rank engine: tells the other ranks what each step runs (see lockstep.ts). */
  private lockstep: LockstepLeader | null = null;
  private stepping = false;
  /** Aborts asked for during a step, done when it ends, where the other ranks can replay them. */
  private abortsAfterStep: Request[] = [];

  private constructor(
    readonly engine: LoadedEngine,
    opts: LoadOptions,
  ) {
    const b = engine.config.build_config;
    // A continuous cache is one contiguous region of max_seq_len tokens per sequence: one block each.
    const continuous = b.kv_cache_type === "CONTINUOUS";
    const tpb = continuous ? b.max_seq_len : b.tokens_per_block;
    const model = engine.model;
    const { numKvHeads, headSize } = model.attentionShape;
    const blockBytes = model.numLayers * 2 * tpb * numKvHeads * headSize * engine.backend.kvBytesPerValue;
    const wanted = opts.kvCacheTokens ?? b.max_batch_size * b.max_beam_width * b.max_seq_len;
    const budget = opts.kvCacheTokens !== undefined ? Number.POSITIVE_INFINITY : engine.backend.kvBudgetBytes();
    const fits = Math.max(1, Math.min(Math.ceil(wanted / tpb), Math.floor(budget / blockBytes)));
    // Ranks schedule alike only over pools of one size: each takes the smallest any rank can hold (pipeline
    // stages hold different numbers of layers; ranks sharing a GPU find different memory free).
    const { comm } = engine;
    const everyone = Array.from({ length: comm.worldSize }, (_, r) => r);
    const numBlocks =
      comm.worldSize > 1 ? Math.min(...comm.allGather(Float32Array.of(fits), everyone).map((n) => n[0])) : fits;
    const reuse = b.use_paged_context_fmha && !continuous && !b.gather_context_logits;
    this.blocks = new BlockManager(numBlocks, tpb, reuse);
    engine.backend.allocateKvCache({
      ...model.attentionShape,
      numLayers: model.numLayers,
      numBlocks,
      tokensPerBlock: tpb,
    });
    this.scheduler = new Scheduler(
      {
        maxBatchSize: b.max_batch_size,
        maxNumTokens: b.max_num_tokens,
        chunkedContext: b.use_paged_context_fmha,
        maxSeqs: this.maxSeqs,
      },
      this.blocks,
    );
    this.runner = new ModelRunner(engine.executor, tpb, model.logitsWidth, b.remove_input_padding);
  }

  /** Loads the engine's rank file for this process: rank 0, or the rank kiln's launcher or mpirun gave it. */
  static async load(engineDir: string, opts: LoadOptions = {}): Promise<LLM> {
    return new LLM(await loadEngine(engineDir), opts);
  }

  /** Sequences that may run at once: a batch of the widest beams. */
  get maxSeqs(): number {
    return this.buildConfig.max_batch_size * this.buildConfig.max_beam_width;
  }

  /** Frees the engine's memory (on a GPU, every device allocation); the LLM is unusable afterwards. */
  dispose(): void {
    this.lockstep?.stop();
    this.lockstep = null;
    for (const r of [...this.scheduler.running, ...this.scheduler.waiting]) this.abort(r);
    this.engine.executor.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  get buildConfig() {
    return this.engine.config.build_config;
  }

  get vocabSize(): number {
    return this.engine.config.pretrained_config.vocab_size;
  }

  get numWaiting(): number {
    return this.scheduler.waiting.length;
  }

  get numRunning(): number {
    return this.scheduler.running.length;
  }

  get numFreeKvBlocks(): number {
    return this.blocks.numFreeBlocks;
  }

  get numKvBlocks(): number {
    return this.blocks.numBlocks;
  }

  get numPreemptions(): number {
    return this.scheduler.numPreemptions;
  }

  /** Rows the last step computed, padding included. */
  get lastStepRows(): number {
    return this.runner.lastStepRows;
  }

  /** Checks a request against the engine's limits; throws a LimitError naming the limit. */
  validate(promptIds: readonly number[], opts: GenerateOptions): void {
    this.check(promptIds, resolveParams(opts));
  }

  private check(promptIds: readonly number[], params: GenerationParams): void {
    checkRequest(promptIds, params, {
      build: this.buildConfig,
      vocabSize: this.vocabSize,
      maxSeqs: this.maxSeqs,
      blocksFor: (n) => this.blocks.blocksFor(n),
      numBlocks: this.blocks.numBlocks,
    });
  }

  submit(promptIds: readonly number[], opts: GenerateOptions): Request {
    const params = resolveParams(opts);
    this.check(promptIds, params);
    const seq = new Sequence(this.nextId++, promptIds, promptIds.length);
    const request = new Request(seq.id, promptIds, params, seq);
    request.rngs.set(seq, new Rng(params.sampling.seed));
    this.scheduler.add(request);
    this.lockstep?.record({ submit: request.id, promptIds: [...promptIds], opts });
    return request;
  }

  /**
   * Stops a request and frees its KV blocks; what it generated so far stays readable. Asked for during a step
   * (from a progress callback), it happens as the step ends.
   */
  abort(request: Request): void {
    if (request.status === "finished") return;
    if (this.stepping) {
      this.abortsAfterStep.push(request);
      return;
    }
    this.lockstep?.record({ abort: request.id });
    for (const seq of request.seqs) {
      seq.finishReason = "aborted";
      request.finished.push(finishSampled(seq));
    }
    this.scheduler.retire(request);
    request.onProgress?.();
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /**
   * Makes this rank 0 of a multi-rank engine the one that drives the others: they run `followLeader`, and
   * every submit, abort and step here is replayed there. For a server, whose requests reach rank 0 alone.
   * `comm`: how the others are reached (the engine's own communicator unless a test pairs two engines).
   */
  lead(comm: Communicator = this.engine.comm): void {
    if (comm.rank !== 0) throw new Error(`rank ${comm.rank} cannot lead: rank 0 does`);
    if (comm.worldSize > 1) this.lockstep = new LockstepLeader(comm);
  }

  /**
   * The other ranks' side of `lead`: replays rank 0's submits and aborts and steps with it, until rank 0 is
   * disposed. Blocks this process meanwhile. `onSubmit` sees each request replayed.
   */
  followLeader(opts: { comm?: Communicator; onSubmit?: (request: Request) => void } = {}): void {
    const comm = opts.comm ?? this.engine.comm;
    const live = new Map<number, Request>();
    for (let m = nextLockstepMessage(comm); !m.stop; m = nextLockstepMessage(comm)) {
      for (const change of m.changes) {
        if ("submit" in change) {
          const request = this.submit(change.promptIds, change.opts);
          if (request.id !== change.submit) {
            throw new KilnError(
              `rank ${comm.rank}: request ${request.id} here is request ${change.submit} on rank 0: the ranks have diverged`,
            );
          }
          live.set(request.id, request);
          opts.onSubmit?.(request);
        } else {
          const request = live.get(change.abort);
          if (request) this.abort(request);
        }
      }
      this.step();
      for (const [id, request] of live) if (request.status === "finished") live.delete(id);
    }
  }

  /** One engine step: schedule, run the model, then sample or advance the beams of each request. */
  step(): void {
    this.lockstep?.beforeStep();
    this.stepping = true;
    try {
      this.runStep();
    } finally {
      this.stepping = false;
      for (const request of this.abortsAfterStep.splice(0)) this.abort(request);
    }
  }

  private runStep(): void {
    const { batch, copies } = this.scheduler.schedule();
    if (batch.length === 0) return;
    if (copies.length > 0) this.engine.backend.copyKvBlocks(copies);
    const b = this.buildConfig;
    const onDevice = !b.gather_context_logits && !b.gather_generation_logits;
    const greedy = onDevice && batch.every(({ request }) => isPlainGreedy(request.params));
    const sampled =
      onDevice &&
      !greedy &&
      this.engine.executor.sample !== undefined &&
      batch.every(({ request }) => isDeviceSampleable(request.params));
    if (greedy || sampled) {
      // Fast path: the backend chooses each token (greedy, or drawn on the GPU); no logits reach the host.
      const toRow = ({ request, seq }: { request: Request; seq: Sequence }) => rowParams(request.params, seq);
      const chosen = this.runner.runGreedy(batch, sampled ? toRow : undefined);
      batch.forEach(({ seq, numNewTokens }, k) => {
        seq.numCachedTokens += numNewTokens;
        this.blocks.registerFullBlocks(seq);
        const c = chosen[k];
        if (c && c.pos === seq.numTokens - 1) seq.pendingChoice = { token: c.token, logProb: c.logProb };
      });
    } else {
      const wantsContext = (r: Request, seq: Sequence, pos: number) =>
        b.gather_context_logits && r.seqs[0] === seq && pos < seq.numPromptTokens && r.contextLogits.length <= pos;
      const rows = this.runner.run(batch, ({ request, seq }, i) => {
        const pos = seq.numCachedTokens + i;
        return pos === seq.numTokens - 1 || wantsContext(request, seq, pos);
      });
      batch.forEach(({ request, seq, numNewTokens }, k) => {
        seq.numCachedTokens += numNewTokens;
        this.blocks.registerFullBlocks(seq);
        for (const { pos, logits } of rows[k]) {
          const row = logits.subarray(0, this.vocabSize);
          if (wantsContext(request, seq, pos) && request.contextLogits.length === pos) request.contextLogits.push(row);
          if (pos === seq.numTokens - 1) seq.pendingLogits = row;
        }
      });
    }
    const stepped = new Set<Request>();
    for (const { request, seq, numNewTokens } of batch) {
      request.numComputedPromptTokens += Math.max(
        0,
        Math.min(numNewTokens, seq.numPromptTokens - (seq.numCachedTokens - numNewTokens)),
      );
      stepped.add(request);
    }
    for (const request of stepped) {
      if (request.status === "running" && request.seqs.every((s) => s.pendingLogits || s.pendingChoice))
        this.advance(request);
    }
  }

  private advance(request: Request): void {
    if (request.params.numBeams > 1) this.advanceBeams(request);
    else this.advanceSampled(request);
    if (request.seqs.length === 0 || request.beam?.done) {
      this.scheduler.retire(request);
      if (!request.beam) request.finished.sort((a, b) => b.score - a.score);
    }
    request.onProgress?.();
  }

  private advanceSampled(request: Request): void {
    const p = request.params;
    const first = request.seqs[0];
    if (request.seqs.length === 1 && first.numOutputTokens === 0 && p.numReturnSequences > 1) {
      // num_return_sequences: siblings share the prompt's blocks and draw from their own random streams.
      for (let i = 1; i < p.numReturnSequences; i++) {
        const child = first.branch(this.nextId++);
        this.blocks.fork(first, child);
        child.pendingLogits = first.pendingLogits!.slice();
        request.seqs.push(child);
        request.allSeqs.push(child);
        request.rngs.set(child, new Rng((p.sampling.seed + i * 0x9e3779b9) % 2 ** 53));
      }
    }
    for (const seq of [...request.seqs]) {
      const { token, logProb } = seq.pendingChoice ?? this.sample(request, seq);
      seq.pendingChoice = null;
      seq.tokenIds.push(token);
      seq.logProbs.push(logProb);
      seq.cumLogProb += logProb;
      const out = seq.outputIds;
      if (p.endId !== null && token === p.endId) seq.finishReason = "end_id";
      else if (
        p.stopWords.some(
          (w) => w.length > 0 && w.length <= out.length && w.every((t, i) => out[out.length - w.length + i] === t),
        )
      )
        seq.finishReason = "stop_words";
      else if (seq.numOutputTokens >= p.maxNewTokens) seq.finishReason = "length";
      if (seq.finishReason) {
        request.finished.push(finishSampled(seq));
        this.blocks.free(seq);
        request.seqs.splice(request.seqs.indexOf(seq), 1);
      }
    }
  }

  private sample(request: Request, seq: Sequence): { token: number; logProb: number } {
    const logits = seq.pendingLogits!;
    seq.pendingLogits = null;
    if (this.buildConfig.gather_generation_logits) seq.generationLogits.push(logits.slice());
    // The alternatives come from the model's own distribution, before penalties and truncation.
    if (request.params.topLogProbs > 0) seq.topLogProbs.push(topTokens(logSoftmax(logits), request.params.topLogProbs));
    const history = { promptIds: request.promptIds, outputIds: seq.outputIds };
    return sampleToken(logits, request.params.sampling, history, request.rngs.get(seq)!);
  }

  private advanceBeams(request: Request): void {
    const p = request.params;
    const prompt = request.promptIds.length;
    request.beam ??= new BeamSearch({
      numBeams: p.numBeams,
      lengthPenalty: p.lengthPenalty,
      earlyStopping: p.earlyStopping,
      endId: p.endId,
      promptLen: prompt,
      maxLen: prompt + p.maxNewTokens,
    });
    const rows = request.seqs.map((s) => {
      const row = s.pendingLogits!;
      s.pendingLogits = null;
      return logSoftmax(row);
    });
    const beam = request.beam;
    beam.step(rows);
    const parents = request.seqs;
    if (beam.done) {
      request.finished.push(...finishedFromBeams(beam, p.endId));
      return;
    }
    request.seqs = beam.running.map((b) => {
      const child = new Sequence(this.nextId++, [...request.promptIds, ...b.tokens], prompt);
      child.logProbs = b.logProbs;
      child.cumLogProb = b.logProbs.reduce((s, x) => s + x, 0);
      this.blocks.fork(parents[b.parent], child);
      return child;
    });
    for (const s of parents) this.blocks.free(s);
  }

  private output(request: Request): GenerationOutput {
    const b = this.buildConfig;
    const best = request.finished[0];
    return {
      outputIds: best.outputIds,
      finishReason: best.finishReason,
      sequences: request.finished.slice(0, request.params.numReturnSequences),
      ...(b.gather_context_logits ? { contextLogits: request.contextLogits } : {}),
      ...(b.gather_generation_logits ? { generationLogits: best.generationLogits } : {}),
      numComputedPromptTokens: request.numComputedPromptTokens,
    };
  }

  /** Runs prompts to completion together. A prompt that breaks a limit fails alone; the others run. */
  generate(prompts: readonly (readonly number[])[], opts: GenerateOptions): (GenerationOutput | RequestFailure)[] {
    const requests = prompts.map((p) => {
      try {
        return this.submit(p, opts);
      } catch (e) {
        if (e instanceof KilnError) return { error: e };
        throw e;
      }
    });
    while (requests.some((r) => r instanceof Request && r.status !== "finished")) this.step();
    return requests.map((r) => (r instanceof Request ? this.output(r) : r));
  }

  /** The result of a finished request. */
  result(request: Request): GenerationOutput {
    if (request.status !== "finished") throw new Error("request has not finished");
    return this.output(request);
  }

  /**
   * Streams one request's tokens as they are generated (one sequence: num_beams and num_return_sequences 1);
   * other submitted work advances alongside. Breaking out of the loop aborts the request.
   */
  async *stream(promptIds: readonly number[], opts: GenerateOptions): AsyncGenerator<number> {
    const params = resolveParams(opts);
    if (params.numBeams > 1 || params.numReturnSequences > 1) throw new LimitError(ONE_SEQUENCE);
    yield* this.follow(this.submit(promptIds, opts));
  }

  /** Streams the tokens of a submitted single-sequence request, stepping the engine as needed. */
  async *follow(request: Request): AsyncGenerator<number> {
    if (request.params.numBeams > 1 || request.params.numReturnSequences > 1) {
      throw new LimitError(ONE_SEQUENCE);
    }
    const seq = request.seqs[0];
    let sent = 0;
    try {
      while (true) {
        const produced = seq.numOutputTokens;
        while (sent < produced) yield seq.tokenIds[seq.numPromptTokens + sent++];
        if (request.status === "finished") return;
        this.step();
        await new Promise((r) => setImmediate(r)); // let consumers and other requests in between steps
      }
    } finally {
      this.abort(request);
    }
  }
}

export function isFailure(r: GenerationOutput | RequestFailure): r is RequestFailure {
  return "error" in r;
}
