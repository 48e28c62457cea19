// A quantized linear layer on the GPU, every format through one path: for decode steps, the GEMV of the
// layer's code kind, which rounds its input as the format says; wider steps of FP8 and SmoothQuant int8 layers
// take cuBLASLt's tensor-core GEMMs on their codes; other wide steps round the input (quantize_rows),
// dequantize the weight into the scratch buffer and run cuBLAS.

import type { CublasLt } from "./cublas-lt.js";
import {
  CUBLAS_TYPE,
  type CudaQuant,
  type CudaTensor,
  DTYPE_BYTES,
  FORCED_Q_KSPLIT,
  GEMV_MAX_ROWS,
  gemvLaunch,
  kernelForRows,
  MAX_DYNAMIC_SHARED,
  type QuantizedLaunch,
} from "./cuda-tensor.js";
import { f32, i32, type KernelArg, ptr, struct } from "./driver.js";
import { INPUT_ROUNDINGS, QUANT_KINDS } from "./weight-layout.js";

/** sizeof(QLinear) in decoder.cu. */
const QLINEAR_BYTES = 56;

/**
 * decoder.cu's QLinear for a quantized layer: the device pointers of its scales, its input rounding (-1:
 * none) and the scale its GEMV's sums are multiplied by (outScale). The codes' pointer goes to the kernels
 * as an argument of its own. All zeros: a plain weight's (the fused kernels
 * take one either way).
 */
export function encodeQLinear(q: CudaQuant, inputRounded = false): Uint8Array {
  const bytes = new Uint8Array(QLINEAR_BYTES);
  const v = new DataView(bytes.buffer);
  // An input already rounded (by the op before: preRoundable) is used as it is, its unit still in the scale.
  const input = inputRounded ? null : q.input;
  const pointers = [q.scales, q.zeros, q.blocks, input?.prequant ?? 0, input?.smoother ?? 0];
  pointers.forEach((p, i) => {
    v.setBigUint64(8 * i, BigInt(p), true);
  });
  v.setInt32(40, q.groups, true);
  v.setInt32(44, input ? INPUT_ROUNDINGS.indexOf(input.rounding) : -1, true);
  v.setFloat32(48, q.input?.scale ?? 1, true);
  v.setFloat32(52, outScale(q), true);
  return bytes;
}

/**
 * What a layer's sums over its rounded input and codes are multiplied by (besides channel and row scales):
 * the input's unit (int8_times' scale multiplies the input, so its unit is 1 / scale; per token, the row's
 * own, applied apart), the weight scale and alpha.
 */
function outScale(q: CudaQuant): number {
  const r = q.input?.rounding;
  const inputUnit = !q.input || r === "int8_token" ? 1 : r === "int8_times" ? 1 / q.input.scale : q.input.scale;
  return inputUnit * q.weightScale * q.alpha;
}

const encoded = [new WeakMap<CudaQuant, KernelArg>(), new WeakMap<CudaQuant, KernelArg>()];

/** A quantized layer's QLinear as a kernel argument (by value), encoded once a layer (and input state). */
export function qlinearArg(q: CudaQuant, inputRounded = false): KernelArg {
  const cache = encoded[inputRounded ? 1 : 0];
  let arg = cache.get(q);
  if (!arg) {
    arg = struct(encodeQLinear(q, inputRounded));
    cache.set(q, arg);
  }
  return arg;
}

/**
 * The QLinear of no layer (null pointers, rounding -1): a plain weight's in the fused kernels, which read
 * none of it, and the next layer's where a kernel leaves its output as it is.
 */
export const NO_QLINEAR = struct(
  ((b) => {
    new DataView(b.buffer).setInt32(44, -1, true);
    return b;
  })(new Uint8Array(QLINEAR_BYTES)),
);

/** Dynamic shared memory a quantized GEMV of `rows` × `inDim` inputs takes: its rounded input, where it rounds. */
export function roundedInputBytes(ctx: QuantizedLaunch, q: CudaQuant, rows: number, inDim: number): number {
  return q.input ? rows * inDim * DTYPE_BYTES[ctx.dtype] : 0;
}

/** Whether a step's input x takes the quantized GEMV (else the GEMM path), before the rounded input's memory. */
function gemvShaped(x: CudaTensor): boolean {
  return x.rows <= GEMV_MAX_ROWS && x.cols % 32 === 0 && x.ptr % 16 === 0;
}

/**
 * Whether the op that writes x can hand it to layer q already rounded as q's format rounds its input
 * (decoder.cu's round_static): roundings that need no other input's value (none, FP8, int8, int8_times,
 * not int8_token's row amax nor NVFP4's blocks), for a step that takes q's GEMV. The tensor then says so
 * (`roundedFor`), and q's GEMV reads it as it is.
 */
export function preRoundable(x: CudaTensor, q: CudaQuant | undefined): boolean {
  const r = q?.input?.rounding;
  return r !== undefined && r !== "int8_token" && r !== "fp4" && gemvShaped(x);
}

