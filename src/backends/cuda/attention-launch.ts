// Which attention kernel a step takes, and its launch: prompt chunks on tensor cores (attention_fmha), wide
// decode steps on tensor cores (attention_decode_tc), few decode rows over long contexts split over the
// sequence (attention_split, flash-decoding), the rest one block a (row, head) (attention).

import type { AttentionShape } from "../backend.js";
import type { CudaDtype, CudaTensor, KernelName } from "./cuda-tensor.js";
import { type CudaDevice, f32, i32, ptr } from "./driver.js";
import { NO_QLINEAR, preRoundable, qlinearArg } from "./quantized-linear.js";
import type { StepLayout } from "./step-buffer.js";

/** ATT_CHUNK in decoder.cu: keys per block of the split (flash-decoding) attention. */
const ATTENTION_CHUNK = 256;
/** ATT_WARPS in decoder.cu: warps of one attention block, each walking every 16th group of four keys. */
const ATTENTION_WARPS = 16;
/** FMHA_WARPS and FMHA_HEAD_MAX in decoder.cu: warps of a context attention tile, its largest head. */
const FMHA_WARPS = 4;
const FMHA_HEAD_MAX = 128;
/** KILN_CUDA_FMHA=0 runs prompt chunks through the CUDA-core attention kernel (to measure what the tiles gain). */
const FMHA = process.env.KILN_CUDA_FMHA !== "0";
/** DEC_HEAD_MAX in decoder.cu: the largest head attention_decode_tc takes. */
const DECODE_TC_HEAD_MAX = 64;

/**
 * Decode attention on tensor cores (attention_decode_tc): "wide" for steps whose (row, KV head) blocks fill the
 * GPU (the default: a 256-row step at context 1000 took 87 µs a layer on an H200 against 422 µs on CUDA
 * cores), "always" for every decode step (op tests, and batch-1 A/B runs), "off" (KILN_CUDA_DECODE_TC=0).
 */
export type DecodeTensorCores = "off" | "wide" | "always";

/** What the attention launches need of the backend. */
export interface AttentionContext {
  device: CudaDevice;
  dtype: CudaDtype;
  fn(name: KernelName): unknown;
  alloc(rows: number, cols: number): CudaTensor;
  /** The step's metadata and a device pointer into it. */
  step(): StepLayout;
  stepPtr(offsetInts: number): number;
  /** The layer's cache and the scale its values are read with. */
  kvLayer(layer: number): { k: number; v: number; scale: number; tokensPerBlock: number };
  /** Set while a CUDA graph is recorded: launch shapes must then fit every step the graph will replay. */
  graphMode(): boolean;
}

export interface AttentionLimits {
  maxSeqs: number;
  maxBlocksPerSeq: number;
  maxSeqLen: number;
  numHeads: number;
  headSize: number;
}

export class AttentionLaunch {
  decodeTensorCores: DecodeTensorCores =
    ({ "0": "off", always: "always" } as const)[process.env.KILN_CUDA_DECODE_TC ?? ""] ?? "wide";
  /** The split attention's per-chunk partials (max, sum, weighted values). */
  private readonly partial: number;
  /** Per (row, head) of a split attention, how many of its chunks have finished. */
  private readonly arrivals: number;

  constructor(
    private readonly ctx: AttentionContext,
    private readonly limits: AttentionLimits,
  ) {
    const maxChunks = Math.ceil(limits.maxSeqLen / ATTENTION_CHUNK);
    const { device } = ctx;
    this.partial = device.alloc(limits.maxSeqs * limits.numHeads * maxChunks * (limits.headSize + 2) * 4);
    // Zero once: attention_split leaves its counters at zero after every launch.
    this.arrivals = device.alloc(limits.maxSeqs * limits.numHeads * 4);
    device.memsetAsync(this.arrivals, 0, limits.maxSeqs * limits.numHeads * 4);
  }

  dispose(): void {
    this.ctx.device.free(this.partial);
    this.ctx.device.free(this.arrivals);
  }

  /** Whether the tensor-core attention kernels take this head size: half and bfloat16 engines, heads a multiple of 16 up to `most`. */
  private tensorCoreHead(headSize: number, most: number): boolean {
    return this.ctx.dtype !== "F32" && headSize % 16 === 0 && headSize <= most;
  }

