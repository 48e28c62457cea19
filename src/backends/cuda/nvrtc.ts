// Compiling kiln's kernels with NVRTC at `kiln build` time: a cubin for the GPU's own SM and PTX that the
// driver can compile for newer GPUs, both stored in the engine so that `kiln run` compiles nothing.

import fs from "node:fs";
import { KilnError } from "../../errors.js";
import { CUDA_LIB, loadNvrtc } from "./ffi.js";
import { cachedCompile, type KernelImages } from "./kernel-cache.js";

export class KernelCompileError extends KilnError {
  override name = "KernelCompileError";
}

const INCLUDE = process.env.KILN_CUDA_INCLUDE_DIR ?? "/usr/local/cuda/include";

/** The cubin (for an sm_ architecture) or the PTX (for compute_) of `source`. */
function compileOnce(source: string, name: string, options: string[]): Uint8Array {
  const api = loadNvrtc();
  const prog = [null];
  let code = api.nvrtcCreateProgram(prog, source, name, 0, null, null);
  if (code !== 0) throw new KernelCompileError(`nvrtcCreateProgram: ${api.nvrtcGetErrorString(code)}`);
  try {
    code = api.nvrtcCompileProgram(prog[0], options.length, options);
    const logSize = [0];
    api.nvrtcGetProgramLogSize(prog[0], logSize);
    const logBuf = new Uint8Array(Math.max(1, logSize[0]));
    api.nvrtcGetProgramLog(prog[0], logBuf);
    const log = Buffer.from(logBuf).toString("utf8").replace(/\0+$/, "");
    if (code !== 0)
      throw new KernelCompileError(`${name} does not compile (${api.nvrtcGetErrorString(code)}):\n${log}`);
    const cubin = options.some((o) => o.startsWith("--gpu-architecture=sm_"));
    const size = [0];
    (cubin ? api.nvrtcGetCUBINSize : api.nvrtcGetPTXSize)(prog[0], size);
    const image = new Uint8Array(size[0]);
    (cubin ? api.nvrtcGetCUBIN : api.nvrtcGetPTX)(prog[0], image);
    return image;
  } finally {
    api.nvrtcDestroyProgram(prog);
  }
}

/** NVRTC's version and where it was loaded from: part of a cached kernel's key (the CUDA emulator is one too). */
function compilerIdentity(): string {
  const [major, minor] = [[0], [0]];
  loadNvrtc().nvrtcVersion(major, minor);
  return `nvrtc ${major[0]}.${minor[0]} ${CUDA_LIB}`;
}

/** Compiles `source` for `target` (e.g. "sm_90"), with `defines` as -D options; from the kernel cache when it has them. */
export function compileKernels(
  source: string,
  name: string,
  target: string,
  defines: Record<string, string | number>,
): KernelImages {
  const arch = target.replace(/^sm_/, "");
  const common = [`-I${INCLUDE}`, "--std=c++17", "-default-device", "-lineinfo"];
  for (const [k, v] of Object.entries(defines)) common.push(`-D${k}=${v}`);
  // An A/B switch for bench runs: ptxas's register ceiling (its default trades registers for occupancy,
  // and spilled some quantized GEMVs' prefetched weights in nvcc's reports).
  const maxRegs = process.env.KILN_CUDA_MAXRREG;
  if (maxRegs) common.push(`--maxrregcount=${Number(maxRegs)}`);
  // Another, for kernel variants behind macros (KILN_CUDA_DEFINES="KILN_GEMV_LOADS_AFTER_WAIT=1,NAME=V").
  for (const d of (process.env.KILN_CUDA_DEFINES ?? "").split(",").filter(Boolean)) common.push(`-D${d.trim()}`);
  if (!fs.existsSync(INCLUDE))
    throw new KernelCompileError(`${INCLUDE}: CUDA headers not found; set KILN_CUDA_INCLUDE_DIR`);
  return cachedCompile([source, name, target, compilerIdentity(), ...common], () => ({
    cubin: compileOnce(source, name, [...common, `--gpu-architecture=sm_${arch}`]),
    ptx: compileOnce(source, name, [...common, `--gpu-architecture=compute_${arch}`]),
  }));
}
