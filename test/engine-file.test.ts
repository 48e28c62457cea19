// Specification of the rank engine file: "KILNENG\0", u64 LE header length, JSON header, then sections at
// 64-byte-aligned absolute offsets. Round trips first, then each refusal a loader must make.

import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { ENGINE_FORMAT_VERSION, EngineFile, EngineWriter, type SectionSpec } from "../src/builder/engine-file.js";
import type { Dtype } from "../src/checkpoint/dtype.js";
import { EngineError } from "../src/errors.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-engine-file-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;
const tempPath = (): string => path.join(root, `rank${counter++}.engine`);

/** Bytes per element, from each dtype's definition. */
const ELEMENT_BYTES: Partial<Record<Dtype, number>> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I8: 1,
  U8: 1,
  I32: 4,
  I64: 8,
  F8_E4M3: 1,
};

const SECTIONS: SectionSpec[] = [
  { name: "transformer.vocab_embedding.weight", dtype: "F32", shape: [3, 5] }, // 60 bytes
  { name: "transformer.ln_f.weight", dtype: "F16", shape: [7] }, // 14
  { name: "transformer.layers.0.attention.qkv.weight", dtype: "BF16", shape: [2, 3, 4] }, // 48
  { name: "scales", dtype: "I8", shape: [5] }, // 5
  { name: "block", dtype: "U8", shape: [130] }, // 130: spans more than two alignment units
  { name: "ids", dtype: "I64", shape: [2, 2] }, // 32
  { name: "fp8", dtype: "F8_E4M3", shape: [64] }, // exactly one alignment unit
  { name: "counts", dtype: "I32", shape: [1] }, // 4
];

const byteLength = (s: SectionSpec): number => s.shape.reduce((a, b) => a * b, 1) * (ELEMENT_BYTES[s.dtype] ?? 0);

/** Distinct, reproducible bytes for each section. */
function payload(s: SectionSpec, seed: number): Uint8Array {
  const out = new Uint8Array(byteLength(s));
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < out.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

interface Written {
  file: string;
  data: Map<string, Uint8Array>;
}

function writeEngine(
  specs: SectionSpec[] = SECTIONS,
  meta: { backend: "cpu" | "cuda"; target: string; rank: number } = { backend: "cpu", target: "cpu-f32", rank: 0 },
): Written {
  const file = tempPath();
  const w = new EngineWriter(file, meta, specs);
  const data = new Map<string, Uint8Array>();
  specs.forEach((s, i) => {
    const bytes = payload(s, i + 1);
    data.set(s.name, bytes);
    w.write(s.name, bytes);
  });
  w.close();
  return { file, data };
}

function refuses(fn: () => unknown, ...mustName: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof EngineError, `expected an EngineError, got ${String(e)}`);
    for (const s of mustName) assert.ok(e.message.includes(s), `"${e.message}" should name ${s}`);
    return true;
  });
}

const CPU = { backend: "cpu", target: "cpu-f32" } as const;

