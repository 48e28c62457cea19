// The cuda backend: the Backend interface on one NVIDIA GPU. Weights and the KV cache live in plain device
// allocations made at load; a step's activations come from a bump arena reset at every step, so a step's
// launches always see the same addresses for the same shape (what CUDA graph replay needs).

export type { CudaDtype, CudaQuant, CudaTensor } from "./cuda-tensor.js";

import type { BackendName } from "../../builder/build-config.js";
import { decodeToFloat32, encodeFromFloat32 } from "../../checkpoint/dtype.js";
import type {
  AttentionShape,
  Backend,
  GatedMlp,
  KvCacheSpec,
  MoeSpec,
  MoeWeights,
  NormSpec,
  RopeSpec,
  StepInput,
  TensorCollectives,
} from "../backend.js";
import { AttentionLaunch, type DecodeTensorCores } from "./attention-launch.js";
import { Cublas } from "./cublas.js";
import { CublasLt } from "./cublas-lt.js";
import {
  DTYPE_BYTES as BYTES,
  CUBLAS_TYPE,
  type CudaDtype,
  type CudaTensor,
  GEMV_MAX_ROWS,
  gemvLaunch,
  KERNELS,
  type KernelName,
  kernelForRows,
  MAX_DYNAMIC_SHARED,
  type QuantizedLaunch,
  TENSOR_CORE_KERNELS,
} from "./cuda-tensor.js";
import { type CudaDevice, f32, i32, ptr } from "./driver.js";
import { FUSED_KERNELS, FusedDecode, fusedSharedBytes } from "./fused-decode.js";
import { moeLayer } from "./moe-layer.js";
import { addBias, fp8Gemmable, int8Gemmable, quantizedLinear, scratchElements } from "./quantized-linear.js";
import { StepBuffer, type StepLayout } from "./step-buffer.js";
import { TokenChoiceLaunch } from "./token-choice-launch.js";

export interface CudaLimits {
  maxRows: number;
  maxSeqs: number;
  maxBlocksPerSeq: number;
  hidden: number;
  /** Widest activation row any op produces (qkv, fused fc|gate, vocab for logits). */
  widestRow: number;
  vocab: number;
  /** Most logits rows in one step. */
  logitRows: number;
  /** The engine's max_seq_len: how many chunks a captured decode attention must cover. */
  maxSeqLen: number;
  numHeads: number;
  headSize: number;
}

export class CudaBackend implements Backend<CudaTensor> {
  readonly name: BackendName = "cuda";
  private readonly fns = new Map<KernelName, unknown>();
  private readonly cublas: Cublas;
  private readonly cublasLt: CublasLt | null;
  /** Activation memory: [0] lives for the step (embedding, residual), [1] and [2] alternate by layer. */
  private readonly arenas: { base: number; size: number; used: number }[];
  private arena: { base: number; size: number; used: number };
  private readonly stepBuffer: StepBuffer;
  private step: StepLayout | null = null;
  private kv: { k: number[]; v: number[]; spec: KvCacheSpec } | null = null;
  private readonly invFreq: number;
  /** Greedy and sampled token choices on the GPU (token-choice-launch.ts). */
  private readonly tokenChoice: TokenChoiceLaunch;
  /** The attention kernels' choice and launch (attention-launch.ts). */
  private readonly attentionLaunch: AttentionLaunch;
  /** NCCL between ranks that have a GPU each (set by the loader before the model is made); null: the host. */
  collectives: TensorCollectives<CudaTensor> | null = null;
  /** Set while a CUDA graph is recorded: launch shapes must then fit every step the graph will replay. */
  graphMode = false;
  private readonly fused: FusedDecode;
  /** Where a quantized weight is dequantized for steps too wide for the GEMV (ptr 0: none yet). */
  private woScratch = { ptr: 0, elements: 0 };
  /** What the op modules (quantized-linear.ts) launch through. */
  private readonly launcher: QuantizedLaunch;

