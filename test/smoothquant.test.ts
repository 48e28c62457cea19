// SmoothQuant (convert --smoothquant ALPHA [--per_token] [--per_channel]): the math by hand, the kernel
// against the closed form, smoothing against plain W8A8 on activations with outliers, TensorRT-LLM's
// W8A8_SQ_*_PLUGIN layout read back from a rank file, and engines against transformers.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { type ConvertOptions, convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile, writeSafetensorsFile } from "../src/checkpoint/safetensors.js";
import { Mapping } from "../src/mapping.js";
import { matmulSmoothQuant, quantizeSq, type SqWeight, smoothingFactors } from "../src/quantization/smoothquant.js";
import { contextLogitError, convertBuildLoad, FIXTURES, loadReference, tempDir } from "./helpers.js";

const work = tempDir("kiln-sq-");
after(() => fs.rmSync(work, { recursive: true, force: true }));
const fixture = "qwen2_tied_gqa";
const model = path.join(FIXTURES, fixture, "hf");

/** A seeded standard normal (Box–Muller over a small LCG). */
function normal(seed: number): () => number {
  let s = seed;
  const u = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return (s + 1) / (2 ** 31 + 1);
  };
  return () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
}

/** torch.round, written out here so the closed form does not lean on the code under test. */
const rne = (x: number) => {
  const f = Math.floor(x);
  const d = x - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
};

/** The fixture converted with `sq` twice: single-rank, and split by `mapping`; returns the config and both dirs. */
async function singleAndSplit(tag: string, sq: NonNullable<ConvertOptions["smoothquant"]>, mapping: Mapping) {
  const one = path.join(work, `sq-${tag}-1`);
  const split = path.join(work, `sq-${tag}-split`);
  const cfg = await convertHfCheckpoint({ modelDir: model, outputDir: one, dtype: "float32", smoothquant: sq });
  await convertHfCheckpoint({ modelDir: model, outputDir: split, dtype: "float32", smoothquant: sq, mapping });
  return { cfg, one, split };
}

