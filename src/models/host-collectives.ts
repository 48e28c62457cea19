// TensorCollectives through the host: each tensor copied to a float32 host array, exchanged over the ranks'
// Communicator (FIFOs between processes), and copied back. What the cpu backend always uses, and what GPU
// ranks use where they share a GPU; blocking host I/O, so never inside a CUDA graph.

import type { Backend, TensorCollectives } from "../backends/backend.js";
import type { Communicator } from "../comm/communicator.js";
import { EngineError } from "../errors.js";

export class HostStagedCollectives<T> implements TensorCollectives<T> {
  readonly capturable = false;

  constructor(
    private readonly be: Backend<T>,
    private readonly comm: Communicator,
  ) {}

  allReduce(x: T, group: readonly number[], cols: number, float32: boolean): T {
    const sum = this.comm.allReduce(this.be.toHost(x), group);
    return this.fromHost(sum, sum.length / cols, cols, float32);
  }

  allGatherColumns(x: T, group: readonly number[], rows: number, cols: number): T {
    const shares = this.comm.allGather(this.be.toHost(x), group);
    return this.fromHost(concatColumns(shares, rows, cols), rows, shares.length * cols, true);
  }

  send(x: T, to: number): void {
    this.comm.send(this.be.toHost(x), to);
  }

  recv(from: number, _group: readonly number[], rows: number, cols: number, float32: boolean): T {
    return this.fromHost(this.comm.recv(from), rows, cols, float32);
  }

  dispose(): void {}

  fromHost(data: Float32Array, rows: number, cols: number, float32: boolean): T {
    if (!this.be.fromHost) {
      throw new EngineError(`the ${this.be.name} backend runs single-rank engines only (this engine's world_size > 1)`);
    }
    return this.be.fromHost(data, rows, cols, float32);
  }
}

/** Row-major [rows, width] shares laid side by side into [rows, shares × width]. */
export function concatColumns(shares: Float32Array[], rows: number, width: number): Float32Array {
  const total = shares.length * width;
  const out = new Float32Array(rows * total);
  shares.forEach((s, k) => {
    for (let r = 0; r < rows; r++) out.set(s.subarray(r * width, (r + 1) * width), r * total + k * width);
  });
  return out;
}
