// The decode-step fusions (norm_qkv_rope, norm_gated_mlp in decoder.cu): each norm opens the GEMV after it,
// for steps of at most GEMV_MAX_ROWS rows of float weights. The updated residual alternates between two
// step-lived buffers: a fused op writes the one its previous call replaced.

import type { AttentionShape, NormSpec, RopeSpec } from "../backend.js";
import {
  type CudaTensor,
  DTYPE_BYTES,
  GEMV_MAX_ROWS,
  type KernelName,
  kernelForRows,
  type QuantizedLaunch,
} from "./cuda-tensor.js";
import { f32, i32, type KernelArg, ptr } from "./driver.js";

/** The kernels that fuse a decode step's norms into its GEMVs, and take dynamic shared memory (the rows). */
export const FUSED_KERNELS: readonly KernelName[] = [
  "norm_qkv_rope",
  "norm_qkv_rope_1",
  "norm_gated_mlp",
  "norm_gated_mlp_1",
];
/** The most dynamic shared memory a block may take (Hopper: 227 KiB). */
export const MAX_DYNAMIC_SHARED = 227 * 1024;
/** KILN_CUDA_FUSED=0 runs decode steps with the plain ops (to measure what fusion gains). */
const FUSED = process.env.KILN_CUDA_FUSED !== "0";

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
    if (!this.fuses(residual, qkv) || headSize % 2 !== 0 || (headSize - rope.rotaryDim) % 2 !== 0) return null;
    const rows = this.ctx.stepRows();
    const kv = this.ctx.kvLayer(layer);
    const out = this.ctx.alloc(residual.rows, qkv.rows);
    const next = delta ? this.nextResidual(residual) : residual;
    const pairs = (numHeads + 2 * numKvHeads) * (headSize / 2);
    this.launch("norm_qkv_rope", Math.ceil(pairs / 8), { out, next, residual, delta, norm, weight: qkv, bias }, [
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
    ]);
    return { residual: next, qkv: out };
  }

  normGatedMlp(
    residual: CudaTensor,
    delta: CudaTensor,
    norm: NormSpec<CudaTensor>,
    fcGate: CudaTensor,
    bias: CudaTensor | null,
  ): { residual: CudaTensor; act: CudaTensor } | null {
    if (!this.fuses(residual, fcGate)) return null;
    const inter = fcGate.rows / 2;
    const out = this.ctx.alloc(residual.rows, inter);
    const next = this.nextResidual(residual);
    this.launch("norm_gated_mlp", Math.ceil(inter / 8), { out, next, residual, delta, norm, weight: fcGate, bias }, [
      i32(residual.rows),
      i32(residual.cols),
      i32(inter),
    ]);
    return { residual: next, act: out };
  }

  /**
   * Launches a fused kernel (its one-row build for one row), 256 threads a block and the rows in dynamic
   * shared memory: the arguments both kernels open with (out, the updated residual, the residual, delta, the
   * norm's weight and eps, the linear's weight and bias), then the kernel's own.
   */
  private launch(
    kernel: "norm_qkv_rope" | "norm_gated_mlp",
    blocks: number,
    a: {
      out: CudaTensor;
      next: CudaTensor;
      residual: CudaTensor;
      delta: CudaTensor | null;
      norm: NormSpec<CudaTensor>;
      weight: CudaTensor;
      bias: CudaTensor | null;
    },
    rest: KernelArg[],
  ): void {
    this.ctx.device.launch(
      this.ctx.fn(kernelForRows(kernel, a.residual.rows)),
      [blocks],
      [256],
      [
        ptr(a.out.ptr),
        ptr(a.next.ptr),
        ptr(a.residual.ptr),
        ptr(a.delta ? a.delta.ptr : 0),
        ptr(a.norm.weight.ptr),
        f32(a.norm.eps),
        ptr(a.weight.ptr),
        ptr(a.bias ? a.bias.ptr : 0),
        ...rest,
      ],
      a.residual.rows * a.residual.cols * DTYPE_BYTES[this.ctx.dtype],
    );
  }

  /** Whether a norm and the linear after it run as one fused GEMV: decode-sized steps, float weights, aligned. */
  private fuses(x: CudaTensor, weight: CudaTensor): boolean {
    return (
      FUSED &&
      x.rows > 0 &&
      x.rows <= GEMV_MAX_ROWS &&
      !weight.quant &&
      weight.dtype === this.ctx.dtype &&
      (x.cols * DTYPE_BYTES[this.ctx.dtype]) % 16 === 0 &&
      weight.ptr % 16 === 0 &&
      x.rows * x.cols * DTYPE_BYTES[this.ctx.dtype] <= MAX_DYNAMIC_SHARED
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
