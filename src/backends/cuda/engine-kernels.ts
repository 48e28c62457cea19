// The kernels a cuda engine carries: decoder.cu compiled by NVRTC for this machine's GPU, the engine's dtype
// and its KV cache's element, as a cubin and as PTX.

import fs from "node:fs";
import type { ModelDtype } from "../../checkpoint/pretrained-config.js";
import type { KvCacheQuantAlgo } from "../../quantization/mode.js";
import { CudaDevice } from "./driver.js";
import { compileKernels } from "./nvrtc.js";

// From dist/src/backends/cuda/ (or src/backends/cuda/ under a TypeScript runner) to the shipped sources.
const SOURCE = new URL("../../../../src/backends/cuda/kernels/decoder.cu", import.meta.url);
const SOURCE_DEV = new URL("./kernels/decoder.cu", import.meta.url);

export const KILN_DTYPE: Record<ModelDtype, number> = { float32: 0, float16: 1, bfloat16: 2 };

export function kernelSource(): string {
  return fs.readFileSync(fs.existsSync(SOURCE) ? SOURCE : SOURCE_DEV, "utf8");
}

/** KILN_KV in decoder.cu: the KV cache's element (the model dtype, or one byte of INT8 or FP8). */
export const KILN_KV: Record<"none" | KvCacheQuantAlgo, number> = { none: 0, INT8: 1, FP8: 2 };

/** What this process compiled, by target, dtype and KV element: a build of several engines compiles once. */
const compiled = new Map<string, { target: string; cubin: Uint8Array; ptx: Uint8Array }>();

export function compileEngineKernels(
  dtype: ModelDtype,
  kv: KvCacheQuantAlgo | null,
): { target: string; cubin: Uint8Array; ptx: Uint8Array } {
  const target = CudaDevice.open().target;
  const defines = { KILN_DTYPE: KILN_DTYPE[dtype], KILN_KV: KILN_KV[kv ?? "none"] };
  const key = `${target}:${defines.KILN_DTYPE}:${defines.KILN_KV}`;
  let k = compiled.get(key);
  if (!k) {
    const { cubin, ptx } = compileKernels(kernelSource(), "decoder.cu", target, defines);
    k = { target, cubin, ptx };
    compiled.set(key, k);
  }
  return k;
}
