// The CPU backend's KV cache: per layer, blocks of tokensPerBlock × numKvHeads × headSize values for keys
// and for values. Blocks are materialised on first write, so a large pool costs only what is used.
// A quantized cache has one scale per layer, shared by keys and values (TensorRT-LLM's kv_cache_scaling_factor):
// an INT8 block holds q = clamp(round(x / scale), −127, 127); an FP8 block holds x / scale rounded to the
// nearest E4M3 value (kept as float32 here: the values are the format's, the memory is not). Readers multiply
// by `scale(layer)`, which is 1 for an unquantized cache.

import { fakeQuantizeE4M3 } from "../../quantization/fp8.js";
import type { KvCacheSpec } from "../backend.js";

type Block = Float32Array | Int8Array;

export interface KvCacheQuant {
  kind: "int8" | "fp8";
  /** One per layer. */
  scales: Float32Array;
}

export class CpuKvStore {
  private readonly keys: (Block | undefined)[][];
  private readonly values: (Block | undefined)[][];
  readonly blockFloats: number;
  readonly tokenFloats: number;

  constructor(
    readonly spec: KvCacheSpec,
    private readonly quant: KvCacheQuant | null = null,
  ) {
    if (quant && quant.scales.length !== spec.numLayers) {
      throw new RangeError(`${quant.scales.length} ${quant.kind} KV scales for ${spec.numLayers} layers`);
    }
    this.tokenFloats = spec.numKvHeads * spec.headSize;
    this.blockFloats = spec.tokensPerBlock * this.tokenFloats;
    this.keys = Array.from({ length: spec.numLayers }, () => new Array(spec.numBlocks));
    this.values = Array.from({ length: spec.numLayers }, () => new Array(spec.numBlocks));
  }

  /** What a stored value is multiplied by to read it back. */
  scale(layer: number): number {
    return this.quant ? this.quant.scales[layer] : 1;
  }

  private block(store: (Block | undefined)[][], layer: number, block: number): Block {
    if (block < 0 || block >= this.spec.numBlocks) throw new RangeError(`KV block ${block} outside the pool`);
    const blocks = store[layer];
    let b = blocks[block];
    if (!b) {
      b = this.quant?.kind === "int8" ? new Int8Array(this.blockFloats) : new Float32Array(this.blockFloats);
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

  /** Stores one token's keys and values (tokenFloats each) at `slot`, rounding them to the cache's format. */
  write(layer: number, slot: number, keys: Float32Array, values: Float32Array): void {
    const tpb = this.spec.tokensPerBlock;
    const b = Math.floor(slot / tpb);
    const at = (slot % tpb) * this.tokenFloats;
    this.put(this.block(this.keys, layer, b), at, keys, layer);
    this.put(this.block(this.values, layer, b), at, values, layer);
  }

  private put(block: Block, at: number, src: Float32Array, layer: number): void {
    if (!this.quant) {
      block.set(src, at);
      return;
    }
    const scale = this.quant.scales[layer];
    if (this.quant.kind === "fp8") {
      const q = fakeQuantizeE4M3(src, scale);
      for (let i = 0; i < q.length; i++) block[at + i] = q[i] / scale;
      return;
    }
    const inv = 1 / scale;
    for (let i = 0; i < src.length; i++) block[at + i] = Math.max(-127, Math.min(127, Math.round(src[i] * inv)));
  }
}
