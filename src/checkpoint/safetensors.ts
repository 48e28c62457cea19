// The safetensors format: a validating lazy reader and a streaming writer.
// Layout: u64 LE header length N, N bytes of JSON header, then the data buffer its offsets point into.

import * as fs from "node:fs";
import { CheckpointError, OutputError } from "../errors.js";
import { type Dtype, decodeToFloat32, dtypeByteSize, isDtype } from "./dtype.js";

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  byteLength: number;
  /** Absolute offset of the first byte of the tensor's data in its file. */
  fileOffset: number;
}

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

export interface TensorData extends TensorSpec {
  data: Uint8Array;
}

/** The Rust library's limit; a larger header is almost certainly a corrupt length field. */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";
// readSync/writeSync take at most 2 GiB per call.
const IO_CHUNK = 1 << 30;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isShape = (v: unknown): v is number[] => Array.isArray(v) && v.every(isCount);
const elementCount = (shape: readonly number[]): number => shape.reduce((n, d) => n * d, 1);
const q = JSON.stringify;

function validateMetadata(file: string, meta: unknown): Record<string, string> {
  if (!isRecord(meta) || !Object.values(meta).every((v) => typeof v === "string")) {
    throw new CheckpointError(`${file}: "${METADATA_KEY}" must be an object of string values`);
  }
  return { ...(meta as Record<string, string>) };
}

