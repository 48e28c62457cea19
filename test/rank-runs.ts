// `kiln run` of an engine the way a user starts it (the launcher starting one process per rank), shared by the
// multi-rank suites of the cpu (test/) and cuda (test-gpu/) backends.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import type { BackendName } from "../src/builder/build-config.js";
import { buildEngine } from "../src/builder/build-engine.js";
import { type ConvertOptions, convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { Mapping, type MappingSizes } from "../src/mapping.js";
import { ROOT } from "./helpers.js";

export const KILN = path.join(ROOT, "bin", "kiln");
export const NEW_TOKENS = 6;

export interface RunJson {
  output_ids: number[][][];
  context_logits: number[][][];
  /** What rank 0 said on stderr (not part of the JSON file). */
  stderr?: string;
}

export function writePrompts(dir: string, tag: string, prompts: number[][]): string {
  const file = path.join(dir, `${tag}-prompts.json`);
  fs.writeFileSync(file, JSON.stringify(prompts));
  return file;
}

/**
 * `kiln run` as a user types it; the launcher starts the ranks. `out`: the --output_json file to read back
 * (empty: nothing read). `env` adds to (or, with undefined, removes from) this process's environment.
 */
export function kilnRun(
  engine: string,
  prompts: string,
  out: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): RunJson {
  const r = spawnSync(
    process.execPath,
    [KILN, "run", "--engine_dir", engine, "--input_file", prompts, "--max_output_len", `${NEW_TOKENS}`, ...extra],
    { encoding: "utf8", env: { ...process.env, KILN_RANK: undefined, OMPI_COMM_WORLD_RANK: undefined, ...env } },
  );
  assert.equal(r.status, 0, r.stderr);
  if (out) return { ...JSON.parse(fs.readFileSync(out, "utf8")), stderr: r.stderr };
  return { output_ids: [], context_logits: [], stderr: r.stderr };
}

/**
 * Converts `modelDir` split by `sizes` into `dir` (with `convert`'s extra options) and builds `<tag>-engine`
 * for `backend`, four requests of up to two beams (or the limits `build` gives); returns the engine dir.
 */
export async function splitEngine(o: {
  modelDir: string;
  dir: string;
  tag: string;
  sizes: MappingSizes;
  backend: BackendName;
  dtype: "float32" | "bfloat16";
  gatherContextLogits: boolean;
  convert?: Partial<ConvertOptions>;
  build?: Record<string, unknown>;
}): Promise<string> {
  const ckpt = path.join(o.dir, `${o.tag}-ckpt`);
  await convertHfCheckpoint({
    modelDir: o.modelDir,
    outputDir: ckpt,
    dtype: o.dtype,
    mapping: new Mapping(o.sizes),
    ...o.convert,
  });
  const engine = path.join(o.dir, `${o.tag}-engine`);
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: engine,
    backend: o.backend,
    request: { gather_context_logits: o.gatherContextLogits, max_batch_size: 4, max_beam_width: 2, ...o.build },
  });
  return engine;
}

/** `kiln run … --output_json <dir>/<tag>.json`, read back. */
export function runJson(engine: string, prompts: string, dir: string, tag: string, env?: NodeJS.ProcessEnv): RunJson {
  const out = path.join(dir, `${tag}.json`);
  return kilnRun(engine, prompts, out, ["--output_json", out], env);
}

export function flatLogits(r: RunJson): Float32Array {
  return Float32Array.from(r.context_logits.flat(2));
}

/** A layout's short name: { tpSize: 2, ppSize: 2 } → "tp2-pp2". */
export const layoutName = (s: MappingSizes) =>
  Object.entries(s)
    .map(([k, v]) => `${k.replace("Size", "")}${v}`)
    .join("-");
