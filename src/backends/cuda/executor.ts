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
/** KILN_CUDA_GRAPH_STATS=1 says on stderr, as the process exits, how many steps replayed a graph. */
const GRAPH_STATS = process.env.KILN_CUDA_GRAPH_STATS === "1";

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
    rowSampling: step.rowSampling && {
      temperature: padF(step.rowSampling.temperature, bucket, 1),
      topK: pad(step.rowSampling.topK, 1),
      topP: padF(step.rowSampling.topP, bucket, 1),
      minP: padF(step.rowSampling.minP, bucket, 0),
      seed: pad(step.rowSampling.seed, 0),
      counter: pad(step.rowSampling.counter, 0),
    },
  };
}

function padF(a: Float32Array, size: number, fill: number): Float32Array {
  const out = new Float32Array(size).fill(fill);
  out.set(a);
  return out;
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
  private readonly graphs = new Map<string, unknown>();
  /** Steps run by replaying a graph, and eagerly (for tests and metrics). */
  replays = 0;
  eagerSteps = 0;

  constructor(
    private readonly be: CudaBackend,
    private readonly model: DecoderModel<CudaTensor>,
    private readonly vocab: number,
  ) {
    if (GRAPH_STATS) {
      process.once("exit", () =>
        process.stderr.write(`kiln cuda steps: ${this.replays} graph replays, ${this.eagerSteps} eager\n`),
      );
    }
  }

  /** GPU milliseconds per replay of a captured bucket's graph, timed with events over `iters` replays. */
  timeGraph(bucket: number, iters: number): number | null {
    const graph = this.graphs.get(`greedy:${bucket}`);
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
    return this.choose(step, "greedy");
  }

  sample(step: StepInput): { tokens: Int32Array; logProbs: Float32Array } {
    return this.choose(step, "sample");
  }

  /** The forward pass and the device's choice of a token per logits row: by graph replay for decode steps. */
  private choose(step: StepInput, mode: "greedy" | "sample"): { tokens: Int32Array; logProbs: Float32Array } {
    const pick = (logits: CudaTensor) =>
      mode === "greedy" ? this.be.launchGreedy(logits, this.vocab) : this.be.launchSample(logits, this.vocab);
    const n = step.tokenIds.length;
    // A multi-rank model whose collectives go through the host runs every step eagerly (graphCapturable).
    const graphs = GRAPHS && this.model.graphCapturable;
    const bucket = graphs && isDecodeStep(step) ? BUCKETS.find((b) => b >= n && b <= this.be.maxGraphRows) : undefined;
    if (bucket === undefined) {
      this.eagerSteps++;
      pick(this.model.forward(step));
      return this.be.readGreedy(step.logitRows.length);
    }
    const padded = padDecodeStep(step, bucket);
    const key = `${mode}:${bucket}`;
    let graph = this.graphs.get(key);
    if (graph === undefined) {
      // One eager run first loads every kernel (cuBLAS's too) outside the capture. It computes this very
      // step, so the replay below writes the same keys and values again (and draws the same tokens).
      this.be.graphMode = true;
      try {
        pick(this.model.forward(padded));
        this.be.readGreedy(bucket);
        graph = this.be.device.capture(() => pick(this.model.forward(padded)));
      } finally {
        this.be.graphMode = false;
      }
      this.graphs.set(key, graph);
    }
    this.be.packStep(padded);
    this.be.device.replay(graph);
    this.replays++;
    const { tokens, logProbs } = this.be.readGreedy(bucket);
    return { tokens: tokens.subarray(0, n), logProbs: logProbs.subarray(0, n) };
  }
}
