// One NCCL unique id per group of ranks (a tp group, a pp group), handed round over the host Communicator
// that the ranks already meet by: the group's first rank makes the id, the others receive it from it.

import type { Mapping } from "../mapping.js";
import type { Communicator } from "./communicator.js";

/**
 * The id of `group` (which holds comm.rank): made by `make` on the group's first rank and sent to each other
 * member. Every member calls it, with the same group, at the same point of the run.
 */
export function shareGroupId(comm: Communicator, group: readonly number[], make: () => Uint8Array): Uint8Array {
  const [root, ...members] = group;
  if (comm.rank === root) {
    const id = make();
    if (id.byteLength % 4 !== 0) throw new Error(`a group id of ${id.byteLength} bytes is not whole 32-bit words`);
    // The Communicator moves float32 arrays; the id's bytes travel as they are, never read as numbers.
    const words = new Float32Array(id.slice().buffer);
    for (const m of members) comm.send(words, m);
    return id;
  }
  const words = comm.recv(root);
  return new Uint8Array(words.buffer, words.byteOffset, words.byteLength).slice();
}

/** The ids of this rank's tp and pp groups (null for a group of one, which needs no communicator). */
export function shareGroupIds(
  comm: Communicator,
  mapping: Mapping,
  make: () => Uint8Array,
): { tp: Uint8Array | null; pp: Uint8Array | null } {
  // Every rank shares its tp group's id first, then its pp group's: the groups of one kind are disjoint, so
  // the sends of one round never wait on another round's.
  const tpGroup = mapping.tpGroup(comm.rank);
  const ppGroup = mapping.ppGroup(comm.rank);
  const tp = tpGroup.length > 1 ? shareGroupId(comm, tpGroup, make) : null;
  const pp = ppGroup.length > 1 ? shareGroupId(comm, ppGroup, make) : null;
  return { tp, pp };
}
