// The cuda backend's ranks exchanging device tensors through NCCL: one communicator per tp group and per pp
// group, joined with ids handed round over the host Communicator, every call on the backend's stream (so
// that decode steps captured as CUDA graphs replay their collectives too).

import type { Communicator } from "../../comm/communicator.js";
import { chooseExchange } from "../../comm/exchange-choice.js";
import { shareGroupIds } from "../../comm/group-ids.js";
import type { Mapping } from "../../mapping.js";
import type { TensorCollectives } from "../backend.js";
import type { CudaBackend, CudaTensor } from "./cuda-backend.js";
import { DTYPE_BYTES } from "./cuda-tensor.js";
import { Nccl } from "./nccl.js";

/** A communicator of one group of world ranks; NCCL numbers its members by their place in the group. */
interface GroupComm {
  members: readonly number[];
  comm: unknown;
}

export class NcclCollectives implements TensorCollectives<CudaTensor> {
  readonly capturable = true;

  private constructor(
    private readonly be: CudaBackend,
    private readonly nccl: Nccl,
    private readonly groups: GroupComm[],
  ) {}

  /**
   * Joins this rank's tp and pp groups (groups of one need none). Collective over every rank: each joins at the
   * same point of its start, after its GPU's context is current.
   */
  static join(be: CudaBackend, comm: Communicator, mapping: Mapping, nccl = new Nccl()): NcclCollectives {
    const ids = shareGroupIds(comm, mapping, () => nccl.uniqueId());
    const groups: GroupComm[] = [];
    // tp first, then pp, on every rank: ncclCommInitRank waits for its group's members, who join in this order.
    for (const [members, id] of [
      [mapping.tpGroup(comm.rank), ids.tp],
      [mapping.ppGroup(comm.rank), ids.pp],
    ] as const) {
      if (id) groups.push({ members, comm: nccl.initRank(id, members.length, members.indexOf(comm.rank)) });
    }
    return new NcclCollectives(be, nccl, groups);
  }

  private commOf(group: readonly number[]): unknown {
    const g = this.groups.find((c) => c.members.length === group.length && c.members.every((m, i) => m === group[i]));
    if (!g) throw new Error(`no NCCL communicator for ranks [${group.join(", ")}]`);
    return g.comm;
  }

  private get stream(): unknown {
    return this.be.device.stream;
  }

  allReduce(x: CudaTensor, group: readonly number[]): CudaTensor {
    const n = x.rows * x.cols;
    if (n > 0) this.nccl.allReduce(x.ptr, x.ptr, n, x.dtype, this.commOf(group), this.stream);
    return x;
  }

  allGatherColumns(x: CudaTensor, group: readonly number[], rows: number, cols: number): CudaTensor {
    const k = group.length;
    // NCCL lays the shares one after another; a row of the result takes a row of each, side by side.
    const stacked = this.be.stepTensor(k * rows, cols, true);
    if (rows * cols > 0) this.nccl.allGather(x.ptr, stacked.ptr, rows * cols, "F32", this.commOf(group), this.stream);
    if (rows <= 1) return { ...stacked, rows, cols: k * cols };
    const out = this.be.stepTensor(rows, k * cols, true);
    const bytes = DTYPE_BYTES.F32;
    for (let s = 0; s < k; s++) {
      this.be.device.copy2DAsync(
        out.ptr + s * cols * bytes,
        k * cols * bytes,
        stacked.ptr + s * rows * cols * bytes,
        cols * bytes,
        cols * bytes,
        rows,
      );
    }
    return out;
  }

  send(x: CudaTensor, to: number, group: readonly number[]): void {
    const n = x.rows * x.cols;
    if (n === 0) return;
    const comm = this.commOf(group);
    this.nccl.group(({ send }) => send(x.ptr, n, x.dtype, group.indexOf(to), comm, this.stream));
  }

  recv(from: number, group: readonly number[], rows: number, cols: number, float32: boolean): CudaTensor {
    const out = this.be.stepTensor(rows, cols, float32);
    const n = rows * cols;
    if (n === 0) return out;
    const comm = this.commOf(group);
    this.nccl.group(({ recv }) => recv(out.ptr, n, out.dtype, group.indexOf(from), comm, this.stream));
    return out;
  }

  dispose(): void {
    for (const g of this.groups) this.nccl.destroy(g.comm);
    this.groups.length = 0;
  }
}

/**
 * NCCL collectives for this rank when every rank of the world has a GPU of its own (KILN_COLLECTIVES may force
 * either way), else null: the model then stages its exchanges through the host. Collective over every rank,
 * which all come to the same answer.
 */
export function ncclCollectivesFor(
  be: CudaBackend,
  comm: Communicator,
  mapping: Mapping,
  host: { ranksOnHost: number; gpus: number },
): NcclCollectives | null {
  const mine = chooseExchange({ ...host, requested: process.env.KILN_COLLECTIVES });
  const everyone = Array.from({ length: comm.worldSize }, (_, r) => r);
  const ranksOnHostStaging = comm.allReduce(Float32Array.of(mine === "host" ? 1 : 0), everyone)[0];
  return ranksOnHostStaging > 0 ? null : NcclCollectives.join(be, comm, mapping);
}
