// Splitting a checkpoint for a parallel mapping, as TensorRT-LLM splits it: putting every layout's rank
// files back together (by the rules, independently of the splitter) gives the single-rank checkpoint
// exactly; KV heads are repeated when tp exceeds them; the vocabulary is padded to a multiple of tp.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { Mapping } from "../src/mapping.js";
import { FIXTURES, tempDir } from "./helpers.js";

const work = tempDir("kiln-split-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

type Tensors = Map<string, { shape: number[]; data: Float32Array }>;

function readAll(file: string): Tensors {
  const f = SafetensorsFile.open(file);
  const out: Tensors = new Map(f.names().map((n) => [n, { shape: f.info(n).shape, data: f.readFloat32(n) }]));
  f.close();
  return out;
}

/** Rows [a, b) of a row-major [rows, cols] matrix. */
const rowsOf = (m: Float32Array, cols: number, a: number, b: number) => m.slice(a * cols, b * cols);
function colsConcat(parts: Float32Array[], rows: number): Float32Array {
  const widths = parts.map((p) => p.length / rows);
  const total = widths.reduce((a, b) => a + b, 0);
  const out = new Float32Array(rows * total);
  for (let r = 0; r < rows; r++) {
    let at = 0;
    parts.forEach((p, i) => {
      out.set(p.subarray(r * widths[i], (r + 1) * widths[i]), r * total + at);
      at += widths[i];
    });
  }
  return out;
}
const cat = (parts: Float32Array[]) => {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/** The single-rank checkpoint rebuilt from a layout's rank files. */
function reassemble(dir: string, m: Mapping): Tensors {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  const tp = m.tpSize;
  const D = cfg.head_size;
  const H = cfg.hidden_size;
  const files = Array.from({ length: m.numFileRanks }, (_, f) => readAll(path.join(dir, `rank${f}.safetensors`)));
  const at = (t: number, p: number) => files[t + p * tp];
  const same = (parts: Float32Array[], what: string) => {
    for (const x of parts.slice(1)) assert.deepEqual(x, parts[0], `${what} differs between tp ranks`);
    return parts[0];
  };
  const out: Tensors = new Map();
  const put = (name: string, shape: number[], data: Float32Array) => out.set(name, { shape, data });
  put(
    "transformer.vocab_embedding.weight",
    [cfg.vocab_size, H],
    same(
      Array.from({ length: tp }, (_, t) => at(t, 0).get("transformer.vocab_embedding.weight")!.data),
      "embedding",
    ),
  );
  const nq = cfg.num_attention_heads / tp;
  const nkvTotal = cfg.num_key_value_heads;
  const nkv = Math.max(1, nkvTotal / tp);
  for (let p = 0; p < m.ppSize; p++) {
    m.ppLayers(cfg.num_hidden_layers, p).forEach((g, i) => {
      const local = (t: number, n: string) => at(t, p).get(`transformer.layers.${i}.${n}`)!.data;
      const ranks = Array.from({ length: tp }, (_, t) => t);
      const global = (n: string) => `transformer.layers.${g}.${n}`;
      for (const n of ["input_layernorm.weight", "post_layernorm.weight"])
        put(
          global(n),
          [H],
          same(
            ranks.map((t) => local(t, n)),
            n,
          ),
        );
      for (const suffix of ["weight", "bias"]) {
        const n = `attention.qkv.${suffix}`;
        if (!at(0, p).has(`transformer.layers.${i}.${n}`)) continue;
        const cols = suffix === "weight" ? H : 1;
        const split = (t: number) => {
          const x = local(t, n);
          return [
            rowsOf(x, cols, 0, nq * D),
            rowsOf(x, cols, nq * D, (nq + nkv) * D),
            rowsOf(x, cols, (nq + nkv) * D, (nq + 2 * nkv) * D),
          ];
        };
        const q = cat(ranks.map((t) => split(t)[0]));
        // KV heads: each rank's share in order, or (repeated) one rank per head, its repeats identical.
        const reps = Math.max(1, tp / nkvTotal);
        const kvRanks = Array.from({ length: tp / reps }, (_, j) => j * reps);
        for (const t of ranks) assert.deepEqual(split(t)[1], split(Math.floor(t / reps) * reps)[1], "repeated K heads");
        const k = cat(kvRanks.map((t) => split(t)[1]));
        const v = cat(kvRanks.map((t) => split(t)[2]));
        const total = (cfg.num_attention_heads + 2 * nkvTotal) * D;
        put(global(n), suffix === "weight" ? [total, H] : [total], cat([q, k, v]));
      }
      put(
        global("attention.dense.weight"),
        [H, cfg.num_attention_heads * D],
        colsConcat(
          ranks.map((t) => local(t, "attention.dense.weight")),
          H,
        ),
      );
      put(global("mlp.fc.weight"), [cfg.intermediate_size, H], cat(ranks.map((t) => local(t, "mlp.fc.weight"))));
      put(global("mlp.gate.weight"), [cfg.intermediate_size, H], cat(ranks.map((t) => local(t, "mlp.gate.weight"))));
      put(
        global("mlp.proj.weight"),
        [H, cfg.intermediate_size],
        colsConcat(
          ranks.map((t) => local(t, "mlp.proj.weight")),
          H,
        ),
      );
    });
  }
  const last = m.ppSize - 1;
  put(
    "transformer.ln_f.weight",
    [H],
    same(
      Array.from({ length: tp }, (_, t) => at(t, last).get("transformer.ln_f.weight")!.data),
      "ln_f",
    ),
  );
  const head = cat(Array.from({ length: tp }, (_, t) => at(t, last).get("lm_head.weight")!.data));
  const V = cfg.vocab_size;
  assert.ok(
    head.subarray(V * H).every((x) => x === 0),
    "vocab padding rows are zero",
  );
  assert.equal(head.length / H, Math.ceil(V / tp) * tp, "lm_head padded to a multiple of tp");
  put("lm_head.weight", [V, H], head.slice(0, V * H));
  return out;
}

const layouts: Record<string, [number, number][]> = {
  qwen2_tied_gqa: [
    [2, 1],
    [4, 1],
    [1, 2],
    [2, 2],
  ], // 4 heads, 2 KV heads: tp 4 repeats each KV head twice
  qwen2_untied_mqa: [
    [2, 1],
    [3, 1],
    [6, 1],
    [1, 3],
    [3, 3],
    [2, 3],
  ], // 6 heads, 1 KV head, 400-token vocab
  llama3_rope_scaling: [
    [2, 1],
    [4, 1],
    [2, 2],
  ],
  llama_tied_mha: [
    [4, 1],
    [1, 2],
    [4, 2],
  ],
};

for (const [name, list] of Object.entries(layouts)) {
  describe(`rank files put back together: ${name}`, async () => {
    const model = path.join(FIXTURES, name, "hf");
    const single = path.join(work, `${name}-1x1`);
    await convertHfCheckpoint({ modelDir: model, outputDir: single, dtype: "float32" });
    const reference = readAll(path.join(single, "rank0.safetensors"));
    for (const [tp, pp] of list) {
      test(`tp ${tp} × pp ${pp} gives the single-rank checkpoint exactly`, async () => {
        const m = new Mapping({ tpSize: tp, ppSize: pp });
        const dir = path.join(work, `${name}-${tp}x${pp}`);
        const cfg = await convertHfCheckpoint({ modelDir: model, outputDir: dir, dtype: "float32", mapping: m });
        assert.deepEqual(cfg.mapping, m.toConfig());
        assert.deepEqual(
          fs
            .readdirSync(dir)
            .filter((f) => f.startsWith("rank"))
            .sort(),
          Array.from({ length: tp * pp }, (_, f) => `rank${f}.safetensors`).sort(),
        );
        const back = reassemble(dir, m);
        assert.deepEqual([...back.keys()].sort(), [...reference.keys()].sort());
        for (const [k, v] of reference) assert.deepEqual(back.get(k)!.data, v.data, k);
      });
    }
  });
}

describe("layouts that cannot split the model", () => {
  test("a tp that divides no head count fails before anything is written, naming the numbers", async () => {
    const out = path.join(work, "bad-tp");
    await assert.rejects(
      convertHfCheckpoint({
        modelDir: path.join(FIXTURES, "qwen2_untied_mqa", "hf"),
        outputDir: out,
        dtype: "float32",
        mapping: new Mapping({ tpSize: 4 }),
      }),
      /--tp_size 4 does not divide num_attention_heads 6/,
    );
    assert.equal(fs.existsSync(out), false);
    await assert.rejects(
      convertHfCheckpoint({
        modelDir: path.join(FIXTURES, "llama_tied_mha", "hf"),
        outputDir: out,
        dtype: "float32",
        mapping: new Mapping({ ppSize: 3 }),
      }),
      /--pp_size 3 exceeds num_hidden_layers 2/,
    );
    assert.equal(fs.existsSync(out), false);
  });
});
