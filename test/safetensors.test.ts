// Specification of the safetensors reader, writer and model-directory store.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import { DTYPES, decodeToFloat32, dtypeByteSize } from "../src/checkpoint/dtype.js";
import {
  alignedOrder,
  SafetensorsFile,
  SafetensorsWriter,
  type TensorData,
  writeSafetensorsFile,
} from "../src/checkpoint/safetensors.js";
import { INDEX_FILE, TensorStore } from "../src/checkpoint/tensor-store.js";
import { CheckpointError } from "../src/errors.js";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-safetensors-"));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;
const tempPath = (name = "model.safetensors"): string => {
  const dir = path.join(root, String(counter++));
  fs.mkdirSync(dir);
  return path.join(dir, name);
};

/** Builds a file by hand: u64 LE header length, the header text as given, then the data bytes. */
function handFile(header: string | object, data: number[] = [], lengthField?: bigint): string {
  const text = typeof header === "string" ? header : JSON.stringify(header);
  const json = new TextEncoder().encode(text);
  const n = lengthField ?? BigInt(json.byteLength);
  const prefix = Array.from({ length: 8 }, (_, i) => Number((n >> BigInt(8 * i)) & 0xffn));
  const file = tempPath();
  fs.writeFileSync(file, new Uint8Array([...prefix, ...json, ...data]));
  return file;
}

/** Asserts a CheckpointError whose message contains every fragment. */
function throwsCheckpointError(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CheckpointError, `expected a CheckpointError, got ${e}`);
    for (const f of fragments) assert.ok(e.message.includes(f), `message ${JSON.stringify(e.message)} lacks ${f}`);
    return true;
  });
}

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe("SafetensorsFile reads a file encoded by hand", () => {
  // f32 [1, -2] then bf16 [[1, 3.140625]]; an unpadded 142-byte header, so the data starts at byte 150.
  const header =
    '{"__metadata__":{"format":"pt"},' +
    '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
    '"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}';
  const data = [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x80, 0x3f, 0x49, 0x40];

  it("exposes names in header order, metadata and tensor infos", () => {
    const file = handFile(header, data);
    const st = SafetensorsFile.open(file);
    assert.equal(header.length, 142);
    assert.deepEqual(st.names(), ["a", "b"]);
    assert.deepEqual(st.metadata, { format: "pt" });
    assert.ok(st.has("b") && !st.has("c"));
    assert.deepEqual(st.info("a"), { name: "a", dtype: "F32", shape: [2], byteLength: 8, fileOffset: 150 });
    assert.deepEqual(st.info("b"), { name: "b", dtype: "BF16", shape: [1, 2], byteLength: 4, fileOffset: 158 });
    assert.deepEqual([...st.readFloat32("a")], [1, -2]);
    assert.deepEqual([...st.readFloat32("b")], [1, 3.140625]);
    assert.deepEqual([...st.readBytes("b")], [0x80, 0x3f, 0x49, 0x40]);
    st.close();
    throwsCheckpointError(() => st.readBytes("a"), file, '"a"', "close");
  });

  it("accepts trailing bytes after the last tensor and an empty header", () => {
    const st = SafetensorsFile.open(handFile(header, [...data, 0xaa, 0xbb]));
    assert.deepEqual([...st.readFloat32("a")], [1, -2]);
    st.close();
    const empty = SafetensorsFile.open(handFile("{}"));
    assert.deepEqual(empty.names(), []);
    assert.deepEqual(empty.metadata, {});
    empty.close();
  });

  it("closes its file descriptor when disposed", () => {
    const file = handFile(header, data);
    let escaped: SafetensorsFile;
    {
      using st = SafetensorsFile.open(file);
      escaped = st;
      assert.deepEqual([...st.readFloat32("b")], [1, 3.140625]);
    }
    throwsCheckpointError(() => escaped.readBytes("b"), file, '"b"', "close");
  });

  it("reports a missing tensor with the file and tensor names", () => {
    const file = handFile(header, data);
    const st = SafetensorsFile.open(file);
    throwsCheckpointError(() => st.info("lm_head.weight"), file, '"lm_head.weight"');
    throwsCheckpointError(() => st.readFloat32("lm_head.weight"), file, '"lm_head.weight"');
    st.close();
  });
});

