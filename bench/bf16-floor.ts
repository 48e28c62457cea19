// How close any bfloat16 engine can come to transformers on the parity fixtures: each fixture's weights rounded
// to bfloat16 (kiln convert --dtype bfloat16) and everything else computed exactly in float32 (the cpu
// backend: float32 activations, sums and KV cache). Its context logits' largest distance from transformers'
// float32 logits is the error of the rounded weights alone, which no bfloat16 engine avoids; its distance
// from transformers' bfloat16 logits (scripts/record_bf16.py) adds transformers' own activation rounding.
// Runs on the cpu in seconds.
//
// node dist/bench/bf16-floor.js [--out bench/results/bf16-floor.json]

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { LLM } from "../src/runtime/llm.js";

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../test/fixtures");
const NAMES = [
  "qwen2_tied_gqa",
  "qwen2_untied_mqa",
  "llama3_rope_scaling",
  "llama_tied_mha",
  "qwen2_moe_shared",
  "mixtral_top2",
];

/** prompt{i}.input_ids and prompt{i}.context_logits of a fixture's reference file, for every prompt. */
function readPrompts(file: string): { ids: number[]; logits: Float32Array }[] {
  const f = SafetensorsFile.open(file);
  try {
    const out: { ids: number[]; logits: Float32Array }[] = [];
    for (let i = 0; f.names().includes(`prompt${i}.context_logits`); i++) {
      const ids = f.names().includes(`prompt${i}.input_ids`) ? Array.from(f.readFloat32(`prompt${i}.input_ids`)) : [];
      out.push({ ids: ids.map(Math.round), logits: f.readFloat32(`prompt${i}.context_logits`) });
    }
    return out;
  } finally {
    f.close();
  }
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const { values: args } = parseArgs({ options: { out: { type: "string" } } });
const work = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-bf16-floor-"));
const rows: Record<string, unknown>[] = [];
try {
  for (const name of NAMES) {
    const ref = readPrompts(path.join(FIXTURES, name, "reference.safetensors"));
    const refBf16 = readPrompts(path.join(FIXTURES, name, "reference_bf16.safetensors"));
    const ckpt = path.join(work, `${name}-ckpt`);
    const engine = path.join(work, `${name}-engine`);
    await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype: "bfloat16" });
    await buildEngine({
      checkpointDir: ckpt,
      outputDir: engine,
      backend: "cpu",
      request: { gather_context_logits: true },
    });
    const llm = await LLM.load(engine);
    const outs = llm.generate(
      ref.map((p) => p.ids),
      { maxNewTokens: 1, endId: null },
    );
    const vsF32: number[] = [];
    const vsBf16: number[] = [];
    const hfNoise: number[] = [];
    ref.forEach((p, i) => {
      const o = outs[i];
      if (!("contextLogits" in o) || !o.contextLogits) throw new Error(`${name}: prompt ${i} gave no context logits`);
      const vocab = o.contextLogits[0].length;
      const got = new Float32Array(o.contextLogits.length * vocab);
      o.contextLogits.forEach((row, r) => {
        got.set(row.subarray(0, vocab), r * vocab);
      });
      const width = p.logits.length / p.ids.length;
      if (width !== vocab) throw new Error(`${name}: logits rows of ${vocab}, reference rows of ${width}`);
      vsF32.push(maxAbsDiff(got, p.logits));
      vsBf16.push(maxAbsDiff(got, refBf16[i].logits));
      hfNoise.push(maxAbsDiff(refBf16[i].logits, p.logits));
    });
    llm.dispose();
    const fmt = (v: number[]) => v.map((x) => x.toFixed(4)).join(" ");
    console.log(
      `${name.padEnd(20)} bf16 weights vs transformers f32: ${fmt(vsF32)}   vs transformers bf16: ${fmt(vsBf16)}   transformers bf16 vs f32: ${fmt(hfNoise)}`,
    );
    rows.push({
      fixture: name,
      prompt_lengths: ref.map((p) => p.ids.length),
      bf16_weights_vs_hf_float32: vsF32,
      bf16_weights_vs_hf_bfloat16: vsBf16,
      hf_bfloat16_vs_hf_float32: hfNoise,
    });
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
const result = {
  what: "max |Δ context logit| per prompt: each fixture's weights rounded to bfloat16, everything else exact float32 (kiln's cpu backend), against transformers' float32 and bfloat16 logits; and transformers' bfloat16 against its float32",
  bound_in_issues: 0.02,
  fixtures: rows,
};
if (args.out) fs.writeFileSync(args.out, `${JSON.stringify(result, null, 1)}\n`);
