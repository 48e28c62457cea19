// Multi-rank runs on the cuda backend: `kiln run` on a cuda engine split by tp, pp and cp starts one process per
// rank, each on GPU (local rank mod the GPUs there are), and the ranks' logits and greedy ids equal the
// single-rank cuda run's (which test-gpu/e2e.test.ts holds to transformers). Ranks that share a GPU exchange
// through the host and run every step eagerly; ranks with a GPU each exchange through NCCL and replay decode
// steps as CUDA graphs (on the emulator: KILN_EMU_GPUS GPUs and its NCCL stand-in, test/cuda-emu/nccl.cpp).

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { CudaDevice } from "../src/backends/cuda/driver.js";
import { Mapping, type MappingSizes } from "../src/mapping.js";
import { FIXTURES, loadReference, maxAbsDiff, tempDir } from "../test/helpers.js";
import {
  flatLogits,
  kilnRun,
  layoutName,
  type RunJson,
  runJson,
  splitEngine,
  writePrompts,
} from "../test/rank-runs.js";
import { answer, type Completion, type Served, serve, servingPids, stopServers } from "../test/serve-runs.js";

const work = tempDir("kiln-gpu-ranks-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

const built = new Map<string, Promise<string>>();

/**
 * A cuda engine of `fixture` split by `sizes` (built once), gathering context logits unless `gather` is false:
 * an engine that gathers logits runs every step eagerly, one that does not replays decode steps as graphs.
 */
function cudaEngine(
  fixture: string,
  sizes: MappingSizes,
  dtype: "float32" | "bfloat16" = "float32",
  gather = true,
): Promise<string> {
  const tag = `${fixture}-${layoutName(sizes) || "single"}-${dtype}${gather ? "" : "-greedy"}`;
  let engine = built.get(tag);
  if (!engine) {
    engine = splitEngine({
      modelDir: path.join(FIXTURES, fixture, "hf"),
      dir: work,
      tag,
      sizes,
      backend: "cuda",
      dtype,
      gatherContextLogits: gather,
    });
    built.set(tag, engine);
  }
  return engine;
}

// qwen2_tied_gqa: 4 heads, 2 KV heads, 2 layers, tied lm_head and a qkv bias (the bias added by tp rank 0 only
// where it is row-parallel). qwen2_untied_mqa: one KV head, which tp 2 repeats on both ranks, and 3 layers.
for (const fixture of ["qwen2_tied_gqa", "qwen2_untied_mqa"]) {
  describe(`cuda ${fixture}: split runs equal the single-rank cuda run`, async () => {
    const prompts = writePrompts(
      work,
      fixture,
      loadReference(fixture).prompts.map((p) => p.inputIds),
    );
    let single: RunJson | null = null;
    const reference = async () => {
      single ??= runJson(await cudaEngine(fixture, {}), prompts, work, `${fixture}-single`);
      return single;
    };
    // cp: each rank embeds, projects and runs the MLP on its chunk of the step; attention gathers every
    // chunk's q/k/v through the host and runs over the whole step (models/decoder.ts).
    const layouts: MappingSizes[] = [
      { tpSize: 2 },
      { ppSize: 2 },
      { tpSize: 2, ppSize: 2 },
      { cpSize: 2 },
      { tpSize: 2, cpSize: 2 },
    ];
    for (const sizes of layouts) {
      test(`float32 ${layoutName(sizes)}: context logits within 1e-3, greedy ids identical`, async () => {
        const want = await reference();
        const engine = await cudaEngine(fixture, sizes);
        const world = new Mapping(sizes).worldSize;
        for (let r = 0; r < world; r++) assert.ok(fs.existsSync(path.join(engine, `rank${r}.engine`)), `rank${r}`);
        const got = runJson(engine, prompts, work, `${fixture}-${layoutName(sizes)}`);
        assert.deepEqual(got.output_ids, want.output_ids);
        const diff = maxAbsDiff(flatLogits(got), flatLogits(want));
        console.log(`# cuda ${fixture} ${layoutName(sizes)}: max |Δlogit| vs one rank ${diff.toExponential(2)}`);
        assert.ok(diff <= 1e-3, `max |Δlogit| ${diff}`);
      });
    }
  });
}

const device = CudaDevice.open();
const emulated = device.name.startsWith("kiln CUDA emulator");
const gpus = CudaDevice.count();

describe("ranks with a GPU each exchange through NCCL, and decode steps replay CUDA graphs", () => {
  const fixture = "qwen2_tied_gqa";
  const prompts = writePrompts(
    work,
    `${fixture}-nccl`,
    loadReference(fixture).prompts.map((p) => p.inputIds),
  );
  // NCCL or a one-line refusal, never host staging; graph statistics on rank 0's stderr.
  const env = { KILN_COLLECTIVES: "nccl", KILN_CUDA_GRAPH_STATS: "1", ...(emulated ? { KILN_EMU_GPUS: "4" } : {}) };
  let single: { logits: RunJson; greedy: RunJson } | null = null;
  const reference = async () => {
    single ??= {
      logits: runJson(await cudaEngine(fixture, {}), prompts, work, "nccl-single"),
      greedy: runJson(await cudaEngine(fixture, {}, "float32", false), prompts, work, "nccl-single-greedy"),
    };
    return single;
  };
  for (const sizes of [{ tpSize: 2 }, { ppSize: 2 }, { tpSize: 2, ppSize: 2 }] as MappingSizes[]) {
    const world = new Mapping(sizes).worldSize;
    const name = layoutName(sizes);
    // Said in the test's name and the TAP output: a machine of one GPU cannot give two ranks a GPU each.
    const skip = !emulated && gpus < world ? `needs ${world} GPUs; this machine has ${gpus}` : false;
    test(`float32 ${name} over NCCL: logits within 1e-3; greedy ids identical, decode steps replayed as graphs`, {
      skip,
    }, async () => {
      const want = await reference();
      const got = runJson(await cudaEngine(fixture, sizes), prompts, work, `nccl-${name}`, env);
      assert.deepEqual(got.output_ids, want.logits.output_ids);
      const diff = maxAbsDiff(flatLogits(got), flatLogits(want.logits));
      console.log(`# cuda NCCL ${name}: max |Δlogit| vs one rank ${diff.toExponential(2)}`);
      assert.ok(diff <= 1e-3, `max |Δlogit| ${diff}`);
      const greedy = runJson(await cudaEngine(fixture, sizes, "float32", false), prompts, work, `nccl-${name}-g`, env);
      assert.deepEqual(greedy.output_ids, want.greedy.output_ids);
      assert.deepEqual(greedy.output_ids, want.logits.output_ids);
      const stats = /kiln cuda steps: (\d+) graph replays.*/.exec(greedy.stderr ?? "");
      const replays = Number(stats?.[1]);
      console.log(`# cuda NCCL ${name}, engine without logits: ${stats?.[0]}`);
      assert.ok(replays > 0, `decode steps replayed no graph: ${greedy.stderr}`);
    });
  }

  test("sampling (drawn on the GPUs, in replayed graphs) and beam search over NCCL tp2-pp2 choose what one rank chooses", {
    skip: !emulated && gpus < 4 ? `needs 4 GPUs; this machine has ${gpus}` : false,
  }, async () => {
    const one = await cudaEngine(fixture, {}, "float32", false);
    const split = await cudaEngine(fixture, { tpSize: 2, ppSize: 2 }, "float32", false);
    for (const flags of [
      ["--temperature", "0.9", "--top_k", "0", "--top_p", "0.9", "--random_seed", "5"],
      ["--num_beams", "2"],
    ]) {
      const tag = flags.join("").replace(/\W/g, "");
      const a = path.join(work, `nccl-flags-${tag}-a.json`);
      const b = path.join(work, `nccl-flags-${tag}-b.json`);
      const want = kilnRun(one, prompts, a, ["--output_json", a, ...flags]);
      const got = kilnRun(split, prompts, b, ["--output_json", b, ...flags], env);
      assert.deepEqual(got.output_ids, want.output_ids, flags.join(" "));
    }
  });

  test("KILN_COLLECTIVES=nccl with more ranks than GPUs is refused in one line", async () => {
    const engine = await cudaEngine(fixture, { tpSize: 2 });
    const { spawnSync } = await import("node:child_process");
    const { KILN } = await import("../test/rank-runs.js");
    const r = spawnSync(
      process.execPath,
      [KILN, "run", "--engine_dir", engine, "--input_file", prompts, "--max_output_len", "2"],
      {
        encoding: "utf8",
        env: {
          ...process.env,
          KILN_COLLECTIVES: "nccl",
          KILN_EMU_GPUS: "1",
          CUDA_VISIBLE_DEVICES: emulated ? undefined : "0",
        },
      },
    );
    assert.notEqual(r.status, 0);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /KILN_COLLECTIVES=nccl: 2 ranks on this host but 1 GPU: NCCL needs a GPU per rank/);
  });
});

