// Runs steps on the cuda backend. Decode steps (one new token per sequence) of the greedy fast path run as
// CUDA graphs, one per batch-size bucket: the step is padded to the bucket, its metadata packed into pinned
// memory, and the captured graph (metadata copy, every kernel and GEMM, the greedy choice) replayed.

import type { DecoderModel } from "../../models/decoder.js";
import type { StepExecutor } from "../../runtime/model-runner.js";
import type { StepInput } from "../backend.js";
import type { CudaBackend, CudaTensor } from "./cuda-backend.js";

const BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/** KILN_CUDA_GRAPHS=0 runs every step eagerly (for profilers that follow kernel launches). */
const GRAPHS = process.env.KILN_CUDA_GRAPHS !== "0";

/** A decode step padded to `bucket` rows and sequences: padding rows write no cache and attend to nothing. */
export function padDecodeStep(step: StepInput, bucket: number): StepInput {
  const n = step.tokenIds.length;
  const pad = <A extends Int32Array>(a: A, fill: number) => {
    const out = new Int32Array(bucket).fill(fill);
    out.set(a);
    return out;
  };
  const empty = new Int32Array(0);
  return {
    tokenIds: pad(step.tokenIds, 0),
    positions: pad(step.positions, 0),
    slotMapping: pad(step.slotMapping, -1),
    seqs: [
      ...step.seqs,
      ...Array.from({ length: bucket - n }, () => ({ rowStart: 0, numNew: 0, numCached: 0, blockTable: empty })),
    ],
    logitRows: Int32Array.from({ length: bucket }, (_, i) => i),
  };
}

function isDecodeStep(step: StepInput): boolean {
  const n = step.tokenIds.length;
  return (
    step.seqs.length === n &&
    step.logitRows.length === n &&
    step.seqs.every((s, i) => s.numNew === 1 && s.rowStart === i && step.logitRows[i] === i)
  );
}

export class CudaExecutor implements StepExecutor {
  private readonly graphs = new Map<number, unknown>();
  /** Steps run by replaying a graph, and eagerly (for tests and metrics). */
  replays = 0;
  eagerSteps = 0;

  constructor(
    private readonly be: CudaBackend,
    private readonly model: DecoderModel<CudaTensor>,
    private readonly vocab: number,
  ) {}

  /** GPU milliseconds per replay of a captured bucket's graph, timed with events over `iters` replays. */
  timeGraph(bucket: number, iters: number): number | null {
    const graph = this.graphs.get(bucket);
    if (graph === undefined) return null;
    const d = this.be.device;
    const start = d.createEvent();
    const end = d.createEvent();
    d.record(start);
    for (let i = 0; i < iters; i++) d.replay(graph);
    d.record(end);
    return d.elapsed(start, end) / iters;
  }

  dispose(): void {
    for (const g of this.graphs.values()) this.be.device.destroyGraph(g);
    this.graphs.clear();
    this.be.dispose();
  }

  logits(step: StepInput): Float32Array {
    this.eagerSteps++;
    return this.be.toHost(this.model.forward(step));
  }

  greedy(step: StepInput): { tokens: Int32Array; logProbs: Float32Array } {
    const n = step.tokenIds.length;
    const bucket = GRAPHS && isDecodeStep(step) ? BUCKETS.find((b) => b >= n && b <= this.be.maxGraphRows) : undefined;
    if (bucket === undefined) {
      this.eagerSteps++;
      this.be.launchGreedy(this.model.forward(step), this.vocab);
      return this.be.readGreedy(step.logitRows.length);
    }
    const padded = padDecodeStep(step, bucket);
    let graph = this.graphs.get(bucket);
    if (graph === undefined) {
      // One eager run first loads every kernel (cuBLAS's too) outside the capture. It computes this very
      // step, so the replay below writes the same keys and values again.
      this.be.launchGreedy(this.model.forward(padded), this.vocab);
      this.be.readGreedy(bucket);
      graph = this.be.device.capture(() => this.be.launchGreedy(this.model.forward(padded), this.vocab));
      this.graphs.set(bucket, graph);
    }
    this.be.packStep(padded);
    this.be.device.replay(graph);
    this.replays++;
    const { tokens, logProbs } = this.be.readGreedy(bucket);
    return { tokens: tokens.subarray(0, n), logProbs: logProbs.subarray(0, n) };
  }
}
