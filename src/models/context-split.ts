// Context parallelism: each sequence's new tokens of a step split into cp_size contiguous chunks, one per cp
// rank. A rank runs the norms, GEMMs and MLP on its chunk only; attention gathers every chunk's keys and
// values so that each cp rank's cache holds the whole sequence, and a rank's queries attend over it. A
// single generation token is one chunk, so it is computed by one cp rank and its K/V shared the same way.

import type { StepInput } from "../backends/backend.js";

export interface ContextSplit {
  /** Per cp rank, the rows of the full step its chunk holds, in order. */
  rowsOf: Int32Array[];
  /** This rank's chunk as a packed step of its own. */
  local: StepInput;
  /** The full step with each sequence narrowed to this rank's chunk: its queries, over the full qkv rows. */
  queries: StepInput;
}

/** Chunk c of n tokens: [⌊c·n/cp⌋, ⌊(c+1)·n/cp⌋), so later ranks take the extra token. */
function chunk(n: number, c: number, cp: number): [number, number] {
  return [Math.floor((c * n) / cp), Math.floor(((c + 1) * n) / cp)];
}

export function splitContext(step: StepInput, cpRank: number, cpSize: number): ContextSplit {
  const rowsOf = Array.from({ length: cpSize }, (_, c) =>
    Int32Array.from(
      step.seqs.flatMap((s) => {
        const [a, b] = chunk(s.numNew, c, cpSize);
        return Array.from({ length: b - a }, (_, i) => s.rowStart + a + i);
      }),
    ),
  );
  const mine = rowsOf[cpRank];
  let row = 0;
  const localSeqs = step.seqs.map((s) => {
    const [a, b] = chunk(s.numNew, cpRank, cpSize);
    const seq = { rowStart: row, numNew: b - a, numCached: s.numCached + a, blockTable: s.blockTable };
    row += b - a;
    return seq;
  });
  const pick = (src: Int32Array) => Int32Array.from(mine, (r) => src[r]);
  return {
    rowsOf,
    local: {
      tokenIds: pick(step.tokenIds),
      positions: pick(step.positions),
      slotMapping: pick(step.slotMapping),
      seqs: localSeqs,
      logitRows: new Int32Array(0),
    },
    queries: {
      ...step,
      seqs: step.seqs.map((s) => {
        const [a, b] = chunk(s.numNew, cpRank, cpSize);
        return { ...s, rowStart: s.rowStart + a, numNew: b - a, numCached: s.numCached + a };
      }),
    },
  };
}
