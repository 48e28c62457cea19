// Multi-rank runs on the cpu backend: `kiln run` on an engine split by tp, pp and cp starts one process per
// rank (or runs under mpirun, one rank a process), and the ranks' logits and tokens equal the single-rank
// run's, which test/parity.test.ts holds to transformers.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import type { ConvertOptions } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile, writeSafetensorsFile } from "../src/checkpoint/safetensors.js";
import type { MappingSizes } from "../src/mapping.js";
import { LLM } from "../src/runtime/llm.js";
import { FIXTURE_NAMES, FIXTURES, loadReference, maxAbsDiff, tempDir } from "./helpers.js";
import {
  flatLogits,
  KILN,
  layoutName,
  NEW_TOKENS,
  type RunJson,
  kilnRun as runKiln,
  runJson as runRankJson,
  splitEngine,
  writePrompts as writeRankPrompts,
} from "./rank-runs.js";

const work = tempDir("kiln-ranks-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

type Quantization = Pick<ConvertOptions, "weightOnlyBits" | "gptq" | "smoothquant" | "int8KvCache">;

/** Converts `modelDir` split by `sizes` and builds a cpu engine that gathers context logits. */
function engineFor(modelDir: string, tag: string, sizes: MappingSizes, quant: Quantization = {}): Promise<string> {
  return splitEngine({
    modelDir,
    dir: work,
    tag,
    sizes,
    backend: "cpu",
    dtype: "float32",
    gatherContextLogits: true,
    convert: quant,
  });
}

const writePrompts = (tag: string, prompts: number[][]) => writeRankPrompts(work, tag, prompts);
const runJson = (engine: string, prompts: string, tag: string) => runRankJson(engine, prompts, work, tag);
const kilnRun = (engine: string, prompts: string, out: string, ...extra: string[]) =>
  runKiln(engine, prompts, out, extra);

/** The layouts each fixture's heads and layers allow: tp 2 and 4, pp 2 and 3, cp 2, and tp 2 × pp 2. */
function layouts(cfg: { num_attention_heads: number; num_hidden_layers: number }): MappingSizes[] {
  const all: MappingSizes[] = [
    { tpSize: 2 },
    { tpSize: 4 },
    { ppSize: 2 },
    { ppSize: 3 },
    { cpSize: 2 },
    { tpSize: 2, ppSize: 2 },
  ];
  return all.filter((s) => cfg.num_attention_heads % (s.tpSize ?? 1) === 0 && cfg.num_hidden_layers >= (s.ppSize ?? 1));
}

const name = layoutName;

for (const fixture of FIXTURE_NAMES) {
  describe(`${fixture}: split runs equal the single-rank run`, async () => {
    const hf = path.join(FIXTURES, fixture, "hf");
    const cfg = JSON.parse(fs.readFileSync(path.join(hf, "config.json"), "utf8"));
    const prompts = writePrompts(
      fixture,
      loadReference(fixture).prompts.map((p) => p.inputIds),
    );
    let single: RunJson | null = null;
    const reference = async () => {
      single ??= runJson(await engineFor(hf, `${fixture}-single`, {}), prompts, `${fixture}-single`);
      return single;
    };
    for (const sizes of layouts(cfg)) {
      test(`${name(sizes)}: context logits within 1e-4, greedy ids identical`, async () => {
        const want = await reference();
        const tag = `${fixture}-${name(sizes)}`;
        const got = runJson(await engineFor(hf, tag, sizes), prompts, tag);
        assert.deepEqual(got.output_ids, want.output_ids);
        const diff = maxAbsDiff(flatLogits(got), flatLogits(want));
        assert.ok(diff <= 1e-4, `max |Δlogit| ${diff}`);
      });
    }
  });
}

/** qwen2_tied_gqa deepened to 5 layers (layer i a scaled copy of layer i mod 2): pp 3 splits it 2, 2, 1. */
function fiveLayerModel(): string {
  const src = path.join(FIXTURES, "qwen2_tied_gqa", "hf");
  const dir = path.join(work, "five-layer-hf");
  fs.mkdirSync(dir);
  const cfg = JSON.parse(fs.readFileSync(path.join(src, "config.json"), "utf8"));
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify({ ...cfg, num_hidden_layers: 5 }));
  const f = SafetensorsFile.open(path.join(src, "model.safetensors"));
  const tensors = f.names().flatMap((n) => {
    const m = /^model\.layers\.(\d+)\.(.+)$/.exec(n);
    const data = f.readFloat32(n);
    const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    if (!m) return [{ name: n, dtype: "F32" as const, shape: f.info(n).shape, data: bytes(data) }];
    return [0, 1, 2, 3, 4]
      .filter((i) => i % 2 === Number(m[1]))
      .map((i) => ({
        name: `model.layers.${i}.${m[2]}`,
        dtype: "F32" as const,
        shape: f.info(n).shape,
        data: bytes(data.map((v) => v * (1 + 0.05 * i))),
      }));
  });
  f.close();
  writeSafetensorsFile(path.join(dir, "model.safetensors"), tensors);
  return dir;
}

