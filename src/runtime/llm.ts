// The library API: load an engine, submit token prompts, step the engine (schedule → run → postprocess),
// and read results as a batch or as a stream of tokens.

import { LimitError } from "../errors.js";
import { BlockManager } from "./block-manager.js";
import { type LoadedEngine, loadEngine } from "./engine-loader.js";
import { ModelRunner } from "./model-runner.js";
import { greedy } from "./sampling.js";
import { Scheduler } from "./scheduler.js";
import { type FinishReason, type SamplingParams, Sequence } from "./sequence.js";

export interface LoadOptions {
  /** KV cache capacity in tokens; defaults to what max_batch_size × max_seq_len needs, capped by memory. */
  kvCacheTokens?: number;
}

export interface GenerationOutput {
  outputIds: number[];
  finishReason: FinishReason;
  /** [prompt position][vocab], when the engine gathers context logits. */
  contextLogits?: Float32Array[];
  /** [generated token][vocab], when the engine gathers generation logits. */
  generationLogits?: Float32Array[];
}

const KV_BUDGET_BYTES = 4 * 2 ** 30;

export class LLM {
  private readonly scheduler: Scheduler;
  private readonly blocks: BlockManager;
  private readonly runner: ModelRunner;
  private nextId = 0;
  /** Called after each token a sequence gains (streaming). */
  private readonly listeners = new Map<Sequence, () => void>();

  private constructor(
    readonly engine: LoadedEngine,
    opts: LoadOptions,
  ) {
    const b = engine.config.build_config;
    const m = engine.config.pretrained_config;
    const tpb = b.tokens_per_block;
    const blockBytes = m.num_hidden_layers * 2 * tpb * m.num_key_value_heads * m.head_size * 4;
    const wanted = opts.kvCacheTokens ?? b.max_batch_size * b.max_seq_len;
    const numBlocks = Math.max(1, Math.min(Math.ceil(wanted / tpb), Math.floor(KV_BUDGET_BYTES / blockBytes)));
    this.blocks = new BlockManager(numBlocks, tpb);
    engine.backend.allocateKvCache({
      ...engine.model.attentionShape,
      numLayers: m.num_hidden_layers,
      numBlocks,
      tokensPerBlock: tpb,
    });
    this.scheduler = new Scheduler({ maxBatchSize: b.max_batch_size, maxNumTokens: b.max_num_tokens }, this.blocks);
    const lmHeadRows = engine.backend.weight("lm_head.weight").rows;
    this.runner = new ModelRunner({ forward: (s) => engine.backend.toHost(engine.model.forward(s)) }, tpb, lmHeadRows);
  }

  static load(engineDir: string, opts: LoadOptions = {}): LLM {
    return new LLM(loadEngine(engineDir), opts);
  }

  get buildConfig() {
    return this.engine.config.build_config;
  }

  get vocabSize(): number {
    return this.engine.config.pretrained_config.vocab_size;
  }

  get numFreeKvBlocks(): number {
    return this.blocks.numFreeBlocks;
  }

  get numKvBlocks(): number {
    return this.blocks.numBlocks;
  }

  /** Checks a request against the engine's limits; throws a LimitError naming the limit. */
  validate(promptIds: readonly number[], params: SamplingParams): void {
    const b = this.buildConfig;
    if (promptIds.length === 0) throw new LimitError("the prompt is empty: at least one token is needed");
    if (promptIds.length > b.max_input_len) {
      throw new LimitError(
        `the prompt has ${promptIds.length} tokens, more than the engine's max_input_len ${b.max_input_len}`,
      );
    }
    if (!Number.isInteger(params.maxNewTokens) || params.maxNewTokens < 1) {
      throw new LimitError(`max_output_len must be a positive integer, got ${params.maxNewTokens}`);
    }
    if (promptIds.length + params.maxNewTokens > b.max_seq_len) {
      throw new LimitError(
        `max_output_len ${params.maxNewTokens} with a ${promptIds.length}-token prompt exceeds the engine's max_seq_len ${b.max_seq_len}`,
      );
    }
    const bad = promptIds.find((t) => !Number.isInteger(t) || t < 0 || t >= this.vocabSize);
    if (bad !== undefined) throw new LimitError(`token id ${bad} is outside the vocabulary [0, ${this.vocabSize})`);
    if (this.blocks.blocksFor(promptIds.length + params.maxNewTokens) > this.blocks.numBlocks) {
      throw new LimitError(
        `the request needs more KV cache than the pool holds (${this.blocks.numBlocks * this.blocks.tokensPerBlock} tokens)`,
      );
    }
  }

