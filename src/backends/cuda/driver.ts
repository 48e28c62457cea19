// The CUDA driver API as kiln uses it: one device's primary context, a stream, device memory, pinned host
// buffers, modules and kernel launches, events and graphs. Every call's result is checked.

import koffi from "koffi";
import { CudaUnavailableError, type DriverApi, loadDriver } from "./ffi.js";

export class CudaError extends Error {
  override name = "CudaError";
}

/**
 * A kernel argument: a device pointer (u64), a 32-bit int, a float, or a struct passed by value (its bytes,
 * at most ARG_SLOT_BYTES: a kernel reads such a parameter from constant memory, with no load to wait on).
 */
export type KernelArg = { u64: number } | { i32: number } | { f32: number } | { bytes: Uint8Array };
export const ptr = (p: number): KernelArg => ({ u64: p });
export const i32 = (v: number): KernelArg => ({ i32: v });
export const f32 = (v: number): KernelArg => ({ f32: v });
export const struct = (bytes: Uint8Array): KernelArg => ({ bytes });

const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
const MAX_ARGS = 32;
/** Bytes of one argument's slot: the largest struct a kernel takes by value. */
const ARG_SLOT_BYTES = 64;
const CU_MEMORYTYPE_DEVICE = 2;
const CUDA_MEMCPY2D_BYTES = 128;

export class CudaDevice {
  readonly api: DriverApi;
  readonly stream: unknown;
  readonly name: string;
  readonly computeCapability: [number, number];
  readonly multiprocessors: number;
  private readonly argStorage: unknown;
  private readonly argView: DataView;
  private readonly argBytes: Uint8Array;
  private readonly argPointers: unknown;
  /**
   * Launches let each kernel start while the previous one finishes (programmatic dependent launch, Hopper
   * and later; decoder.cu's pdl_enter): on where the GPU has it, unless KILN_CUDA_PDL=0.
   */
  readonly pdl: boolean;
  private readonly launchConfig: unknown;
  private readonly launchView: DataView;
  private readonly copy2D: unknown;
  private readonly copy2DView: DataView;

  private constructor(readonly ordinal: number) {
    this.api = loadDriver();
    const a = this.api;
    const init = a.cuInit(0);
    if (init !== 0) throw new CudaUnavailableError(`no usable NVIDIA GPU: cuInit failed (${this.errorName(init)})`);
    const count = [0];
    this.check(a.cuDeviceGetCount(count), "cuDeviceGetCount");
    if (count[0] <= ordinal) throw new CudaUnavailableError(`no NVIDIA GPU ${ordinal}: the driver sees ${count[0]}`);
    const dev = [0];
    this.check(a.cuDeviceGet(dev, ordinal), "cuDeviceGet");
    const attr = (id: number) => {
      const v = [0];
      this.check(a.cuDeviceGetAttribute(v, id, dev[0]), "cuDeviceGetAttribute");
      return v[0];
    };
    this.computeCapability = [
      attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
      attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    ];
    this.multiprocessors = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    const nameBuf = new Uint8Array(128);
    this.check(a.cuDeviceGetName(nameBuf, 128, dev[0]), "cuDeviceGetName");
    this.name = Buffer.from(nameBuf).toString("utf8").replace(/\0.*$/s, "");
    const ctx = [null];
    this.check(a.cuDevicePrimaryCtxRetain(ctx, dev[0]), "cuDevicePrimaryCtxRetain");
    this.check(a.cuCtxSetCurrent(ctx[0]), "cuCtxSetCurrent");
    const stream = [null];
    this.check(a.cuStreamCreate(stream, 1 /* non-blocking */), "cuStreamCreate");
    this.stream = stream[0];
    // Kernel arguments: one slot each, and the array of pointers to them cuLaunchKernel reads.
    this.argStorage = koffi.alloc("uint8_t", ARG_SLOT_BYTES * MAX_ARGS);
    this.argBytes = new Uint8Array(koffi.view(this.argStorage, ARG_SLOT_BYTES * MAX_ARGS));
    this.argView = new DataView(this.argBytes.buffer, this.argBytes.byteOffset, this.argBytes.byteLength);
    this.argPointers = koffi.alloc("uint64_t", MAX_ARGS);
    const pointers = new BigUint64Array(koffi.view(this.argPointers, 8 * MAX_ARGS));
    const base = koffi.address(this.argStorage);
    for (let i = 0; i < MAX_ARGS; i++) pointers[i] = base + BigInt(ARG_SLOT_BYTES * i);
    // cuLaunchKernelEx's CUlaunchConfig (56 bytes: grid, block, shared bytes, stream, attributes, count) and
    // one CUlaunchAttribute (72 bytes): PROGRAMMATIC_STREAM_SERIALIZATION (6) = 1.
    this.pdl = this.computeCapability[0] >= 9 && process.env.KILN_CUDA_PDL !== "0";
    this.launchConfig = koffi.alloc("uint8_t", 56 + 72);
    this.launchView = new DataView(koffi.view(this.launchConfig, 56 + 72));
    const configAt = koffi.address(this.launchConfig);
    this.launchView.setBigUint64(32, koffi.address(this.stream), true);
    this.launchView.setBigUint64(40, configAt + 56n, true);
    this.launchView.setUint32(48, 1, true);
    this.launchView.setUint32(56, 6, true);
    this.launchView.setInt32(64, 1, true);
    this.copy2D = koffi.alloc("uint8_t", CUDA_MEMCPY2D_BYTES);
    this.copy2DView = new DataView(koffi.view(this.copy2D, CUDA_MEMCPY2D_BYTES));
    new Uint8Array(this.copy2DView.buffer, this.copy2DView.byteOffset, CUDA_MEMCPY2D_BYTES).fill(0);
  }

