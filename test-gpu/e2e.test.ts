// Fixtures through convert → build --backend cuda → run on the GPU, against what transformers recorded:
// float32 engines within 1e-3 with identical greedy ids; a batch gives what each prompt gives alone.
// bfloat16 engines: two bfloat16 implementations differ by their rounding noise, which on these fixtures
// (logits up to ±6) is ~0.1, as transformers' own bfloat16 run differs from its float32 run by that much;
// so the check is that kiln's bfloat16 logits are at most 1.5× as far from transformers' bfloat16 logits, and
// from its float32 ones, as transformers' bfloat16 logits are from its float32 ones. GPU machine only.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { moeRoutingProbe } from "../src/backends/cpu/moe-kernel.js";
import { buildEngine } from "../src/builder/build-engine.js";
import { type ConvertOptions, convertHfCheckpoint } from "../src/checkpoint/convert-hf.js";
import { SafetensorsFile } from "../src/checkpoint/safetensors.js";
import { LLM } from "../src/runtime/llm.js";
import { FIXTURE_NAMES, FIXTURES, loadReference, maxAbsDiff, stackRows, succeeded, tempDir } from "../test/helpers.js";

const work = tempDir("kiln-gpu-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

async function cudaEngine(name: string, dtype: "float32" | "bfloat16"): Promise<LLM> {
  const ckpt = path.join(work, `${name}-${dtype}-ckpt`);
  const engine = path.join(work, `${name}-${dtype}-engine`);
  await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype });
  await buildEngine({
    checkpointDir: ckpt,
    outputDir: engine,
    backend: "cuda",
    request: { gather_context_logits: true, max_batch_size: 8 },
  });
  return LLM.load(engine);
}

