// The collectives ranks use to exchange activations, behind one interface: the cpu backend's ranks use
// FifoCommunicator (processes of one host); GPU ranks will use NCCL. Every call is synchronous and
// collective: each member of `group` makes the same call in the same order, as with NCCL or MPI.

export interface Communicator {
  readonly rank: number;
  readonly worldSize: number;
  /**
   * The elementwise sum of every member's `data`, added in group order so that every member gets the
   * same bits (ranks that sample from the result must agree).
   */
  allReduce(data: Float32Array, group: readonly number[]): Float32Array;
  /** Every member's `data`, in group order. */
  allGather(data: Float32Array, group: readonly number[]): Float32Array[];
  send(data: Float32Array, to: number): void;
  recv(from: number): Float32Array;
  /** Returns once every rank has called it. */
  barrier(): void;
  close(): void;
}

/** A communicator for a world of one: what a single-rank engine runs with. */
export const SOLO: Communicator = {
  rank: 0,
  worldSize: 1,
  allReduce: (data) => data,
  allGather: (data) => [data],
  send: () => {
    throw new Error("a world of one rank has nobody to send to");
  },
  recv: () => {
    throw new Error("a world of one rank has nobody to receive from");
  },
  barrier: () => {},
  close: () => {},
};
