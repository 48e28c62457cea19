// The cuda backend's tensors and the names shared by its op modules: dtypes, quantized layers' device
// pointers, the kernels of decoder.cu, and the launch context an op module works through.

import { CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F, type Cublas } from "./cublas.js";
import type { CublasLt } from "./cublas-lt.js";
import type { CudaDevice } from "./driver.js";
import type { InputRounding, QuantKind } from "./weight-layout.js";

export type CudaDtype = "F32" | "F16" | "BF16";

export interface CudaTensor {
  ptr: number;
  rows: number;
  cols: number;
  dtype: CudaDtype;
  /** A quantized linear layer's codes ([rows = out, cols = in], weight-layout.ts) and how to use them. */
  quant?: CudaQuant;
  /**
   * An activation already rounded as this layer's format rounds its input, in units of its scale (by the op
   * that wrote it: quantized-linear.ts's preRoundable): that layer's GEMV reads it as it is, nothing else may.
   */
  roundedFor?: CudaQuant;
}

/** Device pointers (0: none) of a quantized layer's scales, and what its format does to the input. */
export interface CudaQuant {
  kind: QuantKind;
  /** float32: per output channel [out], or, group-wise int4 (groups > 0), per group [out, groups]. */
  scales: number;
  /** GPTQ's group zeros [out, groups]. */
  zeros: number;
  groups: number;
  /** NVFP4: the E4M3 scale code of every 16 weights [out, in/16]. */
  blocks: number;
  weightScale: number;
  alpha: number;
  /** null: the input is used as it is (weight-only). prequant (multiplies) and smoother (divides): float32 [in]. */
  input: { rounding: InputRounding; prequant: number; smoother: number; scale: number } | null;
}

export const DTYPE_BYTES: Record<CudaDtype, number> = { F32: 4, F16: 2, BF16: 2 };
export const CUBLAS_TYPE: Record<CudaDtype, number> = { F32: CUDA_R_32F, F16: CUDA_R_16F, BF16: CUDA_R_16BF };
/** The most dynamic shared memory a block may take (Hopper: 227 KiB). */
export const MAX_DYNAMIC_SHARED = 227 * 1024;
/** GEMV_MAX_ROWS in decoder.cu: steps of at most this many rows take the GEMV kernels instead of cuBLAS. */
export const GEMV_MAX_ROWS = 8;
/** KILN_GEMV_KSPLIT=1|2|4|8 sets every GEMV's split (an A/B switch for measuring it; unset: by row length). */
const FORCED_KSPLIT = ((v) => ([1, 2, 4, 8].includes(v) ? v : undefined))(Number(process.env.KILN_GEMV_KSPLIT));
/** KILN_GEMV_Q_KSPLIT=1|2|4|8 sets the quantized GEMVs' split alone (the same A/B switch for them). */
export const FORCED_Q_KSPLIT = ((v) => ([1, 2, 4, 8].includes(v) ? v : FORCED_KSPLIT))(
  Number(process.env.KILN_GEMV_Q_KSPLIT),
);
/** GEMV_UNROLL in decoder.cu: 16-byte loads a lane has in flight. */
const GEMV_UNROLL = 4;

/**
 * The GEMV kernels' launch for a weight of `outRows` rows of `rowBytes` bytes: ksplit warps an output row
 * (1, 2, 4 or 8), so that each warp makes one pass of its loads over its share of a long row (the
 * 0.5B model's down projection, 896 rows of 9.5 KB, would otherwise run 112 blocks on 132 SMs), and the grid.
 * `forced`: a split an A/B switch sets instead (KILN_GEMV_KSPLIT; the quantized GEMVs pass KILN_GEMV_Q_KSPLIT's).
 */
export function gemvLaunch(
  outRows: number,
  rowBytes: number,
  forced = FORCED_KSPLIT,
): { ksplit: number; blocks: number } {
  const passes = Math.ceil(rowBytes / 16 / (32 * GEMV_UNROLL));
  const ksplit = forced ?? (passes > 4 ? 8 : passes > 2 ? 4 : passes > 1 ? 2 : 1);
  return { ksplit, blocks: Math.ceil((outRows * ksplit) / 8) };
}

/** decoder.cu's kernels, looked up once at load. */
export const KERNELS = [
  "embed",
  "rmsnorm",
  "add_rmsnorm",
  "add_inplace",
  "add_bias",
  "finish_linear",
  "silu_mul",
  "rope_cache",
  "attention",
  "gather_rows",
  "argmax_rows",
  "sample_rows",
  "attention_split",
  "attention_fmha",
  "attention_decode_tc",
  "gemv",
  "gemv_1",
  "gemv_q_int8",
  "gemv_q_int4",
  "gemv_q_fp8",
  "gemv_q_fp4",
  "gemv_q_int8_1",
  "gemv_q_int4_1",
  "gemv_q_fp8_1",
  "gemv_q_fp4_1",
  "dequant_q",
  "quantize_rows",
  "quantize_rows_fp8",
  "quantize_rows_int8",
  "finish_int8_gemm",
  "silu_mul_pair",
  "norm_qkv_rope",
  "norm_qkv_rope_1",
  "norm_gated_mlp",
  "norm_gated_mlp_1",
  "norm_qkv_rope_q_int8_1",
  "norm_qkv_rope_q_int4_1",
  "norm_qkv_rope_q_fp8_1",
  "norm_qkv_rope_q_fp4_1",
  "norm_gated_mlp_q_int8_1",
  "norm_gated_mlp_q_int4_1",
  "norm_gated_mlp_q_fp8_1",
  "norm_gated_mlp_q_fp4_1",
  "moe_route",
  "moe_expert_act",
  "moe_expert_out",
  "moe_add_gated",
] as const;
export type KernelName = (typeof KERNELS)[number];

/** Kernels decoder.cu compiles for half and bfloat16 engines only. */
export const TENSOR_CORE_KERNELS: readonly KernelName[] = ["attention_fmha", "attention_decode_tc"];

/** Kernels with a build for one row (`<name>_1`): batch-1 decode, in the registers one row needs. */
export type RowsKernel = "gemv" | "norm_qkv_rope" | "norm_gated_mlp" | `gemv_q_${QuantKind}`;

/** The kernel to launch for a step of `rows` rows: the one-row build for one row, else the general one. */
export function kernelForRows(name: RowsKernel, rows: number): KernelName {
  return rows === 1 ? (`${name}_1` as KernelName) : name;
}

/** What an op module needs of the backend: its device, dtype, kernels, activation memory and cuBLAS. */
export interface QuantizedLaunch {
  device: CudaDevice;
  dtype: CudaDtype;
  cublas: Cublas;
  fn(name: KernelName): unknown;
  /** Activation memory for this layer (reset by the backend as layers go). */
  alloc(rows: number, cols: number, dtype?: CudaDtype): CudaTensor;
  /** A scratch buffer of at least `elements` model-dtype values, at the same address for every step. */
  scratch(elements: number): number;
  /** FP8 and int8 tensor-core GEMMs for wide steps of the layers that take them, where the backend has them (cublas-lt.ts). */
  cublasLt: CublasLt | null;
}