describe("SmoothQuant math", () => {
  test("by hand: s_j = amax_x^α / amax_w^(1−α); int8 weights per channel and per tensor", () => {
    // W [2 out, 2 in] = [[1, 4], [2, 1]]: column maxima 2 and 4; x maxima 4 and 1; α = 0.5.
    const s = smoothingFactors(Float32Array.of(4, 1), [Float32Array.of(1, 4, 2, 1)], 2, 0.5);
    assert.ok(Math.abs(s[0] - Math.SQRT2) < 1e-6 && Math.abs(s[1] - 0.5) < 1e-7, `${s}`);
    const w = Float32Array.of(1, -0.5, 0.25, 2);
    const c = quantizeSq(w, 2, 2, true, [2]);
    assert.deepEqual([...c.wScale], [127, 63.5]);
    assert.deepEqual([...c.q], [127, -64, 16, 127]); // −0.5 · 127 = −63.5 → −64 (half to even); 0.25 · 63.5 → 16
    const t = quantizeSq(w, 2, 2, false, [2]);
    assert.deepEqual([...t.wScale], [63.5, 63.5]);
    assert.deepEqual([...t.q], [64, -32, 16, 127]); // 63.5 → 64; −31.75 → −32; 15.875 → 16
    const blocks = quantizeSq(w, 2, 2, false, [1, 1]);
    assert.deepEqual([...blocks.wScale], [127, 63.5], "one scale per block (qkv's Q, K, V)");
  });

  test("the kernel equals Σ (qx / sx)(qw / sw) computed here, per token and static, with a smoother", () => {
    const R = 3;
    const I = 8;
    const O = 5;
    const g = normal(7);
    const x = Float32Array.from({ length: R * I }, g);
    const w = Float32Array.from({ length: O * I }, g);
    const smoother = Float32Array.from({ length: I }, (_, i) => 0.5 + i / 4);
    const { q, wScale } = quantizeSq(w, O, I, true, [O]);
    for (const perToken of [true, false]) {
      const scaleToInt = 127 / 3;
      const actScale = 0.02;
      // Stored per_channel_scale: 1 / sw (per token) or scale_y_accum_quant = (1 / actScale) / (sx · sw) (static).
      const pcs = wScale.map((sw) => (perToken ? 1 / sw : 1 / actScale / (scaleToInt * sw)));
      const sq: SqWeight = {
        q,
        perChannelScale: pcs,
        staticScales: perToken ? null : { scaleToInt, actScale },
        smoother,
      };
      const bias = Float32Array.from({ length: O }, (_, o) => o / 10);
      const got = new Float32Array(R * O);
      matmulSmoothQuant(x, R, I, sq, O, bias, got);
      for (let r = 0; r < R; r++) {
        const xs = Array.from({ length: I }, (_, i) => x[r * I + i] / smoother[i]);
        const sx = perToken ? 127 / Math.max(...xs.map(Math.abs)) : scaleToInt;
        const qx = xs.map((v) => Math.max(-127, Math.min(127, rne(v * sx))));
        for (let o = 0; o < O; o++) {
          let want = bias[o];
          for (let i = 0; i < I; i++) want += (qx[i] / sx) * (q[o * I + i] / wScale[o]);
          assert.ok(Math.abs(got[r * O + o] - want) < 1e-5, `${perToken ? "per token" : "static"} [${r}, ${o}]`);
        }
      }
    }
  });

  test("on activations with outlier channels, α = 0.5 has a lower output error than plain W8A8", () => {
    const R = 64;
    const I = 64;
    const O = 32;
    const g = normal(11);
    const x = Float32Array.from({ length: R * I }, (_, k) => g() * ([3, 17, 40].includes(k % I) ? 40 : 1));
    const w = Float32Array.from({ length: O * I }, () => g() * 0.1);
    const exact = new Float64Array(R * O);
    for (let r = 0; r < R; r++)
      for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) exact[r * O + o] += x[r * I + i] * w[o * I + i];
    const xAmax = new Float32Array(I);
    for (let k = 0; k < x.length; k++) xAmax[k % I] = Math.max(xAmax[k % I], Math.abs(x[k]));
    const err = (smoother: Float32Array | null, perToken: boolean) => {
      const ws = smoother ? w.map((v, k) => v * smoother[k % I]) : w;
      const { q, wScale } = quantizeSq(ws, O, I, true, [O]);
      const ax = Math.max(...xAmax.map((a, i) => a / (smoother ? smoother[i] : 1)));
      const got = new Float32Array(R * O);
      const sq: SqWeight = {
        q,
        perChannelScale: wScale.map((sw) => (perToken ? 1 / sw : 1 / (127 / ax) / sw)),
        staticScales: perToken ? null : { scaleToInt: 127 / ax, actScale: 1 },
        smoother,
      };
      matmulSmoothQuant(x, R, I, sq, O, null, got);
      let e = 0;
      for (let k = 0; k < got.length; k++) e += (got[k] - exact[k]) ** 2;
      return Math.sqrt(e / got.length);
    };
    const s = smoothingFactors(xAmax, [w], I, 0.5);
    for (const perToken of [true, false]) {
      const plain = err(null, perToken);
      const smooth = err(s, perToken);
      console.log(
        `# outliers, ${perToken ? "per token" : "static"}: rms error plain W8A8 ${plain}, SmoothQuant ${smooth}`,
      );
      assert.ok(smooth < plain, `${smooth} vs ${plain}`);
    }
  });
});