/** Validates a parsed header against a data buffer of `dataLength` bytes starting at `dataStart`. */
function parseHeader(
  file: string,
  header: unknown,
  dataStart: number,
  dataLength: number,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  if (!isRecord(header)) throw new CheckpointError(`${file}: safetensors header must be a JSON object`);
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      metadata = validateMetadata(file, entry);
      continue;
    }
    const at = `${file}: tensor ${q(name)}`;
    if (!isRecord(entry)) throw new CheckpointError(`${at}: expected an object {dtype, shape, data_offsets}`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== "string" || !isDtype(dtype)) {
      throw new CheckpointError(`${at}: unknown dtype ${q(dtype)}, expected a safetensors dtype such as BF16`);
    }
    if (!isShape(shape)) {
      throw new CheckpointError(`${at}: shape ${q(shape)} must be an array of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
      throw new CheckpointError(`${at}: data_offsets ${q(offsets)} must be two integers [begin, end] with begin ≤ end`);
    }
    const [begin, end] = offsets as [number, number];
    const byteLength = elementCount(shape) * dtypeByteSize(dtype);
    if (end - begin !== byteLength) {
      throw new CheckpointError(
        `${at}: data_offsets span ${end - begin} bytes, expected ${byteLength} for ${dtype} of shape [${shape}]`,
      );
    }
    if (end > dataLength) {
      throw new CheckpointError(`${at}: data ends at byte ${end} of a ${dataLength}-byte data buffer (truncated?)`);
    }
    tensors.set(name, { name, dtype, shape, byteLength, fileOffset: dataStart + begin });
    if (byteLength > 0) spans.push({ name, begin, end });
  }
  spans.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < spans.length; i++) {
    const [prev, cur] = [spans[i - 1], spans[i]];
    if (cur.begin < prev.end) {
      throw new CheckpointError(
        `${file}: tensor ${q(cur.name)} [${cur.begin}, ${cur.end}) overlaps tensor ${q(prev.name)} ` +
          `[${prev.begin}, ${prev.end}): expected disjoint data_offsets`,
      );
    }
  }
  return { tensors, metadata };
}

function readFully(fd: number, target: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < target.byteLength) {
    const want = Math.min(IO_CHUNK, target.byteLength - done);
    const got = fs.readSync(fd, target, done, want, position + done);
    if (got === 0) {
      throw new CheckpointError(`${what}: file ended after ${done} of ${target.byteLength} bytes (truncated file?)`);
    }
    done += got;
  }
}

function writeFully(fd: number, source: Uint8Array, position: number): void {
  let done = 0;
  while (done < source.byteLength) {
    const want = Math.min(IO_CHUNK, source.byteLength - done);
    done += fs.writeSync(fd, source, done, want, position + done);
  }
}

/** One safetensors file, opened lazily: the header is parsed and validated, tensor bytes are read on demand. */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly #tensors: Map<string, TensorInfo>;
  #fd: number | undefined;

  private constructor(file: string, fd: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.path = file;
    this.#fd = fd;
    this.#tensors = tensors;
    this.metadata = metadata;
  }

  static open(file: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(file, "r");
    } catch (e) {
      throw new CheckpointError(`${file}: cannot open safetensors file (${(e as Error).message})`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) throw new CheckpointError(`${file}: ${size}-byte file, expected at least the 8-byte header length`);
      const prefix = new Uint8Array(8);
      readFully(fd, prefix, 0, file);
      const headerLength = Buffer.from(prefix).readBigUInt64LE(0);
      if (headerLength > BigInt(MAX_HEADER_BYTES)) {
        throw new CheckpointError(`${file}: header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
      }
      const n = Number(headerLength);
      if (8 + n > size) {
        throw new CheckpointError(`${file}: ${n}-byte header runs past the ${size}-byte file's end (truncated?)`);
      }
      const raw = new Uint8Array(n);
      readFully(fd, raw, 8, file);
      let header: unknown;
      try {
        header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
      } catch (e) {
        throw new CheckpointError(`${file}: header is not valid UTF-8 JSON (${(e as Error).message})`);
      }
      const { tensors, metadata } = parseHeader(file, header, 8 + n, size - 8 - n);
      return new SafetensorsFile(file, fd, tensors, metadata);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in header order (JSON.parse puts integer-like names such as "0" first). */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  info(name: string): TensorInfo {
    const info = this.#tensors.get(name);
    if (!info) throw new CheckpointError(`${this.path}: no tensor ${q(name)} in this file`);
    return { ...info, shape: [...info.shape] };
  }

  /** Reads just this tensor's bytes into a fresh buffer. */
  readBytes(name: string): Uint8Array {
    const { byteLength, fileOffset } = this.info(name);
    if (this.#fd === undefined) throw new CheckpointError(`${this.path}: tensor ${q(name)} read after close()`);
    const bytes = new Uint8Array(byteLength);
    readFully(this.#fd, bytes, fileOffset, `${this.path}: tensor ${q(name)}`);
    return bytes;
  }

  readFloat32(name: string): Float32Array {
    return decodeToFloat32(this.readBytes(name), this.info(name).dtype);
  }

  /** Rows [start, end) of a tensor (along its first dimension): a slice without reading the rest. */
  readRows(name: string, start: number, end: number): Uint8Array {
    const { byteLength, fileOffset, shape } = this.info(name);
    const rows = shape[0] ?? 1;
    if (start < 0 || end > rows || start > end) {
      throw new CheckpointError(`${this.path}: rows [${start}, ${end}) of tensor ${q(name)}, which has ${rows}`);
    }
    if (this.#fd === undefined) throw new CheckpointError(`${this.path}: tensor ${q(name)} read after close()`);
    const rowBytes = byteLength / rows;
    const bytes = new Uint8Array((end - start) * rowBytes);
    readFully(this.#fd, bytes, fileOffset + start * rowBytes, `${this.path}: tensor ${q(name)}`);
    return bytes;
  }

  close(): void {
    if (this.#fd === undefined) return;
    fs.closeSync(this.#fd);
    this.#fd = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Streams a safetensors file: the header is written up front, then each tensor in spec order.
 * Tensors are packed back to back, because the reference reader rejects gaps between them;
 * order specs by falling dtype size (see `alignedOrder`) for every tensor to be element-aligned.
 */
export class SafetensorsWriter {
  readonly path: string;
  readonly #specs: (TensorSpec & { byteLength: number })[];
  readonly #dataStart: number;
  #fd: number | undefined;
  #next = 0;
  #written = 0;

  constructor(file: string, specs: readonly TensorSpec[], metadata?: Record<string, string>) {
    this.path = file;
    const seen = new Set<string>();
    this.#specs = specs.map(({ name, dtype, shape }) => {
      const at = `${file}: tensor ${q(name)}`;
      if (name === "" || name === METADATA_KEY) throw new CheckpointError(`${at}: not a usable tensor name`);
      if (seen.has(name)) throw new CheckpointError(`${at}: listed twice, expected unique names`);
      if (!isDtype(dtype)) throw new CheckpointError(`${at}: unknown dtype ${q(dtype)}`);
      if (!isShape(shape)) throw new CheckpointError(`${at}: shape ${q(shape)} must be non-negative integers`);
      seen.add(name);
      return { name, dtype, shape: [...shape], byteLength: elementCount(shape) * dtypeByteSize(dtype) };
    });
    // Keys are serialised by hand: JSON.stringify would move integer-like names to the front.
    const entries: string[] = [];
    if (metadata !== undefined && Object.keys(metadata).length > 0)
      entries.push(`${q(METADATA_KEY)}:${q(validateMetadata(file, metadata))}`);
    let offset = 0;
    for (const s of this.#specs) {
      const entry = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + s.byteLength] };
      entries.push(`${q(s.name)}:${q(entry)}`);
      offset += s.byteLength;
    }
    let json = Buffer.from(`{${entries.join(",")}}`, "utf8");
    // Space padding keeps the data buffer 8-byte aligned in the file, as the Rust writer does.
    const pad = (8 - (json.byteLength % 8)) % 8;
    if (pad > 0) json = Buffer.concat([json, Buffer.alloc(pad, " ")]);
    if (json.byteLength > MAX_HEADER_BYTES) {
      throw new CheckpointError(`${file}: ${json.byteLength}-byte header exceeds the ${MAX_HEADER_BYTES}-byte limit`);
    }
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.byteLength));
    this.#dataStart = 8 + json.byteLength;
    try {
      this.#fd = fs.openSync(file, "w");
    } catch (e) {
      throw new OutputError(`${file}: cannot create safetensors file (${(e as Error).message})`);
    }
    try {
      writeFully(this.#fd, prefix, 0);
      writeFully(this.#fd, json, 8);
    } catch (e) {
      this[Symbol.dispose]();
      throw new OutputError(`${file}: cannot write safetensors header (${(e as Error).message})`);
    }
  }

  /** Writes the next tensor; names must come in spec order with exactly their byte length. */
  write(name: string, data: Uint8Array): void {
    const at = `${this.path}: tensor ${q(name)}`;
    if (this.#fd === undefined) throw new CheckpointError(`${at}: written after close()`);
    const spec = this.#specs[this.#next];
    if (spec === undefined) throw new CheckpointError(`${at}: all ${this.#specs.length} tensors are already written`);
    if (spec.name !== name) throw new CheckpointError(`${at}: out of order, expected tensor ${q(spec.name)} next`);
    if (data.byteLength !== spec.byteLength) {
      throw new CheckpointError(
        `${at}: got ${data.byteLength} bytes, expected ${spec.byteLength} for ${spec.dtype} of shape [${spec.shape}]`,
      );
    }
    writeFully(this.#fd, data, this.#dataStart + this.#written);
    this.#written += data.byteLength;
    this.#next++;
  }

  /** Checks every tensor was written, then flushes to disk and closes. */
  close(): void {
    if (this.#fd === undefined) return;
    if (this.#next < this.#specs.length) {
      const missing = this.#specs.slice(this.#next).map((s) => q(s.name));
      throw new CheckpointError(`${this.path}: closed before writing tensors ${missing.join(", ")}`);
    }
    fs.fsyncSync(this.#fd);
    fs.closeSync(this.#fd);
    this.#fd = undefined;
  }

  /** Disposing without a successful close() abandons the write and deletes the partial file. */
  [Symbol.dispose](): void {
    if (this.#fd === undefined) return;
    fs.closeSync(this.#fd);
    this.#fd = undefined;
    fs.rmSync(this.path, { force: true });
  }
}

/** Orders specs by falling element size then name, the Rust writer's layout, so packed tensors stay aligned. */
export function alignedOrder<T extends TensorSpec>(specs: readonly T[]): T[] {
  return [...specs].sort(
    (a, b) => dtypeByteSize(b.dtype) - dtypeByteSize(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
}

export function writeSafetensorsFile(
  file: string,
  tensors: readonly TensorData[],
  metadata?: Record<string, string>,
): void {
  const writer = new SafetensorsWriter(file, tensors, metadata);
  try {
    for (const t of tensors) writer.write(t.name, t.data);
    writer.close();
  } finally {
    writer[Symbol.dispose]();
  }
}