  private static instances = new Map<number, CudaDevice>();

  /** How many GPUs the driver sees (what a rank's GPU is chosen among). */
  static count(): number {
    const api = loadDriver();
    const init = api.cuInit(0);
    if (init !== 0) throw new CudaUnavailableError(`no usable NVIDIA GPU: cuInit failed (error ${init})`);
    const count = [0];
    const code = api.cuDeviceGetCount(count);
    if (code !== 0) throw new CudaError(`cuDeviceGetCount failed (error ${code})`);
    return count[0];
  }

  /** The device's primary context, shared by everything in this process that uses GPU `ordinal`. */
  static open(ordinal = 0): CudaDevice {
    let d = CudaDevice.instances.get(ordinal);
    if (!d) {
      d = new CudaDevice(ordinal);
      CudaDevice.instances.set(ordinal, d);
    }
    return d;
  }

  /** The target name engines are compiled for, e.g. "sm_90". */
  get target(): string {
    return `sm_${this.computeCapability[0]}${this.computeCapability[1]}`;
  }

  errorName(code: number): string {
    const s = [null];
    this.api.cuGetErrorString(code, s);
    return `${s[0] ?? "unknown error"} (${code})`;
  }

  check(code: number, what: string): void {
    if (code !== 0) throw new CudaError(`${what} failed: ${this.errorName(code)}`);
  }

  memInfo(): { free: number; total: number } {
    const free = [0];
    const total = [0];
    this.check(this.api.cuMemGetInfo(free, total), "cuMemGetInfo");
    return { free: free[0], total: total[0] };
  }

  alloc(bytes: number): number {
    const p = [0];
    this.check(this.api.cuMemAlloc(p, Math.max(bytes, 256)), `cuMemAlloc(${bytes} bytes)`);
    return p[0];
  }

  free(p: number): void {
    this.check(this.api.cuMemFree(p), "cuMemFree");
  }

  /** Page-locked host memory (for asynchronous copies), as an ArrayBuffer over it. */
  allocHost(bytes: number): { handle: unknown; buffer: ArrayBuffer } {
    const p = [null];
    this.check(this.api.cuMemAllocHost(p, bytes), `cuMemAllocHost(${bytes} bytes)`);
    return { handle: p[0], buffer: koffi.view(p[0], bytes) };
  }