// bfloat16: pipeline stages hand on the residual exactly (bfloat16 → float32 → bfloat16 is lossless), so pp 2
// gives the single-rank bits. Under tp each rank's partial dense and proj sums stay float32 until they are
// summed and rounded once, as the single-rank GEMM rounds them; only the float32 order of the sums differs
// (rounding each partial to bfloat16 first had put tp 2 × pp 2 6.9e-2 from the single rank on this fixture,
// on an H200 and on the emulator). The bound for split runs is 2e-2.
describe("cuda bfloat16 split runs", () => {
  const fixture = "qwen2_tied_gqa";
  const prompts = writePrompts(
    work,
    `${fixture}-bf16`,
    loadReference(fixture).prompts.map((p) => p.inputIds),
  );
  let single: RunJson | null = null;
  const reference = async () => {
    single ??= runJson(await cudaEngine(fixture, {}, "bfloat16"), prompts, work, "bf16-single");
    return single;
  };

  test("pp2: the single-rank run's logits and greedy ids, bit for bit", async () => {
    const want = await reference();
    const got = runJson(await cudaEngine(fixture, { ppSize: 2 }, "bfloat16"), prompts, work, "bf16-pp2");
    assert.deepEqual(got.output_ids, want.output_ids);
    assert.equal(maxAbsDiff(flatLogits(got), flatLogits(want)), 0);
  });

  test("tp2-pp2: context logits within 2e-2 of the single-rank run, greedy ids identical", async () => {
    const want = await reference();
    const got = runJson(await cudaEngine(fixture, { tpSize: 2, ppSize: 2 }, "bfloat16"), prompts, work, "bf16-4");
    const diff = maxAbsDiff(flatLogits(got), flatLogits(want));
    console.log(`# cuda ${fixture} bfloat16 tp2-pp2: max |Δlogit| vs one rank ${diff.toExponential(2)}`);
    assert.ok(diff <= 2e-2, `max |Δlogit| ${diff} > 2e-2`);
    assert.deepEqual(got.output_ids, want.output_ids);
  });
});