describe("uneven pipeline, KV heads repeated, mpirun", async () => {
  const hf = fiveLayerModel();
  const prompts = writePrompts("five", [
    [1, 5, 9, 200, 17, 3, 44, 8],
    [7, 7, 2],
  ]);
  const single = runJson(await engineFor(hf, "five-single", {}), prompts, "five-single");

  for (const sizes of [{ ppSize: 3 }, { tpSize: 4, ppSize: 3 }, { tpSize: 4, cpSize: 2 }] as MappingSizes[]) {
    test(`5 layers, ${name(sizes)}: equal to the single-rank run`, async () => {
      const tag = `five-${name(sizes)}`;
      const got = runJson(await engineFor(hf, tag, sizes), prompts, tag);
      assert.deepEqual(got.output_ids, single.output_ids);
      assert.ok(maxAbsDiff(flatLogits(got), flatLogits(single)) <= 1e-4);
    });
  }

  test("sampling and beam search under tp 2 × pp 2 choose what one rank chooses", async () => {
    const engine = await engineFor(hf, "five-tp2-pp2", { tpSize: 2, ppSize: 2 });
    const one = path.join(work, "five-single-engine");
    for (const flags of [
      ["--temperature", "0.9", "--top_k", "0", "--top_p", "0.9", "--random_seed", "5"],
      ["--num_beams", "2"],
    ]) {
      const a = path.join(work, "five-flags-a.json");
      const b = path.join(work, "five-flags-b.json");
      const want = kilnRun(one, prompts, a, "--output_json", a, ...flags);
      const got = kilnRun(engine, prompts, b, "--output_json", b, ...flags);
      assert.deepEqual(got.output_ids, want.output_ids, flags.join(" "));
    }
  });

  test("under mpirun (OpenMPI's rank variables), each process one rank", async () => {
    const engine = path.join(work, "five-pp3-engine");
    const out = path.join(work, "five-mpirun.json");
    const env = { ...process.env, OMPI_COMM_WORLD_SIZE: "3", OMPI_MCA_ess_base_jobid: `kiln-test-${process.pid}` };
    const ranks = [0, 1, 2].map(
      (rank) =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const c = spawn(
            process.execPath,
            [KILN, "run", "--engine_dir", engine, "--input_file", prompts, "--max_output_len", `${NEW_TOKENS}`].concat(
              rank === 0 ? ["--output_json", out] : [],
            ),
            { env: { ...env, OMPI_COMM_WORLD_RANK: String(rank) } },
          );
          let stdout = "";
          let stderr = "";
          c.stdout.on("data", (d) => {
            stdout += d;
          });
          c.stderr.on("data", (d) => {
            stderr += d;
          });
          c.on("exit", (code) => resolve({ code, stdout, stderr }));
        }),
    );
    const results = await Promise.all(ranks);
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    assert.match(results[0].stdout, /Output \[Text 1 Beam 0\]/);
    assert.equal(results[1].stdout, "", "only rank 0 prints");
    const got: RunJson = JSON.parse(fs.readFileSync(out, "utf8"));
    assert.deepEqual(got.output_ids, single.output_ids);
  });

  test("a world size that does not match the engine under mpirun is one line naming both", () => {
    const engine = path.join(work, "five-pp3-engine");
    const r = spawnSync(
      process.execPath,
      [KILN, "run", "--engine_dir", engine, "--input_file", prompts, "--max_output_len", "2"],
      {
        encoding: "utf8",
        env: { ...process.env, OMPI_COMM_WORLD_SIZE: "2", OMPI_COMM_WORLD_RANK: "0", OMPI_MCA_ess_base_jobid: "x" },
      },
    );
    assert.notEqual(r.status, 0);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /mpirun -n 2.*world_size 3/);
  });

  test("ranks that fail make kiln run fail, saying why once", () => {
    const r = spawnSync(
      process.execPath,
      [
        KILN,
        "run",
        "--engine_dir",
        path.join(work, "five-pp3-engine"),
        "--input_file",
        path.join(work, "none.json"),
        "--max_output_len",
        "2",
      ],
      { encoding: "utf8", env: { ...process.env, KILN_RANK: undefined, OMPI_COMM_WORLD_RANK: undefined } },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /none\.json/);
  });

  test("a split engine loaded in-process without ranks says how to start them", async () => {
    await assert.rejects(
      LLM.load(path.join(work, "five-pp3-engine")),
      /world_size 3 \(tp_size 1 × pp_size 3 × cp_size 1\): run it with kiln run/,
    );
  });
});

