// Mixture-of-experts models (Qwen2-MoE with a shared expert and a dense layer; Mixtral) against what
// transformers recorded: on one rank and split by moe_tp and moe_ep (as processes, one a rank), the rank
// files holding only their experts, weight-only int8 experts, and splits the model cannot take refused.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { buildEngine } from "../src/builder/build-engine.js";
import { convertHfCheckpoint, unifiedConfigFromHf } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { Mapping, type MappingSizes } from "../src/mapping.js";
import { validateMoeSplit } from "../src/models/moe.js";
import { LLM } from "../src/runtime/llm.js";
import {
  contextLogitError,
  FIXTURES,
  loadReference,
  maxAbsDiff,
  ROOT,
  stackRows,
  succeeded,
  tempDir,
} from "./helpers.js";

const work = tempDir("kiln-moe-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

const MOE_FIXTURES = ["qwen2_moe_shared", "mixtral_top2"] as const;
const NEW_TOKENS = 16;

async function engineFor(name: string, tag: string, sizes: MappingSizes, weightOnlyBits?: 8): Promise<string> {
  const ckpt = path.join(work, `${name}-${tag}-ckpt`);
  await convertHfCheckpoint({
    modelDir: path.join(FIXTURES, name, "hf"),
    outputDir: ckpt,
    dtype: "float32",
    mapping: new Mapping(sizes),
    weightOnlyBits,
  });
  const engine = path.join(work, `${name}-${tag}-engine`);
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: engine,
    backend: "cpu",
    request: { gather_context_logits: true, max_batch_size: 4 },
  });
  return engine;
}

for (const name of MOE_FIXTURES) {
  describe(`${name} against transformers`, async () => {
    const ref = loadReference(name);
    const prompts = path.join(work, `${name}-prompts.json`);
    fs.writeFileSync(prompts, JSON.stringify(ref.prompts.map((p) => p.inputIds)));

    test("one rank: context logits within 1e-3, greedy ids identical", async () => {
      const llm = await LLM.load(await engineFor(name, "single", {}));
      const outs = succeeded(
        llm.generate(
          ref.prompts.map((p) => p.inputIds),
          { maxNewTokens: NEW_TOKENS, endId: ref.eosId },
        ),
      );
      ref.prompts.forEach((p, i) => {
        const err = maxAbsDiff(stackRows(outs[i].contextLogits!, ref.vocab), p.contextLogits);
        assert.ok(err <= 1e-3, `prompt ${i}: ${err}`);
        assert.deepEqual(outs[i].outputIds, p.greedyIds, `prompt ${i}`);
      });
      llm.dispose();
    });

    for (const [moeTp, moeEp] of [
      [2, 1],
      [1, 2],
      [2, 2],
    ]) {
      const tp = moeTp * moeEp;
      test(`tp ${tp} as moe_tp ${moeTp} × moe_ep ${moeEp}: within 1e-3 of transformers, greedy ids identical`, async () => {
        const engine = await engineFor(name, `tp${moeTp}x${moeEp}`, { tpSize: tp, moeTpSize: moeTp, moeEpSize: moeEp });
        const out = path.join(work, `${name}-tp${moeTp}x${moeEp}.json`);
        const r = spawnSync(
          process.execPath,
          [
            path.join(ROOT, "bin", "kiln"),
            "run",
            "--engine_dir",
            engine,
            "--input_file",
            prompts,
            "--max_output_len",
            `${NEW_TOKENS}`,
            "--end_id",
            `${ref.eosId}`,
            "--output_json",
            out,
          ],
          { encoding: "utf8" },
        );
        assert.equal(r.status, 0, r.stderr);
        const got = JSON.parse(fs.readFileSync(out, "utf8"));
        ref.prompts.forEach((p, i) => {
          const err = maxAbsDiff(Float32Array.from(got.context_logits[i].flat()), p.contextLogits);
          assert.ok(err <= 1e-3, `prompt ${i}: ${err}`);
          assert.deepEqual(got.output_ids[i], p.greedyIds, `prompt ${i}`);
        });
      });
    }
  });
}