// kiln serve on a split cuda engine: rank 0 serves, the others step in lockstep (runtime/lockstep.ts). Ranks
// that share the GPU exchange through the host; with a GPU each (or on the emulator), through NCCL.
describe("kiln serve on a cuda engine split tp 2", () => {
  after(stopServers);
  test("answers as the single-rank cuda server: greedy, seeded sampling, streamed; drains on SIGTERM", async () => {
    const fixture = "qwen2_tied_gqa";
    const env = emulated ? { KILN_EMU_GPUS: "2" } : {};
    const split = await cudaEngine(fixture, { tpSize: 2 }, "float32", false);
    const [one, two] = await Promise.all([serve(await cudaEngine(fixture, {}, "float32", false)), serve(split, env)]);
    const bodies: Completion[] = [
      { model: "m", prompt: "The jury said", max_tokens: 10, temperature: 0 },
      { model: "m", prompt: "It was a", max_tokens: 8, temperature: 0.9, seed: 7, n: 2 },
      { model: "m", prompt: "Once upon", max_tokens: 10, temperature: 0, stream: true },
    ];
    const ask = (s: Served) => Promise.all(bodies.map((b) => answer(s.client, b)));
    const [want, got] = await Promise.all([ask(one), ask(two)]);
    assert.deepEqual(got, want);
    two.proc.kill("SIGTERM");
    one.proc.kill("SIGTERM");
    assert.equal(await two.exited, 0, two.log());
    assert.deepEqual(servingPids(split), [], "no rank left running");
  });
});
