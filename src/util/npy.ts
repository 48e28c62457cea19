// NumPy .npy files (format 1.0), little-endian, C order: how TensorRT-LLM's run.py writes its arrays.

import fs from "node:fs";

export function writeNpyFloat32(file: string, data: Float32Array, shape: readonly number[]): void {
  writeNpy(file, "<f4", data, shape);
}

export function writeNpyInt32(file: string, data: Int32Array, shape: readonly number[]): void {
  writeNpy(file, "<i4", data, shape);
}

function writeNpy(file: string, descr: string, data: Float32Array | Int32Array, shape: readonly number[]): void {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new Error(`npy: shape [${shape}] holds ${count} values, got ${data.length}`);
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  // magic (6) + version (2) + header length (2) + header, padded with spaces and ended by \n to 64 bytes.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = `${header.padEnd(total - 10 - 1, " ")}\n`;
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  fs.writeFileSync(
    file,
    Buffer.concat([head, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]),
  );
}