  upload(dst: number, src: ArrayBufferView): void {
    this.check(this.api.cuMemcpyHtoD(dst, src, src.byteLength), "cuMemcpyHtoD");
  }

  download(dst: ArrayBufferView, src: number): void {
    this.check(this.api.cuMemcpyDtoH(dst, src, dst.byteLength), "cuMemcpyDtoH");
  }

  freeHost(handle: unknown): void {
    this.check(this.api.cuMemFreeHost(handle), "cuMemFreeHost");
  }

  unloadModule(module: unknown): void {
    this.check(this.api.cuModuleUnload(module), "cuModuleUnload");
  }

  destroyGraph(exec: unknown): void {
    this.check(this.api.cuGraphExecDestroy(exec), "cuGraphExecDestroy");
  }

  /** Copies the first `bytes` of a pinned host buffer (from allocHost) to the device, in stream order. */
  uploadAsync(dst: number, pinnedSrc: unknown, bytes: number): void {
    this.check(this.api.cuMemcpyHtoDAsync(dst, pinnedSrc, bytes, this.stream), "cuMemcpyHtoDAsync");
  }

  /**
   * Copies ordinary (pageable) host memory to the device in stream order: the driver stages `src` before it
   * returns, so `src` may be reused at once, and later launches on the stream see the data (a synchronous
   * cuMemcpyHtoD would not order itself with this non-blocking stream).
   */
  uploadInStreamOrder(dst: number, src: ArrayBufferView): void {
    if (src.byteLength === 0) return;
    this.check(this.api.cuMemcpyHtoDAsync(dst, src, src.byteLength, this.stream), "cuMemcpyHtoDAsync");
  }

  downloadAsync(pinnedDst: unknown, src: number, bytes: number): void {
    this.check(this.api.cuMemcpyDtoHAsync(pinnedDst, src, bytes, this.stream), "cuMemcpyDtoHAsync");
  }

  copyAsync(dst: number, src: number, bytes: number): void {
    this.check(this.api.cuMemcpyDtoDAsync(dst, src, bytes, this.stream), "cuMemcpyDtoDAsync");
  }

  /**
   * Copies `height` rows of `widthBytes` from device memory to device memory, each row `srcPitch` bytes after
   * the last in the source and `dstPitch` in the destination, in stream order (graph-capturable).
   */
  copy2DAsync(dst: number, dstPitch: number, src: number, srcPitch: number, widthBytes: number, height: number): void {
    if (widthBytes === 0 || height === 0) return;
    // CUDA_MEMCPY2D: src (x, y, memory type, host, device, array, pitch), the same for dst, width, height.
    const v = this.copy2DView;
    v.setBigUint64(0, 0n, true);
    v.setBigUint64(8, 0n, true);
    v.setUint32(16, CU_MEMORYTYPE_DEVICE, true);
    v.setBigUint64(32, BigInt(src), true);
    v.setBigUint64(48, BigInt(srcPitch), true);
    v.setBigUint64(56, 0n, true);
    v.setBigUint64(64, 0n, true);
    v.setUint32(72, CU_MEMORYTYPE_DEVICE, true);
    v.setBigUint64(88, BigInt(dst), true);
    v.setBigUint64(104, BigInt(dstPitch), true);
    v.setBigUint64(112, BigInt(widthBytes), true);
    v.setBigUint64(120, BigInt(height), true);
    this.check(this.api.cuMemcpy2DAsync(this.copy2D, this.stream), "cuMemcpy2DAsync");
  }

  memsetAsync(dst: number, byte: number, bytes: number): void {
    this.check(this.api.cuMemsetD8Async(dst, byte, bytes, this.stream), "cuMemsetD8Async");
  }

  synchronize(): void {
    this.check(this.api.cuStreamSynchronize(this.stream), "cuStreamSynchronize");
  }

  loadModule(image: Uint8Array): unknown {
    const m = [null];
    this.check(this.api.cuModuleLoadData(m, image), "cuModuleLoadData");
    return m[0];
  }