describe("W8A8_SQ_*_PLUGIN checkpoints and engines", () => {
  test("the rank file holds TensorRT-LLM's layout, and it dequantizes back to the weights", async () => {
    const out = path.join(work, "sq-static");
    const cfg = await convertHfCheckpoint({
      modelDir: model,
      outputDir: out,
      dtype: "float32",
      smoothquant: { alpha: 0.5, perToken: false, perChannel: false, calibSize: 8 },
    });
    assert.equal(cfg.quantization.quant_algo, "W8A8_SQ_PER_TENSOR_PLUGIN");
    assert.equal(cfg.quantization.smoothquant_val, 0.5);
    const f = SafetensorsFile.open(path.join(out, "rank0.safetensors"));
    const H = cfg.hidden_size;
    const qkvOut = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_size;
    const t = "transformer.layers.0";
    const shapes: [string, string, number[]][] = [
      [`${t}.attention.qkv.weight`, "I8", [qkvOut, H]],
      [`${t}.attention.qkv.per_channel_scale`, "F32", [1, qkvOut]],
      [`${t}.attention.qkv.act_scale`, "F32", [1, 1]],
      [`${t}.input_layernorm.scale_to_int`, "F32", [1]],
      [`${t}.attention.dense.per_channel_scale`, "F32", [1, 1]],
      [`${t}.attention.dense.smoother`, "F32", [1, cfg.num_attention_heads * cfg.head_size]],
      [`${t}.attention.quantization_scaling_factor`, "F32", [1]],
      [`${t}.mlp.fc.per_channel_scale`, "F32", [1, 1]],
      [`${t}.mlp.proj.smoother`, "F32", [1, cfg.intermediate_size]],
      [`${t}.mlp.quantization_scaling_factor`, "F32", [1]],
    ];
    for (const [name, dtype, shape] of shapes) {
      assert.equal(f.info(name).dtype, dtype, name);
      assert.deepEqual(f.info(name).shape, shape, name);
    }
    // Static: per_channel_scale · act_scale = 1 / (scale_to_int · sw), so q · that · scale_to_int = w · s;
    // the norm carries 1 / s: q[o, i] · (1 / sw) · γ'[i] ≈ W[o, i] · γ[i] within half a step.
    const q = f.readBytes(`${t}.attention.qkv.weight`);
    const pcs = f.readFloat32(`${t}.attention.qkv.per_channel_scale`);
    const act = f.readFloat32(`${t}.attention.qkv.act_scale`)[0];
    const toInt = f.readFloat32(`${t}.input_layernorm.scale_to_int`)[0];
    const gamma1 = f.readFloat32(`${t}.input_layernorm.weight`);
    f.close();
    const hf = SafetensorsFile.open(path.join(model, "model.safetensors"));
    const wq = hf.readFloat32("model.layers.0.self_attn.q_proj.weight");
    const gamma = hf.readFloat32("model.layers.0.input_layernorm.weight");
    hf.close();
    let worst = 0;
    for (let o = 0; o < cfg.num_attention_heads * cfg.head_size; o++) {
      const step = pcs[o] * act * toInt; // 1 / sw
      for (let i = 0; i < H; i++) {
        const qv = q[o * H + i] > 127 ? q[o * H + i] - 256 : q[o * H + i];
        const err = Math.abs(qv * step * gamma1[i] - wq[o * H + i] * gamma[i]) / Math.abs(step * gamma1[i]);
        worst = Math.max(worst, err);
      }
    }
    assert.ok(worst <= 0.5 + 1e-3, `worst error ${worst} quantization steps`);
  });

  test("pp 2: the second stage holds its layers' tensors renumbered from 0, byte-equal to the single-rank file's", async () => {
    const {
      cfg,
      one,
      split: two,
    } = await singleAndSplit(
      "pp",
      { alpha: 0.5, perToken: false, perChannel: true, calibSize: 4 },
      new Mapping({ ppSize: 2 }),
    );
    const full = SafetensorsFile.open(path.join(one, "rank0.safetensors"));
    const stage = SafetensorsFile.open(path.join(two, "rank1.safetensors"));
    const first = cfg.num_hidden_layers / 2;
    for (const n of [
      "attention.qkv.weight",
      "attention.dense.smoother",
      "post_layernorm.scale_to_int",
      "mlp.proj.act_scale",
    ]) {
      assert.deepEqual(
        stage.readBytes(`transformer.layers.0.${n}`),
        full.readBytes(`transformer.layers.${first}.${n}`),
        n,
      );
    }
    assert.equal(stage.has(`transformer.layers.${first}.attention.qkv.weight`), false);
    stage.close();
    full.close();
  });

  test("tp 2: each rank holds TensorRT-LLM's slice of the single-rank tensors (qkv by head, dense by input)", async () => {
    const {
      cfg,
      one,
      split: two,
    } = await singleAndSplit(
      "tp",
      { alpha: 0.5, perToken: true, perChannel: true, calibSize: 4 },
      new Mapping({ tpSize: 2 }),
    );
    const full = SafetensorsFile.open(path.join(one, "rank0.safetensors"));
    const ranks = [0, 1].map((r) => SafetensorsFile.open(path.join(two, `rank${r}.safetensors`)));
    const H = cfg.hidden_size;
    const D = cfg.head_size;
    const [nq, nkv] = [cfg.num_attention_heads / 2, cfg.num_key_value_heads / 2]; // per rank
    const t = "transformer.layers.0";
    const fullQkv = full.readBytes(`${t}.attention.qkv.weight`);
    const fullScale = full.readFloat32(`${t}.attention.qkv.per_channel_scale`);
    ranks.forEach((f, r) => {
      // Fused rows of this rank: its q heads, then its k heads, then its v heads.
      const rowsOf = [
        [r * nq * D, (r + 1) * nq * D],
        [(2 * nq + r * nkv) * D, (2 * nq + (r + 1) * nkv) * D],
        [(2 * nq + 2 * nkv + r * nkv) * D, (2 * nq + 2 * nkv + (r + 1) * nkv) * D],
      ].flatMap(([a, b]) => Array.from({ length: b - a }, (_, i) => a + i));
      const qkv = f.readBytes(`${t}.attention.qkv.weight`);
      const scale = f.readFloat32(`${t}.attention.qkv.per_channel_scale`);
      rowsOf.forEach((g, i) => {
        assert.deepEqual(
          qkv.subarray(i * H, (i + 1) * H),
          fullQkv.subarray(g * H, (g + 1) * H),
          `rank${r} qkv row ${i}`,
        );
        assert.equal(scale[i], fullScale[g]);
      });
      const inFull = full.info(`${t}.attention.dense.weight`).shape[1];
      const inLocal = inFull / 2;
      const dense = f.readBytes(`${t}.attention.dense.weight`);
      const fullDense = full.readBytes(`${t}.attention.dense.weight`);
      for (let o = 0; o < H; o++) {
        const want = fullDense.subarray(o * inFull + r * inLocal, o * inFull + (r + 1) * inLocal);
        assert.deepEqual(dense.subarray(o * inLocal, (o + 1) * inLocal), want, `rank${r} dense row ${o}`);
      }
      const smoother = f.readFloat32(`${t}.attention.dense.smoother`);
      assert.deepEqual(
        smoother,
        full.readFloat32(`${t}.attention.dense.smoother`).subarray(r * inLocal, (r + 1) * inLocal),
      );
      assert.deepEqual(
        f.readFloat32(`${t}.attention.dense.per_channel_scale`),
        full.readFloat32(`${t}.attention.dense.per_channel_scale`),
      );
      f.close();
    });
    full.close();
  });

  test("all four variants run, near transformers' logits", async () => {
    const ref = loadReference(fixture);
    const figures: string[] = [];
    for (const [perToken, perChannel] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ]) {
      const ckpt = path.join(work, `sq-${perToken}-${perChannel}`);
      const { cfg, llm } = await convertBuildLoad({
        modelDir: model,
        outputDir: ckpt,
        dtype: "float32",
        smoothquant: { alpha: 0.5, perToken, perChannel, calibSize: 16 },
      });
      const { worst, std } = contextLogitError(llm, ref);
      llm.dispose();
      figures.push(`${cfg.quantization.quant_algo} ${(worst / std).toFixed(4)}`);
      // The random fixtures amplify rounding (weight-only int8: 0.09–0.20 of std); garbage would be ≫ 1.
      assert.ok(worst / std < 0.6, `${cfg.quantization.quant_algo}: ${worst / std}`);
    }
    console.log(`# ${fixture}: max |Δlogit| / std(logits): ${figures.join(", ")}`);
  });

  test("a model with activation outliers: α = 0.5 has a lower logit error than plain W8A8", async () => {
    const hf = outlierModel();
    const ref = loadReference(fixture);
    // The outliers change nothing in float: every scaled channel is divided back in the next weight.
    const f32 = await convertBuildLoad({ modelDir: hf, outputDir: path.join(work, "outliers-f32"), dtype: "float32" });
    assert.ok(contextLogitError(f32.llm, ref).worst < 1e-4);
    f32.llm.dispose();
    const figures: string[] = [];
    for (const perToken of [true, false]) {
      const err = async (smooth: boolean) => {
        const { llm } = await convertBuildLoad({
          modelDir: hf,
          outputDir: path.join(work, `outliers-${perToken}-${smooth}`),
          dtype: "float32",
          smoothquant: { alpha: 0.5, perToken, perChannel: true, calibSize: 16, smooth },
        });
        const { worst, std } = contextLogitError(llm, ref);
        llm.dispose();
        return worst / std;
      };
      const plain = await err(false);
      const smoothed = await err(true);
      figures.push(
        `${perToken ? "per token" : "static"}: plain W8A8 ${plain.toFixed(4)}, SmoothQuant ${smoothed.toFixed(4)}`,
      );
      assert.ok(smoothed < plain, figures.at(-1));
    }
    console.log(`# outlier model, max |Δlogit| / std(logits): ${figures.join("; ")}`);
  });

  test("bad input: alpha outside [0, 1], mixed with weight-only; nothing written", async () => {
    const out = path.join(work, "bad");
    const base = { modelDir: model, outputDir: out, dtype: "float32" as const };
    const sq = { alpha: 0.5, perToken: true, perChannel: true, calibSize: 2 };
    await assert.rejects(
      convertHfCheckpoint({ ...base, smoothquant: { ...sq, alpha: 1.5 } }),
      /--smoothquant 1.5: alpha must be in \[0, 1\]/,
    );
    await assert.rejects(
      convertHfCheckpoint({ ...base, smoothquant: sq, weightOnlyBits: 8 }),
      /--smoothquant or a weight-only precision, not both/,
    );
    assert.equal(fs.existsSync(out), false);
  });
});