describe("rank files and quantized experts", () => {
  test("an expert-parallel rank holds only its experts, whole; a moe_tp rank its slice of each", async () => {
    const name = "mixtral_top2";
    const hf = SafetensorsFile.open(path.join(FIXTURES, name, "hf", "model.safetensors"));
    const expert = (e: number, w: string) => hf.readFloat32(`model.layers.1.block_sparse_moe.experts.${e}.${w}.weight`);
    for (const [sizes, rank, experts, slice] of [
      [{ tpSize: 2, moeEpSize: 2 }, 1, [2, 3], [0, 48]],
      [{ tpSize: 2, moeTpSize: 2 }, 1, [0, 1, 2, 3], [24, 48]],
    ] as const) {
      const ckpt = path.join(work, `files-${JSON.stringify(sizes).replace(/\W+/g, "")}`);
      await convertHfCheckpoint({
        modelDir: path.join(FIXTURES, name, "hf"),
        outputDir: ckpt,
        dtype: "float32",
        mapping: new Mapping(sizes),
      });
      const f = SafetensorsFile.open(path.join(ckpt, `rank${rank}.safetensors`));
      const fc = f.readFloat32("transformer.layers.1.mlp.fc.weight");
      const proj = f.readFloat32("transformer.layers.1.mlp.proj.weight");
      const ie = slice[1] - slice[0];
      assert.deepEqual(f.info("transformer.layers.1.mlp.fc.weight").shape, [experts.length, 2 * ie, 64]);
      assert.deepEqual(f.info("transformer.layers.1.mlp.router.weight").shape, [4, 64]);
      assert.equal(f.info("transformer.layers.1.mlp.router.weight").dtype, "F32");
      experts.forEach((e, k) => {
        // fc: [w3 (up) rows ; w1 (gate) rows] of the slice; proj: w2's slice of columns.
        const rows = (w: Float32Array) => w.slice(slice[0] * 64, slice[1] * 64);
        const want = [...rows(expert(e, "w3")), ...rows(expert(e, "w1"))];
        assert.deepEqual([...fc.subarray(k * 2 * ie * 64, (k + 1) * 2 * ie * 64)], want, `expert ${e} fc`);
        const w2 = expert(e, "w2");
        const cols = Array.from({ length: 64 }, (_, h) => [...w2.slice(h * 48 + slice[0], h * 48 + slice[1])]).flat();
        assert.deepEqual([...proj.subarray(k * 64 * ie, (k + 1) * 64 * ie)], cols, `expert ${e} proj`);
      });
      f.close();
    }
    hf.close();
  });

  test("weight-only int8 experts: [E, in, out] int8 with [E, out] scales, near transformers", async () => {
    const name = "qwen2_moe_shared";
    const engine = await engineFor(name, "w8", {}, 8);
    const f = SafetensorsFile.open(path.join(work, `${name}-w8-ckpt`, "rank0.safetensors"));
    assert.equal(f.info("transformer.layers.0.mlp.fc.weight").dtype, "I8");
    assert.deepEqual(f.info("transformer.layers.0.mlp.fc.weight").shape, [4, 64, 64]);
    assert.deepEqual(f.info("transformer.layers.0.mlp.fc.per_channel_scale").shape, [4, 64]);
    assert.equal(f.info("transformer.layers.0.shared_expert.fc.weight").dtype, "I8");
    assert.equal(f.info("transformer.layers.0.mlp.router.weight").dtype, "F32", "the router is never quantized");
    assert.equal(f.info("transformer.layers.0.shared_expert_gate.weight").dtype, "F32");
    // Each expert's [up ; gate] rows come back from q · scale within a step (the channel's largest value,
    // at 128 steps, clamps to 127: TensorRT-LLM's amax / 128).
    const q = new Int8Array(f.readBytes("transformer.layers.2.mlp.fc.weight").buffer);
    const scale = f.readFloat32("transformer.layers.2.mlp.fc.per_channel_scale");
    const hf = SafetensorsFile.open(path.join(FIXTURES, name, "hf", "model.safetensors"));
    for (let e = 0; e < 4; e++) {
      const up = hf.readFloat32(`model.layers.2.mlp.experts.${e}.up_proj.weight`);
      const gate = hf.readFloat32(`model.layers.2.mlp.experts.${e}.gate_proj.weight`);
      for (let o = 0; o < 64; o++)
        for (let i = 0; i < 64; i++) {
          const w = o < 32 ? up[o * 64 + i] : gate[(o - 32) * 64 + i];
          const got = q[e * 64 * 64 + i * 64 + o] * scale[e * 64 + o];
          assert.ok(Math.abs(got - w) <= scale[e * 64 + o] * (1 + 1e-6), `expert ${e} [${o}, ${i}]`);
        }
    }
    hf.close();
    f.close();
    const llm = await LLM.load(engine);
    const { worst, std } = contextLogitError(llm, loadReference(name));
    llm.dispose();
    console.log(`# ${name}: int8 weight-only experts, max |Δlogit| / std(logits) ${(worst / std).toFixed(4)}`);
    // Random experts make routing flip on small changes, which the dense fixtures do not (int8 there: 0.09–0.20).
    assert.ok(worst / std > 1e-4 && worst / std < 1, `${worst / std}`);
  });

  test("a split the model cannot take is refused naming the numbers; MoE quantizes weight-only; cuda refuses quantized experts", async () => {
    const cfg = unifiedConfigFromHf(path.join(FIXTURES, "mixtral_top2", "hf"), "float32");
    assert.throws(
      () =>
        validateMoeSplit(
          { ...cfg, moe: { ...(cfg.moe as object), num_experts: 6 } },
          new Mapping({ tpSize: 4, moeEpSize: 4 }),
        ),
      /--moe_ep_size 4 does not divide the model's 6 experts/,
    );
    assert.throws(
      () => validateMoeSplit({ ...cfg, moe_intermediate_size: 50 }, new Mapping({ tpSize: 4, moeTpSize: 4 })),
      /--moe_tp_size 4 does not divide the experts' intermediate size 50/,
    );
    const out = path.join(work, "never");
    await assert.rejects(
      convertHfCheckpoint({
        modelDir: path.join(FIXTURES, "qwen2_moe_shared", "hf"),
        outputDir: out,
        dtype: "float32",
        smoothquant: { alpha: 0.5, perToken: true, perChannel: true, calibSize: 2 },
      }),
      /mixture-of-experts model quantizes weight-only/,
    );
    assert.ok(!fs.existsSync(out));
    const int8 = path.join(work, "mixtral-int8-ckpt");
    await convertHfCheckpoint({
      modelDir: path.join(FIXTURES, "mixtral_top2", "hf"),
      outputDir: int8,
      dtype: "float32",
      weightOnlyBits: 8,
    });
    await assert.rejects(
      buildEngine({ checkpointDir: int8, outputDir: out, backend: "cuda", request: {} }),
      /mlp\.fc\.weight: quantized experts do not run on the cuda backend yet/,
    );
    assert.ok(!fs.existsSync(out));
  });
});
