// Tensor-core GEMMs of quantized codes through cuBLASLt: y[rows, out] = alpha · x[rows, in] · w[out, in]ᵀ with
// both operands E4M3 codes (float32 accumulation, y in the model dtype or float32) or both int8 codes (int32
// sums, y int32: SmoothQuant's layers, which scale the sums per row and channel after). Row-major x and w are
// column-major xᵀ and wᵀ to cuBLASLt, which then computes yᵀ = (wᵀ)ᵀ · xᵀ: A = w transposed, B = x (the "TN"
// layout its FP8 and int8 kernels require). One descriptor set and algorithm per shape, chosen by cuBLASLt's
// heuristic the first time the shape is seen.

import type { CudaDevice } from "./driver.js";
import { type CublasLtApi, loadCublasLt } from "./ffi.js";

// cublasLt.h and library_types.h.
const CUDA_R_8F_E4M3 = 28;
const CUDA_R_8I = 3;
const CUDA_R_32I = 10;
const CUDA_R_32F = 0;
const CUBLAS_COMPUTE_32F = 68;
const CUBLAS_COMPUTE_32I = 72;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
const DESC_TRANSA = 3;
const DESC_TRANSB = 4;
const PREF_MAX_WORKSPACE_BYTES = 1;
/** sizeof(cublasLtMatmulHeuristicResult_t): the 64-byte algorithm, workspace size, state, waves, reserved. */
const HEURISTIC_BYTES = 96;

/** The codes both operands hold. */
export type LtCodes = "fp8" | "int8";

interface Plan {
  desc: unknown;
  layouts: unknown[];
  algo: Uint8Array;
}

export class CublasLt {
  private readonly api: CublasLtApi;
  private readonly handle: unknown;
  private readonly workspace: number;
  /** By codes and shape; null where the heuristic found no algorithm (those take the dequantizing path). */
  private readonly plans = new Map<string, Plan | null>();
  private readonly zero = { fp8: new Float32Array([0]), int8: new Int32Array([0]) };

  constructor(
    private readonly device: CudaDevice,
    private readonly workspaceBytes = 32 << 20,
  ) {
    this.api = loadCublasLt();
    const h = [null];
    this.check(this.api.cublasLtCreate(h), "cublasLtCreate");
    this.handle = h[0];
    // A fixed workspace: cuBLASLt must not allocate while a CUDA graph is recorded.
    this.workspace = device.alloc(workspaceBytes);
  }

  dispose(): void {
    for (const p of this.plans.values()) {
      if (!p) continue;
      this.api.cublasLtMatmulDescDestroy(p.desc);
      for (const l of p.layouts) this.api.cublasLtMatrixLayoutDestroy(l);
    }
    this.plans.clear();
    this.check(this.api.cublasLtDestroy(this.handle), "cublasLtDestroy");
    this.device.free(this.workspace);
  }

  private check(code: number, what: string): void {
    if (code !== 0) throw new Error(`${what} failed with cuBLAS status ${code}`);
  }

  /** Whether cuBLASLt has an FP8 algorithm for this shape (the first ask of a shape plans it). */
  takes(rows: number, inDim: number, outDim: number, yType: number): boolean {
    return this.plan("fp8", rows, inDim, outDim, yType) !== null;
  }

  /** Whether cuBLASLt has an int8 algorithm (int32 sums) for this shape. */
  takesInt8(rows: number, inDim: number, outDim: number): boolean {
    return this.plan("int8", rows, inDim, outDim, CUDA_R_32I) !== null;
  }

  /** acc = x8 · w8ᵀ: x8 [rows, inDim] and w8 [outDim, inDim] int8, acc [rows, outDim] int32 (a shape it takes). */
  int8Linear(acc: number, x8: number, w8: number, rows: number, inDim: number, outDim: number): void {
    this.matmul("int8", acc, CUDA_R_32I, x8, w8, rows, inDim, outDim, Int32Array.of(1));
  }

  /** y = alpha · x8 · w8ᵀ: x8 [rows, inDim] and w8 [outDim, inDim] E4M3, y of cudaDataType yType (a shape it takes). */
  fp8Linear(
    y: number,
    yType: number,
    x8: number,
    w8: number,
    rows: number,
    inDim: number,
    outDim: number,
    alpha: number,
  ): void {
    this.matmul("fp8", y, yType, x8, w8, rows, inDim, outDim, Float32Array.of(alpha));
  }

