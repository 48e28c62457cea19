// Writing an output directory all at once: files go into a hidden temp dir beside the target, which is
// renamed into place only when complete. A crash leaves the old directory or nothing, never half of one.

import fs from "node:fs";
import path from "node:path";
import { OutputError } from "../errors.js";

export interface OutputDirOptions {
  /** Replace a directory that already holds files. */
  overwrite?: boolean;
}

function isNonEmptyDir(p: string): boolean {
  try {
    return fs.readdirSync(p).length > 0;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    if ((e as NodeJS.ErrnoException).code === "ENOTDIR") throw new OutputError(`${p} exists and is not a directory`);
    throw e;
  }
}

function fsyncDir(p: string): void {
  const fd = fs.openSync(p, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Checks the target before any work is done, so a refusal costs nothing. */
export function checkOutputDir(target: string, flag: string, opts: OutputDirOptions): void {
  if (isNonEmptyDir(target) && !opts.overwrite) {
    throw new OutputError(`${flag} ${target} already exists and is not empty; pass --overwrite to replace it`);
  }
}

/** Runs `fill` on a fresh temp dir, then moves it to `target`. On failure the temp dir is removed. */
export async function writeOutputDir<T>(
  target: string,
  flag: string,
  opts: OutputDirOptions,
  fill: (dir: string) => Promise<T> | T,
): Promise<T> {
  checkOutputDir(target, flag, opts);
  const abs = path.resolve(target);
  const parent = path.dirname(abs);
  fs.mkdirSync(parent, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(parent, `.${path.basename(abs)}.tmp-`));
  let result: T;
  try {
    result = await fill(tmp);
    for (const f of fs.readdirSync(tmp)) {
      const fd = fs.openSync(path.join(tmp, f), "r");
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    }
    fsyncDir(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  let old: string | null = null;
  if (fs.existsSync(abs)) {
    old = `${tmp}.old`;
    fs.renameSync(abs, old);
  }
  fs.renameSync(tmp, abs);
  fsyncDir(parent);
  if (old) fs.rmSync(old, { recursive: true, force: true });
  return result;
}
