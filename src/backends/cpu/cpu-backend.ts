// The cpu backend: the reference implementation of the Backend interface on Float32Array.

import { EngineError } from "../../errors.js";
import { matmulSmoothQuant, type SqWeight } from "../../quantization/smoothquant.js";
import { dequantizeWeightOnly } from "../../quantization/weight-only.js";
import { argmax, logSoftmax } from "../../runtime/sampling/sampler.js";
import type { AttentionShape, Backend, KvCacheSpec, MoeSpec, MoeWeights, RopeSpec, StepInput } from "../backend.js";
import {
  matmulGroupwise,
  matmulTransposed,
  matmulWeightOnly,
  rmsNormRows,
  rotateHalf,
  silu,
  softmaxInPlace,
} from "./kernels.js";
import { CpuKvStore, type KvCacheQuant } from "./kv-store.js";
import { moeForward } from "./moe-kernel.js";

export interface CpuTensor {
  data: Float32Array;
  rows: number;
  cols: number;
  /** A weight-only quantized weight: [cols (in), rows (out)] int8, or packed int4 pairs, and [rows] scales. */
  quant?: { bits: 4 | 8; q: Int8Array; scales: Float32Array };
  /** A group-quantized weight (GPTQ): [in, out/2] signed int4 pairs; scales and zeros [in/groupSize, out]. */
  groupQuant?: { q: Int8Array; scales: Float32Array; zeros: Float32Array; groupSize: number };
  /** A SmoothQuant weight ([out, in] int8) with its activation quantization (quantization/smoothquant.ts). */
  smoothQuant?: SqWeight;
  /**
   * A ModelOpt-format layer: `data` holds the dequantized weight; its input is scaled per channel (prequant),
   * rounded as the format rounds it, and the product scaled by alpha (quantization/modelopt-formats.ts).
   */
  inputQuant?: {
    prequant: Float32Array | null;
    quantizeInput: ((x: Float32Array, rows: number, cols: number) => Float32Array) | null;
    alpha: number;
  };
}

export function cpuTensor(rows: number, cols: number, data: Float32Array = new Float32Array(rows * cols)): CpuTensor {
  return { data, rows, cols };
}

export class CpuBackend implements Backend<CpuTensor> {
  readonly name = "cpu" as const;
  private kv: CpuKvStore | null = null;
  readonly kvBytesPerValue: number;

  /** Blocks are materialised on first write, so the cap only bounds what a burst of requests may take. */
  kvBudgetBytes(): number {
    return 4 * 2 ** 30;
  }

  /** Calibration: called with each linear layer's weight name, input and output (see watchLinears). */
  private linearWatcher: ((weightName: string, x: CpuTensor, y: CpuTensor) => void) | null = null;
  private namesOfWeights: Map<CpuTensor, string> | null = null;

  /** Calibration: called with each layer's qkv output (bias added, before RoPE). */
  private qkvWatcher: ((layer: number, qkv: Float32Array) => void) | null = null;

  /** `kvQuant`: an INT8 or FP8 KV cache's per-layer scales (TensorRT-LLM's kv_cache_scaling_factor), else null. */
  constructor(
    private readonly weights: Map<string, CpuTensor>,
    private readonly kvQuant: KvCacheQuant | null = null,
  ) {
    this.kvBytesPerValue = kvQuant ? 1 : 4;
  }

  watchQkvOutputs(watch: ((layer: number, qkv: Float32Array) => void) | null): void {
    this.qkvWatcher = watch;
  }

  /** Calls `watch` with the input and output of every linear layer the model runs (null stops watching). */
  watchLinears(watch: ((weightName: string, x: CpuTensor, y: CpuTensor) => void) | null): void {
    this.linearWatcher = watch;
    this.namesOfWeights = watch ? new Map([...this.weights].map(([n, t]) => [t, n])) : null;
  }

  weight(name: string): CpuTensor {
    const w = this.weights.get(name);
    if (!w) throw new EngineError(`engine has no weight "${name}"`);
    return w;
  }

  hasWeight(name: string): boolean {
    return this.weights.has(name);
  }

  allocateKvCache(spec: KvCacheSpec): void {
    this.kv = new CpuKvStore(spec, this.kvQuant);
  }

  copyKvBlocks(copies: readonly { src: number; dst: number }[]): void {
    for (const { src, dst } of copies) this.kvStore().copyBlock(src, dst);
  }

  private kvStore(): CpuKvStore {
    if (!this.kv) throw new Error("allocateKvCache must come before the first step");
    return this.kv;
  }

  beginStep(_step: StepInput): void {}

  dispose(): void {
    this.weights.clear();
    this.kv = null;
  }

  beginLayer(_layer: number): void {}

