// The KV cache block pool: a free list of fixed-size blocks handed to sequences as their block tables grow.
// It knows sequences, never models or tensors.

import type { Sequence } from "./sequence.js";

export class BlockManager {
  private readonly freeBlocks: number[];

  constructor(
    readonly numBlocks: number,
    readonly tokensPerBlock: number,
  ) {
    // Popped from the end: lowest ids first, which keeps small runs easy to read in a debugger.
    this.freeBlocks = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  get numFreeBlocks(): number {
    return this.freeBlocks.length;
  }

  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.tokensPerBlock);
  }

  /** Blocks `seq` lacks to hold its first `numTokens` tokens. */
  private shortfall(seq: Sequence, numTokens: number): number {
    return Math.max(0, this.blocksFor(numTokens) - seq.blockTable.length);
  }

  canGrow(seq: Sequence, numTokens: number): boolean {
    return this.shortfall(seq, numTokens) <= this.freeBlocks.length;
  }

  /** Extends `seq`'s block table to hold its first `numTokens` tokens. */
  grow(seq: Sequence, numTokens: number): void {
    const need = this.shortfall(seq, numTokens);
    if (need > this.freeBlocks.length)
      throw new Error(`KV pool exhausted: need ${need} blocks, ${this.freeBlocks.length} free`);
    for (let i = 0; i < need; i++) seq.blockTable.push(this.freeBlocks.pop()!);
  }

  free(seq: Sequence): void {
    for (let i = seq.blockTable.length - 1; i >= 0; i--) this.freeBlocks.push(seq.blockTable[i]);
    seq.blockTable = [];
    seq.numCachedTokens = 0;
  }
}
