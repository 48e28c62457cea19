// The next token of every logits row, chosen on the GPU: greedy (argmax_partial then argmax_final, the row
// split over ARGMAX_SPLIT blocks) or drawn with each row's sampling parameters (sample_rows). Launches are
// graph-capturable; `read` waits for the stream and copies the choices back.

import type { CudaTensor, KernelName } from "./cuda-tensor.js";
import { type CudaDevice, i32, ptr } from "./driver.js";

/** ARGMAX_SPLIT in decoder.cu: blocks that share one logits row in the greedy choice. */
const ARGMAX_SPLIT = 128;

export class TokenChoiceLaunch {
  /** The chosen tokens [maxRows] then their log probs [maxRows]. */
  private readonly out: number;
  /** The greedy choice's per-block partial maxima. */
  private readonly partial: number;

  constructor(
    private readonly device: CudaDevice,
    private readonly fn: (name: KernelName) => unknown,
    private readonly maxRows: number,
    logitRows: number,
  ) {
    this.out = device.alloc(maxRows * 8);
    this.partial = device.alloc(logitRows * ARGMAX_SPLIT * 3 * 4);
  }

  private get logProbs(): number {
    return this.out + this.maxRows * 4;
  }

  /** Enqueues the greedy choice of every logits row. */
  launchGreedy(logits: CudaTensor, vocab: number): void {
    if (logits.rows === 0) return;
    this.device.launch(
      this.fn("argmax_partial"),
      [logits.rows, ARGMAX_SPLIT],
      [256],
      [ptr(this.partial), ptr(logits.ptr), i32(vocab), i32(logits.cols)],
    );
    this.device.launch(
      this.fn("argmax_final"),
      [logits.rows],
      [32],
      [ptr(this.out), ptr(this.logProbs), ptr(this.partial)],
    );
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
        ptr(this.logProbs),
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
  }

  /** Waits for the stream and reads the choices of the first `rows` rows. */
  read(rows: number): { tokens: Int32Array; logProbs: Float32Array } {
    this.device.synchronize();
    const tokens = new Int32Array(rows);
    const logProbs = new Float32Array(rows);
    if (rows > 0) {
      this.device.download(tokens, this.out);
      this.device.download(logProbs, this.logProbs);
    }
    return { tokens, logProbs };
  }

  dispose(): void {
    this.device.free(this.out);
    this.device.free(this.partial);
  }
}
