// Turns a scheduled batch into the backend's step input (tokens, positions, cache slots), runs the model,
// and hands back the logits rows each sequence needs. With remove_input_padding the tokens are packed;
// without it every sequence takes as many rows as the longest, the extra rows computed and thrown away.

import type { StepInput } from "../backends/backend.js";
import type { ScheduledSeq } from "./scheduler.js";

/** Runs a step on an engine: its logits rows on the host, or just the greedy choice per row (no logits copied). */
export interface StepExecutor {
  /** Frees the engine's memory (device memory on a GPU): the executor and its backend are done. */
  dispose(): void;
  logits(step: StepInput): Float32Array;
  greedy(step: StepInput): { tokens: Int32Array; logProbs: Float32Array };
  /** Draws a token per logits row on the device with step.rowSampling (backends that can). */
  sample?(step: StepInput): { tokens: Int32Array; logProbs: Float32Array };
}

/** One row's draw on the device: what RowSampling holds for it. */
export interface RowParams {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  seed: number;
  counter: number;
}

/** A greedy choice and its log probability, at a sequence position. */
export interface PositionToken {
  pos: number;
  token: number;
  logProb: number;
}

/** A logits row and the sequence position it was computed at. */
export interface PositionLogits {
  pos: number;
  logits: Float32Array;
}

export class ModelRunner {
  /** Rows computed in the last step, padding included (for tests and metrics). */
  lastStepRows = 0;

  constructor(
    private readonly executor: StepExecutor,
    readonly tokensPerBlock: number,
    /** Width of a logits row (the lm_head's, possibly padded past the vocabulary). */
    private readonly logitsWidth: number,
    private readonly removeInputPadding: boolean,
  ) {}

  /**
   * Returns, per scheduled sequence, the logits rows asked for, in position order.
   * `wantRow(s, i)` says whether the i-th new token of scheduled sequence s needs its logits row.
   */
  run(batch: ScheduledSeq[], wantRow: (s: ScheduledSeq, i: number) => boolean): PositionLogits[][] {
    const { step, owners } = this.prepare(batch, wantRow);
    const logits = this.executor.logits(step);
    const rows: PositionLogits[][] = batch.map(() => []);
    const w = this.logitsWidth;
    owners.forEach(([b, pos], i) => {
      rows[b].push({ pos, logits: logits.slice(i * w, (i + 1) * w) });
    });
    return rows;
  }

  /**
   * Like run, but the backend chooses the token of each last position (greedy, or drawn with `sampling` per
   * scheduled sequence on backends that sample); no logits reach the host.
   */
  runGreedy(batch: ScheduledSeq[], sampling?: (s: ScheduledSeq) => RowParams): (PositionToken | null)[] {
    const { step, owners } = this.prepare(batch, ({ seq }, i) => seq.numCachedTokens + i === seq.numTokens - 1);
    if (sampling) {
      const rows = owners.map(([b]) => sampling(batch[b]));
      step.rowSampling = {
        temperature: Float32Array.from(rows, (r) => r.temperature),
        topK: Int32Array.from(rows, (r) => r.topK),
        topP: Float32Array.from(rows, (r) => r.topP),
        minP: Float32Array.from(rows, (r) => r.minP),
        seed: Int32Array.from(rows, (r) => r.seed),
        counter: Int32Array.from(rows, (r) => r.counter),
      };
    }
    const { tokens, logProbs } =
      sampling && this.executor.sample ? this.executor.sample(step) : this.executor.greedy(step);
    const out: (PositionToken | null)[] = batch.map(() => null);
    owners.forEach(([b, pos], i) => {
      out[b] = { pos, token: tokens[i], logProb: logProbs[i] };
    });
    return out;
  }

  private prepare(
    batch: ScheduledSeq[],
    wantRow: (s: ScheduledSeq, i: number) => boolean,
  ): { step: StepInput; owners: [number, number][] } {
    const stride = this.removeInputPadding ? 0 : Math.max(...batch.map((s) => s.numNewTokens));
    const numRows = this.removeInputPadding ? batch.reduce((n, s) => n + s.numNewTokens, 0) : stride * batch.length;
    const tokenIds = new Int32Array(numRows);
    const positions = new Int32Array(numRows);
    const slotMapping = new Int32Array(numRows).fill(-1); // padding rows write nothing
    const logitRows: number[] = [];
    const owners: [number, number][] = [];
    const tpb = this.tokensPerBlock;
    let row = 0;
    const seqs = batch.map((s, b) => {
      const { seq, numNewTokens } = s;
      const rowStart = this.removeInputPadding ? row : b * stride;
      row = rowStart;
      for (let i = 0; i < numNewTokens; i++, row++) {
        const pos = seq.numCachedTokens + i;
        tokenIds[row] = seq.tokenIds[pos];
        positions[row] = pos;
        slotMapping[row] = seq.blockTable[Math.floor(pos / tpb)] * tpb + (pos % tpb);
        if (wantRow(s, i)) {
          logitRows.push(row);
          owners.push([b, pos]);
        }
      }
      return {
        rowStart,
        numNew: numNewTokens,
        numCached: seq.numCachedTokens,
        blockTable: Int32Array.from(seq.blockTable),
      };
    });
    this.lastStepRows = numRows;
    return { step: { tokenIds, positions, slotMapping, seqs, logitRows: Int32Array.from(logitRows) }, owners };
  }
}