describe("SafetensorsFile validates the header at open", () => {
  const t = (dtype: string, shape: unknown, offsets: unknown) => ({ w: { dtype, shape, data_offsets: offsets } });

  it("rejects a file shorter than 8 bytes", () => {
    const file = tempPath();
    fs.writeFileSync(file, new Uint8Array(5));
    throwsCheckpointError(() => SafetensorsFile.open(file), file, "8-byte");
  });

  it("rejects a header length over 100 MB", () => {
    const file = handFile("{}", [], 200_000_000n);
    throwsCheckpointError(() => SafetensorsFile.open(file), file, "200000000", "limit");
  });

  it("rejects a header length past the end of the file", () => {
    const file = handFile("{}", [], 64n);
    throwsCheckpointError(() => SafetensorsFile.open(file), file, "truncated");
  });

  it("rejects a header that is not JSON, or not an object", () => {
    const bad = handFile('{"w": {"dtype": "F32",');
    throwsCheckpointError(() => SafetensorsFile.open(bad), bad, "JSON");
    const array = handFile("[1, 2]");
    throwsCheckpointError(() => SafetensorsFile.open(array), array, "object");
    const meta = handFile({ __metadata__: { step: 3 } });
    throwsCheckpointError(() => SafetensorsFile.open(meta), meta, "__metadata__", "string");
  });

  it("rejects an unknown dtype, naming the tensor", () => {
    const file = handFile(t("F128", [1], [0, 16]), new Array(16).fill(0));
    throwsCheckpointError(() => SafetensorsFile.open(file), file, '"w"', "F128");
  });

  it("rejects shapes that are not arrays of non-negative integers", () => {
    for (const shape of [[-1], [1.5], "4", [null]]) {
      const file = handFile(t("U8", shape, [0, 0]));
      throwsCheckpointError(() => SafetensorsFile.open(file), file, '"w"', "shape");
    }
  });

  it("rejects data_offsets that are not [begin, end] with begin ≤ end", () => {
    for (const offsets of [[4, 0], [0], [0, 4, 8], [-4, 0], ["0", "4"]]) {
      const file = handFile(t("U8", [4], offsets), [0, 0, 0, 0, 0, 0, 0, 0]);
      throwsCheckpointError(() => SafetensorsFile.open(file), file, '"w"', "data_offsets");
    }
  });

  it("rejects offsets whose span does not match shape × dtype size", () => {
    const file = handFile(t("F32", [2, 2], [0, 12]), new Array(16).fill(0));
    throwsCheckpointError(() => SafetensorsFile.open(file), file, '"w"', "12 bytes", "expected 16");
  });

  it("rejects a tensor ending past the data buffer (a truncated file)", () => {
    const file = tempPath();
    writeSafetensorsFile(file, [{ name: "embed", dtype: "F32", shape: [4], data: new Uint8Array(16) }]);
    fs.truncateSync(file, fs.statSync(file).size - 1);
    throwsCheckpointError(() => SafetensorsFile.open(file), file, '"embed"', "truncated");
  });

  it("rejects overlapping tensors, naming both", () => {
    const header = {
      x: { dtype: "U8", shape: [4], data_offsets: [0, 4] },
      y: { dtype: "U8", shape: [4], data_offsets: [2, 6] },
    };
    const file = handFile(header, [0, 0, 0, 0, 0, 0]);
    throwsCheckpointError(() => SafetensorsFile.open(file), file, '"x"', '"y"', "overlaps");
  });

  it("allows empty tensors anywhere", () => {
    const header = {
      x: { dtype: "U8", shape: [4], data_offsets: [0, 4] },
      e: { dtype: "F32", shape: [0, 3], data_offsets: [2, 2] },
    };
    const st = SafetensorsFile.open(handFile(header, [1, 2, 3, 4]));
    assert.deepEqual([...st.readFloat32("e")], []);
    st.close();
  });

  it("reports a file that does not exist", () => {
    const file = path.join(root, "absent.safetensors");
    throwsCheckpointError(() => SafetensorsFile.open(file), file);
  });
});

