// The decode-step fusions (norm_qkv_rope, norm_gated_mlp in decoder.cu): each norm opens the GEMV after it,
// for steps of at most GEMV_MAX_ROWS rows of float weights, and for one-row steps of quantized ones. The
// updated residual alternates between two step-lived buffers: a fused op writes the one its previous call
// replaced.

import type { AttentionShape, GatedMlp, NormSpec, RopeSpec } from "../backend.js";
import {
  type CudaTensor,
  DTYPE_BYTES,
  GEMV_MAX_ROWS,
  type KernelName,
  kernelForRows,
  MAX_DYNAMIC_SHARED,
  type QuantizedLaunch,
} from "./cuda-tensor.js";
import { f32, i32, type KernelArg, ptr } from "./driver.js";
import { extraDefines } from "./engine-kernels.js";
import { NO_QLINEAR, preRoundable, qlinearArg } from "./quantized-linear.js";
import { QUANT_KINDS } from "./weight-layout.js";

/** The kernels that fuse a decode step's norms into its GEMVs, and take dynamic shared memory (the rows). */
export const FUSED_KERNELS: readonly KernelName[] = [
  "norm_qkv_rope",
  "norm_qkv_rope_1",
  "norm_gated_mlp",
  "norm_gated_mlp_1",
  ...QUANT_KINDS.flatMap((k) => [`norm_qkv_rope_q_${k}_1`, `norm_gated_mlp_q_${k}_1`] as KernelName[]),
];
/** KILN_CUDA_FUSED=0 runs decode steps with the plain ops (to measure what fusion gains). */
const FUSED = process.env.KILN_CUDA_FUSED !== "0";

/**
 * Pairs of fc and gate rows a warp of norm_gated_mlp computes (KILN_MLP_PAIRS, and _Q for the quantized
 * kinds, in decoder.cu: its defaults, or what KILN_CUDA_DEFINES compiled it with).
 */
export function mlpPairs(quantized: boolean): number {
  const defines = extraDefines();
  return quantized ? (defines.KILN_MLP_PAIRS_Q ?? 2) : (defines.KILN_MLP_PAIRS ?? 1);
}

/** Dynamic shared memory of a fused kernel: the normalized rows, and a second copy where two layers round them apart. */
export function fusedSharedBytes(rows: number, cols: number, dtype: CudaTensor["dtype"]): number {
  return 2 * rows * cols * DTYPE_BYTES[dtype];
}

export interface FusedContext extends QuantizedLaunch {
  /** Device pointers of the step's row positions and KV cache slots. */
  stepRows(): { positions: number; slots: number };
  kvLayer(layer: number): { k: number; v: number; scale: number };
  invFreq(): number;
  /** Memory that lives for the whole step, where the residual is. */
  allocStep(rows: number, cols: number): CudaTensor;
}

export class FusedDecode {
  /** The residual buffer the next fused op writes (null: none yet this step). */
  private spare: CudaTensor | null = null;

  constructor(private readonly ctx: FusedContext) {}

  /** A new step: its residual buffers are new too. */
  reset(): void {
    this.spare = null;
  }

  normQkvRope(
    residual: CudaTensor,
    delta: CudaTensor | null,
    norm: NormSpec<CudaTensor>,
    qkv: CudaTensor,
    bias: CudaTensor | null,
    layer: number,
    rope: RopeSpec,
    shape: AttentionShape,
  ): { residual: CudaTensor; qkv: CudaTensor } | null {
    const { numHeads, numKvHeads, headSize } = shape;
    if (!this.fuses(residual, [qkv]) || headSize % 2 !== 0 || (headSize - rope.rotaryDim) % 2 !== 0) return null;
    const rows = this.ctx.stepRows();
    const kv = this.ctx.kvLayer(layer);
    const out = this.ctx.alloc(residual.rows, qkv.rows);
    const next = delta ? this.nextResidual(residual) : residual;
    const pairs = (numHeads + 2 * numKvHeads) * (headSize / 2);
    this.launch(
      this.kernel("norm_qkv_rope", qkv, residual.rows),
      Math.ceil(pairs / 8),
      { out, next, residual, delta, norm },
      [
        ptr(qkv.ptr),
        this.qlinearOf(qkv),
        ptr(bias ? bias.ptr : 0),
        ptr(rows.positions),
        ptr(rows.slots),
        ptr(kv.k),
        ptr(kv.v),
        f32(kv.scale),
        ptr(this.ctx.invFreq()),
        i32(residual.rows),
        i32(residual.cols),
        i32(numHeads),
        i32(numKvHeads),
        i32(headSize),
        i32(rope.rotaryDim),
      ],
    );
    return { residual: next, qkv: out };
  }