  embed(table: CpuTensor, step: StepInput): CpuTensor {
    const ids = step.tokenIds;
    const out = cpuTensor(ids.length, table.cols);
    for (let r = 0; r < ids.length; r++) {
      const id = ids[r];
      if (id < 0 || id >= table.rows) throw new RangeError(`token id ${id} outside the vocabulary [0, ${table.rows})`);
      out.data.set(table.data.subarray(id * table.cols, (id + 1) * table.cols), r * table.cols);
    }
    return out;
  }

  rmsNorm(x: CpuTensor, weight: CpuTensor, eps: number): CpuTensor {
    const out = cpuTensor(x.rows, x.cols);
    rmsNormRows(x.data, x.rows, x.cols, weight.data, eps, out.data);
    return out;
  }

  addRmsNorm(residual: CpuTensor, x: CpuTensor, weight: CpuTensor, eps: number): CpuTensor {
    this.addInPlace(residual, x);
    return this.rmsNorm(residual, weight, eps);
  }

  addInPlace(x: CpuTensor, y: CpuTensor): void {
    const a = x.data;
    const b = y.data;
    for (let i = 0; i < a.length; i++) a[i] += b[i];
  }

  linear(x: CpuTensor, weight: CpuTensor, bias: CpuTensor | null, _float32Out = true): CpuTensor {
    if (x.cols !== weight.cols) throw new Error(`linear: input has ${x.cols} columns, weight expects ${weight.cols}`);
    const out = cpuTensor(x.rows, weight.rows);
    const b = bias ? bias.data : null;
    if (weight.quant) matmulWeightOnly(x.data, x.rows, x.cols, weight.quant, weight.rows, b, out.data);
    else if (weight.groupQuant) matmulGroupwise(x.data, x.rows, x.cols, weight.groupQuant, weight.rows, b, out.data);
    else if (weight.smoothQuant)
      matmulSmoothQuant(x.data, x.rows, x.cols, weight.smoothQuant, weight.rows, b, out.data);
    else if (weight.inputQuant) this.inputQuantLinear(x, weight, b, out.data);
    else matmulTransposed(x.data, x.rows, x.cols, weight.data, weight.rows, b, out.data);
    if (this.linearWatcher) this.linearWatcher(this.namesOfWeights!.get(weight) ?? "", x, out);
    return out;
  }

  private inputQuantLinear(x: CpuTensor, weight: CpuTensor, bias: Float32Array | null, out: Float32Array): void {
    const { prequant, quantizeInput, alpha } = weight.inputQuant!;
    let input = prequant ? x.data.map((v, k) => v * prequant[k % x.cols]) : x.data;
    if (quantizeInput) input = quantizeInput(input, x.rows, x.cols);
    matmulTransposed(input, x.rows, x.cols, weight.data, weight.rows, null, out);
    for (let k = 0; k < out.length; k++) out[k] = out[k] * alpha + (bias ? bias[k % weight.rows] : 0);
  }

  ropeAndCacheKv(
    layer: number,
    qkv: CpuTensor,
    step: StepInput,
    rope: RopeSpec,
    shape: AttentionShape,
    bias: CpuTensor | null,
  ): void {
    if (bias) {
      for (let r = 0; r < qkv.rows; r++) for (let c = 0; c < qkv.cols; c++) qkv.data[r * qkv.cols + c] += bias.data[c];
    }
    this.qkvWatcher?.(layer, qkv.data);
    const { numHeads, numKvHeads, headSize } = shape;
    const half = rope.rotaryDim / 2;
    const cos = new Float32Array(half);
    const sin = new Float32Array(half);
    const kv = this.kvStore();
    const kOff = numHeads * headSize;
    const vOff = kOff + numKvHeads * headSize;
    const kvFloats = numKvHeads * headSize;
    for (let r = 0; r < qkv.rows; r++) {
      const p = step.positions[r];
      for (let i = 0; i < half; i++) {
        // Same float32 rounding of the angle as transformers' inv_freq @ position_ids.
        const angle = Math.fround(p * rope.invFreq[i]);
        cos[i] = Math.cos(angle);
        sin[i] = Math.sin(angle);
      }
      const row = r * qkv.cols;
      for (let h = 0; h < numHeads + numKvHeads; h++) rotateHalf(qkv.data, row + h * headSize, cos, sin, half);
      if (step.slotMapping[r] < 0) continue; // a padding row
      const k = qkv.data.subarray(row + kOff, row + kOff + kvFloats);
      const v = qkv.data.subarray(row + vOff, row + vOff + kvFloats);
      kv.write(layer, step.slotMapping[r], k, v);
    }
  }