  private matmul(
    codes: LtCodes,
    y: number,
    yType: number,
    x8: number,
    w8: number,
    rows: number,
    inDim: number,
    outDim: number,
    alpha: Float32Array | Int32Array,
  ): void {
    const shape = `${codes} ${rows}×${inDim}·${outDim}×${inDim}ᵀ`;
    const plan = this.plan(codes, rows, inDim, outDim, yType);
    if (!plan) throw new Error(`cuBLASLt has no algorithm for ${shape}`);
    const [a, b, d] = plan.layouts;
    const code = this.api.cublasLtMatmul(
      this.handle,
      plan.desc,
      alpha,
      w8,
      a,
      x8,
      b,
      this.zero[codes],
      y,
      d,
      y,
      d,
      plan.algo,
      this.workspace,
      this.workspaceBytes,
      this.device.stream,
    );
    this.check(code, `cublasLtMatmul(${shape})`);
  }

  private plan(codes: LtCodes, rows: number, inDim: number, outDim: number, yType: number): Plan | null {
    const key = `${codes}:${rows}:${inDim}:${outDim}:${yType}`;
    let plan = this.plans.get(key);
    if (plan !== undefined) return plan;
    const out = [null];
    const made = (code: number, what: string) => {
      this.check(code, what);
      return out[0];
    };
    const desc = made(
      codes === "fp8"
        ? this.api.cublasLtMatmulDescCreate(out, CUBLAS_COMPUTE_32F, CUDA_R_32F)
        : this.api.cublasLtMatmulDescCreate(out, CUBLAS_COMPUTE_32I, CUDA_R_32I),
      "cublasLtMatmulDescCreate",
    );
    const int = (v: number) => Int32Array.of(v);
    this.check(this.api.cublasLtMatmulDescSetAttribute(desc, DESC_TRANSA, int(CUBLAS_OP_T), 4), "TRANSA");
    this.check(this.api.cublasLtMatmulDescSetAttribute(desc, DESC_TRANSB, int(CUBLAS_OP_N), 4), "TRANSB");
    const layout = (type: number, r: number, c: number, ld: number) =>
      made(this.api.cublasLtMatrixLayoutCreate(out, type, r, c, ld), "cublasLtMatrixLayoutCreate");
    // Column-major: A is wᵀ [inDim, outDim] (transposed by TRANSA), B is xᵀ [inDim, rows], D is yᵀ [outDim, rows].
    const operand = codes === "fp8" ? CUDA_R_8F_E4M3 : CUDA_R_8I;
    const layouts = [
      layout(operand, inDim, outDim, inDim),
      layout(operand, inDim, rows, inDim),
      layout(yType, outDim, rows, outDim),
    ];
    const pref = made(this.api.cublasLtMatmulPreferenceCreate(out), "cublasLtMatmulPreferenceCreate");
    this.check(
      this.api.cublasLtMatmulPreferenceSetAttribute(
        pref,
        PREF_MAX_WORKSPACE_BYTES,
        BigUint64Array.of(BigInt(this.workspaceBytes)),
        8,
      ),
      "MAX_WORKSPACE_BYTES",
    );
    const results = new Uint8Array(HEURISTIC_BYTES);
    const returned = [0];
    const [a, b, d] = layouts;
    const code = this.api.cublasLtMatmulAlgoGetHeuristic(this.handle, desc, a, b, d, d, pref, 1, results, returned);
    this.api.cublasLtMatmulPreferenceDestroy(pref);
    if (code !== 0 || returned[0] < 1) {
      // No kernel for these codes and shape (cuBLASLt says "not supported" that way): the caller dequantizes.
      this.api.cublasLtMatmulDescDestroy(desc);
      for (const l of layouts) this.api.cublasLtMatrixLayoutDestroy(l);
      this.plans.set(key, null);
      return null;
    }
    plan = { desc, layouts, algo: results.subarray(0, 64) };
    this.plans.set(key, plan);
    return plan;
  }
}
