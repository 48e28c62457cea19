// The kernels a cuda engine carries: decoder.cu compiled by NVRTC for this machine's GPU, the engine's dtype
// its KV cache's element and its head size, as a cubin and as PTX.

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

/**
 * KILN_HEAD_LANES in decoder.cu: head dims each lane of an attention warp holds (1, 2, 4 or 8 for heads of
 * up to 32, 64, 128, 256). Compiled for the engine's head size alone, attention keeps the registers that
 * size needs (the kernel for every size took 120 a thread, halving its blocks per SM).
 */
export function headLanes(headSize: number): number {
  if (headSize > 256) throw new Error(`the cuda backend's attention takes heads of at most 256, not ${headSize}`);
  return headSize <= 32 ? 1 : headSize <= 64 ? 2 : headSize <= 128 ? 4 : 8;
}

/** The macros decoder.cu is compiled with for an engine of this dtype, KV cache element and head size. */
export function engineDefines(
  dtype: ModelDtype,
  kv: KvCacheQuantAlgo | null,
  headSize: number,
): Record<string, number> {
  return {
    KILN_DTYPE: KILN_DTYPE[dtype],
    KILN_KV: KILN_KV[kv ?? "none"],
    KILN_HEAD_LANES: headLanes(headSize),
    KILN_HEAD_SIZE: headSize,
  };
}

/** Macros given as "NAME=VALUE" (VALUE 1 when left out), for A/B runs of kernel variants. */
export function parseDefines(specs: readonly string[], source: string): Record<string, number> {
  return Object.fromEntries(
    specs.map((d) => {
      const [k, v] = d.split("=");
      if (!/^[A-Z_][A-Z0-9_]*$/.test(k) || !Number.isFinite(Number(v ?? 1)))
        throw new Error(`${source}: "${d}" is not NAME=NUMBER`);
      return [k, Number(v ?? 1)];
    }),
  );
}

/**
 * KILN_CUDA_DEFINES="NAME=VALUE,…": more macros for decoder.cu at build time, for A/B runs of kernel variants
 * (bench/decode-ops.ts takes the same as --define). Unset in normal use.
 */
export function extraDefines(): Record<string, number> {
  const spec = process.env.KILN_CUDA_DEFINES;
  return spec ? parseDefines(spec.split(","), "KILN_CUDA_DEFINES") : {};
}

/** What this process compiled, by target, dtype, KV element and head lanes: a build of several engines compiles once. */
const compiled = new Map<string, { target: string; cubin: Uint8Array; ptx: Uint8Array }>();

export function compileEngineKernels(
  dtype: ModelDtype,
  kv: KvCacheQuantAlgo | null,
  headSize: number,
): { target: string; cubin: Uint8Array; ptx: Uint8Array } {
  const target = CudaDevice.open().target;
  const defines = { ...engineDefines(dtype, kv, headSize), ...extraDefines() };
  const key = `${target}:${Object.entries(defines).join(":")}`;
  let k = compiled.get(key);
  if (!k) {
    const { cubin, ptx } = compileKernels(kernelSource(), "decoder.cu", target, defines);
    k = { target, cubin, ptx };
    compiled.set(key, k);
  }
  return k;
}