describe("SafetensorsWriter", () => {
  const filled = (n: number, seed: number): Uint8Array => new Uint8Array(n).map((_, i) => (i * 37 + seed) & 0xff);
  const tensors: TensorData[] = DTYPES.map((dtype, i) => ({
    name: `layers.${i}.${dtype.toLowerCase()}`,
    dtype,
    shape: [2, 3],
    data: filled(6 * dtypeByteSize(dtype), i),
  }));
  tensors.push({ name: "scalar", dtype: "F32", shape: [], data: bytesOf(new Float32Array([0.5])) });
  tensors.push({ name: "empty", dtype: "BF16", shape: [4, 0], data: new Uint8Array(0) });

  it("round-trips every dtype with its metadata", () => {
    const file = tempPath();
    writeSafetensorsFile(file, tensors, { format: "pt", producer: "kiln" });
    const st = SafetensorsFile.open(file);
    assert.deepEqual(
      st.names(),
      tensors.map((t) => t.name),
    );
    assert.deepEqual(st.metadata, { format: "pt", producer: "kiln" });
    for (const { name, dtype, shape, data } of tensors) {
      assert.deepEqual(
        { ...st.info(name), fileOffset: 0 },
        { name, dtype, shape, byteLength: data.byteLength, fileOffset: 0 },
      );
      assert.deepEqual(st.readBytes(name), data);
      assert.deepEqual(st.readFloat32(name), decodeToFloat32(data, dtype));
    }
    assert.deepEqual([...st.readFloat32("scalar")], [0.5]);
    st.close();
  });

  it("pads the header with spaces to 8 bytes and packs tensors back to back", () => {
    for (let nameLength = 1; nameLength <= 8; nameLength++) {
      const file = tempPath();
      const name = "w".repeat(nameLength);
      writeSafetensorsFile(file, [
        { name, dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) },
        { name: "next", dtype: "U8", shape: [1], data: new Uint8Array([4]) },
      ]);
      const bytes = fs.readFileSync(file);
      const n = Number(bytes.readBigUInt64LE(0));
      assert.equal(n % 8, 0);
      const text = bytes.subarray(8, 8 + n).toString("utf8");
      assert.equal(text.trimEnd().at(-1), "}");
      assert.match(text.slice(text.trimEnd().length), /^ *$/);
      assert.deepEqual([...bytes.subarray(8 + n)], [1, 2, 3, 4]);
    }
  });

  it("keeps every tensor element-aligned when specs follow alignedOrder", () => {
    const file = tempPath();
    const ordered = alignedOrder(tensors);
    assert.deepEqual(
      ordered.slice(0, 2).map((t) => t.dtype),
      ["F64", "I64"],
    );
    writeSafetensorsFile(file, ordered);
    const st = SafetensorsFile.open(file);
    for (const t of ordered) assert.equal(st.info(t.name).fileOffset % dtypeByteSize(t.dtype), 0, t.name);
    st.close();
  });

  it("rejects a wrong byte length, a tensor out of order, and a close before every tensor", () => {
    const file = tempPath();
    const specs = [
      { name: "a", dtype: "F32" as const, shape: [2] },
      { name: "b", dtype: "U8" as const, shape: [1] },
    ];
    const writer = new SafetensorsWriter(file, specs);
    throwsCheckpointError(() => writer.write("b", new Uint8Array(1)), file, '"b"', '"a"');
    throwsCheckpointError(() => writer.write("a", new Uint8Array(4)), file, '"a"', "4 bytes", "expected 8");
    writer.write("a", new Uint8Array(8));
    throwsCheckpointError(() => writer.close(), file, '"b"');
    writer[Symbol.dispose]();
    assert.ok(!fs.existsSync(file), "an abandoned writer removes its partial file");
  });

  it("rejects duplicate names and bad shapes up front", () => {
    const file = tempPath();
    const spec = { name: "a", dtype: "U8" as const, shape: [1] };
    throwsCheckpointError(() => new SafetensorsWriter(file, [spec, spec]), file, '"a"');
    throwsCheckpointError(() => new SafetensorsWriter(file, [{ ...spec, shape: [-1] }]), file, '"a"', "shape");
  });
});

