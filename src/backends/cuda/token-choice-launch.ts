// The next token of every logits row, chosen on the GPU: greedy (argmax_rows, the row split over
// ARGMAX_SPLIT blocks, the last of them merging) or drawn with each row's sampling parameters (sample_rows). Launches are
// graph-capturable and end with one asynchronous copy of the choices into pinned memory, so `read` only
// waits for the stream (two synchronous copies from pageable memory after the wait had cost every step).

import type { CudaTensor, KernelName } from "./cuda-tensor.js";
import { type CudaDevice, i32, ptr } from "./driver.js";

/** ARGMAX_SPLIT in decoder.cu: blocks that share one logits row in the greedy choice. */
const ARGMAX_SPLIT = 128;

export class TokenChoiceLaunch {
  /** A launch's `rows` chosen tokens, then their `rows` log probs. */
  private readonly out: number;
  /** Where each launch copies `out` to (pinned host memory). */
  private readonly host: { handle: unknown; buffer: ArrayBuffer };
  /** The greedy choice's per-block partial maxima, and its per-row counters of blocks done (kept at zero). */
  private readonly partial: number;
  private readonly arrivals: number;

  constructor(
    private readonly device: CudaDevice,
    private readonly fn: (name: KernelName) => unknown,
    maxRows: number,
    logitRows: number,
  ) {
    this.out = device.alloc(maxRows * 8);
    this.host = device.allocHost(maxRows * 8);
    this.partial = device.alloc(logitRows * ARGMAX_SPLIT * 3 * 4);
    this.arrivals = device.alloc(logitRows * 4);
    device.memsetAsync(this.arrivals, 0, logitRows * 4);
  }

  /** Where a launch of `rows` rows writes its log probs: right after its tokens, so one copy takes both. */
  private logProbs(rows: number): number {
    return this.out + rows * 4;
  }

  /** Enqueues the copy of a launch's choices to pinned memory, where `read` finds them. */
  private copyOut(rows: number): void {
    this.device.downloadAsync(this.host.handle, this.out, rows * 8);
  }

  /** Enqueues the greedy choice of every logits row. */
  launchGreedy(logits: CudaTensor, vocab: number): void {
    if (logits.rows === 0) return;
    this.device.launch(
      this.fn("argmax_rows"),
      [logits.rows, ARGMAX_SPLIT],
      [256],
      [
        ptr(this.out),
        ptr(this.logProbs(logits.rows)),
        ptr(this.partial),
        ptr(this.arrivals),
        ptr(logits.ptr),
        i32(vocab),
        i32(logits.cols),
      ],
    );
    this.copyOut(logits.rows);
  }

  /**
   * Enqueues a draw for each of `rows` logits rows; `params(k)` points at the step's k-th per-row sampling
   * array (six of them, as step-buffer.ts lays them out).
   */
  launchSample(logits: CudaTensor, vocab: number, rows: number, params: (k: number) => number): void {
    if (rows === 0) return;
    const at = (k: number) => ptr(params(k));
    this.device.launch(
      this.fn("sample_rows"),
      [rows],
      [1024],
      [
        ptr(this.out),
        ptr(this.logProbs(rows)),
        ptr(logits.ptr),
        i32(vocab),
        i32(logits.cols),
        at(0),
        at(1),
        at(2),
        at(3),
        at(4),
        at(5),
      ],
    );
    this.copyOut(rows);
  }

  /**
   * Waits for the stream and reads the choices of the last launch (or graph replay of one), which chose for
   * `rows` rows: its log probs follow its tokens.
   */
  read(rows: number): { tokens: Int32Array; logProbs: Float32Array } {
    this.device.synchronize();
    return {
      tokens: new Int32Array(this.host.buffer, 0, rows).slice(),
      logProbs: new Float32Array(this.host.buffer, rows * 4, rows).slice(),
    };
  }

  dispose(): void {
    this.device.free(this.out);
    this.device.freeHost(this.host.handle);
    this.device.free(this.partial);
    this.device.free(this.arrivals);
  }
}