describe("quantized checkpoints split tp 2 × pp 2", async () => {
  const hf = path.join(FIXTURES, "qwen2_tied_gqa", "hf");
  const prompts = writePrompts(
    "quant",
    loadReference("qwen2_tied_gqa").prompts.map((p) => p.inputIds),
  );
  const float = flatLogits(runJson(await engineFor(hf, "quant-float", {}), prompts, "quant-float"));
  const calib = { calibSize: 8 };
  const modes: [string, Quantization][] = [
    ["int8 weight-only", { weightOnlyBits: 8 }],
    ["int4 GPTQ, group 16", { gptq: { groupSize: 16, ...calib } }],
    ["SmoothQuant per channel, per token", { smoothquant: { alpha: 0.5, perToken: true, perChannel: true, ...calib } }],
    ["SmoothQuant per tensor", { smoothquant: { alpha: 0.5, perToken: false, perChannel: false, ...calib } }],
    ["INT8 KV cache", { int8KvCache: calib }],
  ];
  for (const [what, quant] of modes) {
    test(`${what}: the split run stays within the single-rank run's quantization error`, async () => {
      const tag = `quant-${what.replace(/\W+/g, "-")}`;
      const one = flatLogits(runJson(await engineFor(hf, `${tag}-1`, {}, quant), prompts, `${tag}-1`));
      const split = flatLogits(
        runJson(await engineFor(hf, `${tag}-4`, { tpSize: 2, ppSize: 2 }, quant), prompts, `${tag}-4`),
      );
      const quantError = maxAbsDiff(one, float);
      assert.ok(quantError > 1e-3, "quantization changes the logits");
      const apart = maxAbsDiff(split, one);
      console.log(
        `# ${what}: max |Δlogit| split vs single ${apart.toFixed(4)}, single vs float ${quantError.toFixed(4)}`,
      );
      assert.ok(apart <= quantError, `split vs single ${apart}, single vs float ${quantError}`);
      assert.ok(maxAbsDiff(split, float) <= 1.5 * quantError);
    });
  }
});
