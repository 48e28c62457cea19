// A step's metadata on its way to the GPU: token ids, positions, cache slots, each row's sequence, the
// logits rows, block tables and per-row sampling parameters, packed into one pinned host buffer and copied to
// the device in one transfer. Kernels read it at offsets the layout gives.

import type { StepInput } from "../backend.js";
import type { CudaDevice } from "./driver.js";

/** Offsets (in 32-bit words) of the step's metadata within the buffer. */
export interface StepLayout {
  tokenIds: number;
  positions: number;
  slots: number;
  rowSeq: number;
  logitRows: number;
  blockTables: number;
  /** Context attention's tiles (attention_fmha): four words each, {sequence, first row, rows, first position}. */
  fmhaTiles: number;
  numFmhaTiles: number;
  /** Whether some sequence brings more than one new row (a prompt chunk) and every row is a sequence's:
   * context attention's case. */
  hasContext: boolean;
  /** Where the per-row sampling parameters start (six arrays of numLogitRows). */
  sampling: number;
  rows: number;
  numLogitRows: number;
  /** Longest context a row of this step attends to. */
  maxVisible: number;
}

export interface StepLimits {
  maxRows: number;
  maxSeqs: number;
  maxBlocksPerSeq: number;
  logitRows: number;
}

/** FMHA_ROWS in decoder.cu: query rows of one context attention tile. */
export const FMHA_ROWS = 64;

/** The most tiles a step can have: a sequence's rows fill all its tiles but the last. */
function maxFmhaTiles(limits: StepLimits): number {
  return Math.ceil(limits.maxRows / FMHA_ROWS) + limits.maxSeqs;
}

export class StepBuffer {
  private readonly host: { handle: unknown; ints: Int32Array; floats: Float32Array };
  private readonly device: number;
  /** Words the last pack filled: what upload copies. */
  private used = 0;

  constructor(
    private readonly cuda: CudaDevice,
    private readonly limits: StepLimits,
  ) {
    // tokens, positions, slots, row → sequence, logit rows, block tables, context attention's tiles, and six
    // sampling values a logits row
    const words =
      5 * limits.maxRows +
      limits.maxSeqs * limits.maxBlocksPerSeq +
      4 * maxFmhaTiles(limits) +
      6 * limits.logitRows +
      64;
    const host = cuda.allocHost(words * 4);
    this.host = { handle: host.handle, ints: new Int32Array(host.buffer), floats: new Float32Array(host.buffer) };
    this.device = cuda.alloc(words * 4);
  }

  devicePtr(offsetWords: number): number {
    return this.device + offsetWords * 4;
  }

  /** Lays `step` out in pinned memory (host work only). */
  pack(step: StepInput): StepLayout {
    const rows = step.tokenIds.length;
    const L = this.limits;
    if (rows > L.maxRows || step.seqs.length > L.maxSeqs) {
      throw new Error(
        `cuda step of ${rows} rows and ${step.seqs.length} sequences exceeds the engine's ${L.maxRows} / ${L.maxSeqs}`,
      );
    }
    const ints = this.host.ints;
    const n = step.logitRows.length;
    const fmhaTiles = 4 * rows + n + step.seqs.length * L.maxBlocksPerSeq;
    const hasContext = step.seqs.some((s) => s.numNew > 1) && step.seqs.reduce((k, s) => k + s.numNew, 0) === rows;
    // Only context attention reads the tiles: decode steps (the graphed hot path) skip building them.
    const tiles = hasContext
      ? step.seqs.flatMap((s, i) =>
          Array.from({ length: Math.ceil(s.numNew / FMHA_ROWS) }, (_, k) => {
            const first = k * FMHA_ROWS;
            return [i, s.rowStart + first, Math.min(FMHA_ROWS, s.numNew - first), step.positions[s.rowStart + first]];
          }),
        )
      : [];
    const layout: StepLayout = {
      tokenIds: 0,
      positions: rows,
      slots: 2 * rows,
      rowSeq: 3 * rows,
      logitRows: 4 * rows,
      blockTables: 4 * rows + n,
      fmhaTiles,
      numFmhaTiles: tiles.length,
      hasContext,
      sampling: fmhaTiles + 4 * tiles.length,
      rows,
      numLogitRows: n,
      maxVisible: step.positions.reduce((m, p) => Math.max(m, p + 1), 0),
    };
    ints.set(step.tokenIds, layout.tokenIds);
    ints.set(step.positions, layout.positions);
    ints.set(step.slotMapping, layout.slots);
    ints.fill(-1, layout.rowSeq, layout.rowSeq + rows);
    step.seqs.forEach((s, i) => {
      ints.fill(i, layout.rowSeq + s.rowStart, layout.rowSeq + s.rowStart + s.numNew);
      if (s.blockTable.length > L.maxBlocksPerSeq) throw new Error("block table longer than the engine's max_seq_len");
      ints.set(s.blockTable, layout.blockTables + i * L.maxBlocksPerSeq);
    });
    ints.set(step.logitRows, layout.logitRows);
    if (hasContext) ints.set(tiles.flat(), fmhaTiles);
    this.used = layout.sampling;
    const rs = step.rowSampling;
    if (rs) {
      const f = this.host.floats;
      f.set(rs.temperature, layout.sampling);
      ints.set(rs.topK, layout.sampling + n);
      f.set(rs.topP, layout.sampling + 2 * n);
      f.set(rs.minP, layout.sampling + 3 * n);
      ints.set(rs.seed, layout.sampling + 4 * n);
      ints.set(rs.counter, layout.sampling + 5 * n);
      this.used += 6 * n;
    }
    return layout;
  }

  /** Copies what the last pack filled to the device, in stream order (capturable into a graph). */
  upload(): void {
    this.cuda.uploadAsync(this.device, this.host.handle, this.used * 4);
  }

  dispose(): void {
    this.cuda.free(this.device);
    this.cuda.freeHost(this.host.handle);
  }
}
