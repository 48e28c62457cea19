// The CPU backend's KV cache: per layer, blocks of tokensPerBlock × numKvHeads × headSize values for keys
// and for values. Blocks are materialised on first write, so a large pool costs only what is used.
// With int8 scales (TensorRT-LLM's INT8 KV cache: one scale per layer, shared by keys and values) a block
// holds q = clamp(round(x / scale), −127, 127); readers multiply by `scale(layer)`, which is 1 for floats.

import type { KvCacheSpec } from "../backend.js";

type Block = Float32Array | Int8Array;

export class CpuKvStore {
  private readonly keys: (Block | undefined)[][];
  private readonly values: (Block | undefined)[][];
  readonly blockFloats: number;
  readonly tokenFloats: number;

  /** `int8Scales`: one per layer, or null to keep float32 values. */
  constructor(
    readonly spec: KvCacheSpec,
    private readonly int8Scales: Float32Array | null = null,
  ) {
    if (int8Scales && int8Scales.length !== spec.numLayers) {
      throw new RangeError(`${int8Scales.length} int8 KV scales for ${spec.numLayers} layers`);
    }
    this.tokenFloats = spec.numKvHeads * spec.headSize;
    this.blockFloats = spec.tokensPerBlock * this.tokenFloats;
    this.keys = Array.from({ length: spec.numLayers }, () => new Array(spec.numBlocks));
    this.values = Array.from({ length: spec.numLayers }, () => new Array(spec.numBlocks));
  }

  /** What a stored value is multiplied by to read it back. */
  scale(layer: number): number {
    return this.int8Scales ? this.int8Scales[layer] : 1;
  }

  private block(store: (Block | undefined)[][], layer: number, block: number): Block {
    if (block < 0 || block >= this.spec.numBlocks) throw new RangeError(`KV block ${block} outside the pool`);
    const blocks = store[layer];
    let b = blocks[block];
    if (!b) {
      b = this.int8Scales ? new Int8Array(this.blockFloats) : new Float32Array(this.blockFloats);
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
  keyBlocks(layer: number, table: Int32Array): Block[] {
    return Array.from(table, (b) => this.block(this.keys, layer, b));
  }

  valueBlocks(layer: number, table: Int32Array): Block[] {
    return Array.from(table, (b) => this.block(this.values, layer, b));
  }

  /** Stores one token's keys and values (tokenFloats each) at `slot`, quantizing them for an int8 cache. */
  write(layer: number, slot: number, keys: Float32Array, values: Float32Array): void {
    const tpb = this.spec.tokensPerBlock;
    const b = Math.floor(slot / tpb);
    const at = (slot % tpb) * this.tokenFloats;
    this.put(this.block(this.keys, layer, b), at, keys, layer);
    this.put(this.block(this.values, layer, b), at, values, layer);
  }

  private put(block: Block, at: number, src: Float32Array, layer: number): void {
    if (!this.int8Scales) {
      block.set(src, at);
      return;
    }
    const inv = 1 / this.int8Scales[layer];
    for (let i = 0; i < src.length; i++) block[at + i] = Math.max(-127, Math.min(127, Math.round(src[i] * inv)));
  }
}
