// The kernels a cuda engine carries: decoder.cu compiled by NVRTC for this machine's GPU and the engine's
// dtype, as a cubin and as PTX.

import fs from "node:fs";
import type { ModelDtype } from "../../checkpoint/pretrained-config.js";
import { CudaDevice } from "./driver.js";
import { compileKernels } from "./nvrtc.js";

// From dist/src/backends/cuda/ (or src/backends/cuda/ under a TypeScript runner) to the shipped sources.
const SOURCE = new URL("../../../../src/backends/cuda/kernels/decoder.cu", import.meta.url);
const SOURCE_DEV = new URL("./kernels/decoder.cu", import.meta.url);

export const KILN_DTYPE: Record<ModelDtype, number> = { float32: 0, float16: 1, bfloat16: 2 };

export function kernelSource(): string {
  return fs.readFileSync(fs.existsSync(SOURCE) ? SOURCE : SOURCE_DEV, "utf8");
}

export function compileEngineKernels(dtype: ModelDtype): { target: string; cubin: Uint8Array; ptx: Uint8Array } {
  const target = CudaDevice.open().target;
  const { cubin, ptx } = compileKernels(kernelSource(), "decoder.cu", target, { KILN_DTYPE: KILN_DTYPE[dtype] });
  return { target, cubin, ptx };
}