/**
 * The fixture with outlier channels (× 30) in the inputs of every linear layer, the function unchanged: norm
 * weights (qkv, gate/up inputs), v rows (dense input) and up rows (proj input) scaled up, and the weights
 * reading them scaled down.
 */
function outlierModel(): string {
  const K = 30;
  const dir = path.join(work, "outliers-hf");
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(model))
    if (f !== "model.safetensors") fs.copyFileSync(path.join(model, f), path.join(dir, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(model, "config.json"), "utf8"));
  const H: number = cfg.hidden_size;
  const D = H / cfg.num_attention_heads;
  const group = cfg.num_attention_heads / cfg.num_key_value_heads;
  const hidden = [3, 17, 40];
  const vRows = [5, 20]; // (kv head, dim) pairs 0·D + 5 and 1·D + 4
  const upRows = [7, 90, 150];
  const f = SafetensorsFile.open(path.join(model, "model.safetensors"));
  const t = new Map(f.names().map((n) => [n, { shape: f.info(n).shape, data: f.readFloat32(n) }]));
  f.close();
  const scaleRows = (n: string, rows: number[], k: number) => {
    const { shape, data } = t.get(n)!;
    const cols = shape[1] ?? 1;
    for (const r of rows) for (let c = 0; c < cols; c++) data[r * cols + c] *= k;
  };
  const scaleCols = (n: string, cols: number[], k: number) => {
    const { shape, data } = t.get(n)!;
    for (let r = 0; r < shape[0]; r++) for (const c of cols) data[r * shape[1] + c] *= k;
  };
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    for (const [norm, readers] of [
      ["input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]],
      ["post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]],
    ] as const) {
      scaleRows(`${p}.${norm}.weight`, hidden, K);
      for (const r of readers) scaleCols(`${p}.${r}.weight`, hidden, 1 / K);
    }
    scaleRows(`${p}.self_attn.v_proj.weight`, vRows, K);
    scaleRows(`${p}.self_attn.v_proj.bias`, vRows, K);
    // Each KV head's value dims reach the dense input once per query head of its group.
    const denseCols = vRows.flatMap((r) => {
      const [kv, d] = [Math.floor(r / D), r % D];
      return Array.from({ length: group }, (_, g) => (kv * group + g) * D + d);
    });
    scaleCols(`${p}.self_attn.o_proj.weight`, denseCols, 1 / K);
    scaleRows(`${p}.mlp.up_proj.weight`, upRows, K);
    scaleCols(`${p}.mlp.down_proj.weight`, upRows, 1 / K);
  }
  writeSafetensorsFile(
    path.join(dir, "model.safetensors"),
    [...t].map(([name, { shape, data }]) => ({
      name,
      dtype: "F32" as const,
      shape,
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    })),
  );
  return dir;
}