  getFunction(module: unknown, name: string, maxDynamicShared = 0): unknown {
    const fn = [null];
    this.check(this.api.cuModuleGetFunction(fn, module, name), `cuModuleGetFunction(${name})`);
    if (maxDynamicShared > 48 * 1024) {
      this.check(
        this.api.cuFuncSetAttribute(fn[0], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, maxDynamicShared),
        "cuFuncSetAttribute",
      );
    }
    return fn[0];
  }

  launch(
    fn: unknown,
    grid: [number, number?, number?],
    block: [number, number?, number?],
    args: KernelArg[],
    sharedBytes = 0,
  ): void {
    if (args.length > MAX_ARGS) throw new CudaError(`a kernel takes at most ${MAX_ARGS} arguments`);
    // An empty grid (a step with no logits rows, say) has nothing to do; the driver would call it invalid.
    if (grid[0] === 0 || grid[1] === 0 || grid[2] === 0) return;
    const v = this.argView;
    args.forEach((a, i) => {
      const at = ARG_SLOT_BYTES * i;
      if ("u64" in a) v.setBigUint64(at, BigInt(a.u64), true);
      else if ("i32" in a) v.setInt32(at, a.i32, true);
      else if ("f32" in a) v.setFloat32(at, a.f32, true);
      else if (a.bytes.byteLength <= ARG_SLOT_BYTES) this.argBytes.set(a.bytes, at);
      else throw new CudaError(`a struct argument takes at most ${ARG_SLOT_BYTES} bytes (got ${a.bytes.byteLength})`);
    });
    if (this.pdl) {
      const c = this.launchView;
      const dims = [grid[0], grid[1] ?? 1, grid[2] ?? 1, block[0], block[1] ?? 1, block[2] ?? 1, sharedBytes];
      for (const [i, n] of dims.entries()) c.setUint32(4 * i, n, true);
      this.check(this.api.cuLaunchKernelEx(this.launchConfig, fn, this.argPointers, null), "cuLaunchKernelEx");
      return;
    }
    const code = this.api.cuLaunchKernel(
      fn,
      grid[0],
      grid[1] ?? 1,
      grid[2] ?? 1,
      block[0],
      block[1] ?? 1,
      block[2] ?? 1,
      sharedBytes,
      this.stream,
      this.argPointers,
      null,
    );
    this.check(code, "cuLaunchKernel");
  }

  createEvent(): unknown {
    const e = [null];
    this.check(this.api.cuEventCreate(e, 0), "cuEventCreate");
    return e[0];
  }

  record(event: unknown): void {
    this.check(this.api.cuEventRecord(event, this.stream), "cuEventRecord");
  }

  /** Milliseconds between two recorded events (waits for the second). */
  elapsed(start: unknown, end: unknown): number {
    this.check(this.api.cuEventSynchronize(end), "cuEventSynchronize");
    const ms = [0];
    this.check(this.api.cuEventElapsedTime(ms, start, end), "cuEventElapsedTime");
    return ms[0];
  }

  /** Records everything `body` launches on the stream into a graph, without running it. */
  capture(body: () => void): unknown {
    this.check(this.api.cuStreamBeginCapture(this.stream, 2 /* relaxed */), "cuStreamBeginCapture");
    try {
      body();
    } catch (e) {
      const g = [null];
      this.api.cuStreamEndCapture(this.stream, g);
      throw e;
    }
    const graph = [null];
    this.check(this.api.cuStreamEndCapture(this.stream, graph), "cuStreamEndCapture");
    const exec = [null];
    this.check(this.api.cuGraphInstantiate(exec, graph[0], 0), "cuGraphInstantiate");
    this.check(this.api.cuGraphDestroy(graph[0]), "cuGraphDestroy");
    return exec[0];
  }

  replay(exec: unknown): void {
    this.check(this.api.cuGraphLaunch(exec, this.stream), "cuGraphLaunch");
  }
}
