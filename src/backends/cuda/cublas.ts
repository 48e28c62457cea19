// GEMMs through cuBLAS: y[rows, out] = x[rows, in] · w[out, in]ᵀ with row-major tensors, fp32 accumulation.

import type { CudaDevice } from "./driver.js";
import { type CublasApi, loadCublas } from "./ffi.js";

export const CUDA_R_32F = 0;
export const CUDA_R_16F = 2;
export const CUDA_R_16BF = 14;
const CUBLAS_COMPUTE_32F = 68;
const CUBLAS_GEMM_DEFAULT = -1;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;

export class Cublas {
  private readonly api: CublasApi;
  private readonly handle: unknown;
  private readonly workspace: number;
  private readonly one = new Float32Array([1]);
  private readonly zero = new Float32Array([0]);

  constructor(
    private readonly device: CudaDevice,
    workspaceBytes = 32 << 20,
  ) {
    this.api = loadCublas();
    const h = [null];
    this.check(this.api.cublasCreate(h), "cublasCreate");
    this.handle = h[0];
    this.check(this.api.cublasSetStream(this.handle, device.stream), "cublasSetStream");
    // A fixed workspace keeps cuBLAS from allocating during CUDA graph capture.
    this.workspace = device.alloc(workspaceBytes);
    this.check(this.api.cublasSetWorkspace(this.handle, this.workspace, workspaceBytes), "cublasSetWorkspace");
  }

  dispose(): void {
    this.check(this.api.cublasDestroy(this.handle), "cublasDestroy");
    this.device.free(this.workspace);
  }

  private check(code: number, what: string): void {
    if (code !== 0) throw new Error(`${what} failed with cuBLAS status ${code}`);
  }

  /**
   * y = alpha · x · wᵀ. Row-major x [rows, inDim] and w [outDim, inDim] are column-major xᵀ and wᵀ to cuBLAS, so it
   * computes yᵀ (column-major [outDim, rows], i.e. row-major y) = (wᵀ)ᵀ · xᵀ.
   */
  linear(
    y: number,
    yType: number,
    x: number,
    w: number,
    abType: number,
    rows: number,
    inDim: number,
    outDim: number,
    alpha = 1,
  ): void {
    const code = this.api.cublasGemmEx(
      this.handle,
      CUBLAS_OP_T,
      CUBLAS_OP_N,
      outDim,
      rows,
      inDim,
      alpha === 1 ? this.one : Float32Array.of(alpha),
      w,
      abType,
      inDim,
      x,
      abType,
      inDim,
      this.zero,
      y,
      yType,
      outDim,
      CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT,
    );
    this.check(code, `cublasGemmEx(${rows}×${inDim}·${outDim}×${inDim}ᵀ)`);
  }
}