for (const name of FIXTURE_NAMES) {
  describe(`cuda parity: ${name}`, () => {
    const ref = loadReference(name);
    const prompts = ref.prompts.map((p) => p.inputIds);

    test("float32: logits within 1e-3 of transformers, greedy ids identical, batched = alone", async () => {
      const llm = await cudaEngine(name, "float32");
      const outs = succeeded(llm.generate(prompts, { maxNewTokens: 16, endId: ref.eosId }));
      let worst = 0;
      ref.prompts.forEach((p, i) => {
        worst = Math.max(worst, maxAbsDiff(stackRows(outs[i].contextLogits!, ref.vocab), p.contextLogits));
        assert.deepEqual(outs[i].outputIds, p.greedyIds, `prompt ${i}`);
        assert.deepEqual(
          succeeded(llm.generate([p.inputIds], { maxNewTokens: 16, endId: ref.eosId }))[0].outputIds,
          outs[i].outputIds,
        );
      });
      console.log(`# ${name} float32 max |Δlogit| ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-3, `max |Δlogit| ${worst}`);
      assert.equal(llm.numFreeKvBlocks, llm.numKvBlocks);
    });

    test("bfloat16: within transformers' own bfloat16 rounding noise", () => bf16WithinHfNoise(name));
  });
}

describe("the runtime on the cuda backend", () => {
  const ref = loadReference("qwen2_tied_gqa");

  async function engine(request: Record<string, unknown>): Promise<LLM> {
    const ckpt = path.join(work, "runtime-ckpt");
    if (!fs.existsSync(ckpt))
      await convertHfCheckpoint({
        modelDir: path.join(FIXTURES, "qwen2_tied_gqa", "hf"),
        outputDir: ckpt,
        dtype: "float32",
      });
    const dir = path.join(work, `runtime-engine-${JSON.stringify(request).replace(/\W/g, "")}`);
    await buildEngine({ checkpointDir: ckpt, outputDir: dir, backend: "cuda", request });
    return LLM.load(dir);
  }

  test("arrivals mid-run, chunked prompts and KV reuse give what each request gives alone; dispose frees the GPU", async () => {
    const { CudaDevice } = await import("../src/backends/cuda/driver.js");
    const device = CudaDevice.open();
    const before = device.memInfo().free;
    const llm = await engine({ max_batch_size: 4, max_num_tokens: 32, tokens_per_block: 16 });
    const prompts = [
      ...ref.prompts.map((p) => p.inputIds),
      [...ref.prompts[3].inputIds, 5, 6, 7],
      ref.prompts[3].inputIds.slice(0, 33),
    ];
    const opts = { maxNewTokens: 10, endId: null };
    const alone = prompts.map((p) => succeeded(llm.generate([p], opts))[0].outputIds);
    const requests = [];
    for (const p of prompts) {
      requests.push(llm.submit(p, opts));
      llm.step();
    }
    while (llm.hasWork) llm.step();
    for (const [i, r] of requests.entries()) assert.deepEqual(llm.result(r).outputIds, alone[i], `prompt ${i}`);
    // The solo runs left their full 16-token blocks in the prefix cache, so the requests sharing them reuse them.
    assert.ok(requests.slice(4).every((r) => llm.result(r).numComputedPromptTokens < r.promptIds.length));
    assert.equal(llm.numFreeKvBlocks, llm.numKvBlocks);
    llm.dispose();
    const after = device.memInfo().free;
    assert.ok(
      Math.abs(after - before) < 64 * 2 ** 20,
      `GPU memory not returned: ${((before - after) / 2 ** 20).toFixed(1)} MiB held`,
    );
  });
});

describe("long contexts on the cuda backend", () => {
  test("decode over a 400-token context (split attention) matches the cpu engine's logits and tokens", async () => {
    const ckpt = path.join(work, "long-ckpt");
    await convertHfCheckpoint({
      modelDir: path.join(FIXTURES, "llama3_rope_scaling", "hf"),
      outputDir: ckpt,
      dtype: "float32",
    });
    const request = { gather_generation_logits: true, max_batch_size: 4 };
    await buildEngine({ checkpointDir: ckpt, outputDir: path.join(work, "long-cuda"), backend: "cuda", request });
    await buildEngine({ checkpointDir: ckpt, outputDir: path.join(work, "long-cpu"), backend: "cpu", request });
    const gpu = await LLM.load(path.join(work, "long-cuda"));
    const cpu = await LLM.load(path.join(work, "long-cpu"));
    const prompts = [
      Array.from({ length: 400 }, (_, i) => (i * 37) % 384),
      Array.from({ length: 300 }, (_, i) => (i * 11 + 5) % 384),
    ];
    const opts = { maxNewTokens: 8, endId: null };
    const a = succeeded(gpu.generate(prompts, opts));
    const b = succeeded(cpu.generate(prompts, opts));
    let worst = 0;
    a.forEach((o, i) => {
      assert.deepEqual(o.outputIds, b[i].outputIds, `prompt ${i}`);
      o.generationLogits!.forEach((row, k) => {
        worst = Math.max(worst, maxAbsDiff(row, b[i].generationLogits![k]));
      });
    });
    console.log(`# long context float32 generation logits, cuda vs cpu: max |Δ| ${worst.toExponential(2)}`);
    assert.ok(worst < 1e-3);
    gpu.dispose();
  });
});

describe("weight-only engines on the gpu", () => {
  test("W8A16, W4A16 and W4A16_GPTQ float32 engines give the cpu engine's logits (within 1e-3) and greedy ids", async () => {
    const name = "qwen2_tied_gqa";
    const ref = loadReference(name);
    const prompts = ref.prompts.map((p) => p.inputIds);
    for (const bits of [8, 4, "gptq"] as const) {
      const ckpt = path.join(work, `wo${bits}-ckpt`);
      await convertHfCheckpoint({
        modelDir: path.join(FIXTURES, name, "hf"),
        outputDir: ckpt,
        dtype: "float32",
        ...(bits === "gptq"
          ? { gptq: { groupSize: 32, calibSize: 8, calibDataset: calibFile() } }
          : { weightOnlyBits: bits }),
      });
      const [gpu, cpu] = await onBothBackends(ckpt, prompts, ref.eosId);
      let worst = 0;
      gpu.forEach((o, i) => {
        worst = Math.max(
          worst,
          maxAbsDiff(stackRows(o.contextLogits!, ref.vocab), stackRows(cpu[i].contextLogits!, ref.vocab)),
        );
        assert.deepEqual(o.outputIds, cpu[i].outputIds, `int${bits} prompt ${i}`);
      });
      console.log(`# int${bits} weight-only, cuda vs cpu: max |Δlogit| ${worst.toExponential(2)}`);
      assert.ok(worst <= 1e-3, `int${bits}: ${worst}`);
    }
  });
});

describe("quantized engines on the gpu: ModelOpt formats and KV caches", () => {
  // hidden 64, intermediate 128: every in_features divides by AWQ's block of 64 and NVFP4's 16.
  const name = "llama3_rope_scaling";
  const cases: [string, Partial<ConvertOptions>][] = [
    ...(["fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"] as const).map(
      (qformat): [string, Partial<ConvertOptions>] => [
        qformat,
        { quantize: { qformat, awqBlockSize: 64, quantizeLmHead: false, calibSize: 8, calibDataset: calibFile() } },
      ],
    ),
    ["INT8 KV cache", { int8KvCache: { calibSize: 8, calibDataset: calibFile() } }],
    ...(
      [
        [true, true],
        [false, false],
      ] as const
    ).map(([perToken, perChannel]): [string, Partial<ConvertOptions>] => [
      `SmoothQuant ${perChannel ? "per channel" : "per tensor"} ${perToken ? "per token" : "static"}`,
      { smoothquant: { alpha: 0.5, perToken, perChannel, calibSize: 8, calibDataset: calibFile() } },
    ]),
    [
      "fp8 with an FP8 KV cache",
      {
        quantize: {
          qformat: "fp8",
          kvCacheDtype: "fp8",
          awqBlockSize: 64,
          quantizeLmHead: false,
          calibSize: 8,
          calibDataset: calibFile(),
        },
      },
    ],
  ];
  test("float32 engines of each give the cpu engine's context and generation logits and greedy ids", async () => {
    const ref = loadReference(name);
    const prompts = ref.prompts.map((p) => p.inputIds);
    for (const [qformat, quantization] of cases) {
      const ckpt = path.join(work, `${qformat}-ckpt`.replaceAll(" ", "-"));
      await convertHfCheckpoint({
        modelDir: path.join(FIXTURES, name, "hf"),
        outputDir: ckpt,
        dtype: "float32",
        ...quantization,
      });
      const [gpu, cpu] = await onBothBackends(ckpt, prompts, ref.eosId, true);
      // Context logits come from the prefill (dequantized weights, cuBLAS), generation logits from decode
      // steps (the GEMV that rounds the input and decodes the weights as it reads them; for the first prompt
      // alone, the one-row kernels that fuse the norms, RoPE and SiLU in too).
      let worst = 0;
      let formatError = 0;
      let rowsOff = 0;
      let rowsAll = 0;
      const offRows: string[] = [];
      gpu.forEach((o, i) => {
        const rows = [...o.contextLogits!, ...o.generationLogits!];
        const want = [...cpu[i].contextLogits!, ...cpu[i].generationLogits!];
        const contextRows = o.contextLogits!.length;
        for (const [k, row] of rows.entries()) {
          const d = maxAbsDiff(row, want[k]);
          worst = Math.max(worst, d);
          if (d > 1e-3) {
            rowsOff++;
            const at = k < contextRows ? `context ${k}` : `generation ${k - contextRows}`;
            offRows.push(`prompt ${i} ${at}: ${d.toExponential(2)}`);
          }
          rowsAll++;
        }
        formatError = Math.max(
          formatError,
          maxAbsDiff(stackRows(cpu[i].contextLogits!, ref.vocab), ref.prompts[i % prompts.length].contextLogits),
        );
        assert.deepEqual(o.outputIds, cpu[i].outputIds, `${qformat} prompt ${i}`);
      });
      // Both backends round the same values the same way, but float32 sums in another order can move a value
      // across an int8 rounding boundary: per-token SmoothQuant flips a code now and then (on the emulator one
      // row of 150 past 1e-3, 1.17e-2; on an H200 at 6a7da45 six: isolated context and generation rows,
      // 6.5e-3 to 3.4e-2, a flip and the rows after it that see its key, 0.11 of the format's own error).
      // So: every logits row within 1e-3 but a few (at most 1 in 20), and those within a fifth of the
      // format's own error against transformers' float32 logits; a wrong scale or code moves every row.
      console.log(
        `# ${qformat}, cuda vs cpu: max |Δlogit| ${worst.toExponential(2)}, ${rowsOff} of ${rowsAll} rows past 1e-3 (the format's own error ${formatError.toExponential(2)})`,
      );
      // Where they are says what moved them: a flipped code shows as a first row off, then the rows after it.
      if (offRows.length > 0) console.log(`# ${qformat}, rows past 1e-3: ${offRows.join("; ")}`);
      assert.ok(
        rowsOff <= Math.max(1, rowsAll / 20),
        `${qformat}: ${rowsOff} of ${rowsAll} logits rows differ by more than 1e-3`,
      );
      assert.ok(worst <= Math.max(1e-3, 0.2 * formatError), `${qformat}: ${worst}`);
    }
  });
});

describe("mixture-of-experts models on the gpu", () => {
  for (const name of ["qwen2_moe_shared", "mixtral_top2"]) {
    test(`${name}: float32 context logits within 1e-3 of transformers, greedy ids identical, cpu's generation logits`, async () => {
      const ref = loadReference(name);
      const ckpt = path.join(work, `${name}-ckpt`);
      await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype: "float32" });
      const prompts = ref.prompts.map((p) => p.inputIds);
      const [gpu, cpu] = await onBothBackends(ckpt, prompts, ref.eosId);
      let worst = 0;
      let decode = 0;
      ref.prompts.forEach((p, i) => {
        worst = Math.max(worst, maxAbsDiff(stackRows(gpu[i].contextLogits!, ref.vocab), p.contextLogits));
        decode = Math.max(
          decode,
          maxAbsDiff(stackRows(gpu[i].generationLogits!, ref.vocab), stackRows(cpu[i].generationLogits!, ref.vocab)),
        );
        assert.deepEqual(gpu[i].outputIds, p.greedyIds, `prompt ${i}`);
      });
      console.log(`# ${name} float32 max |Δlogit| ${worst.toExponential(2)}; decode vs cpu ${decode.toExponential(2)}`);
      assert.ok(worst <= 1e-3 && decode <= 1e-3, `${worst}, ${decode}`);
    });
    test(`${name}: bfloat16 within transformers' own bfloat16 rounding noise, up to each prompt's first near-tie route`, async () => {
      // A random router puts some tokens within a rounding error of choosing other experts; there two bfloat16
      // runs may route differently, and every later position of the prompt sees the other route through the
      // cache. So each prompt is compared up to its first row whose top-k margin (float32, cpu) is under 5e-3,
      // 2% of the ~0.25 each of four experts gets: what bfloat16's 8-bit mantissa leaves of the router's input.
      const ckpt = path.join(work, `${name}-margins-ckpt`);
      await convertHfCheckpoint({ modelDir: path.join(FIXTURES, name, "hf"), outputDir: ckpt, dtype: "float32" });
      const dir = `${ckpt}-engine`;
      await buildEngine({ checkpointDir: ckpt, outputDir: dir, backend: "cpu", request: { max_batch_size: 1 } });
      const cpu = await LLM.load(dir);
      const decisive = loadReference(name).prompts.map((p) => {
        const least = new Float64Array(p.inputIds.length).fill(1);
        moeRoutingProbe.margins = (m) =>
          m.forEach((v, r) => {
            least[r] = Math.min(least[r], v);
          });
        succeeded(cpu.generate([p.inputIds], { maxNewTokens: 1, endId: null }));
        moeRoutingProbe.margins = undefined;
        const firstTie = least.findIndex((v) => v < 5e-3);
        return firstTie < 0 ? p.inputIds.length : firstTie;
      });
      cpu.dispose();
      await bf16WithinHfNoise(name, decisive);
    });
  }
});