  attention(layer: number, qkv: CpuTensor, step: StepInput, shape: AttentionShape): CpuTensor {
    const { numHeads, numKvHeads, headSize } = shape;
    const kv = this.kvStore();
    const tpb = kv.spec.tokensPerBlock;
    const group = numHeads / numKvHeads;
    const scale = kv.scale(layer) / Math.sqrt(headSize);
    const vScale = kv.scale(layer);
    const out = cpuTensor(qkv.rows, numHeads * headSize);
    let scores = new Float64Array(256);
    const acc = new Float64Array(headSize);
    const tokenFloats = numKvHeads * headSize;
    for (const seq of step.seqs) {
      const total = seq.numCached + seq.numNew;
      if (seq.numNew === 0) continue;
      if (scores.length < total) scores = new Float64Array(total * 2);
      const kBlocks = kv.keyBlocks(layer, seq.blockTable);
      const vBlocks = kv.valueBlocks(layer, seq.blockTable);
      for (let i = 0; i < seq.numNew; i++) {
        const r = seq.rowStart + i;
        const visible = seq.numCached + i + 1; // causal: itself and everything before it
        for (let h = 0; h < numHeads; h++) {
          const q = r * qkv.cols + h * headSize;
          const kvh = Math.floor(h / group) * headSize;
          for (let j = 0; j < visible; j++) {
            const kb = kBlocks[Math.floor(j / tpb)];
            const ko = (j % tpb) * tokenFloats + kvh;
            let s = 0;
            for (let d = 0; d < headSize; d++) s += qkv.data[q + d] * kb[ko + d];
            scores[j] = s * scale;
          }
          softmaxInPlace(scores, visible);
          acc.fill(0);
          for (let j = 0; j < visible; j++) {
            const vb = vBlocks[Math.floor(j / tpb)];
            const vo = (j % tpb) * tokenFloats + kvh;
            const p = scores[j];
            for (let d = 0; d < headSize; d++) acc[d] += p * vb[vo + d];
          }
          const o = r * out.cols + h * headSize;
          for (let d = 0; d < headSize; d++) out.data[o + d] = acc[d] * vScale;
        }
      }
    }
    return out;
  }

  siluMul(a: CpuTensor, b: CpuTensor): CpuTensor {
    const out = cpuTensor(a.rows, a.cols);
    for (let i = 0; i < out.data.length; i++) out.data[i] = silu(a.data[i]) * b.data[i];
    return out;
  }

  siluMulHalves(fg: CpuTensor): CpuTensor {
    const inter = fg.cols / 2;
    const out = cpuTensor(fg.rows, inter);
    for (let r = 0; r < fg.rows; r++) {
      for (let i = 0; i < inter; i++)
        out.data[r * inter + i] = silu(fg.data[r * fg.cols + i]) * fg.data[r * fg.cols + inter + i];
    }
    return out;
  }

  moe(x: CpuTensor, w: MoeWeights<CpuTensor>, spec: MoeSpec): CpuTensor {
    const out = cpuTensor(x.rows, x.cols);
    const f = (t: CpuTensor) => this.floatData(t);
    const shared = w.shared && { fc: f(w.shared.fc), proj: f(w.shared.proj), gate: f(w.shared.gate) };
    moeForward(
      x.data,
      x.rows,
      x.cols,
      { router: w.router.data, fc: w.fc.data, proj: w.proj.data, shared },
      spec,
      out.data,
    );
    return out;
  }

  private readonly dequantized = new WeakMap<CpuTensor, Float32Array>();

  /** A weight's values as float32 [out, in]: weight-only ones dequantized once (the MoE kernel reads plain arrays). */
  private floatData(t: CpuTensor): Float32Array {
    if (!t.quant) return t.data;
    let d = this.dequantized.get(t);
    if (!d) {
      d = dequantizeWeightOnly({ qweight: t.quant.q, scales: t.quant.scales, bits: t.quant.bits }, t.rows, t.cols);
      this.dequantized.set(t, d);
    }
    return d;
  }

  gatherRows(x: CpuTensor, step: StepInput): CpuTensor {
    const rows = step.logitRows;
    const out = cpuTensor(rows.length, x.cols);
    for (let i = 0; i < rows.length; i++)
      out.data.set(x.data.subarray(rows[i] * x.cols, (rows[i] + 1) * x.cols), i * x.cols);
    return out;
  }

  toHost(x: CpuTensor): Float32Array {
    return x.data;
  }

  /** Float32 throughout: only the bias to add. */
  finishLinear(sums: CpuTensor, bias: CpuTensor | null): CpuTensor {
    if (!bias) return sums;
    const out = cpuTensor(sums.rows, sums.cols, sums.data.slice());
    for (let r = 0; r < sums.rows; r++) for (let c = 0; c < sums.cols; c++) out.data[r * sums.cols + c] += bias.data[c];
    return out;
  }

  fromHost(data: Float32Array, rows: number, cols: number): CpuTensor {
    return cpuTensor(rows, cols, data);
  }

  greedy(logits: CpuTensor, vocab: number): { tokens: Int32Array; logProbs: Float32Array } {
    const tokens = new Int32Array(logits.rows);
    const logProbs = new Float32Array(logits.rows);
    for (let r = 0; r < logits.rows; r++) {
      const row = logits.data.subarray(r * logits.cols, r * logits.cols + vocab);
      tokens[r] = argmax(row);
      logProbs[r] = logSoftmax(row)[tokens[r]];
    }
    return { tokens, logProbs };
  }
}