  constructor(
    readonly device: CudaDevice,
    private readonly module: unknown,
    private readonly weights: Map<string, CudaTensor>,
    readonly dtype: CudaDtype,
    private readonly limits: CudaLimits,
    invFreq: Float32Array,
    /** An INT8 or FP8 KV cache (one byte a value) and its scale per layer; null: the model dtype. */
    private readonly kvQuant: { kind: "int8" | "fp8"; scales: Float32Array } | null = null,
  ) {
    // Dynamic shared memory: the fused kernels' normalized rows; the quantized GEMVs' rounded input rows.
    const fusedShared = Math.min(MAX_DYNAMIC_SHARED, fusedSharedBytes(GEMV_MAX_ROWS, limits.hidden, dtype));
    const widestInput = Math.max(limits.hidden, limits.widestRow);
    const roundedShared = Math.min(MAX_DYNAMIC_SHARED, GEMV_MAX_ROWS * widestInput * BYTES[dtype]);
    for (const k of KERNELS) {
      if (dtype === "F32" && TENSOR_CORE_KERNELS.includes(k)) continue;
      const shared = FUSED_KERNELS.includes(k) ? fusedShared : k.startsWith("gemv_q_") ? roundedShared : 0;
      this.fns.set(k, device.getFunction(module, k, shared));
    }
    // One dequantized weight at a time (or one int8 GEMM's sums, a chunk of rows at a time), sized at load for
    // the engine's largest: graphs keep its address.
    this.ensureWoScratch(Math.max(0, ...[...weights.values()].map((w) => scratchElements(w, dtype))));
    this.cublas = new Cublas(device);
    // FP8 and int8 tensor-core GEMMs for wide steps of the layers that can take them, instead of dequantizing;
    // KILN_CUDA_LT_GEMM=0 (read as an engine loads) keeps every wide step on the dequantizing path.
    this.cublasLt =
      process.env.KILN_CUDA_LT_GEMM !== "0" &&
      [...weights.values()].some(
        (w) => w.quant && (fp8Gemmable(w.quant, w.cols) || int8Gemmable(w.quant, w.cols, w.rows)),
      )
        ? new CublasLt(device)
        : null;
    this.launcher = {
      device,
      dtype,
      cublas: this.cublas,
      fn: (name) => this.fn(name),
      alloc: (rows, cols, d) => this.alloc(rows, cols, d),
      scratch: (elements) => this.ensureWoScratch(elements),
      cublasLt: this.cublasLt,
    };
    this.fused = new FusedDecode({
      ...this.launcher,
      stepRows: () => ({ positions: this.stepPtr(this.step!.positions), slots: this.stepPtr(this.step!.slots) }),
      kvLayer: (layer) => ({ k: this.kv!.k[layer], v: this.kv!.v[layer], scale: this.kvScale(layer) }),
      invFreq: () => this.invFreq,
      allocStep: (rows, cols) => this.alloc(rows, cols, this.dtype, this.arenas[0]),
    });
    // One layer's activations at the widest step (x, qkv, attention, dense, norm, fc|gate, product, proj),
    // rounded up per tensor; the last layer's arena also holds the gathered rows and float32 logits.
    const rowBytes = (6 * limits.hidden + 3 * limits.widestRow) * BYTES[dtype];
    const layerSize =
      limits.maxRows * rowBytes + limits.logitRows * (limits.vocab * 4 + limits.hidden * 8) + (16 << 20);
    const stepSize = 2 * limits.maxRows * limits.hidden * BYTES[dtype] + (4 << 20);
    this.arenas = [stepSize, layerSize, layerSize].map((size) => ({ base: device.alloc(size), size, used: 0 }));
    this.arena = this.arenas[0];
    this.stepBuffer = new StepBuffer(device, limits);
    this.invFreq = device.alloc(invFreq.byteLength);
    device.upload(this.invFreq, invFreq);
    this.tokenChoice = new TokenChoiceLaunch(device, (name) => this.fn(name), limits.maxRows, limits.logitRows);
    this.attentionLaunch = new AttentionLaunch(
      {
        device,
        dtype,
        fn: (name) => this.fn(name),
        alloc: (rows, cols) => this.alloc(rows, cols),
        step: () => this.step!,
        stepPtr: (offset) => this.stepPtr(offset),
        kvLayer: (layer) => ({
          k: this.kv!.k[layer],
          v: this.kv!.v[layer],
          scale: this.kvScale(layer),
          tokensPerBlock: this.kv!.spec.tokensPerBlock,
        }),
        graphMode: () => this.graphMode,
      },
      limits,
    );
  }

