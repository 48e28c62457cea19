// The CUDA libraries kiln calls through koffi, loaded at run time: the driver (libcuda), NVRTC, cuBLAS and
// cuBLASLt (NCCL: nccl.ts).
// A missing library or GPU is one clear CudaUnavailableError, never a crash.

import koffi, { type LibraryHandle } from "koffi";
import { KilnError } from "../../errors.js";

export class CudaUnavailableError extends KilnError {
  override name = "CudaUnavailableError";
}

const opaque = (name: string) => koffi.pointer(name, koffi.opaque());
export const CUcontext = opaque("CUcontext");
export const CUmodule = opaque("CUmodule");
export const CUfunction = opaque("CUfunction");
export const CUstream = opaque("CUstream");
export const CUevent = opaque("CUevent");
export const CUgraph = opaque("CUgraph");
export const CUgraphExec = opaque("CUgraphExec");
export const nvrtcProgram = opaque("nvrtcProgram");
export const cublasHandle = opaque("cublasHandle_t");
export const cublasLtHandle = opaque("cublasLtHandle_t");
export const cublasLtObject = opaque("cublasLtObject_t");

function open(candidates: readonly string[], what: string): LibraryHandle {
  const errors: string[] = [];
  for (const c of candidates) {
    try {
      return koffi.load(c);
    } catch (e) {
      errors.push(`${c}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new CudaUnavailableError(
    `${what} not found (${candidates.join(", ")}); the cuda backend needs an NVIDIA driver and the CUDA toolkit's libraries`,
  );
}

export const CUDA_LIB = process.env.KILN_CUDA_LIB_DIR ?? "/usr/local/cuda/lib64";

function driverApi(lib: LibraryHandle) {
  const f = (sig: string) => lib.func(sig);
  return {
    cuInit: f("int cuInit(unsigned int flags)"),
    cuGetErrorString: f("int cuGetErrorString(int error, _Out_ const char **str)"),
    cuDeviceGetCount: f("int cuDeviceGetCount(_Out_ int *count)"),
    cuDeviceGet: f("int cuDeviceGet(_Out_ int *device, int ordinal)"),
    cuDeviceGetAttribute: f("int cuDeviceGetAttribute(_Out_ int *value, int attrib, int device)"),
    cuDeviceGetName: f("int cuDeviceGetName(_Out_ uint8_t *name, int len, int device)"),
    cuDevicePrimaryCtxRetain: f("int cuDevicePrimaryCtxRetain(_Out_ CUcontext *ctx, int device)"),
    cuCtxSetCurrent: f("int cuCtxSetCurrent(CUcontext ctx)"),
    cuCtxSynchronize: f("int cuCtxSynchronize()"),
    cuMemGetInfo: f("int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)"),
    cuMemAlloc: f("int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)"),
    cuMemFree: f("int cuMemFree_v2(uint64_t dptr)"),
    cuMemAllocHost: f("int cuMemAllocHost_v2(_Out_ void **pp, size_t bytes)"),
    cuMemFreeHost: f("int cuMemFreeHost(void *p)"),
    cuMemcpyHtoD: f("int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t bytes)"),
    cuMemcpyDtoH: f("int cuMemcpyDtoH_v2(_Out_ void *dst, uint64_t src, size_t bytes)"),
    cuMemcpyHtoDAsync: f("int cuMemcpyHtoDAsync_v2(uint64_t dst, void *src, size_t bytes, CUstream stream)"),
    cuMemcpyDtoHAsync: f("int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, CUstream stream)"),
    cuMemcpyDtoDAsync: f("int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, CUstream stream)"),
    cuMemcpy2DAsync: f("int cuMemcpy2DAsync_v2(const void *copy, CUstream stream)"),
    cuMemsetD8Async: f("int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t n, CUstream stream)"),
    cuStreamCreate: f("int cuStreamCreate(_Out_ CUstream *stream, unsigned int flags)"),
    cuStreamSynchronize: f("int cuStreamSynchronize(CUstream stream)"),
    cuEventCreate: f("int cuEventCreate(_Out_ CUevent *event, unsigned int flags)"),
    cuEventRecord: f("int cuEventRecord(CUevent event, CUstream stream)"),
    cuEventSynchronize: f("int cuEventSynchronize(CUevent event)"),
    cuEventElapsedTime: f("int cuEventElapsedTime(_Out_ float *ms, CUevent start, CUevent end)"),
    cuModuleLoadData: f("int cuModuleLoadData(_Out_ CUmodule *module, const void *image)"),
    cuModuleUnload: f("int cuModuleUnload(CUmodule module)"),
    cuModuleGetFunction: f("int cuModuleGetFunction(_Out_ CUfunction *fn, CUmodule module, const char *name)"),
    cuFuncSetAttribute: f("int cuFuncSetAttribute(CUfunction fn, int attrib, int value)"),
    cuLaunchKernel: f(
      "int cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, CUstream stream, void *params, void *extra)",
    ),
    cuLaunchKernelEx: f("int cuLaunchKernelEx(const void *config, CUfunction f, void *params, void *extra)"),
    cuStreamBeginCapture: f("int cuStreamBeginCapture_v2(CUstream stream, int mode)"),
    cuStreamEndCapture: f("int cuStreamEndCapture(CUstream stream, _Out_ CUgraph *graph)"),
    cuGraphInstantiate: f(
      "int cuGraphInstantiateWithFlags(_Out_ CUgraphExec *exec, CUgraph graph, unsigned long long flags)",
    ),
    cuGraphLaunch: f("int cuGraphLaunch(CUgraphExec exec, CUstream stream)"),
    cuGraphDestroy: f("int cuGraphDestroy(CUgraph graph)"),
    cuGraphExecDestroy: f("int cuGraphExecDestroy(CUgraphExec exec)"),
  };
}

function nvrtcApi(lib: LibraryHandle) {
  const f = (sig: string) => lib.func(sig);
  return {
    nvrtcVersion: f("int nvrtcVersion(_Out_ int *major, _Out_ int *minor)"),
    nvrtcGetErrorString: f("const char *nvrtcGetErrorString(int result)"),
    nvrtcCreateProgram: f(
      "int nvrtcCreateProgram(_Out_ nvrtcProgram *prog, const char *src, const char *name, int numHeaders, void *headers, void *includeNames)",
    ),
    nvrtcCompileProgram: f("int nvrtcCompileProgram(nvrtcProgram prog, int numOptions, const char **options)"),
    nvrtcGetProgramLogSize: f("int nvrtcGetProgramLogSize(nvrtcProgram prog, _Out_ size_t *size)"),
    nvrtcGetProgramLog: f("int nvrtcGetProgramLog(nvrtcProgram prog, _Out_ uint8_t *log)"),
    nvrtcGetCUBINSize: f("int nvrtcGetCUBINSize(nvrtcProgram prog, _Out_ size_t *size)"),
    nvrtcGetCUBIN: f("int nvrtcGetCUBIN(nvrtcProgram prog, _Out_ uint8_t *cubin)"),
    nvrtcGetPTXSize: f("int nvrtcGetPTXSize(nvrtcProgram prog, _Out_ size_t *size)"),
    nvrtcGetPTX: f("int nvrtcGetPTX(nvrtcProgram prog, _Out_ uint8_t *ptx)"),
    nvrtcDestroyProgram: f("int nvrtcDestroyProgram(_Inout_ nvrtcProgram *prog)"),
  };
}

function cublasApi(lib: LibraryHandle) {
  const f = (sig: string) => lib.func(sig);
  return {
    cublasCreate: f("int cublasCreate_v2(_Out_ cublasHandle_t *handle)"),
    cublasDestroy: f("int cublasDestroy_v2(cublasHandle_t handle)"),
    cublasSetStream: f("int cublasSetStream_v2(cublasHandle_t handle, CUstream stream)"),
    cublasSetWorkspace: f("int cublasSetWorkspace_v2(cublasHandle_t handle, uint64_t workspace, size_t bytes)"),
    cublasSetMathMode: f("int cublasSetMathMode(cublasHandle_t handle, int mode)"),
    cublasGemmEx: f(
      "int cublasGemmEx(cublasHandle_t handle, int transa, int transb, int m, int n, int k, const float *alpha, uint64_t A, int Atype, int lda, uint64_t B, int Btype, int ldb, const float *beta, uint64_t C, int Ctype, int ldc, int computeType, int algo)",
    ),
  };
}

// cuBLASLt's matmul for the FP8 and int8 GEMMs (cublas-lt.ts): descriptors, layouts, a heuristic's algorithm;
// alpha and beta point at values of the scale type (float or int32).
function cublasLtApi(lib: LibraryHandle) {
  const f = (sig: string) => lib.func(sig);
  return {
    cublasLtCreate: f("int cublasLtCreate(_Out_ cublasLtHandle_t *handle)"),
    cublasLtDestroy: f("int cublasLtDestroy(cublasLtHandle_t handle)"),
    cublasLtMatmulDescCreate: f(
      "int cublasLtMatmulDescCreate(_Out_ cublasLtObject_t *desc, int computeType, int scaleType)",
    ),
    cublasLtMatmulDescDestroy: f("int cublasLtMatmulDescDestroy(cublasLtObject_t desc)"),
    cublasLtMatmulDescSetAttribute: f(
      "int cublasLtMatmulDescSetAttribute(cublasLtObject_t desc, int attr, const void *buf, size_t size)",
    ),
    cublasLtMatrixLayoutCreate: f(
      "int cublasLtMatrixLayoutCreate(_Out_ cublasLtObject_t *layout, int type, uint64_t rows, uint64_t cols, int64_t ld)",
    ),
    cublasLtMatrixLayoutDestroy: f("int cublasLtMatrixLayoutDestroy(cublasLtObject_t layout)"),
    cublasLtMatmulPreferenceCreate: f("int cublasLtMatmulPreferenceCreate(_Out_ cublasLtObject_t *pref)"),
    cublasLtMatmulPreferenceDestroy: f("int cublasLtMatmulPreferenceDestroy(cublasLtObject_t pref)"),
    cublasLtMatmulPreferenceSetAttribute: f(
      "int cublasLtMatmulPreferenceSetAttribute(cublasLtObject_t pref, int attr, const void *buf, size_t size)",
    ),
    cublasLtMatmulAlgoGetHeuristic: f(
      "int cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtObject_t desc, cublasLtObject_t a, cublasLtObject_t b, cublasLtObject_t c, cublasLtObject_t d, cublasLtObject_t pref, int requested, _Out_ uint8_t *results, _Out_ int *returned)",
    ),
    cublasLtMatmul: f(
      "int cublasLtMatmul(cublasLtHandle_t handle, cublasLtObject_t desc, const void *alpha, uint64_t A, cublasLtObject_t aDesc, uint64_t B, cublasLtObject_t bDesc, const void *beta, uint64_t C, cublasLtObject_t cDesc, uint64_t D, cublasLtObject_t dDesc, const uint8_t *algo, uint64_t workspace, size_t workspaceBytes, CUstream stream)",
    ),
  };
}

export type DriverApi = ReturnType<typeof driverApi>;
export type NvrtcApi = ReturnType<typeof nvrtcApi>;
export type CublasApi = ReturnType<typeof cublasApi>;
export type CublasLtApi = ReturnType<typeof cublasLtApi>;

let driver: DriverApi | null = null;
let nvrtc: NvrtcApi | null = null;
let cublas: CublasApi | null = null;
let cublasLt: CublasLtApi | null = null;

// Loaded once per process: a library handle is process-wide state in the C world anyway.
export function loadDriver(): DriverApi {
  driver ??= driverApi(open(["libcuda.so.1", "libcuda.so"], "the CUDA driver (libcuda.so.1)"));
  return driver;
}

export function loadNvrtc(): NvrtcApi {
  nvrtc ??= nvrtcApi(
    open([`${CUDA_LIB}/libnvrtc.so`, "libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"], "NVRTC (libnvrtc.so)"),
  );
  return nvrtc;
}

export function loadCublas(): CublasApi {
  cublas ??= cublasApi(
    open([`${CUDA_LIB}/libcublas.so`, "libcublas.so", "libcublas.so.13", "libcublas.so.12"], "cuBLAS (libcublas.so)"),
  );
  return cublas;
}

export function loadCublasLt(): CublasLtApi {
  cublasLt ??= cublasLtApi(
    open(
      [`${CUDA_LIB}/libcublasLt.so`, "libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"],
      "cuBLASLt (libcublasLt.so)",
    ),
  );
  return cublasLt;
}