describe("engine file round trip", () => {
  it("writes the magic and a header length that the header fills", () => {
    const { file } = writeEngine();
    const bytes = fs.readFileSync(file);
    assert.equal(bytes.subarray(0, 8).toString("latin1"), "KILNENG\0");
    const headerLength = Number(bytes.readBigUInt64LE(8));
    const header = JSON.parse(bytes.subarray(16, 16 + headerLength).toString("utf8"));
    assert.equal(header.format_version, ENGINE_FORMAT_VERSION);
    assert.equal(header.sections.length, SECTIONS.length);
  });

  it("gives each section its dtype, shape, byte length and a 64-byte-aligned offset after the header", () => {
    const { file } = writeEngine(SECTIONS, { backend: "cpu", target: "cpu-f32", rank: 3 });
    const bytes = fs.readFileSync(file);
    const headerEnd = 16 + Number(bytes.readBigUInt64LE(8));
    const engine = EngineFile.open(file, CPU);
    try {
      const h = engine.header;
      assert.deepEqual(
        { format_version: h.format_version, backend: h.backend, target: h.target, rank: h.rank },
        { format_version: ENGINE_FORMAT_VERSION, backend: "cpu", target: "cpu-f32", rank: 3 },
      );
      assert.deepEqual(
        h.sections.map((s) => ({ name: s.name, dtype: s.dtype, shape: s.shape })),
        SECTIONS,
      );
      let end = headerEnd;
      for (const s of h.sections) {
        assert.equal(s.byte_length, byteLength(s), s.name);
        assert.equal(s.offset % 64, 0, `${s.name} at ${s.offset}`);
        assert.ok(s.offset >= end, `${s.name} at ${s.offset} overlaps what ends at ${end}`);
        assert.ok(s.offset < end + 64, `${s.name} at ${s.offset}: no more than alignment padding before it`);
        end = s.offset + s.byte_length;
      }
      assert.ok(bytes.length >= end);
    } finally {
      engine.close();
    }
  });

  it("reads back exactly the bytes written, in a buffer a typed array of any width can view", () => {
    const { file, data } = writeEngine();
    const engine = EngineFile.open(file, CPU);
    try {
      for (const s of SECTIONS) {
        assert.ok(engine.has(s.name));
        const got = engine.read(s.name);
        assert.deepEqual(got, data.get(s.name), s.name);
        assert.equal(got.byteOffset, 0);
        assert.equal(got.buffer.byteLength, byteLength(s));
      }
      // Reading is repeatable and order-free.
      const last = SECTIONS[SECTIONS.length - 1].name;
      assert.deepEqual(engine.read(last), data.get(last));
      assert.deepEqual(engine.read(SECTIONS[0].name), data.get(SECTIONS[0].name));
      assert.ok(!engine.has("lm_head.weight"));
      refuses(() => engine.read("lm_head.weight"), file, "lm_head.weight");
    } finally {
      engine.close();
    }
  });

  it("round-trips float32 values through a Float32Array view", () => {
    const spec: SectionSpec = { name: "w", dtype: "F32", shape: [2, 3] };
    const values = new Float32Array([1.5, -2, 3.25, 1e-30, -0, Number.POSITIVE_INFINITY]);
    const file = tempPath();
    const w = new EngineWriter(file, { backend: "cpu", target: "cpu-f32", rank: 0 }, [spec]);
    w.write("w", new Uint8Array(values.buffer));
    w.close();
    const engine = EngineFile.open(file, CPU);
    try {
      const b = engine.read("w");
      assert.deepEqual(new Float32Array(b.buffer, b.byteOffset, 6), values);
    } finally {
      engine.close();
    }
  });

  it("holds an engine with no sections and one with an empty section", () => {
    for (const specs of [[], [{ name: "empty", dtype: "F32", shape: [0, 4] } as SectionSpec, SECTIONS[0]]]) {
      const { file, data } = writeEngine(specs);
      const engine = EngineFile.open(file, CPU);
      try {
        assert.equal(engine.header.sections.length, specs.length);
        for (const s of specs) assert.deepEqual(engine.read(s.name), data.get(s.name));
      } finally {
        engine.close();
      }
    }
  });

  it("keeps section names outside ASCII", () => {
    const specs: SectionSpec[] = [
      { name: "poids.caché.é", dtype: "U8", shape: [64] },
      { name: "层.0", dtype: "F32", shape: [4] },
    ];
    const { file, data } = writeEngine(specs);
    const engine = EngineFile.open(file, CPU);
    try {
      assert.deepEqual(
        engine.header.sections.map((s) => s.name),
        specs.map((s) => s.name),
      );
      for (const s of specs) assert.deepEqual(engine.read(s.name), data.get(s.name));
    } finally {
      engine.close();
    }
  });

  it("accepts any target when the loader asks for none", () => {
    const { file } = writeEngine(SECTIONS, { backend: "cuda", target: "sm_90", rank: 0 });
    const engine = EngineFile.open(file, { backend: "cuda", target: null });
    assert.equal(engine.header.target, "sm_90");
    engine.close();
  });
});

