// The kernel cache (backends/cuda/kernel-cache.ts): a second compile of the same inputs comes from disk, any
// changed input compiles again, and a broken or unwritable cache falls back to compiling.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { cachedCompile, kernelCacheDir, kernelCacheKey } from "../src/backends/cuda/kernel-cache.js";
import { tempDir } from "./helpers.js";

const root = tempDir("kiln-kernel-cache-");
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** A stand-in compiler: counts its calls, and its images say which call made them. */
function counter() {
  let calls = 0;
  return {
    compile: () => {
      calls++;
      return { cubin: Uint8Array.from([1, 2, calls]), ptx: new TextEncoder().encode(`ptx ${calls}`) };
    },
    get calls() {
      return calls;
    },
  };
}

test("the same inputs compile once; the second call returns the first call's images from disk", () => {
  const dir = path.join(root, "a");
  const c = counter();
  const parts = ["source", "decoder.cu", "sm_90", "nvrtc 13.0", "-DKILN_DTYPE=2"];
  const first = cachedCompile(parts, c.compile, dir);
  const second = cachedCompile(parts, c.compile, dir);
  assert.equal(c.calls, 1);
  assert.deepEqual(Array.from(second.cubin), [1, 2, 1]);
  assert.equal(new TextDecoder().decode(second.ptx), "ptx 1");
  assert.deepEqual(second, first);
  assert.equal(fs.readdirSync(dir).length, 1, "one entry, no temporary file left");
});

test("a changed input (a define, the target, the compiler) is another entry", () => {
  const dir = path.join(root, "b");
  const c = counter();
  const base = ["source", "decoder.cu", "sm_90", "nvrtc 13.0", "-DKILN_DTYPE=2"];
  cachedCompile(base, c.compile, dir);
  for (const [i, v] of [
    [4, "-DKILN_DTYPE=1"],
    [2, "sm_100"],
    [3, "nvrtc 13.1"],
  ] as const) {
    const parts = [...base];
    parts[i] = v;
    cachedCompile(parts, c.compile, dir);
  }
  assert.equal(c.calls, 4);
  // Parts are length-prefixed: moving a character between two parts changes the key.
  assert.notEqual(kernelCacheKey(["ab", "c"]), kernelCacheKey(["a", "bc"]));
});

test("a truncated entry is compiled again and replaced; an unwritable cache still compiles", () => {
  const dir = path.join(root, "c");
  const c = counter();
  const parts = ["x"];
  cachedCompile(parts, c.compile, dir);
  const entry = path.join(dir, fs.readdirSync(dir)[0]);
  fs.writeFileSync(entry, fs.readFileSync(entry).subarray(0, 12));
  const again = cachedCompile(parts, c.compile, dir);
  assert.equal(c.calls, 2);
  assert.deepEqual(Array.from(again.cubin), [1, 2, 2]);
  assert.deepEqual(Array.from(cachedCompile(parts, c.compile, dir).cubin), [1, 2, 2], "the repaired entry is used");
  const blocked = path.join(root, "not-a-dir");
  fs.writeFileSync(blocked, "a file where the cache folder would go");
  const d = counter();
  assert.deepEqual(Array.from(cachedCompile(parts, d.compile, path.join(blocked, "kernels")).cubin), [1, 2, 1]);
  assert.equal(d.calls, 1);
});

test("the cache folder: KILN_KERNEL_CACHE, else XDG_CACHE_HOME/kiln/kernels; KILN_KERNEL_CACHE=0 turns it off", () => {
  assert.equal(kernelCacheDir({ KILN_KERNEL_CACHE: "/tmp/k" }), "/tmp/k");
  assert.equal(kernelCacheDir({ XDG_CACHE_HOME: "/x" }), path.join("/x", "kiln", "kernels"));
  assert.equal(kernelCacheDir({ KILN_KERNEL_CACHE: "0", XDG_CACHE_HOME: "/x" }), null);
  const c = counter();
  cachedCompile(["y"], c.compile, null);
  cachedCompile(["y"], c.compile, null);
  assert.equal(c.calls, 2, "off: every call compiles");
});
