// Shared test helpers: temp dirs, fixture paths and reference loading.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildEngine } from "../src/builder/build-engine.js";
import { type ConvertOptions, convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import type { PretrainedConfig } from "../src/checkpoint/pretrained-config.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { LLM } from "../src/runtime/llm.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const FIXTURES = path.join(ROOT, "test", "fixtures");
export const FIXTURE_NAMES = ["qwen2_tied_gqa", "qwen2_untied_mqa", "llama3_rope_scaling", "llama_tied_mha"] as const;

export function tempDir(prefix = "kiln-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface PromptReference {
  inputIds: number[];
  contextLogits: Float32Array;
  greedyIds: number[];
  generationLogits: Float32Array;
  beamIds: number[][];
  beamScores: Float32Array;
}

export interface FixtureReference {
  eosId: number;
  vocab: number;
  prompts: PromptReference[];
}

const ints = (f: SafetensorsFile, name: string) => Array.from(f.readFloat32(name), (v) => Math.round(v));

/** What transformers recorded for a fixture (scripts/make_fixtures.py). */
export function loadReference(name: string): FixtureReference {
  const f = SafetensorsFile.open(path.join(FIXTURES, name, "reference.safetensors"));
  try {
    const n = Number(f.metadata.num_prompts);
    const prompts: PromptReference[] = [];
    for (let i = 0; i < n; i++) {
      const beams = f.info(`prompt${i}.beam_ids`).shape;
      const flat = ints(f, `prompt${i}.beam_ids`);
      prompts.push({
        inputIds: ints(f, `prompt${i}.input_ids`),
        contextLogits: f.readFloat32(`prompt${i}.context_logits`),
        greedyIds: ints(f, `prompt${i}.greedy_ids`),
        generationLogits: f.readFloat32(`prompt${i}.generation_logits`),
        beamIds: Array.from({ length: beams[0] }, (_, b) =>
          flat.slice(b * beams[1], (b + 1) * beams[1]).filter((t) => t >= 0),
        ),
        beamScores: f.readFloat32(`prompt${i}.beam_scores`),
      });
    }
    const vocab = f.info("prompt0.context_logits").shape[1];
    return { eosId: Number(f.metadata.eos_id), vocab, prompts };
  } finally {
    f.close();
  }
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Rows of equal width laid end to end. */
export function stackRows(rows: readonly Float32Array[], width: number): Float32Array {
  const out = new Float32Array(rows.length * width);
  for (let i = 0; i < rows.length; i++) out.set(rows[i], i * width);
  return out;
}

/** Results of LLM.generate where every request is expected to succeed. */
export function succeeded<T extends object>(results: (T | { error: Error })[]): T[] {
  return results.map((r, i) => {
    if ("error" in r) throw new Error(`request ${i} failed: ${r.error.message}`);
    return r as T;
  });
}

/**
 * Runs a fixture's reference prompts through `llm` (built with gather_context_logits) and measures its context
 * logits against transformers': the largest |Δ|, and the logits' std and rms to scale it by.
 */
export function contextLogitError(
  llm: LLM,
  ref: FixtureReference,
): { worst: number; std: number; rms: number; rmsError: number } {
  const outs = succeeded(
    llm.generate(
      ref.prompts.map((p) => p.inputIds),
      { maxNewTokens: 1, endId: null },
    ),
  );
  let worst = 0;
  let squaredError = 0;
  let sum = 0;
  let sq = 0;
  let n = 0;
  ref.prompts.forEach((p, i) => {
    const got = stackRows(outs[i].contextLogits!, ref.vocab);
    for (let k = 0; k < got.length; k++) {
      worst = Math.max(worst, Math.abs(got[k] - p.contextLogits[k]));
      squaredError += (got[k] - p.contextLogits[k]) ** 2;
      sum += p.contextLogits[k];
      sq += p.contextLogits[k] ** 2;
      n++;
    }
  });
  return {
    worst,
    std: Math.sqrt(sq / n - (sum / n) ** 2),
    rms: Math.sqrt(sq / n),
    rmsError: Math.sqrt(squaredError / n),
  };
}

/** Converts with `opts`, builds a cpu engine gathering context logits next to the checkpoint, and loads it. */
export async function convertBuildLoad(opts: ConvertOptions): Promise<{ cfg: PretrainedConfig; llm: LLM }> {
  const cfg = await convertHfCheckpoint(opts);
  await buildEngine({
    checkpointDir: opts.outputDir,
    outputDir: `${opts.outputDir}-e`,
    backend: "cpu",
    request: { gather_context_logits: true },
  });
  return { cfg, llm: await LLM.load(`${opts.outputDir}-e`) };
}

const engineCache = new Map<string, string>();

/**
 * An engine for a fixture built with `request` (float32 weights), cached per (fixture, request) for the
 * test file's lifetime under `work`.
 */
export async function fixtureEngine(
  work: string,
  name: string,
  request: Record<string, unknown> = {},
): Promise<string> {
  const key = `${name}:${JSON.stringify(request)}`;
  const hit = engineCache.get(key);
  if (hit) return hit;
  const { convertHfCheckpoint } = await import("../src/checkpoint/convert-hf.js");
  const { buildEngine } = await import("../src/builder/build-engine.js");
  const ckpt = path.join(work, `${name}-ckpt`);
  if (!fs.existsSync(ckpt))
    await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype: "float32" });
  const dir = path.join(work, `${name}-engine-${engineCache.size}`);
  await buildEngine({ checkpointDir: ckpt, outputDir: dir, backend: "cpu", request });
  engineCache.set(key, dir);
  return dir;
}