describe("engine file refusals: an EngineError naming the file and what differs", () => {
  it("a file that is not there", () => {
    const missing = path.join(root, "absent.engine");
    refuses(() => EngineFile.open(missing, CPU), missing);
  });

  it("wrong magic", () => {
    const { file } = writeEngine();
    const bytes = fs.readFileSync(file);
    bytes[0] = "X".charCodeAt(0);
    fs.writeFileSync(file, bytes);
    refuses(() => EngineFile.open(file, CPU), file, "magic");
  });

  it("a file too short to hold the magic, and a safetensors file", () => {
    const short = tempPath();
    fs.writeFileSync(short, "KILN");
    refuses(() => EngineFile.open(short, CPU), short, "magic");
    const other = tempPath();
    const header = Buffer.from('{"__metadata__":{}}');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(other, Buffer.concat([len, header]));
    refuses(() => EngineFile.open(other, CPU), other, "magic");
  });

  it("another format_version", () => {
    const { file } = writeEngine();
    const bytes = fs.readFileSync(file);
    // Same digit count, so the header length field stays right.
    const other =
      String(ENGINE_FORMAT_VERSION + 1).length === String(ENGINE_FORMAT_VERSION).length
        ? ENGINE_FORMAT_VERSION + 1
        : ENGINE_FORMAT_VERSION - 1;
    const from = Buffer.from(`"format_version":${ENGINE_FORMAT_VERSION}`);
    const at = bytes.indexOf(from);
    assert.ok(at > 16, "the header holds format_version");
    Buffer.from(`"format_version":${other}`).copy(bytes, at);
    fs.writeFileSync(file, bytes);
    refuses(() => EngineFile.open(file, CPU), file, "format", String(other), String(ENGINE_FORMAT_VERSION));
  });

  it("another backend: a cuda engine opened as cpu", () => {
    const { file } = writeEngine(SECTIONS, { backend: "cuda", target: "cpu-f32", rank: 0 });
    refuses(() => EngineFile.open(file, CPU), file, "backend", "cuda", "cpu");
  });

  it("another target", () => {
    const { file } = writeEngine(SECTIONS, { backend: "cpu", target: "cpu-f16", rank: 0 });
    refuses(() => EngineFile.open(file, CPU), file, "target", "cpu-f16", "cpu-f32");
  });

  it("a section past the end of the file", () => {
    const { file } = writeEngine();
    const last = SECTIONS[SECTIONS.length - 1];
    const engine = EngineFile.open(file, CPU);
    const end = engine.section(last.name).offset + engine.section(last.name).byte_length;
    engine.close();
    fs.truncateSync(file, end - 1);
    refuses(() => EngineFile.open(file, CPU), file, last.name);
  });

  it("a header cut short", () => {
    const { file } = writeEngine();
    fs.truncateSync(file, 40);
    refuses(() => EngineFile.open(file, CPU), file, "header");
  });

  it("a header that is not JSON", () => {
    const { file } = writeEngine();
    const bytes = fs.readFileSync(file);
    bytes[16] = "!".charCodeAt(0);
    fs.writeFileSync(file, bytes);
    refuses(() => EngineFile.open(file, CPU), file, "header");
  });
});

describe("engine writer refusals", () => {
  const meta = { backend: "cpu", target: "cpu-f32", rank: 0 } as const;
  const specs: SectionSpec[] = [
    { name: "a", dtype: "F32", shape: [4] },
    { name: "b", dtype: "F16", shape: [3] },
  ];

  it("a section written out of order", () => {
    const file = tempPath();
    const w = new EngineWriter(file, meta, specs);
    refuses(() => w.write("b", new Uint8Array(6)), file, '"b"');
  });

  it("a section the header does not list, or one written twice", () => {
    const file = tempPath();
    const w = new EngineWriter(file, meta, specs);
    refuses(() => w.write("c", new Uint8Array(16)), file, '"c"');
    w.write("a", new Uint8Array(16));
    refuses(() => w.write("a", new Uint8Array(16)), file, '"a"');
    w.write("b", new Uint8Array(6));
    refuses(() => w.write("b", new Uint8Array(6)), file, '"b"');
    w.close();
  });

  it("a section with the wrong byte length, naming both lengths", () => {
    const file = tempPath();
    const w = new EngineWriter(file, meta, specs);
    refuses(() => w.write("a", new Uint8Array(15)), file, '"a"', "15", "16");
    refuses(() => w.write("a", new Uint8Array(17)), file, '"a"', "17", "16");
  });

  it("closing before every section is written", () => {
    const file = tempPath();
    const w = new EngineWriter(file, meta, specs);
    w.write("a", new Uint8Array(16));
    refuses(() => w.close(), file, '"b"');
  });
});