describe("TensorStore", () => {
  const f32 = (name: string, values: number[]): TensorData => ({
    name,
    dtype: "F32",
    shape: [values.length],
    data: bytesOf(new Float32Array(values)),
  });

  function shardedDir(): string {
    const dir = path.dirname(tempPath());
    writeSafetensorsFile(path.join(dir, "model-00001-of-00002.safetensors"), [f32("embed", [1, 2]), f32("norm", [3])]);
    writeSafetensorsFile(path.join(dir, "model-00002-of-00002.safetensors"), [f32("lm_head", [4, 5, 6])]);
    const weightMap = {
      embed: "model-00001-of-00002.safetensors",
      norm: "model-00001-of-00002.safetensors",
      lm_head: "model-00002-of-00002.safetensors",
    };
    fs.writeFileSync(
      path.join(dir, INDEX_FILE),
      JSON.stringify({ metadata: { total_size: 24 }, weight_map: weightMap }),
    );
    return dir;
  }

  it("reads a sharded directory through its index", () => {
    const dir = shardedDir();
    const store = TensorStore.open(dir);
    assert.deepEqual(store.names(), ["embed", "norm", "lm_head"]);
    assert.deepEqual([...store.readFloat32("lm_head")], [4, 5, 6]);
    assert.deepEqual(store.info("norm").shape, [1]);
    assert.equal(store.fileOf("lm_head"), path.join(dir, "model-00002-of-00002.safetensors"));
    throwsCheckpointError(() => store.readBytes("missing"), dir, '"missing"');
    store.close();
  });

  it("reads every *.safetensors file, sorted, when there is no index", () => {
    const dir = path.dirname(tempPath());
    writeSafetensorsFile(path.join(dir, "b.safetensors"), [f32("second", [2])]);
    writeSafetensorsFile(path.join(dir, "a.safetensors"), [f32("first", [1])]);
    const store = TensorStore.open(dir);
    assert.deepEqual(store.names(), ["first", "second"]);
    assert.deepEqual([...store.readFloat32("second")], [2]);
    store.close();
  });

  it("rejects an index naming a missing shard, naming the index and the shard", () => {
    const dir = shardedDir();
    fs.rmSync(path.join(dir, "model-00002-of-00002.safetensors"));
    throwsCheckpointError(() => TensorStore.open(dir), INDEX_FILE, "model-00002-of-00002.safetensors");
  });

  it("rejects an index that maps a tensor to a shard lacking it", () => {
    const dir = shardedDir();
    const index = JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), "utf8"));
    index.weight_map.norm = "model-00002-of-00002.safetensors";
    fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify(index));
    throwsCheckpointError(() => TensorStore.open(dir), INDEX_FILE, '"norm"', "model-00002-of-00002.safetensors");
  });

  it("rejects a tensor present in two files, naming both", () => {
    const dir = path.dirname(tempPath());
    writeSafetensorsFile(path.join(dir, "a.safetensors"), [f32("embed", [1])]);
    writeSafetensorsFile(path.join(dir, "b.safetensors"), [f32("embed", [2])]);
    throwsCheckpointError(() => TensorStore.open(dir), '"embed"', "a.safetensors", "b.safetensors");
  });

  it("rejects a directory without safetensors files", () => {
    const dir = path.dirname(tempPath());
    throwsCheckpointError(() => TensorStore.open(dir), dir);
  });
});

describe("fixtures written by the reference library (Python safetensors)", () => {
  const fixtures = path.join(import.meta.dirname, "..", "..", "test", "fixtures");
  const files = fs
    .readdirSync(fixtures, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".safetensors"))
    .sort();

  it("finds the fixtures", () => assert.ok(files.length > 0));

  for (const rel of files) {
    it(`${rel}: reads every tensor and rewrites the file byte for byte`, () => {
      const file = path.join(fixtures, rel);
      const original = fs.readFileSync(file);
      const st = SafetensorsFile.open(file);
      // The reference lays data out in its own order; write the tensors in that order to match it.
      const specs = st
        .names()
        .map((name) => st.info(name))
        .sort((a, b) => a.fileOffset - b.fileOffset);
      const tensors = specs.map(({ name, dtype, shape, byteLength, fileOffset }) => {
        const data = st.readBytes(name);
        assert.deepEqual(data, new Uint8Array(original.subarray(fileOffset, fileOffset + byteLength)));
        assert.equal(
          st.readFloat32(name).length,
          shape.reduce((n, d) => n * d, 1),
        );
        return { name, dtype, shape, data };
      });
      const copy = tempPath();
      writeSafetensorsFile(copy, tensors, st.metadata);
      st.close();
      assert.ok(fs.readFileSync(copy).equals(original));
    });
  }
});
