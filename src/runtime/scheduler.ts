// Who runs this step and how many tokens each: running requests first (one token per sequence when
// decoding), then waiting ones in arrival order, within max_batch_size requests, max_num_tokens tokens and
// the free KV blocks. A prompt larger than the token budget is split over several steps (chunked
// context); when the pool runs dry the newest running request gives its blocks back and waits
// (preemption), to recompute its tokens later.

import type { BlockCopy, BlockManager } from "./block-manager.js";
import type { Request } from "./request.js";
import type { Sequence } from "./sequence.js";

export interface ScheduledSeq {
  request: Request;
  seq: Sequence;
  numNewTokens: number;
}

export interface SchedulerLimits {
  maxBatchSize: number;
  maxNumTokens: number;
  /** Whether a prompt may be split over steps (use_paged_context_fmha). */
  chunkedContext: boolean;
  /** Most sequences running at once (beams and sampled siblings count one each). */
  maxSeqs: number;
}

export interface Schedule {
  batch: ScheduledSeq[];
  /** Shared blocks to copy before the step writes into them (beam forks). */
  copies: BlockCopy[];
}

export class Scheduler {
  readonly waiting: Request[] = [];
  readonly running: Request[] = [];
  /** Requests sent back to wait for blocks so far (for tests and metrics). */
  numPreemptions = 0;

  constructor(
    private readonly limits: SchedulerLimits,
    private readonly blocks: BlockManager,
  ) {}

  add(request: Request): void {
    this.waiting.push(request);
  }

  get hasWork(): boolean {
    return this.waiting.length > 0 || this.running.length > 0;
  }

  schedule(): Schedule {
    const batch: ScheduledSeq[] = [];
    const copies: BlockCopy[] = [];
    let budget = this.limits.maxNumTokens;
    for (const request of [...this.running]) {
      if (request.status !== "running") continue; // preempted earlier in this loop
      for (const seq of request.seqs) {
        const n = Math.min(seq.numUncachedTokens, budget);
        if (n === 0) continue;
        while (!this.blocks.canGrow(seq, seq.numCachedTokens + n) && request.status === "running") {
          this.preempt(this.running[this.running.length - 1], batch);
        }
        if (request.status !== "running") break;
        const copy = this.blocks.makeWritable(seq);
        if (copy) copies.push(copy);
        this.blocks.grow(seq, seq.numCachedTokens + n);
        batch.push({ request, seq, numNewTokens: n });
        budget -= n;
      }
    }
    let seqs = this.running.reduce((n, r) => n + r.width, 0);
    while (this.waiting.length > 0 && budget > 0 && this.running.length < this.limits.maxBatchSize) {
      const request = this.waiting[0];
      if (seqs + request.width > this.limits.maxSeqs) break;
      const admitted: ScheduledSeq[] = [];
      let left = budget;
      for (const seq of request.seqs) {
        // Without chunked context a prompt runs whole, unless it could never fit one step (a recompute).
        const whole = !this.limits.chunkedContext && seq.numUncachedTokens <= this.limits.maxNumTokens;
        const n = left > 0 && (!whole || seq.numUncachedTokens <= left) ? this.blocks.admit(seq, left) : 0;
        if (n === 0) break;
        admitted.push({ request, seq, numNewTokens: n });
        left -= n;
      }
      if (admitted.length < request.seqs.length) {
        for (const s of admitted) this.blocks.free(s.seq);
        break;
      }
      this.waiting.shift();
      seqs += request.width;
      request.status = "running";
      this.running.push(request);
      batch.push(...admitted);
      budget = left;
    }
    return { batch, copies };
  }

  /** The request gives its blocks back and waits at the head of the queue; its tokens will be recomputed. */
  private preempt(request: Request, batch: ScheduledSeq[]): void {
    this.numPreemptions++;
    for (let i = batch.length - 1; i >= 0; i--) if (batch[i].request === request) batch.splice(i, 1);
    for (const seq of request.seqs) {
      this.blocks.free(seq);
      seq.pendingLogits = null;
      seq.pendingChoice = null;
    }
    this.running.splice(this.running.indexOf(request), 1);
    request.status = "waiting";
    this.waiting.unshift(request);
  }

  /** Removes a request (finished or aborted) and frees every block it holds. */
  retire(request: Request): void {
    const r = this.running.indexOf(request);
    if (r >= 0) this.running.splice(r, 1);
    const w = this.waiting.indexOf(request);
    if (w >= 0) this.waiting.splice(w, 1);
    for (const seq of request.seqs) this.blocks.free(seq);
    request.status = "finished";
  }
}