/**
 * A bfloat16 cuda engine's context logits against transformers' bfloat16 run (reference_bf16.safetensors, by
 * scripts/record_bf16.py on the GPU machine): at most 1.5× as far from it, and from transformers' float32
 * logits, as transformers' bfloat16 logits are from its float32 ones (two independent bfloat16 errors of one
 * size differ by about √2 of it).
 */
async function bf16WithinHfNoise(name: string, rowsOf?: number[]): Promise<void> {
  const ref = loadReference(name);
  const rec = SafetensorsFile.open(path.join(FIXTURES, name, "reference_bf16.safetensors"));
  const llm = await cudaEngine(name, "bfloat16");
  const outs = succeeded(
    llm.generate(
      ref.prompts.map((p) => p.inputIds),
      { maxNewTokens: 16, endId: ref.eosId },
    ),
  );
  let vsHfBf16 = 0;
  let vsHfFp32 = 0;
  let hfNoise = 0;
  let sameGreedy = 0;
  ref.prompts.forEach((p, i) => {
    const n = (rowsOf?.[i] ?? p.inputIds.length) * ref.vocab;
    const ours = stackRows(outs[i].contextLogits!, ref.vocab).subarray(0, n);
    const hf = rec.readFloat32(`prompt${i}.context_logits`).subarray(0, n);
    const fp32 = p.contextLogits.subarray(0, n);
    vsHfBf16 = Math.max(vsHfBf16, maxAbsDiff(ours, hf));
    vsHfFp32 = Math.max(vsHfFp32, maxAbsDiff(ours, fp32));
    hfNoise = Math.max(hfNoise, maxAbsDiff(hf, fp32));
    if (JSON.stringify(Array.from(rec.readFloat32(`prompt${i}.greedy_ids`))) === JSON.stringify(outs[i].outputIds))
      sameGreedy++;
  });
  rec.close();
  console.log(
    `# ${name} bfloat16${rowsOf ? ` (rows compared ${rowsOf.join("/")} of ${ref.prompts.map((p) => p.inputIds.length).join("/")})` : ""} max |Δlogit| vs transformers bf16 ${vsHfBf16.toExponential(2)}, vs fp32 ${vsHfFp32.toExponential(2)}; transformers bf16 vs fp32 ${hfNoise.toExponential(2)}; greedy identical to transformers bf16 ${sameGreedy}/${ref.prompts.length}`,
  );
  assert.ok(vsHfBf16 <= 1.5 * hfNoise, `vs transformers bf16 ${vsHfBf16} > 1.5 × its own noise ${hfNoise}`);
  assert.ok(vsHfFp32 <= 1.5 * hfNoise, `vs float32 ${vsHfFp32} > 1.5 × ${hfNoise}`);
  llm.dispose();
}

