// The cuda backend on a machine without a GPU. decoder.cu must compile with CUDA's own nvcc for Hopper (a
// cubin per engine dtype, and PTX), and the GPU suite's op-parity and end-to-end tests (test-gpu/) must pass
// on test/cuda-emu/, a CPU stand-in for the CUDA driver, NVRTC and cuBLAS that compiles the kernels as host
// C++ and runs each block as fibers with CUDA's barrier and warp semantics. A real GPU still has the last
// word (npm run test:gpu): the emulator checks what kernels compute and how the host drives them, not speed.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { promisify } from "node:util";
import { ROOT, tempDir } from "./helpers.js";

const run = promisify(execFile);
const KERNELS = path.join(ROOT, "src", "backends", "cuda", "kernels", "decoder.cu");
const NVCC = process.env.KILN_NVCC ?? "nvcc";
const work = tempDir("kiln-nvcc-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

/** nvcc's output (ptxas's resource report, with -Xptxas -v); fails the test when it does not compile. */
async function nvcc(args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await run(NVCC, ["-std=c++17", ...args, KERNELS], { maxBuffer: 16 << 20 });
    return stdout + stderr;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === "ENOENT")
      assert.fail(`${NVCC} not found: the test suite compiles the CUDA kernels with nvcc (CUDA 13)`);
    assert.fail(`nvcc ${args.join(" ")} failed:\n${err.stderr ?? err.message}`);
  }
}

test("decoder.cu compiles with nvcc: an sm_90a cubin for each engine dtype, and compute_90 PTX", async () => {
  const jobs = [0, 1, 2].map((dtype) => [
    "-arch=sm_90a",
    "-cubin",
    "-Xptxas",
    "-v",
    `-DKILN_DTYPE=${dtype}`,
    "-o",
    `${work}/k${dtype}.cubin`,
  ]);
  // What kiln build compiles for a 64-wide head, as PTX.
  jobs.push([
    "-arch=compute_90",
    "-ptx",
    "-DKILN_DTYPE=2",
    "-DKILN_HEAD_LANES=2",
    "-DKILN_HEAD_SIZE=64",
    "-o",
    `${work}/k.ptx`,
  ]);
  const reports: string[] = [];
  for (let i = 0; i < jobs.length; i += 2) reports.push(...(await Promise.all(jobs.slice(i, i + 2).map(nvcc))));
  // nvcc accepts more static shared memory than NVRTC, which kiln build uses, loads (48 KiB a kernel).
  const entries = reports.join("\n").split("Compiling entry function '").slice(1);
  assert.ok(entries.length >= 3 * 20, `ptxas reported ${entries.length} kernels`);
  for (const e of entries) {
    const smem = Number(/(\d+) bytes smem/.exec(e)?.[1] ?? 0);
    assert.ok(smem <= 48 * 1024, `${e.split("'")[0]} takes ${smem} bytes of static shared memory, over NVRTC's 48 KiB`);
  }
  for (const d of [0, 1, 2]) assert.ok(fs.statSync(`${work}/k${d}.cubin`).size > 0);
  const ptx = fs.readFileSync(`${work}/k.ptx`, "utf8");
  for (const k of ["gemv", "attention_split", "attention_fmha", "sample_rows", "rope_cache"])
    assert.match(ptx, new RegExp(`\\.entry ${k}\\(`));
});

/** Runs test-gpu files as a test run of their own on the emulator; what node's TAP reporter counted. */
async function onEmulator(files: string[], namePattern?: string): Promise<{ pass: number; fail: number; out: string }> {
  const emu = path.join(ROOT, "test", "cuda-emu");
  await run("bash", [path.join(emu, "build.sh")]);
  const lib = path.join(emu, "build");
  // Not a subtest of this run (NODE_TEST_CONTEXT), and with the emulator as its libcuda, NVRTC and cuBLAS.
  const { NODE_TEST_CONTEXT: _, ...parent } = process.env;
  const env = { ...parent, LD_LIBRARY_PATH: lib, KILN_CUDA_LIB_DIR: lib };
  const args = ["--test", "--test-concurrency=1", "--test-reporter=tap"];
  if (namePattern) args.push(`--test-name-pattern=${namePattern}`);
  args.push(...files.map((f) => path.join(ROOT, "dist", "test-gpu", `${f}.test.js`)));
  let out: string;
  try {
    ({ stdout: out } = await run(process.execPath, args, { env, maxBuffer: 64 << 20 }));
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    assert.fail(`the GPU suite failed on the emulator:\n${err.stdout ?? ""}\n${err.stderr ?? ""}`);
  }
  const count = (what: string) => Number(new RegExp(`^# ${what} (\\d+)$`, "m").exec(out)?.[1] ?? Number.NaN);
  return { pass: count("pass"), fail: count("fail"), out };
}

test("the GPU suite's op-parity and end-to-end tests pass on the CUDA emulator", async () => {
  const { pass, fail, out } = await onEmulator(["ops", "e2e"]);
  assert.equal(fail, 0, out);
  assert.ok(pass >= 35, out);
});

test("NCCL's bindings, and cuda engines split by tp, pp and cp run and served as ranks (host staging, and NCCL with graphs), pass on the CUDA emulator and its NCCL stand-in", async () => {
  const { pass, fail, out } = await onEmulator(["nccl", "multi-rank"]);
  assert.equal(fail, 0, out);
  assert.ok(pass >= 23, out);
});

test("sampling through a cuda engine passes on the CUDA emulator (sample_rows' 20,000-draw tests stay GPU-only)", async () => {
  const { pass, fail, out } = await onEmulator(["sampling"], "sampling through a cuda engine");
  assert.equal(fail, 0, out);
  assert.equal(pass, 1, out);
});