  /** proj: the layer after, the down projection: a quantized fused MLP hands it its input rounded where it can. */
  normGatedMlp(
    residual: CudaTensor,
    delta: CudaTensor,
    norm: NormSpec<CudaTensor>,
    mlp: GatedMlp<CudaTensor>,
    proj?: CudaTensor,
  ): { residual: CudaTensor; act: CudaTensor } | null {
    const { fc, gate } = mlp;
    // The two layers' rows i (and their biases): one fused [fc | gate] weight's rows i and inter + i, or
    // row i of two quantized layers of one kind.
    if (!this.fuses(residual, gate ? [fc, gate] : [fc])) return null;
    if (gate && (!fc.quant || !gate.quant || fc.quant.kind !== gate.quant.kind || fc.rows !== gate.rows)) return null;
    const inter = gate ? fc.rows : fc.rows / 2;
    const pairs = mlpPairs(fc.quant !== undefined);
    if (inter < pairs) return null;
    const out = this.ctx.alloc(residual.rows, inter);
    const projQuant = proj?.quant;
    if (fc.quant && projQuant && preRoundable(out, projQuant)) out.roundedFor = projQuant;
    const next = this.nextResidual(residual);
    const bias = (t: CudaTensor | null) => ptr(t ? t.ptr : 0);
    this.launch(
      this.kernel("norm_gated_mlp", fc, residual.rows),
      Math.ceil(inter / (8 * pairs)),
      { out, next, residual, delta, norm },
      [
        ptr(fc.ptr),
        ptr((gate ?? fc).ptr),
        this.qlinearOf(fc),
        this.qlinearOf(gate ?? fc),
        i32(gate ? 0 : inter),
        bias(mlp.fcBias),
        bias(gate ? mlp.gateBias : mlp.fcBias),
        out.roundedFor ? qlinearArg(out.roundedFor) : NO_QLINEAR,
        i32(residual.rows),
        i32(residual.cols),
        i32(inter),
      ],
    );
    return { residual: next, act: out };
  }

  /** The kernel for a weight: plain (its one-row build for one row), or the one-row build of its code kind. */
  private kernel(name: "norm_qkv_rope" | "norm_gated_mlp", w: CudaTensor, rows: number): KernelName {
    return w.quant ? (`${name}_q_${w.quant.kind}_1` as KernelName) : kernelForRows(name, rows);
  }

  /** A quantized layer's QLinear, by value (zeros for a plain weight). */
  private qlinearOf(w: CudaTensor): KernelArg {
    return w.quant ? qlinearArg(w.quant) : NO_QLINEAR;
  }

  /**
   * Launches a fused kernel, 256 threads a block and the rows in dynamic shared memory: the arguments both
   * kernels open with (out, the updated residual, the residual, delta, the norm's weight and eps), then the
   * kernel's own.
   */
  private launch(
    kernel: KernelName,
    blocks: number,
    a: {
      out: CudaTensor;
      next: CudaTensor;
      residual: CudaTensor;
      delta: CudaTensor | null;
      norm: NormSpec<CudaTensor>;
    },
    rest: KernelArg[],
  ): void {
    this.ctx.device.launch(
      this.ctx.fn(kernel),
      [blocks],
      [256],
      [
        ptr(a.out.ptr),
        ptr(a.next.ptr),
        ptr(a.residual.ptr),
        ptr(a.delta ? a.delta.ptr : 0),
        ptr(a.norm.weight.ptr),
        f32(a.norm.eps),
        ...rest,
      ],
      fusedSharedBytes(a.residual.rows, a.residual.cols, this.ctx.dtype),
    );
  }

  /**
   * Whether a norm and the linear layers after it run as one fused GEMV: decode-sized steps (one row for
   * quantized layers, whose kernels come for one row), weights in the model dtype or quantized, aligned.
   */
  private fuses(x: CudaTensor, weights: CudaTensor[]): boolean {
    const bytes = DTYPE_BYTES[this.ctx.dtype];
    return (
      FUSED &&
      x.rows > 0 &&
      x.rows <= GEMV_MAX_ROWS &&
      (x.cols * bytes) % 16 === 0 &&
      fusedSharedBytes(x.rows, x.cols, this.ctx.dtype) <= MAX_DYNAMIC_SHARED &&
      weights.every((w) =>
        w.quant ? x.rows === 1 && x.cols % 32 === 0 : w.dtype === this.ctx.dtype && w.ptr % 16 === 0,
      )
    );
  }

  /** Where a fused op writes the updated residual: the buffer its last call replaced, or a new one. */
  private nextResidual(residual: CudaTensor): CudaTensor {
    const spare = this.spare;
    const next =
      spare && spare.rows === residual.rows && spare.cols === residual.cols
        ? spare
        : this.ctx.allocStep(residual.rows, residual.cols);
    this.spare = residual;
    return next;
  }
}
