// rank{N}.engine: one file per rank holding a JSON header and 64-byte-aligned binary sections (weights in
// the layout the backend's kernels read). Read section by section; nothing is parsed twice.
//
//   bytes 0..7   magic "KILNENG\0"
//   bytes 8..15  header length H (u64 little-endian)
//   16..16+H     header JSON, padded with spaces so that sections start 64-aligned
//   sections     at the offsets the header gives (absolute)

import fs from "node:fs";
import { type Dtype, dtypeByteSize } from "../checkpoint/dtype.js";
import { EngineError } from "../errors.js";
import { KILN_VERSION } from "../version.js";
import type { BackendName } from "./build-config.js";

/** Bumped whenever the file layout or a section's meaning changes; loaders refuse any other. */
export const ENGINE_FORMAT_VERSION = 1;
const MAGIC = Buffer.from("KILNENG\0", "latin1");
const ALIGN = 64;
const MAX_HEADER = 64 << 20;

export interface SectionSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

export interface SectionInfo extends SectionSpec {
  offset: number;
  byte_length: number;
}

export interface EngineHeader {
  format_version: number;
  kiln_version: string;
  backend: BackendName;
  target: string;
  rank: number;
  sections: SectionInfo[];
}

const alignUp = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

export class EngineWriter {
  private readonly fd: number;
  private next = 0;
  private readonly sections: SectionInfo[];

  constructor(
    readonly path: string,
    meta: Omit<EngineHeader, "sections" | "format_version" | "kiln_version">,
    specs: SectionSpec[],
  ) {
    // Offsets depend on the header's length and the header holds the offsets.
    const sized = (start: number) => {
      let at = start;
      return specs.map((s) => {
        const byteLength = s.shape.reduce((a, b) => a * b, 1) * dtypeByteSize(s.dtype);
        const info = { ...s, offset: at, byte_length: byteLength };
        at = alignUp(at + byteLength);
        return info;
      });
    };
    const headerOf = (sections: SectionInfo[]): EngineHeader => ({
      format_version: ENGINE_FORMAT_VERSION,
      kiln_version: KILN_VERSION,
      ...meta,
      sections,
    });
    // Offsets written with the most digits they could have bound the header's length from above.
    const dataStart = alignUp(16 + Buffer.byteLength(JSON.stringify(headerOf(sized(Number.MAX_SAFE_INTEGER)))));
    this.sections = sized(dataStart);
    const raw = JSON.stringify(headerOf(this.sections));
    const json = raw + " ".repeat(dataStart - 16 - Buffer.byteLength(raw)); // pad by bytes, not characters
    const head = Buffer.alloc(16);
    MAGIC.copy(head, 0);
    head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 8);
    this.fd = fs.openSync(path, "w");
    fs.writeSync(this.fd, head, 0, 16, 0);
    fs.writeSync(this.fd, Buffer.from(json), 0, Buffer.byteLength(json), 16);
  }

  write(name: string, data: Uint8Array): void {
    const s = this.sections[this.next];
    if (!s || s.name !== name) throw new EngineError(`${this.path}: section "${name}" written out of order`);
    if (data.byteLength !== s.byte_length) {
      throw new EngineError(`${this.path}: section "${name}" has ${data.byteLength} bytes, expected ${s.byte_length}`);
    }
    let done = 0;
    while (done < data.byteLength) done += fs.writeSync(this.fd, data, done, data.byteLength - done, s.offset + done);
    this.next++;
  }

  close(): void {
    if (this.next !== this.sections.length) {
      throw new EngineError(`${this.path}: section "${this.sections[this.next].name}" was never written`);
    }
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
  }
}

export interface EngineExpectation {
  backend: BackendName;
  /** The target this machine can run; null accepts any (for tools that only inspect). */
  target: string | null;
}

export class EngineFile {
  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly header: EngineHeader,
    private readonly byName: Map<string, SectionInfo>,
  ) {}

  static open(path: string, expect: EngineExpectation): EngineFile {
    let fd: number;
    try {
      fd = fs.openSync(path, "r");
    } catch (e) {
      throw new EngineError(`${path}: cannot open engine file (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      const head = Buffer.alloc(16);
      if (size < 16 || fs.readSync(fd, head, 0, 16, 0) !== 16 || !head.subarray(0, 8).equals(MAGIC)) {
        throw new EngineError(`${path}: not a kiln engine file (bad magic); rebuild it with kiln build`);
      }
      const len = Number(head.readBigUInt64LE(8));
      if (len > MAX_HEADER || 16 + len > size) throw new EngineError(`${path}: engine header is truncated`);
      const json = Buffer.alloc(len);
      fs.readSync(fd, json, 0, len, 16);
      let header: EngineHeader;
      try {
        header = JSON.parse(json.toString("utf8"));
      } catch {
        throw new EngineError(`${path}: engine header is not valid JSON`);
      }
      if (header.format_version !== ENGINE_FORMAT_VERSION) {
        throw new EngineError(
          `${path}: engine format ${header.format_version} (kiln ${header.kiln_version}) cannot be loaded by kiln ${KILN_VERSION}, which reads format ${ENGINE_FORMAT_VERSION}; rebuild the engine`,
        );
      }
      if (header.backend !== expect.backend) {
        throw new EngineError(`${path}: engine was built for backend "${header.backend}", not "${expect.backend}"`);
      }
      if (expect.target !== null && header.target !== expect.target) {
        throw new EngineError(
          `${path}: engine was built for target "${header.target}", this machine runs "${expect.target}"`,
        );
      }
      for (const s of header.sections) {
        if (s.offset + s.byte_length > size)
          throw new EngineError(`${path}: section "${s.name}" runs past the end of the file`);
      }
      return new EngineFile(path, fd, header, new Map(header.sections.map((s) => [s.name, s])));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  section(name: string): SectionInfo {
    const s = this.byName.get(name);
    if (!s) throw new EngineError(`${this.path}: section "${name}" is missing`);
    return s;
  }

  /** The section's bytes in a fresh, aligned buffer (typed-array views of any width can sit on it). */
  read(name: string): Uint8Array {
    const s = this.section(name);
    const out = new Uint8Array(new ArrayBuffer(s.byte_length));
    let done = 0;
    while (done < s.byte_length) {
      const n = fs.readSync(this.fd, out, done, Math.min(s.byte_length - done, 1 << 30), s.offset + done);
      if (n <= 0) throw new EngineError(`${this.path}: section "${name}" is truncated`);
      done += n;
    }
    return out;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
