// Who runs this step and how many tokens each: running sequences first (one token each when decoding),
// then waiting ones in arrival order, within max_batch_size, max_num_tokens and the free KV blocks.
// A prompt larger than the token budget is split over several steps (chunked context).

import type { BlockManager } from "./block-manager.js";
import type { Sequence } from "./sequence.js";

export interface ScheduledSeq {
  seq: Sequence;
  numNewTokens: number;
}

export interface SchedulerLimits {
  maxBatchSize: number;
  maxNumTokens: number;
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];

  constructor(
    private readonly limits: SchedulerLimits,
    private readonly blocks: BlockManager,
  ) {}

  add(seq: Sequence): void {
    this.waiting.push(seq);
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): ScheduledSeq[] {
    const out: ScheduledSeq[] = [];
    let budget = this.limits.maxNumTokens;
    for (const seq of [...this.running]) {
      if (budget === 0) break;
      const n = Math.min(seq.numUncachedTokens, budget);
      if (!this.blocks.canGrow(seq, seq.numCachedTokens + n)) {
        this.preempt(seq);
        continue;
      }
      this.blocks.grow(seq, seq.numCachedTokens + n);
      out.push({ seq, numNewTokens: n });
      budget -= n;
    }
    while (this.waiting.length > 0 && budget > 0 && this.running.length < this.limits.maxBatchSize) {
      const seq = this.waiting[0];
      const n = Math.min(seq.numUncachedTokens, budget);
      if (!this.blocks.canGrow(seq, seq.numCachedTokens + n)) break;
      this.waiting.shift();
      this.blocks.grow(seq, seq.numCachedTokens + n);
      seq.status = "running";
      this.running.push(seq);
      out.push({ seq, numNewTokens: n });
      budget -= n;
    }
    return out;
  }

  /** Out of KV blocks: the sequence gives its blocks back and will recompute its tokens later. */
  private preempt(seq: Sequence): void {
    this.blocks.free(seq);
    this.running.splice(this.running.indexOf(seq), 1);
    seq.status = "waiting";
    this.waiting.unshift(seq);
  }

  finish(seq: Sequence): void {
    const i = this.running.indexOf(seq);
    if (i >= 0) this.running.splice(i, 1);
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
    this.blocks.free(seq);
    seq.status = "finished";
  }
}
