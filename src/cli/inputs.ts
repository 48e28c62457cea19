// Prompts for kiln run: --input_text strings, or --input_file as CSV rows of token ids, a JSON array of
// id arrays, or a .txt file with one prompt a line (as TensorRT-LLM's run.py reads them).

import fs from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";

export type Prompt = { text: string } | { ids: number[] };

function idList(values: unknown[], where: string): number[] {
  return values.map((v) => {
    const n = typeof v === "string" ? Number(v.trim()) : v;
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
      throw new UsageError(`${where}: expected a non-negative integer token id, got ${JSON.stringify(v)}`);
    }
    return n;
  });
}

export function readInputFile(file: string): Prompt[] {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`--input_file ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  const ext = path.extname(file).toLowerCase();
  let prompts: Prompt[];
  if (ext === ".csv") {
    prompts = text
      .split(/\r?\n/)
      .map((line, i) => ({ line, i }))
      .filter(({ line }) => line.trim() !== "")
      .map(({ line, i }) => ({ ids: idList(line.split(","), `${file} line ${i + 1}`) }));
  } else if (ext === ".json") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new UsageError(`--input_file ${file}: not valid JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(parsed) || !parsed.every(Array.isArray)) {
      throw new UsageError(`--input_file ${file}: expected a JSON array of token id arrays, like [[1, 2], [3]]`);
    }
    prompts = parsed.map((row, i) => ({ ids: idList(row as unknown[], `${file} prompt ${i}`) }));
  } else if (ext === ".txt") {
    prompts = text
      .split(/\r?\n/)
      .filter((l) => l.trim() !== "")
      .map((l) => ({ text: l }));
  } else {
    throw new UsageError(`--input_file ${file}: expected a .csv, .json or .txt file`);
  }
  if (prompts.length === 0) throw new UsageError(`--input_file ${file}: holds no prompt`);
  return prompts;
}