  private disposed = false;

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.device.synchronize();
    this.collectives?.dispose();
    this.collectives = null;
    // Sections with equal contents may share one buffer (load.ts): each freed once.
    for (const ptr of new Set([...this.weights.values()].map((w) => w.ptr))) this.device.free(ptr);
    this.weights.clear();
    for (const p of [
      ...this.kvPointers(),
      ...this.arenas.map((a) => a.base),
      this.invFreq,
      ...(this.woScratch.ptr ? [this.woScratch.ptr] : []),
    ]) {
      this.device.free(p);
    }
    this.kv = null;
    this.attentionLaunch.dispose();
    this.tokenChoice.dispose();
    this.cublas.dispose();
    this.cublasLt?.dispose();
    this.stepBuffer.dispose();
    this.device.unloadModule(this.module);
  }

  private kvPointers(): number[] {
    return this.kv ? [...this.kv.k, ...this.kv.v] : [];
  }

  get kvBytesPerValue(): number {
    return this.kvQuant ? 1 : BYTES[this.dtype];
  }

  /** What a layer's cached values are multiplied by when read (1 for a cache in the model dtype). */
  private kvScale(layer: number): number {
    return this.kvQuant ? this.kvQuant.scales[layer] : 1;
  }

  /** Ranks of this run on this GPU (more than one only where ranks outnumber the host's GPUs). */
  ranksOnGpu = 1;

  /**
   * 90% of the GPU memory still free once weights and activations are allocated (TensorRT-LLM's default), shared
   * evenly by the ranks on this GPU.
   */
  kvBudgetBytes(): number {
    return (0.9 * this.device.memInfo().free) / this.ranksOnGpu;
  }

  weight(name: string): CudaTensor {
    const w = this.weights.get(name);
    if (!w) throw new Error(`engine has no weight "${name}"`);
    return w;
  }

  hasWeight(name: string): boolean {
    return this.weights.has(name);
  }

  allocateKvCache(spec: KvCacheSpec): void {
    for (const p of this.kvPointers()) this.device.free(p);
    const bytes = spec.numBlocks * spec.tokensPerBlock * spec.numKvHeads * spec.headSize * this.kvBytesPerValue;
    const k: number[] = [];
    const v: number[] = [];
    for (let l = 0; l < spec.numLayers; l++) {
      k.push(this.device.alloc(bytes));
      v.push(this.device.alloc(bytes));
    }
    this.kv = { k, v, spec };
  }

  copyKvBlocks(copies: readonly { src: number; dst: number }[]): void {
    const kv = this.kv!;
    const blockBytes = kv.spec.tokensPerBlock * kv.spec.numKvHeads * kv.spec.headSize * this.kvBytesPerValue;
    for (const { src, dst } of copies) {
      for (let l = 0; l < kv.spec.numLayers; l++) {
        this.device.copyAsync(kv.k[l] + dst * blockBytes, kv.k[l] + src * blockBytes, blockBytes);
        this.device.copyAsync(kv.v[l] + dst * blockBytes, kv.v[l] + src * blockBytes, blockBytes);
      }
    }
  }

  private alloc(rows: number, cols: number, dtype: CudaDtype = this.dtype, arena = this.arena): CudaTensor {
    const bytes = Math.ceil((rows * cols * BYTES[dtype]) / 256) * 256;
    if (arena.used + bytes > arena.size) throw new Error(`cuda activation arena exhausted (${arena.size} bytes)`);
    const t = { ptr: arena.base + arena.used, rows, cols, dtype };
    arena.used += bytes;
    return t;
  }

  /** A step tensor in the current arena (what collectives receive into); float32 or the model's dtype. */
  stepTensor(rows: number, cols: number, float32: boolean): CudaTensor {
    return this.alloc(rows, cols, float32 ? "F32" : this.dtype);
  }

  private fn(name: KernelName): unknown {
    return this.fns.get(name)!;
  }

  private stepPtr(offsetInts: number): number {
    return this.stepBuffer.devicePtr(offsetInts);
  }

  /** Packs the step's metadata into pinned memory and copies it to the device in one transfer. */
  beginStep(step: StepInput): void {
    this.packStep(step);
    this.stepBuffer.upload();
  }

  useStep(step: StepInput): void {
    // The pinned buffer may still be on its way to the device: let the copy land before packing anew.
    this.device.synchronize();
    this.step = this.stepBuffer.pack(step);
    this.stepBuffer.upload();
  }

  /**
   * Lays the step's metadata out in pinned memory (host work only) and resets the arena. A graph replay
   * copies the same pinned buffer again, so packing is all a replayed step needs.
   */
  packStep(step: StepInput): void {
    this.arena = this.arenas[0];
    this.arena.used = 0;
    this.fused.reset();
    this.step = this.stepBuffer.pack(step);
  }

  /** Enqueues a draw for every logits row with the step's per-row sampling parameters (graph-capturable). */
  launchSample(logits: CudaTensor, vocab: number): void {
    const s = this.step!;
    this.tokenChoice.launchSample(logits, vocab, s.numLogitRows, (k) => this.stepPtr(s.sampling + k * s.numLogitRows));
  }

  beginLayer(layer: number): void {
    this.arena = this.arenas[1 + (layer % 2)];
    this.arena.used = 0;
  }

  embed(table: CudaTensor, _step: StepInput): CudaTensor {
    const s = this.step!;
    const out = this.alloc(s.rows, table.cols);
    this.device.launch(
      this.fn("embed"),
      [s.rows],
      [256],
      [ptr(out.ptr), ptr(table.ptr), ptr(this.stepPtr(s.tokenIds)), i32(table.cols)],
    );
    return out;
  }

  rmsNorm(x: CudaTensor, weight: CudaTensor, eps: number): CudaTensor {
    const out = this.alloc(x.rows, x.cols);
    this.device.launch(
      this.fn("rmsnorm"),
      [x.rows],
      [256],
      [ptr(out.ptr), ptr(x.ptr), ptr(weight.ptr), i32(x.cols), f32(eps)],
    );
    return out;
  }

  addRmsNorm(residual: CudaTensor, x: CudaTensor, weight: CudaTensor, eps: number): CudaTensor {
    const out = this.alloc(x.rows, x.cols);
    this.device.launch(
      this.fn("add_rmsnorm"),
      [x.rows],
      [256],
      [ptr(residual.ptr), ptr(x.ptr), ptr(out.ptr), ptr(weight.ptr), i32(x.cols), f32(eps)],
    );
    return out;
  }

  addInPlace(x: CudaTensor, y: CudaTensor): void {
    const n = x.rows * x.cols;
    this.device.launch(
      this.fn("add_inplace"),
      [Math.min(1024, Math.ceil(n / 256))],
      [256],
      [ptr(x.ptr), ptr(y.ptr), { u64: n }],
    );
  }

  linear(x: CudaTensor, weight: CudaTensor, bias: CudaTensor | null, float32Out = false): CudaTensor {
    if (weight.quant) return quantizedLinear(this.launcher, x, weight, bias, float32Out);
    const out = this.alloc(x.rows, weight.rows, float32Out ? "F32" : this.dtype);
    const rowBytes = x.cols * BYTES[this.dtype];
    // Decode steps read each weight once for a handful of rows: bandwidth-bound, so kiln's GEMV beats cuBLAS's tiles.
    if (x.rows <= GEMV_MAX_ROWS && rowBytes % 16 === 0 && x.ptr % 16 === 0 && weight.ptr % 16 === 0) {
      if (x.rows > 0) {
        const { ksplit, blocks } = gemvLaunch(weight.rows, rowBytes);
        this.device.launch(
          this.fn(kernelForRows("gemv", x.rows)),
          [blocks],
          [256],
          [
            ptr(out.ptr),
            i32(float32Out ? 1 : 0),
            ptr(x.ptr),
            ptr(weight.ptr),
            i32(x.rows),
            i32(x.cols),
            i32(weight.rows),
            i32(ksplit),
          ],
        );
      }
    } else
      this.cublas.linear(
        out.ptr,
        CUBLAS_TYPE[out.dtype],
        x.ptr,
        weight.ptr,
        CUBLAS_TYPE[this.dtype],
        x.rows,
        x.cols,
        weight.rows,
      );
    addBias(this.launcher, out, bias, float32Out);
    return out;
  }

  /** The dequantization scratch, grown outside graph capture (a captured graph must keep its address). */
  private ensureWoScratch(elements: number): number {
    if (elements > this.woScratch.elements) {
      if (this.graphMode)
        throw new Error(`dequantization scratch of ${this.woScratch.elements} values is too small for ${elements}`);
      if (this.woScratch.ptr) this.device.free(this.woScratch.ptr);
      this.woScratch = { ptr: this.device.alloc(elements * BYTES[this.dtype]), elements };
    }
    return this.woScratch.ptr;
  }

  ropeAndCacheKv(
    layer: number,
    qkv: CudaTensor,
    _step: StepInput,
    rope: RopeSpec,
    shape: AttentionShape,
    bias: CudaTensor | null,
  ): void {
    const s = this.step!;
    const kv = this.kv!;
    this.device.launch(
      this.fn("rope_cache"),
      [qkv.rows],
      [128],
      [
        ptr(qkv.ptr),
        ptr(bias ? bias.ptr : 0),
        ptr(this.stepPtr(s.positions)),
        ptr(this.stepPtr(s.slots)),
        ptr(kv.k[layer]),
        ptr(kv.v[layer]),
        f32(this.kvScale(layer)),
        ptr(this.invFreq),
        i32(shape.numHeads),
        i32(shape.numKvHeads),
        i32(shape.headSize),
        i32(rope.rotaryDim),
      ],
    );
  }

  attention(layer: number, qkv: CudaTensor, _step: StepInput, shape: AttentionShape, dense?: CudaTensor): CudaTensor {
    return this.attentionLaunch.attention(layer, qkv, shape, dense);
  }

  /** Which decode attention kernel wide steps take (attention-launch.ts); op tests set "always". */
  get decodeTensorCores(): DecodeTensorCores {
    return this.attentionLaunch.decodeTensorCores;
  }

  set decodeTensorCores(mode: DecodeTensorCores) {
    this.attentionLaunch.decodeTensorCores = mode;
  }

  siluMul(a: CudaTensor, b: CudaTensor): CudaTensor {
    const out = this.alloc(a.rows, a.cols);
    const n = a.rows * a.cols;
    this.device.launch(
      this.fn("silu_mul_pair"),
      [Math.min(4096, Math.ceil(n / 256))],
      [256],
      [ptr(out.ptr), ptr(a.ptr), ptr(b.ptr), { u64: n }],
    );
    return out;
  }

  siluMulHalves(fg: CudaTensor): CudaTensor {
    const inter = fg.cols / 2;
    const out = this.alloc(fg.rows, inter);
    const n = fg.rows * inter;
    this.device.launch(
      this.fn("silu_mul"),
      [Math.min(4096, Math.ceil(n / 256))],
      [256],
      [ptr(out.ptr), ptr(fg.ptr), i32(inter), { u64: n }],
    );
    return out;
  }

  normQkvRope(
    residual: CudaTensor,
    delta: CudaTensor | null,
    norm: NormSpec<CudaTensor>,
    qkv: CudaTensor,
    bias: CudaTensor | null,
    layer: number,
    _step: StepInput,
    rope: RopeSpec,
    shape: AttentionShape,
  ): { residual: CudaTensor; qkv: CudaTensor } | null {
    return this.fused.normQkvRope(residual, delta, norm, qkv, bias, layer, rope, shape);
  }

  normGatedMlp(
    residual: CudaTensor,
    delta: CudaTensor,
    norm: NormSpec<CudaTensor>,
    mlp: GatedMlp<CudaTensor>,
    proj?: CudaTensor,
  ): { residual: CudaTensor; act: CudaTensor } | null {
    return this.fused.normGatedMlp(residual, delta, norm, mlp, proj);
  }

  moe(x: CudaTensor, w: MoeWeights<CudaTensor>, spec: MoeSpec): CudaTensor {
    return moeLayer(this.launcher, x, w, spec);
  }

  gatherRows(x: CudaTensor, _step: StepInput): CudaTensor {
    const s = this.step!;
    const out = this.alloc(s.numLogitRows, x.cols);
    if (s.numLogitRows > 0) {
      this.device.launch(
        this.fn("gather_rows"),
        [s.numLogitRows],
        [256],
        [ptr(out.ptr), ptr(x.ptr), ptr(this.stepPtr(s.logitRows)), i32(x.cols)],
      );
    }
    return out;
  }

  finishLinear(sums: CudaTensor, bias: CudaTensor | null): CudaTensor {
    const out = this.alloc(sums.rows, sums.cols);
    const args = [ptr(out.ptr), ptr(sums.ptr), ptr(bias ? bias.ptr : 0), i32(sums.cols)];
    this.device.launch(this.fn("finish_linear"), [sums.rows], [256], args);
    return out;
  }

  /** Waits for the stream and copies `x` to the host as float32 (logits, or activations ranks exchange). */
  toHost(x: CudaTensor): Float32Array {
    this.device.synchronize();
    const n = x.rows * x.cols;
    if (x.dtype === "F32") {
      const out = new Float32Array(n);
      if (n > 0) this.device.download(out, x.ptr);
      return out;
    }
    const raw = new Uint8Array(n * BYTES[x.dtype]);
    if (n > 0) this.device.download(raw, x.ptr);
    return decodeToFloat32(raw, x.dtype);
  }

  /**
   * Host values as a step tensor (in the step's arena, so it lives as long as what the model computes beside
   * it): in the model dtype, or float32 for logits. Copied in stream order, after what the stream has queued.
   */
  fromHost(data: Float32Array, rows: number, cols: number, float32 = false): CudaTensor {
    const out = this.alloc(rows, cols, float32 ? "F32" : this.dtype);
    this.device.uploadInStreamOrder(out.ptr, float32 ? data : encodeFromFloat32(data, this.dtype));
    return out;
  }

  greedy(logits: CudaTensor, vocab: number): { tokens: Int32Array; logProbs: Float32Array } {
    this.launchGreedy(logits, vocab);
    return this.readGreedy(logits.rows);
  }

  /** Enqueues the greedy choice of every logits row (graph-capturable: no synchronisation). */
  launchGreedy(logits: CudaTensor, vocab: number): void {
    this.tokenChoice.launchGreedy(logits, vocab);
  }

  /** Waits for the stream and reads the greedy (or sampled) choices of the last launch, which chose for `rows` rows. */
  readGreedy(rows: number): { tokens: Int32Array; logProbs: Float32Array } {
    return this.tokenChoice.read(rows);
  }

  /** Whether wide steps of this engine's fp8 and SmoothQuant int8 layers take cuBLASLt's GEMMs (not KILN_CUDA_LT_GEMM=0). */
  get takesLtGemm(): boolean {
    return this.cublasLt !== null;
  }

  get maxGraphRows(): number {
    return Math.min(this.limits.maxSeqs, this.limits.maxRows);
  }
}