  /** Whether a decode step of `rows` rows takes attention_decode_tc (see DecodeTensorCores). */
  private decodeTensorCoresFor(rows: number, shape: AttentionShape): boolean {
    const fits = this.tensorCoreHead(shape.headSize, DECODE_TC_HEAD_MAX) && shape.numHeads / shape.numKvHeads <= 16;
    if (!fits || this.decodeTensorCores === "off") return false;
    return this.decodeTensorCores === "always" || rows * shape.numKvHeads >= 2 * this.ctx.device.multiprocessors;
  }

  /**
   * dense: the layer after (attention's dense projection); the decode kernels on CUDA cores write their output
   * already rounded as its format rounds its input where they can (quantized-linear.ts's preRoundable).
   */
  attention(layer: number, qkv: CudaTensor, shape: AttentionShape, dense?: CudaTensor): CudaTensor {
    const { device } = this.ctx;
    const s = this.ctx.step();
    const kv = this.ctx.kvLayer(layer);
    const at = (offset: number) => ptr(this.ctx.stepPtr(offset));
    const fn = (name: KernelName) => this.ctx.fn(name);
    const out = this.ctx.alloc(qkv.rows, shape.numHeads * shape.headSize);
    // What every attention kernel reads: the layer's cache, then the block tables and the heads' shape.
    const cache = [ptr(kv.k), ptr(kv.v), f32(kv.scale)];
    const tables = [
      at(s.blockTables),
      i32(this.limits.maxBlocksPerSeq),
      i32(shape.numHeads),
      i32(shape.numKvHeads),
      i32(shape.headSize),
      i32(kv.tokensPerBlock),
      f32(1 / Math.sqrt(shape.headSize)),
    ];
    const graphMode = this.ctx.graphMode();
    if (s.hasContext && FMHA && this.tensorCoreHead(shape.headSize, FMHA_HEAD_MAX) && !graphMode) {
      // Prompt chunks: tiles of a sequence's rows on tensor cores, each key and value staged once for the tile.
      const args = [ptr(out.ptr), ptr(qkv.ptr), ...cache, at(s.fmhaTiles), ...tables];
      device.launch(fn("attention_fmha"), [s.numFmhaTiles, shape.numHeads], [32 * FMHA_WARPS], args);
      return out;
    }
    // What both decode attention kernels read after their output pointer.
    const inputs = [ptr(qkv.ptr), ...cache, at(s.rowSeq), at(s.positions), ...tables];
    if (this.decodeTensorCoresFor(qkv.rows, shape)) {
      device.launch(fn("attention_decode_tc"), [qkv.rows, shape.numKvHeads], [128], [ptr(out.ptr), ...inputs]);
      return out;
    }
    const block: [number] = [32 * ATTENTION_WARPS];
    if (dense?.quant && preRoundable(out, dense.quant)) out.roundedFor = dense.quant;
    const rounding = out.roundedFor ? qlinearArg(out.roundedFor) : NO_QLINEAR;
    // Few rows over long contexts (decode): split each (row, head) over the sequence so the GPU fills up.
    // Where a block a (row, head) already fills it (two 512-thread blocks an SM), the split would only add
    // blocks, most of them past their row's context under a graph, whose chunks cover max_seq_len.
    const chunks = Math.ceil((graphMode ? this.limits.maxSeqLen : s.maxVisible) / ATTENTION_CHUNK);
    const fillsGpu = qkv.rows * shape.numHeads >= 2 * device.multiprocessors;
    if (qkv.rows <= this.limits.maxSeqs && chunks > 1 && !fillsGpu) {
      device.launch(fn("attention_split"), [qkv.rows, shape.numHeads, chunks], block, [
        ptr(out.ptr),
        ptr(this.partial),
        ptr(this.arrivals),
        ...inputs,
        rounding,
      ]);
    } else {
      device.launch(fn("attention"), [qkv.rows * shape.numHeads], block, [ptr(out.ptr), ...inputs, rounding]);
    }
    return out;
  }
}
