// A quantized linear layer on the GPU, every format through one path: the format's input rounding
// (quantize_rows), then, for decode steps, the GEMV of the layer's code kind; wider steps dequantize the
// weight into the scratch buffer and run cuBLAS.

import {
  CUBLAS_TYPE,
  type CudaTensor,
  GEMV_MAX_ROWS,
  gemvLaunch,
  kernelForRows,
  type QuantizedLaunch,
} from "./cuda-tensor.js";
import { f32, i32, ptr } from "./driver.js";
import { INPUT_ROUNDINGS, QUANT_KINDS } from "./weight-layout.js";

/**
 * A quantized layer: its format's input rounding first (when it has one), then, for decode steps, the GEMV
 * that decodes the weights as it reads them; wider steps dequantize the weight into a scratch buffer and
 * run cuBLAS on it, with the inputs rounded and dequantized again.
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
  const narrow = x.rows <= GEMV_MAX_ROWS && x.cols % 32 === 0 && x.ptr % 16 === 0;
  let input = x;
  let rowScale = 0;
  if (q.input) {
    input = ctx.alloc(x.rows, x.cols);
    // The GEMV takes rounded inputs in units of their scale (exact in T) and applies the scale to its sums;
    // the GEMM path takes them dequantized.
    if (narrow && q.input.rounding === "int8_token") rowScale = ctx.alloc(x.rows, 1, "F32").ptr;
    ctx.device.launch(
      ctx.fn("quantize_rows"),
      [x.rows],
      [256],
      [
        ptr(input.ptr),
        ptr(rowScale),
        ptr(x.ptr),
        ptr(q.input.prequant),
        ptr(q.input.smoother),
        i32(INPUT_ROUNDINGS.indexOf(q.input.rounding)),
        f32(q.input.scale),
        i32(x.cols),
        i32(narrow ? 0 : 1),
      ],
    );
  }
  // What one unit of the rounded input is worth (int8_times' scale multiplies the input; per token: the row's).
  const r = q.input?.rounding;
  const inputScale = !q.input || r === "int8_token" ? 1 : r === "int8_times" ? 1 / q.input.scale : q.input.scale;
  const args = [ptr(w.ptr), ptr(q.scales), ptr(q.zeros), ptr(q.blocks), i32(q.groups)];
  if (narrow) {
    const codeBytes = q.kind === "int8" || q.kind === "fp8" ? 1 : 0.5;
    const { ksplit, blocks } = gemvLaunch(w.rows, w.cols * codeBytes);
    ctx.device.launch(
      ctx.fn(kernelForRows(`gemv_q_${q.kind}`, x.rows)),
      [blocks],
      [256],
      [
        ptr(out.ptr),
        i32(float32Out ? 1 : 0),
        ptr(input.ptr),
        ...args,
        i32(x.rows),
        i32(x.cols),
        i32(w.rows),
        f32(inputScale * q.weightScale * q.alpha),
        ptr(rowScale),
        ptr(bias ? bias.ptr : 0),
        i32(ksplit),
      ],
    );
    return out;
  }
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

/** out[r, c] += bias[c] after a GEMM (the GEMVs add it themselves); model-dtype outputs only. */
export function addBias(ctx: QuantizedLaunch, out: CudaTensor, bias: CudaTensor | null, float32Out: boolean): void {
  if (!bias) return;
  if (float32Out) throw new Error("a bias on a float32-output linear is not supported");
  ctx.device.launch(ctx.fn("add_bias"), [out.rows], [256], [ptr(out.ptr), ptr(bias.ptr), i32(out.cols)]);
}