/**
 * A quantized layer: for decode steps, the GEMV that rounds the input as the format says and decodes the
 * weights as it reads them; wider steps take cuBLASLt's int8 or FP8 GEMM where the layer can (int8Gemmable,
 * fp8Gemmable) and the engine has cuBLASLt, else round and dequantize the input, dequantize the weight into a
 * scratch buffer and run cuBLAS on it.
 */
export function quantizedLinear(
  ctx: QuantizedLaunch,
  x: CudaTensor,
  w: CudaTensor,
  bias: CudaTensor | null,
  float32Out: boolean,
): CudaTensor {
  const q = w.quant!;
  const out = ctx.alloc(x.rows, w.rows, float32Out ? "F32" : ctx.dtype);
  if (x.rows === 0) return out;
  const rounded = x.roundedFor === q;
  const shared = rounded ? 0 : roundedInputBytes(ctx, q, x.rows, x.cols);
  if (rounded && !gemvShaped(x)) throw new Error("an input rounded for its layer must take the layer's GEMV");
  if (gemvShaped(x) && shared <= MAX_DYNAMIC_SHARED) {
    const codeBytes = q.kind === "int8" || q.kind === "fp8" ? 1 : 0.5;
    const { ksplit, blocks } = gemvLaunch(w.rows, w.cols * codeBytes, FORCED_Q_KSPLIT);
    ctx.device.launch(
      ctx.fn(kernelForRows(`gemv_q_${q.kind}`, x.rows)),
      [blocks],
      [256],
      [
        ptr(out.ptr),
        i32(float32Out ? 1 : 0),
        ptr(x.ptr),
        ptr(w.ptr),
        qlinearArg(q, rounded),
        i32(x.rows),
        i32(x.cols),
        i32(w.rows),
        ptr(bias ? bias.ptr : 0),
        i32(ksplit),
      ],
      shared,
    );
    return out;
  }
  const lt = ctx.cublasLt;
  if (
    lt &&
    int8Gemmable(q, w.cols, w.rows) &&
    int8Chunks(x, w, ctx.dtype).every((r) => lt.takesInt8(r, x.cols, w.rows))
  ) {
    int8Linear(ctx, lt, out, x, w, bias, float32Out);
    return out;
  }
  if (ctx.cublasLt && fp8Gemmable(q, x.cols) && ctx.cublasLt.takes(x.rows, x.cols, w.rows, CUBLAS_TYPE[out.dtype])) {
    // E4M3 codes of the input and the weight straight into an FP8 tensor-core GEMM, every scale in alpha.
    const codes = ctx.alloc(x.rows, Math.ceil(x.cols / DTYPE_BYTES[ctx.dtype]));
    const scale = q.input!.scale;
    ctx.device.launch(
      ctx.fn("quantize_rows_fp8"),
      [x.rows],
      [256],
      [ptr(codes.ptr), ptr(x.ptr), f32(scale), i32(x.cols)],
    );
    const alpha = scale * q.weightScale * q.alpha;
    ctx.cublasLt.fp8Linear(out.ptr, CUBLAS_TYPE[out.dtype], codes.ptr, w.ptr, x.rows, x.cols, w.rows, alpha);
    addBias(ctx, out, bias, float32Out);
    return out;
  }
  // The GEMM path takes the inputs rounded and dequantized.
  let input = x;
  if (q.input) {
    input = ctx.alloc(x.rows, x.cols);
    ctx.device.launch(
      ctx.fn("quantize_rows"),
      [x.rows],
      [256],
      [
        ptr(input.ptr),
        ptr(0),
        ptr(x.ptr),
        ptr(q.input.prequant),
        ptr(q.input.smoother),
        i32(INPUT_ROUNDINGS.indexOf(q.input.rounding)),
        f32(q.input.scale),
        i32(x.cols),
        i32(1),
      ],
    );
  }
  const args = [ptr(w.ptr), ptr(q.scales), ptr(q.zeros), ptr(q.blocks), i32(q.groups)];
  const n = w.rows * w.cols;
  const scratch = ctx.scratch(n);
  ctx.device.launch(
    ctx.fn("dequant_q"),
    [Math.min(4096, Math.ceil(n / 256))],
    [256],
    [ptr(scratch), ...args, i32(QUANT_KINDS.indexOf(q.kind)), i32(w.cols), { u64: n }, f32(q.weightScale)],
  );
  ctx.cublas.linear(
    out.ptr,
    CUBLAS_TYPE[out.dtype],
    input.ptr,
    scratch,
    CUBLAS_TYPE[ctx.dtype],
    x.rows,
    x.cols,
    w.rows,
    q.alpha,
  );
  addBias(ctx, out, bias, float32Out);
  return out;
}

/**
 * Whether a layer can take cuBLASLt's FP8 GEMM: E4M3 weights under one per-tensor scale, an input rounded to
 * E4M3 under a static scale with no pre-quant scale or smoother (kiln quantize's fp8), rows of a multiple
 * of 16 bytes.
 */
export function fp8Gemmable(q: CudaQuant, inDim: number): boolean {
  const input = q.input;
  return (
    q.kind === "fp8" &&
    input?.rounding === "fp8" &&
    !input.prequant &&
    !input.smoother &&
    !q.scales &&
    !q.zeros &&
    !q.blocks &&
    q.groups === 0 &&
    inDim % 16 === 0
  );
}

