// The CPU backend's KV cache: per layer, blocks of tokensPerBlock × numKvHeads × headSize floats for keys
// and for values. Blocks are materialised on first write, so a large pool costs only what is used.

import type { KvCacheSpec } from "../backend.js";

export class CpuKvStore {
  private readonly keys: (Float32Array | undefined)[][];
  private readonly values: (Float32Array | undefined)[][];
  readonly blockFloats: number;
  readonly tokenFloats: number;

  constructor(readonly spec: KvCacheSpec) {
    this.tokenFloats = spec.numKvHeads * spec.headSize;
    this.blockFloats = spec.tokensPerBlock * this.tokenFloats;
    this.keys = Array.from({ length: spec.numLayers }, () => new Array(spec.numBlocks));
    this.values = Array.from({ length: spec.numLayers }, () => new Array(spec.numBlocks));
  }

  private block(store: (Float32Array | undefined)[][], layer: number, block: number): Float32Array {
    if (block < 0 || block >= this.spec.numBlocks) throw new RangeError(`KV block ${block} outside the pool`);
    const blocks = store[layer];
    let b = blocks[block];
    if (!b) {
      b = new Float32Array(this.blockFloats);
      blocks[block] = b;
    }
    return b;
  }

  copyBlock(src: number, dst: number): void {
    for (let l = 0; l < this.spec.numLayers; l++) {
      this.block(this.keys, l, dst).set(this.block(this.keys, l, src));
      this.block(this.values, l, dst).set(this.block(this.values, l, src));
    }
  }

  /** A sequence's key (or value) blocks of one layer, in block-table order: read once per attention call. */
  keyBlocks(layer: number, table: Int32Array): Float32Array[] {
    return Array.from(table, (b) => this.block(this.keys, layer, b));
  }

  valueBlocks(layer: number, table: Int32Array): Float32Array[] {
    return Array.from(table, (b) => this.block(this.values, layer, b));
  }

  /** The block and float offset holding `slot`'s keys (or values). */
  keyAt(layer: number, slot: number): [Float32Array, number] {
    const tpb = this.spec.tokensPerBlock;
    return [this.block(this.keys, layer, Math.floor(slot / tpb)), (slot % tpb) * this.tokenFloats];
  }

  valueAt(layer: number, slot: number): [Float32Array, number] {
    const tpb = this.spec.tokensPerBlock;
    return [this.block(this.values, layer, Math.floor(slot / tpb)), (slot % tpb) * this.tokenFloats];
  }
}
