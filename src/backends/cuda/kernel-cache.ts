// A disk cache of compiled kernels, so that building a second engine of the same dtype, KV cache and head
// size (or the same engine again) skips NVRTC, which takes seconds a build. Entries are keyed by everything
// the compile depends on: the source, the options, the target and the compiler's identity. Cache trouble
// (an unwritable folder, a truncated entry) never fails a build: it compiles instead.
//
// Where: KILN_KERNEL_CACHE, else $XDG_CACHE_HOME/kiln/kernels, else ~/.cache/kiln/kernels; KILN_KERNEL_CACHE=0
// turns it off.

import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export interface KernelImages {
  cubin: Uint8Array;
  ptx: Uint8Array;
}

/** The cache folder in use, or null when the cache is off. */
export function kernelCacheDir(env: NodeJS.ProcessEnv = process.env): string | null {
  const set = env.KILN_KERNEL_CACHE;
  if (set === "0" || set === "off") return null;
  if (set) return set;
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "kiln", "kernels");
}

/** What names an entry: a hash of every input of the compile. */
export function kernelCacheKey(parts: readonly string[]): string {
  const h = createHash("sha256");
  for (const p of parts) h.update(`${p.length}:${p}`);
  return h.digest("hex");
}

// An entry: "KILNKC1\n", the cubin's length (8 bytes), the cubin, then the PTX.
const MAGIC = Buffer.from("KILNKC1\n");

function read(file: string): KernelImages | null {
  try {
    const b = fs.readFileSync(file);
    if (b.length < 16 || !b.subarray(0, 8).equals(MAGIC)) return null;
    const n = Number(b.readBigUInt64LE(8));
    if (16 + n > b.length) return null;
    return { cubin: new Uint8Array(b.subarray(16, 16 + n)), ptx: new Uint8Array(b.subarray(16 + n)) };
  } catch {
    return null;
  }
}

function write(dir: string, file: string, k: KernelImages): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(k.cubin.length));
    // A temporary name, then a rename: a reader never sees half an entry.
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, Buffer.concat([MAGIC, len, k.cubin, k.ptx]));
    fs.renameSync(tmp, file);
  } catch {
    // no cache this time
  }
}

/** The images for `parts` from the cache, or `compile`'s, stored for next time. */
export function cachedCompile(
  parts: readonly string[],
  compile: () => KernelImages,
  dir: string | null = kernelCacheDir(),
): KernelImages {
  if (!dir) return compile();
  const file = path.join(dir, `${kernelCacheKey(parts)}.bin`);
  const hit = read(file);
  if (hit) return hit;
  const fresh = compile();
  write(dir, file, fresh);
  return fresh;
}