/**
 * Whether a layer can take cuBLASLt's int8 GEMM (SmoothQuant's): int8 codes under per-channel or per-tensor
 * scales, an input rounded to int8 (static, SmoothQuant's static multiplier, or per token; smoothed or not),
 * rows of a multiple of 16 bytes and an output of a multiple of 4 int32 sums.
 */
export function int8Gemmable(q: CudaQuant, inDim: number, outDim: number): boolean {
  const r = q.input?.rounding;
  return (
    q.kind === "int8" &&
    (r === "int8" || r === "int8_times" || r === "int8_token") &&
    !q.zeros &&
    !q.blocks &&
    q.groups === 0 &&
    inDim % 16 === 0 &&
    outDim % 4 === 0
  );
}

/**
 * The rows of one int8 GEMM: as many as the dequantization scratch, which holds one weight's values, holds
 * int32 sums of (in · dtype bytes / 4), in whole 64s (so every chunk's operands start 256-byte aligned, as
 * cuBLASLt's heuristic assumes), at least 64.
 */
function int8Chunk(w: CudaTensor, dtype: QuantizedLaunch["dtype"]): number {
  return Math.max(64, Math.floor((w.cols * DTYPE_BYTES[dtype]) / 4 / 64) * 64);
}

/** The row counts of a step's int8 GEMMs, a chunk at a time: the whole chunk's, and the last chunk's. */
function int8Chunks(x: CudaTensor, w: CudaTensor, dtype: QuantizedLaunch["dtype"]): number[] {
  const chunk = int8Chunk(w, dtype);
  return x.rows <= chunk ? [x.rows] : [chunk, x.rows % chunk || chunk];
}

/** The dequantization scratch's values a quantized weight needs: its dequantized values, or its int8 GEMM's sums. */
export function scratchElements(w: CudaTensor, dtype: QuantizedLaunch["dtype"]): number {
  const q = w.quant;
  if (!q) return 0;
  const sums = int8Gemmable(q, w.cols, w.rows) ? Math.ceil((int8Chunk(w, dtype) * w.rows * 4) / DTYPE_BYTES[dtype]) : 0;
  return Math.max(w.rows * w.cols, sums);
}

/**
 * SmoothQuant's wide step on int8 tensor cores: the input smoothed and rounded to int8 codes (and per-token
 * scales) in one pass, int32 sums from cuBLASLt a chunk of rows at a time into the scratch, then scaled per
 * channel and row as the GEMV scales its own, plus the bias, into out.
 */
function int8Linear(
  ctx: QuantizedLaunch,
  lt: CublasLt,
  out: CudaTensor,
  x: CudaTensor,
  w: CudaTensor,
  bias: CudaTensor | null,
  float32Out: boolean,
): void {
  const q = w.quant!;
  const input = q.input!;
  const codes = ctx.alloc(x.rows, Math.ceil(x.cols / DTYPE_BYTES[ctx.dtype]));
  const rowScale = input.rounding === "int8_token" ? ctx.alloc(x.rows, 1, "F32").ptr : 0;
  ctx.device.launch(
    ctx.fn("quantize_rows_int8"),
    [x.rows],
    [256],
    [
      ptr(codes.ptr),
      ptr(rowScale),
      ptr(x.ptr),
      ptr(input.prequant),
      ptr(input.smoother),
      i32(INPUT_ROUNDINGS.indexOf(input.rounding)),
      f32(input.scale),
      i32(x.cols),
    ],
  );
  const chunk = int8Chunk(w, ctx.dtype);
  const sums = ctx.scratch(scratchElements(w, ctx.dtype));
  const outBytes = DTYPE_BYTES[float32Out ? "F32" : ctx.dtype];
  for (let start = 0; start < x.rows; start += chunk) {
    const rows = Math.min(chunk, x.rows - start);
    lt.int8Linear(sums, codes.ptr + start * x.cols, w.ptr, rows, x.cols, w.rows);
    ctx.device.launch(
      ctx.fn("finish_int8_gemm"),
      [rows],
      [256],
      [
        ptr(out.ptr + start * w.rows * outBytes),
        i32(float32Out ? 1 : 0),
        ptr(sums),
        ptr(rowScale ? rowScale + start * 4 : 0),
        ptr(q.scales),
        f32(outScale(q)),
        ptr(bias ? bias.ptr : 0),
        i32(w.rows),
      ],
    );
  }
}

/** out[r, c] += bias[c] after a GEMM (the GEMVs add it themselves); model-dtype outputs only. */
export function addBias(ctx: QuantizedLaunch, out: CudaTensor, bias: CudaTensor | null, float32Out: boolean): void {
  if (!bias) return;
  if (float32Out) throw new Error("a bias on a float32-output linear is not supported");
  ctx.device.launch(ctx.fn("add_bias"), [out.rows], [256], [ptr(out.ptr), ptr(bias.ptr), i32(out.cols)]);
}