  submit(promptIds: readonly number[], params: SamplingParams): Sequence {
    this.validate(promptIds, params);
    const seq = new Sequence(this.nextId++, promptIds, params);
    this.scheduler.add(seq);
    return seq;
  }

  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /** One engine step: schedule, run the model, sample and retire finished sequences. */
  step(): void {
    const batch = this.scheduler.schedule();
    if (batch.length === 0) return;
    const b = this.buildConfig;
    const rows = this.runner.run(batch, ({ seq, numNewTokens }, i) => {
      const pos = seq.numCachedTokens + i;
      const completes = pos === seq.numTokens - 1 && seq.numCachedTokens + numNewTokens === seq.numTokens;
      const contextRow = b.gather_context_logits && pos < seq.numPromptTokens && seq.contextLogits.length <= pos;
      return completes || contextRow;
    });
    batch.forEach(({ seq, numNewTokens }, k) => {
      seq.numCachedTokens += numNewTokens;
      let last: Float32Array | null = null;
      for (const { pos, logits } of rows[k]) {
        const row = logits.subarray(0, this.vocabSize);
        if (b.gather_context_logits && pos < seq.numPromptTokens && seq.contextLogits.length === pos)
          seq.contextLogits.push(row);
        if (pos === seq.numTokens - 1) last = row;
      }
      if (last === null) return; // a chunk of the prompt: nothing to sample yet
      const logits = last;
      if (b.gather_generation_logits) seq.generationLogits.push(logits);
      const token = greedy(logits);
      seq.tokenIds.push(token);
      if (seq.params.endId !== null && token === seq.params.endId) seq.finishReason = "end_id";
      else if (seq.numOutputTokens >= seq.params.maxNewTokens) seq.finishReason = "length";
      if (seq.finishReason) this.scheduler.finish(seq);
      this.listeners.get(seq)?.();
    });
  }

  /** Runs a batch of prompts to completion; results in prompt order. */
  generate(prompts: readonly (readonly number[])[], params: SamplingParams): GenerationOutput[] {
    for (const p of prompts) this.validate(p, params);
    const seqs = prompts.map((p) => this.submit(p, params));
    while (seqs.some((s) => s.status !== "finished")) this.step();
    return seqs.map((s) => this.output(s));
  }

  output(seq: Sequence): GenerationOutput {
    const b = this.buildConfig;
    return {
      outputIds: seq.outputIds,
      finishReason: seq.finishReason ?? "length",
      ...(b.gather_context_logits ? { contextLogits: seq.contextLogits } : {}),
      ...(b.gather_generation_logits ? { generationLogits: seq.generationLogits } : {}),
    };
  }

  /** Streams one prompt's tokens as they are generated; other submitted work advances alongside. */
  async *stream(promptIds: readonly number[], params: SamplingParams): AsyncGenerator<number> {
    const seq = this.submit(promptIds, params);
    const ready: number[] = [];
    this.listeners.set(seq, () => ready.push(seq.tokenIds[seq.numTokens - 1]));
    try {
      while (seq.status !== "finished" || ready.length > 0) {
        if (ready.length === 0) {
          this.step();
          await new Promise((r) => setImmediate(r)); // let consumers and other requests in between steps
        }
        while (ready.length > 0) yield ready.shift()!;
      }
    } finally {
      this.listeners.delete(seq);
    }
  }
}