/** A checkpoint's engines for cuda and cpu (gathering every logit), each run on the prompts: [cuda, cpu]. */
/**
 * The prompts generated together on each backend; with `aloneToo`, the first prompt generated by itself as
 * well (one-row decode steps, which take kernels of their own on the cuda backend), as one more output.
 */
async function onBothBackends(ckpt: string, prompts: number[][], endId: number, aloneToo = false) {
  const runs = [];
  for (const backend of ["cuda", "cpu"] as const) {
    const engine = `${ckpt}-${backend}`;
    await buildEngine({
      checkpointDir: ckpt,
      outputDir: engine,
      backend,
      request: { gather_context_logits: true, gather_generation_logits: true, max_batch_size: 8 },
    });
    const llm = await LLM.load(engine);
    const outputs = succeeded(llm.generate(prompts, { maxNewTokens: 16, endId }));
    if (aloneToo) outputs.push(...succeeded(llm.generate([prompts[0]], { maxNewTokens: 16, endId })));
    runs.push(outputs);
    llm.dispose();
  }
  return runs;
}

/** A small calibration text (the GPU machine's slimmed node_modules has no Brown corpus). */
function calibFile(): string {
  const file = path.join(work, "calib.txt");
  const lines = [
    "The jury said it did find that many of the city's laws were outmoded.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Numbers such as 1,234 and 3.14 appear in text as often as words do.",
    "She asked whether the meeting would start before or after lunch.",
    "A small model trained on a real corpus can still tell nouns from verbs.",
    "The committee approved the budget after a long debate on Tuesday.",
    "Rain fell on the roofs of the old town all through the night.",
    "He wrote the letter twice, then decided not to send it at all.",
  ];
  fs.writeFileSync(file, `${lines.join("\n")}\n`);
  return file;
}
