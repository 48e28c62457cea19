// The KV cache block pool: a free list of fixed-size blocks, reference counts so that sequences can share
// blocks (beam forks, common prompt prefixes), copy-on-write for a shared block about to be written, and a
// table from the hash of a full block's token prefix to the block holding it (KV reuse). It knows
// sequences, never models or tensors.

import { createHash } from "node:crypto";
import type { Sequence } from "./sequence.js";

/** A block copy the backend must perform before the step that writes into `dst`. */
export interface BlockCopy {
  src: number;
  dst: number;
}

export class BlockManager {
  private readonly refCounts: Int32Array;
  /** Free block ids in the order they became free: reuse takes the oldest, so recent prefixes survive longest. */
  private readonly freeIds = new Set<number>();
  private readonly hashOfBlock: (string | null)[];
  private readonly blockOfHash = new Map<string, number>();
  /** Blocks matched from the prefix cache, counted for tests and metrics. */
  numReusedTokens = 0;

  constructor(
    readonly numBlocks: number,
    readonly tokensPerBlock: number,
    readonly enableReuse: boolean,
  ) {
    this.refCounts = new Int32Array(numBlocks);
    this.hashOfBlock = new Array(numBlocks).fill(null);
    for (let i = 0; i < numBlocks; i++) this.freeIds.add(i);
  }

  get numFreeBlocks(): number {
    return this.freeIds.size;
  }

  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.tokensPerBlock);
  }

  private hashBlock(prev: string, tokens: readonly number[]): string {
    return createHash("sha1").update(prev).update(Int32Array.from(tokens)).digest("hex");
  }

  /** The cached blocks holding the longest run of `seq`'s full prompt blocks, in order. */
  private matchPrefix(seq: Sequence): number[] {
    if (!this.enableReuse) return [];
    const tpb = this.tokensPerBlock;
    const out: number[] = [];
    let prev = "";
    // Leave at least one prompt token to compute: its logits start generation.
    for (let b = 0; (b + 1) * tpb < seq.numPromptTokens; b++) {
      prev = this.hashBlock(prev, seq.tokenIds.slice(b * tpb, (b + 1) * tpb));
      const block = this.blockOfHash.get(prev);
      if (block === undefined) break;
      out.push(block);
    }
    return out;
  }

  private take(): number {
    const id = this.freeIds.values().next().value as number;
    this.freeIds.delete(id);
    const h = this.hashOfBlock[id];
    if (h !== null) {
      this.blockOfHash.delete(h);
      this.hashOfBlock[id] = null;
    }
    this.refCounts[id] = 1;
    return id;
  }

  private release(id: number): void {
    if (--this.refCounts[id] === 0) this.freeIds.add(id);
  }

  /**
   * Admits a sequence with no blocks yet: reuses cached prefix blocks, then allocates blocks for its first
   * `numCachedTokens + numNew` tokens, where numNew ≤ `maxNew`. Returns numNew, or 0 when the pool is short.
   */
  admit(seq: Sequence, maxNew: number): number {
    const matched = this.matchPrefix(seq);
    const cached = matched.length * this.tokensPerBlock;
    const numNew = Math.min(seq.numTokens - cached, maxNew);
    const needed = this.blocksFor(cached + numNew) - matched.length;
    const freeAfterMatch = this.freeIds.size - matched.filter((b) => this.refCounts[b] === 0).length;
    if (needed > freeAfterMatch) return 0;
    for (const b of matched) {
      if (this.refCounts[b]++ === 0) this.freeIds.delete(b);
    }
    seq.blockTable = [...matched];
    seq.numCachedTokens = cached;
    seq.numHashedBlocks = matched.length;
    this.numReusedTokens += cached;
    this.grow(seq, cached + numNew);
    return numNew;
  }

  /** Whether `seq` can hold its first `numTokens` tokens, counting a copy of a shared block it must write. */
  canGrow(seq: Sequence, numTokens: number): boolean {
    return this.blocksFor(numTokens) - seq.blockTable.length + (this.needsCopy(seq) ? 1 : 0) <= this.freeIds.size;
  }

  /** Extends `seq`'s block table to hold its first `numTokens` tokens. */
  grow(seq: Sequence, numTokens: number): void {
    const need = this.blocksFor(numTokens) - seq.blockTable.length;
    if (need > this.freeIds.size) throw new Error(`KV pool exhausted: need ${need} blocks, ${this.freeIds.size} free`);
    for (let i = 0; i < need; i++) seq.blockTable.push(this.take());
  }

  private needsCopy(seq: Sequence): boolean {
    const b = Math.floor(seq.numCachedTokens / this.tokensPerBlock);
    return b < seq.blockTable.length && this.refCounts[seq.blockTable[b]] > 1;
  }

  /** Copy-on-write: the block `seq` writes next is shared (a beam fork), so it gets its own copy. */
  makeWritable(seq: Sequence): BlockCopy | null {
    if (!this.needsCopy(seq)) return null;
    const b = Math.floor(seq.numCachedTokens / this.tokensPerBlock);
    const src = seq.blockTable[b];
    const dst = this.take();
    this.release(src);
    seq.blockTable[b] = dst;
    return { src, dst };
  }

  /** Records the hashes of `seq`'s newly completed full blocks, so later prompts can reuse them. */
  registerFullBlocks(seq: Sequence): void {
    if (!this.enableReuse) return;
    const tpb = this.tokensPerBlock;
    const full = Math.floor(seq.numCachedTokens / tpb);
    for (let b = seq.numHashedBlocks; b < full; b++) {
      const prev = b === 0 ? "" : (seq.blockHashes[b - 1] ?? "");
      const h = this.hashBlock(prev, seq.tokenIds.slice(b * tpb, (b + 1) * tpb));
      seq.blockHashes[b] = h;
      const id = seq.blockTable[b];
      if (!this.blockOfHash.has(h) && this.hashOfBlock[id] === null) {
        this.blockOfHash.set(h, id);
        this.hashOfBlock[id] = h;
      }
    }
    seq.numHashedBlocks = Math.max(seq.numHashedBlocks, full);
  }

  /** A child sequence sharing all of `parent`'s blocks (beam search). */
  fork(parent: Sequence, child: Sequence): void {
    child.blockTable = [...parent.blockTable];
    for (const b of child.blockTable) this.refCounts[b]++;
    child.numCachedTokens = parent.numCachedTokens;
    child.blockHashes = [...parent.blockHashes];
    child.numHashedBlocks = parent.numHashedBlocks;
  }

  free(seq: Sequence): void {
    for (let i = seq.blockTable.length - 1; i >= 0; i--) this.release(seq.blockTable[i]);
    seq.blockTable = [];
    seq.numCachedTokens = 0;
    seq.blockHashes = [];
    seq.numHashedBlocks = 0;
  }
}
